"""Scenarios of the live scaler against the testbed over real HTTP: the official Scaleway SDK against
FakeScaleway, ScaleliteHTTP against FakeScalelite, BBBClient against the fake BBB fleet, and a tiny
Prometheus that answers the shipped queries from the world (as if it scraped the exporter)."""

from __future__ import annotations

import io
import time

import pytest
from scaler_fixtures import (
    SimulatedCrash,
    add_meetings,
    assert_no_duplicate,
    bed,
    converge,
    cut_meetings,
    enabled_slots,
    make_scaler,
    orphans,
    vm_names,
)

from scaler.metrics import ScalerMetrics
from scaler.snapshot import ActionKind
from testbed.world import RUNNING, FakeRecording

__all__ = ["bed"]


def test_surge_scales_from_one_to_n(bed):
    pool, _, settings = bed
    w = pool.world
    s = make_scaler(settings)
    converge(s, w, lambda: enabled_slots(w) == {1})
    add_meetings(w, 1, 10, 100)  # 1000 participants: 1000 / (250 x 0.85) -> 5 servers
    converge(s, w, lambda: len(enabled_slots(w)) == 5 and len(vm_names(w)) == 5)
    assert vm_names(w) == [f"bbb-{n}" for n in range(1, 6)]
    journal = s.journal.read()
    assert any(r["kind"] == "clone" and r["result"] == "ok" for e in journal for r in e["results"])
    assert journal[-1]["plan"]["desired"] == 5


def test_scale_in_never_cuts_a_meeting_or_an_unfinished_recording(bed):
    pool, _, settings = bed
    w = pool.world
    s = make_scaler(settings)
    converge(s, w, lambda: enabled_slots(w) == {1})
    add_meetings(w, 1, 10, 100)
    converge(s, w, lambda: len(enabled_slots(w)) == 5)
    with w.lock:  # the load leaves, except one meeting on slot 2 and a recording on slot 3
        w.bbb_hosts[w.domain(1)].meetings.clear()
    kept = add_meetings(w, 2, 1, 20)
    with w.lock:
        now = w.now()
        w.bbb_hosts[w.domain(3)].recordings["r1"] = FakeRecording("r1", "m", "processing", now - 60, now, None)

    def invariants():
        assert not cut_meetings(w)
        names = vm_names(w)
        assert "bbb-2" in names, "the server with a meeting was terminated"
        with w.lock:
            unfinished = w.bbb_hosts[w.domain(3)].recordings["r1"].stage != "transferred"
        if unfinished:
            assert "bbb-3" in names, "the server with an unfinished recording was terminated"

    converge(s, w, lambda: len(vm_names(w)) <= 3, check=invariants)
    assert set(vm_names(w)) >= {"bbb-2", "bbb-3"}
    # the recording finishes and the meeting ends: both servers may go now
    with w.lock:
        rec = w.bbb_hosts[w.domain(3)].recordings["r1"]
        rec.stage, rec.next_at = "transferred", None
        w.end_meeting(w.domain(2), kept[0], "ended-by-moderator")
    converge(s, w, lambda: len(vm_names(w)) == 1 and not orphans(w)[0], check=lambda: not cut_meetings(w))
    assert not cut_meetings(w)


@pytest.mark.parametrize("stage", ["clone:created", "clone:powered_on",
                                   pytest.param("enable:checked", marks=pytest.mark.slow)])
def test_crash_mid_clone_recovers_with_no_duplicate_and_no_orphan(bed, stage):
    pool, _, settings = bed
    w = pool.world
    s = make_scaler(settings)

    def crash(at, action):
        if at == stage:
            raise SimulatedCrash(at)

    s.actuator._hook = crash
    with pytest.raises(SimulatedCrash):
        converge(s, w, lambda: False)
    assert "bbb-1" in vm_names(w)
    time.sleep(1.05)  # the crashed scaler's lease expires (lock_ttl_seconds: 1)
    s2 = make_scaler(settings)
    converge(s2, w, lambda: enabled_slots(w) == {1} and orphans(w) == ([], []) and len(vm_names(w)) == 1)
    assert vm_names(w) == ["bbb-1"]


@pytest.mark.parametrize("stage", ["panic:checked", "terminate:done",
                                   pytest.param("cordon:done", marks=pytest.mark.slow),
                                   pytest.param("panic:done", marks=pytest.mark.slow),
                                   pytest.param("terminate:checked", marks=pytest.mark.slow)])
def test_crash_mid_drain_recovers_with_no_orphan(bed, stage):
    pool, _, settings = bed
    w = pool.world
    s = make_scaler(settings)
    converge(s, w, lambda: enabled_slots(w) == {1})
    add_meetings(w, 1, 4, 100)  # 400 participants -> 2 servers
    converge(s, w, lambda: len(enabled_slots(w)) >= 2)
    with w.lock:
        w.bbb_hosts[w.domain(1)].meetings.clear()
    crashed = []

    def crash(at, action):
        if at == stage and not crashed:
            crashed.append(at)
            raise SimulatedCrash(at)

    s.actuator._hook = crash
    with pytest.raises(SimulatedCrash):
        converge(s, w, lambda: False)
    time.sleep(1.05)
    s2 = make_scaler(settings)
    converge(s2, w, lambda: len(vm_names(w)) == 1 and orphans(w) == ([], []) and len(enabled_slots(w)) == 1)
    assert not cut_meetings(w)


def test_prometheus_down_holds_scale_in_and_scale_in_resumes_after(bed):
    pool, prom, settings = bed
    w = pool.world
    metrics = ScalerMetrics()
    s = make_scaler(settings, metrics=metrics)
    converge(s, w, lambda: enabled_slots(w) == {1})
    add_meetings(w, 1, 4, 100)
    converge(s, w, lambda: len(enabled_slots(w)) >= 2)
    before = len(enabled_slots(w))
    with w.lock:
        w.bbb_hosts[w.domain(1)].meetings.clear()
    prom.status = 503
    for _ in range(6):
        outcome = s.cycle()
        assert not any(a.kind in (ActionKind.CORDON, ActionKind.TERMINATE, ActionKind.PANIC)
                       for a in outcome.plan.actions)
        time.sleep(0.1)
    assert any("prometheus" in h for h in outcome.plan.decision.holds)
    assert metrics.registry.get_sample_value("divims_scaler_hold", {"pool": "testbed",
                                                                   "reason": "prometheus_unreachable"}) == 1
    assert len(enabled_slots(w)) == before
    prom.status = None
    converge(s, w, lambda: len(vm_names(w)) == 1)
    assert metrics.registry.get_sample_value("divims_scaler_hold", {"pool": "testbed",
                                                                   "reason": "prometheus_unreachable"}) is None


def test_a_429_storm_makes_no_duplicate(bed):
    pool, _, settings = bed
    w = pool.world
    s = make_scaler(settings)
    s.cloud.base_delay, s.cloud.max_delay = 0.02, 0.2  # the backoff of the real client, in test time
    converge(s, w, lambda: enabled_slots(w) == {1})
    w.faults["scaleway"].error_rate = 0.5
    w.faults["scaleway"].error_status = 429
    add_meetings(w, 1, 10, 100)
    failed = 0
    for _ in range(5):  # the storm: half of Scaleway's answers are 429 (retried with backoff)
        outcome = s.cycle()
        assert_no_duplicate(w)
        failed += sum(1 for r in outcome.results if r.result == "failed")
    w.faults["scaleway"].error_rate = 0.0
    converge(s, w, lambda: len(enabled_slots(w)) == 5 and len(vm_names(w)) == 5 and orphans(w) == ([], []),
             cycles=60)
    assert s.metrics.registry.get_sample_value(
        "divims_scaler_actions_total", {"pool": "testbed", "action": "clone", "result": "ok"}) >= 4


def test_plan_sends_no_write_to_any_service(bed):
    pool, _, settings = bed
    w = pool.world
    s = make_scaler(settings)
    converge(s, w, lambda: enabled_slots(w) == {1} and len(vm_names(w)) == 1 and orphans(w) == ([], []))
    add_meetings(w, 1, 10, 100)  # the plan would clone four servers
    with w.lock:
        vm_state = {vm.id: vm.state for vm in w.vms.values()}
        sl_state = {sv.id: sv.state for sv in w.scalelite_servers.values()}
    scalelite_calls = []
    original = pool.scalelite.handle

    def recording(method, path, headers, body):
        scalelite_calls.append((method, path.split("?")[0]))
        return original(method, path, headers, body)

    pool.scalelite.handle = recording
    pool.scaleway.requests.clear()

    from scaler.cli import plan_command
    out = io.StringIO()
    assert plan_command(settings, list(settings.pools), as_json=False, out=out) == 0
    text = out.getvalue()
    assert "clone" in text and "load" in text and "final" in text and "participants" in text
    assert not any(secret in text for secret in pool.environment().values())
    methods = {m for m, _, _ in pool.scaleway.requests} | {m for m, _ in scalelite_calls}
    assert pool.scaleway.requests and scalelite_calls  # it did read both
    assert methods == {"GET"}, methods
    with w.lock:
        assert {vm.id: vm.state for vm in w.vms.values()} == vm_state
        assert {sv.id: sv.state for sv in w.scalelite_servers.values()} == sl_state
    assert not w.ended_meetings


def test_two_scalers_on_one_pool_exactly_one_acts(bed):
    pool, _, settings = bed
    w = pool.world
    a, b = make_scaler(settings), make_scaler(settings)
    first, second = a.cycle(), b.cycle()
    assert first.acted and not second.acted
    assert "another scaler" in second.error and "waiting" in second.error
    for _ in range(3):
        assert a.cycle().acted and not b.cycle().acted
        time.sleep(0.1)
    assert_no_duplicate(w)
    # the active one dies (no release): the other takes over once the lease expires
    time.sleep(1.05)
    assert b.cycle().acted
    assert not a.cycle().acted
    with w.lock:
        assert all(vm.state == RUNNING or vm.pending for vm in w.vms.values())
