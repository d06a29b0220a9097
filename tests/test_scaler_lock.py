"""The pool lock: one actor per pool across processes; a waiter says why and takes over after expiry."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from scaler.lock import PoolLock


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_second_holder_waits_and_says_who_holds_it(tmp_path):
    clock = Clock()
    a = PoolLock(tmp_path, "p1", ttl_seconds=180, holder="a", clock=clock)
    b = PoolLock(tmp_path, "p1", ttl_seconds=180, holder="b", clock=clock)
    assert a.acquire().acquired
    status = b.acquire()
    assert not status.acquired
    assert status.holder == "a" and "another scaler (a)" in status.reason and "waiting" in status.reason


def test_renewal_keeps_it_and_expiry_lets_the_other_take_over(tmp_path):
    clock = Clock()
    a = PoolLock(tmp_path, "p1", ttl_seconds=180, holder="a", clock=clock)
    b = PoolLock(tmp_path, "p1", ttl_seconds=180, holder="b", clock=clock)
    a.acquire()
    clock.t += 170
    assert a.acquire().acquired           # renewed: expires at +350
    clock.t += 170
    assert not b.acquire().acquired       # still within a's renewed lease
    clock.t += 11
    status = b.acquire()
    assert status.acquired and "took over" in status.reason
    assert not a.acquire().acquired       # a (back from the dead) now waits


def test_release_hands_over_at_once(tmp_path):
    a = PoolLock(tmp_path, "p1", ttl_seconds=180, holder="a")
    b = PoolLock(tmp_path, "p1", ttl_seconds=180, holder="b")
    a.acquire()
    b.release()                            # not b's: changes nothing
    assert not b.acquire().acquired
    a.release()
    assert b.acquire().acquired


def test_pools_have_separate_locks(tmp_path):
    assert PoolLock(tmp_path, "p1", ttl_seconds=60, holder="a").acquire().acquired
    assert PoolLock(tmp_path, "p2", ttl_seconds=60, holder="b").acquire().acquired


def test_a_garbled_lease_file_counts_as_free(tmp_path):
    lock = PoolLock(tmp_path, "p1", ttl_seconds=60, holder="a")
    lock.lease_path.write_text("{not json")
    assert lock.acquire().acquired


def test_exactly_one_of_many_processes_gets_it(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(sys.path[0])!r})
        from scaler.lock import PoolLock
        print(PoolLock({str(tmp_path)!r}, "p1", ttl_seconds=60).acquire().acquired)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=str(__import__("pathlib").Path(__file__).parent.parent)) for _ in range(6)]
    outs = [p.communicate(timeout=30)[0].strip() for p in procs]
    assert sorted(outs) == ["False"] * 5 + ["True"]
