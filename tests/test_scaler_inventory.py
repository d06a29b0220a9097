"""Inventory: slots matched by name/tag/URL host, strays and orphans found, failing sources reported."""

from __future__ import annotations

import json
import time

from scaler_fixtures import MemoryBBB, MemoryCloud, MemoryScalelite, naming

from divims.errors import TransientError
from divims.model import VM, ScaleliteState, VMState
from scaler.inventory import build_snapshot, read_maintenance
from scaler.signals import unknown_signals
from scaler.snapshot import ServerLoad, Signal, Signals


def signals(per_server=None) -> Signals:
    return Signals(Signal("participants", 10), Signal("meetings", 1), per_server=per_server)


def test_slots_join_vm_scalelite_entry_and_per_server_load():
    cloud, sl = MemoryCloud(), MemoryScalelite()
    vm = cloud.add_vm(2)
    sl.add(2)
    snap = build_snapshot(naming(), cloud=cloud, scalelite=sl, now=time.time(),
                          signals=signals({"127.0.1.2": ServerLoad(4, 40, 0, bbb_api_up=True)}))
    s2 = snap.slots[1]
    assert (s2.slot, s2.name, s2.domain) == (2, "bbb-2", "127.0.1.2")
    assert s2.vm.id == vm.id and s2.scalelite.id == "sl-2"
    assert (s2.meetings, s2.participants, s2.recordings_unfinished, s2.bbb_api_up) == (4, 40, 0, True)
    assert snap.slots[0].vm is None and snap.slots[0].meetings is None  # unknown, not zero
    assert snap.inventory_complete and len(snap.slots) == 4


def test_duplicates_and_foreign_slots_are_strays_and_the_running_one_is_kept():
    cloud, sl = MemoryCloud(), MemoryScalelite()
    old_stopped = cloud.add_vm(1, VMState.STOPPED, created=1)
    running = cloud.add_vm(1, VMState.RUNNING, created=5)
    beyond = cloud.add_vm(9)  # tagged for slot 9, the pool has 4
    untagged = VM("x", "web-1", VMState.RUNNING, "PRO2-M", "fr-par-1", (), 0, 0)
    cloud.vms["x"] = untagged
    snap = build_snapshot(naming(), cloud=cloud, scalelite=sl, signals=signals(), now=time.time())
    assert snap.slots[0].vm.id == running.id
    assert {v.id for v in snap.stray_vms} == {old_stopped.id, beyond.id}


def test_detached_volumes_are_orphans():
    cloud, sl = MemoryCloud(), MemoryScalelite()
    vm = cloud.add_vm(1)
    cloud.terminate(vm.id)
    snap = build_snapshot(naming(), cloud=cloud, scalelite=sl, signals=signals(), now=time.time())
    assert [v.id for v in snap.orphan_volumes] == [vm.volumes[0].id]


def test_a_failing_source_makes_the_inventory_incomplete_with_the_reason():
    cloud, sl = MemoryCloud(), MemoryScalelite()
    cloud.add_vm(1)
    sl.down = True
    snap = build_snapshot(naming(), cloud=cloud, scalelite=sl, signals=unknown_signals("x"), now=time.time())
    assert not snap.inventory_complete
    assert any(p.startswith("scalelite") and "connection refused" in p for p in snap.inventory_problems)
    assert snap.slots[0].vm is not None  # what could be read is kept
    cloud.fail_next["list_servers"] = [TransientError("scaleway", "servers", "HTTP 503")]
    sl.down = False
    snap = build_snapshot(naming(), cloud=cloud, scalelite=sl, signals=signals(), now=time.time())
    assert not snap.inventory_complete and "scaleway" in snap.inventory_problems[0]


def test_draining_server_meetings_come_from_bbb_directly():
    cloud, sl, bbb = MemoryCloud(), MemoryScalelite(), MemoryBBB()
    cloud.add_vm(3)
    sl.add(3, ScaleliteState.CORDONED)
    now = time.time()
    bbb.meeting("127.0.1.3", "a", now - 7200, participants=5)
    bbb.meeting("127.0.1.3", "b", now - 60, participants=2)
    # Prometheus still says 0 (a scrape behind): BBB's own answer wins for a drain decision
    snap = build_snapshot(naming(), cloud=cloud, scalelite=sl, now=now, bbb=bbb.factory,
                          signals=signals({"127.0.1.3": ServerLoad(0, 0, 0)}))
    s3 = snap.slots[2]
    assert (s3.meetings, s3.participants) == (2, 7)
    assert 7199 < s3.oldest_meeting_age_seconds < 7300


def test_maintenance_list_from_config_and_file(tmp_path):
    f = tmp_path / "maint.json"
    f.write_text(json.dumps([3]))
    slots, problems = read_maintenance([1], f)
    assert slots == {1, 3} and not problems
    f.write_text('{"bad": 1}')
    slots, problems = read_maintenance([1], f)
    assert slots == {1} and "maint.json" in problems[0]
    assert read_maintenance([], tmp_path / "missing.json") == (frozenset(), [])
    cloud, sl = MemoryCloud(), MemoryScalelite()
    snap = build_snapshot(naming(), cloud=cloud, scalelite=sl, signals=signals(), now=0,
                          maintenance=frozenset({3}), problems=problems)
    assert snap.slots[2].in_maintenance and not snap.inventory_complete
