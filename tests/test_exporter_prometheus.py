"""A real Prometheus scrapes the exporter (poll loop + HTTP server over the fake BBB fleet) and can query
the series and the shipped recording rules."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml
from exporter_fixtures import ListScalelite, add_meeting, bbb_pool, running_world, scalelite_entries

from exporter.poll import Poller
from exporter.server import MetricsApp, MetricsServer, build_registry
from testbed.bbb import FakeBBBFleet

RULES = Path(__file__).resolve().parent.parent / "exporter" / "rules" / "recording.yml"

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(base: str, expr: str) -> list[dict]:
    r = requests.get(f"{base}/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]


def test_prometheus_scrapes_the_series_and_evaluates_the_rules(tmp_path):
    world = running_world(3)
    add_meeting(world, world.domain(1), 40)
    add_meeting(world, world.domain(2), 2)
    world.bbb_hosts[world.domain(3)].garbage = True
    with FakeBBBFleet(world) as fleet:
        poller = Poller([bbb_pool("p1", world, ListScalelite(scalelite_entries(world, fleet.url_for)))],
                        interval_seconds=0.5, concurrency=4, timeout_seconds=2)
        current = lambda: poller.snapshot  # noqa: E731
        app = MetricsApp(build_registry(current), current, max_age_seconds=30)
        poller.on_snapshot = app.prerender
        server = MetricsServer(app, "127.0.0.1", 0).start()
        poller.start()
        port = _free_port()
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(RULES)],
                  "scrape_configs": [{"job_name": "divims-exporter",
                                      "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}]}]}
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom = subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            ratio = []
            while time.monotonic() < deadline:
                try:
                    ratio = _query(base, "pool:capacity_participants_in_use:ratio")
                    if ratio:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.5)
            assert ratio, "the recording rule never produced a value"
            assert float(ratio[0]["value"][1]) == pytest.approx(42 / (3 * 250))
            by_server = {r["metric"]["server"]: float(r["value"][1]) for r in _query(base, "bbb_api_up")}
            assert by_server == {world.domain(1): 1.0, world.domain(2): 1.0, world.domain(3): 0.0}
            parts = _query(base, 'bbb_meetings_participants{pool="p1"}')
            assert {r["metric"]["server"]: float(r["value"][1]) for r in parts} == {
                world.domain(1): 40.0, world.domain(2): 2.0}
            assert _query(base, 'up{job="divims-exporter"}')[0]["value"][1] == "1"
            errors = _query(base, 'divims_exporter_poll_errors_total{source="bbb",kind="protocol"}')
            assert errors and float(errors[0]["value"][1]) >= 1
        finally:
            prom.terminate()
            try:
                prom.wait(timeout=10)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait()
            server.stop()
            poller.stop()
