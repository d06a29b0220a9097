"""The exporter's HTTP side: `/metrics` (the latest snapshot, rendered) and `/healthz`, served by waitress.

The text of `/metrics` only changes when a poll cycle swaps in a new snapshot, so it is rendered once per
snapshot and format (ahead of time, by the poll thread, through `MetricsApp.prerender`) and
then served from memory: a scrape costs a dictionary lookup even with hundreds of servers and 64 poll
threads competing for the GIL. Process metrics in the body are as of the render.
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from waitress import wasyncore
from waitress.server import create_server

from exporter.collector import SnapshotCollector
from exporter.snapshot import ExporterSnapshot

log = logging.getLogger(__name__)

# Accept headers whose format is rendered ahead of time: the classic text format and OpenMetrics 1.0
PRERENDERED = ("", "application/openmetrics-text; version=1.0.0")
GZIP_LEVEL = 5  # most of level 9's ratio on repetitive exposition text, at a fraction of its time


def build_registry(current: Callable[[], ExporterSnapshot | None]) -> CollectorRegistry:
    """A registry of its own (never the global one): the snapshot collector and the process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(current))
    ProcessCollector(registry=registry)
    return registry


class MetricsApp:
    """The WSGI application. `max_age_seconds`: /healthz says 503 when the snapshot is older than this
    (or when there is none yet)."""

    def __init__(self, registry: CollectorRegistry, current: Callable[[], ExporterSnapshot | None],
                 max_age_seconds: float, clock: Callable[[], float] = time.time):
        self.registry = registry
        self.current = current
        self.max_age_seconds = max_age_seconds
        self.clock = clock
        # Rendered bodies of the two newest snapshots, (content type, gzipped) -> body each: the poller
        # pre-renders the next snapshot while scrapes are still served the current one. Holding the
        # snapshots themselves (not their ids) means a recycled address can never be served old text.
        self._cache: list[tuple[ExporterSnapshot, dict[tuple[str, bool], bytes]]] = []
        self._cache_lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return _answer(start_response, "405 Method Not Allowed", b"only GET\n", "text/plain",
                           [("Allow", "GET, HEAD")])
        if path == "/metrics":
            gzipped = "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "")
            body, content_type = self.render(environ.get("HTTP_ACCEPT", ""), gzipped=gzipped)
            # Prometheus asks for gzip: a tenth of the bytes to push through a GIL-contended server
            extra = [("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")] if gzipped else []
            return _answer(start_response, "200 OK", body, content_type, extra)
        if path == "/healthz":
            status, doc = self.health()
            return _answer(start_response, status, (json.dumps(doc) + "\n").encode(), "application/json")
        if path == "/":
            return _answer(start_response, "200 OK", b"divims exporter: /metrics /healthz\n", "text/plain")
        return _answer(start_response, "404 Not Found", b"not found\n", "text/plain")

    def prerender(self, snap: ExporterSnapshot) -> None:
        """Renders `snap` in the text and OpenMetrics formats ahead of its first scrape (the poller calls
        this just before swapping `snap` in, so scrapes find it rendered)."""
        registry = build_registry(lambda: snap)
        # Both formats: Prometheus asks for OpenMetrics, curl and most tools get the classic text.
        for accept in PRERENDERED:
            encoder, content_type = choose_encoder(accept)
            body = encoder(registry)
            self._store(snap, (content_type, False), body)
            self._store(snap, (content_type, True), gzip.compress(body, GZIP_LEVEL))

    def _store(self, snap: ExporterSnapshot, key: tuple[str, bool], body: bytes) -> None:
        with self._cache_lock:
            for cached, bodies in self._cache:
                if cached is snap:
                    bodies[key] = body
                    return
            self._cache = (self._cache + [(snap, {key: body})])[-2:]

    def render(self, accept: str, gzipped: bool = False) -> tuple[bytes, str]:
        """The exposition of the current snapshot in the format `accept` asks for (text 0.0.4 by default),
        gzip-compressed when `gzipped`."""
        encoder, content_type = choose_encoder(accept)
        snap = self.current()
        key = (content_type, gzipped)
        with self._cache_lock:
            for cached, bodies in self._cache:
                if cached is snap and key in bodies:
                    return bodies[key], content_type
        body = encoder(self.registry)  # two scrapes racing here both render: harmless, same text
        if gzipped:
            body = gzip.compress(body, GZIP_LEVEL)
        if snap is not None:
            self._store(snap, key, body)
        return body, content_type

    def health(self) -> tuple[str, dict[str, Any]]:
        snap = self.current()
        if snap is None:
            return "503 Service Unavailable", {"status": "starting", "reason": "no poll finished yet"}
        age = self.clock() - snap.taken_at
        doc = {"status": "ok", "snapshot_age_seconds": round(age, 3),
               "pools": {p.pool: {"scalelite_up": p.scalelite_up, "servers": len(p.servers),
                                  "bbb_api_up": sum(1 for s in p.servers if s.bbb.up)} for p in snap.pools}}
        if age > self.max_age_seconds:
            doc.update(status="stale", reason=f"last poll finished {age:.0f}s ago")
            return "503 Service Unavailable", doc
        return "200 OK", doc


def _answer(start_response: Callable, status: str, body: bytes, content_type: str,
            extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))]
                   + (extra or []))
    return [body]


class MetricsServer:
    """waitress serving a `MetricsApp` on host:port (port 0: a free one, see `.port`) in a thread."""

    def __init__(self, app: MetricsApp, host: str, port: int, threads: int = 4):
        self.app = app
        # outbuf_overflow above the largest body: bodies stay in memory, never spooled to a temp file
        self._server = create_server(app, host=host, port=port, threads=threads, ident="divims-exporter",
                                     clear_untrusted_proxy_headers=True, outbuf_overflow=64 * 1024 * 1024)
        self.host = host
        self.port = int(self._server.effective_port)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> MetricsServer:
        self._thread = threading.Thread(target=self._server.run, name="divims-exporter-http", daemon=True)
        self._thread.start()
        log.info("exporter listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Closes the socket, ends the serving loop and joins waitress' worker threads."""
        if self._thread is not None and self._thread.is_alive():
            # Close every socket from inside the loop's own thread: closing them from here while the loop
            # sits in select() makes it fail with EBADF. An empty socket map ends the loop.
            self._server.trigger.pull_trigger(lambda: wasyncore.close_all(self._server._map))
            self._thread.join(timeout=5)
        else:
            self._server.close()
        # A single-socket waitress server's close() leaves its task threads running: end them too.
        self._server.task_dispatcher.shutdown(timeout=5)
