"""Benchmark of the exporter's poll loop (issue 3): N fake BBB servers that each answer after 100 ms.

    .venv/bin/python -m bench.bench_exporter [--servers 500] [--latency 0.1] [--concurrency 64]

Measures, and prints as a table:
- one poll cycle with bounded concurrency, against the bound 1.5 x ceil(N / concurrency) x latency;
- the same servers polled one after another (concurrency 1), and the ratio;
- /metrics latency (p50, p99, max) over HTTP while poll cycles run back to back;
- the exporter's resident memory (the fake fleet runs in a child process so it is not counted).

The fleet is testbed.bbb.FakeBBBFleet (real HTTP on one loopback address per server); the poller uses
the real BBB client. Scalelite's server list is handed in directly: this measures the BBB fan-out.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import statistics
import threading
import time

import requests

from divims.clients.bbb import BBBClient
from divims.model import ScaleliteServer, ScaleliteState
from exporter.poll import Poller, PoolSources, session_for
from exporter.server import MetricsApp, MetricsServer, build_registry

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
    ap.add_argument("--scrapes", type=int, default=300)
    ap.add_argument("--skip-sequential", action="store_true", help="skip the one-after-another run")
    args = ap.parse_args(argv)

    ctx = mp.get_context("fork")
    port_q, stop = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=_fleet, args=(args.servers, args.latency, port_q, stop), daemon=True)
    child.start()
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
        rows.append((f"poll cycle, concurrency {args.concurrency} (best of 3)", f"{best * 1000:.0f} ms",
                     f"bound {bound * 1000:.0f} ms: {'OK' if best <= bound else 'OVER'}"))
        rows.append(("servers up in the cycle", f"{min(c[1] for c in cycles)}/{args.servers}", ""))

        # /metrics while cycles run back to back (each cycle swaps in a new snapshot to render)
        current = lambda: poller.snapshot  # noqa: E731
        app = MetricsApp(build_registry(current), current, max_age_seconds=60)
        poller.on_snapshot = app.prerender  # as exporter.cli wires it
        server = MetricsServer(app, "127.0.0.1", 0).start()
        stop_polling = threading.Event()

        def keep_polling() -> None:
            while not stop_polling.is_set():
                poller.poll_once()

        t = threading.Thread(target=keep_polling, daemon=True)
        t.start()
        latencies = []
        session = requests.Session()
        size = 0
        for _ in range(args.scrapes):
            t0 = time.perf_counter()
            r = session.get(server.url + "/metrics", timeout=10)
            latencies.append(time.perf_counter() - t0)
            size = len(r.content)
            time.sleep(0.01)
        stop_polling.set()
        t.join()
        server.stop()
        q = statistics.quantiles(latencies, n=100)
        p99 = q[98]
        rows.append(("/metrics p50 / p99 / max while polling",
                     f"{q[49] * 1000:.1f} / {p99 * 1000:.1f} / {max(latencies) * 1000:.1f} ms",
                     f"p99 < 50 ms: {'OK' if p99 < 0.05 else 'OVER'}"))
        rows.append(("/metrics size", f"{size / 1024:.0f} KiB", f"{args.scrapes} scrapes"))
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
        child.join(timeout=20)
        if child.is_alive():
            child.terminate()

    print(f"divims exporter benchmark: {args.servers} BBB servers answering after "
          f"{args.latency * 1000:.0f} ms, concurrency {args.concurrency}")
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | value | check |")
    print(f"|{'-' * (width + 2)}|-------|-------|")
    for name, val, check in rows:
        print(f"| {name.ljust(width)} | {val} | {check} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
