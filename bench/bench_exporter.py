"""Benchmark of the exporter's poll loop (issue 3): N fake BBB servers that each answer after 100 ms.

    .venv/bin/python -m bench.bench_exporter [--servers 500] [--latency 0.1] [--concurrency 64]

Measures, and prints as a table:
- one poll cycle with bounded concurrency, against the bound 1.5 x ceil(N / concurrency) x latency;
- the same servers polled one after another (concurrency 1), and the ratio;
- /metrics latency (p50, p99, max) over HTTP while poll cycles run back to back, asked for as Prometheus
  asks (OpenMetrics preferred, gzip);
- the time to render one snapshot, with exporter.exposition and with the prometheus-client registry;
- the exporter's resident memory.

As in a deployment, the exporter is alone in its process: the fake fleet (testbed.bbb.FakeBBBFleet, real
HTTP on one loopback address per server) runs in a child process, and so does the scraper (Prometheus is
another process too), so neither competes with the exporter for its GIL nor counts in its memory. The
poller uses the real BBB client. Scalelite's server list is handed in directly: this measures the BBB
fan-out.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import statistics
import threading
import time

import requests
from prometheus_client import generate_latest

from divims.clients.bbb import BBBClient
from divims.model import ScaleliteServer, ScaleliteState
from exporter import exposition
from exporter.collector import families
from exporter.poll import Poller, PoolSources, session_for
from exporter.server import MetricsApp, MetricsServer, build_registry, prefer_scrapes

# What Prometheus 2.x/3.x sends (scrape_protocols default): OpenMetrics first, then the text format.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
                     "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")

SECRET = "bench-secret-0123456789abcdef"


def host_of(n: int) -> str:
    """Slot n's loopback address: 127.1.x.y, unique for n up to 62,500 (every 127/8 address is local)."""
    return f"127.1.{n // 250}.{n % 250 + 1}"


def _fleet(servers: int, latency: float, port_out, stop) -> None:
    from testbed.bbb import FakeBBBFleet
    from testbed.world import RUNNING, World

    class BenchWorld(World):
        def domain(self, slot: int) -> str:
            return host_of(slot)

    world = BenchWorld(slots=servers, bbb_secret=SECRET)
    image = world.add_image("bench")
    with world.lock:
        for h in world.bbb_hosts.values():
            vm = world.create_vm(world.hostname(h.slot), "PRO2-M", image.id, [])
            vm.state, vm.running_since = RUNNING, world.now() - 3600
    world.faults["bbb"].latency_seconds = latency
    fleet = FakeBBBFleet(world).start()
    port_out.put(fleet.port)
    stop.wait()
    fleet.stop()


def _scraper(url_in, results_out, scrapes: int, gap: float) -> None:
    """Child process: scrapes url (from url_in) `scrapes` times, `gap` apart; sends back the latencies."""
    url = url_in.get(timeout=600)
    session = requests.Session()
    latencies, size, bad = [], 0, 0
    for _ in range(scrapes):
        t0 = time.perf_counter()
        r = session.get(url, headers={"Accept": PROMETHEUS_ACCEPT}, timeout=10)
        body = r.content  # decompressed, as Prometheus does before parsing
        latencies.append(time.perf_counter() - t0)
        bad += r.status_code != 200 or not body.endswith(b"# EOF\n")
        size = len(body)
        time.sleep(gap)
    results_out.put((latencies, size, bad, r.headers.get("Content-Type", "")))


class _List:
    def __init__(self, servers: list[ScaleliteServer]):
        self.servers = servers

    def get_servers(self) -> list[ScaleliteServer]:
        return list(self.servers)


def _pool(servers: int, port: int, timeout: float) -> PoolSources:
    entries = [ScaleliteServer(id=str(n), url=f"http://{host_of(n)}:{port}/bigbluebutton/api", secret=SECRET,
                               state=ScaleliteState.ENABLED, online=True, load=0.0) for n in range(1, servers + 1)]
    by_host = {host_of(n): n for n in range(1, servers + 1)}
    return PoolSources(
        name="bench", scalelite=_List(entries),
        bbb_client=lambda s: BBBClient(s.url, s.secret, timeout_seconds=timeout, algorithm="sha256",
                                       session=session_for(s.url)),
        slot_of_host=by_host.get, slot_of_name=lambda name: None, slot_domain=host_of)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _best_of(n: int, fn) -> float:
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _cycle(poller: Poller) -> tuple[float, int]:
    t0 = time.perf_counter()
    snap = poller.poll_once()
    seconds = time.perf_counter() - t0
    up = sum(1 for s in snap.pools[0].servers if s.bbb.up)
    return seconds, up


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", type=int, default=500)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--scrapes", type=int, default=500)
    ap.add_argument("--gap", type=float, default=0.02, help="seconds between two scrapes")
    ap.add_argument("--skip-sequential", action="store_true", help="skip the one-after-another run")
    args = ap.parse_args(argv)

    ctx = mp.get_context("fork")  # both children forked before this process starts any thread
    port_q, stop = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=_fleet, args=(args.servers, args.latency, port_q, stop), daemon=True)
    child.start()
    url_q, result_q = ctx.Queue(), ctx.Queue()
    scraper = ctx.Process(target=_scraper, args=(url_q, result_q, args.scrapes, args.gap), daemon=True)
    scraper.start()
    rows: list[tuple[str, str, str]] = []
    try:
        port = port_q.get(timeout=120)
        rss_before = _rss_mb()
        poller = Poller([_pool(args.servers, port, 5.0)], interval_seconds=30, concurrency=args.concurrency,
                        timeout_seconds=5.0)
        _cycle(poller)  # warm-up: connections opened, clients built
        cycles = [_cycle(poller) for _ in range(3)]
        best = min(c[0] for c in cycles)
        bound = 1.5 * math.ceil(args.servers / args.concurrency) * args.latency
        worst = max(c[0] for c in cycles)
        rows.append((f"poll cycle, concurrency {args.concurrency} (best / worst of 3)",
                     f"{best * 1000:.0f} / {worst * 1000:.0f} ms",
                     f"bound {bound * 1000:.0f} ms: {'OK' if worst <= bound else 'OVER'}"))
        rows.append(("servers up in the cycle", f"{min(c[1] for c in cycles)}/{args.servers}", ""))

        snap = poller.snapshot
        fast = _best_of(3, lambda: exposition.render(families(snap)))
        slow = _best_of(3, lambda: generate_latest(build_registry(lambda: snap)))
        samples = sum(len(f.rows) for f in families(snap))
        rows.append(("render one snapshot, text format", f"{fast * 1000:.0f} ms",
                     f"{samples} samples; prometheus-client registry: {slow * 1000:.0f} ms"))

        # /metrics while cycles run back to back (each cycle swaps in a new snapshot to render)
        current = lambda: poller.snapshot  # noqa: E731
        app = MetricsApp(build_registry(current), current, max_age_seconds=60)
        poller.on_snapshot = app.prerender  # as exporter.cli.start_exporter wires it
        prefer_scrapes()  # as exporter.cli.start_exporter does
        server = MetricsServer(app, "127.0.0.1", 0).start()
        stop_polling = threading.Event()
        polled = []

        def keep_polling() -> None:
            while not stop_polling.is_set():
                polled.append(_cycle(poller)[0])

        t = threading.Thread(target=keep_polling, daemon=True)
        t.start()
        url_q.put(server.url + "/metrics")
        latencies, size, bad, content_type = result_q.get(timeout=600)
        stop_polling.set()
        t.join()
        server.stop()
        q = statistics.quantiles(latencies, n=100)
        p99 = q[98]
        rows.append(("/metrics p50 / p99 / max while polling",
                     f"{q[49] * 1000:.1f} / {p99 * 1000:.1f} / {max(latencies) * 1000:.1f} ms",
                     f"p99 < 50 ms: {'OK' if p99 < 0.05 and not bad else 'OVER'}"))
        rows.append(("/metrics answers", f"{len(latencies)}, {bad} bad",
                     f"{size / 1024:.0f} KiB each, {content_type.split(';')[0]}, gzip; "
                     f"{len(polled)} cycles meanwhile, slowest {max(polled) * 1000:.0f} ms"))
        rss = _rss_mb()
        rows.append(("exporter resident memory", f"{rss:.0f} MB",
                     f"< 150 MB: {'OK' if rss < 150 else 'OVER'} (before polling: {rss_before:.0f} MB)"))
        poller.stop()

        if not args.skip_sequential:
            seq = Poller([_pool(args.servers, port, 5.0)], interval_seconds=600, concurrency=1,
                         timeout_seconds=5.0)
            seq_seconds, _ = _cycle(seq)
            seq.stop()
            rows.append(("poll cycle, one after another", f"{seq_seconds * 1000:.0f} ms",
                         f"ratio {seq_seconds / best:.1f}x slower than concurrency {args.concurrency}"))
    finally:
        stop.set()
        for proc in (child, scraper):
            proc.join(timeout=20)
            if proc.is_alive():
                proc.terminate()

    load1, load5, _ = os.getloadavg()
    print(f"divims exporter benchmark: {args.servers} BBB servers answering after "
          f"{args.latency * 1000:.0f} ms, concurrency {args.concurrency}; {os.cpu_count()} CPUs, "
          f"load average {load1:.1f} (1 min) {load5:.1f} (5 min) at the end")
    print("the fake fleet and the scraper run in child processes; the exporter's process holds only the "
          "exporter (poller, renderer, waitress)")
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | value | check |")
    print(f"|{'-' * (width + 2)}|-------|-------|")
    for name, val, check in rows:
        print(f"| {name.ljust(width)} | {val} | {check} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
