"""Benchmark of the alert webhook: N notifications of A alerts each from S concurrent senders.

The receiver runs as `divims webhook` does (waitress, SQLite WAL, synchronous=FULL) in its own process;
the senders run in a few processes of threads, each a keep-alive HTTP session as Alertmanager uses.
Prints a short table: status counts, latency percentiles, throughput, and whether the store's count
matches what was sent (nothing lost, nothing duplicated).

    .venv/bin/python -m bench.bench_webhook                      # 5,000 x 10 alerts, 50 senders
    .venv/bin/python -m bench.bench_webhook --small              # 300 x 10 alerts, 10 senders (seconds)
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import selectors
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from alerting.cli import DEFAULT_THREADS, DEFAULT_WORKERS, SINGLE_PROCESS_THREADS

TOKEN = "bench-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp: Path, port: int) -> Path:
    db = tmp / "webhook.sqlite"
    config = tmp / "divims.yml"
    config.write_text(f"""
pools:
  - name: bench
    scalelite: {{url: "https://scalelite.bench.test", secret: "bench-scalelite-secret"}}
    scaleway: {{zone: fr-par-1, project_id: 11111111-2222-3333-4444-555555555555, image: img,
               commercial_type: GP1-S, hostname_template: "bbb-{{n}}", domain_template: "bbb-{{n}}.bench.test"}}
    size: {{max: 10}}
alerting:
  webhook: {{listen: "127.0.0.1:{port}", token: "{TOKEN}", database: "{db}"}}
  actions:
    - {{match: {{alertname: BenchScaleOut}}, action: scale_out, servers: 1, for: 10m}}
logging: {{level: WARNING}}
""")
    config.chmod(0o600)
    return config


def notification(sender: int, seq: int, alerts: int) -> bytes:
    items = []
    for i in range(alerts):
        fp = f"{sender:03d}{seq:06d}{i:03d}"
        items.append({"status": "firing",
                      "labels": {"alertname": "BenchAlert", "severity": "warning", "pool": "bench",
                                 "server": f"bbb-{i}.bench.test", "sender": str(sender), "seq": str(seq)},
                      "annotations": {"summary": "bench alert", "description": "x" * 120},
                      "startsAt": "2026-03-01T10:00:00.000Z", "endsAt": "0001-01-01T00:00:00Z",
                      "generatorURL": "http://prometheus.bench/graph", "fingerprint": fp})
    body = {"receiver": "divims", "status": "firing", "alerts": items, "groupLabels": {"alertname": "BenchAlert"},
            "commonLabels": {"alertname": "BenchAlert"}, "commonAnnotations": {}, "externalURL": "http://am",
            "version": "4", "groupKey": f"{{}}:{{sender=\"{sender}\"}}", "truncatedAlerts": 0}
    return json.dumps(body).encode()


def sender_process(url: str, senders: list[int], per_sender: int, alerts: int, out: mp.Queue,
                   start: Any) -> None:
    """Runs its share of the senders as threads; puts (latencies, statuses, CPU seconds) on `out`.
    Builds its requests and connects first, then waits at the `start` barrier with the other sender
    processes and the clock: the measured window holds sending only.

    Each sender is one keep-alive connection (as Alertmanager keeps one per receiver) on http.client:
    `requests` costs about a millisecond of CPU per call, and on a 2-core machine the senders' CPU is
    taken from the server being measured (Alertmanager, in Go, costs far less)."""
    parsed = urlsplit(url)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    bodies = {s: [notification(s, q, alerts) for q in range(per_sender)] for s in senders}
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    connections = {}
    for sender in senders:
        connections[sender] = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
        connections[sender].connect()

    def one(sender: int) -> None:
        conn = connections[sender]
        mine, codes = [], {}
        for body in bodies[sender]:
            t = time.perf_counter()
            try:
                conn.request("POST", parsed.path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                code = str(response.status)
            except (OSError, http.client.HTTPException) as exc:
                code = type(exc).__name__
                conn.close()  # reconnects on the next request
            mine.append(time.perf_counter() - t)
            codes[code] = codes.get(code, 0) + 1
        conn.close()
        with lock:
            latencies.extend(mine)
            for k, v in codes.items():
                statuses[k] = statuses.get(k, 0) + v

    threads = [threading.Thread(target=one, args=(s,)) for s in senders]
    start.wait()
    cpu = time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((latencies, statuses, time.process_time() - cpu))


def _content_length(header: bytes) -> int:
    """The Content-Length of a response header block (0 when it has none)."""
    for line in header.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def lean_sender_process(url: str, senders: list[int], per_sender: int, alerts: int, out: mp.Queue,
                        start: Any) -> None:
    """Like `sender_process`, with a load generator that costs the shared cores as little as it can:
    one thread drives all its connections from epoll, each request is one prebuilt buffer sent with
    one `send`, and a response is read only as far as its status and Content-Length (waitress always
    sends Content-Length here). Still one keep-alive connection per sender, closed loop, latency from
    the first byte sent to the last byte of the response received."""
    parsed = urlsplit(url)
    head = (f"POST {parsed.path} HTTP/1.1\r\nHost: {parsed.hostname}:{parsed.port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
            "User-Agent: divims-bench\r\nContent-Length: ").encode()
    requests_of = {s: [head + str(len(b)).encode() + b"\r\n\r\n" + b
                       for b in (notification(s, q, alerts) for q in range(per_sender))] for s in senders}
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    selector = selectors.DefaultSelector()

    def connect(sender: int) -> socket.socket:
        sock = socket.create_connection((parsed.hostname, parsed.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def send_next(entry: list) -> None:
        sender, sock = entry[0], entry[1]
        if entry[2] >= per_sender:
            selector.unregister(sock)
            sock.close()
            return
        entry[3], entry[4] = time.perf_counter(), b""
        sock.sendall(requests_of[sender][entry[2]])  # a few KB: fits the socket buffer at once

    def count(code: str, started: float) -> None:
        latencies.append(time.perf_counter() - started)
        statuses[code] = statuses.get(code, 0) + 1

    entries = []
    for sender in senders:
        sock = connect(sender)
        entry = [sender, sock, 0, 0.0, b""]  # sender, socket, next request index, started, buffer
        selector.register(sock, selectors.EVENT_READ, entry)
        entries.append(entry)
    start.wait()
    cpu = time.process_time()
    for entry in entries:
        send_next(entry)
    while selector.get_map():
        for key, _ in selector.select(timeout=30):
            entry = key.data
            sock = entry[1]
            try:
                chunk = sock.recv(65536)
            except OSError as exc:
                chunk, error = b"", type(exc).__name__
            else:
                error = "ConnectionClosed"
            if not chunk:  # the server closed the connection (or failed): count it, reconnect, go on
                count(error, entry[3])
                selector.unregister(sock)
                sock.close()
                entry[1] = connect(entry[0])
                selector.register(entry[1], selectors.EVENT_READ, entry)
                entry[2] += 1
                send_next(entry)
                continue
            buffer = entry[4] + chunk
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                entry[4] = buffer
                continue
            size = end + 4 + _content_length(buffer[:end])
            if len(buffer) < size:
                entry[4] = buffer
                continue
            count(buffer[9:12].decode(), entry[3])
            entry[2] += 1
            send_next(entry)
    out.put((latencies, statuses, time.process_time() - cpu))


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process `pid` (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU time of process `pid` and its live children (the webhook's workers), None when unknown."""
    own = process_cpu_seconds(pid)
    if own is None:
        return None
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return own + sum(process_cpu_seconds(int(c)) or 0.0 for c in children)


def load_text() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"


def speed_probe_ms() -> float:
    """Milliseconds for a fixed piece of pure-Python work (best of 5): this shared machine's speed
    drifts by tens of percent over an hour, and runs are only comparable at a similar probe."""
    import timeit

    return min(timeit.repeat("sum(range(100000))", number=100, repeat=5)) * 10


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


SENDERS = {"lean": lean_sender_process, "http.client": sender_process}


def run(notifications: int, alerts: int, senders: int, processes: int, threads: int,
        workers: int = DEFAULT_WORKERS, client: str = "lean") -> dict:
    with tempfile.TemporaryDirectory(prefix="divims-bench-") as tmpdir:
        tmp = Path(tmpdir)
        port = free_port()
        config = write_config(tmp, port)
        server = subprocess.Popen([sys.executable, "-m", "alerting.cli", "--config", str(config),
                                   "--threads", str(threads), "--workers", str(workers)],
                                  cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.DEVNULL,
                                  stderr=(tmp / "webhook.log").open("w"))
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if requests.get(f"{base}/healthz", timeout=2).ok:
                        break
                except (requests.ConnectionError, requests.Timeout):  # workers still starting
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the webhook did not start:\n" + (tmp / "webhook.log").read_text())
                time.sleep(0.1)
            per_sender = notifications // senders
            load_before = load_text()
            probe = speed_probe_ms()
            groups = [g for g in (list(range(senders))[i::processes] for i in range(processes)) if g]
            out: mp.Queue = mp.Queue()
            start = mp.Barrier(len(groups) + 1)
            procs = [mp.Process(target=SENDERS[client],
                                args=(f"{base}/alertmanager", g, per_sender, alerts, out, start)) for g in groups]
            for p in procs:
                p.start()
            start.wait(60)  # every sender has built its requests and connected
            cpu_before = tree_cpu_seconds(server.pid)
            started = time.perf_counter()
            results = [out.get() for _ in procs]
            for p in procs:
                p.join()
            elapsed = time.perf_counter() - started
            cpu_after = tree_cpu_seconds(server.pid)
            load_after = load_text()
        finally:
            server.terminate()
            server.wait(15)
        latencies = [x for lat, _, _ in results for x in lat]
        statuses: dict[str, int] = {}
        for _, st, _ in results:
            for k, v in st.items():
                statuses[k] = statuses.get(k, 0) + v
        with sqlite3.connect(tmp / "webhook.sqlite") as db:
            stored = db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
        sent = per_sender * senders
        return {"notifications": sent, "alerts_sent": sent * alerts, "alerts_stored": stored,
                "statuses": statuses, "seconds": elapsed, "per_second": sent / elapsed,
                "p50_ms": percentile(latencies, 50) * 1000, "p95_ms": percentile(latencies, 95) * 1000,
                "p99_ms": percentile(latencies, 99) * 1000, "max_ms": max(latencies) * 1000,
                "mean_ms": statistics.fmean(latencies) * 1000, "load_before": load_before,
                "load_after": load_after, "probe_ms": probe,
                "server_cpu_ms": None if cpu_before is None or cpu_after is None
                else (cpu_after - cpu_before) / sent * 1000,
                "senders_cpu_ms": sum(cpu for _, _, cpu in results) / sent * 1000}


def _one_line(r: dict) -> str:
    return (f"{r['per_second']:.0f}/s, p50 {r['p50_ms']:.1f} p99 {r['p99_ms']:.1f} ms, "
            f"{', '.join(f'{k}: {v}' for k, v in sorted(r['statuses'].items()))}, "
            f"{r['alerts_stored']}/{r['alerts_sent']} stored, probe {r['probe_ms']:.2f} ms")


def _medians(runs: list[dict]) -> dict:
    """One result of several runs: the median of each figure, the statuses and counts summed."""
    out = {k: statistics.median(x[k] for x in runs) for k in runs[0]
           if all(isinstance(x[k], (int, float)) for x in runs)}  # None (a figure unknown) in any: left out
    out["statuses"] = {}
    for x in runs:
        for k, v in x["statuses"].items():
            out["statuses"][k] = out["statuses"].get(k, 0) + v
    out["alerts_sent"] = sum(x["alerts_sent"] for x in runs)
    out["alerts_stored"] = sum(x["alerts_stored"] for x in runs)
    out["seconds"] = sum(x["seconds"] for x in runs)
    out.setdefault("server_cpu_ms", None)
    for key in ("load_before", "load_after"):
        out[key] = f"{runs[0][key]} (first run); {runs[-1][key]} (last)"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notifications", type=int, default=5000)
    parser.add_argument("--alerts", type=int, default=10, help="alerts per notification")
    parser.add_argument("--senders", type=int, default=50, help="concurrent senders")
    parser.add_argument("--processes", type=int, default=min(4, os.cpu_count() or 2),
                        help="sender processes (the senders are threads spread over them)")
    parser.add_argument("--threads", type=int, default=None,
                        help="waitress threads per receiver process (default: as divims webhook,"
                             f" {DEFAULT_THREADS} per worker, {SINGLE_PROCESS_THREADS} with --workers 1)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help=f"receiver processes (default {DEFAULT_WORKERS}, as divims webhook)")
    parser.add_argument("--client", choices=sorted(SENDERS), default="lean",
                        help="the senders' HTTP client: lean (epoll, prebuilt requests: the least CPU taken from"
                             " the receiver's cores) or http.client (a thread per sender; default lean)")
    parser.add_argument("--small", action="store_true", help="300 notifications from 10 senders")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs, each on a fresh receiver; the table shows their medians and the verdict"
                             " takes the median p99 (this shared machine's speed drifts between runs)")
    args = parser.parse_args(argv)
    if args.threads is None:
        args.threads = SINGLE_PROCESS_THREADS if args.workers == 1 else DEFAULT_THREADS
    if args.small:
        args.notifications, args.senders = 300, 10
    if args.repeat < 1:
        parser.error(f"--repeat: expected at least 1, got {args.repeat}")
    runs = []
    for i in range(args.repeat):
        runs.append(run(args.notifications, args.alerts, args.senders, args.processes, args.threads, args.workers,
                        args.client))
        if args.repeat > 1:
            print(f"run {i + 1}/{args.repeat}: {_one_line(runs[-1])}", flush=True)
    r = runs[0] if len(runs) == 1 else _medians(runs)
    no_5xx = not any(k.startswith("5") or not k.isdigit() for x in runs for k in x["statuses"])
    lost = sum(x["alerts_sent"] - x["alerts_stored"] for x in runs)
    spread = "" if len(runs) == 1 else (f" (median of {len(runs)}; p99 {min(x['p99_ms'] for x in runs):.1f}"
                                        f" to {max(x['p99_ms'] for x in runs):.1f})")
    rows = [
        ("notifications x alerts", f"{runs[0]['notifications']} x {args.alerts} from {args.senders} senders"
                                   + (f", {len(runs)} runs" if len(runs) > 1 else "")),
        ("HTTP statuses", ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))),
        ("alerts sent / stored", f"{r['alerts_sent']} / {r['alerts_stored']} ({'none lost' if lost == 0 else f'{lost} lost'})"),
        ("throughput", f"{r['per_second']:.0f} notifications/s over {r['seconds']:.1f} s"
                       + (" (median; the seconds of all runs)" if len(runs) > 1 else "")),
        ("latency p50 / p95 / p99", f"{r['p50_ms']:.1f} / {r['p95_ms']:.1f} / {r['p99_ms']:.1f} ms{spread}"),
        ("latency mean / max", f"{r['mean_ms']:.1f} / {r['max_ms']:.1f} ms"),
        ("server CPU per notification", "unknown" if r["server_cpu_ms"] is None else f"{r['server_cpu_ms']:.2f} ms"),
        ("senders' CPU per notification", f"{r['senders_cpu_ms']:.2f} ms ({args.client}, same machine)"),
        ("receiver processes x threads", f"{args.workers} x {args.threads}"),
        ("machine load before", r["load_before"]),
        ("machine speed probe", f"{r['probe_ms']:.2f} ms (sum(range(100000)), lower is faster)"),
        ("machine load after", r["load_after"]),
        ("verdict", "PASS" if no_5xx and lost == 0 and r["p99_ms"] < 100 else "FAIL (goal: no 5xx, none lost, p99 < 100 ms)"),
    ]
    if len(runs) > 1:
        rows[-1:-1] = [("machine speed probe, each run", ", ".join(f"{x['probe_ms']:.2f}" for x in runs) + " ms")]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0 if no_5xx and lost == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
