"""Matrix row 9 (endurance), shortened for CI: 60 servers for 12 s, 1 simulated day (`bench/endurance.py
--short` is 20 s and 2 days; DIVIMS_FULL=1 runs the full row: 500 servers for 10 min, 30 days)."""

from __future__ import annotations

from reliability_fixtures import FULL, record_figure

from bench.endurance import GROWTH_LIMIT, run


def test_endurance_short_memory_stable_and_invariants_hold():
    out = run(short=False) if FULL else run(short=True, seconds=12.0, days=1)
    exp, sca = out["exporter"], out["scaler"]
    record_figure("9", f"exporter {exp['servers']} servers x {exp['cycles']} cycles: RSS growth "
                       f"{exp['growth']:.1%}, every server up every cycle; scaler {sca['days']} simulated days: "
                       f"RSS growth {sca['growth']:.1%}, {sca['meetings_killed']} meetings killed, invariants held",
                  **{f"exporter_{k}": v for k, v in exp.items()}, scaler_days=sca["days"])
    assert exp["cycles"] >= 10 and exp["worst_servers_up"] == exp["servers"]
    assert exp["growth"] < GROWTH_LIMIT and sca["growth"] < GROWTH_LIMIT
    assert sca["meetings_killed"] == 0 and sum(sca["actions"].values()) > 0
    assert out["ok"]
