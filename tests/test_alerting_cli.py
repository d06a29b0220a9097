"""`divims webhook` as a process (waitress), its exit codes, and the store's group commit."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml
from alerting_fixtures import TOKEN, alert, auth_headers, notification, pool_dict

from alerting.database import Database, StoreError

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, webhook: dict | None) -> Path:
    doc = {"pools": [pool_dict("p1")], "logging": {"level": "INFO"}}
    if webhook is not None:
        doc["alerting"] = {"webhook": webhook}
    path = tmp_path / "divims.yml"
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alerting.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_the_webhook_serves_and_stops_cleanly_on_sigterm(tmp_path):
    port = free_port()
    config = write_config(tmp_path, {"token": TOKEN, "database": str(tmp_path / "db" / "w.sqlite")})
    proc = subprocess.Popen([sys.executable, "-m", "alerting.cli", "--config", str(config),
                             "--listen", f"127.0.0.1:{port}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                    break
            except requests.RequestException:  # not listening yet, or still starting
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"the webhook did not start: {proc.communicate()}")
            time.sleep(0.1)
        r = requests.post(f"http://127.0.0.1:{port}/alertmanager", json=notification(alert("A")),
                          headers=auth_headers(), timeout=5)
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert TOKEN not in out + err
    assert "listening on" in err and "stopped" in err


@pytest.mark.parametrize("webhook, listen, code, message", [
    (None, None, 2, "alerting.webhook"),
    ({"token": TOKEN, "database": "/tmp/x.sqlite"}, "nowhere", 2, "--listen"),
    ({"auth": "bearer", "database": "/tmp/x.sqlite"}, None, 2, "token"),
])
def test_bad_configuration_exits_2_with_a_clear_message(tmp_path, webhook, listen, code, message):
    config = write_config(tmp_path, webhook)
    args = ["--config", str(config)] + (["--listen", listen] if listen else [])
    r = run_cli(*args)
    assert r.returncode == code
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_an_unwritable_database_exits_1(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = write_config(tmp_path, {"token": TOKEN, "database": str(blocker / "sub" / "w.sqlite")})
    r = run_cli("--config", str(config), "--listen", f"127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "database" in r.stderr and "Traceback" not in r.stderr


def test_group_commit_isolates_a_failing_caller(tmp_path):
    db = Database(tmp_path / "g.sqlite")
    db.executescript("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    results: dict[int, object] = {}
    barrier = threading.Barrier(12)

    def writer(i: int) -> None:
        barrier.wait()
        try:
            # caller 5 breaks the primary key: only its own insert is undone
            results[i] = db.batched(lambda c: c.execute("INSERT INTO t VALUES (?)", (0 if i == 5 else i + 1,))
                                    and (c.execute("INSERT INTO t VALUES (0)") if i == 5 else i))
        except StoreError as exc:
            results[i] = exc

    db.batched(lambda c: c.execute("INSERT INTO t VALUES (0)"))
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(results[5], StoreError)
    assert all(results[i] == i for i in range(12) if i != 5)
    rows = {r[0] for r in db.query("SELECT k FROM t")}
    assert rows == {0} | {i + 1 for i in range(12) if i != 5}
    db.close()


def test_group_commit_batches_the_callers_that_wait(tmp_path):
    """Callers arriving while a commit runs share the next one: 20 callers, 2 transactions."""
    db = Database(tmp_path / "g.sqlite")
    db.executescript("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    batches: list[int] = []
    run_batch = db._run_batch
    db._run_batch = lambda batch: (batches.append(len(batch)), run_batch(batch))[1]
    others_queued = threading.Event()

    def first(c):
        # hold the first commit open until the 19 others are queued behind it
        deadline = time.monotonic() + 10
        while len(db._batch) < 19 and time.monotonic() < deadline:
            time.sleep(0.005)
        others_queued.set()
        return c.execute("INSERT INTO t VALUES (0)").rowcount

    leader = threading.Thread(target=db.batched, args=(first,))
    leader.start()
    while not batches:
        time.sleep(0.001)
    threads = [threading.Thread(target=db.batched, args=(lambda c, i=i: c.execute("INSERT INTO t VALUES (?)", (i,)),))
               for i in range(1, 20)]
    for t in threads:
        t.start()
    for t in threads + [leader]:
        t.join(15)
    assert others_queued.is_set()
    assert batches == [1, 19]
    assert db.query("SELECT COUNT(*) FROM t")[0][0] == 20
    db.close()


def test_waitress_queue_warnings_are_rate_limited_not_lost():
    from alerting.cli import _AtMostEvery

    now = [100.0]
    limit = _AtMostEvery(10.0, clock=lambda: now[0])

    def record(depth: int) -> logging.LogRecord:
        return logging.LogRecord("waitress.queue", logging.WARNING, __file__, 1, "Task queue depth is %d",
                                 (depth,), None)

    assert limit.filter(record(1))
    assert not any(limit.filter(record(d)) for d in range(2, 6))
    now[0] += 10.0
    last = record(9)
    assert limit.filter(last)
    assert last.getMessage() == "Task queue depth is 9 (4 similar warnings in the last 10 s)"


def _accepted_per_socket(socks: list[socket.socket], connections: int) -> list[int]:
    """Opens `connections` connections to the sockets' port; how many each socket's queue received."""
    port = socks[0].getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(connections)]
    try:
        counts = []
        for sock in socks:
            sock.setblocking(False)
            n = 0
            while True:
                try:
                    peer, _ = sock.accept()
                except BlockingIOError:
                    break
                peer.close()
                n += 1
            counts.append(n)
        return counts
    finally:
        for c in clients:
            c.close()


def test_each_worker_gets_its_own_reuseport_socket_and_a_fair_share_of_connections():
    from alerting.cli import listen_sockets

    socks = listen_sockets("127.0.0.1", 0, 3)
    try:
        assert len(socks) == 3 and len({s.getsockname() for s in socks}) == 1  # one port, chosen once
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in socks)
        assert all(s.get_inheritable() for s in socks)  # handed to the workers
        counts = _accepted_per_socket(socks, 90)
        # by hash: each of 3 gets 30 +- 4.5; under 10 has a chance of about 1e-5. On one shared socket
        # the first worker to wake takes them (6/44 of 50 between two workers was seen).
        assert sum(counts) == 90 and min(counts) >= 10, counts
    finally:
        for s in socks:
            s.close()


def test_one_worker_or_no_balancing_kernel_means_one_shared_socket(monkeypatch):
    from alerting import cli

    for count, platform in ((1, "linux"), (3, "darwin")):
        monkeypatch.setattr(cli.sys, "platform", platform)
        (sock,) = cli.listen_sockets("127.0.0.1", 0, count)
        try:
            assert not sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
            assert _accepted_per_socket([sock], 5) == [5]
        finally:
            sock.close()


def test_a_port_in_use_fails_and_leaves_no_socket_open(monkeypatch):
    from alerting import cli

    with socket.socket() as taken:  # bound without SO_REUSEPORT: nobody may join it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            cli.listen_sockets("127.0.0.1", taken.getsockname()[1], 2)

    made: list[socket.socket] = []
    real = socket.create_server

    def second_fails(*args, **kwargs):  # the first socket is bound, the second cannot join it
        if made:
            raise OSError(98, "Address already in use")
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(cli.socket, "create_server", second_fails)
    with pytest.raises(OSError, match="in use"):
        cli.listen_sockets("127.0.0.1", 0, 2)
    assert made and made[0].fileno() == -1  # closed, not leaked
