"""The durable queue of action requests from alerts to the scaler: a table in the webhook's SQLite file.

The webhook `submit()`s; the scaler (another process) polls `pending()`, `claim()`s a request before it
acts and `complete()`s it after. The table is the hand-over, so a restart of either side loses nothing:

- at most once per alert occurrence: a request is unique on (fingerprint, starts_at, action), so a
  repeated or retried notification is a duplicate, and `claim()` succeeds for exactly one caller;
- rate-limited: at most `max_actions_per_hour` accepted requests per pool in any hour; the ones over the
  limit are kept with status `rate_limited` (visible, never offered to the scaler);
- a request expires: one-shot actions (replace_server, cordon_server) after `ttl_seconds` unclaimed,
  scale_out and hold_scale_in at their `until`; a resolved alert ends its holds (`end_for_alert`).

The scaler re-checks every request against the current state before it acts: a request is a wish.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from alerting.database import Database, StoreError
from scaler.snapshot import ActionRequest

log = logging.getLogger(__name__)

ACTIONS = ("scale_out", "replace_server", "cordon_server", "hold_scale_in")
TERM_ACTIONS = ("scale_out", "hold_scale_in")  # last until `until`, not one-shot
RESULTS = ("ok", "failed", "rejected", "skipped")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS action_requests (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    pool         TEXT NOT NULL,
    action       TEXT NOT NULL,
    server       TEXT,
    servers      INTEGER,
    until        REAL,
    fingerprint  TEXT NOT NULL,
    starts_at    TEXT NOT NULL,
    alertname    TEXT NOT NULL DEFAULT '',
    reason       TEXT NOT NULL DEFAULT '',
    status       TEXT NOT NULL,          -- pending | claimed | done | rate_limited
    created_at   REAL NOT NULL,
    claimed_at   REAL,
    completed_at REAL,
    ended_at     REAL,                   -- the alert resolved (ends a hold)
    result       TEXT,                   -- ok | failed | rejected | skipped
    detail       TEXT NOT NULL DEFAULT '',
    UNIQUE (fingerprint, starts_at, action)
);
CREATE INDEX IF NOT EXISTS action_requests_pool_status ON action_requests (pool, status);
CREATE INDEX IF NOT EXISTS action_requests_created ON action_requests (pool, created_at);
"""


class SubmitStatus(StrEnum):
    SUBMITTED = "submitted"
    DUPLICATE = "duplicate"
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True)
class SubmitResult:
    id: int
    status: SubmitStatus


@dataclass(frozen=True)
class StoredRequest:
    """A request row as stored, for listings and tests (the scaler reads `ActionRequest`s)."""

    id: int
    pool: str
    action: str
    server: str | None
    servers: int | None
    until: float | None
    fingerprint: str
    starts_at: str
    alertname: str
    reason: str
    status: str
    created_at: float
    claimed_at: float | None
    completed_at: float | None
    ended_at: float | None
    result: str | None
    detail: str


class RequestQueue:
    """The request table in the SQLite file at `path` (created if missing). Safe to share between threads;
    several processes may open the same file."""

    def __init__(self, path: str | Path | Database, max_actions_per_hour: int = 20,
                 ttl_seconds: float = 3600.0, now: Callable[[], float] = time.time):
        self._db = path if isinstance(path, Database) else Database(path)
        self._owns_db = not isinstance(path, Database)
        self.max_actions_per_hour = max_actions_per_hour
        self.ttl_seconds = ttl_seconds
        self._now = now
        self._db.executescript(_SCHEMA)

    # --- the webhook's side -----------------------------------------------------------------------
    def submit(self, *, pool: str, action: str, fingerprint: str, starts_at: str, alertname: str = "",
               server: str | None = None, servers: int | None = None, for_seconds: float | None = None,
               reason: str = "", now: float | None = None) -> SubmitResult:
        """Records a request once per (fingerprint, starts_at, action). A second submit of the same
        occurrence returns the first one's id with DUPLICATE and changes nothing. Over the pool's hourly
        limit the request is stored as RATE_LIMITED and never offered to the scaler."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
        if action in ("replace_server", "cordon_server") and not server:
            raise ValueError(f"{action} needs a server")
        if action == "scale_out" and (servers is None or servers < 1):
            raise ValueError("scale_out needs servers >= 1")
        if action in TERM_ACTIONS and (for_seconds is None or for_seconds <= 0):
            raise ValueError(f"{action} needs a positive duration (for)")
        at = self._now() if now is None else now
        until = at + for_seconds if action in TERM_ACTIONS and for_seconds is not None else None
        with self._db.transaction() as conn:
            row = conn.execute(
                "SELECT id FROM action_requests WHERE fingerprint=? AND starts_at=? AND action=?",
                (fingerprint, starts_at, action)).fetchone()
            if row is not None:
                return SubmitResult(int(row["id"]), SubmitStatus.DUPLICATE)
            recent = conn.execute(
                "SELECT COUNT(*) FROM action_requests WHERE pool=? AND created_at>? AND status!='rate_limited'",
                (pool, at - 3600.0)).fetchone()[0]
            status = SubmitStatus.RATE_LIMITED if recent >= self.max_actions_per_hour else SubmitStatus.SUBMITTED
            cur = conn.execute(
                "INSERT INTO action_requests (pool, action, server, servers, until, fingerprint, starts_at,"
                " alertname, reason, status, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (pool, action, server, servers if action == "scale_out" else None, until, fingerprint,
                 starts_at, alertname, reason,
                 "rate_limited" if status is SubmitStatus.RATE_LIMITED else "pending", at))
            request_id = int(cur.lastrowid)
        if status is SubmitStatus.RATE_LIMITED:
            log.warning("pool %s: %s request for alert %s (%s) rate-limited: %d accepted in the last hour",
                        pool, action, alertname, fingerprint, recent)
        else:
            log.info("pool %s: %s request %d for alert %s (%s)%s", pool, action, request_id, alertname,
                     fingerprint, f" server {server}" if server else "")
        return SubmitResult(request_id, status)

    def end_for_alert(self, fingerprint: str, starts_at: str, now: float | None = None) -> int:
        """The alert occurrence resolved: ends its hold_scale_in requests (a scale-out keeps its term: the
        servers are already coming). Returns how many it ended; a second call ends nothing more."""
        at = self._now() if now is None else now
        with self._db.transaction() as conn:
            cur = conn.execute(
                "UPDATE action_requests SET ended_at=? WHERE fingerprint=? AND starts_at=?"
                " AND action='hold_scale_in' AND ended_at IS NULL",
                (at, fingerprint, starts_at))
            ended = cur.rowcount
        if ended:
            log.info("alert %s resolved: %d hold(s) ended", fingerprint, ended)
        return ended

    # --- the scaler's side ------------------------------------------------------------------------
    def pending(self, pool: str, now: float | None = None) -> list[ActionRequest]:
        """What the scaler must take into account for `pool` at `now`, oldest first:
        unclaimed replace_server / cordon_server requests younger than `ttl_seconds`;
        scale_out requests until their `until` (claimed or not: the term lasts), unless completed;
        hold_scale_in requests until their `until`, unless the alert resolved (see `active_holds`)."""
        at = self._now() if now is None else now
        rows = self._db.query(
            "SELECT * FROM action_requests WHERE pool=? AND ("
            " (action IN ('replace_server','cordon_server') AND status='pending' AND created_at>?)"
            " OR (action='scale_out' AND status IN ('pending','claimed') AND until>?)"
            " OR (action='hold_scale_in' AND status IN ('pending','claimed') AND until>? AND ended_at IS NULL)"
            ") ORDER BY id",
            (pool, at - self.ttl_seconds, at, at))
        return [_to_action_request(r) for r in rows]

    def active_holds(self, pool: str, now: float | None = None) -> list[ActionRequest]:
        """The pool's hold_scale_in requests in force at `now` (not expired, alert not resolved)."""
        return [r for r in self.pending(pool, now) if r.action == "hold_scale_in"]

    def claim(self, request_id: int, now: float | None = None) -> bool:
        """Takes a pending request for execution. True for exactly one caller, ever: False when it is
        already claimed or done, rate-limited, unknown, or (one-shot actions) expired."""
        at = self._now() if now is None else now
        with self._db.transaction() as conn:
            cur = conn.execute(
                "UPDATE action_requests SET status='claimed', claimed_at=? WHERE id=? AND status='pending'"
                " AND (action NOT IN ('replace_server','cordon_server') OR created_at>?)",
                (at, request_id, at - self.ttl_seconds))
            return cur.rowcount == 1

    def complete(self, request_id: int, result: str, detail: str = "", now: float | None = None) -> bool:
        """Records the outcome of a claimed request (result ok|failed|rejected|skipped, detail a short
        human reason). True when it was claimed and is now done; a second complete changes nothing."""
        if result not in RESULTS:
            raise ValueError(f"unknown result {result!r}; expected one of {', '.join(RESULTS)}")
        at = self._now() if now is None else now
        with self._db.transaction() as conn:
            cur = conn.execute(
                "UPDATE action_requests SET status='done', completed_at=?, result=?, detail=?"
                " WHERE id=? AND status='claimed'",
                (at, result, detail[:500], request_id))
            done = cur.rowcount == 1
        if done:
            log.info("request %d completed: %s %s", request_id, result, detail)
        return done

    # --- listings and housekeeping --------------------------------------------------------------
    def get(self, request_id: int) -> StoredRequest | None:
        rows = self._db.query("SELECT * FROM action_requests WHERE id=?", (request_id,))
        return _to_stored(rows[0]) if rows else None

    def all(self, pool: str | None = None) -> list[StoredRequest]:
        """Every stored request (of `pool`), oldest first."""
        if pool is None:
            rows = self._db.query("SELECT * FROM action_requests ORDER BY id")
        else:
            rows = self._db.query("SELECT * FROM action_requests WHERE pool=? ORDER BY id", (pool,))
        return [_to_stored(r) for r in rows]

    def prune(self, older_than: float) -> int:
        """Deletes requests created before `older_than` (epoch seconds) that can no longer matter."""
        with self._db.transaction() as conn:
            return conn.execute(
                "DELETE FROM action_requests WHERE created_at<? AND (until IS NULL OR until<?)",
                (older_than, older_than)).rowcount

    def close(self) -> None:
        if self._owns_db:
            self._db.close()

    def __repr__(self) -> str:
        return f"RequestQueue({self._db.path!r})"


def _to_action_request(row) -> ActionRequest:
    reason = row["reason"] or f"alert {row['alertname']}"
    return ActionRequest(id=int(row["id"]), action=row["action"], server=row["server"],
                         servers=row["servers"], until=row["until"], reason=reason)


def _to_stored(row) -> StoredRequest:
    return StoredRequest(**{k: row[k] for k in row.keys()})


__all__ = ["RequestQueue", "SubmitResult", "SubmitStatus", "StoredRequest", "StoreError", "ACTIONS"]
