"""`divims exporter --config F [--listen HOST:PORT]`: the pool's state as Prometheus metrics."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

from divims.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "0.0.0.0:9688"


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [::1]:9688) -> (host, port); raises ValueError naming what is wrong."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"listen address {value!r} must be HOST:PORT, e.g. {DEFAULT_LISTEN}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"listen address {value!r}: port must be a number from 0 to 65535")
    return host, int(port_text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="divims YAML configuration")
    parser.add_argument("--listen", default=None, metavar="HOST:PORT",
                        help=f"address of /metrics and /healthz (default: exporter.listen, {DEFAULT_LISTEN})")


@dataclass
class Exporter:
    """A running exporter: the poll loop and the HTTP server, stopped together."""

    poller: Any
    server: Any

    def stop(self) -> None:
        self.server.stop()
        self.poller.stop()


def start_exporter(settings: Any, listen: str | None = None) -> Exporter:
    """Builds the sources of every configured pool, starts the poll loop and the HTTP server."""
    from exporter.poll import Poller, sources_from_config
    from exporter.server import MetricsApp, MetricsServer, build_registry, prefer_scrapes

    cfg = settings.exporter
    host, port = parse_listen(listen or cfg.listen)
    pools = [sources_from_config(pool, cfg) for pool in settings.pools]
    poller = Poller(pools, interval_seconds=cfg.interval_seconds, concurrency=cfg.concurrency,
                    timeout_seconds=cfg.timeout_seconds, ssh_interval_seconds=cfg.ssh_interval_seconds)
    current = lambda: poller.snapshot  # noqa: E731 - the one accessor the collector and /healthz share
    # /healthz turns 503 when three cycles in a row did not finish
    app = MetricsApp(build_registry(current), current,
                     max_age_seconds=3 * cfg.interval_seconds + cfg.timeout_seconds)
    poller.on_snapshot = app.prerender
    try:
        server = MetricsServer(app, host, port)
    except OSError as exc:
        poller.stop()
        raise ConfigError([f"exporter.listen: cannot listen on {host}:{port} ({exc.strerror or exc})"]) from None
    prefer_scrapes()
    poller.start()
    server.start()
    log.info("exporter started: %d pool(s), every %gs, concurrency %d, on %s",
             len(pools), cfg.interval_seconds, cfg.concurrency, server.url)
    return Exporter(poller, server)


def run(args: argparse.Namespace) -> int:
    """Runs until SIGTERM or SIGINT; returns the exit code (2 for a bad configuration or address)."""
    from divims.config import load_config
    from divims.logsetup import setup_logging

    try:
        settings = load_config(args.config)
        if args.listen is not None:
            parse_listen(args.listen)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"divims exporter: {problem}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"divims exporter: --listen: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.logging.level, settings.secret_values())
    try:
        exporter = start_exporter(settings, args.listen)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"divims exporter: {problem}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("exporter stopping")
    exporter.stop()
    return 0
