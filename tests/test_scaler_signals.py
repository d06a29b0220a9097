"""Signals: unknown is never zero; Prometheus down makes everything unknown; queries are overridable."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
import requests
from scaler_fixtures import FakePrometheus

from divims.errors import ConfigError
from scaler.signals import POOL_SIGNALS, SignalReader, connect, merged_queries, render_query, shipped_queries


@pytest.fixture
def prom():
    p = FakePrometheus().start()
    yield p
    p.stop()


def reader(url: str, queries=None, max_age: float = 120.0) -> SignalReader:
    return SignalReader(connect(url, timeout_seconds=2), pool="p1", queries=merged_queries(queries),
                        max_age_seconds=max_age, boot_seconds=600, growth_window_seconds=1800, timeout_seconds=2)


def test_fresh_signals_are_known_with_per_server_loads(prom):
    prom.set_pool(420, 12, per_server={"127.0.1.1": (7, 300), "127.0.1.2": (5, 120)},
                  recordings={"127.0.1.2": 2})
    s = reader(prom.url).read(time.time())
    assert s.prometheus_up
    assert (s.participants.value, s.meetings.value) == (420, 12)
    assert s.participants.age_seconds == 5
    assert s.per_server["127.0.1.1"].meetings == 7
    assert s.per_server["127.0.1.2"].participants == 120
    assert s.per_server["127.0.1.2"].recordings_unfinished == 2
    assert s.per_server["127.0.1.1"].bbb_api_up is True
    # the forecast has no history here: unknown, with a reason, not zero
    assert s.participants_yesterday.value is None and "empty" in s.participants_yesterday.reason


def test_empty_result_is_unknown_not_zero(prom):
    prom.set_pool(0, 0)
    del prom.answers["sum(bbb_meetings_participants{"]
    s = reader(prom.url).read(time.time())
    assert s.participants.value is None
    assert "empty" in s.participants.reason
    assert s.meetings.value == 0  # a real zero stays a zero


def test_signal_older_than_two_intervals_is_unknown(prom):
    prom.set_pool(100, 4, age=121)
    s = reader(prom.url, max_age=120).read(time.time())
    assert s.participants.value is None and s.meetings.value is None
    assert "stale" in s.participants.reason and "121" in s.participants.reason
    assert s.prometheus_up  # reachable, only stale


def test_stale_server_is_left_out_of_per_server(prom):
    prom.set_pool(100, 4, per_server={"127.0.1.1": (1, 10), "127.0.1.2": (2, 20)})
    prom.answers["min by (server) (timestamp(bbb_meetings{"] = [
        {"metric": {"server": "127.0.1.1"}, "value": [0, "5"]},
        {"metric": {"server": "127.0.1.2"}, "value": [0, "900"]}]
    s = reader(prom.url).read(time.time())
    assert set(s.per_server) == {"127.0.1.1"}


def test_prometheus_unreachable_makes_every_signal_unknown_quickly():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once we leave: nothing listens there
    start = time.monotonic()
    s = reader(f"http://127.0.0.1:{port}").read(time.time())
    assert time.monotonic() - start < 5
    assert not s.prometheus_up
    assert s.per_server is None
    assert all(sig.value is None and "unreachable" in sig.reason for sig in s.all())


def test_prometheus_answering_503_counts_as_unreachable(prom):
    prom.status = 503
    s = reader(prom.url).read(time.time())
    assert not s.prometheus_up
    assert all(not sig.known for sig in s.all())


def test_bad_query_is_unknown_with_its_status(prom):
    prom.set_pool(10, 1)
    prom.answers["sum(bbb_meetings{"] = 400
    s = reader(prom.url).read(time.time())
    assert s.meetings.value is None and "400" in s.meetings.reason
    assert s.participants.value == 10


def test_configured_query_overrides_the_shipped_one(prom):
    prom.set_pool(10, 1)
    prom.answers["my_participants"] = FakePrometheus.vector(77)
    prom.answers['my_participants_age'] = FakePrometheus.vector(1)
    s = reader(prom.url, queries={"participants": 'sum(my_participants{pool="$pool"})',
                                  "participants_age": 'time() - max(timestamp(my_participants_age{pool="$pool"}))'}
               ).read(time.time())
    assert s.participants.value == 77
    assert any('my_participants{pool="p1"}' in q for _, _, q in prom.requests)


def test_unknown_query_name_is_a_config_error_naming_it():
    with pytest.raises(ConfigError) as err:
        merged_queries({"participantz": "x"})
    assert "scaler.queries.participantz" in str(err.value)


def test_placeholders_are_filled():
    q = render_query(shipped_queries()["participants_yesterday"], pool="p1", boot_seconds=600,
                     growth_window_seconds=1800)
    assert 'pool="p1"' in q and "[600s:60s]" in q and "offset 85800s" in q and "$" not in q


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus binary not installed")
def test_shipped_queries_run_on_a_real_prometheus():
    """Every shipped query parses and evaluates on Prometheus itself, over an exporter-shaped target."""
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    reg = CollectorRegistry()
    labels = ["pool", "server"]
    gauges = {name: Gauge(name, name, labels, registry=reg) for name in (
        "bbb_meetings", "bbb_meetings_participants", "bbb_api_up", "bbb_recordings_processing",
        "bbb_recordings_unprocessed", "bbb_recordings_unpublished_transfers", "bbb_recordings_failed",
        "bbb_services_healthy", "bbb_node_uptime_seconds")}
    for server, (m, p) in {"127.0.1.1": (3, 40), "127.0.1.2": (2, 25)}.items():
        gauges["bbb_meetings"].labels("p1", server).set(m)
        gauges["bbb_meetings_participants"].labels("p1", server).set(p)
        for name in ("bbb_api_up", "bbb_services_healthy"):
            gauges[name].labels("p1", server).set(1)
        for name in ("bbb_recordings_processing", "bbb_recordings_unprocessed",
                     "bbb_recordings_unpublished_transfers", "bbb_recordings_failed"):
            gauges[name].labels("p1", server).set(0)
        gauges["bbb_node_uptime_seconds"].labels("p1", server).set(1000)
    httpd, thread = start_http_server(0, addr="127.0.0.1", registry=reg)
    target_port = httpd.server_address[1]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        prom_port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: t\n"
                    f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n")
        proc = subprocess.Popen(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp}/data",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{prom_port}"
            r = reader(url, max_age=60)
            deadline = time.monotonic() + 20
            s = None
            while time.monotonic() < deadline:
                try:
                    s = r.read(time.time())
                except requests.RequestException:
                    s = None
                if s is not None and s.participants.known and s.per_server:
                    break
                time.sleep(0.3)
            assert s is not None and s.prometheus_up
            assert s.participants.value == 65 and s.meetings.value == 5
            assert s.per_server["127.0.1.2"].meetings == 2
            assert s.per_server["127.0.1.1"].recordings_unfinished == 0
            # every shipped query was accepted by Prometheus (a parse error would be HTTP 400)
            for name in POOL_SIGNALS:
                sig = getattr(s, name)
                assert "400" not in sig.reason, (name, sig.reason)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)
