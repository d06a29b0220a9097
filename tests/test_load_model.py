"""The load model and trace parsing (testbed/load.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.load import (
    LoadModel,
    TraceError,
    least_loaded,
    load_trace,
    parse_trace,
    scalelite_load,
)

TRACES = Path(__file__).resolve().parent.parent / "testbed" / "traces"

GOOD = """# a comment
time,participants,meetings
2026-03-02T08:00:00+01:00,0,0
2026-03-02T08:10:00+01:00,100,10
2026-03-02T08:20:00+01:00,100,4
"""


def test_each_trace_row_holds_until_the_next_and_outside():
    t = parse_trace(GOOD, "t")
    assert t.at(t.start) == (0.0, 0.0)
    assert t.at(t.start + 300) == (0.0, 0.0)      # the 08:00 row holds until 08:10
    assert t.at(t.start + 599.9) == (0.0, 0.0)
    assert t.at(t.start + 600) == (100.0, 10.0)
    assert t.at(t.start + 900) == (100.0, 10.0)
    assert t.at(t.start - 999) == (0.0, 0.0)
    assert t.at(t.end + 999) == (100.0, 4.0)
    assert t.end - t.start == 1200


@pytest.mark.parametrize("text, words", [
    ("", "empty"),
    ("when,participants,meetings\n2026-03-02T08:00:00+01:00,1,1\n", "header"),
    ("time,participants,meetings\nnot-a-date,1,1\n2026-03-02T08:00:00+01:00,1,1\n", "row 2"),
    ("time,participants,meetings\n2026-03-02T08:00:00,1,1\n2026-03-02T08:05:00,1,1\n", "UTC offset"),
    ("time,participants,meetings\n2026-03-02T08:00:00+01:00,x,1\n2026-03-02T08:05:00+01:00,1,1\n", "integers"),
    ("time,participants,meetings\n2026-03-02T08:00:00+01:00,-1,1\n2026-03-02T08:05:00+01:00,1,1\n", "negative"),
    ("time,participants,meetings\n2026-03-02T08:05:00+01:00,1,1\n2026-03-02T08:00:00+01:00,1,1\n", "not after"),
    ("time,participants,meetings\n2026-03-02T08:05:00+01:00,1,1\n", "two rows"),
])
def test_bad_traces_are_named_errors(text, words):
    with pytest.raises(TraceError) as exc:
        parse_trace(text, "bad")
    assert "bad" in str(exc.value) and words in str(exc.value)


def test_missing_trace_file_is_a_trace_error(tmp_path):
    with pytest.raises(TraceError, match="cannot read"):
        load_trace(tmp_path / "nope.csv")


def test_shipped_traces_parse():
    names = sorted(p.stem for p in TRACES.glob("*.csv"))
    assert len(names) >= 3
    for name in names:
        t = load_trace(TRACES / f"{name}.csv")
        assert max(t.participants) > 0 and t.end > t.start


def test_scalelite_load_counts_young_meetings_at_least_15():
    assert scalelite_load([(3, 60.0)]) == 15
    assert scalelite_load([(3, 16 * 60.0)]) == 3
    assert scalelite_load([(40, 0.0), (3, 1000.0)], multiplier=2.0) == 86


def test_least_loaded_picks_lowest_then_name():
    assert least_loaded({}) is None
    assert least_loaded({"b": 1.0, "a": 1.0, "c": 0.5}) == "c"
    assert least_loaded({"b": 1.0, "a": 1.0}) == "a"


def _run(model: LoadModel, steps: list[tuple[float, int, int]]):
    placed: dict[str, str] = {}
    servers = ["s1", "s2", "s3"]

    def place(m):
        host = servers[len(placed) % len(servers)]
        placed[m.id] = host
        return host
    results = []
    for t, m, p in steps:
        results.append(model.step(t, m, p, place))
        for mt in model.meetings.values():
            assert mt.server == placed[mt.id], "a meeting never moves"
        assert sum(mt.participants for mt in model.meetings.values()) == (p if model.meetings else 0)
        assert len(model.meetings) == m
    return results


def test_count_follows_target_and_participants_are_shared_exactly():
    model = LoadModel(seed=3)
    _run(model, [(0, 5, 100), (60, 8, 250), (120, 8, 251), (180, 2, 40), (240, 0, 0)])


def test_oldest_end_first_when_the_target_drops():
    model = LoadModel(seed=4)
    model.step(0, 3, 30, lambda m: "s")
    model.step(60, 5, 50, lambda m: "s")
    first = sorted(model.meetings)[:3]
    res = model.step(120, 2, 20, lambda m: "s")
    assert {m.id for m in res.ended} == {"m1", "m2", "m3"} == set(first)


def test_durations_end_meetings_between_min_and_max():
    model = LoadModel(seed=5, min_duration_seconds=600, max_duration_seconds=900)
    model.step(0, 10, 100, lambda m: "s")
    ends = [m.planned_end for m in model.meetings.values()]
    assert all(600 <= e <= 900 for e in ends)
    # keep asking for 10: the ended ones are replaced by new meetings
    model.step(901, 10, 100, lambda m: "s")
    assert all(m.start == 901 for m in model.meetings.values())


def test_unplaced_meetings_keep_no_server():
    model = LoadModel(seed=6)
    model.step(0, 2, 20, lambda m: None)
    assert all(m.server is None for m in model.meetings.values())


def test_model_is_deterministic_for_a_seed():
    a, b = LoadModel(seed=9), LoadModel(seed=9)
    for t in range(0, 3600, 60):
        a.step(t, 5 + t // 600, 50 + t // 60, lambda m: "s")
        b.step(t, 5 + t // 600, 50 + t // 60, lambda m: "s")
    assert [(m.id, m.planned_end, m.participants) for m in a.meetings.values()] == \
           [(m.id, m.planned_end, m.participants) for m in b.meetings.values()]
