"""`divims exporter --config F [--listen HOST:PORT]`: the pool's state as Prometheus metrics."""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

from divims.config_cli import report
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


def pools_from_settings(settings: Any) -> list[Any]:
    """The real sources of every configured pool (`exporter.poll.PoolSources`)."""
    from exporter.poll import sources_from_config

    return [sources_from_config(pool, settings.exporter) for pool in settings.pools]


def start_exporter(settings: Any, listen: str | None = None, *, in_process: bool = False) -> Exporter:
    """Starts the poll loop (in a child process, see exporter.poll_process; `in_process`: in a thread of
    this one) and the HTTP server. Raises ConfigError for an address it cannot listen on."""
    from divims.logsetup import setup_logging
    from exporter.poll import Poller
    from exporter.poll_process import PollProcess
    from exporter.server import MetricsApp, MetricsServer, build_registry, prefer_scrapes

    cfg = settings.exporter
    host, port = parse_listen(listen or cfg.listen)
    pools = pools_from_settings(settings)  # here too: a bad pool fails now, not in the child
    kwargs = dict(interval_seconds=cfg.interval_seconds, concurrency=cfg.concurrency,
                  timeout_seconds=cfg.timeout_seconds, ssh_interval_seconds=cfg.ssh_interval_seconds)
    poller: Any = Poller(pools, **kwargs)  # checks the arguments
    if not in_process:
        poller.stop()
        poller = PollProcess(functools.partial(pools_from_settings, settings),
                             logging_setup=functools.partial(setup_logging, settings.logging.level,
                                                             settings.secret_values()), **kwargs)
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
    log.info("exporter started: %d pool(s), every %gs, concurrency %d, on %s, polling %s",
             len(pools), cfg.interval_seconds, cfg.concurrency, server.url,
             "in this process" if in_process else "in a child process")
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
        return report("divims exporter", exc)
    except ValueError as exc:
        print(f"divims exporter: --listen: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.logging.level, settings.secret_values())
    try:
        exporter = start_exporter(settings, args.listen)
    except ConfigError as exc:
        return report("divims exporter", exc)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("exporter stopping")
    exporter.stop()
    return 0
