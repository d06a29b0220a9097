"""The webhook's SQLite file, shared by the receiver's threads and the scaler's process.

WAL lets the scaler read while the receiver writes; `busy_timeout` makes a writer wait for the other
side's lock instead of failing; `synchronous=FULL` makes a commit durable before it returns, so the
receiver may answer 200 only after it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from divims.errors import DivimsError

log = logging.getLogger(__name__)


class StoreError(DivimsError):
    """The database could not be opened, read or written. The message names the file, never a secret."""


class Database:
    """One SQLite file: one connection per thread (sqlite3 connections are not shared across threads
    while in use), every connection configured the same way. `close()` closes them all."""

    def __init__(self, path: str | Path, busy_timeout_ms: int = 10_000):
        self.path = str(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"database {self.path}: cannot create its directory: {exc.strerror}") from None
        # Open once now so that a bad path fails at start-up, not at the first alert.
        self.connection()

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise StoreError(f"database {self.path}: closed")
        try:
            # isolation_level=None: no implicit transactions; `transaction()` says BEGIN IMMEDIATE itself.
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_ms / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal" and self.path != ":memory:":
                log.warning("database %s: journal_mode is %s, not wal", self.path, mode)
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path}: cannot open: {exc}") from None
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE: takes the write lock up front, so two writers never
        deadlock on an upgrade). Commits on success; rolls back and raises StoreError on any sqlite error."""
        conn = self.connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path}: cannot begin a transaction: {exc}") from None
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"database {self.path}: write failed: {exc}") from None
            raise

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        """Rows of a read-only statement (its own implicit read transaction)."""
        try:
            return self.connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path}: read failed: {exc}") from None

    def executescript(self, script: str) -> None:
        try:
            self.connection().executescript(script)
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path}: cannot create tables: {exc}") from None

    def close(self) -> None:
        """Closes every connection of every thread. Further use raises StoreError."""
        with self._lock:
            self._closed = True
            conns, self._connections = self._connections, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"Database({self.path!r})"
