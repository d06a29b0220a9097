"""Benchmark of the exporter's poll loop (issue 3): N fake BBB servers that each answer after 100 ms.

    .venv/bin/python -m bench.bench_exporter [--servers 500] [--latency 0.1] [--concurrency 64]

Measures, and prints as a table:
- one poll cycle with bounded concurrency (Poller.poll_once in this process), against the bound
  1.5 x ceil(N / concurrency) x latency;
- the same servers polled one after another (concurrency 1), and the ratio;
- /metrics latency (p50, p99, max) over HTTP while poll cycles run back to back in the exporter's poll
  process (exporter.poll_process, as `divims exporter` runs), asked for as Prometheus asks (OpenMetrics
  preferred, gzip), and the same with no poll running, as a control for the machine's own noise;
- the time to render one snapshot, with exporter.exposition and with the prometheus-client registry;
- the exporter's resident memory (serving process + poll process).

As in a deployment, the exporter's processes hold only the exporter: the fake fleet (testbed.bbb.FakeBBBFleet, real
HTTP on one loopback address per server) runs in a child process, and so does the scraper (Prometheus is
another process too), so neither competes with the exporter for its GIL nor counts in its memory. The
poller uses the real BBB client. Scalelite's server list is handed in directly: this measures the BBB
fan-out.
"""

from __future__ import annotations

import argparse
import functools
import math
import multiprocessing as mp
import os
import statistics
import time

import requests
from prometheus_client import generate_latest

from divims.clients.bbb import BBBClient
from divims.model import ScaleliteServer, ScaleliteState
from exporter import exposition
from exporter.collector import families
from exporter.poll import Poller, PoolSources, session_for
from exporter.poll_process import PollProcess
from exporter.server import MetricsApp, MetricsServer, build_registry, prefer_scrapes

# What Prometheus 2.x/3.x sends (scrape_protocols default): OpenMetrics first, then the text format.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
                     "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")

SECRET = "bench-secret-0123456789abcdef"


def host_of(n: int) -> str:
    """Slot n's loopback address: 127.1.x.y, unique for n up to 62,500 (every 127/8 address is local)."""
    return f"127.1.{n // 250}.{n % 250 + 1}"


def _fleet(servers: int, latency: float, meetings: int, port_out, stop) -> None:
    from testbed.bbb import FakeBBBFleet
    from testbed.world import RUNNING, FakeMeeting, World

    class BenchWorld(World):
        def domain(self, slot: int) -> str:
            return host_of(slot)

    world = BenchWorld(slots=servers, bbb_secret=SECRET)
    image = world.add_image("bench")
    with world.lock:
        for h in world.bbb_hosts.values():
            vm = world.create_vm(world.hostname(h.slot), "PRO2-M", image.id, [])
            vm.state, vm.running_since = RUNNING, world.now() - 3600
            for i in range(meetings):  # so that each getMeetings answer has meetings to parse
                mid = world.new_id()
                h.meetings[mid] = FakeMeeting(meeting_id=mid, internal_meeting_id=world.new_id(),
                                              name=f"Course {i}", create_time=world.now() - 600,
                                              participants=10 + i, moderators=1, listeners=3, voice=5,
                                              video=2)
    world.faults["bbb"].latency_seconds = latency
    fleet = FakeBBBFleet(world).start()
    port_out.put(fleet.port)
    stop.wait()
    fleet.stop()


def _scraper(url_in, results_out, scrapes: int, gap: float) -> None:
    """Child process: for each url from url_in (None: stop), scrapes it `scrapes` times, `gap` apart, and
    sends back the latencies."""
    session = requests.Session()
    while (url := url_in.get(timeout=600)) is not None:
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


def _quantiles(latencies: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(latencies, n=100)
    return q[49], q[98], max(latencies)


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


def _pools(servers: int, port: int, timeout: float) -> list[PoolSources]:
    """The poll process' sources (built in that process: PollProcess pickles only this call)."""
    return [_pool(servers, port, timeout)]


def _rss_mb(pid: int | None = None) -> float:
    with open(f"/proc/{pid or 'self'}/status") as f:
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
    ap.add_argument("--meetings", type=int, default=3, help="meetings on each fake server")
    ap.add_argument("--scrapes", type=int, default=500)
    ap.add_argument("--gap", type=float, default=0.02, help="seconds between two scrapes")
    ap.add_argument("--skip-sequential", action="store_true", help="skip the one-after-another run")
    args = ap.parse_args(argv)

    ctx = mp.get_context("fork")  # both children forked before this process starts any thread
    port_q, stop = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=_fleet, args=(args.servers, args.latency, args.meetings, port_q, stop), daemon=True)
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
        cycles = [_cycle(poller) for _ in range(5)]
        seconds = sorted(c[0] for c in cycles)
        best, median = seconds[0], statistics.median(seconds)
        bound = 1.5 * math.ceil(args.servers / args.concurrency) * args.latency
        rows.append((f"poll cycle, concurrency {args.concurrency} (best / median / worst of 5)",
                     " / ".join(f"{v * 1000:.0f}" for v in (best, median, seconds[-1])) + " ms",
                     f"bound {bound * 1000:.0f} ms: median {'OK' if median <= bound else 'OVER'}, "
                     f"{sum(v <= bound for v in seconds)}/5 within"))
        rows.append(("servers up in the cycle", f"{min(c[1] for c in cycles)}/{args.servers}", ""))

        snap = poller.snapshot
        poller.stop()
        fast = _best_of(3, lambda: exposition.render(families(snap)))
        slow = _best_of(3, lambda: generate_latest(build_registry(lambda: snap)))
        samples = sum(len(f.rows) for f in families(snap))
        rows.append(("render one snapshot, text format", f"{fast * 1000:.0f} ms",
                     f"{samples} samples; prometheus-client registry: {slow * 1000:.0f} ms"))

        # /metrics as exporter.cli.start_exporter wires it: polls in a child process (PollProcess),
        # snapshots pre-rendered here, waitress serving bytes. The interval is the bound (a cycle's budget
        # is its interval): cycles start every 1.2 s, or at once after a slower one.
        holder: dict[str, object] = {"poller": None}

        def current():
            running = holder["poller"]
            return running.snapshot if running is not None else snap

        app = MetricsApp(build_registry(current), current, max_age_seconds=60)
        prefer_scrapes()
        server = MetricsServer(app, "127.0.0.1", 0).start()
        # Control: the same scrapes with no poll running show what this machine's load alone costs.
        app.prerender(snap)
        url_q.put(server.url + "/metrics")
        idle = _quantiles(result_q.get(timeout=600)[0])

        polled: list[tuple[float, int]] = []

        def received(new) -> None:
            app.prerender(new)
            polled.append((new.cycle_seconds, sum(1 for s in new.pools[0].servers if s.bbb.up)))

        proc_poller = PollProcess(functools.partial(_pools, args.servers, port, 5.0), on_snapshot=received,
                                  interval_seconds=bound, concurrency=args.concurrency, timeout_seconds=5.0)
        proc_poller.start()
        holder["poller"] = proc_poller
        while proc_poller.cycles < 2:  # the child's first cycle opens its connections
            time.sleep(0.05)
        polled.clear()
        url_q.put(server.url + "/metrics")
        began = time.perf_counter()
        latencies, size, bad, content_type = result_q.get(timeout=600)
        elapsed = time.perf_counter() - began
        rss = _rss_mb()
        rss_child = _rss_mb(proc_poller.pid)
        proc_poller.stop()
        server.stop()
        p50, p99, top = _quantiles(latencies)
        rows.append(("/metrics p50 / p99 / max while polling", f"{p50 * 1000:.1f} / {p99 * 1000:.1f} / "
                     f"{top * 1000:.1f} ms", f"p99 < 50 ms: {'OK' if p99 < 0.05 and not bad else 'OVER'}"))
        rows.append(("/metrics p50 / p99 / max, no poll running", " / ".join(f"{v * 1000:.1f}" for v in idle)
                     + " ms", "control: the machine's own noise"))
        rows.append(("/metrics answers", f"{len(latencies)}, {bad} bad",
                     f"{size / 1024:.0f} KiB each, {content_type.split(';')[0]}, gzip"))
        spent = [c[0] for c in polled]
        rows.append(("poll cycles meanwhile (in the poll process)", f"{len(polled)}",
                     f"median {statistics.median(spent) * 1000:.0f} ms, slowest {max(spent) * 1000:.0f} ms, "
                     f"polling {min(1.0, sum(spent) / elapsed):.0%} of the time, "
                     f"at least {min(c[1] for c in polled)}/{args.servers} servers up"))
        total = rss + rss_child
        rows.append(("exporter resident memory (serving + poll process)",
                     f"{rss:.0f} + {rss_child:.0f} = {total:.0f} MB",
                     f"< 150 MB: {'OK' if total < 150 else 'OVER'} (serving process before polling: "
                     f"{rss_before:.0f} MB)"))

        if not args.skip_sequential:
            seq = Poller([_pool(args.servers, port, 5.0)], interval_seconds=600, concurrency=1,
                         timeout_seconds=5.0)
            seq_seconds, _ = _cycle(seq)
            seq.stop()
            rows.append(("poll cycle, one after another", f"{seq_seconds * 1000:.0f} ms",
                         f"ratio {seq_seconds / median:.1f}x the median cycle at concurrency {args.concurrency}"))
    finally:
        url_q.put(None)
        stop.set()
        for proc in (child, scraper):
            proc.join(timeout=20)
            if proc.is_alive():
                proc.terminate()

    load1, load5, _ = os.getloadavg()
    print(f"divims exporter benchmark: {args.servers} BBB servers answering after "
          f"{args.latency * 1000:.0f} ms with {args.meetings} meetings each, concurrency {args.concurrency}; "
          f"{os.cpu_count()} CPUs, "
          f"load average {load1:.1f} (1 min) {load5:.1f} (5 min) at the end")
    print("the fake fleet and the scraper run in processes of their own; the exporter is its serving process "
          "(renderer, waitress) and its poll process (exporter.poll_process), as `divims exporter` runs it")
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | value | check |")
    print(f"|{'-' * (width + 2)}|-------|-------|")
    for name, val, check in rows:
        print(f"| {name.ljust(width)} | {val} | {check} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
