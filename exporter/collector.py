"""What the exporter says about a snapshot, as metric families, and a prometheus-client custom collector.

`families(snap)` is the one place that decides which series exist, with which labels and values. Two
renderers share it: `SnapshotCollector` (the prometheus-client registry path, the reference) and
`exporter.exposition` (writes the exposition text straight from the families, for `/metrics`); a test
proves both give the same bytes. Neither calls a remote API nor holds a lock against the poll loop.
Metric names and labels are a contract (issue 3): BBB names follow greenstatic/bigbluebutton-exporter
where the meaning is the same, with `pool` and `server` labels added.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from divims.model import ScaleliteState, VMState
from exporter.snapshot import ExporterSnapshot, PoolSnapshot

PS = ("pool", "server")
SCALELITE_STATES = tuple(s.value for s in ScaleliteState)
SCALEWAY_STATES = tuple(s.value for s in VMState)
GAUGE = "gauge"
COUNTER = "counter"

Row = tuple[tuple[str, ...], float]  # (label values in the family's label order, value)


@dataclass(frozen=True)
class Family:
    """One metric family: `name` as prometheus-client names it (a counter without `_total`), and its
    samples as rows of label values (in `labels` order) and a value."""

    name: str
    kind: str  # GAUGE | COUNTER
    doc: str
    labels: tuple[str, ...]
    rows: tuple[Row, ...]


class _Builder:
    """Collects rows for a family; `done()` freezes it."""

    __slots__ = ("name", "kind", "doc", "labels", "rows")

    def __init__(self, name: str, doc: str, labels: tuple[str, ...], kind: str = GAUGE):
        self.name, self.kind, self.doc, self.labels = name, kind, doc, labels
        self.rows: list[Row] = []

    def add(self, values: tuple[str, ...], value: float) -> None:
        self.rows.append((values, value))

    def done(self) -> Family:
        return Family(self.name, self.kind, self.doc, self.labels, tuple(self.rows))


def families(snap: ExporterSnapshot | None) -> tuple[Family, ...]:
    """Every family the exporter exposes for `snap`, in exposition order. Before the first cycle (None)
    only the snapshot timestamp family, empty (no snapshot yet means no pool series yet)."""
    ts = _Builder("divims_exporter_snapshot_timestamp_seconds",
                  "When the snapshot being served was finished (epoch seconds)", ())
    if snap is None:
        return (ts.done(),)
    ts.add((), snap.taken_at)
    return (ts.done(), *_scalelite(snap.pools), *_bbb(snap.pools), *_ssh(snap.pools),
            *_scaleway(snap.pools), *_self(snap))


class SnapshotCollector(Collector):
    """The registry path: renders `families(current())` as prometheus-client metric families."""

    def __init__(self, current: Callable[[], ExporterSnapshot | None]):
        self._current = current

    def describe(self) -> list[Metric]:
        # Empty on purpose: registering must not run collect() (and the families vary with the snapshot).
        return []

    def collect(self) -> Iterator[Metric]:
        for fam in families(self._current()):
            cls = CounterMetricFamily if fam.kind == COUNTER else GaugeMetricFamily
            metric = cls(fam.name, fam.doc, labels=list(fam.labels))
            for values, value in fam.rows:
                metric.add_metric(list(values), value)
            yield metric


def _scalelite(pools: tuple[PoolSnapshot, ...]) -> list[Family]:
    up = _Builder("scalelite_up", "1 when Scalelite's getServers answered in the last poll", ("pool",))
    stale = _Builder("scalelite_server_list_stale",
                     "1 when the server list shown is the last known one (Scalelite did not answer)", ("pool",))
    state = _Builder("scalelite_server_state", "Scalelite state of the server: 1 for the current one",
                     ("pool", "server", "state"))
    online = _Builder("scalelite_server_online", "1 when Scalelite considers the server online", PS)
    load = _Builder("scalelite_server_load", "Scalelite's load of the server (absent when unavailable)", PS)
    mult = _Builder("scalelite_server_load_multiplier", "Scalelite load multiplier of the server", PS)
    cap_p = _Builder("divims_pool_capacity_participants",
                     "Participants the pool's enabled servers take (enabled servers x participants_per_server)",
                     ("pool",))
    cap_m = _Builder("divims_pool_capacity_meetings",
                     "Meetings the pool's enabled servers take (enabled servers x meetings_per_server)", ("pool",))
    for p in pools:
        up.add((p.pool,), 1.0 if p.scalelite_up else 0.0)
        stale.add((p.pool,), 1.0 if p.scalelite_stale else 0.0)
        enabled = p.enabled_servers
        cap_p.add((p.pool,), float(enabled * p.participants_per_server))
        cap_m.add((p.pool,), float(enabled * p.meetings_per_server))
        for s in p.servers:
            current = str(s.scalelite.state)
            for value in SCALELITE_STATES:
                state.add((p.pool, s.server, value), 1.0 if value == current else 0.0)
            labels = (p.pool, s.server)
            online.add(labels, 1.0 if s.scalelite.online else 0.0)
            if s.scalelite.load is not None:
                load.add(labels, float(s.scalelite.load))
            mult.add(labels, float(s.scalelite.load_multiplier))
    return [b.done() for b in (up, stale, state, online, load, mult, cap_p, cap_m)]


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


def _bbb(pools: tuple[PoolSnapshot, ...]) -> list[Family]:
    up = _Builder("bbb_api_up", "1 when the server's BBB API answered getMeetings with SUCCESS in the last poll",
                  PS)
    latency = _Builder("bbb_api_latency_seconds", "Duration of the last successful getMeetings call", PS)
    errors = _Builder("bbb_api_errors", "Failed getMeetings polls of the server since the exporter started", PS,
                      COUNTER)
    totals = [(_Builder(name, doc, PS), attr) for name, doc, attr in _BBB_TOTALS]
    for p in pools:
        for s in p.servers:
            labels = (p.pool, s.server)
            up.add(labels, 1.0 if s.bbb.up else 0.0)
            if s.bbb.latency_seconds is not None:
                latency.add(labels, s.bbb.latency_seconds)
            if s.bbb.totals is not None:
                for family, attr in totals:
                    family.add(labels, float(getattr(s.bbb.totals, attr)))
        for server, count in p.bbb_errors:
            errors.add((p.pool, server), float(count))
    return [up.done(), latency.done(), errors.done(), *(family.done() for family, _ in totals)]


def _ssh(pools: tuple[PoolSnapshot, ...]) -> list[Family]:
    up = _Builder("bbb_ssh_up", "1 when the last SSH poll of the host succeeded", PS)
    fams = {
        "processing": _Builder("bbb_recordings_processing", "Recordings being processed on the host", PS),
        "unprocessed": _Builder("bbb_recordings_unprocessed",
                                "Recordings waiting in recorded, archived or sanity", PS),
        "transfers": _Builder("bbb_recordings_unpublished_transfers",
                              "Recordings published on the host and not yet transferred to Scalelite", PS),
        "failed": _Builder("bbb_recordings_failed", "Recordings whose processing failed", PS),
        "oldest": _Builder("bbb_recordings_oldest_processing_age_seconds",
                           "Age of the oldest recording being processed", PS),
        "load1": _Builder("bbb_node_load1", "One-minute load average of the host", PS),
        "cpus": _Builder("bbb_node_cpus", "CPUs of the host", PS),
        "uptime": _Builder("bbb_node_uptime_seconds", "Uptime of the host", PS),
        "healthy": _Builder("bbb_services_healthy", "1 when every BBB service is active (bbb-conf --status)", PS),
        "tls": _Builder("bbb_tls_certificate_expiry_timestamp_seconds",
                        "When the host's TLS certificate expires (epoch seconds)", PS),
    }
    for p in pools:
        for s in p.servers:
            if s.ssh is None:
                continue
            labels = (p.pool, s.server)
            up.add(labels, 1.0 if s.ssh.up else 0.0)
            st = s.ssh.stats
            if st is None:
                continue
            rec = st.recordings
            fams["processing"].add(labels, float(rec.processing))
            fams["unprocessed"].add(labels, float(rec.unprocessed))
            fams["transfers"].add(labels, float(rec.published_not_transferred))
            fams["failed"].add(labels, float(rec.failed))
            if st.oldest_processing_age_seconds is not None:
                fams["oldest"].add(labels, float(st.oldest_processing_age_seconds))
            fams["load1"].add(labels, float(st.load1))
            fams["cpus"].add(labels, float(st.cpus))
            fams["uptime"].add(labels, float(st.uptime_seconds))
            fams["healthy"].add(labels, 1.0 if st.services_healthy else 0.0)
            if st.tls_expiry_timestamp is not None:
                fams["tls"].add(labels, float(st.tls_expiry_timestamp))
    return [up.done(), *(b.done() for b in fams.values())]


def _scaleway(pools: tuple[PoolSnapshot, ...]) -> list[Family]:
    up = _Builder("scaleway_up", "1 when Scaleway's server list was read in the last poll", ("pool",))
    state = _Builder("scaleway_server_state", "Scaleway state of the slot's server: 1 for the current one",
                     ("pool", "server", "state"))
    info = _Builder("scaleway_server_info", "The Scaleway server of the slot (always 1)",
                    ("pool", "server", "id", "commercial_type", "zone"))
    changed = _Builder("scaleway_server_state_changed_timestamp_seconds",
                       "When the server's state last changed (Scaleway modification_date, epoch seconds)", PS)
    price = _Builder("scaleway_server_hourly_price_euros", "Catalog price of the server's commercial type, "
                     "EUR per hour", PS)
    for p in pools:
        if p.scaleway_up is None:
            continue
        up.add((p.pool,), 1.0 if p.scaleway_up else 0.0)
        for v in p.scaleway_servers:
            labels = (p.pool, v.server)
            current = str(v.vm.state)
            for value in SCALEWAY_STATES:
                state.add((p.pool, v.server, value), 1.0 if value == current else 0.0)
            info.add((p.pool, v.server, v.vm.id, v.vm.commercial_type, v.vm.zone), 1.0)
            changed.add(labels, float(v.vm.modification_date))
            if v.hourly_price_euros is not None:
                price.add(labels, float(v.hourly_price_euros))
    return [b.done() for b in (up, state, info, changed, price)]


def _self(snap: ExporterSnapshot) -> list[Family]:
    duration = _Builder("divims_exporter_poll_duration_seconds", "Duration of the last poll of the source",
                        ("pool", "source"))
    success = _Builder("divims_exporter_last_success_timestamp_seconds",
                       "When the source was last polled successfully (epoch seconds)", ("pool", "source"))
    errors = _Builder("divims_exporter_poll_errors", "Failed calls to a source, by kind",
                      ("pool", "source", "kind"), COUNTER)
    for p in snap.pools:
        for s in p.sources:
            duration.add((p.pool, s.source), s.duration_seconds)
            if s.last_success is not None:
                success.add((p.pool, s.source), s.last_success)
    for e in snap.errors:
        errors.add((e.pool, e.source, e.kind), float(e.count))
    return [duration.done(), success.done(), errors.done()]
