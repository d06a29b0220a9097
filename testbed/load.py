"""Load traces and the load model: how many meetings and participants a pool carries, minute by minute.

Clock-agnostic: nothing here reads a clock. The backtest (`scaler/simulate.py`) steps it in simulated
time; the live testbed's load driver steps it with wall-clock time. Both place meetings the way
Scalelite does (`scalelite_load`, `least_loaded`), written once here.

Trace CSV format (one header line, then one row per sample, `#` lines are comments):

    time,participants,meetings
    2026-03-02T00:00:00+01:00,0,0
    2026-03-02T00:05:00+01:00,12,1

`time` is ISO 8601 with a UTC offset; each row holds until the next one.
"""

from __future__ import annotations

import bisect
import csv
import io
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

# Scalelite (app/models/server.rb, poll.rake): a meeting younger than LOAD_JOIN_BUFFER_TIME weighs at
# least LOAD_MIN_USER_COUNT, so a fresh empty meeting is not seen as free room.
LOAD_JOIN_BUFFER_SECONDS = 15 * 60
LOAD_MIN_USER_COUNT = 15


class TraceError(ValueError):
    """A trace file that cannot be read: the message names the file and line."""


@dataclass(frozen=True)
class Trace:
    """A load trace: sample times (epoch seconds, increasing) with participants and meetings."""

    name: str
    times: tuple[float, ...]
    participants: tuple[int, ...]
    meetings: tuple[int, ...]

    @property
    def start(self) -> float:
        return self.times[0]

    @property
    def end(self) -> float:
        return self.times[-1]

    def at(self, t: float) -> tuple[float, float]:
        """(participants, meetings) at time t: each row holds until the next one; before the first
        row the first holds, after the last the last."""
        times = self.times
        if t < times[0]:
            return float(self.participants[0]), float(self.meetings[0])
        i = bisect.bisect_right(times, t) - 1
        return float(self.participants[i]), float(self.meetings[i])


def parse_trace(text: str, name: str = "<trace>") -> Trace:
    """Parses a trace CSV (see the module docstring). Raises TraceError naming the line on bad input."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise TraceError(f"{name}: empty trace")
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    need = {"time", "participants", "meetings"}
    if reader.fieldnames is None or not need <= {f.strip() for f in reader.fieldnames}:
        raise TraceError(f"{name}: the header must name the columns time,participants,meetings")
    times: list[float] = []
    parts: list[int] = []
    meets: list[int] = []
    for i, row in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        try:
            t = datetime.fromisoformat(row["time"])
        except ValueError:
            raise TraceError(f"{name}: row {i}: time {row['time']!r} is not ISO 8601") from None
        if t.tzinfo is None:
            raise TraceError(f"{name}: row {i}: time {row['time']!r} has no UTC offset")
        try:
            p, m = int(row["participants"]), int(row["meetings"])
        except ValueError:
            raise TraceError(f"{name}: row {i}: participants and meetings must be integers") from None
        if p < 0 or m < 0:
            raise TraceError(f"{name}: row {i}: participants and meetings must not be negative")
        ts = t.timestamp()
        if times and ts <= times[-1]:
            raise TraceError(f"{name}: row {i}: time {row['time']} is not after the previous row")
        times.append(ts)
        parts.append(p)
        meets.append(m)
    if len(times) < 2:
        raise TraceError(f"{name}: a trace needs at least two rows")
    return Trace(name, tuple(times), tuple(parts), tuple(meets))


def load_trace(path: str | Path) -> Trace:
    """Reads and parses a trace file; TraceError (naming the file) when missing or malformed."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise TraceError(f"{p}: cannot read trace: {exc.strerror or exc}") from None
    return parse_trace(text, name=p.stem)


def format_trace(rows: Iterable[tuple[datetime, int, int]]) -> str:
    """The CSV text of a trace (the inverse of parse_trace)."""
    out = ["time,participants,meetings"]
    out += [f"{t.isoformat()},{p},{m}" for t, p, m in rows]
    return "\n".join(out) + "\n"


# --- Scalelite's placement ---------------------------------------------------------------------

def scalelite_load(meetings: Iterable[tuple[int, float]], multiplier: float = 1.0) -> float:
    """Scalelite's load of one server from its meetings, given as (participants, age_seconds):
    sum of max(participants, 15 if age < 15 min else 0), times the load multiplier."""
    total = 0
    for participants, age in meetings:
        total += max(participants, LOAD_MIN_USER_COUNT) if age < LOAD_JOIN_BUFFER_SECONDS else participants
    return total * multiplier


def least_loaded(loads: dict[str, float]) -> str | None:
    """The server Scalelite's create picks: the lowest load among enabled, online servers with a
    known load (the `loads` given); ties broken by name, as in a Redis sorted set. None if empty."""
    if not loads:
        return None
    return min(loads, key=lambda host: (loads[host], host))


# --- the load model ----------------------------------------------------------------------------

@dataclass
class LoadMeeting:
    """One meeting of the load model. `server` is None when it found no enabled server."""

    id: str
    start: float
    planned_end: float
    weight: float
    server: str | None = None
    participants: int = 0

    def age(self, now: float) -> float:
        return now - self.start


@dataclass
class StepResult:
    started: list[LoadMeeting] = field(default_factory=list)
    ended: list[LoadMeeting] = field(default_factory=list)


class LoadModel:
    """Meetings whose count follows a target (a trace) and that share the target participants.

    Each `step(now, meetings, participants, place)`:
    1. ends the meetings whose drawn duration (uniform in [min, max] seconds) is over;
    2. ends the oldest early while more meetings run than the target (a trace that drops faster);
    3. starts new meetings up to the target, each placed once by `place(meeting)` (which returns the
       server host, or None when no server takes it) and never moved afterwards;
    4. shares the participants among the running meetings in proportion to their weights
       (a lognormal size factor drawn at start), by largest remainder so the total is exact.
    Deterministic for a given seed.
    """

    def __init__(self, seed: int = 1, min_duration_seconds: float = 30 * 60,
                 max_duration_seconds: float = 90 * 60, size_sigma: float = 0.5):
        if not 0 < min_duration_seconds <= max_duration_seconds:
            raise ValueError("meeting durations: need 0 < min <= max")
        self.rng = random.Random(seed)
        self.min_duration = min_duration_seconds
        self.max_duration = max_duration_seconds
        self.size_sigma = size_sigma
        self.meetings: dict[str, LoadMeeting] = {}
        self._next = 0

    def step(self, now: float, target_meetings: float, target_participants: float,
             place: Callable[[LoadMeeting], str | None]) -> StepResult:
        """Advances the model to `now` (see the class docstring); returns what started and ended."""
        result = StepResult()
        for m in [m for m in self.meetings.values() if m.planned_end <= now]:
            result.ended.append(self.meetings.pop(m.id))
        target_m = max(0, int(round(target_meetings)))
        if len(self.meetings) > target_m:
            # dicts keep insertion order, i.e. start order: the oldest come first
            for mid in list(self.meetings)[: len(self.meetings) - target_m]:
                result.ended.append(self.meetings.pop(mid))
        target_p = max(0, int(round(target_participants)))
        new: list[LoadMeeting] = []
        while len(self.meetings) + len(new) < target_m:
            self._next += 1
            dur = self.rng.uniform(self.min_duration, self.max_duration)
            weight = self.rng.lognormvariate(0.0, self.size_sigma)
            new.append(LoadMeeting(f"m{self._next}", now, now + dur, weight))
        # a new meeting's expected size, known to Scalelite only through the joins that follow
        avg = target_p / target_m if target_m else 0.0
        total_weight = sum(m.weight for m in self.meetings.values()) + sum(m.weight for m in new)
        for m in new:
            m.participants = int(round(target_p * m.weight / total_weight)) if total_weight else 0
            if m.participants == 0 and avg:
                m.participants = 1
            m.server = place(m)
            self.meetings[m.id] = m
            result.started.append(m)
        self._share(target_p)
        return result

    def _share(self, total: int) -> None:
        running = list(self.meetings.values())
        weight = sum(m.weight for m in running)
        if not running or weight <= 0:
            return
        exact = [total * m.weight / weight for m in running]
        floors = [math.floor(x) for x in exact]
        rest = total - sum(floors)
        order = sorted(range(len(running)), key=lambda i: exact[i] - floors[i], reverse=True)
        for i in order[:rest]:
            floors[i] += 1
        for m, p in zip(running, floors, strict=True):
            m.participants = p

    def end(self, meeting_id: str) -> LoadMeeting | None:
        """Ends one meeting now (a forced end by the scaler, or its server died)."""
        return self.meetings.pop(meeting_id, None)

    def on_server(self, server: str) -> list[LoadMeeting]:
        return [m for m in self.meetings.values() if m.server == server]
