"""exporter.exposition writes exactly what prometheus-client's registry path writes (byte for byte, hence
sample for sample), in both formats, for hand-made and generated snapshots; promtool accepts it; the
HTTP side serves it, pre-rendering the formats scrapes ask for."""

from __future__ import annotations

import gzip
import shutil
import subprocess

import pytest
from exporter_fixtures import samples
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from test_exporter_collector import full_snapshot

from divims.model import VM, HostStats, RecordingPipeline, ScaleliteServer, ScaleliteState, VMState
from exporter import exposition
from exporter.collector import SnapshotCollector, families
from exporter.server import MetricsApp, build_registry
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

PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
                     "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def _reference(snap: ExporterSnapshot | None) -> tuple[bytes, bytes]:
    """prometheus-client's text and OpenMetrics output over a registry holding only the collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snap))
    return generate_latest(registry), openmetrics.generate_latest(registry)


def _both(snap: ExporterSnapshot | None) -> tuple[bytes, bytes]:
    fams = families(snap)
    return exposition.render(fams, exposition.TEXT), exposition.render(fams, exposition.OPENMETRICS)


@pytest.mark.parametrize("snap", [full_snapshot(), None], ids=["full", "empty"])
def test_fast_renderer_is_byte_identical_to_prometheus_client(snap):
    text, om = _both(snap)
    ref_text, ref_om = _reference(snap)
    assert text == ref_text
    assert om == ref_om
    # not two empty strings agreeing
    assert len(samples(text.decode())) > 20 if snap else b"# TYPE divims_exporter_snapshot" in text


# Label values and numbers that stress escaping and Go-style float formatting.
label_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**12, 10**12).map(float),
                   st.sampled_from([0.0, -0.0, 1e6, 1234567.0, 1e-7, 0.1]))


@st.composite
def snapshots(draw) -> ExporterSnapshot:
    servers = []
    for i, host in enumerate(draw(st.lists(label_text, min_size=0, max_size=4, unique=True))):
        up = draw(st.booleans())
        stats = HostStats(load1=draw(number), cpus=draw(st.integers(0, 256)), uptime_seconds=draw(number),
                          services_healthy=draw(st.booleans()),
                          recordings=RecordingPipeline(processing=draw(st.integers(0, 9))),
                          tls_expiry_timestamp=draw(st.one_of(st.none(), number)),
                          oldest_processing_age_seconds=draw(st.one_of(st.none(), number)))
        servers.append(ServerSample(
            server=host, slot=i + 1,
            scalelite=ScaleliteServer(id=str(i), url=f"https://h{i}/bigbluebutton/api", secret="x",
                                      state=draw(st.sampled_from(list(ScaleliteState))),
                                      online=draw(st.booleans()), load=draw(st.one_of(st.none(), number)),
                                      load_multiplier=draw(number)),
            bbb=BBBSample(up, MeetingTotals(*draw(st.lists(st.integers(0, 10**6), min_size=7, max_size=7)))
                          if up else None, draw(number) if up else None),
            ssh=draw(st.sampled_from([None, SSHSample(False, error_kind="auth"), SSHSample(True, stats)]))))
    vms = tuple(ScalewayServerSample(h, i, VM(id=draw(label_text), name=f"bbb-{i}",
                                              state=draw(st.sampled_from(list(VMState))),
                                              commercial_type=draw(label_text), zone="fr-par-1", tags=(),
                                              creation_date=0.0, modification_date=draw(number)),
                                     draw(st.one_of(st.none(), number)))
                for i, h in enumerate(draw(st.lists(label_text, max_size=3, unique=True))))
    pool = PoolSnapshot(pool=draw(label_text), taken_at=draw(number), scalelite_up=draw(st.booleans()),
                        scalelite_stale=draw(st.booleans()), servers=tuple(servers),
                        scaleway_up=draw(st.sampled_from([None, True, False])), scaleway_servers=vms,
                        participants_per_server=250, meetings_per_server=15,
                        sources=(SourceStatus("bbb", draw(number), draw(st.one_of(st.none(), number))),),
                        bbb_errors=tuple((s.server, draw(st.integers(0, 99))) for s in servers))
    return ExporterSnapshot(taken_at=draw(number), pools=(pool,),
                            errors=(ErrorCount(pool.pool, "bbb", "timeout", draw(st.integers(0, 9))),))


@settings(max_examples=60, deadline=None)
@given(snapshots())
def test_fast_renderer_matches_prometheus_client_on_generated_snapshots(snap):
    assert _both(snap) == _reference(snap)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_served_body():
    snap = full_snapshot()
    app = MetricsApp(build_registry(lambda: snap), lambda: snap, max_age_seconds=60)
    body, content_type = app.render("")
    assert content_type == CONTENT_TYPE_PLAIN_0_0_4
    out = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out


def _without_process_samples(body: bytes) -> bytes:
    return b"\n".join(line for line in body.split(b"\n") if not line.startswith(b"process_"))


def test_served_bodies_are_the_snapshot_plus_process_metrics_in_the_asked_format():
    snap = full_snapshot()
    app = MetricsApp(build_registry(lambda: snap), lambda: snap, max_age_seconds=60)
    text, text_type = app.render("")
    om, om_type = app.render(PROMETHEUS_ACCEPT)
    zipped, _ = app.render(PROMETHEUS_ACCEPT, gzipped=True)
    ref_text, ref_om = _reference(snap)
    assert text_type == CONTENT_TYPE_PLAIN_0_0_4 and om_type.startswith("application/openmetrics-text")
    assert text.startswith(ref_text) and b"process_resident_memory_bytes" in text[len(ref_text):]
    assert om.startswith(ref_om[:-len(b"# EOF\n")]) and om.endswith(b"# EOF\n") and om.count(b"# EOF") == 1
    # the same body, but for the process' own samples (CPU seconds, open fds) that move between renders
    assert _without_process_samples(gzip.decompress(zipped)) == _without_process_samples(om)
    assert {f.name for f in parse_openmetrics(om.decode())} >= {"bbb_api_up", "process_resident_memory_bytes"}
    # A rarer format goes through the registry path (and still carries the snapshot).
    other, other_type = app.render("text/plain;version=1.0.0;escaping=allow-utf-8")
    assert "escaping=allow-utf-8" in other_type and b"bbb_api_up{" in other


def test_prerender_renders_what_scrapes_asked_for_and_text_when_nothing_was():
    holder = {"snap": full_snapshot()}
    current = lambda: holder["snap"]  # noqa: E731
    app = MetricsApp(build_registry(current), current, max_age_seconds=60)
    rendered: list[str] = []
    real = app._body

    def spy(snap, content_type, encoder):
        rendered.append(content_type)
        return real(snap, content_type, encoder)

    app._body = spy
    app.prerender(holder["snap"])
    assert rendered == [CONTENT_TYPE_PLAIN_0_0_4]  # nothing asked yet: the text format
    app.render("")  # served from the cache: no render
    _, om_type = app.render(PROMETHEUS_ACCEPT, gzipped=True)  # not rendered for this snapshot: now
    assert rendered == [CONTENT_TYPE_PLAIN_0_0_4, om_type]
    nxt = ExporterSnapshot(taken_at=holder["snap"].taken_at + 15, pools=holder["snap"].pools)
    rendered.clear()
    app.prerender(nxt)
    holder["snap"] = nxt
    assert sorted(rendered) == sorted([CONTENT_TYPE_PLAIN_0_0_4, om_type])  # what was asked, once each
    app.render(PROMETHEUS_ACCEPT, gzipped=True)
    app.render("")
    assert len(rendered) == 2  # both were ready for the new snapshot
