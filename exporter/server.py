"""The exporter's HTTP side: `/metrics` (the latest snapshot, rendered) and `/healthz`, served by waitress.

The text of `/metrics` only changes when a new snapshot arrives, so it is rendered once per snapshot and
format and then served from memory: a scrape looks the bytes up and writes them. (`divims exporter` runs
the poll threads in a process of their own, exporter.poll_process, so they never hold this GIL.) Each new
snapshot is pre-rendered (`MetricsApp.prerender`) in every format and encoding scrapes asked for during
the previous snapshot, or in the classic text format when none did: Prometheus, which asks for gzipped
OpenMetrics, finds its bytes ready; a format not asked for before is rendered at its first request and
cached for the snapshot. Text 0.0.4 and OpenMetrics 1.0.0 bodies come from `exporter.exposition` (the
same bytes as prometheus-client, a sixth of the CPU); any other format goes through the
prometheus-client registry. Process metrics in the body are as of the render.
"""

from __future__ import annotations

import gzip
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.process_collector import ProcessCollector

from divims.httpserve import WSGIServer
from exporter import exposition
from exporter.collector import SnapshotCollector, families
from exporter.snapshot import ExporterSnapshot

log = logging.getLogger(__name__)

# Python hands the GIL over every 5 ms by default: a scrape needs it a dozen times (waitress' loop, its
# worker, each send), and waits a full interval each time a poll thread holds it. 0.5 ms keeps scrapes
# fast under 64 poll threads at a few percent more thread switches.
SWITCH_INTERVAL_SECONDS = 0.0005
GZIP_LEVEL = 5  # most of level 9's ratio on repetitive exposition text, at a fraction of its time
# Content types (as prometheus_client.exposition.choose_encoder names them) exposition.py writes itself;
# the legacy name escaping (`underscores`) leaves every name of ours unchanged, so it is the same text.
_OM = openmetrics.CONTENT_TYPE_LATEST
FAST_FORMATS = {
    CONTENT_TYPE_PLAIN_0_0_4: exposition.TEXT,
    _OM: exposition.OPENMETRICS,
    _OM + "; escaping=" + openmetrics.UNDERSCORES: exposition.OPENMETRICS,
}

Key = tuple[str, bool]  # (content type, gzipped)
Encoder = Callable[[CollectorRegistry], bytes]


def _default_keys() -> dict[Key, Encoder]:
    """The classic text format, plain and gzipped: pre-rendered when no scrape has asked for anything."""
    encoder, content_type = choose_encoder("")
    return {(content_type, False): encoder, (content_type, True): encoder}


def build_registry(current: Callable[[], ExporterSnapshot | None]) -> CollectorRegistry:
    """A registry of its own (never the global one): the snapshot collector and the process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(current))
    ProcessCollector(registry=registry)
    return registry


def prefer_scrapes() -> None:
    """Makes this process hand the GIL over sooner (`SWITCH_INTERVAL_SECONDS`); process-wide, so only the
    exporter's own entry points (exporter.cli, the benchmark) call it, never library code or tests."""
    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_SECONDS))


class MetricsApp:
    """The WSGI application. `max_age_seconds`: /healthz says 503 when the snapshot is older than this
    (or when there is none yet)."""

    def __init__(self, registry: CollectorRegistry, current: Callable[[], ExporterSnapshot | None],
                 max_age_seconds: float, clock: Callable[[], float] = time.time):
        self.registry = registry
        self.current = current
        self.max_age_seconds = max_age_seconds
        self.clock = clock
        self._process = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self._process)
        # Rendered bodies of the two newest snapshots, (content type, gzipped) -> body each: the poller
        # pre-renders the next snapshot while scrapes are still served the current one. Holding the
        # snapshots themselves (not their ids) means a recycled address can never be served old text.
        self._cache: list[tuple[ExporterSnapshot, dict[Key, bytes]]] = []
        self._cache_lock = threading.Lock()
        # What scrapes asked for since the last snapshot: pre-rendered for the next one (nothing asked:
        # the text format). Only what is asked is rendered: Prometheus alone costs one format, not two.
        self._asked: dict[Key, Encoder] = {}

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
        """Renders `snap` ahead of its first scrape, in the text format (plain and gzipped) and in every
        format scrapes asked for since the last call. The poller calls this just before swapping `snap`
        in, so scrapes find their bytes ready."""
        with self._cache_lock:
            asked, self._asked = self._asked or _default_keys(), {}
        plain: dict[str, bytes] = {}
        for (content_type, gzipped), encoder in sorted(asked.items(), key=lambda item: item[0]):
            if content_type not in plain:
                plain[content_type] = self._body(snap, content_type, encoder)
            body = plain[content_type]
            self._store(snap, (content_type, gzipped), gzip.compress(body, GZIP_LEVEL) if gzipped else body)

    def render(self, accept: str, gzipped: bool = False) -> tuple[bytes, str]:
        """The exposition of the current snapshot in the format `accept` asks for (text 0.0.4 by default),
        gzip-compressed when `gzipped`: the cached bytes when this snapshot was rendered in that format."""
        encoder, content_type = choose_encoder(accept)
        snap = self.current()
        key = (content_type, gzipped)
        with self._cache_lock:
            self._asked[key] = encoder
            for cached, bodies in self._cache:
                if cached is snap and key in bodies:
                    return bodies[key], content_type
        body = self._body(snap, content_type, encoder)  # two scrapes racing here both render: harmless, same bytes
        if gzipped:
            body = gzip.compress(body, GZIP_LEVEL)
        if snap is not None:
            self._store(snap, key, body)
        return body, content_type

    def _body(self, snap: ExporterSnapshot | None, content_type: str, encoder: Encoder) -> bytes:
        """`snap` and the process metrics in `content_type`, as `encoder` (from choose_encoder) would."""
        fmt = FAST_FORMATS.get(content_type)
        if fmt == exposition.TEXT:
            return exposition.render(families(snap), fmt) + generate_latest(self._process)
        if fmt == exposition.OPENMETRICS:
            return (exposition.render(families(snap), fmt, eof=False)
                    + openmetrics.generate_latest(self._process))
        # A rarer format (text/plain version=1.0.0, other escapings): the registry path renders it.
        return encoder(build_registry(lambda: snap))

    def _store(self, snap: ExporterSnapshot, key: Key, body: bytes) -> None:
        with self._cache_lock:
            for cached, bodies in self._cache:
                if cached is snap:
                    bodies[key] = body
                    return
            self._cache = (self._cache + [(snap, {key: body})])[-2:]

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


class MetricsServer(WSGIServer):
    """waitress serving a `MetricsApp` on host:port (port 0: a free one, see `.port`) in a thread."""

    def __init__(self, app: MetricsApp, host: str, port: int, threads: int = 4):
        # outbuf_overflow above the largest body: bodies stay in memory, never spooled to a temp file
        super().__init__(app, host, port, ident="divims-exporter", threads=threads,
                         outbuf_overflow=64 * 1024 * 1024)
