"""The alert history: payload parsing, idempotent and monotonic recording, retention, restarts."""

from __future__ import annotations

import pytest
from alerting_fixtures import alert, notification
from hypothesis import given, settings
from hypothesis import strategies as st

from alerting.payload import PayloadError, parse_notification, parse_timestamp
from alerting.store import AlertStore


def parsed(*alerts, **extra):
    return parse_notification(notification(*alerts, **extra)).alerts


def test_timestamps_in_go_spellings_are_canonical_utc():
    a = parse_timestamp("2026-03-01T10:00:00.123456789Z", "t")
    b = parse_timestamp("2026-03-01T11:00:00.123456+01:00", "t")
    assert a == b
    assert a.text == "2026-03-01T10:00:00.123456Z"
    assert parse_timestamp("0001-01-01T00:00:00Z", "t") is None
    assert parse_timestamp("2026-03-01T10:00:00Z", "t").text == "2026-03-01T10:00:00Z"
    with pytest.raises(PayloadError, match="startsAt"):
        parse_timestamp("yesterday", "startsAt")
    with pytest.raises(PayloadError, match="invalid time"):
        parse_timestamp("2026-02-30T10:00:00Z", "t")


@pytest.mark.parametrize("body, problem", [
    ([], "expected a JSON object"),
    ({"status": "firing", "alerts": []}, "version: missing"),
    ({"version": "4", "alerts": []}, "status: missing"),
    ({"version": "4", "status": "firing"}, "alerts: missing"),
    ({"version": "3", "status": "firing", "alerts": []}, "unsupported webhook version"),
    ({"version": "4", "status": "burning", "alerts": []}, "status: expected firing or resolved"),
    ({"version": "4", "status": "firing", "alerts": {}}, "alerts: expected a list"),
    ({"version": "4", "status": "firing", "alerts": [{"status": "firing", "startsAt": "2026-03-01T10:00:00Z"}]},
     r"alerts\[0\].fingerprint: missing"),
    ({"version": "4", "status": "firing", "alerts": [{**alert("A"), "labels": {"a": 1}}]},
     r"alerts\[0\].labels.a: expected a string"),
    ({"version": "4", "status": "firing", "alerts": [{**alert("A"), "startsAt": "0001-01-01T00:00:00Z"}]},
     "not the zero time"),
])
def test_a_malformed_notification_names_the_bad_field(body, problem):
    with pytest.raises(PayloadError, match=problem):
        parse_notification(body)


def test_unknown_fields_of_newer_alertmanagers_are_accepted():
    n = parse_notification(notification(alert("A"), notification_reason="repeat", routeLabels={"a": "b"},
                                        somethingNew=[1, 2]))
    assert [a.alertname for a in n.alerts] == ["A"]


def test_a_replay_changes_nothing(tmp_path):
    store = AlertStore(tmp_path / "w.sqlite", now=lambda: 1000.0)
    alerts = parsed(alert("A", instance="1"), alert("B", instance="2"))
    assert [c.kind for c in store.record(alerts, 1000.0)] == ["new", "new"]
    before = store.list()
    for at in (1010.0, 1020.0):
        assert [c.kind for c in store.record(alerts, at)] == ["unchanged", "unchanged"]
    assert store.list() == before
    assert store.count() == 2 and store.transition_count() == 2


def test_an_occurrence_keeps_its_latest_status_and_its_transitions(tmp_path):
    store = AlertStore(tmp_path / "w.sqlite")
    firing = alert("A", fingerprint="f1")
    store.record(parsed(firing), 100.0)
    resolved = alert("A", status="resolved", fingerprint="f1", ends_at="2026-03-01T10:05:00Z")
    assert [c.kind for c in store.record(parsed(resolved), 200.0)] == ["transition"]
    # a late retry of the older firing notification does not reopen it
    assert [c.kind for c in store.record(parsed(firing), 300.0)] == ["unchanged"]
    [row] = store.list()
    assert row["status"] == "resolved"
    assert row["ends_at"] == "2026-03-01T10:05:00Z"
    assert [(t["status"], t["at"]) for t in row["transitions"]] == [("firing", 100.0), ("resolved", 200.0)]
    # the same fingerprint firing again is a new occurrence (a new startsAt)
    store.record(parsed(alert("A", fingerprint="f1", starts_at="2026-03-02T08:00:00Z")), 400.0)
    assert store.count() == 2
    assert [r["status"] for r in store.list(alertname="A")] == ["firing", "resolved"]


# The schema before the transitions moved into their rows (divims before 2026-12-03), as it created it.
_OLD_SCHEMA = """
CREATE TABLE alerts (fingerprint TEXT NOT NULL, starts_at TEXT NOT NULL, starts_at_ts REAL NOT NULL,
    alertname TEXT NOT NULL, status TEXT NOT NULL, ends_at TEXT, ends_at_ts REAL, labels TEXT NOT NULL,
    annotations TEXT NOT NULL, generator_url TEXT NOT NULL DEFAULT '', received_at REAL NOT NULL,
    updated_at REAL NOT NULL, PRIMARY KEY (fingerprint, starts_at));
CREATE INDEX alerts_status ON alerts (status, alertname);
CREATE INDEX alerts_updated ON alerts (updated_at);
CREATE TABLE alert_transitions (id INTEGER PRIMARY KEY AUTOINCREMENT, fingerprint TEXT NOT NULL,
    starts_at TEXT NOT NULL, status TEXT NOT NULL, at REAL NOT NULL, ends_at TEXT);
CREATE INDEX alert_transitions_alert ON alert_transitions (fingerprint, starts_at);
"""


def test_a_file_of_the_earlier_schema_keeps_its_history_once_migrated(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    starts, ends = "2026-03-01T10:00:00Z", "2026-03-01T10:05:00Z"
    with sqlite3.connect(path) as conn:
        conn.executescript(_OLD_SCHEMA)
        for fp, status, ends_at in (("f1", "firing", None), ("f2", "resolved", ends), ("f3", "resolved", ends)):
            conn.execute("INSERT INTO alerts VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                         (fp, starts, 1.0, "A", status, ends_at, None, '{"alertname":"A"}', "{}", "", 100.0, 200.0))
        # f1 fired; f2 fired then resolved; f3 was first seen resolved. Inserted out of key order.
        conn.executemany("INSERT INTO alert_transitions (fingerprint, starts_at, status, at, ends_at) VALUES (?,?,?,?,?)",
                         [("f2", starts, "firing", 100.0, None), ("f1", starts, "firing", 100.0, None),
                          ("f3", starts, "resolved", 100.0, ends), ("f2", starts, "resolved", 200.0, ends)])
    store = AlertStore(path, now=lambda: 1000.0)  # within the retention of these rows
    history = {r["fingerprint"]: [(t["status"], t["at"]) for t in r["transitions"]] for r in store.list()}
    assert history == {"f1": [("firing", 100.0)], "f2": [("firing", 100.0), ("resolved", 200.0)],
                       "f3": [("resolved", 100.0)]}
    assert store.transition_count() == 4
    with sqlite3.connect(path) as conn:
        assert not conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'alert_transitions%'").fetchall()
        indexes = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='alerts'"
                                              " AND sql IS NOT NULL")}
        assert indexes == {"alerts_status", "alerts_resolved"}
    # it goes on from there, and opening it again changes nothing
    resolved = alert("A", status="resolved", fingerprint="f1", starts_at=starts, ends_at=ends)
    assert [c.kind for c in store.record(parsed(resolved), 300.0)] == ["transition"]
    store.close()
    again = AlertStore(path, now=lambda: 1000.0)
    [f1] = [r for r in again.list() if r["fingerprint"] == "f1"]
    assert f1["status"] == "resolved" and [(t["status"], t["at"]) for t in f1["transitions"]] == [("firing", 100.0), ("resolved", 300.0)]
    assert again.transition_count() == 5


def test_changed_annotations_update_without_a_transition(tmp_path):
    store = AlertStore(tmp_path / "w.sqlite")
    a = alert("A", fingerprint="f1")
    store.record(parsed(a), 1.0)
    a2 = {**a, "annotations": {"summary": "now 42"}}
    assert [c.kind for c in store.record(parsed(a2), 2.0)] == ["updated"]
    [row] = store.list()
    assert row["annotations"] == {"summary": "now 42"} and len(row["transitions"]) == 1


def test_list_filters_by_status_alertname_and_since(tmp_path):
    store = AlertStore(tmp_path / "w.sqlite")
    store.record(parsed(alert("Old", status="resolved", starts_at="2026-01-01T00:00:00Z",
                              ends_at="2026-01-01T01:00:00Z")), 1.0)
    store.record(parsed(alert("Live", starts_at="2026-01-01T00:00:00Z")), 2.0)
    store.record(parsed(alert("Recent", status="resolved", starts_at="2026-03-01T00:00:00Z",
                              ends_at="2026-03-01T01:00:00Z")), 3.0)
    since = parse_timestamp("2026-02-01T00:00:00Z", "since").epoch
    assert {r["alertname"] for r in store.list(since=since)} == {"Live", "Recent"}
    assert [r["alertname"] for r in store.list(status="firing")] == ["Live"]
    assert [r["alertname"] for r in store.list(alertname="Old")] == ["Old"]
    assert len(store.list(limit=1)) == 1


def test_retention_prunes_old_resolved_alerts_only(tmp_path):
    day = 86400.0
    store = AlertStore(tmp_path / "w.sqlite", retention_days=10, now=lambda: 0.0)
    store.record(parsed(alert("Gone", status="resolved")), 0.0)
    store.record(parsed(alert("StillFiring")), 0.0)
    store.record(parsed(alert("Young", status="resolved")), 5 * day)
    assert store.prune(now=11 * day) == 1
    assert {r["alertname"] for r in store.list()} == {"StillFiring", "Young"}
    assert store.transition_count() == 2


def test_the_history_survives_a_restart(tmp_path):
    path = tmp_path / "w.sqlite"
    store = AlertStore(path)
    store.record(parsed(alert("A"), alert("B")), 1.0)
    store.close()
    again = AlertStore(path)
    assert again.count() == 2
    assert [c.kind for c in again.record(parsed(alert("A"), alert("B")), 2.0)] == ["unchanged"] * 2
    again.close()


def test_stored_label_spelling_is_sorted_compact_json():
    # the spelling is compared with what earlier versions stored: it must stay json.dumps's
    import json

    from alerting.store import _canonical

    labels = {"zeta": "é \"q\" \\ \n", "alpha": "1", "emoji": "🔥", "": ""}
    assert _canonical(labels) == json.dumps(labels, sort_keys=True, separators=(",", ":"))
    assert json.loads(_canonical(labels)) == labels


_field_values = st.one_of(st.none(), st.integers(), st.just(""), st.just([]), st.just({}),
                          st.text(max_size=3))


@settings(max_examples=400, deadline=None)
@given(overrides=st.dictionaries(
    st.sampled_from(["status", "fingerprint", "labels", "annotations", "startsAt", "endsAt", "generatorURL"]),
    st.one_of(_field_values,
              st.sampled_from(["firing", "resolved", "x" * 65, "2026-03-01T10:00:00Z", "0001-01-01T00:00:00Z",
                               "2026-02-30T10:00:00Z", "2026-03-01T11:00:00+01:00"]),
              st.dictionaries(st.text(max_size=3), st.one_of(st.text(max_size=3), st.integers()), max_size=3))),
    drop=st.sets(st.sampled_from(["status", "fingerprint", "labels", "annotations", "startsAt", "endsAt",
                                  "generatorURL"])))
def test_the_fast_path_of_alert_parsing_agrees_with_the_checked_one(overrides, drop):
    """Wherever the fast path returns an Alert, it is the checked path's; wherever the checked path
    refuses an alert, the fast path does not take it."""
    from alerting.payload import _checked_alert, _well_formed_alert

    raw = {**alert("A", fingerprint="f1"), **overrides}
    for key in drop:
        raw.pop(key, None)
    fast = _well_formed_alert(raw)
    try:
        checked = _checked_alert(raw, "alerts[0]")
    except PayloadError:
        assert fast is None
        return
    assert fast is None or fast == checked
    assert fast is not None or raw.get("labels") is None or raw.get("annotations") is None or \
        not isinstance(raw.get("generatorURL", ""), str)  # the only valid shapes left to the checked path
