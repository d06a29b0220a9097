"""`divims simulate`: the backtest. The same policy and planner as the live scaler, in simulated time.

Physics (per simulated minute, in this order):
1. VM transitions: a clone is ready (BBB answers) 7 min after the clone, a power-on 4 min after it;
   Scaleway's `starting` lasts 30 s. Billing runs from power-on to terminate, each power-on period
   rounded up to whole hours with a 60-minute minimum, priced from the commercial type.
2. Scalelite's poll (every 60 s): online = BBB answers; load = testbed.load.scalelite_load of the
   server's meetings; a cordoned server at load 0 becomes disabled.
3. The load model (testbed.load.LoadModel) follows the trace; each new meeting goes to the
   least-loaded enabled, online server (Scalelite's create, the load raised by each create/join until
   the next poll) and stays there until it ends.
4. Accounting: participant-minutes; shortfall = participants above capacity on each server plus those
   of meetings that found no server; the lower bound = max(size.min, ceil of load over capacity).
5. The scaler (every interval; divims-classic every 5 min) sees signals lagged by one scrape interval
   (60 s) and the inventory as it is, decides and plans; the plan's actions take effect at once.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from divims.config import PoolConfig, ScalerConfig, load_config
from divims.errors import ConfigError
from divims.model import VM, ScaleliteServer, ScaleliteState, VMState, pool_tags
from divims.schedule import schedule_floor
from scaler import planner, policy
from scaler.eligibility import Rules
from scaler.snapshot import ActionKind, Decision, ServerLoad, Signal, Signals, SlotState, Snapshot
from testbed.load import LoadMeeting, LoadModel, Trace, TraceError, least_loaded, load_trace, scalelite_load

STEP = 60.0
CLONE_READY_SECONDS = 7 * 60.0
POWERON_READY_SECONDS = 4 * 60.0
STARTING_SECONDS = 30.0
SCRAPE_LAG_SECONDS = 60.0
ENVELOPE_SECONDS = 600.0
RECENT_SECONDS = 300.0
CLASSIC_INTERVAL_SECONDS = 300.0
POLICIES = ("default", "divims-classic", "static")
# Scaleway list prices, EUR per hour (Instances, fr-par, 2026): used when no catalog is reachable
PRICES_EUR_PER_HOUR = {"PRO2-XXS": 0.055, "PRO2-XS": 0.11, "PRO2-S": 0.219, "PRO2-M": 0.438,
                       "PRO2-L": 0.877, "POP2-HC-16C-32G": 0.4, "GP1-M": 0.6}

DEFAULT_POOL: dict[str, Any] = {
    "name": "simulated",
    "scalelite": {"url": "https://scalelite.example.org", "secret": "simulated-not-a-secret"},
    "scaleway": {"zone": "fr-par-1", "project_id": "00000000-0000-4000-8000-000000000000",
                 "image": "bbb-golden", "commercial_type": "PRO2-M",
                 "hostname_template": "bbb-{n}", "domain_template": "bbb-{n}.example.org"},
    "capacity": {"participants_per_server": 250, "meetings_per_server": 15},
    "size": {"min": 1, "max": 20},
    "schedule": {"timezone": "Europe/Paris", "weekly": [
        {"days": ["mon", "tue", "wed", "thu", "fri"], "from": "07:45", "to": "12:00", "participants": 2400},
        {"days": ["mon", "tue", "wed", "thu", "fri"], "from": "13:30", "to": "17:00", "participants": 2000},
    ]},
}


def default_pool() -> PoolConfig:
    """The built-in pool used when --config is omitted: 250/15 capacity, size 1..20, PRO2-M,
    the pinned weekly school schedule."""
    return PoolConfig.model_validate(DEFAULT_POOL)


@dataclass
class SimVM:
    id: str
    slot: int
    state: str                    # starting | running
    created: float
    powered_on_at: float
    running_at: float
    ready_at: float
    modified: float


@dataclass
class SimEntry:
    id: str
    state: ScaleliteState = ScaleliteState.DISABLED
    online: bool = False
    load: float | None = None


@dataclass
class Result:
    policy: str
    trace: str
    minutes: int = 0
    server_hours: float = 0.0
    running_server_hours: float = 0.0
    cost_eur: float = 0.0
    lower_bound_server_hours: float = 0.0
    participant_minutes: float = 0.0
    shortfall_participant_minutes: float = 0.0
    shortfall_peak_participants: int = 0
    unplaced_meetings: int = 0
    meetings_ended_by_scaler: int = 0
    meetings_killed: int = 0
    peak_servers: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    # where the billed server-hours go
    hours_by_phase: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["server_hours_over_lower_bound"] = (round(self.server_hours / self.lower_bound_server_hours, 3)
                                              if self.lower_bound_server_hours else None)
        d["shortfall_ratio"] = (self.shortfall_participant_minutes / self.participant_minutes
                                if self.participant_minutes else 0.0)
        for k in ("server_hours", "running_server_hours", "cost_eur", "lower_bound_server_hours",
                  "participant_minutes", "shortfall_participant_minutes"):
            d[k] = round(d[k], 2)
        d["hours_by_phase"] = {k: round(v, 2) for k, v in sorted(self.hours_by_phase.items())}
        return d


def billed_hours(start: float, stop: float) -> int:
    """Hours billed for one power-on period: rounded up, at least one."""
    return max(1, math.ceil(round((stop - start) / 3600.0, 9)))


class Simulation:
    """One backtest run. `run()` returns the Result; `check_invariants` holds for every minute."""

    def __init__(self, trace: Trace, pool: PoolConfig, scaler: ScalerConfig | None = None,
                 policy_name: str = "default", seed: int = 1, price_eur_per_hour: float | None = None,
                 min_meeting_seconds: float = 30 * 60, max_meeting_seconds: float = 90 * 60):
        if policy_name not in POLICIES:
            raise ValueError(f"unknown policy {policy_name!r}: choose one of {', '.join(POLICIES)}")
        self.trace, self.pool = trace, pool
        self.scaler_cfg = scaler or ScalerConfig()
        self.policy_name = policy_name
        self.params = policy.PolicyParams.from_config(pool, self.scaler_cfg, scrape_lag_seconds=SCRAPE_LAG_SECONDS)
        classic = policy_name == "divims-classic"
        self.interval = CLASSIC_INTERVAL_SECONDS if classic else max(STEP, float(self.scaler_cfg.interval_seconds))
        # DiViMS terminates a drained server after 3 runs (15 min), with no regard to the paid hour
        # DiViMS clones every server it needs in one run, one after the other: no per-cycle bound
        self.rules = Rules.from_config(pool, self.scaler_cfg, flexible_ips=False,
                                       **({"min_billed_seconds": 900.0, "paid_hour_margin_seconds": None,
                                           "max_changes_per_cycle": pool.size.max,
                                           "max_concurrent_clones": pool.size.max} if classic else {}))
        if policy_name == "static":
            self.rules = Rules.from_config(pool, self.scaler_cfg, flexible_ips=False,
                                           max_changes_per_cycle=pool.size.max,
                                           max_concurrent_clones=pool.size.max)
        self.price = price_eur_per_hour if price_eur_per_hour is not None else \
            PRICES_EUR_PER_HOUR.get(pool.scaleway.commercial_type, 0.0)
        self.load = LoadModel(seed=seed, min_duration_seconds=min_meeting_seconds,
                              max_duration_seconds=max_meeting_seconds)
        self.vms: dict[int, SimVM] = {}
        self.entries: dict[int, SimEntry] = {}
        self.periods: list[tuple[float, float]] = []
        self.state = policy.PolicyState()
        self.replacements: list[float] = []
        self.history: list[tuple[float, float, float]] = []  # (time, participants, meetings) per minute
        self.envelope: list[float] = []  # participants' running maximum over ENVELOPE_SECONDS, per minute
        self.result = Result(policy_name, trace.name)
        self.actions: Counter[str] = Counter()
        self.static_servers = self._peak_need()
        self._ids = 0
        self.domains = {n: pool.slot_domain(n) for n in range(1, pool.size.max + 1)}
        self.slot_of_domain = {d: n for n, d in self.domains.items()}
        self.meeting_servers: dict[str, str | None] = {}
        self._empty = {n: SlotState(n, pool.slot_name(n), d) for n, d in self.domains.items()}

    # --- setup ------------------------------------------------------------------------------
    def _peak_need(self) -> int:
        """The static pool: the servers for the trace's peak, planned at the target utilization."""
        u = self.params.target_utilization
        return max(policy.clamp(policy.servers_for(p, m, self.params, u), self.params)
                   for p, m in zip(self.trace.participants, self.trace.meetings, strict=True))

    def _new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-{self._ids}"

    def _start_vm(self, slot: int, now: float, ready_after: float, paid_since: float | None = None) -> None:
        self.vms[slot] = SimVM(self._new_id("vm"), slot, "starting", now, paid_since if paid_since is not None else now,
                               now + STARTING_SECONDS, now + ready_after, now)

    def _initial(self, t0: float) -> None:
        p, m = self.trace.at(t0)
        n = self.static_servers if self.policy_name == "static" else \
            policy.clamp(policy.servers_for(p, m, self.params, self.params.target_utilization), self.params)
        for slot in range(1, n + 1):
            # already running (and paid since an hour) when the trace starts
            self._start_vm(slot, t0 - 3600, 0.0, paid_since=t0 - 3600)
            vm = self.vms[slot]
            vm.state, vm.modified, vm.ready_at = "running", t0 - 3600, t0 - 3600
            self.entries[slot] = SimEntry(self._new_id("sl"), ScaleliteState.ENABLED, True, 0.0)

    # --- physics ----------------------------------------------------------------------------
    def _advance_vms(self, now: float) -> None:
        for vm in self.vms.values():
            if vm.state == "starting" and now >= vm.running_at:
                vm.state, vm.modified = "running", vm.running_at

    def _ready(self, slot: int, now: float) -> bool:
        vm = self.vms.get(slot)
        return vm is not None and vm.state == "running" and now >= vm.ready_at

    def _poll(self, now: float) -> None:
        by_server: dict[str, list[LoadMeeting]] = {}
        for mt in self.load.meetings.values():
            if mt.server is not None:
                by_server.setdefault(mt.server, []).append(mt)
        for slot, e in self.entries.items():
            e.online = self._ready(slot, now)
            meetings = by_server.get(self.domains[slot], [])
            if not e.online or e.state == ScaleliteState.DISABLED:
                e.load = None
            else:
                e.load = scalelite_load((mt.participants, mt.age(now)) for mt in meetings)
            if e.state == ScaleliteState.CORDONED and e.online and not meetings:
                e.state, e.load = ScaleliteState.DISABLED, None

    def _place(self, loads: dict[str, float]):
        def place(meeting: LoadMeeting) -> str | None:
            host = least_loaded(loads)
            if host is None:
                self.result.unplaced_meetings += 1
            else:
                loads[host] += 1 + meeting.participants  # the create, then the joins, until the next poll
            self.meeting_servers[meeting.id] = host
            return host
        return place

    def _account(self, now: float, p: float, m: float) -> None:
        r = self.result
        cap = self.pool.capacity.participants_per_server
        per_server: Counter[str] = Counter()
        hosting: set[str] = set()
        unplaced = 0
        total = 0
        for mt in self.load.meetings.values():
            total += mt.participants
            if mt.server is None:
                unplaced += mt.participants
            else:
                per_server[mt.server] += mt.participants
                hosting.add(mt.server)
        short = unplaced + sum(max(0, v - cap) for v in per_server.values())
        r.minutes += 1
        r.participant_minutes += total
        r.shortfall_participant_minutes += short
        r.shortfall_peak_participants = max(r.shortfall_peak_participants, short)
        r.lower_bound_server_hours += policy.clamp(policy.servers_for(total, len(self.load.meetings),
                                                                      self.params), self.params) / 60.0
        r.peak_servers = max(r.peak_servers, len(self.vms))
        self.history.append((now, float(total), float(len(self.load.meetings))))
        k = int(round(ENVELOPE_SECONDS / STEP))
        self.envelope.append(max(h[1] for h in self.history[-k:]))
        for slot in self.vms:
            e = self.entries.get(slot)
            hosted = self.domains[slot] in hosting
            if not self._ready(slot, now):
                kind = "booting"
            elif e is not None and e.state == ScaleliteState.ENABLED:
                kind = "serving"
            elif hosted:
                kind = "draining"
            else:
                kind = "idle (paid, waiting for the paid hour's end)"
            r.hours_by_phase[kind] = r.hours_by_phase.get(kind, 0.0) + 1 / 60.0

    # --- the scaler's view ------------------------------------------------------------------
    def _lagged(self, now: float, offset: float) -> tuple[float, float] | None:
        """(participants, meetings) observed at now - offset, None before the trace's history."""
        i = len(self.history) - 1 - int(round(offset / STEP))
        if i < 0 or i >= len(self.history):
            return None
        return self.history[i][1], self.history[i][2]

    def _growth(self) -> float | None:
        """Sustained growth: the smaller of the envelope's slope over the growth window and over the
        last RECENT_SECONDS, so a step that is over (a surge that arrived) is not extrapolated,
        while a ramp that goes on is. PromQL: min of the two deriv(max_over_time(...)) below."""
        long = self._deriv(float(self.scaler_cfg.growth_window_seconds))
        recent = self._deriv(RECENT_SECONDS)
        if long is None or recent is None:
            return long
        return min(long, recent)

    def _deriv(self, window: float) -> float | None:
        """The growth signal: the least-squares slope (per second) over `window` of the participants'
        running maximum over ENVELOPE_SECONDS (PromQL: deriv(max_over_time(P[10m])[window:1m])).
        The running maximum hides the dip of the on-the-hour rebound, so only new highs count."""
        n = int(round(window / STEP))
        end = len(self.history) - int(round(SCRAPE_LAG_SECONDS / STEP))
        if end - n < 0:
            return None
        ys = self.envelope[end - n:end]
        xm = (n - 1) / 2.0
        ym = sum(ys) / n
        num = sum((i - xm) * (y - ym) for i, y in enumerate(ys))
        den = sum((i - xm) ** 2 for i in range(n))
        return num / den / STEP if den else 0.0

    def _history_max(self, now: float, back: float) -> tuple[float, float] | None:
        """Highest (participants, meetings) over [now - back, now - back + boot]: the forecast's
        PromQL max_over_time(...[boot] offset (back - boot))."""
        n = len(self.history)
        lo = n - 1 - int(round(back / STEP))
        hi = lo + int(round(self.params.boot_time_seconds / STEP))
        if lo < 0:
            return None
        window = self.history[lo:min(hi + 1, n)]
        if not window:
            return None
        return max(w[1] for w in window), max(w[2] for w in window)

    def signals(self, now: float) -> Signals:
        lag = self._lagged(now, SCRAPE_LAG_SECONDS) or self._lagged(now, 0)
        if lag is None:
            return Signals(Signal("participants", None, reason="no data"), Signal("meetings", None, reason="no data"))
        growth = Signal("participants_growth", self._growth(), reason="less history than the growth window")
        y = self._history_max(now, 86400.0)
        w = self._history_max(now, 7 * 86400.0)

        y_now = self._lagged(now, SCRAPE_LAG_SECONDS + 86400.0)
        w_now = self._lagged(now, SCRAPE_LAG_SECONDS + 7 * 86400.0)

        def sig(name: str, v: float | None) -> Signal:
            return Signal(name, v, reason="" if v is not None else "no history")
        return Signals(Signal("participants", lag[0], SCRAPE_LAG_SECONDS), Signal("meetings", lag[1], SCRAPE_LAG_SECONDS),
                       growth, sig("participants_yesterday", y[0] if y else None),
                       sig("participants_last_week", w[0] if w else None),
                       sig("meetings_yesterday", y[1] if y else None), sig("meetings_last_week", w[1] if w else None),
                       sig("participants_yesterday_now", y_now[0] if y_now else None),
                       sig("participants_last_week_now", w_now[0] if w_now else None))

    def snapshot(self, now: float) -> Snapshot:
        per: dict[str, list[LoadMeeting]] = {}
        for mt in self.load.meetings.values():
            if mt.server is not None:
                per.setdefault(mt.server, []).append(mt)
        slots = []
        ctype = self.pool.scaleway.commercial_type
        for n in range(1, self.pool.size.max + 1):
            domain = self.domains[n]
            sv = self.vms.get(n)
            if sv is None and n not in self.entries:
                slots.append(self._empty[n])
                continue
            vm = None if sv is None else VM(
                sv.id, self.pool.slot_name(n), VMState.RUNNING if sv.state == "running" else VMState.STARTING,
                ctype, self.pool.scaleway.zone, pool_tags(self.pool.name, n), sv.created, sv.modified)
            e = self.entries.get(n)
            entry = None if e is None else ScaleliteServer(e.id, self.pool.slot_url(n), "", e.state, e.online, e.load)
            ms = per.get(domain, [])
            ready = self._ready(n, now)
            slots.append(SlotState(
                n, self.pool.slot_name(n), domain, vm, entry, None,
                meetings=len(ms) if sv else None, participants=sum(m.participants for m in ms) if sv else None,
                recordings_unfinished=0 if ready else None,
                oldest_meeting_age_seconds=max((m.age(now) for m in ms), default=0.0),
                bbb_api_up=ready if sv else None, services_healthy=True if ready else None,
                recordings_failed=0, uptime_seconds=(now - sv.running_at) if sv and sv.state == "running" else None,
                powered_on_at=sv.powered_on_at if sv else None))
        signals = self.signals(now)
        return Snapshot(self.pool.name, now, Signals(**{**signals.__dict__, "per_server": {
            d: ServerLoad(len(v), sum(m.participants for m in v), 0) for d, v in per.items()}}), tuple(slots))

    def decide(self, snap: Snapshot) -> Decision:
        if self.policy_name == "static":
            active = sum(1 for s in snap.slots if s.vm is not None)
            return Decision((), self.static_servers, active, (), "static: the trace's peak, all the time")
        if self.policy_name == "divims-classic":
            floor = schedule_floor(self.pool.schedule, snap.now, 0.0, self.pool.pool_capacity)
            decision, self.state = policy.decide_classic(snap, self.params, self.state, floor)
            return decision
        floor = schedule_floor(self.pool.schedule, snap.now, self.params.horizon_seconds, self.pool.pool_capacity)
        decision, self.state = policy.decide(snap, self.params, self.state, floor)
        return decision

    # --- the plan's effects ----------------------------------------------------------------
    def apply(self, plan_: Any, now: float) -> None:
        for a in plan_.actions:
            self.actions[str(a.kind)] += 1
            slot = a.slot
            if a.kind in (ActionKind.CLONE, ActionKind.POWERON):
                self._start_vm(slot, now, CLONE_READY_SECONDS if a.kind == ActionKind.CLONE else POWERON_READY_SECONDS)
                if self.policy_name == "divims-classic":
                    # DiViMS enables the slot's (static) Scalelite entry in the run that clones it:
                    # Scalelite places meetings there from its first poll after BBB answers
                    self.entries.setdefault(slot, SimEntry(self._new_id("sl"))).state = ScaleliteState.ENABLED
            elif a.kind == ActionKind.ADD_TO_SCALELITE:
                self.entries[slot] = SimEntry(self._new_id("sl"))
            elif a.kind in (ActionKind.ENABLE, ActionKind.UNCORDON):
                self.entries[slot].state = ScaleliteState.ENABLED
            elif a.kind == ActionKind.CORDON:
                self.entries[slot].state = ScaleliteState.CORDONED
            elif a.kind == ActionKind.PANIC:
                e = self.entries[slot]
                e.state, e.load = ScaleliteState.DISABLED, None
            elif a.kind == ActionKind.TERMINATE and slot is not None:
                vm = self.vms.pop(slot)
                self.periods.append((vm.powered_on_at, now))
                for mt in self.load.on_server(self.domains[slot]):
                    self.load.end(mt.id)
                    self.result.meetings_killed += 1
            elif a.kind == ActionKind.END_MEETING:
                limit = self.rules.meetings_max_duration_seconds
                for mt in self.load.on_server(self.domains[slot]):
                    if mt.age(now) > limit:
                        self.load.end(mt.id)
                        self.result.meetings_ended_by_scaler += 1

    def check_invariants(self, now: float) -> None:
        """A meeting never changes server; no VM without a slot; at most one VM per slot."""
        for mt in self.load.meetings.values():
            if self.meeting_servers.get(mt.id, mt.server) != mt.server:
                raise AssertionError(f"meeting {mt.id} moved from {self.meeting_servers[mt.id]} to {mt.server}")
            if mt.server is not None and self.slot_of_domain[mt.server] not in self.vms:
                raise AssertionError(f"meeting {mt.id} on {mt.server}, which has no VM")

    def run(self, check: bool = False) -> Result:
        t0, t_end = self.trace.start, self.trace.end
        self._initial(t0)
        now = t0
        while now <= t_end:
            self._advance_vms(now)
            self._poll(now)
            loads = {self.domains[n]: e.load for n, e in self.entries.items()
                     if e.state == ScaleliteState.ENABLED and e.online and e.load is not None}
            p, m = self.trace.at(now)
            self.load.step(now, m, p, self._place(loads))
            self._account(now, p, m)
            if (now - t0) % self.interval == 0:
                snap = self.snapshot(now)
                decision = self.decide(snap)
                self.replacements = [t for t in self.replacements if t > now - 3600]
                plan_ = planner.plan(snap, decision, self.rules, len(self.replacements))
                self.replacements += [now] * planner.replacements_in(plan_)
                self.apply(plan_, now)
            if check:
                self.check_invariants(now)
            now += STEP
        for vm in self.vms.values():
            self.periods.append((vm.powered_on_at, max(now - STEP, vm.powered_on_at)))
        r = self.result
        r.server_hours = float(sum(billed_hours(a, b) for a, b in self.periods))
        r.running_server_hours = sum((b - a) for a, b in self.periods if b > a) / 3600.0
        # the trace starts with servers already up an hour: count only the trace's own time
        start_credit = sum(min(3600.0, max(0.0, t0 - a)) for a, _ in self.periods) / 3600.0
        r.running_server_hours -= start_credit
        r.server_hours -= start_credit
        r.hours_by_phase["billing rounding (unused paid time)"] = max(0.0, r.server_hours - r.running_server_hours)
        r.cost_eur = r.server_hours * self.price
        r.actions = dict(sorted(self.actions.items()))
        return r


def simulate(trace: Trace, pool: PoolConfig | None = None, scaler: ScalerConfig | None = None,
             policy_name: str = "default", seed: int = 1, check: bool = False) -> Result:
    """Runs one backtest; see the module docstring for the physics."""
    return Simulation(trace, pool or default_pool(), scaler, policy_name, seed).run(check=check)


# --- CLI --------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", required=True, action="append",
                        help="load trace CSV (time,participants,meetings); repeat for several")
    parser.add_argument("--config", help="divims YAML configuration (default: a built-in 1..20 PRO2-M pool)")
    parser.add_argument("--pool", help="which pool of the configuration (default: the first)")
    parser.add_argument("--policy", choices=POLICIES + ("all",), default="default")
    parser.add_argument("--seed", type=int, default=1, help="seed of the meeting durations and sizes")
    parser.add_argument("--json", action="store_true", help="print one JSON object per run")


def _pool_and_scaler(args: argparse.Namespace) -> tuple[PoolConfig, ScalerConfig]:
    if not args.config:
        return default_pool(), ScalerConfig()
    settings = load_config(args.config)
    if args.pool:
        try:
            return settings.pool(args.pool), settings.scaler
        except KeyError:
            raise ConfigError([f"--pool: no pool named {args.pool!r} in {args.config}"]) from None
    return settings.pools[0], settings.scaler


def run(args: argparse.Namespace) -> int:
    """Runs the backtest(s) and prints a table, or JSON objects with --json. Exit 2 on bad input."""
    try:
        pool, scaler = _pool_and_scaler(args)
        traces = [load_trace(t) for t in args.trace]
    except TraceError as exc:
        print(f"divims simulate: {exc}", file=sys.stderr)
        return 2
    names = POLICIES if args.policy == "all" else (args.policy,)
    results = [simulate(t, pool, scaler, name, args.seed).as_dict() for t in traces for name in names]
    if args.json:
        for r in results:
            print(json.dumps(r, sort_keys=True))
        return 0
    print(format_table(results))
    return 0


def format_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table of results (the one in docs/backtest.md)."""
    head = ("| trace | policy | server-hours | x lower bound | cost EUR | shortfall p-min | shortfall % | "
            "peak shortfall | unplaced | peak servers |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['trace']} | {r['policy']} | {r['server_hours']:.0f} | "
                     f"{r['server_hours_over_lower_bound']:.2f} | {r['cost_eur']:.0f} | "
                     f"{r['shortfall_participant_minutes']:.0f} | {100 * r['shortfall_ratio']:.3f} | "
                     f"{r['shortfall_peak_participants']} | {r['unplaced_meetings']} | {r['peak_servers']} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="divims simulate")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
