"""`divims webhook --workers N`: several receiver processes on one port and one SQLite file.

The store's "one record per occurrence, replays change nothing" and the queue's "at most once per
alert occurrence" must hold across processes (they rest on SQLite transactions and constraints, not on
in-process locks); /metrics must count every worker's requests; a dead worker is restarted; SIGTERM
stops them all."""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import requests
import yaml
from alerting_fixtures import TOKEN, alert, auth_headers, notification, pool_dict

from alerting.payload import parse_notification
from alerting.requests import RequestQueue
from alerting.store import AlertStore

ROOT = Path(__file__).resolve().parent.parent
ALERTS = 12


def _alerts(status: str) -> list[dict]:
    return [alert(f"Dup{i}", status=status, pool="p1", fingerprint=f"fp{i:03d}") for i in range(ALERTS)]


def _hammer(path: str, go, out) -> None:
    """One process: records the same firing then resolved notification 5 times, submits and claims
    the same requests, as fast as it can once `go` is set."""
    store, queue = AlertStore(path), RequestQueue(path)
    firing = parse_notification(notification(*_alerts("firing"))).alerts
    resolved = parse_notification(notification(*_alerts("resolved"))).alerts
    kinds: list[str] = []
    submits: list[tuple[str, int, str]] = []
    claims: list[int] = []
    go.wait(10)
    for _ in range(5):
        kinds += [c.kind for c in store.record(firing)]
        for a in firing:
            r = queue.submit(pool="p1", action="scale_out", fingerprint=a.fingerprint, starts_at=a.starts_at.text,
                             servers=1, for_seconds=600)
            submits.append((a.fingerprint, r.id, r.status.value))
        claims += [r.id for r in queue.pending("p1") if queue.claim(r.id)]
        kinds += [c.kind for c in store.record(resolved)]
    out.put((kinds, submits, claims))
    store.close()
    queue.close()


def test_replays_and_requests_stay_once_per_occurrence_across_processes(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    AlertStore(path).close()
    RequestQueue(path).close()
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(path, go, out)) for _ in range(3)]
    for p in procs:
        p.start()
    go.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    kinds = Counter(k for r in results for k in r[0])
    # each occurrence: new once, resolved once, everything else (3 processes x 5 rounds x 2) a replay
    assert kinds == {"new": ALERTS, "transition": ALERTS, "unchanged": ALERTS * (3 * 5 * 2 - 2)}
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == ALERTS
        assert db.execute("SELECT COUNT(*) FROM alerts WHERE status='resolved'").fetchone()[0] == ALERTS
        assert db.execute("SELECT SUM(json_array_length(transitions)) FROM alerts").fetchone()[0] == 2 * ALERTS
        assert db.execute("SELECT COUNT(*) FROM action_requests").fetchone()[0] == ALERTS
    submits = [s for r in results for s in r[1]]
    assert Counter(st for _, _, st in submits) == {"submitted": ALERTS, "duplicate": ALERTS * (3 * 5 - 1)}
    ids = {fp: {i for f, i, _ in submits if f == fp} for fp, _, _ in submits}
    assert all(len(v) == 1 for v in ids.values())  # every duplicate names the first one's id
    claims = [c for r in results for c in r[2]]
    assert sorted(claims) == sorted(next(iter(v)) for v in ids.values())  # each claimed exactly once


def _all_children(pid: int) -> set[int]:
    try:
        return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def _is_writer(pid: int) -> bool:
    try:
        return b"--writer" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


def _children(pid: int) -> set[int]:
    """The supervisor's worker processes (not its writer)."""
    return {c for c in _all_children(pid) if not _is_writer(c)}


def _writer(pid: int) -> int | None:
    return next((c for c in _all_children(pid) if _is_writer(c)), None)


def _firing_total(base: str) -> float:
    text = requests.get(f"{base}/metrics", timeout=5).text
    m = re.search(r'^divims_webhook_notifications_total\{status="firing"\} (\S+)$', text, re.M)
    assert m, text
    return float(m.group(1))


def _per_worker_firing(metrics_dir: Path) -> dict[str, float]:
    """Each worker's own count, read from its prometheus multiprocess file."""
    from prometheus_client.mmap_dict import MmapedDict

    counts = {}
    for f in metrics_dir.glob("counter_*.db"):
        counts[f.name] = sum(v for key, v, *_ in MmapedDict.read_all_values_from_file(str(f))
                             if '"divims_webhook_notifications_total"' in key and '"firing"' in key)
    return counts


def _held_by(pids: set[int], port: int) -> dict[int, int]:
    """How many established connections to `port` each process holds (Linux /proc)."""
    established = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 01: ESTABLISHED
            established.add(f"socket:[{fields[9]}]")
    held = {}
    for pid in pids:
        links = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                links.add(os.readlink(fd))
            except OSError:  # closed meanwhile
                pass
        held[pid] = len(links & established)
    return held


def _wait_healthy(base: str, proc: subprocess.Popen, workers: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the webhook workers did not start"
        if len(_children(proc.pid)) == workers:
            try:
                if requests.get(f"{base}/healthz", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
        time.sleep(0.1)


def _send_duplicates(url: str, body: dict, count: int, senders: int = 8) -> list[int]:
    """`count` POSTs of the same notification from `senders` threads, a new connection each (so
    that they spread over the workers accepting on the socket)."""
    codes: list[int] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        for _ in range(n):
            r = requests.post(url, json=body, headers={**auth_headers(), "Connection": "close"}, timeout=20)
            with lock:
                codes.append(r.status_code)

    threads = [threading.Thread(target=one, args=(count // senders,)) for _ in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return codes


def test_workers_split_the_connections_share_the_file_count_everything_restart_and_stop(tmp_path):
    from test_alerting_cli import free_port

    port = free_port()
    db = tmp_path / "w.sqlite"
    doc = {"pools": [pool_dict("p1")], "logging": {"level": "INFO"},
           "alerting": {"webhook": {"token": TOKEN, "database": str(db)},
                        "actions": [{"match": {"alertname": "Dup0"}, "action": "scale_out", "servers": 1,
                                     "for": "10m"}]}}
    config = tmp_path / "divims.yml"
    config.write_text(yaml.safe_dump(doc))
    config.chmod(0o600)
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "alerting.cli", "--config", str(config), "--listen",
                             f"127.0.0.1:{port}", "--workers", "2", "--threads", "4"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_healthy(base, proc, 2)
        first = _children(proc.pid)
        # Keep-alive connections (as Alertmanager's) opened at once spread over both workers: each
        # worker has its own SO_REUSEPORT socket. Under 8 of 40 by hash has a chance of about 1e-5.
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(40)]
        try:
            for c in clients:
                c.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert all(c.recv(4096).startswith(b"HTTP/1.1 200") for c in clients)
            held = _held_by(first, port)
            assert sum(held.values()) == 40 and min(held.values()) >= 8, held
        finally:
            for c in clients:
                c.close()
        metrics_dir = Path(dict(e.split("=", 1) for e in
                                Path(f"/proc/{min(first)}/environ").read_text().split("\0") if "=" in e)
                           ["PROMETHEUS_MULTIPROC_DIR"])
        body = notification(*_alerts("firing"))
        sent = 0
        for _ in range(10):  # until both workers have served some (the kernel picks the acceptor)
            codes = _send_duplicates(f"{base}/alertmanager", body, 24)
            assert codes == [200] * 24
            sent += 24
            per_worker = _per_worker_firing(metrics_dir)
            if sum(1 for v in per_worker.values() if v > 0) == 2:
                break
        assert sum(1 for v in per_worker.values() if v > 0) == 2, per_worker  # both workers served
        assert sum(per_worker.values()) == sent
        assert _firing_total(base) == sent  # whichever worker answers, all workers' requests

        victim = min(first)
        os.kill(victim, signal.SIGKILL)  # a crashed worker is replaced
        deadline = time.monotonic() + 30
        while not (len(_children(proc.pid)) == 2 and victim not in _children(proc.pid)):
            assert time.monotonic() < deadline, "the dead worker was not restarted"
            time.sleep(0.1)
        _wait_healthy(base, proc, 2)
        (fresh,) = _children(proc.pid) - first
        while not (metrics_dir / f"counter_{fresh}.db").exists():  # its app is built
            assert time.monotonic() < deadline, "the new worker did not start"
            time.sleep(0.1)
        codes = _send_duplicates(f"{base}/alertmanager", body, 16)
        assert codes == [200] * 16
        assert _firing_total(base) == sent + 16  # the dead worker's counts are kept

        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == ALERTS
            assert conn.execute("SELECT SUM(json_array_length(transitions)) FROM alerts").fetchone()[0] == ALERTS
            assert conn.execute("SELECT COUNT(*) FROM action_requests").fetchone()[0] == 1
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert not metrics_dir.exists()
    assert TOKEN not in out + err
    assert "with 2 workers" in err and "exited with -9, restarting" in err
    assert len(re.findall(r"webhook worker \d+: stopped", err)) == 2


def test_a_killed_writer_fails_requests_with_503_then_is_restarted_and_nothing_is_lost(tmp_path):
    """The writer process dies (SIGKILL) under load: each request either got 200 (then it is stored)
    or a 503 (Alertmanager retries); none hangs; the writer is restarted and the retries are stored
    once."""
    from test_alerting_cli import free_port

    port = free_port()
    db = tmp_path / "w.sqlite"
    doc = {"pools": [pool_dict("p1")], "logging": {"level": "INFO"},
           "alerting": {"webhook": {"token": TOKEN, "database": str(db)}}}
    config = tmp_path / "divims.yml"
    config.write_text(yaml.safe_dump(doc))
    config.chmod(0o600)
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "webhook.log"
    proc = subprocess.Popen([sys.executable, "-m", "alerting.cli", "--config", str(config), "--listen",
                             f"127.0.0.1:{port}", "--workers", "2", "--threads", "4"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))  # a file: a pipe fills up
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def sender(n: int) -> None:
        session = requests.Session()
        i = 0
        while not stop.is_set():
            body = notification(alert(f"Crash{n}", status="firing", pool="p1", fingerprint=f"c{n:02d}{i:05d}"))
            r = session.post(f"{base}/alertmanager", json=body, headers=auth_headers(), timeout=20)
            with lock:
                outcomes[body["alerts"][0]["fingerprint"]] = r.status_code
            if r.status_code != 200:  # as Alertmanager does: the same notification again, later
                time.sleep(0.05)
                continue
            i += 1

    try:
        _wait_healthy(base, proc, 2)
        writer = _writer(proc.pid)
        assert writer is not None
        threads = [threading.Thread(target=sender, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        os.kill(writer, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _writer(proc.pid) in (None, writer):
            assert time.monotonic() < deadline, "the writer was not restarted"
            time.sleep(0.05)
        fresh = _writer(proc.pid)
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), "a request hung"
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = log.read_text()
    assert fresh != writer
    assert set(outcomes.values()) <= {200, 503}, Counter(outcomes.values())
    assert "writer (pid" in err and "exited with -9, restarting" in err
    with sqlite3.connect(db) as conn:
        stored = {fp for (fp,) in conn.execute("SELECT fingerprint FROM alerts")}
        transitions = conn.execute("SELECT SUM(json_array_length(transitions)) FROM alerts").fetchone()[0]
    answered = {fp for fp, code in outcomes.items() if code == 200}
    assert answered and answered <= stored  # every 200 is stored
    assert len(stored) == transitions  # nothing recorded twice
    assert stored <= set(outcomes)  # nothing invented
