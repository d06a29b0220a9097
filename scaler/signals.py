"""The scaler's signals: named PromQL queries read through prometheus-api-client.

A signal that is missing, empty, not a number or older than two scaler intervals is *unknown*
(`Signal.value is None`, with a reason), never zero. When Prometheus cannot be reached every signal
is unknown and `Signals.prometheus_up` is False, so the policy holds every scale-in.
"""

from __future__ import annotations

import logging
import math
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

import requests
import yaml
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from divims.errors import ConfigError
from scaler.snapshot import ServerLoad, Signal, Signals

log = logging.getLogger(__name__)

# The pool-wide signals of `Signals`, by field name; each may have a `<name>_age` freshness query.
POOL_SIGNALS = ("participants", "meetings", "participants_growth", "participants_yesterday",
                "participants_last_week", "meetings_yesterday", "meetings_last_week",
                "participants_yesterday_now", "participants_last_week_now")
# Per-server queries (one series per `server` label) -> ServerLoad field.
SERVER_SIGNALS = {
    "server_meetings": "meetings",
    "server_participants": "participants",
    "server_recordings_unfinished": "recordings_unfinished",
    "server_api_up": "bbb_api_up",
    "server_services_healthy": "services_healthy",
    "server_recordings_failed": "recordings_failed",
    "server_uptime": "uptime_seconds",
}
REQUIRED_QUERIES = POOL_SIGNALS + tuple(SERVER_SIGNALS)


class PromQuery(Protocol):
    def custom_query(self, query: str, params: dict | None = None, timeout: int | None = None) -> Any: ...


class PrometheusUnreachable(Exception):
    """The query could not reach Prometheus (connection refused, timeout, 5xx after retries)."""


def shipped_queries() -> dict[str, str]:
    """The default named queries of scaler/queries.yml."""
    text = resources.files("scaler").joinpath("queries.yml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    return {str(k): str(v) for k, v in data.items()}


def merged_queries(overrides: Mapping[str, str] | None) -> dict[str, str]:
    """The shipped queries with the configured overrides on top; an unknown name is a ConfigError
    (a typo would otherwise silently keep the default)."""
    queries = shipped_queries()
    problems = [f"scaler.queries.{name}: unknown query name (known: {', '.join(sorted(queries))})"
                for name in (overrides or {}) if name not in queries]
    if problems:
        raise ConfigError(problems)
    queries.update({k: str(v) for k, v in (overrides or {}).items()})
    return queries


def render_query(template: str, *, pool: str, boot_seconds: float, growth_window_seconds: float) -> str:
    """Fills the `$pool`, `$boot`, `$growth_window`, `$yesterday`, `$last_week` placeholders."""
    boot = int(boot_seconds)
    values = {"pool": pool, "boot": str(boot), "growth_window": str(int(growth_window_seconds)),
              "yesterday": str(86400 - boot), "last_week": str(604800 - boot)}
    try:
        return string.Template(template).substitute(values)
    except (KeyError, ValueError) as exc:
        raise ConfigError([f"scaler.queries: bad placeholder in {template!r}: {exc}"]) from None


def connect(url: str, *, timeout_seconds: float, bearer_token: str | None = None,
            verify_tls: bool = True) -> PrometheusConnect:
    """A PrometheusConnect with a timeout and one quick retry (the library default retries 3 times
    with a 1 s backoff, which would stretch a cycle when Prometheus is down)."""
    headers = {"Authorization": f"Bearer {bearer_token}"} if bearer_token else None
    retry = Retry(total=1, backoff_factor=0.1, status_forcelist=[429, 502, 503, 504],
                  allowed_methods=["GET", "POST"])
    return PrometheusConnect(url=url, headers=headers, disable_ssl=not verify_tls, retry=retry,
                             timeout=timeout_seconds)


@dataclass(frozen=True)
class _Sample:
    labels: dict[str, str]
    value: float


def _parse_result(result: Any) -> list[_Sample]:
    """custom_query answers a vector as [{"metric", "value": [ts, "v"]}], a scalar as [ts, "v"]."""
    if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
        return [_Sample({}, float(result[1]))]
    samples = []
    for item in result or []:
        if isinstance(item, dict) and "value" in item:
            samples.append(_Sample(dict(item.get("metric") or {}), float(item["value"][1])))
    return samples


class SignalReader:
    """Reads one pool's `Signals` from Prometheus. `query` is a PrometheusConnect (or anything with
    its `custom_query`); `max_age_seconds` is two scaler intervals."""

    def __init__(self, query: PromQuery, *, pool: str, queries: Mapping[str, str],
                 max_age_seconds: float, boot_seconds: float, growth_window_seconds: float,
                 timeout_seconds: float, clock: Callable[[], float] | None = None):
        self._prom = query
        self.pool = pool
        self._max_age = max_age_seconds
        self._timeout = timeout_seconds
        self._queries = {name: render_query(q, pool=pool, boot_seconds=boot_seconds,
                                            growth_window_seconds=growth_window_seconds)
                         for name, q in queries.items()}
        missing = [n for n in REQUIRED_QUERIES if n not in self._queries]
        if missing:
            raise ConfigError([f"scaler.queries: missing query {n}" for n in missing])

    @property
    def queries(self) -> dict[str, str]:
        return dict(self._queries)

    def _run(self, name: str, now: float) -> list[_Sample]:
        try:
            result = self._prom.custom_query(self._queries[name], params={"time": f"{now:.3f}"},
                                             timeout=self._timeout)
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                requests.exceptions.RetryError) as exc:
            raise PrometheusUnreachable(type(exc).__name__) from None
        except PrometheusApiClientException as exc:
            # The message holds the status and body; keep only the status for the reason.
            text = str(exc)
            status = text.split("(")[0].strip() if text else "error"
            if any(code in status for code in ("502", "503", "504")):
                raise PrometheusUnreachable(status) from None
            raise ValueError(f"query {name} failed: {status}") from None
        except requests.exceptions.RequestException as exc:
            raise PrometheusUnreachable(type(exc).__name__) from None
        try:
            return _parse_result(result)
        except (TypeError, ValueError, IndexError, KeyError):
            raise ValueError(f"query {name}: unparsable answer") from None

    def _pool_signal(self, name: str, now: float) -> Signal:
        try:
            samples = self._run(name, now)
        except ValueError as exc:
            return Signal(name, None, reason=str(exc))
        if not samples:
            return Signal(name, None, reason="empty result (no series)")
        value = samples[0].value
        if math.isnan(value) or math.isinf(value):
            return Signal(name, None, reason="not a number")
        age = None
        if f"{name}_age" in self._queries:
            try:
                ages = self._run(f"{name}_age", now)
            except ValueError as exc:
                return Signal(name, None, reason=f"freshness unknown: {exc}")
            age = ages[0].value if ages and not math.isnan(ages[0].value) else None
            if age is None:
                return Signal(name, None, reason="freshness unknown: empty result")
            if age > self._max_age:
                return Signal(name, None, age_seconds=age,
                              reason=f"stale: {age:.0f}s old, more than two intervals ({self._max_age:.0f}s)")
        return Signal(name, value, age_seconds=age)

    def _per_server(self, now: float) -> tuple[dict[str, ServerLoad] | None, str]:
        """Per-server loads by `server` label: every server with fresh meeting series or a `bbb_api_up`
        sample (meetings/participants None when not fresh); None (with a reason) when the meetings query fails."""
        fields: dict[str, dict[str, float]] = {}
        for query_name, field_name in SERVER_SIGNALS.items():
            try:
                samples = self._run(query_name, now)
            except ValueError as exc:
                if field_name in ("meetings", "participants"):
                    return None, str(exc)
                log.warning("pool %s: per-server signal %s unknown: %s", self.pool, query_name, exc)
                continue
            for s in samples:
                server = s.labels.get("server", "").lower()
                if server and not (math.isnan(s.value) or math.isinf(s.value)):
                    fields.setdefault(server, {})[field_name] = s.value
        stale: set[str] = set()
        if "server_meetings_age" in self._queries:
            try:
                for s in self._run("server_meetings_age", now):
                    if s.value > self._max_age or math.isnan(s.value):
                        stale.add(s.labels.get("server", "").lower())
            except ValueError as exc:
                return None, f"freshness unknown: {exc}"
        loads: dict[str, ServerLoad] = {}
        for server, f in fields.items():
            up = f.get("bbb_api_up")
            known = server not in stale and "meetings" in f and "participants" in f
            if not known and up is None:
                continue  # nothing known of this server: it is simply not in the map
            # a server the exporter reports (bbb_api_up, 0 when its API hangs or refuses) is kept even
            # without fresh meeting series: its meetings are unknown (None), never 0
            healthy = f.get("services_healthy")
            rec = f.get("recordings_unfinished")
            failed = f.get("recordings_failed")
            loads[server] = ServerLoad(
                meetings=int(f["meetings"]) if known else None,
                participants=int(f["participants"]) if known else None,
                recordings_unfinished=None if rec is None else int(rec),
                bbb_api_up=None if up is None else up >= 1,
                services_healthy=None if healthy is None else healthy >= 1,
                recordings_failed=None if failed is None else int(failed),
                uptime_seconds=f.get("uptime_seconds"))
        return loads, ""

    def read(self, now: float) -> Signals:
        """Every signal at `now`; never raises for Prometheus' faults (they become unknown signals)."""
        try:
            values = {name: self._pool_signal(name, now) for name in POOL_SIGNALS}
            per_server, reason = self._per_server(now)
        except PrometheusUnreachable as exc:
            log.warning("pool %s: Prometheus unreachable (%s): every signal unknown, scale-in held",
                        self.pool, exc)
            return unknown_signals(f"Prometheus unreachable ({exc})")
        if per_server is None:
            log.warning("pool %s: per-server signals unknown: %s", self.pool, reason)
        for sig in values.values():
            if not sig.known:
                log.info("pool %s: signal %s unknown: %s", self.pool, sig.name, sig.reason)
        return Signals(per_server=per_server, prometheus_up=True, **values)


def unknown_signals(reason: str) -> Signals:
    """Every signal unknown for `reason`, Prometheus marked down."""
    values = {name: Signal(name, None, reason=reason) for name in POOL_SIGNALS}
    return Signals(per_server=None, prometheus_up=False, **values)


def signals_as_dict(signals: Signals) -> dict[str, Any]:
    """A JSON-ready view for the journal and `plan` (no secrets: signals hold none)."""
    out: dict[str, Any] = {"prometheus_up": signals.prometheus_up}
    for s in signals.all():
        out[s.name] = {"value": s.value, "age_seconds": s.age_seconds, "reason": s.reason or None}
    if signals.per_server is not None:
        out["per_server"] = {k: {"meetings": v.meetings, "participants": v.participants,
                                 "recordings_unfinished": v.recordings_unfinished,
                                 "bbb_api_up": v.bbb_api_up}
                             for k, v in sorted(signals.per_server.items())}
    else:
        out["per_server"] = None
    return out
