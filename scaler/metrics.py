"""The scaler's own metrics (prometheus-client), on a registry of their own so tests stay isolated."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Gauge

TERMS = ("load", "schedule", "forecast", "final")


def reason_label(reason: str) -> str:
    """A low-cardinality label value for a hold reason: its first words, slugified (numbers dropped,
    so "participants unknown: stale 300s" and "... 360s" are one series)."""
    head = reason.split(":")[0]
    slug = re.sub(r"[^a-z]+", "_", head.lower()).strip("_")
    return slug[:60] or "unknown"


class ScalerMetrics:
    """Every divims_scaler_* series. `update_cycle` sets a pool's gauges from one cycle."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.desired = Gauge("divims_scaler_desired_servers", "Desired active servers, by term",
                             ["pool", "term"], registry=r)
        self.active = Gauge("divims_scaler_active_servers", "Servers enabled for new meetings or coming up",
                            ["pool"], registry=r)
        self.actions = Counter("divims_scaler_actions_total", "Actions executed, by kind and result",
                               ["pool", "action", "result"], registry=r)
        self.errors = Counter("divims_scaler_errors_total", "Errors of the services the scaler calls",
                              ["pool", "service", "kind"], registry=r)
        self.cycle_duration = Gauge("divims_scaler_cycle_duration_seconds", "Duration of the last cycle",
                                    ["pool"], registry=r)
        self.last_cycle = Gauge("divims_scaler_last_cycle_timestamp_seconds",
                                "When the last cycle finished (epoch seconds)", ["pool"], registry=r)
        self.hold = Gauge("divims_scaler_hold", "1 while scale-in is held for this reason",
                          ["pool", "reason"], registry=r)
        self.lock_held = Gauge("divims_scaler_lock_held", "1 when this instance holds the pool's lock",
                               ["pool"], registry=r)
        self.feed_up = Gauge("divims_schedule_feed_up", "1 when the iCal schedule feed was read this cycle",
                             ["pool"], registry=r)
        self._holds: dict[str, set[str]] = {}
        self._terms: dict[str, set[str]] = {}

    def set_terms(self, pool: str, terms: dict[str, int | None]) -> None:
        """Each term's servers; a term that could not be computed has no series (not a zero)."""
        shown = self._terms.setdefault(pool, set())
        for term in TERMS:
            value = terms.get(term)
            if value is None:
                if term in shown:
                    self.desired.remove(pool, term)
                    shown.discard(term)
            else:
                self.desired.labels(pool, term).set(value)
                shown.add(term)

    def set_holds(self, pool: str, reasons: list[str]) -> None:
        """Exactly these hold reasons are 1; reasons no longer held disappear."""
        labels = {reason_label(r) for r in reasons}
        for old in self._holds.get(pool, set()) - labels:
            self.hold.remove(pool, old)
        for label in labels:
            self.hold.labels(pool, label).set(1)
        self._holds[pool] = labels

    def count_action(self, pool: str, action: str, result: str) -> None:
        self.actions.labels(pool, action, result).inc()

    def count_error(self, pool: str, service: str, kind: str) -> None:
        self.errors.labels(pool, service, kind).inc()
