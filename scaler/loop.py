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
from scaler.snapshot import ActionKind, ActionRequest, Plan, Snapshot

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
SAFE_WHEN_INCOMPLETE = (ActionKind.UNCORDON, ActionKind.ENABLE, ActionKind.POWERON, ActionKind.CLONE,
                        ActionKind.ATTACH_IP)


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
            commit = getattr(self.decide, "commit", None)
            if commit is not None and plan is not None:
                commit(results, snapshot.now if snapshot else self.clock())
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
        if not snapshot.inventory_complete:
            # What could not be listed must not be read as absent: only steps that add capacity and
            # that the actuator re-checks against a fresh listing go ahead.
            kept = [a for a in actions if a.kind in SAFE_WHEN_INCOMPLETE]
            skipped += [ActionResult(a, SKIPPED, "inventory incomplete: held") for a in actions if a not in kept]
            actions = kept
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
            feed = getattr(self.decide, "feed_up", None)  # LiveDecider: was the iCal feed read?
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


# --- the live decision: policy + planner, with the policy's memory in the state dir ---------------
_REPLACEMENT_REASONS = ("replaced", "unresponsive", "request")


class LiveDecider:
    """Snapshot -> Plan with `scaler.policy.decide` and `scaler.planner.plan`.

    The policy's state (recent desired values for damping, requests seen) and the replacements of the
    last hour are kept in `state_path` as JSON and written only by `commit()` (after a cycle that
    acted), so `plan` never changes what the next live cycle decides."""

    def __init__(self, pool_cfg: Any, scaler_cfg: Any, *, state_path: str | None,
                 ical_feed: Any | None = None, policy: str = "default"):
        from scaler.eligibility import Rules
        from scaler.policy import PolicyParams

        self.pool_cfg = pool_cfg
        self.params = PolicyParams.from_config(pool_cfg, scaler_cfg)
        self.rules = Rules.from_config(pool_cfg, scaler_cfg)
        self.state_path = state_path
        self.ical_feed = ical_feed
        self.policy = policy
        self.feed_up: bool | None = None
        self._state, self._replacements, self._flapped = self._load()
        self._next_state = self._state
        self._next_flapped = self._flapped
        self.last_floor: Any = None

    def _load(self) -> tuple[Any, list[float], dict[str, float]]:
        import json
        from pathlib import Path

        from scaler.policy import PolicyState

        if not self.state_path or not Path(self.state_path).exists():
            return PolicyState(), [], {}
        try:
            data = json.loads(Path(self.state_path).read_text(encoding="utf-8"))
            return (PolicyState.from_json(json.dumps(data["policy"])), [float(t) for t in data.get("replacements", [])],
                    {str(k): float(v) for k, v in (data.get("unresponsive") or {}).items()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("pool %s: policy state %s unreadable (%s): starting afresh", self.pool_cfg.name,
                        self.state_path, exc)
            return PolicyState(), [], {}

    def floor(self, now: float) -> Any:
        from divims.schedule import schedule_floor

        text, note = None, ""
        if self.ical_feed is not None:
            text, note = self.ical_feed.read()
            self.feed_up = note == ""
        return schedule_floor(self.pool_cfg.schedule, now, self.params.horizon_seconds,
                              self.pool_cfg.pool_capacity, ics_text=text, ics_note=note)

    def __call__(self, snapshot: Snapshot) -> Plan:
        from scaler import planner, policy

        floor = self.last_floor = self.floor(snapshot.now)
        decide = policy.decide_classic if self.policy == "divims-classic" else policy.decide
        decision, self._next_state = decide(snapshot, self.params, self._state, floor)
        recent = [t for t in self._replacements if t > snapshot.now - 3600]
        # VMs seen unresponsive within the flap window (kept by commit): a flapping server is replaced
        window_start = snapshot.now - self.rules.flap_window_seconds
        flapped = {vm: t for vm, t in self._flapped.items() if t >= window_start}
        self._next_flapped = {**flapped, **planner.unresponsive_vms(snapshot, self.rules)}
        return planner.plan(snapshot, decision, self.rules, replacements_last_hour=len(recent), flapped=flapped)

    def commit(self, results: Sequence[ActionResult], now: float) -> None:
        """Keeps the policy state of the cycle that acted, and counts its replacements."""
        import json
        import os
        from pathlib import Path

        from scaler.snapshot import ActionKind

        self._state = self._next_state
        self._flapped = self._next_flapped
        done = [r.action for r in results if r.result == OK]
        panicked = {a.slot for a in done if a.kind == ActionKind.PANIC}
        self._replacements = [t for t in self._replacements if t > now - 3600] + [
            now for a in done if a.kind == ActionKind.CORDON and a.reason.startswith(_REPLACEMENT_REASONS)] + [
            # an unresponsive server terminated with no Scalelite entry (so no panic, and never a counted
            # cordon): a new clone that never answered. Uncounted, a broken image looped clone -> fail.
            now for a in done if a.kind == ActionKind.TERMINATE and a.reason.startswith("unresponsive")
            and a.slot not in panicked]
        if not self.state_path:
            return
        path = Path(self.state_path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"policy": json.loads(self._state.to_json()),
                                       "replacements": self._replacements,
                                       "unresponsive": self._flapped}), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            log.error("pool %s: cannot write the policy state %s: %s", self.pool_cfg.name, path, exc)


def build_pool_scaler(settings: Any, pool_cfg: Any, *, dry_run: bool, metrics: ScalerMetrics | None,
                      with_lock: bool = True, with_journal: bool = True, policy: str = "default") -> PoolScaler:
    """A PoolScaler wired to the real clients of one configured pool (Scaleway SDK, Scalelite,
    BBB API, Prometheus, the webhook's request queue when the webhook is configured)."""
    from pathlib import Path

    from divims.clients.bbb import BBBClient
    from divims.clients.scalelite import make_scalelite
    from divims.clients.scaleway import ScalewayCloud
    from divims.schedule import IcalFeed
    from scaler.inventory import read_maintenance
    from scaler.signals import connect, merged_queries

    sc = settings.scaler
    naming = SlotNaming.from_pool(pool_cfg)
    prom = settings.prometheus
    token = prom.bearer_token.get_secret_value() if prom.bearer_token else None
    reader = SignalReader(connect(prom.url, timeout_seconds=prom.timeout_seconds, bearer_token=token,
                                  verify_tls=prom.verify_tls),
                          pool=pool_cfg.name, queries=merged_queries(sc.queries),
                          max_age_seconds=2 * sc.interval_seconds, boot_seconds=sc.boot_time_seconds,
                          growth_window_seconds=sc.growth_window_seconds, timeout_seconds=prom.timeout_seconds)
    cloud = ScalewayCloud.from_pool(pool_cfg)
    scalelite = make_scalelite(pool_cfg)
    bbb_cfg = pool_cfg.bbb
    bbb_secret = bbb_cfg.secret.get_secret_value() if bbb_cfg.secret else None

    def bbb(url: str, secret: str) -> Any:
        return BBBClient(url, secret, timeout_seconds=bbb_cfg.timeout_seconds, algorithm=bbb_cfg.checksum_algorithm)

    lc = pool_cfg.lifecycle
    actuator = Actuator(naming, cloud=cloud, scalelite=scalelite, bbb=bbb,
                        add_secret=bbb_secret or pool_cfg.scalelite.secret.get_secret_value(),
                        bbb_secret=bbb_secret, flexible_ips=pool_cfg.scaleway.flexible_ips,
                        max_concurrent_clones=pool_cfg.scaleway.max_concurrent_clones,
                        meetings_max_duration_seconds=lc.meetings_max_duration_minutes * 60.0)
    state_dir = Path(sc.state_dir)
    suffix = ".dry-run" if dry_run else ""
    ical = None
    if pool_cfg.schedule.ical:
        cache = pool_cfg.schedule.ical_cache or str(state_dir / f"{pool_cfg.name}.ics")
        ical = IcalFeed(pool_cfg.schedule.ical, cache, timeout_seconds=prom.timeout_seconds)
    decider = LiveDecider(pool_cfg, sc, state_path=str(state_dir / f"{pool_cfg.name}.policy{suffix}.json"),
                          ical_feed=ical, policy=policy)
    requests_queue = None
    webhook = settings.alerting.webhook
    if webhook is not None and Path(webhook.database).exists():
        from alerting.requests import RequestQueue

        requests_queue = RequestQueue(webhook.database, max_actions_per_hour=settings.alerting.max_actions_per_hour)
    lock = PoolLock(state_dir, pool_cfg.name, ttl_seconds=sc.lock_ttl_seconds) if with_lock else None
    journal = Journal(sc.journal_path) if with_journal else None
    return PoolScaler(naming, reader=reader, cloud=cloud, scalelite=scalelite, actuator=actuator, decide=decider,
                      lock=lock, journal=journal, metrics=metrics, requests=requests_queue, bbb=bbb,
                      bbb_secret=bbb_secret, flexible_ips=pool_cfg.scaleway.flexible_ips,
                      maintenance=lambda: read_maintenance(lc.maintenance, lc.maintenance_file),
                      dry_run=dry_run)
