"""The cycle: lock, journal, metrics, dry-run, webhook requests (claimed once, completed), early wake-up."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import pytest
from prometheus_client import generate_latest
from scaler_fixtures import MemoryBBB, MemoryCloud, MemoryScalelite, naming

from alerting.requests import RequestQueue
from divims.model import ScaleliteState
from scaler.actuator import Actuator
from scaler.journal import Journal
from scaler.lock import PoolLock
from scaler.loop import PoolScaler, run_forever
from scaler.metrics import ScalerMetrics
from scaler.snapshot import Action, ActionKind, Decision, Plan, Signal, Signals, Snapshot, Term

SECRET = "bbbsecret"  # the Scalelite entries' secret in the fixtures


class Reader:
    def __init__(self, signals: Signals):
        self.signals = signals

    def read(self, now: float) -> Signals:
        return self.signals


def decider(actions_for):
    """A hand-made Decider: terms fixed, actions from `actions_for(snapshot)`."""
    def decide(snapshot: Snapshot) -> Plan:
        terms = (Term("load", 2, "2 servers for 300 participants"), Term("schedule", None, "no period"),
                 Term("forecast", 1, "yesterday"))
        holds = () if snapshot.signals.prometheus_up else ("prometheus unreachable: scale-in held",)
        return Plan(snapshot.pool, Decision(terms, 2, 1, holds, "max of terms"), tuple(actions_for(snapshot)))
    return decide


def make(tmp_path, actions_for, *, requests=None, dry_run=False, metrics=None, holder="me"):
    cloud, sl, bbb = MemoryCloud(), MemoryScalelite(), MemoryBBB()
    n = naming()
    act = Actuator(n, cloud=cloud, scalelite=sl, bbb=bbb.factory, add_secret=SECRET)
    s = PoolScaler(n, reader=Reader(Signals(Signal("participants", 300), Signal("meetings", 4))),
                   cloud=cloud, scalelite=sl, actuator=act, decide=decider(actions_for),
                   lock=PoolLock(tmp_path / "state", "p1", ttl_seconds=30, holder=holder),
                   journal=Journal(tmp_path / "journal.jsonl"), metrics=metrics or ScalerMetrics(),
                   requests=requests, bbb=bbb.factory, dry_run=dry_run)
    return s, cloud, sl, bbb


def test_a_cycle_acts_and_journals_signals_terms_plan_and_results(tmp_path):
    s, cloud, sl, _ = make(tmp_path, lambda snap: [Action(ActionKind.CLONE, 1, "scale out")])
    sl.add(2)
    out = s.cycle()
    assert out.acted and [r.result for r in out.results] == ["ok"]
    (entry,) = s.journal.read()
    assert entry["pool"] == "p1" and entry["mode"] == "live"
    assert entry["signals"]["participants"]["value"] == 300
    assert [t["name"] for t in entry["plan"]["terms"]] == ["load", "schedule", "forecast"]
    assert entry["plan"]["actions"][0]["kind"] == "clone"
    assert entry["results"][0]["result"] == "ok"
    assert SECRET not in (tmp_path / "journal.jsonl").read_text()


def test_metrics_show_terms_active_actions_and_holds(tmp_path):
    m = ScalerMetrics()
    s, *_ = make(tmp_path, lambda snap: [Action(ActionKind.CLONE, 1, "scale out")], metrics=m)
    s.cycle()
    g = m.registry.get_sample_value
    assert g("divims_scaler_desired_servers", {"pool": "p1", "term": "load"}) == 2
    assert g("divims_scaler_desired_servers", {"pool": "p1", "term": "final"}) == 2
    assert g("divims_scaler_desired_servers", {"pool": "p1", "term": "schedule"}) is None  # unknown, no zero
    assert g("divims_scaler_active_servers", {"pool": "p1"}) == 1
    assert g("divims_scaler_actions_total", {"pool": "p1", "action": "clone", "result": "ok"}) == 1
    assert g("divims_scaler_last_cycle_timestamp_seconds", {"pool": "p1"}) > 0
    s.reader.signals = Signals(Signal("participants", None), Signal("meetings", None), prometheus_up=False)
    s.cycle()
    assert g("divims_scaler_hold", {"pool": "p1", "reason": "prometheus_unreachable"}) == 1
    s.reader.signals = Signals(Signal("participants", 1), Signal("meetings", 1))
    s.cycle()
    assert g("divims_scaler_hold", {"pool": "p1", "reason": "prometheus_unreachable"}) is None


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_metrics_pass_promtool_check_metrics(tmp_path):
    m = ScalerMetrics()
    s, _, sl, _ = make(tmp_path, lambda snap: [Action(ActionKind.CLONE, 1, "x"),
                                               Action(ActionKind.ENABLE, 2, "y")], metrics=m)
    s.cycle()
    m.feed_up.labels("p1").set(1)
    text = generate_latest(m.registry)
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (r.stdout, r.stderr)


def test_dry_run_executes_nothing(tmp_path):
    s, cloud, sl, _ = make(tmp_path, lambda snap: [Action(ActionKind.CLONE, 1, "scale out")], dry_run=True)
    out = s.cycle()
    assert [r.result for r in out.results] == ["dry_run"]
    assert "create_server" not in cloud.calls.names()
    assert s.journal.read()[0]["mode"] == "dry-run"


def test_second_instance_waits_and_says_why(tmp_path):
    a, *_ = make(tmp_path, lambda snap: [])
    b, cloud_b, *_ = make(tmp_path, lambda snap: [Action(ActionKind.CLONE, 1, "x")], holder="other")
    assert a.cycle().acted
    out = b.cycle()
    assert not out.acted and "another scaler (me)" in out.error
    assert not cloud_b.calls.log  # it read nothing and did nothing


def test_inventory_incomplete_holds_destructive_actions(tmp_path):
    s, cloud, sl, _ = make(tmp_path, lambda snap: [Action(ActionKind.CORDON, 1, "scale in", server_id="sl-1"),
                                                   Action(ActionKind.CLONE, 3, "scale out")])
    sl.add(1)
    sl.add(2)
    from divims.errors import TransientError
    cloud.fail_next["list_volumes"] = [TransientError("scaleway", "volumes", "HTTP 503")]
    out = s.cycle()
    by_kind = {r.action.kind: r for r in out.results}
    assert by_kind[ActionKind.CORDON].result == "skipped" and "incomplete" in by_kind[ActionKind.CORDON].detail
    assert sl.servers["sl-1"].state == ScaleliteState.ENABLED
    assert by_kind[ActionKind.CLONE].result == "ok"


def test_webhook_request_is_claimed_once_and_completed(tmp_path):
    q = RequestQueue(tmp_path / "hook.sqlite")
    rid = q.submit(pool="p1", action="cordon_server", fingerprint="f", starts_at="t", server="127.0.1.1").id

    def actions(snap):
        return [Action(ActionKind.CORDON, 1, f"request {r.id}: cordon", server_id="sl-1", request_id=r.id)
                for r in snap.requests if r.action == "cordon_server"]

    s, _, sl, _ = make(tmp_path, actions, requests=q)
    sl.add(1)
    sl.add(2)
    out = s.cycle()
    assert [r.result for r in out.results] == ["ok"]
    stored = q.get(rid)
    assert stored.status == "done" and stored.result == "ok"
    assert s.cycle().results == ()  # done: never offered again
    q.close()


def test_run_loop_wakes_early_for_a_new_request_and_releases_the_lock(tmp_path):
    q = RequestQueue(tmp_path / "hook.sqlite")
    s, *_ = make(tmp_path, lambda snap: [], requests=q)
    cycles: list[float] = []
    stop = threading.Event()
    t = threading.Thread(target=run_forever, args=([s],),
                         kwargs=dict(interval_seconds=30, request_poll_seconds=0.05, stop=stop,
                                     on_cycle=lambda o: cycles.append(time.monotonic())))
    t.start()
    try:
        deadline = time.monotonic() + 5
        while not cycles and time.monotonic() < deadline:
            time.sleep(0.02)
        submitted = time.monotonic()
        q.submit(pool="p1", action="scale_out", fingerprint="f", starts_at="t", servers=2, for_seconds=600)
        while len(cycles) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(cycles) >= 2 and cycles[1] - submitted < 1.0
    finally:
        stop.set()
        t.join(timeout=5)
    assert not t.is_alive()
    assert s.lock.current() is None  # released on exit
    q.close()


def test_live_decider_keeps_policy_state_only_on_commit_and_reports_the_feed(tmp_path):
    import uuid

    from divims.config import load_config
    from scaler.inventory import build_snapshot
    from scaler.loop import LiveDecider

    ics = tmp_path / "pool.ics"
    ics.write_text("BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:t\nBEGIN:VEVENT\nUID:1\nDTSTAMP:20260101T000000Z\n"
                   "DTSTART:20260101T080000Z\nDTEND:20260101T120000Z\nSUMMARY:users=500\nEND:VEVENT\n"
                   "END:VCALENDAR\n")
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"""
pools:
  - name: p1
    scalelite: {{url: "http://127.0.0.1:1", secret: s3cr3t}}
    scaleway: {{zone: fr-par-1, project_id: "{uuid.uuid4()}", image: img, commercial_type: PRO2-M,
                hostname_template: "bbb-{{n}}", domain_template: "127.0.1.{{n}}"}}
    size: {{min: 1, max: 4}}
    schedule: {{ical: "{ics}", ical_cache: "{tmp_path / 'cache.ics'}"}}
scaler: {{state_dir: "{tmp_path / 'state'}"}}
""")
    settings = load_config(str(cfg))
    from divims.schedule import IcalFeed
    pool = settings.pools[0]
    state = tmp_path / "state" / "p1.policy.json"
    d = LiveDecider(pool, settings.scaler, state_path=str(state), ical_feed=IcalFeed(str(ics), None))
    cloud, sl = MemoryCloud(), MemoryScalelite()
    snap = build_snapshot(naming(), cloud=cloud, scalelite=sl, now=time.time(),
                          signals=Signals(Signal("participants", 300), Signal("meetings", 4)))
    plan = d(snap)
    assert d.feed_up is True
    assert {t.name for t in plan.decision.terms} >= {"load", "schedule", "forecast"}
    assert plan.decision.desired >= 2 and any(a.kind == ActionKind.CLONE for a in plan.actions)
    assert not state.exists()  # deciding (as `plan` does) writes nothing
    d.commit([], snap.now)
    assert state.exists()
    again = LiveDecider(pool, settings.scaler, state_path=str(state))
    assert again._state.history  # the damping window survives a restart
    d.ical_feed = IcalFeed(str(tmp_path / "missing.ics"), None)
    d(snap)
    assert d.feed_up is False
