"""The alert history: one record per alert occurrence (fingerprint + startsAt) in the webhook's SQLite file.

Each record holds the latest status, labels, annotations, startsAt/endsAt, and its transitions.
Recording is idempotent and monotonic: a replayed notification changes nothing, and a late retry of a
`firing` notification never reopens an occurrence that has resolved (a new firing has a new startsAt).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
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
    transitions   TEXT NOT NULL DEFAULT '[]',  -- JSON array of {status, at, ends_at}, oldest first
    PRIMARY KEY (fingerprint, starts_at)
);
CREATE INDEX IF NOT EXISTS alerts_status ON alerts (status, alertname);
-- for pruning, which deletes resolved occurrences only: a firing alert (most new ones) is not in it
CREATE INDEX IF NOT EXISTS alerts_resolved ON alerts (updated_at) WHERE status='resolved';
"""
# The transitions live in their occurrence's row: an occurrence has at most two (firing, then
# resolved: resolved is final), and a table of their own cost every new alert a second row and a
# second index entry, which was 40 % of the writer's work per notification (bench/RESULTS.md).
# Files written before that have an alert_transitions table: _migrate() moves it into the rows once,
# and drops their index of every row's updated_at (alerts_resolved replaces it: 10 % of the writer's
# work per notification, offline, in batches of 3).

PRUNE_EVERY_SECONDS = 3600.0

# One encoder, built once: json.dumps(..., sort_keys=True) builds a new one on every call, and the
# C encoder made once is 2.5x faster again (20 maps per notification of 10 alerts).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)
_C_CANONICAL = (None if c_make_encoder is None else
                c_make_encoder(None, _CANONICAL.default, encode_basestring_ascii, None, ":", ",", True, False, True))


def _transition(status: str, at: float, ends_text: str | None) -> str:
    """One element of the transitions column, as JSON (what json.dumps would write, without its cost:
    `at` is a finite float, whose repr is a JSON number)."""
    ends = "null" if ends_text is None else encode_basestring_ascii(ends_text)
    return f'{{"status":{encode_basestring_ascii(status)},"at":{at!r},"ends_at":{ends}}}'


def _appended(transitions: str, entry: str) -> str:
    """The JSON array `transitions` with `entry` appended."""
    return f"[{entry}]" if transitions == "[]" else f"{transitions[:-1]},{entry}]"


def _canonical(mapping: dict[str, str]) -> str:
    """The stored spelling of labels/annotations: sorted keys, no spaces (so equal maps compare equal),
    exactly `json.dumps(mapping, sort_keys=True, separators=(",", ":"))`."""
    if _C_CANONICAL is None:
        return _CANONICAL.encode(mapping)
    return "".join(_C_CANONICAL(mapping, 0))


@dataclass(frozen=True)
class Change:
    """What recording one alert did: `new` (first seen), `transition` (status changed), `updated`
    (labels/annotations changed), or `unchanged` (a replay, or a late firing after resolved)."""

    alert: Alert
    kind: str


# What each alert would write is prepared beforehand by its request's thread (PreparedNotification:
# the canonical labels, the row as a tuple), so that the group commit, which holds the file's write
# lock and everyone's answer, only compares and writes: one SELECT for every fingerprint of the batch,
# one executemany per kind of write.
_SELECT_CURRENT = ("SELECT fingerprint, starts_at, status, labels, annotations, ends_at, transitions"
                   " FROM alerts WHERE fingerprint IN (SELECT value FROM json_each(?))")
_INSERT_ALERT = ("INSERT INTO alerts (fingerprint, starts_at, starts_at_ts, alertname, status, ends_at, ends_at_ts,"
                 " labels, annotations, generator_url, received_at, updated_at, transitions)"
                 " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)")
_UPDATE_ALERT = ("UPDATE alerts SET status=?, ends_at=?, ends_at_ts=?, labels=?, annotations=?, updated_at=?,"
                 " transitions=? WHERE fingerprint=? AND starts_at=?")


class PreparedNotification:
    """One notification's writes, prepared by its request's thread, outside the write lock: for each
    alert the tuple (key, status, labels, annotations, ends_text, ends_ts, row), `row` its row of the
    alerts table. Plain values only, so that a worker process can hand it to the writer process
    (alerting.writer). Run alone, or combined with the others of a group commit."""

    __slots__ = ("at", "rows")

    def __init__(self, at: float, rows: tuple):
        self.at = at
        self.rows = rows

    @classmethod
    def of(cls, alerts: Sequence[Alert], at: float) -> PreparedNotification:
        rows = []
        for alert in alerts:
            key = (alert.fingerprint, alert.starts_at.text)
            labels, annotations = _canonical(alert.labels), _canonical(alert.annotations)
            ends_text = alert.ends_at.text if alert.ends_at else None
            ends_ts = alert.ends_at.epoch if alert.ends_at else None
            first = f"[{_transition(alert.status, at, ends_text)}]"
            rows.append((key, alert.status, labels, annotations, ends_text, ends_ts,
                         (*key, alert.starts_at.epoch, alert.alertname, alert.status, ends_text, ends_ts,
                          labels, annotations, alert.generator_url, at, at, first)))
        return cls(at, tuple(rows))

    def __call__(self, conn: sqlite3.Connection) -> list[str]:
        return record_prepared(conn, [self])[0]


def record_prepared(conn: sqlite3.Connection, notifications: Sequence[PreparedNotification]) -> list[list[str]]:
    """Records the notifications' alerts in order, as if one by one; returns for each notification
    what recording each of its alerts did (`Change.kind`)."""
    fingerprints = sorted({r[0][0] for n in notifications for r in n.rows})
    # key -> (status, labels, annotations, ends_at, transitions), as stored or as this batch left it
    current: dict[tuple[str, str], tuple[str, str, str, str | None, str]] = {}
    if fingerprints:
        for fp, starts, *state in conn.execute(_SELECT_CURRENT, (json.dumps(fingerprints),)):
            current[(fp, starts)] = tuple(state)
    inserts: list[tuple] = []
    updates: dict[tuple[str, str], tuple] = {}  # the last update of each key is what the row becomes
    results = []
    for notification in notifications:
        at = notification.at
        kinds = []
        for key, status, labels, notes, ends_text, ends_ts, new_row in notification.rows:
            row = current.get(key)
            if row is None:
                inserts.append(new_row)
                current[key] = (status, labels, notes, ends_text, new_row[-1])
                kind = "new"
            elif row[0] == "resolved" and status == "firing":
                kind = "unchanged"  # a late retry of an older notification: resolved is final
            elif row[0] != status:
                transitions = _appended(row[4], _transition(status, at, ends_text))
                updates[key] = (status, ends_text, ends_ts, labels, notes, at, transitions, *key)
                current[key] = (status, labels, notes, ends_text, transitions)
                kind = "transition"
            elif (row[1], row[2]) != (labels, notes) or (status == "resolved" and row[3] != ends_text):
                kept_ends = row[3] if status == "firing" else ends_text
                # same status (else the branch above): only the content and, once resolved, the end
                updates[key] = (status, kept_ends, None if status == "firing" else ends_ts,
                                labels, notes, at, row[4], *key)
                current[key] = (row[0], labels, notes, kept_ends, row[4])
                kind = "updated"
            else:
                kind = "unchanged"
            kinds.append(kind)
        results.append(kinds)
    # Inserts are of keys not stored yet and precede any update of the same key, and each update
    # writes the whole state the key reached: the same table as running them one by one.
    if inserts:
        conn.executemany(_INSERT_ALERT, inserts)
    if updates:
        conn.executemany(_UPDATE_ALERT, updates.values())
    return results


def _migrate(conn: sqlite3.Connection) -> None:
    """Brings a file written by an earlier divims to this schema (in the caller's transaction; a no-op
    once done): the alert_transitions table becomes each row's transitions column, and the index of
    every row's updated_at goes (alerts_resolved, made by the schema, serves pruning)."""
    conn.execute("DROP INDEX IF EXISTS alerts_updated")
    columns = {row[1] for row in conn.execute("PRAGMA table_info(alerts)")}
    if "transitions" not in columns:
        conn.execute("ALTER TABLE alerts ADD COLUMN transitions TEXT NOT NULL DEFAULT '[]'")
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='alert_transitions'").fetchone():
        return
    moved: dict[tuple[str, str], list[str]] = {}
    for fp, starts, status, at, ends in conn.execute(
            "SELECT fingerprint, starts_at, status, at, ends_at FROM alert_transitions ORDER BY id"):
        moved.setdefault((fp, starts), []).append(_transition(status, float(at), ends))
    conn.executemany("UPDATE alerts SET transitions=? WHERE fingerprint=? AND starts_at=?",
                     [(f"[{','.join(entries)}]", *key) for key, entries in moved.items()])
    conn.execute("DROP TABLE alert_transitions")
    log.info("alert store: moved %d transitions of %d alerts into their rows (schema of this version)",
             sum(len(e) for e in moved.values()), len(moved))


class AlertStore:
    """The alert history in the SQLite file at `path` (or an open `Database`). Thread-safe.
    Several processes may record into one file: SQLite's write lock and the (fingerprint, starts_at)
    key keep every promise across them."""

    def __init__(self, path: str | Path | Database, retention_days: float = 90,
                 now: Callable[[], float] = time.time, writer: Any = None):
        """`writer` (an alerting.writer.WriterClient), when given, does the recording in the writer
        process; this store still reads, lists and prunes the file itself."""
        self._writer = writer
        self._db = path if isinstance(path, Database) else Database(path)
        self._owns_db = not isinstance(path, Database)
        self.retention_seconds = float(retention_days) * 86400
        self._now = now
        self._db.executescript(_SCHEMA)
        with self._db.transaction() as conn:  # one process migrates; the others find it done
            _migrate(conn)
        self._last_prune = 0.0
        self.prune()

    @property
    def database(self) -> Database:
        return self._db

    def record(self, alerts: Sequence[Alert], received_at: float | None = None) -> list[Change]:
        """Stores a notification's alerts in one durable transaction; returns what changed per alert.
        Raises StoreError when the write failed (the caller answers 5xx so Alertmanager retries)."""
        at = self._now() if received_at is None else received_at
        prepared = PreparedNotification.of(alerts, at)
        if self._writer is not None:
            kinds = self._writer.record(prepared)
        else:
            kinds = self._db.batched(prepared, combine=record_prepared)
        changes = [Change(alert, kind) for alert, kind in zip(alerts, kinds, strict=True)]
        if at - self._last_prune >= PRUNE_EVERY_SECONDS:
            try:
                self.prune(at)
            except StoreError as exc:  # housekeeping must not fail a stored notification
                log.warning("alert store %s: pruning failed: %s", self._db.path, exc)
        return changes

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
        return [{
            "fingerprint": r["fingerprint"], "alertname": r["alertname"], "status": r["status"],
            "starts_at": r["starts_at"], "ends_at": r["ends_at"],
            "labels": json.loads(r["labels"]), "annotations": json.loads(r["annotations"]),
            "generator_url": r["generator_url"], "received_at": r["received_at"], "updated_at": r["updated_at"],
            "transitions": [{"status": t["status"], "at": t["at"]} for t in json.loads(r["transitions"])],
        } for r in rows]

    def count(self) -> int:
        """How many alert occurrences are stored."""
        return int(self._db.query("SELECT COUNT(*) FROM alerts")[0][0])

    def transition_count(self) -> int:
        """How many status transitions are stored, over every occurrence."""
        return int(self._db.query("SELECT COALESCE(SUM(json_array_length(transitions)), 0) FROM alerts")[0][0])

    def prune(self, now: float | None = None) -> int:
        """Deletes resolved occurrences whose last change is older than the retention, with their
        transitions (in their rows). Firing ones stay whatever their age. Returns how many occurrences went."""
        at = self._now() if now is None else now
        cutoff = at - self.retention_seconds
        with self._db.transaction() as conn:
            gone = conn.execute("DELETE FROM alerts INDEXED BY alerts_resolved"
                                " WHERE status='resolved' AND updated_at<?", (cutoff,)).rowcount
        self._last_prune = at
        if gone:
            log.info("alert store %s: pruned %d resolved alerts older than %.0f days",
                     self._db.path, gone, self.retention_seconds / 86400)
        return gone

    def ping(self) -> None:
        """Raises StoreError unless the database answers (and the writer process, when there is one)."""
        self._db.query("SELECT 1")
        if self._writer is not None:
            self._writer.ping()

    def close(self) -> None:
        if self._owns_db:
            self._db.close()

    def __repr__(self) -> str:
        return f"AlertStore({self._db.path!r})"
