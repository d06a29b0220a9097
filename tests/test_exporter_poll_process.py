"""The poll loop in its own process: snapshots reach the serving process, a killed child is replaced,
and stop() leaves no process behind."""

from __future__ import annotations

import functools
import os
import signal
import time

import pytest
from exporter_fixtures import ListScalelite, bbb_pool, running_world, scalelite_entries

from exporter.poll_process import PollProcess
from testbed.bbb import FakeBBBFleet


def _pools(urls: dict[str, str], secret: str) -> list:
    """Built in the child: one pool over the fleet's servers (urls: host -> API URL)."""
    world = running_world(len(urls))
    return [bbb_pool("p1", world, ListScalelite(scalelite_entries(world, urls.__getitem__, secret=secret)))]


def _wait_cycles(poller: PollProcess, more_than: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while poller.cycles <= more_than:
        assert time.monotonic() < deadline, f"no snapshot after {timeout}s"
        time.sleep(0.02)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def fleet():
    world = running_world(3)
    with FakeBBBFleet(world) as f:
        yield world, f


def test_snapshots_cross_the_process_boundary_and_a_killed_child_is_replaced(fleet, caplog):
    world, f = fleet
    urls = {h: f.url_for(h) for h in world.bbb_hosts}
    seen = []
    poller = PollProcess(functools.partial(_pools, urls, world.bbb_secret), on_snapshot=seen.append,
                         interval_seconds=0.2, concurrency=4, timeout_seconds=2)
    poller.start()
    try:
        _wait_cycles(poller, 0)
        snap = poller.snapshot
        assert snap is seen[-1] or snap in seen
        servers = snap.pools[0].servers
        assert {s.server for s in servers} == set(world.bbb_hosts) and all(s.bbb.up for s in servers)
        first = poller.pid
        assert first != os.getpid()
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while poller.pid == first:
            assert time.monotonic() < deadline, "the killed poll process was not replaced"
            time.sleep(0.05)
        _wait_cycles(poller, poller.cycles)
        assert "poll process ended" in caplog.text
    finally:
        pid = poller.pid
        poller.stop()
    assert pid is not None and _gone(pid)
