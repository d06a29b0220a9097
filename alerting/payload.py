"""Alertmanager's webhook payload (version 4, apis.md E) parsed into values, or a clear PayloadError.

Fields the receiver does not use (groupKey, truncatedAlerts, notification_reason, routeLabels, ...) are
accepted and ignored, so newer Alertmanagers keep working.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from divims.errors import DivimsError

SUPPORTED_VERSION = "4"
STATUSES = ("firing", "resolved")
# Go's time.Time zero value, which Alertmanager puts in endsAt of firing alerts.
_ZERO_YEAR = 1
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})$")


class PayloadError(DivimsError):
    """The body is JSON but not an Alertmanager notification. The message names the bad field."""


@dataclass(frozen=True)
class Timestamp:
    """An RFC 3339 instant: `text` is its canonical UTC spelling (the storage key), `epoch` its seconds.
    Go's zero time (`0001-01-01T00:00:00Z`) is `None` wherever a Timestamp is optional."""

    text: str
    epoch: float


def parse_timestamp(value: Any, field: str) -> Timestamp | None:
    """Parses an RFC 3339 time as Go writes it (up to nanoseconds, Z or an offset). Returns None for
    Go's zero time and for an empty string; raises PayloadError naming `field` otherwise."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise PayloadError(f"{field}: expected an RFC 3339 time string, got {type(value).__name__}")
    try:
        return _parse_rfc3339(value)
    except _BadTime as exc:
        raise PayloadError(f"{field}: {exc}") from None


class _BadTime(ValueError):
    pass


@functools.lru_cache(maxsize=4096)
def _parse_rfc3339(value: str) -> Timestamp | None:
    # Cached: a notification repeats the zero endsAt and its group's startsAt in every alert, and
    # Alertmanager resends the same alerts every group_interval. Timestamp is immutable.
    m = _RFC3339.match(value)
    if not m:
        raise _BadTime(f"expected an RFC 3339 time like 2026-01-02T03:04:05Z, got {value[:40]!r}")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    if year == _ZERO_YEAR:
        return None
    micros = int((m.group(7) or "0").ljust(6, "0")[:6])
    zone = m.group(8)
    try:
        if zone in ("Z", "z"):
            tz = UTC
        else:
            sign = 1 if zone[0] == "+" else -1
            tz = timezone(timedelta(minutes=sign * (int(zone[1:3]) * 60 + int(zone[4:6]))))
        when = datetime(year, month, day, hour, minute, min(second, 59), micros, tzinfo=tz).astimezone(UTC)
    except ValueError as exc:
        raise _BadTime(f"invalid time {value[:40]!r}: {exc}") from None
    fraction = f".{when.microsecond:06d}".rstrip("0") if when.microsecond else ""
    text = when.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"
    return Timestamp(text=text, epoch=when.timestamp())


@dataclass(frozen=True)
class Alert:
    """One alert of a notification, as the store keeps it: an occurrence is (fingerprint, starts_at)."""

    fingerprint: str
    status: str                      # firing | resolved
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: Timestamp
    ends_at: Timestamp | None        # None while firing (Go's zero time)
    generator_url: str = ""

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")


@dataclass(frozen=True)
class Notification:
    version: str
    status: str
    receiver: str
    group_key: str
    alerts: tuple[Alert, ...]


def _str_map(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PayloadError(f"{field}: expected an object of strings, got {type(value).__name__}")
    for k, v in value.items():
        if not isinstance(v, str):
            raise PayloadError(f"{field}.{k}: expected a string, got {type(v).__name__}")
    return dict(value)


def _required_str(obj: dict[str, Any], key: str, field: str) -> str:
    if key not in obj:
        raise PayloadError(f"{field}: missing")
    value = obj[key]
    if not isinstance(value, str):
        raise PayloadError(f"{field}: expected a string, got {type(value).__name__}")
    return value


def _str_values(value: Any) -> bool:
    if type(value) is not dict:
        return False
    for v in value.values():
        if type(v) is not str:
            return False
    return True


def _well_formed_alert(raw: Any) -> Alert | None:
    """The Alert of a well-formed alert object, or None when anything about it needs a closer look:
    the same result as `_checked_alert` wherever this returns one, without building its messages."""
    if type(raw) is not dict:
        return None
    get = raw.get
    status, fingerprint, labels, annotations = get("status"), get("fingerprint"), get("labels"), get("annotations")
    starts, ends, generator = get("startsAt"), get("endsAt"), get("generatorURL", "")
    if (status not in STATUSES or type(fingerprint) is not str or not 0 < len(fingerprint) <= 64
            or not _str_values(labels) or not _str_values(annotations) or type(starts) is not str
            or type(generator) is not str or not (ends is None or type(ends) is str)):
        return None
    try:
        starts_at = _parse_rfc3339(starts)
        ends_at = _parse_rfc3339(ends) if ends else None
    except _BadTime:
        return None
    if starts_at is None:
        return None
    # json.loads made these dicts for this notification alone: kept as they are, not copied
    return Alert(fingerprint=fingerprint, status=status, labels=labels, annotations=annotations,
                 starts_at=starts_at, ends_at=ends_at if status == "resolved" else None, generator_url=generator)


def _checked_alert(raw: Any, where: str) -> Alert:
    """The alert object at `where`, every field checked; raises PayloadError naming the first problem."""
    if not isinstance(raw, dict):
        raise PayloadError(f"{where}: expected an object, got {type(raw).__name__}")
    a_status = _required_str(raw, "status", f"{where}.status")
    if a_status not in STATUSES:
        raise PayloadError(f"{where}.status: expected firing or resolved, got {a_status[:20]!r}")
    fingerprint = _required_str(raw, "fingerprint", f"{where}.fingerprint")
    if not fingerprint or len(fingerprint) > 64:
        raise PayloadError(f"{where}.fingerprint: expected 1 to 64 characters")
    labels = _str_map(raw.get("labels"), f"{where}.labels")
    starts_at = parse_timestamp(_required_str(raw, "startsAt", f"{where}.startsAt"), f"{where}.startsAt")
    if starts_at is None:
        raise PayloadError(f"{where}.startsAt: must be a real time, not the zero time")
    ends_at = parse_timestamp(raw.get("endsAt"), f"{where}.endsAt")
    generator = raw.get("generatorURL", "")
    return Alert(fingerprint=fingerprint, status=a_status, labels=labels,
                 annotations=_str_map(raw.get("annotations"), f"{where}.annotations"),
                 starts_at=starts_at, ends_at=ends_at if a_status == "resolved" else None,
                 generator_url=generator if isinstance(generator, str) else "")


def parse_notification(body: Any) -> Notification:
    """Validates a decoded JSON body. Raises PayloadError naming the first problem found."""
    if not isinstance(body, dict):
        raise PayloadError(f"expected a JSON object, got {type(body).__name__}")
    version = _required_str(body, "version", "version")
    if version != SUPPORTED_VERSION:
        raise PayloadError(f"version: unsupported webhook version {version[:10]!r}, expected '4'")
    status = _required_str(body, "status", "status")
    if status not in STATUSES:
        raise PayloadError(f"status: expected firing or resolved, got {status[:20]!r}")
    if "alerts" not in body:
        raise PayloadError("alerts: missing")
    raw_alerts = body["alerts"]
    if not isinstance(raw_alerts, list):
        raise PayloadError(f"alerts: expected a list, got {type(raw_alerts).__name__}")
    alerts = []
    for i, raw in enumerate(raw_alerts):
        # The fast path takes the well-formed alert of every real notification; anything it is not
        # sure of goes to the checked path, which names the problem (or accepts the odd but valid).
        alerts.append(_well_formed_alert(raw) or _checked_alert(raw, f"alerts[{i}]"))
    receiver = body.get("receiver", "")
    group_key = body.get("groupKey", "")
    return Notification(version=version, status=status, receiver=receiver if isinstance(receiver, str) else "",
                        group_key=group_key if isinstance(group_key, str) else "", alerts=tuple(alerts))
