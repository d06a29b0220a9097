"""End to end, with the real pieces: the testbed, the exporter, a real Prometheus with the shipped rules,
a real Alertmanager routed to the webhook, the webhook and the scaler, all on loopback.

Load rises -> Prometheus sees it -> the scaler clones and enables servers through the fake Scaleway and
Scalelite; load falls -> it drains and terminates only empty servers; a BBB server made unresponsive ->
the alert fires -> Alertmanager -> the webhook -> `replace_server` is executed. Every assertion goes
through the services' own APIs: Prometheus queries, the fake cloud's inventory, the webhook's /alerts.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from testbed.stack import Stack, StackOptions, find_binary
from testbed.world import FakeMeeting

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (find_binary("prometheus") and find_binary("prometheus-alertmanager")),
                       reason="needs Debian's prometheus and prometheus-alertmanager"),
]

SLOTS = 6


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    opts = StackOptions(workdir=str(tmp_path_factory.mktemp("e2e")), slots=SLOTS, trace=None,
                        acceleration=120.0, scaler_interval_seconds=1.0, boot_seconds=1.0, size_min=2)
    with Stack(opts) as s:
        yield s


def wait_for(stack: Stack, predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # a service still coming up: keep waiting
            last_exc = exc
        time.sleep(0.5)
    logs = "\n".join(f"--- {n}\n{stack.log_tail(n, 15)}" for n in ("scaler", "exporter", "webhook"))
    journal = stack.journal()
    if journal:
        plan = journal[-1].get("plan", {})
        logs += (f"\n--- last plan: desired {plan.get('desired')} active {plan.get('active')} "
                 f"holds {plan.get('holds')} waits {plan.get('waits')} actions {plan.get('actions')} "
                 f"terms {plan.get('terms')} signals {journal[-1].get('signals', {}).get('participants')}")
    with stack.pool.world.lock:
        logs += f"\n--- VMs: {[(vm.name, vm.state) for vm in stack.pool.world.vms.values()]}"
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_exc})\n{logs}")


def serving(stack: Stack) -> list[str]:
    """Hosts Scalelite would give a new meeting to (enabled and online), read from the fake Scalelite."""
    world = stack.pool.world
    with world.lock:
        return sorted(s.url.split("//")[1].split(":")[0] for s in world.scalelite_servers.values()
                      if s.state == "enabled" and s.online)


def add_meetings(stack: Stack, host: str, count: int, participants: int, recording: bool = False) -> list[str]:
    world = stack.pool.world
    ids = []
    with world.lock:
        for i in range(count):
            mid = f"e2e-{host}-{time.monotonic_ns()}-{i}"
            world.bbb_hosts[host].meetings[mid] = FakeMeeting(
                meeting_id=mid, internal_meeting_id=mid + "-int", name="e2e class",
                create_time=world.now() - 3600, participants=participants, recording=recording)
            ids.append(mid)
    return ids


def cut_off(stack: Stack) -> list:
    """Meetings that ended because their server went away (not because the meeting was over)."""
    world = stack.pool.world
    with world.lock:
        return [(h, m.meeting_id, why) for h, m, _, why in world.ended_meetings
                if why in ("vm-stopped", "scalelite-panic") and m.meeting_id.startswith("e2e-")]


def test_scale_out_then_drain_then_replace_through_alertmanager(stack):
    world = stack.pool.world
    # Size min is 2: the scaler clones two servers and enables them once their BBB API answers.
    first = wait_for(stack, lambda: len(serving(stack)) >= 2 and serving(stack), 90, "two servers serving")
    wait_for(stack, lambda: stack.scalar('count(scalelite_server_state{state="enabled"} == 1)') == 2, 30,
             "Prometheus seeing two enabled servers")

    # Load rises: 900 participants in 30 meetings need at least 4 servers (900/250 -> 4, 30/15 -> 2).
    add_meetings(stack, first[0], 15, 30)
    add_meetings(stack, first[1], 15, 30)
    wait_for(stack, lambda: (stack.scalar("sum(pool:bbb_meetings_participants:sum)") or 0) >= 900, 30,
             "Prometheus seeing 900 participants")
    wait_for(stack, lambda: len(serving(stack)) >= 4, 120, "the scaler scaling out to 4 servers")
    # the scaler's own metrics say why, once Prometheus has scraped them
    wait_for(stack, lambda: (stack.scalar('divims_scaler_desired_servers{term="load"}') or 0) >= 4, 30,
             "the load term asking for 4 servers")
    assert stack.scalar('divims_scaler_desired_servers{term="final"}') >= 4
    with world.lock:
        running = [vm for vm in world.vms.values() if vm.state == "running"]
        slots = [vm.name for vm in world.vms.values()]
    assert len(running) >= 4
    assert len(slots) == len(set(slots)), "never two VMs for one slot"

    # Load falls, except one recorded meeting that goes on on the first server.
    keep_host = first[0]
    with world.lock:
        for host in world.bbb_hosts.values():
            for mid in list(host.meetings):
                world.end_meeting(host.host, mid, why="ended")
    kept = add_meetings(stack, keep_host, 1, 10, recording=True)[0]
    wait_for(stack, lambda: len(world.vms) <= 2, 180, "the scaler draining and terminating the idle servers")
    with world.lock:
        assert kept in world.bbb_hosts[keep_host].meetings, "the running meeting was not cut off"
        assert world.vm_of_host(keep_host) is not None, "the server with a meeting was kept"
    assert cut_off(stack) == []
    journal = stack.journal()
    kinds = {r.get("kind") or r.get("action") for e in journal for r in e.get("results", [])}
    assert {"clone", "enable", "cordon", "terminate"} <= {str(k) for k in kinds}, kinds

    # A BBB server stops answering: the alert fires in Prometheus, goes through Alertmanager to the
    # webhook, and replace_server is executed by the scaler.
    victim = next(h for h in serving(stack) if h != keep_host)
    with world.lock:
        victim_vm = world.vm_of_host(victim).id
        world.bbb_hosts[victim].hang = True
    wait_for(stack, lambda: stack.scalar(f'bbb_api_up{{server="{victim}"}}') == 0, 30, "bbb_api_up 0")
    wait_for(stack, lambda: stack.query(f'ALERTS{{alertname="BBBServerUnresponsive",server="{victim}",'
                                        f'alertstate="firing"}}'), 60, "the alert firing in Prometheus")
    alerts = wait_for(stack, lambda: [a for a in stack.alerts(alertname="BBBServerUnresponsive")
                                      if a["labels"].get("server") == victim], 60,
                      "the webhook receiving the alert from Alertmanager")
    assert alerts[0]["status"] == "firing"
    wait_for(stack, lambda: victim_vm not in world.vms, 120, "the unresponsive server being replaced")
    with world.lock:
        world.bbb_hosts[victim].hang = False
    wait_for(stack, lambda: len(serving(stack)) >= 2, 120, "two servers serving again after the replacement")
    from alerting.requests import RequestQueue

    queue = RequestQueue(str(stack.workdir / "webhook.sqlite"))
    try:
        done = [r for r in queue.all() if r.action == "replace_server"]
    finally:
        queue.close()
    assert done, "the alert became a replace_server request"
    assert cut_off(stack) == [], "no e2e meeting was cut off"


# Panels whose queries must return data once the stack has run: the ones a user looks at first.
KEY_PANELS = {
    ("divims-pool", "Participants"), ("divims-pool", "Meetings"), ("divims-pool", "Servers by Scalelite state"),
    ("divims-pool", "Servers by Scaleway state"), ("divims-pool", "Participants against capacity"),
    ("divims-scaler", "Desired servers"), ("divims-scaler", "Active servers"),
    ("divims-scaler", "Desired terms against active servers"), ("divims-scaler", "Actions"),
    ("divims-cost", "Billed servers"), ("divims-cost", "Cost per hour"),
    ("divims-server", "Meetings per server"), ("divims-server", "Reachability"),
    ("divims-alerts", "Firing"),
}


def test_every_dashboard_query_evaluates_and_key_panels_have_data(stack):
    """Runs after the scenario above (same stack): every panel query of every shipped dashboard is
    evaluated by the real Prometheus; none errors, and the key panels return series."""
    from grafana.queries import all_panel_queries

    queries = all_panel_queries()
    assert len(queries) > 40
    errors, with_data = [], set()
    for uid, title, expr in queries:
        try:
            result = stack.query(expr)
        except Exception as exc:  # an HTTP 400 from Prometheus: a query that does not evaluate
            errors.append(f"{uid} / {title}: {exc}")
            continue
        if result:  # a panel with several targets has data when any of them has
            with_data.add((uid, title))
    assert errors == []
    missing = {p for p in KEY_PANELS if p not in with_data}
    assert missing == set(), f"key panels with no data: {sorted(missing)}"


def test_a_scaleway_error_storm_fires_the_error_metric_and_alerts_then_recovers(stack):
    """Issue 7 row 2's alert side, with the real pieces: 90 % of Scaleway calls answered 429 ->
    the exporter's error counter rises, ScalewayAPIErrors fires in Prometheus and reaches the webhook
    through Alertmanager; after the storm, the pool is served again with no slot holding two VMs."""
    from reliability_fixtures import record_figure

    world = stack.pool.world
    faults = world.faults["scaleway"]
    firing = 'ALERTS{alertname="ScalewayAPIErrors",alertstate="firing"}'
    assert stack.query(firing) == [], "no Scaleway error alert in normal operation"
    seen_before = {a["fingerprint"] + a["starts_at"] for a in stack.alerts(alertname="ScalewayAPIErrors")}
    started = time.monotonic()
    faults.error_rate, faults.error_status = 0.9, 429
    try:
        wait_for(stack, lambda: (stack.scalar('sum(increase(divims_exporter_poll_errors_total'
                                              '{source="scaleway"}[1m]))') or 0) > 3, 60,
                 "the exporter counting Scaleway errors")
        wait_for(stack, lambda: stack.query(firing), 60, "ScalewayAPIErrors firing in Prometheus")
        wait_for(stack, lambda: [a for a in stack.alerts(alertname="ScalewayAPIErrors")
                                 if a["fingerprint"] + a["starts_at"] not in seen_before], 60,
                 "the webhook receiving a new ScalewayAPIErrors")
        fired_after = time.monotonic() - started
    finally:
        faults.error_rate = 0.0
    wait_for(stack, lambda: len(serving(stack)) >= 2, 90, "two servers serving after the storm")
    with world.lock:
        names = [vm.name for vm in world.vms.values()]
    assert len(names) == len(set(names)), "never two VMs for one slot"
    errors = stack.scalar('sum(divims_exporter_poll_errors_total{source="scaleway"})') or 0
    record_figure("2e", f"e2e: 90% 429s from Scaleway: ScalewayAPIErrors at the webhook after {fired_after:.1f} s, "
                        f"{errors:.0f} exporter Scaleway errors counted, no duplicate VM, pool served again",
                  seconds=fired_after, errors=errors)
