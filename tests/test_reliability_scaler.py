"""Matrix rows 1 (crash at every step), 2 (Scaleway faults), 3 (Scalelite down) and 4 (Prometheus empty /
stale) against the testbed over real HTTP (the `bed` fixture of tests/scaler_fixtures.py: the official
Scaleway SDK against FakeScaleway, ScaleliteHTTP against FakeScalelite, the BBB client against the fake
fleet, a Prometheus answering the shipped queries from the world). Rows 4 (down) and 6 are in
tests/test_scaler_scenarios.py; each test here records its figure."""

from __future__ import annotations

import time

import pytest
from reliability_fixtures import FULL, record_figure
from scaler_fixtures import (
    SimulatedCrash,
    add_meetings,
    assert_no_duplicate,
    bed,
    bed_extra,
    converge,
    cut_meetings,
    enabled_slots,
    make_scaler,
    orphans,
    scenario_bed,
    vm_names,
)

from scaler.snapshot import ActionKind
from testbed.world import FakeRecording

__all__ = ["bed"]

DESTRUCTIVE = (ActionKind.CORDON, ActionKind.TERMINATE, ActionKind.PANIC)
# clone:ip_attached runs with flexible IPs on: `test_crash_after_the_ip_is_attached_converges` (bed_ips).
STAGES = ["clone:created", "clone:powered_on", "cordon:done", "panic:checked", "panic:done", "terminate:checked",
          "terminate:done"]


def orphan_ips(world) -> list[str]:
    with world.lock:
        return [ip.id for ip in world.ips.values() if ip.server_id is None or ip.server_id not in world.vms]


def two_servers_one_busy(scaler, w) -> None:
    """Slot 1 keeps a meeting and an unfinished recording; slot 2 goes idle (the scale-in candidate)."""
    converge(scaler, w, lambda: enabled_slots(w) == {1})
    add_meetings(w, 1, 4, 100)  # 400 participants -> 2 servers
    converge(scaler, w, lambda: len(enabled_slots(w)) >= 2, cycles=60)


@pytest.fixture
def bed_ips(tmp_path, monkeypatch):
    """The `bed` pool with flexible IPs on: each slot keeps an IP, attached to each new clone."""
    extra = bed_extra(tmp_path)
    extra["pools"][0]["scaleway"]["flexible_ips"] = True
    with scenario_bed(tmp_path, monkeypatch, extra) as parts:
        yield parts


def test_crash_after_the_ip_is_attached_converges(bed_ips):
    pool, _, settings = bed_ips
    crash_then_restart(pool, settings, "clone:ip_attached")
    with pool.world.lock:
        attached = {ip.server_id for ip in pool.world.ips.values()}
        names = {vm.id for vm in pool.world.vms.values()}
    assert names <= attached, "every VM has its slot's IP"


@pytest.mark.parametrize("stage", STAGES)
def test_crash_at_every_step_converges_without_duplicate_orphan_or_cut(bed, stage):
    pool, _, settings = bed
    crash_then_restart(pool, settings, stage)


def crash_then_restart(pool, settings, stage: str) -> None:
    """Crashes the scaler at `stage`, restarts it, and checks it converges with nothing lost or doubled."""
    w = pool.world
    s = make_scaler(settings)
    if stage.startswith("clone"):
        add_meetings(w, 1, 4, 100)  # demand for a second server at once: the clone path runs
    else:
        two_servers_one_busy(s, w)
        with w.lock:
            busy = w.bbb_hosts[w.domain(1)]
            for mid in list(busy.meetings)[1:]:
                busy.meetings.pop(mid)
            busy.recordings["r1"] = FakeRecording("r1", "m", "processing", w.now(), w.now(), None)
            # the idle one: slot 2 gets its meetings cleared, slot 1 keeps one meeting and a recording
            w.bbb_hosts[w.domain(2)].meetings.clear()
    crashed: list[str] = []

    def crash(at, action):
        if at == stage and not crashed:
            crashed.append(at)
            raise SimulatedCrash(at)

    s.actuator._hook = crash
    with pytest.raises(SimulatedCrash):
        converge(s, w, lambda: False, cycles=60)
    assert crashed == [stage]
    time.sleep(1.05)  # the crashed scaler's lease (lock_ttl_seconds: 1) expires
    s2 = make_scaler(settings)
    cycles = []

    def settled() -> bool:
        """Every VM serving (enabled) or gone, nothing orphaned: the pool is at rest."""
        cycles.append(1)
        names = vm_names(w)
        with w.lock:
            at_rest = all(vm.state == "running" and not vm.pending for vm in w.vms.values())
        return (at_rest and orphans(w) == ([], []) and not orphan_ips(w) and len(names) >= 1
                and len(enabled_slots(w)) == len(names) and (len(names) >= 2 or not stage.startswith("clone")))
    converge(s2, w, settled, cycles=80)
    assert_no_duplicate(w)
    assert not cut_meetings(w)
    if not stage.startswith("clone"):
        with w.lock:
            assert w.vm_of_host(w.domain(1)) is not None, "the server with a meeting and a recording was kept"
    record_figure("1", f"crash at {stage}: converged in {len(cycles)} cycles; 0 duplicate, 0 orphan VM/IP/volume, "
                       "0 cut meetings", stage=stage, cycles=len(cycles))


def test_scalelite_down_ten_minutes_no_scale_in_nothing_enabled_then_resumes(bed):
    """10 minutes compressed: at a 60 s interval that is 10 cycles; here 10 cycles with Scalelite refusing."""
    pool, _, settings = bed
    w = pool.world
    s = make_scaler(settings)
    two_servers_one_busy(s, w)
    with w.lock:
        for h in w.bbb_hosts.values():
            h.meetings.clear()  # load falls to zero: scale-in would be due
    add_meetings(w, 1, 6, 100)  # ...and demand rises too: a clone may start but must not be enabled blind
    before = {sid: srv.state for sid, srv in w.scalelite_servers.items()}
    w.faults["scalelite"].down = True
    destructive = enabled = 0
    holds = set()
    for _ in range(10):
        outcome = s.cycle()
        assert_no_duplicate(w)
        if outcome.plan is not None:
            destructive += sum(a.kind in DESTRUCTIVE for a in outcome.plan.actions)
            enabled += sum(a.kind == ActionKind.ENABLE for a in outcome.plan.actions)
            holds.update(outcome.plan.decision.holds)
        time.sleep(0.08)
    with w.lock:
        after = {sid: srv.state for sid, srv in w.scalelite_servers.items()}
    assert destructive == 0 and enabled == 0
    assert after == before  # nothing cordoned, panicked, enabled or added while it was down
    w.faults["scalelite"].down = False
    converge(s, w, lambda: len(enabled_slots(w)) >= 3, cycles=80)
    record_figure("3", f"Scalelite down 10 cycles: {destructive} scale-in actions, {enabled} enables; "
                       f"resumed to {len(enabled_slots(w))} enabled after", holds=sorted(holds))


@pytest.mark.parametrize("fault", ["500s", "timeouts", "slow"])
def test_scaleway_faults_actions_complete_after_without_duplicate(bed, fault):
    pool, _, settings = bed
    w = pool.world
    s = make_scaler(settings)
    s.cloud.base_delay, s.cloud.max_delay = 0.02, 0.2
    converge(s, w, lambda: enabled_slots(w) == {1})
    f = w.faults["scaleway"]
    if fault == "500s":
        f.error_rate, f.error_status = 0.5, 500
    elif fault == "timeouts":
        f.timeout_rate, f.hang_seconds = 0.3, 3.0 if FULL else 2.3  # over the client's 2 s timeout
    else:
        # "5-second responses" against a 10 s timeout, compressed: 1 s against 2 s (CI: 0.4 s)
        f.latency_seconds = 1.0 if FULL else 0.4
    add_meetings(w, 1, 10, 100)  # 1000 participants -> 5 servers
    started = time.monotonic()
    longest = 0.0
    for _ in range(4 if FULL else 2):  # cycles in the storm
        t = time.monotonic()
        s.cycle()
        longest = max(longest, time.monotonic() - t)
        assert_no_duplicate(w)
    f.error_rate = f.timeout_rate = f.latency_seconds = 0.0
    converge(s, w, lambda: len(enabled_slots(w)) == 5 and len(vm_names(w)) == 5 and orphans(w) == ([], [])
             and not orphan_ips(w), cycles=80)
    errors = sum(v.value for m in s.metrics.registry.collect() if m.name == "divims_scaler_errors"
                 for v in m.samples if v.name.endswith("_total"))
    record_figure("2", f"Scaleway {fault}: 5 of 5 servers after the storm, 0 duplicate, longest cycle "
                       f"{longest:.1f} s, divims_scaler_errors_total {errors:.0f}", fault=fault, longest=longest,
                  errors=errors, seconds=time.monotonic() - started)
    assert longest < 60  # backoff bounded: retries x timeout, not forever


@pytest.mark.parametrize("kind", ["empty", "stale"])
def test_prometheus_empty_or_stale_holds_scale_in_with_the_reason(bed, kind):
    pool, prom, settings = bed
    w = pool.world
    s = make_scaler(settings)
    two_servers_one_busy(s, w)
    with w.lock:
        w.bbb_hosts[w.domain(1)].meetings.clear()
    before = len(enabled_slots(w))
    provider = prom.provider
    if kind == "empty":
        prom.provider = lambda q: []
    else:  # every series' timestamp an hour old
        prom.provider = lambda q: ([{**r, "value": [0, "3600"]} for r in provider(q)] if "timestamp(" in q
                                   else provider(q))
    holds = set()
    for _ in range(6):
        outcome = s.cycle()
        assert not any(a.kind in DESTRUCTIVE for a in outcome.plan.actions)
        holds.update(outcome.plan.decision.holds)
        time.sleep(0.08)
    assert len(enabled_slots(w)) == before and holds
    prom.provider = provider
    converge(s, w, lambda: len(vm_names(w)) == 1, cycles=80)
    record_figure("4", f"Prometheus {kind}: 0 scale-in actions in 6 cycles, holds shown: {sorted(holds)}; "
                       "scale-in resumed after", kind=kind)
