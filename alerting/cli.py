"""`divims webhook --config F [--listen HOST:PORT]`: the receiver served by waitress (a production WSGI
server, not Flask's development server) until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from typing import Any

from waitress import wasyncore
from waitress.server import create_server

from alerting.app import create_app
from alerting.database import Database, StoreError
from alerting.requests import RequestQueue
from alerting.store import AlertStore
from divims.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "0.0.0.0:9095"
# The GIL switch interval of the webhook process (CPython's default is 5 ms). waitress reads requests
# and writes responses in one I/O thread that needs the GIL between the workers' bursts of JSON and
# SQLite work; handing it over after 1 ms instead of 5 raised throughput by ~20% under 50 concurrent
# senders (bench/RESULTS.md). Set by `run()` only: it is process-wide, and that process is the webhook.
SWITCH_INTERVAL_SECONDS = 0.001
# waitress worker threads. Requests waiting for a thread cannot join the group commit under way, and
# waitress logs a warning for each one it queues: 24 threads carried 50 concurrent senders ~40% faster
# than 8, with less CPU per notification (larger commits). Each thread holds one SQLite connection.
DEFAULT_THREADS = 24


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [::1]:PORT) -> (host, port). Raises ValueError naming the problem."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--listen: expected HOST:PORT like 0.0.0.0:9095, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class WebhookServer:
    """A WSGI app served by waitress on (host, port), in a background thread or the caller's.
    Port 0 picks a free port: read `.port` after construction."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, threads: int = DEFAULT_THREADS,
                 max_body_bytes: int = 1024 * 1024):
        # waitress refuses bodies above max_request_body_size itself; leave headroom so the app
        # answers its own JSON 413 and counts it.
        self._server = create_server(app, host=host, port=port, threads=threads, ident="divims-webhook",
                                     max_request_body_size=max_body_bytes * 4, clear_untrusted_proxy_headers=True)
        self.host = host
        self.port = int(self._server.effective_port)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> WebhookServer:
        self._thread = threading.Thread(target=self.run, name="divims-webhook", daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        """Serves until `close()` (returns then)."""
        while self._server._map:
            try:
                self._server.run()
            except (OSError, ValueError):
                # close() from another thread closed a socket under select(): loop again, the map
                # is empty by then and the loop ends.
                continue

    def close(self) -> None:
        """Stops accepting, closes every connection, stops the worker threads, joins the serving thread."""
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
        map_ = self._server._map
        try:
            # Closing inside the loop's own thread (via its trigger) ends the loop at once, without
            # waiting for select()'s timeout.
            self._server.trigger.pull_trigger(lambda: wasyncore.close_all(map_, ignore_all=True))
        except OSError:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        wasyncore.close_all(map_, ignore_all=True)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="divims configuration file (default: $DIVIMS_CONFIG)")
    parser.add_argument("--listen", help=f"HOST:PORT to listen on (default: alerting.webhook.listen, "
                                         f"else {DEFAULT_LISTEN})")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"waitress worker threads (default {DEFAULT_THREADS})")


def run(args: argparse.Namespace) -> int:
    """Serves the webhook until SIGTERM/SIGINT. Exit code 0 on a clean stop, 2 on bad configuration,
    1 when the database cannot be opened."""
    from divims.config import load_config

    try:
        settings = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("configuration: %s", problem)
        return 2
    _setup_logging(settings)
    logging.getLogger("waitress.queue").addFilter(_AtMostEvery(10.0))
    webhook = settings.alerting.webhook
    if webhook is None:
        log.error("configuration: alerting.webhook: not configured (set its token and database)")
        return 2
    try:
        host, port = parse_listen(args.listen or webhook.listen or DEFAULT_LISTEN)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    try:
        db = Database(webhook.database)
        store = AlertStore(db, retention_days=webhook.retention_days)
        queue = RequestQueue(db, max_actions_per_hour=settings.alerting.max_actions_per_hour)
        queue.prune(time.time() - webhook.retention_days * 86400)
    except StoreError as exc:
        log.error("webhook: %s", exc)
        return 1
    try:
        app = create_app(settings, store, queue)
        server = WebhookServer(app, host, port, threads=max(1, args.threads),
                               max_body_bytes=webhook.max_body_bytes)
    except (ValueError, OSError) as exc:
        log.error("webhook: cannot start on %s:%d: %s", host, port, exc)
        db.close()
        return 2 if isinstance(exc, ValueError) else 1

    stopping = threading.Event()

    def stop(signum: int, _frame: Any) -> None:
        log.info("webhook: signal %d, stopping", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    server.start()
    log.info("webhook: listening on %s (auth %s, database %s)", server.url, webhook.auth, webhook.database)
    while not stopping.wait(1.0):
        pass
    server.close()
    db.close()
    log.info("webhook: stopped")
    return 0


class _AtMostEvery(logging.Filter):
    """Lets one record through per `seconds` (and counts the ones it drops into the next). waitress
    warns "Task queue depth is N" for every request it queues while all threads are busy: under a
    burst that is a line per request, costing CPU when it is scarcest and burying other lines."""

    def __init__(self, seconds: float, clock: Any = time.monotonic):
        super().__init__()
        self.seconds = seconds
        self._clock = clock
        self._next = 0.0
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        if now < self._next:
            self._dropped += 1
            return False
        if self._dropped:
            record.msg = f"{record.msg} ({self._dropped} similar warnings in the last {self.seconds:.0f} s)"
        self._next, self._dropped = now + self.seconds, 0
        return True


def _setup_logging(settings: Any) -> None:
    """divims.logsetup masks every configured secret when it exists; else plain logging."""
    try:
        from divims import logsetup  # written by the lead
    except ImportError:
        logging.basicConfig(level=settings.logging.level,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return
    setup = getattr(logsetup, "setup_logging", None) or getattr(logsetup, "setup", None)
    if setup is None:
        logging.basicConfig(level=settings.logging.level)
        return
    try:
        setup(settings)
    except TypeError:
        setup(settings.logging.level, settings.secret_values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="divims webhook", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
