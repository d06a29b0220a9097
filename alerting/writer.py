"""The webhook's writer process: with several receiver processes, one process writes the alert store.

Why: a group commit holds the file's write lock while it runs, and in a receiver process the thread
running it competes for the GIL with the threads parsing requests. Each SQLite call releases the GIL
and winning it back took about a millisecond under 50 concurrent senders, so a commit with a handful
of calls lasted ~8 ms instead of ~1, the other process waited for the lock meanwhile, and the commits
were the bottleneck (bench/RESULTS.md). This process has one thread: nothing competes with it.

The workers prepare each notification's rows themselves (alerting.store.PreparedNotification) and
send them here over a Unix socket in the supervisor's private run directory; this process commits
everything that arrived while its previous commit ran in one transaction (group commit), then answers
each request with what recording did. A worker answers 200 only after that answer; when this process
dies, the workers' requests in flight fail with StoreError (503: Alertmanager retries, and recording
is idempotent) until the supervisor has restarted it.

Frames, both ways: a 4-byte big-endian length, then a `marshal` dump of plain values (never code):
    request  (id, at, fingerprints, rows), or (id,): a ping
    reply    (id, kinds or None, error or None)
"""

from __future__ import annotations

import itertools
import logging
import marshal
import os
import selectors
import socket
import threading
import time
from typing import Any

from alerting.database import Database, StoreError
from alerting.store import PreparedNotification, record_prepared

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 64 * 1024 * 1024
SEND_TIMEOUT_SECONDS = 10.0
_HEADER = 4


def _frame(value: Any) -> bytes:
    payload = marshal.dumps(value)
    return len(payload).to_bytes(_HEADER, "big") + payload


def _frames(buffer: bytearray) -> list[Any]:
    """Takes the complete frames off the front of `buffer`; raises ValueError on a malformed one."""
    values = []
    while len(buffer) >= _HEADER:
        size = int.from_bytes(buffer[:_HEADER], "big")
        if size > MAX_FRAME_BYTES:
            raise ValueError(f"a frame of {size} bytes")
        if len(buffer) < _HEADER + size:
            break
        values.append(marshal.loads(bytes(buffer[_HEADER:_HEADER + size])))
        del buffer[:_HEADER + size]
    return values


class WriterServer:
    """Serves the workers on the listening Unix socket `sock`, writing into `db`, until `stopping`."""

    def __init__(self, db: Database, sock: socket.socket):
        self.db = db
        self.sock = sock
        self.batches = 0
        self.notifications = 0

    def serve(self, stopping: threading.Event) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ, None)
        buffers: dict[socket.socket, bytearray] = {}
        try:
            while not stopping.is_set():
                pending: list[tuple[socket.socket, tuple]] = []
                for key, _ in selector.select(timeout=0.5):
                    if key.data is None:
                        peer, _ = self.sock.accept()
                        peer.settimeout(SEND_TIMEOUT_SECONDS)
                        buffers[peer] = bytearray()
                        selector.register(peer, selectors.EVENT_READ, True)
                        continue
                    peer = key.fileobj
                    try:
                        chunk = peer.recv(1 << 20)
                        buffers[peer] += chunk
                        requests = _frames(buffers[peer]) if chunk else None
                    except (OSError, ValueError, EOFError, TypeError) as exc:
                        if not isinstance(exc, OSError):
                            log.error("alert writer: a malformed request (%s): closing that connection", exc)
                        requests = None
                    if requests is None:  # the worker went away (or spoke nonsense)
                        selector.unregister(peer)
                        buffers.pop(peer, None)
                        peer.close()
                        continue
                    pending += [(peer, r) for r in requests]
                if pending:
                    self._write(pending)
        finally:
            for peer in list(buffers):
                peer.close()
            selector.close()

    def _write(self, pending: list[tuple[socket.socket, tuple]]) -> None:
        works, replies = [], []
        for peer, request in pending:
            if len(request) == 1:  # ping
                replies.append((peer, (request[0], (), None)))
                continue
            rid, at, fingerprints, rows = request
            works.append(PreparedNotification(at, rows, fingerprints))
            replies.append((peer, rid))
        outcomes = iter(self.db.write_batch(works, combine=record_prepared) if works else [])
        if works:
            self.batches += 1
            self.notifications += len(works)
        for peer, reply in replies:
            if isinstance(reply, int):
                result, error = next(outcomes)
                if error is not None and not isinstance(error, StoreError):
                    log.error("alert writer: recording failed unexpectedly", exc_info=error)
                reply = (reply, tuple(result), None) if error is None else (reply, None, str(error)[:300])
            try:
                peer.sendall(_frame(reply))
            except OSError:
                pass  # that worker is gone: its request fails there, and Alertmanager retries


class _Reply:
    __slots__ = ("wake", "kinds", "error")

    def __init__(self) -> None:
        self.wake = threading.Lock()
        self.wake.acquire()  # released once, by the reader thread
        self.kinds: tuple | None = None
        self.error: str | None = None


class _Connection:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.pending: dict[int, _Reply] = {}
        self.alive = True


class WriterClient:
    """A worker's side: `record(prepared)` has the writer process at `path` record a notification and
    returns the kinds of change. Thread-safe; one connection, shared by the worker's threads, opened on
    first use and again after the writer restarted. Raises StoreError when the writer cannot be
    reached within `connect_seconds`, does not answer within `timeout`, or failed to write."""

    def __init__(self, path: str, timeout: float = 10.0, connect_seconds: float = 2.0):
        self.path = path
        self.timeout = timeout
        self.connect_seconds = connect_seconds
        self._lock = threading.Lock()       # the connection and its pending replies
        self._send_lock = threading.Lock()  # one frame at a time on the socket
        self._connection: _Connection | None = None
        self._ids = itertools.count(1)

    def record(self, prepared: PreparedNotification) -> list[str]:
        reply = self._ask(lambda rid: (rid, prepared.at, prepared.fingerprints, prepared.rows))
        return list(reply.kinds or ())

    def ping(self) -> None:
        """Raises StoreError unless the writer answers."""
        self._ask(lambda rid: (rid,))

    def _ask(self, request: Any) -> _Reply:
        reply = _Reply()
        with self._lock:
            connection = self._connection if self._connection and self._connection.alive else self._connect()
            rid = next(self._ids)
            connection.pending[rid] = reply
        try:
            with self._send_lock:
                connection.sock.sendall(_frame(request(rid)))
        except OSError as exc:
            self._lost(connection, f"cannot send to the alert writer: {exc.strerror or exc}")
        if not reply.wake.acquire(timeout=self.timeout):
            with self._lock:
                connection.pending.pop(rid, None)
            raise StoreError(f"the alert writer did not answer within {self.timeout:.0f} s")
        if reply.error is not None:
            raise StoreError(reply.error)
        return reply

    def _connect(self) -> _Connection:
        """Called with self._lock held."""
        deadline = time.monotonic() + self.connect_seconds
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
                break
            except OSError as exc:
                sock.close()
                if time.monotonic() >= deadline:
                    raise StoreError(f"the alert writer is not running ({exc.strerror or exc})") from None
                time.sleep(0.05)
        connection = _Connection(sock)
        self._connection = connection
        threading.Thread(target=self._read, args=(connection,), name="divims-writer-replies",
                         daemon=True).start()
        return connection

    def _read(self, connection: _Connection) -> None:
        buffer = bytearray()
        why = "the alert writer closed the connection"
        while True:
            try:
                chunk = connection.sock.recv(1 << 20)
            except OSError as exc:
                why = f"the alert writer connection failed: {exc.strerror or exc}"
                break
            if not chunk:
                break
            buffer += chunk
            try:
                replies = _frames(buffer)
            except (ValueError, EOFError, TypeError) as exc:
                why = f"a malformed reply from the alert writer ({exc})"
                break
            for rid, kinds, error in replies:
                with self._lock:
                    reply = connection.pending.pop(rid, None)
                if reply is not None:
                    reply.kinds, reply.error = kinds, error
                    reply.wake.release()
        self._lost(connection, why)

    def _lost(self, connection: _Connection, why: str) -> None:
        """Fails every request waiting on `connection` with `why`; the next request reconnects."""
        with self._lock:
            connection.alive = False
            if self._connection is connection:
                self._connection = None
            waiting, connection.pending = list(connection.pending.values()), {}
        try:
            connection.sock.close()
        except OSError:
            pass
        for reply in waiting:
            reply.error = why
            reply.wake.release()

    def close(self) -> None:
        with self._lock:
            connection = self._connection
        if connection is not None:
            self._lost(connection, "closed")


def listen(path: str) -> socket.socket:
    """A listening Unix socket at `path` (a stale one from a dead writer is replaced), owner-only."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(64)
    return sock
