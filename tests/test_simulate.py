"""The backtest (scaler/simulate.py): its physics, its CLI, and the acceptance goals on the shipped traces."""

from __future__ import annotations

import argparse
import json
from functools import cache
from pathlib import Path

import pytest

from divims.model import ScaleliteState
from scaler import simulate as sim
from scaler.snapshot import Action, ActionKind, Decision, Plan
from testbed.load import load_trace, parse_trace

TRACES = Path(__file__).resolve().parent.parent / "testbed" / "traces"
REQUIRED = {"policy", "server_hours", "cost_eur", "lower_bound_server_hours", "participant_minutes",
            "shortfall_participant_minutes", "shortfall_peak_participants", "unplaced_meetings",
            "peak_servers", "actions"}


def flat_trace(participants: int, meetings: int, hours: float = 2.0, start: str = "2026-03-07T10:00:00+01:00"):
    """A constant load on a Saturday (no weekly schedule applies)."""
    from datetime import datetime, timedelta
    t0 = datetime.fromisoformat(start)
    rows = ["time,participants,meetings"]
    for i in range(int(hours * 12) + 1):
        rows.append(f"{(t0 + timedelta(minutes=5 * i)).isoformat()},{participants},{meetings}")
    return parse_trace("\n".join(rows), "flat")


@cache
def result(trace: str, policy: str) -> dict:
    return sim.simulate(load_trace(TRACES / f"{trace}.csv"), policy_name=policy, check=True).as_dict()


# --- physics -----------------------------------------------------------------------------------

def _one_action(s: sim.Simulation, kind: ActionKind, slot: int, now: float) -> None:
    s.apply(Plan("simulated", Decision((), 0, 0), (Action(kind, slot, "test"),)), now)


@pytest.mark.parametrize("kind, ready_after", [(ActionKind.CLONE, 420), (ActionKind.POWERON, 240)])
def test_boot_delays(kind, ready_after):
    s = sim.Simulation(flat_trace(10, 1), sim.default_pool())
    t = s.trace.start
    _one_action(s, kind, 3, t)
    s._advance_vms(t + 29)
    assert s.vms[3].state == "starting"
    s._advance_vms(t + 30)
    assert s.vms[3].state == "running"
    assert not s._ready(3, t + ready_after - 1) and s._ready(3, t + ready_after)


def test_billing_rounds_each_power_on_period_up_with_a_one_hour_minimum():
    assert sim.billed_hours(0, 60) == 1
    assert sim.billed_hours(0, 3600) == 1
    assert sim.billed_hours(0, 3601) == 2
    s = sim.Simulation(flat_trace(10, 1), sim.default_pool())
    t = s.trace.start
    _one_action(s, ActionKind.CLONE, 5, t)
    _one_action(s, ActionKind.TERMINATE, 5, t + 600)
    assert s.periods == [(t, t + 600)]
    assert sim.billed_hours(*s.periods[0]) == 1


def test_cordoned_server_is_disabled_by_the_poll_once_empty():
    s = sim.Simulation(flat_trace(10, 1), sim.default_pool())
    t = s.trace.start
    s._initial(t)
    s.entries[1].state = ScaleliteState.CORDONED
    s._poll(t)
    assert s.entries[1].state == ScaleliteState.DISABLED


def test_meetings_stay_on_their_server_and_no_meeting_is_killed():
    r = result("conference-day", "default")  # check=True asserts the invariants every minute
    assert r["meetings_killed"] == 0 and r["unplaced_meetings"] == 0


def test_lower_bound_and_participant_minutes_on_a_flat_load():
    r = sim.simulate(flat_trace(500, 20, hours=2.0)).as_dict()
    minutes = 2 * 60 + 1
    assert r["participant_minutes"] == 500 * minutes
    # max(ceil(500/250), ceil(20/15)) = 2 servers each minute
    assert r["lower_bound_server_hours"] == pytest.approx(2 * minutes / 60, abs=0.01)
    assert r["shortfall_participant_minutes"] == 0


def test_no_enabled_server_means_unplaced_meetings_and_shortfall():
    s = sim.Simulation(flat_trace(100, 4), sim.default_pool())
    t = s.trace.start
    loads: dict[str, float] = {}
    s.load.step(t, 4, 100, s._place(loads))
    s._account(t, 100, 4)
    assert s.result.unplaced_meetings == 4 and s.result.shortfall_participant_minutes == 100


def test_static_keeps_the_peak_and_classic_runs_every_five_minutes():
    trace = flat_trace(600, 20, hours=1.0)
    static = sim.simulate(trace, policy_name="static").as_dict()
    assert static["peak_servers"] == 3  # ceil(600 / (250 * 0.85)), from the first minute
    classic = sim.Simulation(trace, sim.default_pool(), policy_name="divims-classic")
    assert classic.interval == 300


def test_a_simulated_week_runs_in_under_30_seconds():
    import time
    start = time.process_time()
    sim.simulate(load_trace(TRACES / "school-week.csv"), policy_name="default")
    assert time.process_time() - start < 30


# --- CLI ---------------------------------------------------------------------------------------

def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    sim.add_arguments(p)
    return p.parse_args(list(argv))


def test_cli_json_has_every_field(capsys, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("time,participants,meetings\n2026-03-07T10:00:00+01:00,100,4\n"
                    "2026-03-07T11:00:00+01:00,300,10\n")
    assert sim.run(_args("--trace", str(path), "--json", "--policy", "all")) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["policy"] for x in lines] == list(sim.POLICIES)
    assert all(REQUIRED <= set(x) for x in lines)


def test_cli_table_and_bad_trace(capsys, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("nope\n")
    assert sim.run(_args("--trace", str(bad))) == 2
    assert "bad" in capsys.readouterr().err


def test_cli_reads_a_config_file(capsys, tmp_path):
    import yaml
    cfg = tmp_path / "divims.yml"
    cfg.write_text(yaml.safe_dump({"pools": [{**sim.DEFAULT_POOL, "size": {"min": 2, "max": 6}}]}))
    path = tmp_path / "t.csv"
    path.write_text("time,participants,meetings\n2026-03-07T10:00:00+01:00,10,1\n2026-03-07T10:30:00+01:00,10,1\n")
    assert sim.run(_args("--trace", str(path), "--config", str(cfg), "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["peak_servers"] == 2


# --- the acceptance goals (issue 4) on the shipped traces ----------------------------------------

def test_goal_school_week():
    d, c = result("school-week", "default"), result("school-week", "divims-classic")
    assert d["server_hours"] <= 0.7 * c["server_hours"]
    assert d["shortfall_participant_minutes"] <= c["shortfall_participant_minutes"]
    assert d["shortfall_participant_minutes"] < 0.001 * d["participant_minutes"]
    assert d["unplaced_meetings"] == 0
    assert d["server_hours"] <= 1.5 * d["lower_bound_server_hours"]


VS_CLASSIC = ["conference-day", "webinar-evening"]


@pytest.mark.parametrize("trace", VS_CLASSIC)
def test_goal_no_more_shortfall_than_classic(trace):
    d, c = result(trace, "default"), result(trace, "divims-classic")
    assert d["shortfall_participant_minutes"] <= c["shortfall_participant_minutes"]


@pytest.mark.parametrize("trace", VS_CLASSIC)
def test_goal_server_hours_at_most_0_7_of_classic(trace):
    d, c = result(trace, "default"), result(trace, "divims-classic")
    assert d["server_hours"] <= 0.7 * c["server_hours"]
