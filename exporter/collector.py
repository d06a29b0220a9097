"""A prometheus-client custom collector that renders the latest `ExporterSnapshot`.

`collect()` reads one attribute (the current snapshot) and turns it into metric families: no remote call,
no lock held against the poll loop, so a scrape costs the same whatever the pool's servers are doing.
Metric names and labels are a contract (issue 3): BBB names follow greenstatic/bigbluebutton-exporter
where the meaning is the same, with `pool` and `server` labels added.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from divims.model import ScaleliteState, VMState
from exporter.snapshot import ExporterSnapshot, PoolSnapshot

PS = ["pool", "server"]
SCALELITE_STATES = tuple(s.value for s in ScaleliteState)
SCALEWAY_STATES = tuple(s.value for s in VMState)


def _g(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


class SnapshotCollector(Collector):
    """Renders whatever `current()` returns; before the first cycle ends it renders nothing but
    `divims_exporter_up`-style self information (no snapshot yet means no pool series yet)."""

    def __init__(self, current: Callable[[], ExporterSnapshot | None]):
        self._current = current

    def describe(self) -> list[Metric]:
        # Empty on purpose: registering must not run collect() (and the families vary with the snapshot).
        return []

    def collect(self) -> Iterator[Metric]:
        snap = self._current()
        cycles = _g("divims_exporter_snapshot_timestamp_seconds",
                    "When the snapshot being served was finished (epoch seconds)", [])
        if snap is not None:
            cycles.add_metric([], snap.taken_at)
        yield cycles
        if snap is None:
            return
        yield from _scalelite(snap.pools)
        yield from _bbb(snap.pools)
        yield from _ssh(snap.pools)
        yield from _scaleway(snap.pools)
        yield from _self(snap)


def _scalelite(pools: tuple[PoolSnapshot, ...]) -> Iterator[Metric]:
    up = _g("scalelite_up", "1 when Scalelite's getServers answered in the last poll", ["pool"])
    stale = _g("scalelite_server_list_stale",
               "1 when the server list shown is the last known one (Scalelite did not answer)", ["pool"])
    state = _g("scalelite_server_state", "Scalelite state of the server: 1 for the current one",
               ["pool", "server", "state"])
    online = _g("scalelite_server_online", "1 when Scalelite considers the server online", PS)
    load = _g("scalelite_server_load", "Scalelite's load of the server (absent when unavailable)", PS)
    mult = _g("scalelite_server_load_multiplier", "Scalelite load multiplier of the server", PS)
    cap_p = _g("divims_pool_capacity_participants",
               "Participants the pool's enabled servers take (enabled servers x participants_per_server)",
               ["pool"])
    cap_m = _g("divims_pool_capacity_meetings",
               "Meetings the pool's enabled servers take (enabled servers x meetings_per_server)", ["pool"])
    for p in pools:
        up.add_metric([p.pool], 1.0 if p.scalelite_up else 0.0)
        stale.add_metric([p.pool], 1.0 if p.scalelite_stale else 0.0)
        enabled = p.enabled_servers
        cap_p.add_metric([p.pool], float(enabled * p.participants_per_server))
        cap_m.add_metric([p.pool], float(enabled * p.meetings_per_server))
        for s in p.servers:
            current = str(s.scalelite.state)
            for value in SCALELITE_STATES:
                state.add_metric([p.pool, s.server, value], 1.0 if value == current else 0.0)
            online.add_metric([p.pool, s.server], 1.0 if s.scalelite.online else 0.0)
            if s.scalelite.load is not None:
                load.add_metric([p.pool, s.server], float(s.scalelite.load))
            mult.add_metric([p.pool, s.server], float(s.scalelite.load_multiplier))
    yield from (up, stale, state, online, load, mult, cap_p, cap_m)


# (metric, help, MeetingTotals attribute)
_BBB_TOTALS = (
    ("bbb_meetings", "Meetings on the server, breakout rooms included", "meetings"),
    ("bbb_meetings_participants", "Participants over all meetings (sum of participantCount)", "participants"),
    ("bbb_meetings_voice_participants", "Participants with voice (sum of voiceParticipantCount)",
     "voice_participants"),
    ("bbb_meetings_video_participants", "Participants with video (sum of videoCount)", "video_participants"),
    ("bbb_meetings_listeners", "Listen-only participants (sum of listenerCount)", "listeners"),
    ("bbb_meetings_moderators", "Moderators (sum of moderatorCount)", "moderators"),
    ("bbb_meetings_largest_participants", "Participants of the server's largest meeting",
     "largest_participants"),
)


def _bbb(pools: tuple[PoolSnapshot, ...]) -> Iterator[Metric]:
    up = _g("bbb_api_up", "1 when the server's BBB API answered getMeetings with SUCCESS in the last poll", PS)
    latency = _g("bbb_api_latency_seconds", "Duration of the last successful getMeetings call", PS)
    errors = CounterMetricFamily("bbb_api_errors", "Failed getMeetings polls of the server since the "
                                 "exporter started", labels=PS)
    totals = [(_g(name, doc, PS), attr) for name, doc, attr in _BBB_TOTALS]
    for p in pools:
        for s in p.servers:
            labels = [p.pool, s.server]
            up.add_metric(labels, 1.0 if s.bbb.up else 0.0)
            if s.bbb.latency_seconds is not None:
                latency.add_metric(labels, s.bbb.latency_seconds)
            if s.bbb.totals is not None:
                for family, attr in totals:
                    family.add_metric(labels, float(getattr(s.bbb.totals, attr)))
        for server, count in p.bbb_errors:
            errors.add_metric([p.pool, server], float(count))
    yield up
    yield latency
    yield errors
    for family, _ in totals:
        yield family


def _ssh(pools: tuple[PoolSnapshot, ...]) -> Iterator[Metric]:
    up = _g("bbb_ssh_up", "1 when the last SSH poll of the host succeeded", PS)
    fams = {
        "processing": _g("bbb_recordings_processing", "Recordings being processed on the host", PS),
        "unprocessed": _g("bbb_recordings_unprocessed",
                          "Recordings waiting in recorded, archived or sanity", PS),
        "transfers": _g("bbb_recordings_unpublished_transfers",
                        "Recordings published on the host and not yet transferred to Scalelite", PS),
        "failed": _g("bbb_recordings_failed", "Recordings whose processing failed", PS),
        "oldest": _g("bbb_recordings_oldest_processing_age_seconds",
                     "Age of the oldest recording being processed", PS),
        "load1": _g("bbb_node_load1", "One-minute load average of the host", PS),
        "cpus": _g("bbb_node_cpus", "CPUs of the host", PS),
        "uptime": _g("bbb_node_uptime_seconds", "Uptime of the host", PS),
        "healthy": _g("bbb_services_healthy", "1 when every BBB service is active (bbb-conf --status)", PS),
        "tls": _g("bbb_tls_certificate_expiry_timestamp_seconds",
                  "When the host's TLS certificate expires (epoch seconds)", PS),
    }
    for p in pools:
        for s in p.servers:
            if s.ssh is None:
                continue
            labels = [p.pool, s.server]
            up.add_metric(labels, 1.0 if s.ssh.up else 0.0)
            st = s.ssh.stats
            if st is None:
                continue
            rec = st.recordings
            fams["processing"].add_metric(labels, float(rec.processing))
            fams["unprocessed"].add_metric(labels, float(rec.unprocessed))
            fams["transfers"].add_metric(labels, float(rec.published_not_transferred))
            fams["failed"].add_metric(labels, float(rec.failed))
            if st.oldest_processing_age_seconds is not None:
                fams["oldest"].add_metric(labels, float(st.oldest_processing_age_seconds))
            fams["load1"].add_metric(labels, float(st.load1))
            fams["cpus"].add_metric(labels, float(st.cpus))
            fams["uptime"].add_metric(labels, float(st.uptime_seconds))
            fams["healthy"].add_metric(labels, 1.0 if st.services_healthy else 0.0)
            if st.tls_expiry_timestamp is not None:
                fams["tls"].add_metric(labels, float(st.tls_expiry_timestamp))
    yield up
    yield from fams.values()


def _scaleway(pools: tuple[PoolSnapshot, ...]) -> Iterator[Metric]:
    up = _g("scaleway_up", "1 when Scaleway's server list was read in the last poll", ["pool"])
    state = _g("scaleway_server_state", "Scaleway state of the slot's server: 1 for the current one",
               ["pool", "server", "state"])
    info = _g("scaleway_server_info", "The Scaleway server of the slot (always 1)",
              ["pool", "server", "id", "commercial_type", "zone"])
    changed = _g("scaleway_server_state_changed_timestamp_seconds",
                 "When the server's state last changed (Scaleway modification_date, epoch seconds)", PS)
    price = _g("scaleway_server_hourly_price_euros", "Catalog price of the server's commercial type, "
               "EUR per hour", PS)
    for p in pools:
        if p.scaleway_up is None:
            continue
        up.add_metric([p.pool], 1.0 if p.scaleway_up else 0.0)
        for v in p.scaleway_servers:
            labels = [p.pool, v.server]
            current = str(v.vm.state)
            for value in SCALEWAY_STATES:
                state.add_metric([p.pool, v.server, value], 1.0 if value == current else 0.0)
            info.add_metric([p.pool, v.server, v.vm.id, v.vm.commercial_type, v.vm.zone], 1.0)
            changed.add_metric(labels, float(v.vm.modification_date))
            if v.hourly_price_euros is not None:
                price.add_metric(labels, float(v.hourly_price_euros))
    yield from (up, state, info, changed, price)


def _self(snap: ExporterSnapshot) -> Iterator[Metric]:
    duration = _g("divims_exporter_poll_duration_seconds", "Duration of the last poll of the source",
                  ["pool", "source"])
    success = _g("divims_exporter_last_success_timestamp_seconds",
                 "When the source was last polled successfully (epoch seconds)", ["pool", "source"])
    errors = CounterMetricFamily("divims_exporter_poll_errors", "Failed calls to a source, by kind",
                                 labels=["pool", "source", "kind"])
    for p in snap.pools:
        for s in p.sources:
            duration.add_metric([p.pool, s.source], s.duration_seconds)
            if s.last_success is not None:
                success.add_metric([p.pool, s.source], s.last_success)
    for e in snap.errors:
        errors.add_metric([e.pool, e.source, e.kind], float(e.count))
    yield from (duration, success, errors)
