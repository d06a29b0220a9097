"""The webhook's SQLite file, shared by the receiver's threads and the scaler's process.

WAL lets the scaler read while the receiver writes; `busy_timeout` makes a writer wait for the other
side's lock instead of failing; `synchronous=FULL` makes a commit durable before it returns, so the
receiver may answer 200 only after it. (In WAL mode `synchronous=NORMAL` skips the fsync at commit: a
power cut can then lose notifications already answered 200, which Alertmanager will not resend. With
group commit the fsync is shared by every request waiting at that moment, and NORMAL measured no
faster under 50 concurrent senders: see bench/RESULTS.md. So FULL stays.)
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from divims.errors import DivimsError

log = logging.getLogger(__name__)

T = TypeVar("T")

CHECKPOINT_SECONDS = 0.5


class StoreError(DivimsError):
    """The database could not be opened, read or written. The message names the file, never a secret."""


class Database:
    """One SQLite file: one connection per thread (sqlite3 connections are not shared across threads
    while in use), every connection configured the same way. `close()` closes them all."""

    def __init__(self, path: str | Path, busy_timeout_ms: int = 10_000, background_checkpoint: bool = False):
        """With `background_checkpoint`, commits never checkpoint the WAL themselves: a thread of
        this object does, every CHECKPOINT_SECONDS (PASSIVE: it waits for no reader or writer). By
        default SQLite checkpoints in the commit that takes the WAL past 1000 pages, which under a
        burst of notifications holds the write lock, and every answer waiting for that commit, for
        the time of copying ~4 MB into the file and an fsync of it."""
        self.path = str(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._background_checkpoint = background_checkpoint and self.path != ":memory:"
        self._checkpoint_stop = threading.Event()
        self._local = threading.local()
        self._lock = threading.Lock()
        # SQLite allows one writer; its busy handler makes waiting writers poll with sleeps of up to
        # 100 ms. Writers of this process queue on this lock instead, so they take turns at once; and
        # writers of other processes (webhook workers, the scaler) on an flock of `<path>-writer.lock`,
        # which wakes the next one as soon as it is released. Only a queue: what the data's promises
        # rest on is SQLite's own write lock (BEGIN IMMEDIATE) and its UNIQUE constraints.
        self._write_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        # group commit: callers of batched() queue here; one of them (the leader) commits them all
        self._batch_lock = threading.Lock()
        self._batch: list[_Work] = []
        self._leader = False
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"database {self.path}: cannot create its directory: {exc.strerror}") from None
        # Open once now so that a bad path fails at start-up, not at the first alert.
        self.connection()
        if self.path != ":memory:" and not self.path.startswith("file:"):
            try:
                self._lock_fd = os.open(self.path + "-writer.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:  # no queue across processes: SQLite's busy handler still serialises
                log.warning("database %s: no writer lock file (%s): other processes' writers poll",
                            self.path, exc.strerror)
        if self._background_checkpoint:
            threading.Thread(target=self._checkpoints, name="divims-wal-checkpoint", daemon=True).start()

    def _checkpoints(self) -> None:
        """Checkpoints the WAL every CHECKPOINT_SECONDS on a connection of its own until close()."""
        try:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_ms / 1000, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            log.error("database %s: no checkpoint connection (%s): the WAL grows until a restart", self.path, exc)
            return
        try:
            while not self._checkpoint_stop.wait(CHECKPOINT_SECONDS):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # busy or locked: the next round does it
                    log.debug("database %s: checkpoint skipped: %s", self.path, exc)
        finally:
            conn.close()

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
            if self._background_checkpoint:
                conn.execute("PRAGMA wal_autocheckpoint=0")
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
        with self._write_lock:
            lock_fd = self._lock_fd
            if lock_fd is not None:
                self._lock_writers(lock_fd)
            try:
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
            finally:
                if lock_fd is not None:
                    fcntl.flock(lock_fd, fcntl.LOCK_UN)

    def _lock_writers(self, lock_fd: int) -> None:
        """Takes the flock that queues writers across processes, polling at 0.1-1 ms (a blocking
        flock has no timeout: a stopped process holding it would hang every request instead of letting
        them fail after busy_timeout). Raises StoreError after busy_timeout."""
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        pause = 0.0001
        while True:
            time.sleep(pause)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreError(f"database {self.path}: cannot begin a transaction: another process"
                                     f" has been writing for over {self._busy_timeout_ms} ms") from None
                pause = min(pause * 2, 0.001)

    def batched(self, work: Callable[[sqlite3.Connection], T],
                combine: Callable[[sqlite3.Connection, list[Any]], list[T]] | None = None) -> T:
        """Runs `work(conn)` in a write transaction shared with the callers waiting at the same time
        (group commit: one fsync for all), each in its own savepoint so that one failure undoes only
        its own writes. Returns `work`'s result once the transaction is durably committed; raises
        StoreError when `work` or the commit failed.

        With `combine`, the works queued with that same `combine` run as one call `combine(conn,
        works)` in one savepoint, which returns their results in order: one set of statements for all
        of them rather than one each (sqlite3 releases the GIL around every statement step, and the
        leader, which holds everyone's commit, has to win it back from the threads parsing requests
        after each call: bench/RESULTS.md). When the combined call raises, its savepoint is undone
        and each work runs alone in its own, as without `combine`."""
        item = _Work(work, combine)
        with self._batch_lock:
            self._batch.append(item)
            lead = not self._leader
            if lead:
                self._leader = True
        if not lead:
            # Parked on our own lock (no shared condition: waking every waiter after each commit cost
            # more CPU than the commit). Released when our work is committed, or when we are made
            # the next leader.
            item.wake.acquire()
            if item.finished:
                return item.outcome()
        with self._batch_lock:
            batch, self._batch = self._batch, []
        try:
            self._run_batch(batch)
        finally:
            for other in batch:
                if other is not item:
                    other.wake.release()
            with self._batch_lock:
                # Hand over to the first caller that queued during our commit: it commits the rest
                # while we answer our own request.
                if self._batch:
                    self._batch[0].wake.release()
                else:
                    self._leader = False
        return item.outcome()

    def write_batch(self, works: list[Callable[[sqlite3.Connection], Any]],
                    combine: Callable[[sqlite3.Connection, list[Any]], list[Any]] | None = None
                    ) -> list[tuple[Any, BaseException | None]]:
        """Runs `works` in one transaction now, as a group commit of those callers would (the same
        savepoints, the same `combine` and fallback); returns (result, error) for each. For a caller
        that batches by itself (the writer process, alerting.writer)."""
        items = [_Work(work, combine) for work in works]
        self._run_batch(items)
        return [(item.result, item.error) for item in items]

    def _run_batch(self, batch: list[_Work]) -> None:
        try:
            with self.transaction() as conn:
                for group in _groups(batch):
                    if len(group) > 1 and self._run_combined(conn, group):
                        continue
                    for item in group:
                        self._run_alone(conn, item)
        except StoreError as exc:
            for item in batch:
                item.result, item.error = None, item.error or exc
        except sqlite3.Error as exc:
            for item in batch:
                item.result, item.error = None, StoreError(f"database {self.path}: write failed: {exc}")
        finally:
            for item in batch:
                item.finished = True

    def _run_combined(self, conn: sqlite3.Connection, group: list[_Work]) -> bool:
        """Runs `group` (works of one `combine`) as one call in one savepoint. False, with nothing of it
        left in the transaction, when that call failed or did not give one result per work."""
        conn.execute("SAVEPOINT works")
        try:
            results = group[0].combine(conn, [item.work for item in group])
            if len(results) != len(group):
                raise ValueError(f"combine gave {len(results)} results for {len(group)} works")
        except Exception as exc:  # noqa: BLE001 - each work is run alone next, and fails alone
            conn.execute("ROLLBACK TO works")
            conn.execute("RELEASE works")
            log.warning("database %s: %d combined writes failed (%s): running them one by one",
                        self.path, len(group), exc)
            return False
        conn.execute("RELEASE works")
        for item, result in zip(group, results, strict=True):
            item.result = result
        return True

    def _run_alone(self, conn: sqlite3.Connection, item: _Work) -> None:
        conn.execute("SAVEPOINT work")
        try:
            item.result = item.work(conn)
            conn.execute("RELEASE work")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK TO work")
            conn.execute("RELEASE work")
            item.error = StoreError(f"database {self.path}: write failed: {exc}")
        except Exception as exc:  # a bug in `work`: its caller gets it, the others commit
            conn.execute("ROLLBACK TO work")
            conn.execute("RELEASE work")
            item.error = exc

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
        self._checkpoint_stop.set()
        with self._lock:
            self._closed = True
            conns, self._connections = self._connections, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()
        with self._write_lock:
            lock_fd, self._lock_fd = self._lock_fd, None
        if lock_fd is not None:
            os.close(lock_fd)

    def __repr__(self) -> str:
        return f"Database({self.path!r})"


def _groups(batch: list[_Work]) -> list[list[_Work]]:
    """`batch` cut into runs of consecutive works that share one `combine` (a work without one is
    a run of its own); arrival order is kept within and between runs."""
    groups: list[list[_Work]] = []
    for item in batch:
        if groups and item.combine is not None and groups[-1][-1].combine == item.combine:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


class _Work:
    """One caller's share of a group commit."""

    __slots__ = ("work", "combine", "result", "error", "finished", "wake")

    def __init__(self, work: Callable[[sqlite3.Connection], Any],
                 combine: Callable[[sqlite3.Connection, list[Any]], list[Any]] | None = None):
        self.work = work
        self.combine = combine
        self.wake = threading.Lock()
        self.wake.acquire()  # a binary semaphore: released once to wake its caller
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished = False

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result
