"""The durable request queue between the webhook and the scaler, and the matchers that fill it."""

from __future__ import annotations

import threading

import pytest
from alerting_fixtures import alert, make_settings

from alerting.actions import ActionDispatcher, ActionMapper, compile_rules
from alerting.payload import parse_notification
from alerting.requests import RequestQueue, SubmitStatus
from scaler.snapshot import ActionRequest

T0 = 1_800_000_000.0


def submit(q: RequestQueue, fp: str = "f1", action: str = "scale_out", pool: str = "p1", at: float = T0, **kw):
    defaults = {"scale_out": {"servers": 2, "for_seconds": 600}, "hold_scale_in": {"for_seconds": 600},
                "replace_server": {"server": "bbb-1.p1.test"}, "cordon_server": {"server": "bbb-1.p1.test"}}
    args = {**defaults[action], **kw}
    return q.submit(pool=pool, action=action, fingerprint=fp, starts_at="2026-03-01T10:00:00Z",
                    alertname="A", now=at, **args)


def test_a_request_is_offered_to_the_scaler_as_an_action_request(tmp_path):
    q = RequestQueue(tmp_path / "q.sqlite")
    r = submit(q)
    assert r.status is SubmitStatus.SUBMITTED
    assert q.pending("p1", T0 + 1) == [ActionRequest(id=r.id, action="scale_out", servers=2, until=T0 + 600,
                                                     reason="alert A")]
    assert q.pending("other", T0 + 1) == []


def test_the_same_alert_occurrence_is_requested_once(tmp_path):
    q = RequestQueue(tmp_path / "q.sqlite")
    first = submit(q)
    again = submit(q, at=T0 + 30)
    assert again == type(first)(first.id, SubmitStatus.DUPLICATE)
    assert len(q.all()) == 1
    # another action for the same alert, or another occurrence, is a different request
    assert submit(q, action="hold_scale_in").status is SubmitStatus.SUBMITTED
    assert q.submit(pool="p1", action="scale_out", fingerprint="f1", starts_at="2026-03-02T00:00:00Z",
                    servers=1, for_seconds=60, now=T0).status is SubmitStatus.SUBMITTED


def test_claim_succeeds_for_exactly_one_caller_even_across_connections(tmp_path):
    path = tmp_path / "q.sqlite"
    rid = submit(RequestQueue(path), action="replace_server").id
    queues = [RequestQueue(path) for _ in range(8)]  # 8 connections, as 8 processes would have
    wins: list[bool] = []
    barrier = threading.Barrier(len(queues))

    def race(q: RequestQueue) -> None:
        barrier.wait()
        wins.append(q.claim(rid, now=T0 + 1))

    threads = [threading.Thread(target=race, args=(q,)) for q in queues]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]
    assert queues[0].pending("p1", T0 + 2) == []
    assert queues[0].complete(rid, "ok", "replaced", now=T0 + 3)
    assert not queues[0].complete(rid, "failed", now=T0 + 4)  # a second complete changes nothing
    stored = queues[0].get(rid)
    assert (stored.status, stored.result, stored.detail) == ("done", "ok", "replaced")
    for q in queues:
        q.close()


def test_a_scale_out_term_lasts_until_its_end_even_once_claimed(tmp_path):
    q = RequestQueue(tmp_path / "q.sqlite")
    rid = submit(q).id
    assert q.claim(rid, now=T0 + 1)
    assert [r.id for r in q.pending("p1", T0 + 599)] == [rid]
    assert q.pending("p1", T0 + 600) == []
    q.complete(rid, "ok", now=T0 + 2)
    assert q.pending("p1", T0 + 3) == []


def test_one_shot_requests_expire_unclaimed(tmp_path):
    q = RequestQueue(tmp_path / "q.sqlite", ttl_seconds=100)
    rid = submit(q, action="cordon_server").id
    assert [r.server for r in q.pending("p1", T0 + 99)] == ["bbb-1.p1.test"]
    assert q.pending("p1", T0 + 101) == []
    assert not q.claim(rid, now=T0 + 101)


def test_a_resolved_alert_ends_its_hold(tmp_path):
    q = RequestQueue(tmp_path / "q.sqlite")
    hold = submit(q, action="hold_scale_in").id
    scale = submit(q).id
    assert [h.id for h in q.active_holds("p1", T0 + 10)] == [hold]
    assert q.end_for_alert("f1", "2026-03-01T10:00:00Z", now=T0 + 20) == 1
    assert q.end_for_alert("f1", "2026-03-01T10:00:00Z", now=T0 + 21) == 0
    assert q.active_holds("p1", T0 + 30) == []
    assert [r.id for r in q.pending("p1", T0 + 30)] == [scale]  # the scale-out keeps its term


def test_the_rate_limit_counts_accepted_requests_per_pool_per_hour(tmp_path):
    q = RequestQueue(tmp_path / "q.sqlite", max_actions_per_hour=3)
    statuses = [submit(q, fp=f"f{i}", at=T0 + i).status for i in range(5)]
    assert statuses == [SubmitStatus.SUBMITTED] * 3 + [SubmitStatus.RATE_LIMITED] * 2
    assert submit(q, fp="other-pool", pool="p2").status is SubmitStatus.SUBMITTED
    assert len(q.pending("p1", T0 + 10)) == 3
    # a rate-limited occurrence stays rate-limited (at most once), later alerts pass again
    assert submit(q, fp="f4", at=T0 + 4000).status is SubmitStatus.DUPLICATE
    assert submit(q, fp="f9", at=T0 + 3601).status is SubmitStatus.SUBMITTED


def test_requests_survive_a_restart_of_either_side(tmp_path):
    path = tmp_path / "q.sqlite"
    webhook = RequestQueue(path)
    rid = submit(webhook, action="replace_server").id
    webhook.close()
    scaler = RequestQueue(path)
    assert [r.id for r in scaler.pending("p1", T0 + 1)] == [rid]
    assert scaler.claim(rid, now=T0 + 1)
    scaler.close()
    restarted = RequestQueue(path)
    assert restarted.pending("p1", T0 + 2) == []  # claimed before the crash: never offered twice
    assert submit(restarted, action="replace_server").status is SubmitStatus.DUPLICATE


def test_bad_submissions_are_refused_with_a_reason(tmp_path):
    q = RequestQueue(tmp_path / "q.sqlite")
    with pytest.raises(ValueError, match="unknown action"):
        q.submit(pool="p1", action="reboot", fingerprint="f", starts_at="s")
    with pytest.raises(ValueError, match="needs a server"):
        q.submit(pool="p1", action="replace_server", fingerprint="f", starts_at="s")
    with pytest.raises(ValueError, match="unknown result"):
        q.complete(1, "great")


# --- matchers -> requests ------------------------------------------------------------------------

def alerts_of(*alerts):
    return parse_notification({"version": "4", "status": "firing", "alerts": list(alerts)}).alerts


def mapper_for(tmp_path, actions, pools=("p1",)):
    settings = make_settings(tmp_path / "w.sqlite", actions=actions, pools=pools)
    return ActionMapper(compile_rules(settings.alerting.actions), [p.name for p in settings.pools])


def test_matchers_use_equality_and_anchored_regexes(tmp_path):
    m = mapper_for(tmp_path, [
        {"match": {"alertname": "DemandAboveCapacity"}, "action": "scale_out", "servers": 2, "for": "30m"},
        {"match_re": {"alertname": "BBB.*Unresponsive", "severity": "critical|error"}, "action": "replace_server"},
        {"match": {"alertname": "X", "team": ""}, "action": "none"},  # a missing label reads as ""
    ])
    assert [i.action for i in m.intents({"alertname": "DemandAboveCapacity"})] == ["scale_out"]
    assert m.intents({"alertname": "DemandAboveCapacityX"}) == []
    assert [i.action for i in m.intents({"alertname": "BBBServerUnresponsive", "severity": "critical"})] == \
        ["replace_server"]
    assert m.intents({"alertname": "BBBServerUnresponsive", "severity": "warning"}) == []
    assert m.intents({"alertname": "XBBBUnresponsive", "severity": "critical"}) == []
    assert [i.action for i in m.intents({"alertname": "X"})] == ["none"]
    assert m.intents({"alertname": "X", "team": "a"}) == []


def test_the_pool_is_the_alerts_label_else_the_rules_else_the_only_one(tmp_path):
    one = mapper_for(tmp_path, [{"match": {"alertname": "A"}, "action": "scale_out"}])
    assert one.intents({"alertname": "A"})[0].pool == "p1"
    two = mapper_for(tmp_path, [{"match": {"alertname": "A"}, "action": "scale_out"},
                                {"match": {"alertname": "B"}, "action": "scale_out", "pool": "p2"}],
                     pools=("p1", "p2"))
    assert two.intents({"alertname": "A"})[0].problem == "no_pool"
    assert two.intents({"alertname": "A", "pool": "p2"})[0].pool == "p2"
    assert two.intents({"alertname": "A", "pool": "nope"})[0].problem == "unknown_pool"
    assert two.intents({"alertname": "B"})[0].pool == "p2"
    assert two.intents({"alertname": "B", "pool": "p1"})[0].pool == "p1"


def test_dispatch_submits_once_and_a_resolution_ends_holds(tmp_path):
    m = mapper_for(tmp_path, [
        {"match": {"alertname": "Broken"}, "action": "replace_server"},
        {"match": {"alertname": "Busy"}, "action": "hold_scale_in", "for": "1h"},
        {"match": {"alertname": "Busy"}, "action": "scale_out", "servers": 3, "for": 900},
    ])
    q = RequestQueue(tmp_path / "q.sqlite")
    d = ActionDispatcher(m, q)
    broken_no_server, broken, busy = alerts_of(alert("Broken"), alert("Broken", server="bbb-2.p1.test"),
                                               alert("Busy", fingerprint="busy"))
    assert d.dispatch(broken_no_server, T0) == [("replace_server", "no_server")]
    assert d.dispatch(broken, T0) == [("replace_server", "submitted")]
    assert d.dispatch(broken, T0 + 60) == [("replace_server", "duplicate")]
    assert d.dispatch(busy, T0) == [("hold_scale_in", "submitted"), ("scale_out", "submitted")]
    pending = q.pending("p1", T0 + 1)
    assert [(r.action, r.server, r.servers) for r in pending] == [
        ("replace_server", "bbb-2.p1.test", None), ("hold_scale_in", None, None), ("scale_out", None, 3)]
    assert pending[2].until == T0 + 900 and pending[1].until == T0 + 3600
    assert "Busy summary" in pending[2].reason
    [resolved] = alerts_of({**alert("Busy", fingerprint="busy"), "status": "resolved",
                            "endsAt": "2026-03-01T11:00:00Z"})
    assert d.dispatch(resolved, T0 + 5) == [("hold_scale_in", "ended")]
    assert [r.action for r in q.pending("p1", T0 + 6)] == ["replace_server", "scale_out"]
