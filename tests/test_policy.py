"""The policy's terms, damping and holds (scaler/policy.py): table-driven, pure."""

from __future__ import annotations

import pytest

from divims.model import VM, ScaleliteServer, ScaleliteState, VMState, pool_tags
from divims.schedule import Floor
from scaler import policy
from scaler.policy import PolicyParams, PolicyState
from scaler.snapshot import ActionRequest, Signal, Signals, SlotState, Snapshot

P = PolicyParams(participants_per_server=250, meetings_per_server=15, size_min=1, size_max=20,
                 boot_time_seconds=600, interval_seconds=60, scrape_lag_seconds=60,
                 target_utilization=0.8, spare_servers=0)
NOW = 1_800_000_000.0


def sig(name: str, v: float | None) -> Signal:
    return Signal(name, v, reason="" if v is not None else "stale")


def signals(p=None, m=None, g=None, y=None, w=None, ym=None, wm=None, y_now=None, w_now=None, up=True) -> Signals:
    return Signals(sig("participants", p), sig("meetings", m), sig("participants_growth", g),
                   sig("participants_yesterday", y), sig("participants_last_week", w),
                   sig("meetings_yesterday", ym), sig("meetings_last_week", wm),
                   sig("participants_yesterday_now", y_now), sig("participants_last_week_now", w_now),
                   prometheus_up=up)


def serving(n: int) -> SlotState:
    vm = VM(f"id{n}", f"bbb-{n}", VMState.RUNNING, "PRO2-M", "fr-par-1", pool_tags("p", n), NOW - 7200, NOW - 7200)
    sl = ScaleliteServer(f"s{n}", f"https://bbb-{n}/bigbluebutton/api", "x", ScaleliteState.ENABLED, True, 10.0)
    return SlotState(n, f"bbb-{n}", f"bbb-{n}", vm, sl, meetings=1, participants=10, recordings_unfinished=0,
                     bbb_api_up=True, services_healthy=True, recordings_failed=0, uptime_seconds=7000)


def snap(sigs: Signals, active: int = 2, requests=(), now: float = NOW, complete: bool = True) -> Snapshot:
    return Snapshot("p", now, sigs, tuple(serving(n) for n in range(1, active + 1)), requests=tuple(requests),
                    inventory_complete=complete)


# participants, meetings, growth/s -> servers (u = 0.8, horizon = 720 s)
@pytest.mark.parametrize("p, m, g, expected", [
    (0, 0, 0, 0),
    (200, 5, 0, 1),            # 200 / (250*0.8) = 1
    (201, 5, 0, 2),
    (1000, 60, 0, 5),          # the DiViMS example: DiViMS says 8
    (1000, 60, -3, 5),         # falling: no headroom removed below the load
    (1000, 60, 1, 9),          # +720 expected: 1720 / 200 = 8.6
    (100, 40, 0, 4),           # meetings bind: 40 / 12 = 3.3
    (1000, 60, None, 5),       # growth unknown: taken as 0
])
def test_load_term(p, m, g, expected):
    t = policy.load_term(signals(p, m, g), P)
    assert t.servers == expected and t.name == "load" and t.reason


def test_load_term_unknown_signal_says_which():
    t = policy.load_term(signals(None, 4), P)
    assert t.servers is None and "participants" in t.reason and "stale" in t.reason


def test_load_term_caps_a_foretold_ramp_at_the_expected_peak():
    free = policy.load_term(signals(1000, 40, 2.0), P)
    capped = policy.load_term(signals(1000, 40, 2.0), P, expected_peak=1200)
    assert free.servers == 13 and capped.servers == 7 and "capped" in capped.reason
    # above the expectation it is a surprise: extrapolated in full
    assert policy.load_term(signals(1300, 40, 2.0), P, expected_peak=1200).servers == 14


def test_spare_server_once_past_half_a_server():
    params = PolicyParams(target_utilization=0.85, spare_servers=1)
    assert policy.load_term(signals(100, 4, 0), params).servers == 1
    assert policy.load_term(signals(130, 4, 0), params).servers == 2
    assert policy.load_term(signals(2300, 90, 0), params).servers == 11


@pytest.mark.parametrize("floor, expected", [
    (None, None), (Floor(None, "no weekly period now"), None), (Floor(2400, "w"), 10), (Floor(2001, "w"), 9),
])
def test_schedule_term(floor, expected):
    assert policy.schedule_term(floor, P).servers == expected


@pytest.mark.parametrize("kw, expected", [
    ({}, None),
    ({"y": 1000, "ym": 10}, 5),
    ({"y": 1000, "w": 1600}, 8),
    ({"p": 10, "y": 2000, "y_now": 100}, 2),     # Saturday after a Friday: scaled by (10+10)/(100+10)
    ({"p": 100, "y": 2000, "y_now": 100}, 10),   # today like yesterday
    ({"p": 1000, "y": 1000, "y_now": 10}, 8),    # today far above: the ratio is capped at 1.5
])
def test_forecast_term(kw, expected):
    args = {"p": 10, "m": 1, **kw}
    assert policy.forecast_term(signals(**args), P).servers == expected


def test_damping_scales_out_at_once_and_in_after_the_window():
    state = PolicyState()
    final, state, _ = policy.damp(5, NOW, state, P)
    assert final == 5
    final, state, reason = policy.damp(2, NOW + 60, state, P)
    assert final == 5 and "damped" in reason
    final, state, _ = policy.damp(8, NOW + 120, state, P)
    assert final == 8
    final, state, _ = policy.damp(2, NOW + 120 + 901, state, P)
    assert final == 2
    assert all(t > NOW + 120 for t, _ in state.history)


def test_decide_takes_the_max_of_terms_and_clamps():
    d, _ = policy.decide(snap(signals(200, 5, 0)), P, PolicyState(), Floor(2400, "weekly"))
    assert d.desired == 10 and {t.name for t in d.terms} == {"load", "schedule", "forecast", "request"}
    d, _ = policy.decide(snap(signals(100000, 5, 0)), P, PolicyState())
    assert d.desired == 20
    d, _ = policy.decide(snap(signals(0, 0, 0)), P, PolicyState())
    assert d.desired == 1


@pytest.mark.parametrize("sigs, hold", [
    (signals(None, 3, 0), "participants unknown"),
    (signals(10, None, 0), "meetings unknown"),
    (signals(10, 3, 0, up=False), "prometheus unreachable"),
])
def test_unknown_signals_hold_scale_in_never_zero(sigs, hold):
    d, _ = policy.decide(snap(sigs, active=6), P, PolicyState())
    assert d.desired == 6 and any(hold in h for h in d.holds)


def test_unknown_signals_still_scale_out_on_the_known_terms():
    d, _ = policy.decide(snap(signals(None, None), active=2), P, PolicyState(), Floor(2400, "w"))
    assert d.desired == 10 and d.holds


def test_incomplete_inventory_holds_scale_in():
    d, _ = policy.decide(snap(signals(0, 0, 0), active=4, complete=False), P, PolicyState())
    assert d.desired == 4 and any("inventory" in h for h in d.holds)


def test_scale_out_request_adds_servers_once_until_its_end():
    req = ActionRequest(7, "scale_out", servers=2, until=NOW + 600)
    d, state = policy.decide(snap(signals(10, 1, 0), active=3, requests=[req]), P, PolicyState())
    assert d.desired == 5
    # next cycle: 5 active, the request still asks for 5 (not 7)
    d, state = policy.decide(snap(signals(10, 1, 0), active=5, requests=[req], now=NOW + 60), P, state)
    assert d.desired == 5
    d, state = policy.decide(snap(signals(10, 1, 0), active=5, now=NOW + 2000), P, state)
    assert d.desired == 1 and state.requests == ()


def test_hold_scale_in_request():
    req = ActionRequest(8, "hold_scale_in", until=NOW + 600, reason="exam")
    d, _ = policy.decide(snap(signals(10, 1, 0), active=4, requests=[req]), P, PolicyState())
    assert d.desired == 4 and any("exam" in h for h in d.holds)


def test_policy_state_round_trips_through_json():
    s = PolicyState(history=((NOW, 3), (NOW + 60, 4)), requests=((1, 5, NOW + 600),), classic_previous=(NOW, 10, 2))
    assert PolicyState.from_json(s.to_json()) == s
    with pytest.raises(ValueError, match="policy state"):
        PolicyState.from_json('{"history": [["x"]]}')


@pytest.mark.parametrize("p, m, prev, expected", [
    (1000, 60, None, 8),               # divims.md's example
    (1000, 60, (800, 60), 12),         # participants grew 1.25x: factor 3
    (1000, 60, (1000, 40), 12),        # meetings grew 1.5x: factor 3 -> 180/15
    (0, 0, None, 1),                   # floored to 1, minimum ceil(20 * 0.01)
])
def test_classic_rule(p, m, prev, expected):
    assert policy.classic_load_servers(p, m, prev, P) == expected


def test_decide_classic_remembers_the_previous_run():
    st = PolicyState()
    d, st = policy.decide_classic(snap(signals(800, 60)), P, st)
    assert d.desired == 8 and st.classic_previous == (NOW, 800, 60)
    d, st = policy.decide_classic(snap(signals(1000, 60), now=NOW + 300), P, st)
    assert d.desired == 12
    # older than 1.8 runs: the past values are forgotten
    d, st = policy.decide_classic(snap(signals(1500, 60), now=NOW + 300 + 600), P, st)
    assert d.desired == 12
