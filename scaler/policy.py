"""How many servers the pool should have: pure functions, one per term, each formula in its docstring.

    desired = clamp(max(load, schedule, forecast, request), size.min, size.max), then damped:
    scale out at once; scale in only to the highest desired value of the last scale_in_window seconds.

Unknown signals are never read as zero: a term that cannot be computed says why, and scale-in is
held (final >= active) while any signal it needs is unknown; scale-out acts on the known terms.
`PolicyState` (the recent desired values, the requests seen) goes in and comes out of `decide`, and
round-trips through JSON so that the live scaler persists it between cycles.

`decide_classic` is the DiViMS rule (divims.md §2.2), kept for the backtest's comparison.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

from divims.schedule import Floor
from scaler.eligibility import count_active
from scaler.snapshot import ActionRequest, Decision, Signal, Signals, Snapshot, Term

DEFAULT_TARGET_UTILIZATION = 0.85
# how far above the schedule's or history's expected peak a foretold ramp may be extrapolated
EXPECTED_MARGIN = 0.10
SPARE_FROM_SERVERS = 0.5
DECLINE_FRACTION = 0.05
HISTORY_SMOOTHING = 10.0
MAX_HISTORY_RATIO = 1.5


@dataclass(frozen=True)
class PolicyParams:
    """What the policy needs from the configuration (build it with `from_config`)."""

    participants_per_server: int = 250
    meetings_per_server: int = 15
    size_min: int = 1
    size_max: int = 20
    boot_time_seconds: float = 600.0
    interval_seconds: float = 60.0
    scrape_lag_seconds: float = 60.0     # a signal is this old when read (scrape + rule interval)
    scale_in_window_seconds: float = 900.0
    # fraction of a server's capacity the load term plans to fill: room for Scalelite's uneven
    # placement (meetings never move) and for the noise around the measured growth
    target_utilization: float = DEFAULT_TARGET_UTILIZATION
    request_default_seconds: float = 1800.0
    spare_servers: int = 1               # whole servers kept free once the load passes half a server
    decline_utilization: float = 0.95    # the fill planned while the load declines
    growth_utilization: float = 0.85     # the fill planned while it grows
    max_growth_fraction: float | None = None  # cap of the extrapolated growth over one horizon

    @classmethod
    def from_config(cls, pool: Any, scaler: Any, **overrides: Any) -> PolicyParams:
        """From a divims.config PoolConfig and ScalerConfig (duck-typed)."""
        values = dict(
            participants_per_server=pool.capacity.participants_per_server,
            meetings_per_server=pool.capacity.meetings_per_server,
            size_min=pool.size.min, size_max=pool.size.max,
            boot_time_seconds=float(scaler.boot_time_seconds),
            interval_seconds=float(scaler.interval_seconds),
            scale_in_window_seconds=float(scaler.scale_in_window_seconds),
        )
        values.update(overrides)
        return cls(**values)

    @property
    def horizon_seconds(self) -> float:
        """How far ahead a decision must look: a server asked for now serves after this long."""
        return self.boot_time_seconds + self.interval_seconds + self.scrape_lag_seconds


@dataclass(frozen=True)
class PolicyState:
    """What the policy remembers between cycles. Serialisable: `to_json()` / `from_json()`."""

    history: tuple[tuple[float, int], ...] = ()            # (time, undamped desired)
    requests: tuple[tuple[int, int, float], ...] = ()      # (request id, servers wanted, until)
    classic_previous: tuple[float, float, float] | None = None  # DiViMS: (time, participants, meetings)

    def to_json(self) -> str:
        return json.dumps({"history": [list(h) for h in self.history],
                           "requests": [list(r) for r in self.requests],
                           "classic_previous": list(self.classic_previous) if self.classic_previous else None})

    @classmethod
    def from_json(cls, text: str) -> PolicyState:
        """Parses `to_json` output; ValueError naming the problem on anything else."""
        try:
            data = json.loads(text)
            history = tuple((float(t), int(v)) for t, v in data.get("history", []))
            requests = tuple((int(i), int(s), float(u)) for i, s, u in data.get("requests", []))
            prev = data.get("classic_previous")
            classic = (float(prev[0]), float(prev[1]), float(prev[2])) if prev else None
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"policy state is not valid JSON of a PolicyState: {exc}") from None
        return cls(history, requests, classic)


def servers_for(participants: float, meetings: float, params: PolicyParams, utilization: float = 1.0) -> int:
    """ceil(max(participants / (participants_per_server * u), meetings / (meetings_per_server * u)))."""
    p = participants / (params.participants_per_server * utilization)
    m = meetings / (params.meetings_per_server * utilization)
    # round away float noise (2000/250/0.8 must be 10, not 11)
    return max(0, math.ceil(round(max(p, m), 6)))


def clamp(servers: int, params: PolicyParams) -> int:
    return max(params.size_min, min(params.size_max, servers))


def load_term(signals: Signals, params: PolicyParams, expected_peak: float | None = None) -> Term:
    """Servers for the load one horizon (boot + interval + scrape lag) ahead:
    P' = P + max(0, growth) * horizon, M' = M * P'/P, servers = ceil(max(P'/(250 u), M'/(15 u)))
    with u = target_utilization. Growth is the participants' slope over the growth window (long
    enough not to chase the on-the-hour rebound); unknown growth counts as none, and says so.
    When the schedule or history expects a peak (`expected_peak` participants) and the load is still
    below it, P' is capped at max(P, expected_peak * (1 + EXPECTED_MARGIN)): a ramp that the calendar
    foretells is not extrapolated past its known end. A load above the expectation is a surprise:
    then the extrapolation is used in full."""
    p, m = signals.participants, signals.meetings
    if not p.known or not m.known:
        missing = [s.name for s in (p, m) if not s.known]
        why = "; ".join(f"{s.name}: {s.reason or 'unknown'}" for s in (p, m) if not s.known)
        return Term("load", None, f"unknown {', '.join(missing)} ({why})")
    participants, meetings = float(p.value or 0), float(m.value or 0)
    g = signals.participants_growth
    growth = max(0.0, float(g.value)) if g.known else 0.0
    ahead = participants + growth * params.horizon_seconds
    capped = ""
    if params.max_growth_fraction is not None and ahead > participants * (1 + params.max_growth_fraction):
        ahead = participants * (1 + params.max_growth_fraction)
        capped = f", growth capped at +{params.max_growth_fraction:.0%}"
    if expected_peak is not None and participants <= expected_peak:
        cap = max(participants, expected_peak * (1 + EXPECTED_MARGIN))
        if ahead > cap:
            ahead, capped = cap, f", capped at the expected {expected_peak:.0f}+{EXPECTED_MARGIN:.0%}"
    meetings_ahead = meetings * (ahead / participants) if participants > 0 else meetings
    # a sustained decline (the load would lose more than DECLINE_FRACTION within the horizon)
    # brings few new meetings: the room kept for growth and uneven placement can go
    change = float(g.value or 0) * params.horizon_seconds if g.known else 0.0
    declining = change < -DECLINE_FRACTION * participants
    # while it grows, meetings get bigger after Scalelite placed them: keep more room per server
    growing = change > DECLINE_FRACTION * participants
    u = (max(params.target_utilization, params.decline_utilization) if declining
         else min(params.target_utilization, params.growth_utilization) if growing
         else params.target_utilization)
    servers = servers_for(ahead, meetings_ahead, params, u)
    if params.spare_servers and not declining and ahead >= params.participants_per_server * SPARE_FROM_SERVERS:
        # N+1: a small pool also keeps one whole server free, so the first minutes of a surge
        # nobody foretold find room (meetings never move off the server they started on)
        servers = max(servers, servers_for(ahead, meetings_ahead, params) + params.spare_servers)
    note = (f"growth {float(g.value or 0) * 60:.1f}/min{' (declining)' if declining else ''}" if g.known
            else "growth unknown, taken as 0")
    return Term("load", servers, f"{participants:.0f} participants, {meetings:.0f} meetings, {note}: "
                                 f"{ahead:.0f} expected in {params.horizon_seconds:.0f} s{capped} at "
                                 f"{u:.0%} of capacity")


def schedule_term(floor: Floor | None, params: PolicyParams) -> Term:
    """ceil(floor participants / participants_per_server): the schedule's floor, already shifted one
    boot time ahead by divims.schedule. None when no period or event applies."""
    if floor is None:
        return Term("schedule", None, "no schedule configured")
    if floor.participants is None:
        return Term("schedule", None, floor.reason)
    return Term("schedule", servers_for(floor.participants, 0, params), floor.reason)


def history_ratio(now_value: Signal, history_now: Signal) -> float:
    """How today compares with the history at the same time: (P_now + 10) / (P_hist_now + 10), in
    [0, 1.5]; 1 when either is unknown. The +10 keeps a quiet night from swinging the ratio."""
    if not (now_value.known and history_now.known):
        return 1.0
    r = (float(now_value.value or 0) + HISTORY_SMOOTHING) / (float(history_now.value or 0) + HISTORY_SMOOTHING)
    return max(0.0, min(MAX_HISTORY_RATIO, r))


def forecast_participants(signals: Signals) -> list[tuple[str, float, float]]:
    """(label, participants, meetings) the history expects one boot time ahead: yesterday's and last
    week's values scaled by today's ratio to them (`history_ratio`), so that a Saturday does not
    replay Friday's classes."""
    out = []
    for label, p, m, at_now in (
            ("yesterday", signals.participants_yesterday, signals.meetings_yesterday,
             signals.participants_yesterday_now),
            ("last week", signals.participants_last_week, signals.meetings_last_week,
             signals.participants_last_week_now)):
        if not p.known:
            continue
        r = history_ratio(signals.participants, at_now)
        out.append((label if r == 1.0 else f"{label} x{r:.2f}", float(p.value or 0) * r,
                    (float(m.value or 0) * r) if m.known else 0.0))
    return out


def forecast_term(signals: Signals, params: PolicyParams) -> Term:
    """Servers for the load seen yesterday or last week around now + boot time (the highest known),
    scaled by today's ratio to that day (see forecast_participants): ceil(max(P_hist/(250 u),
    M_hist/(15 u))). It only ever adds servers (it enters a max), so a quiet yesterday never removes
    capacity that today's load needs."""
    best: tuple[int, str] | None = None
    for label, p, m in forecast_participants(signals):
        servers = servers_for(p, m, params, params.target_utilization)
        if best is None or servers > best[0]:
            best = (servers, f"{label}: {p:.0f} participants one boot time ahead")
    if best is None:
        return Term("forecast", None, "no history (yesterday and last week unknown)")
    return Term("forecast", best[0], best[1])


def request_term(requests: tuple[ActionRequest, ...], active: int, now: float, state: PolicyState,
                 params: PolicyParams) -> tuple[Term, tuple[str, ...], PolicyState]:
    """Alert requests: a scale_out adds `servers` to the servers active when it was first seen, until
    its `until`; a hold_scale_in holds scale-in until its `until`. Returns (term, holds, state)."""
    live = {rid: (servers, until) for rid, servers, until in state.requests if until > now}
    holds: list[str] = []
    for r in requests:
        until = r.until if r.until is not None else now + params.request_default_seconds
        if r.action == "scale_out" and r.id not in live and until > now:
            live[r.id] = (active + (r.servers or 1), until)
        elif r.action == "hold_scale_in" and until > now:
            holds.append(f"request {r.id}: hold scale-in{': ' + r.reason if r.reason else ''}")
    new_state = replace(state, requests=tuple((rid, s, u) for rid, (s, u) in sorted(live.items())))
    if not live:
        return Term("request", None, "no scale-out request"), tuple(holds), new_state
    rid, (servers, until) = max(live.items(), key=lambda kv: kv[1][0])
    return (Term("request", servers, f"scale-out request {rid}: {servers} servers until {until:.0f}"),
            tuple(holds), new_state)


def expected_participants(signals: Signals, floor: Floor | None) -> float | None:
    """The participants the calendar or history expects one boot time ahead: the highest of the
    schedule floor, yesterday and last week (None when none is known)."""
    values = [p for _, p, _ in forecast_participants(signals)]
    if floor is not None and floor.participants is not None:
        values.append(float(floor.participants))
    return max(values) if values else None


def damp(raw: int, now: float, state: PolicyState, params: PolicyParams,
         active: int | None = None) -> tuple[int, PolicyState, str]:
    """Scale out at once, scale in only as far as the highest desired value of the last
    scale_in_window seconds allows (HPA's stabilization window):
        final = raw                              if raw >= active
        final = min(active, max(window values))  otherwise
    The window's highest value only holds servers that exist: it never orders new ones (a transient
    peak that has passed must not clone servers nobody needs any more). With `active` None, the
    window's highest value is the answer."""
    since = now - params.scale_in_window_seconds
    history = tuple(h for h in state.history if h[0] > since) + ((now, raw),)
    highest = max(v for _, v in history)
    if active is None or raw >= active:
        final = raw if active is not None else highest
    else:
        final = max(raw, min(active, highest))
    reason = "" if final == raw else f"scale-in damped: {highest} wanted in the last {params.scale_in_window_seconds:.0f} s"
    return final, replace(state, history=history), reason


def signal_holds(signals: Signals) -> tuple[str, ...]:
    """Reasons to hold scale-in from the signals: Prometheus down, or a needed signal unknown."""
    if not signals.prometheus_up:
        return ("prometheus unreachable: scale-in held",)
    return tuple(f"{s.name} unknown ({s.reason or 'no value'}): scale-in held"
                 for s in (signals.participants, signals.meetings) if not s.known)


def decide(snapshot: Snapshot, params: PolicyParams, state: PolicyState,
           floor: Floor | None = None) -> tuple[Decision, PolicyState]:
    """The default policy: terms, clamp, damping, holds. Pure: same inputs, same outputs."""
    active = count_active(snapshot)
    expected = expected_participants(snapshot.signals, floor)
    terms = [load_term(snapshot.signals, params, expected), schedule_term(floor, params),
             forecast_term(snapshot.signals, params)]
    req, req_holds, state = request_term(snapshot.requests, active, snapshot.now, state, params)
    terms.append(req)
    holds = signal_holds(snapshot.signals) + req_holds
    if not snapshot.inventory_complete:
        holds += ("inventory incomplete: scale-in held",)
    known = [t.servers for t in terms if t.servers is not None]
    if not known:
        # nothing to go on: keep what runs (never zero), still above size.min
        final = clamp(active, params)
        return (Decision(tuple(terms), final, active, holds + ("no term known: holding",),
                         "no term could be computed"), state)
    raw = clamp(max(known), params)
    final, state, damp_reason = damp(raw, snapshot.now, state, params, active)
    reasons = [f"max of terms = {max(known)}, clamped to {raw}"]
    if damp_reason:
        reasons.append(damp_reason)
    if holds and final < active:
        final = min(active, params.size_max)
        reasons.append(f"held at {final} active")
    return Decision(tuple(terms), final, active, holds, "; ".join(reasons)), state


# --- DiViMS's rule, for the comparison ----------------------------------------------------------

@dataclass(frozen=True)
class ClassicParams:
    """divims.md §1a defaults."""

    factor_1: float = 2.0
    factor_2: float = 3.0
    variation_threshold: float = 1.2
    minimum_ratio: float = 0.01
    stale_seconds: float = 540.0   # 1.8 x the 5-minute run frequency
    extra: dict[str, float] = field(default_factory=dict)


def classic_load_servers(participants: float, meetings: float, prev: tuple[float, float] | None,
                         params: PolicyParams, cp: ClassicParams = ClassicParams()) -> int:
    """DiViMS getNextCapacityFromLoad: P, M floored to 1; r = P/Pprev, M/Mprev; factor 2, or 3 when
    rP >= 1.2 (participants) / rM > 1.2 (meetings); servers = max(ceil(round(fP P)/250),
    ceil(round(fM M)/15), ceil(size.max * 0.01))."""
    p, m = max(1.0, participants), max(1.0, meetings)
    pp, pm = (max(1.0, prev[0]), max(1.0, prev[1])) if prev else (p, m)
    fp = cp.factor_1 if p / pp < cp.variation_threshold else cp.factor_2
    fm = cp.factor_1 if m / pm <= cp.variation_threshold else cp.factor_2
    minimum = math.ceil(params.size_max * cp.minimum_ratio)
    return max(math.ceil(round(fp * p) / params.participants_per_server),
               math.ceil(round(fm * m) / params.meetings_per_server), minimum)


def decide_classic(snapshot: Snapshot, params: PolicyParams, state: PolicyState,
                   floor: Floor | None = None, cp: ClassicParams = ClassicParams()) -> tuple[Decision, PolicyState]:
    """DiViMS 'both': max(load rule, schedule) with no damping and no look-ahead; the past values
    are the previous run's unless older than 1.8 run intervals."""
    active = count_active(snapshot)
    s = snapshot.signals
    if not (s.participants.known and s.meetings.known):
        return Decision((), clamp(active, params), active, ("signals unknown",), "classic: no change"), state
    p, m = float(s.participants.value or 0), float(s.meetings.value or 0)
    prev = state.classic_previous
    previous = (prev[1], prev[2]) if prev and snapshot.now - prev[0] <= cp.stale_seconds else None
    load = classic_load_servers(p, m, previous, params, cp)
    terms = [Term("load", load, f"DiViMS x2/x3 of {p:.0f} participants, {m:.0f} meetings")]
    sched = schedule_term(floor, params)
    terms.append(sched)
    desired = max(load, sched.servers or 0)
    state = replace(state, classic_previous=(snapshot.now, p, m))
    final = min(desired, params.size_max)  # DiViMS's cap is ineffective (bug); we apply it
    return Decision(tuple(terms), max(final, 0), active, (), "classic"), state
