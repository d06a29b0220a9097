"""The scaler's HTTP side: `/metrics` (its registry) and `/healthz` (is the loop cycling?)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, make_wsgi_app

from divims.httpserve import WSGIServer

LAST_CYCLE = "divims_scaler_last_cycle_timestamp_seconds"


class HealthApp:
    """WSGI app. `/healthz` is 200 while every pool has finished a cycle within `max_age_seconds`
    (3 intervals + 30 s), or while the scaler is still within that time of its start; 503 otherwise,
    with a JSON body saying which pool is late. It reveals nothing but pool names and ages."""

    def __init__(self, registry: CollectorRegistry, pools: Iterable[str], interval_seconds: float,
                 clock: Callable[[], float] = time.time):
        self.registry = registry
        self.pools = list(pools)
        self.max_age_seconds = 3 * interval_seconds + 30
        self.clock = clock
        self.started = clock()
        self.metrics = make_wsgi_app(registry)

    def health(self) -> tuple[bool, dict[str, Any]]:
        now = self.clock()
        ages: dict[str, float | None] = {}
        for pool in self.pools:
            last = self.registry.get_sample_value(LAST_CYCLE, {"pool": pool})
            ages[pool] = None if last is None else round(now - last, 1)
        starting = now - self.started < self.max_age_seconds
        late = [p for p, age in ages.items()
                if (age is None and not starting) or (age is not None and age > self.max_age_seconds)]
        status = "late" if late else ("starting" if any(a is None for a in ages.values()) else "ok")
        return not late, {"status": status, "late": late, "cycle_age_seconds": ages,
                          "max_age_seconds": self.max_age_seconds}

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self.metrics(environ, start_response)
        if path == "/healthz":
            ok, body = self.health()
            data = json.dumps(body, sort_keys=True).encode()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
            return [data]
        data = b"not found: try /metrics or /healthz\n"
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
        return [data]


def serve(registry: CollectorRegistry, pools: Iterable[str], interval_seconds: float, host: str,
          port: int) -> WSGIServer:
    """Starts the scaler's HTTP server (waitress) in a thread."""
    return WSGIServer(HealthApp(registry, pools, interval_seconds), host, port, ident="divims-scaler",
                      threads=2).start()
