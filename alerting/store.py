"""The alert history: one record per alert occurrence (fingerprint + startsAt) in the webhook's SQLite file.

Each record holds the latest status, labels, annotations, startsAt/endsAt, and its transitions.
Recording is idempotent and monotonic: a replayed notification changes nothing, and a late retry of a
`firing` notification never reopens an occurrence that has resolved (a new firing has a new startsAt).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alerting.database import Database, StoreError
from alerting.payload import Alert

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    fingerprint   TEXT NOT NULL,
    starts_at     TEXT NOT NULL,     -- canonical UTC RFC 3339: with fingerprint, the occurrence
    starts_at_ts  REAL NOT NULL,
    alertname     TEXT NOT NULL,
    status        TEXT NOT NULL,     -- firing | resolved
    ends_at       TEXT,
    ends_at_ts    REAL,
    labels        TEXT NOT NULL,     -- JSON object
    annotations   TEXT NOT NULL,     -- JSON object
    generator_url TEXT NOT NULL DEFAULT '',
    received_at   REAL NOT NULL,     -- first notification about it
    updated_at    REAL NOT NULL,     -- last change
    PRIMARY KEY (fingerprint, starts_at)
);
CREATE INDEX IF NOT EXISTS alerts_status ON alerts (status, alertname);
CREATE INDEX IF NOT EXISTS alerts_updated ON alerts (updated_at);
CREATE TABLE IF NOT EXISTS alert_transitions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint TEXT NOT NULL,
    starts_at   TEXT NOT NULL,
    status      TEXT NOT NULL,
    at          REAL NOT NULL,
    ends_at     TEXT
);
CREATE INDEX IF NOT EXISTS alert_transitions_alert ON alert_transitions (fingerprint, starts_at);
"""

PRUNE_EVERY_SECONDS = 3600.0


@dataclass(frozen=True)
class Change:
    """What recording one alert did: `new` (first seen), `transition` (status changed), `updated`
    (labels/annotations changed), or `unchanged` (a replay, or a late firing after resolved)."""

    alert: Alert
    kind: str


class AlertStore:
    """The alert history in the SQLite file at `path` (or an open `Database`). Thread-safe."""

    def __init__(self, path: str | Path | Database, retention_days: float = 90,
                 now: Callable[[], float] = time.time):
        self._db = path if isinstance(path, Database) else Database(path)
        self._owns_db = not isinstance(path, Database)
        self.retention_seconds = float(retention_days) * 86400
        self._now = now
        self._db.executescript(_SCHEMA)
        self._last_prune = 0.0
        self.prune()

    @property
    def database(self) -> Database:
        return self._db

    def record(self, alerts: Sequence[Alert], received_at: float | None = None) -> list[Change]:
        """Stores a notification's alerts in one durable transaction; returns what changed per alert.
        Raises StoreError when the write failed (the caller answers 5xx so Alertmanager retries)."""
        at = self._now() if received_at is None else received_at
        changes = self._db.batched(
            lambda conn: [Change(alert, self._record_one(conn, alert, at)) for alert in alerts])
        if at - self._last_prune >= PRUNE_EVERY_SECONDS:
            try:
                self.prune(at)
            except StoreError as exc:  # housekeeping must not fail a stored notification
                log.warning("alert store %s: pruning failed: %s", self._db.path, exc)
        return changes

    @staticmethod
    def _record_one(conn, alert: Alert, at: float) -> str:
        key = (alert.fingerprint, alert.starts_at.text)
        labels = json.dumps(alert.labels, sort_keys=True, separators=(",", ":"))
        annotations = json.dumps(alert.annotations, sort_keys=True, separators=(",", ":"))
        ends_text = alert.ends_at.text if alert.ends_at else None
        ends_ts = alert.ends_at.epoch if alert.ends_at else None
        row = conn.execute("SELECT status, labels, annotations, ends_at FROM alerts"
                           " WHERE fingerprint=? AND starts_at=?", key).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO alerts (fingerprint, starts_at, starts_at_ts, alertname, status, ends_at,"
                " ends_at_ts, labels, annotations, generator_url, received_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (*key, alert.starts_at.epoch, alert.alertname, alert.status, ends_text, ends_ts, labels,
                 annotations, alert.generator_url, at, at))
            conn.execute("INSERT INTO alert_transitions (fingerprint, starts_at, status, at, ends_at)"
                         " VALUES (?,?,?,?,?)", (*key, alert.status, at, ends_text))
            return "new"
        if row["status"] == "resolved" and alert.status == "firing":
            return "unchanged"  # a late retry of an older notification: resolved is final
        if row["status"] != alert.status:
            conn.execute("UPDATE alerts SET status=?, ends_at=?, ends_at_ts=?, labels=?, annotations=?,"
                         " updated_at=? WHERE fingerprint=? AND starts_at=?",
                         (alert.status, ends_text, ends_ts, labels, annotations, at, *key))
            conn.execute("INSERT INTO alert_transitions (fingerprint, starts_at, status, at, ends_at)"
                         " VALUES (?,?,?,?,?)", (*key, alert.status, at, ends_text))
            return "transition"
        if (row["labels"], row["annotations"]) != (labels, annotations) or (
                alert.status == "resolved" and row["ends_at"] != ends_text):
            conn.execute("UPDATE alerts SET labels=?, annotations=?, ends_at=?, ends_at_ts=?, updated_at=?"
                         " WHERE fingerprint=? AND starts_at=?",
                         (labels, annotations, row["ends_at"] if alert.status == "firing" else ends_text,
                          None if alert.status == "firing" else ends_ts, at, *key))
            return "updated"
        return "unchanged"

    def list(self, status: str | None = None, alertname: str | None = None, since: float | None = None,
             limit: int = 1000) -> list[dict[str, Any]]:
        """Alert occurrences, newest start first. `since` (epoch seconds) keeps those active at some
        point since then: still firing, or ended at or after it."""
        where, params = [], []
        if status is not None:
            where.append("status=?")
            params.append(status)
        if alertname is not None:
            where.append("alertname=?")
            params.append(alertname)
        if since is not None:
            where.append("(status='firing' OR ends_at_ts>=? OR starts_at_ts>=?)")
            params += [since, since]
        sql = "SELECT * FROM alerts" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY starts_at_ts DESC, fingerprint LIMIT ?"
        rows = self._db.query(sql, (*params, int(limit)))
        transitions: dict[tuple[str, str], list[dict[str, Any]]] = {}
        if rows:
            keys = {(r["fingerprint"], r["starts_at"]) for r in rows}
            fps = sorted({k[0] for k in keys})
            marks = ",".join("?" * len(fps))
            for t in self._db.query(f"SELECT * FROM alert_transitions WHERE fingerprint IN ({marks})"
                                    " ORDER BY id", tuple(fps)):
                k = (t["fingerprint"], t["starts_at"])
                if k in keys:
                    transitions.setdefault(k, []).append({"status": t["status"], "at": t["at"]})
        return [{
            "fingerprint": r["fingerprint"], "alertname": r["alertname"], "status": r["status"],
            "starts_at": r["starts_at"], "ends_at": r["ends_at"],
            "labels": json.loads(r["labels"]), "annotations": json.loads(r["annotations"]),
            "generator_url": r["generator_url"], "received_at": r["received_at"], "updated_at": r["updated_at"],
            "transitions": transitions.get((r["fingerprint"], r["starts_at"]), []),
        } for r in rows]

    def count(self) -> int:
        """How many alert occurrences are stored."""
        return int(self._db.query("SELECT COUNT(*) FROM alerts")[0][0])

    def transition_count(self) -> int:
        return int(self._db.query("SELECT COUNT(*) FROM alert_transitions")[0][0])

    def prune(self, now: float | None = None) -> int:
        """Deletes resolved occurrences whose last change is older than the retention, with their
        transitions. Firing ones stay whatever their age. Returns how many occurrences went."""
        at = self._now() if now is None else now
        cutoff = at - self.retention_seconds
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM alert_transitions WHERE (fingerprint, starts_at) IN ("
                         "SELECT fingerprint, starts_at FROM alerts WHERE status='resolved' AND updated_at<?)",
                         (cutoff,))
            gone = conn.execute("DELETE FROM alerts WHERE status='resolved' AND updated_at<?",
                                (cutoff,)).rowcount
        self._last_prune = at
        if gone:
            log.info("alert store %s: pruned %d resolved alerts older than %.0f days",
                     self._db.path, gone, self.retention_seconds / 86400)
        return gone

    def ping(self) -> None:
        """Raises StoreError unless the database answers."""
        self._db.query("SELECT 1")

    def close(self) -> None:
        if self._owns_db:
            self._db.close()

    def __repr__(self) -> str:
        return f"AlertStore({self._db.path!r})"
