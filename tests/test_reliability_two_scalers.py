"""Reliability row 6: two real `divims scaler run` processes on one pool (same config, same state dir).

Exactly one acts, the other logs why it waits and reports `divims_scaler_lock_held 0`; after a kill -9 of
the active one, the survivor takes the lease once its TTL has run out and answers a load increase. Every
write the fake Scaleway and the fake Scalelite receive is attributed to the process that sent it (the
client socket of the request, looked up in /proc), so "only one process writes" is measured, not assumed.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from reliability_fixtures import record_figure, wait_for
from scaler_fixtures import SLOTS, WorldPrometheus, add_meetings, bed_extra, enabled_slots

from testbed.pool import TestbedOptions, TestbedPool
from testbed.world import Delays

ROOT = Path(__file__).resolve().parent.parent
TTL = 3.0        # scaler.lock_ttl_seconds: the takeover can take up to this long
INTERVAL = 1.0   # scaler.interval_seconds (WorldPrometheus samples are 2 s old: stale below 1 s)

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="attribution reads Linux /proc")


# --- who sent a request: the client socket's inode, found in one of the scalers' fd tables ------------
def _socket_inode(client_port: int, server_port: int) -> str | None:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == client_port and int(f[2].rsplit(":", 1)[1], 16) == server_port:
                return f[9]
    return None


def _owner(inode: str | None, pids: list[int]) -> int | None:
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


class WriteLog:
    """Every write request to the fake Scaleway (not GET) and Scalelite (not a read call), with the pid of
    the scaler that sent it (None: not found) and its monotonic time."""

    SCALELITE_READS = ("getServers", "getServerInfo")

    def __init__(self, pool: TestbedPool):
        self.pids: list[int] = []
        self.writes: list[tuple[float, int | None, str, str]] = []  # (t, pid, service, "METHOD path")
        self._lock = threading.Lock()
        sw, sl = pool.scaleway, pool.scalelite
        sw_serve, sl_handle = sw._serve, sl.handle
        sw_port = int(sw.url.rsplit(":", 1)[1].split("/")[0])
        sl_port = int(sl.url.rsplit(":", 1)[1].split("/")[0])

        def scaleway_serve(h):
            if h.command != "GET":
                self._add("scaleway", h.client_address[1], sw_port, f"{h.command} {h.path.split('?')[0]}")
            return sw_serve(h)

        def scalelite_handle(command, path, headers, body):
            call = path.split("?")[0].rsplit("/", 1)[-1]
            if call not in self.SCALELITE_READS:
                # the fake's handler passes no client address: it is the caller's `self` (the request handler)
                handler = sys._getframe(1).f_locals.get("self")
                port = handler.client_address[1] if handler is not None else -1
                self._add("scalelite", port, sl_port, f"{command} {call}")
            return sl_handle(command, path, headers, body)

        sw._serve = scaleway_serve      # the fakes' handlers look these up on the instance at call time
        sl.handle = scalelite_handle

    def _add(self, service: str, client_port: int, server_port: int, what: str) -> None:
        pid = _owner(_socket_inode(client_port, server_port), list(self.pids))
        with self._lock:
            self.writes.append((time.monotonic(), pid, service, what))

    def by_pid(self, since: float = 0.0, until: float = float("inf")) -> collections.Counter:
        with self._lock:
            return collections.Counter(pid for t, pid, _, _ in self.writes if since <= t < until)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric(port: int, name: str) -> float:
    """Sum of every sample of `name` on the scaler's /metrics (0 when it has none)."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def _lease_pid(state_dir: Path) -> int | None:
    try:
        return int(json.loads(next(state_dir.glob("*.lease")).read_text())["pid"])
    except (StopIteration, OSError, ValueError, KeyError):
        return None


def _vm_counts(world) -> collections.Counter:
    with world.lock:
        return collections.Counter(vm.name for vm in world.vms.values())


def test_two_scalers_one_acts_the_other_waits_then_takes_over_after_kill_9(tmp_path):
    delays = Delays(poweron_seconds=0.1, bbb_boot_seconds=0.05, poweroff_seconds=0.05, terminate_seconds=0.05,
                    recording_seconds=0.3)
    pool = TestbedPool(TestbedOptions(slots=SLOTS, ssh=False, delays=delays, scalelite_poll_seconds=0.05,
                                      workdir=str(tmp_path / "bed"))).start()
    prom = WorldPrometheus(pool.world).start()
    w = pool.world
    writes = WriteLog(pool)
    extra = bed_extra(tmp_path)
    extra["scaler"].update(interval_seconds=INTERVAL, lock_ttl_seconds=TTL)
    config = pool.write_config(tmp_path / "divims.yml", prometheus_url=prom.url, extra=extra)
    state_dir = Path(extra["scaler"]["state_dir"])
    journal = state_dir / "journal.jsonl"
    ports = [_free_port(), _free_port()]
    logs = [tmp_path / "scaler-0.log", tmp_path / "scaler-1.log"]
    procs: list[subprocess.Popen] = []
    max_vms_per_slot = 0

    def watch_slots() -> None:
        nonlocal max_vms_per_slot
        max_vms_per_slot = max(max_vms_per_slot, max(_vm_counts(w).values(), default=0))

    try:
        # same config, same state dir, started together: the lease decides who acts
        for port, log_path in zip(ports, logs, strict=True):
            with open(log_path, "w") as err:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "divims.cli", "scaler", "run", "--config", str(config),
                     "--listen", f"127.0.0.1:{port}"],
                    cwd=ROOT, env={**os.environ, **pool.environment()},
                    stdout=subprocess.DEVNULL, stderr=err))
        writes.pids.extend(p.pid for p in procs)
        active_pid = wait_for(lambda: _lease_pid(state_dir), 30, "one scaler to take the lease", 0.02)
        a = next(i for i, p in enumerate(procs) if p.pid == active_pid)
        b = 1 - a
        # the active one brings the pool to its minimum (1 server); the other keeps waiting meanwhile
        wait_for(lambda: (watch_slots(), enabled_slots(w) == {1})[1], 30, "slot 1 enabled", 0.05)
        waits_before = logs[b].read_text().count("waiting, not acting")
        wait_for(lambda: logs[b].read_text().count("waiting, not acting") >= waits_before + 3, 10,
                 "the passive scaler to wait 3 more cycles")
        assert _metric(ports[a], "divims_scaler_lock_held") == 1
        assert _metric(ports[b], "divims_scaler_lock_held") == 0
        assert _metric(ports[b], "divims_scaler_actions_total") == 0
        actions_a = _metric(ports[a], "divims_scaler_actions_total")
        waiting_line = next(line for line in logs[b].read_text().splitlines() if "waiting, not acting" in line)
        assert "another scaler" in waiting_line and str(procs[a].pid) in waiting_line  # says who and why
        both = writes.by_pid()
        assert both[procs[a].pid] > 0 and both[procs[b].pid] == 0 and both[None] == 0, both

        # kill -9 the active one (no release: its lease stays until it expires), then more load
        t_kill = time.monotonic()
        os.kill(procs[a].pid, signal.SIGKILL)
        procs[a].wait(timeout=10)
        add_meetings(w, 1, 4, 100)  # 400 participants: 2 servers
        wait_for(lambda: _lease_pid(state_dir) == procs[b].pid, TTL + 10, "the survivor to take the lease", 0.02)
        t_takeover = time.monotonic()
        wait_for(lambda: (watch_slots(), enabled_slots(w) == {1, 2})[1], 30, "slot 2 enabled by the survivor",
                 0.05)
        t_answered = time.monotonic()
        assert _metric(ports[b], "divims_scaler_lock_held") == 1
        actions_b = _metric(ports[b], "divims_scaler_actions_total")
        assert actions_b > 0
        took_over = [line for line in logs[b].read_text().splitlines() if "took over the expired lock" in line]
        assert took_over and str(procs[a].pid) in took_over[0]

        procs[b].send_signal(signal.SIGTERM)
        assert procs[b].wait(timeout=30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        prom.stop()
        pool.stop()

    # who wrote when: before the kill only the active one, after it only the survivor, and only once its
    # lease was taken; nothing unattributed
    before, after = writes.by_pid(until=t_kill), writes.by_pid(since=t_kill)
    assert set(before) == {procs[a].pid} and set(after) == {procs[b].pid}, (before, after)
    first_survivor_write = min(t for t, pid, _, _ in writes.writes if pid == procs[b].pid)
    assert first_survivor_write >= t_takeover - 0.1  # the lease file is polled every 20 ms
    assert t_takeover - t_kill <= TTL + 2 * INTERVAL + 1
    # no slot ever had two VMs, and every done action was done once (journal of both processes)
    watch_slots()
    assert max_vms_per_slot == 1
    done = collections.Counter((r["kind"], r["slot"]) for line in journal.read_text().splitlines()
                               for r in json.loads(line)["results"] if r["result"] == "ok")
    duplicates = sum(n - 1 for n in done.values() if n > 1)
    creates = sum(1 for _, _, service, what in writes.writes if service == "scaleway" and what.endswith("/servers")
                  and what.startswith("POST"))
    assert duplicates == 0, done
    clones = {slot for kind, slot in done if kind == "clone"}
    assert {1, 2} <= clones and creates == len(clones), (creates, done)  # one create request per cloned slot

    record_figure(
        "6", f"2 `divims scaler run` on one pool (TTL {TTL:.0f} s, interval {INTERVAL} s): while both ran, "
             f"{before[procs[a].pid]} writes and {actions_a:.0f} actions by the active one, 0 by the other "
             f"(lock_held 0, logged 'waiting, not acting'); kill -9 -> lease taken over after "
             f"{t_takeover - t_kill:.1f} s, the load increase answered (slot 2 enabled) {t_answered - t_kill:.1f} s "
             f"after the kill, {after[procs[b].pid]} writes / {actions_b:.0f} actions by the survivor; "
             f"max VMs per slot 1, duplicate actions {duplicates}",
        takeover_seconds=round(t_takeover - t_kill, 2), answered_seconds=round(t_answered - t_kill, 2),
        writes_active=before[procs[a].pid], writes_passive_while_both=before.get(procs[b].pid, 0),
        actions_active=actions_a, actions_survivor=actions_b, duplicates=duplicates,
        max_vms_per_slot=max_vms_per_slot)
