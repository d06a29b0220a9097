"""`divims scaler` as users run it: bad input, `once` in a subprocess, and a real kill -9 mid-cycle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from scaler_fixtures import (
    assert_no_duplicate,
    bed,
    converge,
    enabled_slots,
    make_scaler,
    orphans,
    vm_names,
)

from divims.cli import main

__all__ = ["bed"]  # the testbed fixture, shared with the scenario tests
ROOT = Path(__file__).resolve().parent.parent


def divims(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "divims.cli", *args], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_bad_config_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    cfg = tmp_path / "bad.yml"
    cfg.write_text("pools: [{name: p1}]\n")
    assert main(["scaler", "plan", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "pools" in err and "Traceback" not in err


def test_unknown_pool_is_named(bed, capsys):
    pool, _, settings = bed
    path = next(Path(pool.workdir).parent.glob("divims.yml"))
    assert main(["scaler", "plan", "--config", str(path), "--pool", "nope"]) == 2
    assert "--pool nope: no such pool" in capsys.readouterr().err


def test_once_in_a_subprocess_acts_and_journals(bed):
    pool, _, settings = bed
    path = next(Path(pool.workdir).parent.glob("divims.yml"))
    p = divims(["scaler", "once", "--config", str(path)], pool.environment())
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert vm_names(pool.world) == ["bbb-1"]
    assert Path(settings.scaler.journal_path).read_text().count("\n") == 1
    for secret in pool.environment().values():
        assert secret not in err and secret not in Path(settings.scaler.journal_path).read_text()


def test_kill_9_mid_cycle_then_recovery_with_no_duplicate_and_no_orphan(bed):
    pool, _, settings = bed
    w = pool.world
    path = next(Path(pool.workdir).parent.glob("divims.yml"))
    p = divims(["scaler", "run", "--config", str(path), "--listen", "127.0.0.1:0"], pool.environment())
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(m == "POST" and path_.endswith("/servers") for m, path_, _ in list(pool.scaleway.requests)):
                break
            time.sleep(0.005)
        else:
            raise AssertionError("the scaler never created a server")
        os.kill(p.pid, signal.SIGKILL)  # between the create and whatever came next
    finally:
        p.wait(timeout=10)
        p.stdout.close()
        p.stderr.close()
    assert p.returncode == -signal.SIGKILL
    time.sleep(1.05)  # its lease (lock_ttl_seconds: 1) expires
    s = make_scaler(settings)
    converge(s, w, lambda: enabled_slots(w) == {1} and len(vm_names(w)) == 1 and orphans(w) == ([], []))
    assert_no_duplicate(w)


def test_run_serves_metrics_and_stops_cleanly_on_sigterm(bed):
    import socket

    import requests

    pool, _, settings = bed
    path = next(Path(pool.workdir).parent.glob("divims.yml"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    p = divims(["scaler", "run", "--config", str(path), "--listen", f"127.0.0.1:{port}"], pool.environment())
    try:
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            try:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                if "divims_scaler_last_cycle_timestamp_seconds{" in text:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        assert 'divims_scaler_desired_servers{pool="testbed",term="final"} 1.0' in text
        assert 'divims_scaler_actions_total{action="clone",pool="testbed",result="ok"} 1.0' in text
        for secret in pool.environment().values():
            assert secret not in text
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        p.stdout.close()
        p.stderr.close()
    assert not list(Path(settings.scaler.state_dir).glob("*.lease"))  # released on the way out
