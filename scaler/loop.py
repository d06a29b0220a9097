"""The scaler's cycle: lock -> signals -> inventory -> policy -> planner -> actuator -> journal/metrics.

`PoolScaler.cycle()` is one cycle of one pool (what `divims scaler once` runs); `run_forever` repeats
it every `scaler.interval_seconds`, woken early when the webhook queues a new request. The decision
(policy + planner) is a pure `Decider`: Snapshot -> Plan, the same one the backtest runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from divims.clients.protocols import Cloud, Scalelite
from scaler.actuator import DRY_RUN, FAILED, OK, REFUSED, SKIPPED, ActionResult, Actuator, dry_run_results
from scaler.inventory import BBBFactory, SlotNaming, build_snapshot
from scaler.journal import Journal, cycle_record
from scaler.lock import LeaseStatus, PoolLock
from scaler.metrics import ScalerMetrics
from scaler.signals import SignalReader, unknown_signals
from scaler.snapshot import ActionRequest, Plan, Snapshot

log = logging.getLogger(__name__)

Decider = Callable[[Snapshot], Plan]


class Requests(Protocol):
    """alerting.requests.RequestQueue, as the scaler uses it."""

    def pending(self, pool: str, now: float | None = None) -> list[ActionRequest]: ...

    def claim(self, request_id: int, now: float | None = None) -> bool: ...

    def complete(self, request_id: int, result: str, detail: str = "", now: float | None = None) -> bool: ...


# actuator result -> request result (alerting.requests.RESULTS)
_REQUEST_RESULT = {OK: "ok", SKIPPED: "skipped", REFUSED: "rejected", FAILED: "failed"}
ONE_SHOT_REQUESTS = ("replace_server", "cordon_server")


@dataclass(frozen=True)
class CycleOutcome:
    """What one cycle of one pool did. `acted` is False when another scaler holds the lock."""

    pool: str
    acted: bool
    lock: LeaseStatus | None
    snapshot: Snapshot | None = None
    plan: Plan | None = None
    results: tuple[ActionResult, ...] = ()
    error: str | None = None
    duration_seconds: float = 0.0
    requests_seen: frozenset[int] = field(default_factory=frozenset)


class PoolScaler:
    """Everything one pool's cycle needs, passed in (tests build it around fakes)."""

    def __init__(self, naming: SlotNaming, *, reader: SignalReader | None, cloud: Cloud, scalelite: Scalelite,
                 actuator: Actuator, decide: Decider, lock: PoolLock | None, journal: Journal | None,
                 metrics: ScalerMetrics | None, requests: Requests | None = None,
                 bbb: BBBFactory | None = None, bbb_secret: str | None = None, flexible_ips: bool = False,
                 maintenance: Callable[[], tuple[frozenset[int], list[str]]] = lambda: (frozenset(), []),
                 dry_run: bool = False, clock: Callable[[], float] = time.time):
        self.naming = naming
        self.reader = reader
        self.cloud = cloud
        self.scalelite = scalelite
        self.actuator = actuator
        self.decide = decide
        self.lock = lock
        self.journal = journal
        self.metrics = metrics
        self.requests = requests
        self.bbb = bbb
        self.bbb_secret = bbb_secret
        self.flexible_ips = flexible_ips
        self.maintenance = maintenance
        self.dry_run = dry_run
        self.clock = clock

    @property
    def pool(self) -> str:
        return self.naming.pool

    def pending_requests(self, now: float) -> tuple[ActionRequest, ...]:
        if self.requests is None:
            return ()
        try:
            return tuple(self.requests.pending(self.pool, now))
        except Exception as exc:  # the webhook's store failing must not stop scaling
            log.warning("pool %s: action requests unreadable: %s", self.pool, type(exc).__name__)
            return ()

    def observe(self, now: float | None = None) -> Snapshot:
        """Signals + inventory into a Snapshot: reads only, writes nothing anywhere."""
        now = self.clock() if now is None else now
        signals = (self.reader.read(now) if self.reader is not None
                   else unknown_signals("no Prometheus configured"))
        maintenance, problems = self.maintenance()
        return build_snapshot(self.naming, cloud=self.cloud, scalelite=self.scalelite, signals=signals, now=now,
                              maintenance=maintenance, requests=self.pending_requests(now),
                              flexible_ips=self.flexible_ips, bbb=self.bbb, bbb_secret=self.bbb_secret,
                              problems=problems)

    def cycle(self, *, act: bool = True) -> CycleOutcome:
        """One cycle. With `act=False` (the `plan` command) nothing is executed, no request claimed,
        no lock taken and no journal written: the plan is only computed and returned."""
        start = time.monotonic()
        status = None
        if act and self.lock is not None:
            status = self.lock.acquire()
            if self.metrics:
                self.metrics.lock_held.labels(self.pool).set(1 if status.acquired else 0)
            if not status.acquired:
                log.info(status.reason)
                return CycleOutcome(self.pool, False, status, error=status.reason)
        snapshot = plan = None
        results: list[ActionResult] = []
        error = None
        try:
            snapshot = self.observe()
            plan = self.decide(snapshot)
            if not act or self.dry_run:
                results = dry_run_results(plan)
            else:
                results = self._execute(plan, snapshot)
        except Exception as exc:  # one bad cycle must not kill the loop; the next one reconciles
            log.exception("pool %s: cycle failed", self.pool)
            error = f"cycle failed: {type(exc).__name__}: {exc}"
        duration = time.monotonic() - start
        outcome = CycleOutcome(self.pool, True, status, snapshot, plan, tuple(results), error, duration,
                               frozenset(r.id for r in snapshot.requests) if snapshot else frozenset())
        if act:
            self._record(outcome)
        return outcome

    def _execute(self, plan: Plan, snapshot: Snapshot) -> list[ActionResult]:
        by_id = {r.id: r for r in snapshot.requests}
        # Claim a request before acting on it (at most once). Terms (scale_out, hold) are claimed as
        # seen; a one-shot request is claimed only when this plan acts on it, else it stays pending.
        planned = {a.request_id for a in plan.actions if a.request_id is not None}
        claimed: set[int] = set()
        for req in snapshot.requests:
            if req.action in ONE_SHOT_REQUESTS and req.id not in planned:
                continue
            if self.requests is not None and self.requests.claim(req.id, snapshot.now):
                claimed.add(req.id)
        actions = []
        skipped: list[ActionResult] = []
        for a in plan.actions:
            req = by_id.get(a.request_id) if a.request_id is not None else None
            if (req is not None and req.action in ONE_SHOT_REQUESTS and a.request_id not in claimed):
                skipped.append(ActionResult(a, SKIPPED, f"request {a.request_id} already taken"))
                continue
            actions.append(a)
        results = self.actuator.execute(Plan(plan.pool, plan.decision, tuple(actions), plan.waits))
        if self.requests is not None:
            for r in results:
                rid = r.action.request_id
                if rid in claimed and by_id[rid].action in ONE_SHOT_REQUESTS:
                    self.requests.complete(rid, _REQUEST_RESULT.get(r.result, "failed"), r.detail[:200])
        return results + skipped

    def _record(self, outcome: CycleOutcome) -> None:
        snap, plan = outcome.snapshot, outcome.plan
        if self.journal is not None and snap is not None:
            self.journal.record(cycle_record(snap, plan, list(outcome.results),
                                             mode="dry-run" if self.dry_run else "live",
                                             duration_seconds=outcome.duration_seconds, error=outcome.error))
        m = self.metrics
        if m is None:
            return
        pool = self.pool
        m.cycle_duration.labels(pool).set(outcome.duration_seconds)
        m.last_cycle.labels(pool).set(self.clock())
        for r in outcome.results:
            if r.result != DRY_RUN:
                m.count_action(pool, r.action.kind.value, r.result)
            if r.result == FAILED:
                m.count_error(pool, _service_of(r.detail), r.detail.split(":")[0] or "error")
        if snap is not None:
            for problem in snap.inventory_problems:
                m.count_error(pool, problem.split(":")[0], "inventory")
        if plan is not None:
            d = plan.decision
            terms = {t.name: t.servers for t in d.terms}
            terms["final"] = d.desired
            m.set_terms(pool, terms)
            m.active.labels(pool).set(d.active)
            m.set_holds(pool, list(d.holds))
            feed = _schedule_feed_up(d)
            if feed is not None:
                m.feed_up.labels(pool).set(1 if feed else 0)


def _service_of(detail: str) -> str:
    # ClientError texts read "<kind>: <service> <target>: ..."
    parts = detail.split(":", 1)
    if len(parts) == 2:
        words = parts[1].split()
        if words and words[0] in ("scaleway", "scalelite", "bbb", "ssh", "prometheus"):
            return words[0]
    return "divims"


def _schedule_feed_up(decision: Any) -> bool | None:
    """Whether the iCal feed was read, when the schedule term says so (the policy's `feed_up`)."""
    for t in decision.terms:
        if t.name == "schedule":
            value = getattr(t, "feed_up", None)
            if value is not None:
                return bool(value)
            text = t.reason.lower()
            if "ical" in text or "feed" in text:
                return not any(w in text for w in ("fail", "cached", "unreachable", "error"))
    return None


def run_forever(scalers: Sequence[PoolScaler], *, interval_seconds: float, request_poll_seconds: float,
                stop: threading.Event, on_cycle: Callable[[CycleOutcome], None] | None = None) -> None:
    """Cycles every pool every `interval_seconds` until `stop` is set; a new pending webhook request
    (polled every `request_poll_seconds`) starts the next cycle at once. Releases the locks on exit."""
    seen: dict[str, frozenset[int]] = {}
    try:
        while not stop.is_set():
            for s in scalers:
                outcome = s.cycle()
                seen[s.pool] = outcome.requests_seen | seen.get(s.pool, frozenset())
                if on_cycle is not None:
                    on_cycle(outcome)
            deadline = time.monotonic() + interval_seconds
            while not stop.is_set() and time.monotonic() < deadline:
                if stop.wait(min(request_poll_seconds, max(0.0, deadline - time.monotonic()))):
                    break
                if any(_has_new_request(s, seen.get(s.pool, frozenset())) for s in scalers):
                    break
    finally:
        for s in scalers:
            if s.lock is not None:
                s.lock.release()


def _has_new_request(scaler: PoolScaler, seen: frozenset[int]) -> bool:
    return any(r.id not in seen for r in scaler.pending_requests(scaler.clock()))
