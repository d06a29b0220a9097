"""From alerts to durable requests: `alerting.actions` matchers, the pool of a request, the hand-over.

Matchers follow Alertmanager's semantics: `match` is label equality, `match_re` a regular expression that
must match the whole value, and a missing label reads as the empty string. Every rule that matches an
alert applies (each action at most once per occurrence: the queue is unique on it).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from alerting.payload import Alert
from alerting.requests import RequestQueue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    """One compiled `alerting.actions` entry."""

    index: int
    match: tuple[tuple[str, str], ...]
    match_re: tuple[tuple[str, re.Pattern[str]], ...]
    action: str
    servers: int
    for_seconds: float
    pool: str | None

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (all(labels.get(k, "") == v for k, v in self.match)
                and all(p.fullmatch(labels.get(k, "")) for k, p in self.match_re))


@dataclass(frozen=True)
class Intent:
    """What one rule asks for one alert. `problem` is empty when it can be submitted, else the
    metric result saying why not: no_pool, unknown_pool or no_server."""

    rule: Rule
    action: str
    pool: str | None
    server: str | None
    problem: str = ""


def compile_rules(actions: Sequence[Any]) -> tuple[Rule, ...]:
    """Compiles `settings.alerting.actions` (config.ActionRule models, already validated)."""
    rules = []
    for i, a in enumerate(actions):
        try:
            patterns = tuple((k, re.compile(v)) for k, v in a.match_re.items())
        except re.error as exc:  # config.py validates this; a clear error if a caller did not
            raise ValueError(f"alerting.actions[{i}].match_re: invalid regular expression: {exc}") from None
        rules.append(Rule(index=i, match=tuple(a.match.items()), match_re=patterns, action=a.action,
                          servers=int(a.servers), for_seconds=float(a.for_), pool=a.pool))
    return tuple(rules)


class ActionMapper:
    """Maps an alert to the requests its matching rules ask for, with the pool of each:
    the alert's `pool` label, else the rule's `pool`, else the only pool."""

    def __init__(self, rules: Sequence[Rule], pools: Sequence[str]):
        self.rules = tuple(rules)
        self.pools = tuple(pools)

    def intents(self, labels: Mapping[str, str]) -> list[Intent]:
        out = []
        for rule in self.rules:
            if not rule.matches(labels):
                continue
            pool = labels.get("pool") or rule.pool or (self.pools[0] if len(self.pools) == 1 else None)
            server = labels.get("server") or None
            problem = ""
            if pool is None:
                problem = "no_pool"
            elif pool not in self.pools:
                problem = "unknown_pool"
            elif rule.action in ("replace_server", "cordon_server") and not server:
                problem = "no_server"
            out.append(Intent(rule=rule, action=rule.action, pool=pool, server=server, problem=problem))
        return out


class ActionDispatcher:
    """Hands the alerts of a notification to the request queue. Idempotent: calling it again with the
    same alerts (a replay, a retry after a 5xx) submits nothing new."""

    def __init__(self, mapper: ActionMapper, queue: RequestQueue | None):
        self.mapper = mapper
        self.queue = queue

    def dispatch(self, alert: Alert, now: float) -> list[tuple[str, str]]:
        """Submits (firing) or ends (resolved) the alert's requests. Returns (action, result) pairs for
        the metrics: result is submitted | duplicate | rate_limited | ignored (action none) | ended | unchanged |
        no_pool | unknown_pool | no_server | no_queue. Raises StoreError when the queue cannot be written."""
        intents = self.mapper.intents(alert.labels)
        if not intents:
            return []
        if alert.status == "resolved":
            if self.queue is not None and any(i.action == "hold_scale_in" for i in intents):
                ended = self.queue.end_for_alert(alert.fingerprint, alert.starts_at.text, now=now)
                return [("hold_scale_in", "ended" if ended else "unchanged")]
            return []
        results = []
        for intent in intents:
            if intent.action == "none":
                results.append(("none", "ignored"))
                continue
            if intent.problem:
                log.warning("alert %s (%s): %s not requested: %s (labels pool=%r server=%r)",
                            alert.alertname, alert.fingerprint, intent.action, intent.problem,
                            alert.labels.get("pool"), alert.labels.get("server"))
                results.append((intent.action, intent.problem))
                continue
            if self.queue is None:
                results.append((intent.action, "no_queue"))
                continue
            rule = intent.rule
            summary = alert.annotations.get("summary", "")
            reason = f"alert {alert.alertname}" + (f": {summary}" if summary else "")
            submitted = self.queue.submit(
                pool=intent.pool, action=intent.action, fingerprint=alert.fingerprint,
                starts_at=alert.starts_at.text, alertname=alert.alertname, server=intent.server,
                servers=rule.servers if intent.action == "scale_out" else None,
                for_seconds=rule.for_seconds if intent.action in ("scale_out", "hold_scale_in") else None,
                reason=reason[:300], now=now)
            results.append((intent.action, submitted.status.value))
        return results
