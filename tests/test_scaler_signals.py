"""Signals: unknown is never zero; Prometheus down makes everything unknown; queries are overridable."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
import requests
from prometheus_api_client import PrometheusApiClientException
from scaler_fixtures import FakePrometheus

from divims.errors import ConfigError
from scaler.signals import (
    POOL_SIGNALS,
    SignalReader,
    connect,
    merged_queries,
    render_query,
    shipped_queries,
    unknown_signals,
)
from scaler.snapshot import Signals


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


def test_stale_server_has_unknown_meetings_not_zero(prom):
    prom.set_pool(100, 4, per_server={"127.0.1.1": (1, 10), "127.0.1.2": (2, 20)})
    prom.answers["min by (server) (timestamp(bbb_meetings{"] = [
        {"metric": {"server": "127.0.1.1"}, "value": [0, "5"]},
        {"metric": {"server": "127.0.1.2"}, "value": [0, "900"]}]
    s = reader(prom.url).read(time.time())
    assert s.per_server["127.0.1.1"].meetings == 1
    assert s.per_server["127.0.1.2"].meetings is None and s.per_server["127.0.1.2"].participants is None


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


def test_every_signal_of_signals_has_a_shipped_query():
    """The live scaler reads every pool signal the policy can use: each Signal field of Signals is
    read by SignalReader (POOL_SIGNALS) and has a shipped default query."""
    signal_fields = {f.name for f in dataclasses.fields(Signals) if f.name not in ("per_server", "prometheus_up")}
    assert signal_fields == set(POOL_SIGNALS)
    assert signal_fields <= set(shipped_queries())
    assert {s.name for s in unknown_signals("x").all()} == signal_fields


@contextlib.contextmanager
def real_prometheus(tmp: str, scrape_port: int | None = None):
    """/usr/bin/prometheus on a free loopback port over the data directory `tmp`/data (which may
    hold backfilled blocks), scraping 127.0.0.1:`scrape_port` every second when given."""
    cfg = os.path.join(tmp, "prometheus.yml")
    with open(cfg, "w") as f:
        f.write("global: {scrape_interval: 1s}\n")
        if scrape_port is not None:
            f.write("scrape_configs:\n  - job_name: t\n"
                    f"    static_configs: [{{targets: ['127.0.0.1:{scrape_port}']}}]\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        prom_port = sock.getsockname()[1]
    proc = subprocess.Popen(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp}/data",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{prom_port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus binary not installed")
def test_shipped_queries_run_on_a_real_prometheus():
    """Every shipped query (pool, per-server and freshness) parses and evaluates on Prometheus
    itself, over an exporter-shaped target."""
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
    try:
        with tempfile.TemporaryDirectory() as tmp, real_prometheus(tmp, httpd.server_address[1]) as url:
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
            # every shipped query, run as such, is accepted by Prometheus (a parse error is HTTP 400)
            prom = connect(url, timeout_seconds=5)
            for name, query in r.queries.items():
                try:
                    prom.custom_query(query, params={"time": f"{time.time():.3f}"})
                except PrometheusApiClientException as exc:
                    pytest.fail(f"shipped query {name} refused by Prometheus: {exc}")
            # the history queries have no data a day ago: unknown with a reason, never zero
            assert s.participants_yesterday_now.value is None and "empty" in s.participants_yesterday_now.reason
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def sustained_growth_reference(values: list[float], window_minutes: int, recent_minutes: int = 5,
                               envelope_minutes: int = 10) -> float:
    """Per second, from per-minute values ending at the evaluation time: the smaller of the least-
    squares slopes over the last `window_minutes` and `recent_minutes` points of the running
    maximum over `envelope_minutes` (what the shipped participants_growth query computes)."""
    env = [max(values[max(0, i - envelope_minutes + 1):i + 1]) for i in range(len(values))]

    def slope(n: int) -> float:
        ys = env[-n:]
        xm, ym = (n - 1) / 2, sum(ys) / n
        return sum((i - xm) * (y - ym) for i, y in enumerate(ys)) / sum((i - xm) ** 2 for i in range(n)) / 60
    return min(slope(window_minutes), slope(recent_minutes))


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("prometheus") is None or shutil.which("promtool") is None,
                    reason="prometheus or promtool not installed")
def test_growth_and_history_queries_on_a_backfilled_real_prometheus():
    """A ramp of +10 participants/min with an on-the-hour dip (-30 % for 10 min), backfilled into a
    real Prometheus: the shipped growth query gives the sustained slope (the dip is not read as a
    decline, nor its rebound as growth), and the history-at-now queries read the day / week before."""
    end = (int(time.time()) // 3600 - 3) * 3600          # on the hour, 3 h ago: inside the retention
    minutes = 60
    ramp = [200.0 + 10 * i for i in range(minutes + 1)]  # one value per minute up to `end`
    # the on-the-hour dip, 30..20 min before `end`: meetings end and restart
    values = [v * 0.7 if 30 >= minutes - i > 20 else v for i, v in enumerate(ramp)]
    lines = ["# TYPE bbb_meetings_participants gauge"]
    for i, v in enumerate(values):
        t = end - (minutes - i) * 60
        for k in range(4):  # 15 s samples, as a scrape would give
            lines.append(f'bbb_meetings_participants{{pool="p1",server="a"}} {v} {t - 45 + 15 * (k + 1)}')
    history = []
    for back, value in ((604800, 300.0), (86400, 500.0)):
        for k in range(8):
            history.append(f'bbb_meetings_participants{{pool="p1",server="a"}} {value} {end - back - 60 + 15 * k}')
    # OpenMetrics wants the samples of a series in time order
    samples = sorted(lines[1:] + history, key=lambda ln: int(ln.rsplit(" ", 1)[1]))
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "series.om")
        with open(src, "w") as f:
            f.write("\n".join([lines[0], *samples, "# EOF", ""]))
        subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", "-q", src, f"{tmp}/data"],
                       check=True, capture_output=True, timeout=60)
        with real_prometheus(tmp) as url:
            r = reader(url, max_age=120)
            s = r.read(float(end))
    expected = sustained_growth_reference(values, 30)
    assert s.participants.value == values[-1]
    assert s.participants_growth.known, s.participants_growth.reason
    assert s.participants_growth.value == pytest.approx(expected, rel=0.02)
    # the running maximum hides the dip: the growth is the ramp's +10/min, where a plain slope of
    # the raw series over the window reads the rebound as growth (about +17/min)
    assert s.participants_growth.value * 60 == pytest.approx(10, rel=0.05)
    xs = range(30)
    raw = values[-30:]
    xm, ym = sum(xs) / 30, sum(raw) / 30
    plain = sum((x - xm) * (y - ym) for x, y in zip(xs, raw, strict=True)) / sum((x - xm) ** 2 for x in xs)
    assert plain > 15
    assert s.participants_yesterday_now.value == 500.0
    assert s.participants_last_week_now.value == 300.0


def test_a_server_whose_bbb_api_is_down_is_kept_with_unknown_meetings(prom):
    # the exporter reports bbb_api_up 0 and no meeting series for a server whose API hangs or refuses
    prom.set_pool(100, 4, per_server={"127.0.1.1": (1, 10)})
    prom.answers["bbb_api_up"] = [{"metric": {"server": "127.0.1.1"}, "value": [0, "1"]},
                                  {"metric": {"server": "127.0.1.2"}, "value": [0, "0"]}]
    s = reader(prom.url).read(time.time())
    down = s.per_server["127.0.1.2"]
    assert down.bbb_api_up is False
    assert down.meetings is None and down.participants is None  # unknown, never 0
    assert s.per_server["127.0.1.1"].bbb_api_up is True and s.per_server["127.0.1.1"].meetings == 1
