"""The actuator: idempotent, re-checks before destroying, bounded concurrent clones, results recorded."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from scaler_fixtures import MemoryBBB, MemoryCloud, MemoryScalelite, naming

from divims.errors import TransientError
from divims.model import ScaleliteState, VMState
from scaler.actuator import FAILED, OK, REFUSED, SKIPPED, Actuator
from scaler.snapshot import Action, ActionKind, Decision, Plan


def plan(*actions: Action) -> Plan:
    return Plan("p1", Decision((), 1, 1), tuple(actions))


def act(kind: ActionKind, slot: int | None, server_id: str | None = None, **kw) -> Action:
    return Action(kind, slot, f"test {kind.value}", server_id=server_id, **kw)


@pytest.fixture
def env():
    cloud, sl, bbb = MemoryCloud(), MemoryScalelite(), MemoryBBB()
    a = Actuator(naming(), cloud=cloud, scalelite=sl, bbb=bbb.factory, add_secret="bbbsecret",
                 max_concurrent_clones=2, meetings_max_duration_seconds=600 * 60)
    return a, cloud, sl, bbb


def test_clone_creates_and_powers_on_once_then_adopts(env):
    a, cloud, _, _ = env
    r1 = a.execute(plan(act(ActionKind.CLONE, 2)))
    r2 = a.execute(plan(act(ActionKind.CLONE, 2)))
    assert r1[0].result == OK and "created bbb-2" in r1[0].detail
    assert r2[0].result == OK and "adopted existing" in r2[0].detail
    assert cloud.calls.names().count("create_server") == 1
    assert [vm.state for vm in cloud.vms.values()] == [VMState.STARTING]


def test_create_lost_in_transit_is_adopted_not_repeated(env):
    a, cloud, _, _ = env
    cloud.create_then_fail = True
    r = a.execute(plan(act(ActionKind.CLONE, 1)))
    assert r[0].result == OK and "created" in r[0].detail
    r = a.execute(plan(act(ActionKind.CLONE, 1)))
    assert len(cloud.vms) == 1
    assert cloud.calls.names().count("create_server") == 1


def test_create_failing_without_a_vm_is_a_failed_result(env):
    a, cloud, _, _ = env
    cloud.fail_next["create_server"] = [TransientError("scaleway", "bbb-1", "HTTP 429")]
    r = a.execute(plan(act(ActionKind.CLONE, 1)))
    assert r[0].result == FAILED and "429" in r[0].detail and "transient" in r[0].detail
    assert not cloud.vms


def test_clone_attaches_the_slots_ip_when_flexible_ips(env):
    a, cloud, _, _ = env
    a.flexible_ips = True
    a.execute(plan(act(ActionKind.CLONE, 3)))
    a.execute(plan(act(ActionKind.ATTACH_IP, 3)))
    (ip,) = cloud.ips.values()
    (vm,) = cloud.vms.values()
    assert ip.server_id == vm.id and "divims-slot=3" in ip.tags
    assert cloud.calls.names().count("attach_ip") == 1


def test_clones_run_concurrently_but_bounded():
    cloud, sl, bbb = MemoryCloud(), MemoryScalelite(), MemoryBBB()
    active, peak = [0], [0]
    guard = threading.Lock()
    original = cloud.poweron

    def slow_poweron(server_id):
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.1)
        with guard:
            active[0] -= 1
        original(server_id)

    cloud.poweron = slow_poweron
    a = Actuator(naming(size_max=6), cloud=cloud, scalelite=sl, bbb=bbb.factory, add_secret="s",
                 max_concurrent_clones=2)
    start = time.monotonic()
    results = a.execute(plan(*[act(ActionKind.CLONE, n) for n in range(1, 7)]))
    assert [r.result for r in results] == [OK] * 6
    assert peak[0] == 2
    assert time.monotonic() - start < 0.6  # 3 waves of 0.1 s, not 6
    assert len({vm.name for vm in cloud.vms.values()}) == 6


def test_enable_waits_for_the_bbb_api(env):
    a, cloud, sl, bbb = env
    cloud.add_vm(1)
    sl.add(1, ScaleliteState.DISABLED, online=False)
    bbb.down.add("127.0.1.1")
    r = a.execute(plan(act(ActionKind.ENABLE, 1)))
    assert r[0].result == REFUSED and "not answering" in r[0].detail
    bbb.down.clear()
    r = a.execute(plan(act(ActionKind.ENABLE, 1)))
    assert r[0].result == OK and sl.servers["sl-1"].state == ScaleliteState.ENABLED
    r = a.execute(plan(act(ActionKind.ENABLE, 1)))
    assert r[0].result == SKIPPED


def test_add_to_scalelite_is_idempotent(env):
    a, _, sl, _ = env
    r1 = a.execute(plan(act(ActionKind.ADD_TO_SCALELITE, 4)))
    r2 = a.execute(plan(act(ActionKind.ADD_TO_SCALELITE, 4)))
    assert (r1[0].result, r2[0].result) == (OK, SKIPPED)
    assert sl.calls.names().count("add_server") == 1


def test_terminate_refuses_a_server_with_a_meeting_asked_of_bbb_directly(env):
    a, cloud, sl, bbb = env
    vm = cloud.add_vm(2)
    sl.add(1)
    sl.add(2, ScaleliteState.CORDONED)
    bbb.meeting("127.0.1.2", "m1", time.time() - 60)
    r = a.execute(plan(act(ActionKind.PANIC, 2, "sl-2"), act(ActionKind.TERMINATE, 2, vm.id)))
    assert [x.result for x in r] == [REFUSED, REFUSED]
    assert "meeting" in r[1].detail
    assert vm.id in cloud.vms and "panic" not in sl.calls.names()


def test_terminate_refuses_while_recordings_process(env):
    a, cloud, sl, bbb = env
    vm = cloud.add_vm(2)
    sl.add(2, ScaleliteState.DISABLED)
    bbb.processing["127.0.1.2"] = 1
    r = a.execute(plan(act(ActionKind.TERMINATE, 2, vm.id)))
    assert r[0].result == REFUSED and "recording" in r[0].detail


def test_terminate_refuses_an_enabled_server_and_when_bbb_cannot_say(env):
    a, cloud, sl, bbb = env
    vm = cloud.add_vm(2)
    sl.add(2, ScaleliteState.ENABLED)
    assert a.execute(plan(act(ActionKind.TERMINATE, 2, vm.id)))[0].result == REFUSED
    sl.servers["sl-2"] = replace(sl.servers["sl-2"], state=ScaleliteState.CORDONED)
    bbb.down.add("127.0.1.2")  # online in Scalelite but BBB does not answer us: cannot verify
    r = a.execute(plan(act(ActionKind.TERMINATE, 2, vm.id)))
    assert r[0].result == REFUSED and "cannot verify" in r[0].detail


def test_drained_server_is_panicked_terminated_and_its_volume_deleted(env):
    a, cloud, sl, bbb = env
    vm = cloud.add_vm(2)
    sl.add(1)
    sl.add(2, ScaleliteState.DISABLED)
    r = a.execute(plan(act(ActionKind.PANIC, 2, "sl-2"), act(ActionKind.TERMINATE, 2, vm.id)))
    assert [x.result for x in r] == [OK, OK]
    assert not cloud.vms
    (vol,) = cloud.volumes.values()
    assert vol.server_id is None
    r = a.execute(plan(act(ActionKind.DELETE_VOLUME, None, vol.id)))
    assert r[0].result == OK and not cloud.volumes
    # and again: already gone
    assert a.execute(plan(act(ActionKind.TERMINATE, 2, vm.id)))[0].result == SKIPPED
    assert a.execute(plan(act(ActionKind.DELETE_VOLUME, None, vol.id)))[0].result == SKIPPED


def test_attached_volume_is_never_deleted(env):
    a, cloud, _, _ = env
    vm = cloud.add_vm(1)
    r = a.execute(plan(act(ActionKind.DELETE_VOLUME, None, vm.volumes[0].id)))
    assert r[0].result == REFUSED and vm.volumes[0].id in cloud.volumes


def test_cordon_never_takes_the_last_online_server(env):
    a, _, sl, _ = env
    sl.add(1)
    r = a.execute(plan(act(ActionKind.CORDON, 1, "sl-1")))
    assert r[0].result == REFUSED and "last online" in r[0].detail
    sl.add(2)
    assert a.execute(plan(act(ActionKind.CORDON, 1, "sl-1")))[0].result == OK
    assert a.execute(plan(act(ActionKind.CORDON, 1, "sl-1")))[0].result == SKIPPED


def test_end_meeting_ends_only_old_meetings_on_a_draining_server(env):
    a, cloud, sl, bbb = env
    cloud.add_vm(2)
    sl.add(2, ScaleliteState.CORDONED)
    now = time.time()
    bbb.meeting("127.0.1.2", "old", now - 601 * 60)
    bbb.meeting("127.0.1.2", "young", now - 30 * 60)
    r = a.execute(plan(act(ActionKind.END_MEETING, 2)))
    assert r[0].result == OK and bbb.ended == ["old"]
    assert a.execute(plan(act(ActionKind.END_MEETING, 2)))[0].result == SKIPPED


def test_unresponsive_server_offline_in_scalelite_can_be_terminated(env):
    a, cloud, sl, bbb = env
    vm = cloud.add_vm(3)
    sl.add(3, ScaleliteState.CORDONED, online=False)
    bbb.down.add("127.0.1.3")
    r = a.execute(plan(act(ActionKind.TERMINATE, 3, vm.id)))
    assert r[0].result == OK and "unresponsive" in r[0].detail


def test_one_failure_does_not_stop_the_other_actions(env):
    a, cloud, sl, _ = env
    cloud.fail_next["get_server"] = [TransientError("scaleway", "x", "HTTP 500")]
    vm = cloud.add_vm(1, VMState.STOPPED)
    r = a.execute(plan(act(ActionKind.POWERON, 1, vm.id), act(ActionKind.ADD_TO_SCALELITE, 2)))
    assert [x.result for x in r] == [FAILED, OK]


def test_results_never_carry_a_secret(env):
    a, cloud, sl, bbb = env
    sl.add(1, ScaleliteState.DISABLED)
    bbb.down.add("127.0.1.1")
    results = a.execute(plan(act(ActionKind.ENABLE, 1), act(ActionKind.ADD_TO_SCALELITE, 2)))
    assert all("bbbsecret" not in r.detail for r in results)


def test_stray_duplicate_is_terminated_by_id_without_touching_the_slots_vm(env):
    a, cloud, sl, bbb = env
    keep = cloud.add_vm(1, VMState.RUNNING, created=0)
    dup = cloud.add_vm(1, VMState.STOPPED, created=10)
    sl.add(1)
    bbb.meeting("127.0.1.1", "m", time.time())  # the slot's real VM serves a meeting
    r = a.execute(plan(act(ActionKind.TERMINATE, None, dup.id)))
    assert r[0].result == OK
    assert list(cloud.vms) == [keep.id]


def test_attach_ip_repair_takes_the_ip_id_and_finds_the_slots_vm(env):
    a, cloud, _, _ = env
    a.flexible_ips = True
    vm = cloud.add_vm(2, VMState.STOPPED)
    ip = cloud.create_ip(2)
    r = a.execute(plan(act(ActionKind.ATTACH_IP, 2, ip.id)))
    assert r[0].result == OK and cloud.ips[ip.id].server_id == vm.id
