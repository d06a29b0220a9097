"""The poll loop in a process of its own, handing each finished snapshot to the serving process.

Why a process: CPython runs one thread at a time. With 64 poll threads, each wave of answers makes 64
threads runnable at once, each holding the GIL for a fraction of a millisecond; a scrape needs the GIL a
handful of times (waitress' loop, its worker, each send) and queues behind the whole wave every time:
/metrics p99 above 100 ms while polls run, on an otherwise idle exporter. In a child process the poll
threads compete for a GIL of their own, and the serving process only receives one snapshot per cycle
(a few milliseconds to unpickle), renders it once and writes bytes.

`PollProcess` has the face of `exporter.poll.Poller` (`snapshot`, `on_snapshot`, `start`, `stop`,
`cycles`), so the HTTP side does not care where the polls run. The child is started with `spawn` (no
fork of a threaded process), builds its sources itself from a picklable factory, ignores SIGINT and
SIGTERM (the parent decides when it stops) and exits when told to or when the parent goes away. A child
that dies is restarted after a pause, with one log line; /healthz turns 503 meanwhile (stale snapshot).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from exporter.poll import Poller, PoolSources
from exporter.snapshot import ExporterSnapshot

log = logging.getLogger(__name__)

RESTART_PAUSE_SECONDS = 2.0
_STOP = "stop"


def _child(factory: Callable[[], Sequence[PoolSources]], poller_kwargs: dict[str, Any],
           logging_setup: Callable[[], Any] | None, conn: Connection) -> None:
    """The child's main: polls until the parent says stop or closes its end of the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if logging_setup is not None:
        logging_setup()
    send_lock = threading.Lock()

    def send(snap: ExporterSnapshot) -> None:
        with send_lock:
            try:
                conn.send(snap)
            except (BrokenPipeError, EOFError, OSError):  # the parent is gone: the loop below ends us
                pass

    poller = Poller(factory(), on_snapshot=send, **poller_kwargs)
    poller.start()
    try:
        while True:
            try:
                if conn.recv() == _STOP:
                    break
            except (EOFError, OSError):
                break  # the parent went away
    finally:
        poller.stop(timeout=5)
        conn.close()


class PollProcess:
    """Runs `Poller(factory(), **poller_kwargs)` in a child process; `snapshot` is the latest it sent.

    `factory` and `logging_setup` must be picklable (module-level functions or partials of them): they
    are called in the child."""

    def __init__(self, factory: Callable[[], Sequence[PoolSources]], *,
                 logging_setup: Callable[[], Any] | None = None,
                 on_snapshot: Callable[[ExporterSnapshot], None] | None = None, **poller_kwargs: Any):
        self.factory = factory
        self.logging_setup = logging_setup
        self.poller_kwargs = poller_kwargs
        self.on_snapshot = on_snapshot
        self.cycles = 0
        self._snapshot: ExporterSnapshot | None = None
        self._ctx = mp.get_context("spawn")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: Any = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()  # stop() and a restart never interleave

    @property
    def snapshot(self) -> ExporterSnapshot | None:
        return self._snapshot

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Starts the child (and restarts it whenever it dies) until `stop()`."""
        if self._thread is not None:
            raise RuntimeError("poll process already started")
        self._spawn()
        self._thread = threading.Thread(target=self._receive, name="divims-exporter-receive", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Tells the child to stop, waits up to `timeout` for it, then terminates it."""
        with self._lock:
            self._stop.set()
            conn, proc = self._conn, self._proc
        if conn is not None:
            try:
                conn.send(_STOP)
            except (BrokenPipeError, EOFError, OSError):
                pass
        if proc is not None:
            proc.join(timeout)
            if proc.is_alive():
                log.warning("exporter poll process %s did not stop in %.0fs: terminating it", proc.pid, timeout)
                proc.terminate()
                proc.join(5)
        if self._thread is not None:
            self._thread.join(timeout)
        if conn is not None:
            conn.close()

    # --- internals ------------------------------------------------------------------------------
    def _spawn(self) -> None:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_child, name="divims-exporter-poll",
                                 args=(self.factory, self.poller_kwargs, self.logging_setup, child),
                                 daemon=True)
        proc.start()
        child.close()  # the child holds its own copy: EOF here means the child is gone
        self._proc, self._conn = proc, parent
        log.info("exporter poll process started (pid %s)", proc.pid)

    def _receive(self) -> None:
        while not self._stop.is_set():
            conn = self._conn
            assert conn is not None
            try:
                snap = conn.recv()
            except (EOFError, OSError):
                if self._stop.is_set():
                    return
                code = self._proc.exitcode if self._proc is not None else None
                log.error("exporter poll process ended (exit code %s): restarting it in %.0fs", code,
                          RESTART_PAUSE_SECONDS)
                if self._stop.wait(RESTART_PAUSE_SECONDS):
                    return
                conn.close()
                with self._lock:
                    if self._stop.is_set():
                        return
                    self._spawn()
                continue
            except Exception:  # an unpicklable message would be a bug: say so, keep the last snapshot
                log.exception("exporter poll process sent something unreadable")
                continue
            if self.on_snapshot is not None:
                try:
                    self.on_snapshot(snap)
                except Exception:  # a failed pre-render must not lose the cycle; scrapes render it
                    log.exception("exporter snapshot hook failed")
            self._snapshot = snap
            self.cycles += 1

