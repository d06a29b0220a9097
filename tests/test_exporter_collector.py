"""The collector renders every contract series from a snapshot; the output passes promtool; the HTTP
server serves /metrics from memory and says in /healthz whether the snapshot is fresh."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import requests
from exporter_fixtures import names, samples, value
from prometheus_client import generate_latest

from divims.model import VM, HostStats, RecordingPipeline, ScaleliteServer, ScaleliteState, VMState
from exporter.server import MetricsApp, MetricsServer, build_registry
from exporter.snapshot import (
    BBBSample,
    ErrorCount,
    ExporterSnapshot,
    MeetingTotals,
    PoolSnapshot,
    ScalewayServerSample,
    ServerSample,
    SourceStatus,
    SSHSample,
)

NOW = 1_800_000_000.0
SECRET = "s3cr3t-of-bbb-1"


def _server(n: int, state=ScaleliteState.ENABLED, load: float | None = 3.0) -> ScaleliteServer:
    return ScaleliteServer(id=f"id{n}", url=f"https://bbb-{n}.example.org/bigbluebutton/api", secret=SECRET,
                           state=state, online=True, load=load, load_multiplier=2.0)


def _stats() -> HostStats:
    return HostStats(load1=1.5, cpus=8, uptime_seconds=7200.0, services_healthy=True,
                     recordings=RecordingPipeline(recorded=1, archived=2, sanity=3, processing=4,
                                                  published_not_transferred=5, failed=6),
                     tls_expiry_timestamp=NOW + 86400 * 30, oldest_processing_age_seconds=600.0)


def _vm(n: int, state: VMState) -> VM:
    return VM(id=f"vm-{n}", name=f"bbb-{n}", state=state, commercial_type="PRO2-M", zone="fr-par-1",
              tags=("divims",), creation_date=NOW - 7200, modification_date=NOW - 60)


def full_snapshot() -> ExporterSnapshot:
    servers = (
        ServerSample("bbb-1.example.org", 1, _server(1),
                     BBBSample(True, MeetingTotals(2, 40, 10, 5, 20, 3, 30), 0.12),
                     SSHSample(True, _stats(), taken_at=NOW)),
        ServerSample("bbb-2.example.org", 2, _server(2, ScaleliteState.CORDONED, load=None),
                     BBBSample(False, error_kind="timeout"), SSHSample(False, error_kind="auth", taken_at=NOW)),
    )
    pool = PoolSnapshot(
        pool="p1", taken_at=NOW, scalelite_up=True, scalelite_stale=False, servers=servers, scaleway_up=True,
        scaleway_servers=(ScalewayServerSample("bbb-1.example.org", 1, _vm(1, VMState.RUNNING), 0.25),
                          ScalewayServerSample("bbb-3.example.org", 3, _vm(3, VMState.STOPPED_IN_PLACE))),
        participants_per_server=250, meetings_per_server=15,
        sources=(SourceStatus("scalelite", 0.01, NOW), SourceStatus("bbb", 0.2, NOW),
                 SourceStatus("ssh", 0.3, None), SourceStatus("scaleway", 0.05, NOW)),
        bbb_errors=(("bbb-2.example.org", 3),))
    return ExporterSnapshot(taken_at=NOW, pools=(pool,), errors=(ErrorCount("p1", "bbb", "timeout", 3),))


CONTRACT = {
    "scalelite_up", "scalelite_server_state", "scalelite_server_online", "scalelite_server_load",
    "scalelite_server_load_multiplier", "scalelite_server_list_stale", "divims_pool_capacity_participants",
    "bbb_api_up", "bbb_meetings", "bbb_meetings_participants", "bbb_meetings_voice_participants",
    "bbb_meetings_video_participants", "bbb_meetings_listeners", "bbb_meetings_moderators",
    "bbb_meetings_largest_participants", "bbb_api_latency_seconds",
    "bbb_ssh_up", "bbb_recordings_processing", "bbb_recordings_unprocessed",
    "bbb_recordings_unpublished_transfers", "bbb_recordings_failed", "bbb_node_load1", "bbb_node_cpus",
    "bbb_node_uptime_seconds", "bbb_services_healthy", "bbb_tls_certificate_expiry_timestamp_seconds",
    "bbb_recordings_oldest_processing_age_seconds",
    "scaleway_up", "scaleway_server_state", "scaleway_server_info",
    "scaleway_server_state_changed_timestamp_seconds", "scaleway_server_hourly_price_euros",
    "divims_exporter_poll_duration_seconds", "divims_exporter_last_success_timestamp_seconds",
    "divims_exporter_poll_errors_total",
}


def _text(snap: ExporterSnapshot | None) -> str:
    return generate_latest(build_registry(lambda: snap)).decode()


def test_every_contract_series_is_rendered_with_its_labels():
    m = samples(_text(full_snapshot()))
    assert CONTRACT <= names(m), CONTRACT - names(m)
    s1, s2 = "bbb-1.example.org", "bbb-2.example.org"
    assert value(m, "scalelite_server_state", pool="p1", server=s2, state="cordoned") == 1
    assert value(m, "scalelite_server_state", pool="p1", server=s2, state="enabled") == 0
    assert value(m, "scalelite_server_load", pool="p1", server=s2) is None  # "unavailable": absent
    assert value(m, "scalelite_server_load_multiplier", pool="p1", server=s1) == 2.0
    assert value(m, "divims_pool_capacity_participants", pool="p1") == 250  # one enabled server
    assert value(m, "bbb_meetings_participants", pool="p1", server=s1) == 40
    assert value(m, "bbb_api_up", pool="p1", server=s2) == 0
    assert value(m, "bbb_recordings_unprocessed", pool="p1", server=s1) == 6
    assert value(m, "bbb_recordings_unpublished_transfers", pool="p1", server=s1) == 5
    assert value(m, "bbb_ssh_up", pool="p1", server=s2) == 0
    assert value(m, "bbb_node_load1", pool="p1", server=s2) is None
    assert value(m, "scaleway_server_state", pool="p1", server="bbb-3.example.org", state="stopped_in_place") == 1
    assert value(m, "scaleway_server_info", pool="p1", server=s1, id="vm-1", commercial_type="PRO2-M",
                 zone="fr-par-1") == 1
    assert value(m, "scaleway_server_hourly_price_euros", pool="p1", server="bbb-3.example.org") is None
    assert value(m, "divims_exporter_poll_errors_total", pool="p1", source="bbb", kind="timeout") == 3
    assert value(m, "divims_exporter_last_success_timestamp_seconds", pool="p1", source="ssh") is None


def test_secrets_never_rendered():
    assert SECRET not in _text(full_snapshot())


def test_before_the_first_poll_only_self_metrics():
    m = samples(_text(None))
    assert not {n for n in names(m) if n.startswith(("bbb_", "scalelite_", "scaleway_"))}


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
@pytest.mark.parametrize("snap", [full_snapshot(), None], ids=["full", "empty"])
def test_output_passes_promtool_check_metrics_without_warning(snap):
    out = subprocess.run(["promtool", "check", "metrics"], input=_text(snap).encode(), capture_output=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr.decode() + out.stdout.decode()
    assert out.stdout.decode().strip() == "" and out.stderr.decode().strip() == ""


def test_http_metrics_is_served_from_memory_and_healthz_tracks_freshness():
    holder: dict[str, ExporterSnapshot | None] = {"snap": None}
    clock = {"now": NOW}
    current = lambda: holder["snap"]  # noqa: E731
    app = MetricsApp(build_registry(current), current, max_age_seconds=30, clock=lambda: clock["now"])
    server = MetricsServer(app, "127.0.0.1", 0).start()
    try:
        r = requests.get(server.url + "/healthz", timeout=5)
        assert r.status_code == 503 and r.json()["status"] == "starting"
        holder["snap"] = full_snapshot()
        r = requests.get(server.url + "/healthz", timeout=5)
        assert r.status_code == 200 and r.json()["pools"]["p1"] == {"scalelite_up": True, "servers": 2,
                                                                     "bbb_api_up": 1}
        first = requests.get(server.url + "/metrics", timeout=5)
        assert first.status_code == 200 and first.headers["Content-Type"].startswith("text/plain")
        assert "bbb_meetings_participants{" in first.text
        t0 = time.perf_counter()
        again = requests.get(server.url + "/metrics", timeout=5)
        assert again.text == first.text and time.perf_counter() - t0 < 1.0  # same snapshot: same bytes
        om = requests.get(server.url + "/metrics", headers={"Accept": "application/openmetrics-text"},
                          timeout=5)
        assert om.headers["Content-Type"].startswith("application/openmetrics-text") and "# EOF" in om.text
        clock["now"] = NOW + 31
        assert requests.get(server.url + "/healthz", timeout=5).status_code == 503
        assert requests.get(server.url + "/nope", timeout=5).status_code == 404
        assert requests.post(server.url + "/metrics", timeout=5).status_code == 405
    finally:
        server.stop()
