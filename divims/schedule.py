"""The schedule floor: how many participants the pool must be ready for, from the calendar.

Two sources, the larger wins:
- the YAML weekly schedule (`schedule.weekly`, in `schedule.timezone`): a period counts from
  `from - lead` to `to` on its days, so servers booted `lead` seconds ahead are ready when it starts;
- the DiViMS iCal feed: the event with the latest start among those started in the last 7 days
  (its end is ignored, as DiViMS does), whose SUMMARY holds `users=N` or `users=N%` (of the pool
  capacity). Events starting within `lead` count as started.

Pure functions over text and times, plus `IcalFeed`, the one piece with I/O: it fetches the feed
with a timeout and falls back to a cached copy when the feed fails.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import requests

log = logging.getLogger(__name__)

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ICAL_LOOKBACK = timedelta(days=7)
_USERS = re.compile(r"(?:^|[\s;,\[\]])users\s*=\s*(\d+(?:\.\d+)?)\s*(%?)", re.IGNORECASE)


class ScheduleError(ValueError):
    """A schedule that cannot be used (bad iCal text, bad users= value): the message says what."""


@dataclass(frozen=True)
class Floor:
    """The schedule's floor in participants (None: no period/event applies) and why."""

    participants: int | None
    reason: str


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def _period_fields(period: Any) -> tuple[list[str], str, str, int | None, float | None]:
    """Reads a WeeklyPeriod from divims.config or an equivalent dict."""
    if isinstance(period, dict):
        return (list(period["days"]), str(period["from"]), str(period["to"]),
                period.get("participants"), period.get("percent"))
    return (list(period.days), period.from_, period.to, period.participants, period.percent)


def weekly_floor(weekly: list[Any], timezone: str, now: float, lead_seconds: float,
                 pool_capacity: int) -> Floor:
    """The largest floor among the weekly periods for which `from - lead <= now < to` (local time
    in `timezone`); `percent` periods give ceil(percent/100 * pool_capacity) participants."""
    tz = ZoneInfo(timezone)
    best: Floor = Floor(None, "no weekly period now")
    local_now = datetime.fromtimestamp(now, tz)
    # a period of yesterday or today may be under way (lead can cross midnight): look at both days
    for day_offset in (0, 1):
        day = (local_now - timedelta(days=day_offset)).date()
        day_name = DAYS[day.weekday()]
        midnight = datetime(day.year, day.month, day.day, tzinfo=tz)
        for period in weekly:
            days, start, end, participants, percent = _period_fields(period)
            if day_name not in days:
                continue
            begin = midnight + timedelta(minutes=_minutes(start))
            finish = midnight + timedelta(minutes=_minutes(end))
            if not (begin.timestamp() - lead_seconds <= now < finish.timestamp()):
                continue
            amount = (int(participants) if participants is not None
                      else math.ceil(float(percent or 0) / 100 * pool_capacity))
            if best.participants is None or amount > best.participants:
                ahead = " (booting ahead of it)" if now < begin.timestamp() else ""
                best = Floor(amount, f"weekly {day_name} {start}-{end}: {amount} participants{ahead}")
    return best


def parse_users(summary: str, pool_capacity: int) -> int:
    """`users=N` -> N, `users=N%` -> ceil(N/100 * pool_capacity). ScheduleError when absent or out of range."""
    m = _USERS.search(summary)
    if not m:
        raise ScheduleError(f"event {summary!r} has no users=N or users=N%")
    value = float(m.group(1))
    if m.group(2):
        if not 0 <= value <= 100:
            raise ScheduleError(f"event {summary!r}: users percentage {value} is outside 0-100")
        return math.ceil(value / 100 * pool_capacity)
    return int(value)


def ical_floor(ics_text: str, now: float, lead_seconds: float, pool_capacity: int) -> Floor:
    """The DiViMS rule: among the events started in [now - 7 d, now + lead], the one with the latest
    start gives the floor (`users=N` / `users=N%` in its SUMMARY). ScheduleError on unreadable text."""
    import icalendar
    import recurring_ical_events

    try:
        cal = icalendar.Calendar.from_ical(ics_text)
    except Exception as exc:  # icalendar raises ValueError and friends on garbage
        raise ScheduleError(f"the iCal feed cannot be parsed: {exc}") from None
    horizon = datetime.fromtimestamp(now + lead_seconds).astimezone()
    since = horizon - ICAL_LOOKBACK - timedelta(seconds=lead_seconds)
    latest: tuple[float, str] | None = None
    for event in recurring_ical_events.of(cal).between(since, horizon + timedelta(seconds=1)):
        start = event.get("DTSTART")
        if start is None:
            continue
        value = start.dt
        if not isinstance(value, datetime):  # an all-day event starts at local midnight
            value = datetime(value.year, value.month, value.day).astimezone()
        elif value.tzinfo is None:
            value = value.astimezone()
        ts = value.timestamp()
        if ts > now + lead_seconds:
            continue
        if latest is None or ts > latest[0]:
            latest = (ts, str(event.get("SUMMARY", "")))
    if latest is None:
        return Floor(None, "no iCal event started in the last 7 days")
    users = parse_users(latest[1], pool_capacity)
    when = datetime.fromtimestamp(latest[0]).astimezone().isoformat(timespec="minutes")
    return Floor(users, f"iCal event of {when}: {users} participants")


def combine(*floors: Floor) -> Floor:
    """The largest known floor; with none known, the reasons of all."""
    known = [f for f in floors if f.participants is not None]
    if not known:
        return Floor(None, "; ".join(f.reason for f in floors) or "no schedule")
    return max(known, key=lambda f: f.participants or 0)


def schedule_floor(schedule: Any, now: float, lead_seconds: float, pool_capacity: int,
                   ics_text: str | None = None, ics_note: str = "") -> Floor:
    """The pool's schedule floor now: weekly periods and (when given) the iCal text, the larger.
    A broken iCal text is reported in the reason, never raised: the weekly floor still applies."""
    floors = [weekly_floor(list(schedule.weekly), schedule.timezone, now, lead_seconds, pool_capacity)]
    if ics_text is not None:
        try:
            floors.append(ical_floor(ics_text, now, lead_seconds, pool_capacity))
        except ScheduleError as exc:
            floors.append(Floor(None, f"iCal unusable: {exc}"))
    result = combine(*floors)
    if ics_note:
        result = Floor(result.participants, f"{result.reason} [{ics_note}]")
    return result


class IcalFeed:
    """The iCal feed with its cached copy: `read()` returns (text or None, note).

    A URL is fetched with `timeout_seconds` (3 tries, as DiViMS); a success refreshes the cache file.
    On failure the cached copy is used and the note says so; with no cache, (None, note)."""

    def __init__(self, source: str, cache_path: str | None, timeout_seconds: float = 10.0,
                 tries: int = 3, session: requests.Session | None = None):
        self.source = source
        self.cache_path = Path(cache_path) if cache_path else None
        self.timeout = timeout_seconds
        self.tries = max(1, tries)
        self.session = session or requests.Session()

    def _fetch(self) -> str:
        if not self.source.startswith(("http://", "https://")):
            return Path(self.source).read_text(encoding="utf-8")
        last: Exception | None = None
        for _ in range(self.tries):
            try:
                resp = self.session.get(self.source, timeout=self.timeout)
                if resp.status_code == 200:
                    return resp.text
                last = RuntimeError(f"HTTP {resp.status_code}")
            except requests.RequestException as exc:
                last = exc
        raise RuntimeError(f"{type(last).__name__}: {last}" if last else "failed")

    def read(self) -> tuple[str | None, str]:
        try:
            text = self._fetch()
        except (OSError, RuntimeError) as exc:
            # the URL may carry a token: name only the cache in the note, not the URL
            log.warning("schedule: iCal feed failed (%s), using the cached copy %s", type(exc).__name__,
                        self.cache_path)
            if self.cache_path and self.cache_path.exists():
                with open(self.cache_path, encoding="utf-8", newline="") as fh:
                    return fh.read(), "iCal feed failed: cached copy"
            return None, "iCal feed failed and no cached copy"
        if self.cache_path:
            try:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.cache_path.with_suffix(self.cache_path.suffix + ".tmp")
                with open(tmp, "w", encoding="utf-8", newline="") as fh:
                    fh.write(text)
                tmp.replace(self.cache_path)
            except OSError as exc:
                log.warning("schedule: cannot write the iCal cache %s: %s", self.cache_path, exc)
        return text, ""
