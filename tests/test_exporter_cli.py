"""`divims exporter` as users run it: a subprocess with the testbed's written configuration (SSH on),
reading a server started through the real Scaleway and Scalelite clients; it stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml
from exporter_fixtures import samples, value

from divims.clients.scalelite import make_scalelite
from divims.clients.scaleway import ScalewayCloud
from divims.config import parse_config
from testbed import pool as testbed_pool
from testbed.world import Delays

ROOT = Path(__file__).resolve().parent.parent
POOL = "testbed"


@pytest.fixture
def pool(tmp_path):
    tb = testbed_pool.TestbedPool(testbed_pool.TestbedOptions(slots=2, ssh=True, workdir=str(tmp_path / "testbed"),
                                    delays=Delays(poweron_seconds=0.2, bbb_boot_seconds=0.1)))
    tb.start()
    try:
        yield tb
    finally:
        tb.stop()


def _start_slot_1(tb: testbed_pool.TestbedPool, monkeypatch) -> str:
    """Creates, powers on and enables slot 1 through the real clients, as the scaler would."""
    env = tb.environment()
    for key, val in env.items():
        monkeypatch.setenv(key, val)  # the Scaleway SDK reads its credentials from the environment
    cfg = parse_config(yaml.safe_dump(tb.config_dict(name=POOL)), environ=env).pools[0]
    cloud = ScalewayCloud.from_pool(cfg, POOL)
    vm = cloud.create_server(tb.world.hostname(1), 1)
    cloud.poweron(vm.id)
    scalelite = make_scalelite(cfg)
    server = scalelite.add_server(cfg.slot_url(1), env["BBB_SECRET"])
    scalelite.enable(server.id)
    return cfg.slot_domain(1)


def _wait_for(url: str, check, deadline: float) -> dict:
    last: dict = {}
    while time.monotonic() < deadline:
        try:
            r = requests.get(url, timeout=2)
            if r.status_code == 200:
                last = samples(r.text)
                if check(last):
                    return last
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"/metrics never showed the expected series; last: {sorted(last)[:40]}")


def test_divims_exporter_cli_against_the_testbed_with_ssh(pool, tmp_path, monkeypatch):
    domain = _start_slot_1(pool, monkeypatch)
    config = pool.write_config(tmp_path / "divims.yml", name=POOL, extra={
        "exporter": {"interval_seconds": 0.5, "timeout_seconds": 2, "ssh_interval_seconds": 0.5}})
    env = {**os.environ, **pool.environment(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "divims.cli", "exporter", "--config", str(config),
                             "--listen", "127.0.0.1:0"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    # Drained in a thread: a full pipe would block the exporter's logging.
    drain = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    drain.start()
    try:
        # Port 0: the exporter picks a free port and says which in its log line.
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", "".join(lines))
            url = found.group(1) if found else time.sleep(0.05)
        assert url, "exporter did not say where it listens:\n" + "".join(lines)

        def complete(m: dict) -> bool:
            return (value(m, "bbb_api_up", pool=POOL, server=domain) == 1
                    and value(m, "bbb_ssh_up", pool=POOL, server=domain) == 1
                    and value(m, "scaleway_server_state", pool=POOL, server=domain, state="running") == 1
                    and value(m, "scalelite_server_state", pool=POOL, server=domain, state="enabled") == 1)

        m = _wait_for(url + "/metrics", complete, time.monotonic() + 30)
        assert value(m, "bbb_node_cpus", pool=POOL, server=domain) >= 1
        assert value(m, "scalelite_up", pool=POOL) == 1 and value(m, "scaleway_up", pool=POOL) == 1
        assert value(m, "scalelite_server_state", pool=POOL, server=domain, state="cordoned") == 0
        assert value(m, "scaleway_server_state", pool=POOL, server=domain, state="stopped") == 0
        text = requests.get(url + "/metrics", timeout=5).text
        for secret in pool.environment().values():
            assert secret not in text
        health = requests.get(url + "/healthz", timeout=5)
        assert health.status_code == 200 and health.json()["pools"][POOL]["bbb_api_up"] == 1

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        drain.join(timeout=5)
        stderr = "".join(lines)
        assert "exporter stopping" in stderr
        child = re.search(r"poll process started \(pid (\d+)\)", stderr)
        assert child, stderr  # the polls ran in a child process...
        with pytest.raises(ProcessLookupError):  # ...which is gone with its parent
            os.kill(int(child.group(1)), 0)
        assert "Traceback" not in stderr, stderr
        for secret in pool.environment().values():
            assert secret not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
