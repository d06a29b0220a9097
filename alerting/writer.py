"""The webhook's writer process: with several receiver processes, one process writes the alert store.

Why: a group commit holds the file's write lock while it runs, and in a receiver process the thread
running it competes for the GIL with the threads parsing requests. Each SQLite call releases the GIL
and winning it back took about a millisecond under 50 concurrent senders, so a commit with a handful
of calls lasted ~8 ms instead of ~1, the other process waited for the lock meanwhile, and the commits
were the bottleneck (bench/RESULTS.md). Here one thread does all the work (the two others sleep: the
WAL checkpoint, the orphan watch), so nothing competes with it for the GIL.

The workers prepare each notification's rows themselves (alerting.store.PreparedNotification) and
send them here over a Unix socket in the supervisor's private run directory; this process commits
everything that arrived while its previous commit ran in one transaction (group commit), then answers
each request with what recording did. A worker answers 200 only after that answer; when this process
dies, the workers' requests in flight fail with StoreError (503: Alertmanager retries, and recording
is idempotent) until the supervisor has restarted it.

Frames, both ways: a 4-byte big-endian length, then a `marshal` dump of plain values (never code):
    request  (id, at, rows), or (id,): a ping
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
        self.sock.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ, None)
        buffers: dict[socket.socket, bytearray] = {}
        try:
            while not stopping.is_set():
                pending: list[tuple[socket.socket, tuple]] = []
                for key, _ in selector.select(timeout=0.5):
                    if key.data is None:
                        # every worker thread connecting now, not one per round: after a start or a
                        # restart they all connect at once, each round may hold a commit, and the
                        # last to be accepted would wait for all of them
                        while True:
                            try:
                                peer, _ = self.sock.accept()
                            except (BlockingIOError, InterruptedError):
                                break
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
            rid, at, rows = request
            works.append(PreparedNotification(at, rows))
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


class WriterClient:
    """A worker's side: `record(prepared)` has the writer process at `path` record a notification and
    returns the kinds of change. Thread-safe: each thread has its own connection, opened on first use
    and again after the writer restarted, with one request at a time on it, so a thread reads its own
    answer (no reply thread to wake, no hand-over). Raises StoreError when the writer cannot be
    reached within `connect_seconds`, does not answer within `timeout`, or failed to write."""

    def __init__(self, path: str, timeout: float = 10.0, connect_seconds: float = 2.0):
        self.path = path
        self.timeout = timeout
        self.connect_seconds = connect_seconds
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._ids = itertools.count(1)

    def record(self, prepared: PreparedNotification) -> list[str]:
        kinds, _ = self._ask((next(self._ids), prepared.at, prepared.rows))
        return list(kinds or ())

    def ping(self, timeout: float = 2.0) -> None:
        """Raises StoreError unless the writer answers within `timeout` (a health check must not hang
        for as long as a write may wait)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(self.path)
            except OSError as exc:
                raise StoreError(f"the alert writer is not running ({exc.strerror or exc})") from None
            self._exchange(sock, (next(self._ids),))

    def _ask(self, request: tuple) -> tuple:
        return self._exchange(getattr(self._local, "sock", None) or self._connect(), request)

    def _exchange(self, sock: socket.socket, request: tuple) -> tuple:
        try:
            sock.sendall(_frame(request))
            buffer = bytearray()
            while True:
                replies = _frames(buffer)
                if replies:
                    break
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise ConnectionError("the alert writer closed the connection")
                buffer += chunk
            rid, kinds, error = replies[0]
            if rid != request[0] or len(replies) > 1 or buffer:
                raise ValueError(f"an answer to request {rid} for request {request[0]}")
        except TimeoutError:
            self._drop(sock)
            raise StoreError(f"the alert writer did not answer within {self.timeout:g} s") from None
        except OSError as exc:
            self._drop(sock)
            why = str(exc) if isinstance(exc, ConnectionError) and not exc.errno else exc.strerror or exc
            raise StoreError(f"the alert writer connection failed: {why}") from None
        except (ValueError, EOFError, TypeError) as exc:
            self._drop(sock)
            raise StoreError(f"a malformed reply from the alert writer ({exc})") from None
        if error is not None:
            raise StoreError(error)
        return kinds, rid

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + self.connect_seconds
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
                break
            except OSError as exc:
                sock.close()
                if time.monotonic() >= deadline:
                    raise StoreError(f"the alert writer is not running ({exc.strerror or exc})") from None
                time.sleep(0.05)
        self._local.sock = sock
        with self._lock:
            self._sockets.add(sock)
        return sock

    def _drop(self, sock: socket.socket) -> None:
        """Forgets this thread's connection (the next request reconnects)."""
        if getattr(self._local, "sock", None) is sock:
            self._local.sock = None
        with self._lock:
            self._sockets.discard(sock)
        try:
            sock.close()
        except OSError:
            pass

    def close(self) -> None:
        """Closes every thread's connection."""
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            try:
                sock.close()
            except OSError:
                pass
        self._local = threading.local()


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
