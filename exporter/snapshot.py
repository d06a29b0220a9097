"""What one poll cycle learned, as immutable values: the collector renders these and nothing else.

A poll cycle builds a new `ExporterSnapshot` and swaps it in whole; a scrape reads whichever snapshot is
current, so it never sees half of a cycle and never waits for a remote server.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from divims.model import VM, HostStats, Meeting, ScaleliteServer

# Label values of the `source` label of the self-metrics.
SOURCE_SCALELITE = "scalelite"
SOURCE_BBB = "bbb"
SOURCE_SSH = "ssh"
SOURCE_SCALEWAY = "scaleway"
SOURCES = (SOURCE_SCALELITE, SOURCE_BBB, SOURCE_SSH, SOURCE_SCALEWAY)


@dataclass(frozen=True)
class MeetingTotals:
    """The per-server sums of getMeetings; no meeting ID or name survives into these."""

    meetings: int = 0
    participants: int = 0
    voice_participants: int = 0
    video_participants: int = 0
    listeners: int = 0
    moderators: int = 0
    largest_participants: int = 0

    @classmethod
    def of(cls, meetings: Iterable[Meeting]) -> MeetingTotals:
        """Sums over every meeting, breakout rooms included (as Scalelite and greenstatic count them)."""
        items = list(meetings)
        return cls(
            meetings=len(items),
            participants=sum(m.participant_count for m in items),
            voice_participants=sum(m.voice_participant_count for m in items),
            video_participants=sum(m.video_count for m in items),
            listeners=sum(m.listener_count for m in items),
            moderators=sum(m.moderator_count for m in items),
            largest_participants=max((m.participant_count for m in items), default=0),
        )


@dataclass(frozen=True)
class BBBSample:
    """The BBB API of one server in one cycle. `totals` is None when `up` is False."""

    up: bool
    totals: MeetingTotals | None = None
    latency_seconds: float | None = None
    error_kind: str = ""


@dataclass(frozen=True)
class SSHSample:
    """What SSH told about one host, from the last SSH poll (SSH runs less often than the API)."""

    up: bool
    stats: HostStats | None = None
    error_kind: str = ""
    taken_at: float = 0.0


@dataclass(frozen=True)
class ServerSample:
    """One Scalelite server of the pool (inside domain_template) and what its BBB API and SSH said."""

    server: str  # the host of its Scalelite URL: the `server` label
    slot: int
    scalelite: ScaleliteServer
    bbb: BBBSample
    ssh: SSHSample | None = None  # None: SSH not configured, or not polled yet


@dataclass(frozen=True)
class ScalewayServerSample:
    """The VM of a slot (inside hostname_template), labelled with the slot's domain."""

    server: str  # pool.slot_domain(slot)
    slot: int
    vm: VM
    hourly_price_euros: float | None = None


@dataclass(frozen=True)
class SourceStatus:
    """How polling one source of one pool went this cycle."""

    source: str
    duration_seconds: float
    last_success: float | None  # epoch seconds of the last fully successful poll, None: never


@dataclass(frozen=True)
class ErrorCount:
    pool: str
    source: str
    kind: str
    count: int


@dataclass(frozen=True)
class PoolSnapshot:
    pool: str
    taken_at: float
    scalelite_up: bool
    scalelite_stale: bool  # True: `servers` is the last known list (Scalelite did not answer this cycle)
    servers: tuple[ServerSample, ...]
    scaleway_up: bool | None  # None: Scaleway not polled (no Scaleway source for this pool)
    scaleway_servers: tuple[ScalewayServerSample, ...]
    participants_per_server: int
    meetings_per_server: int
    sources: tuple[SourceStatus, ...]
    bbb_errors: tuple[tuple[str, int], ...] = ()  # (server, failed polls since start)

    @property
    def enabled_servers(self) -> int:
        return sum(1 for s in self.servers if s.scalelite.state == "enabled")


@dataclass(frozen=True)
class ExporterSnapshot:
    """Everything the collector renders: the last finished cycle of every pool, and the error counters."""

    taken_at: float
    pools: tuple[PoolSnapshot, ...]
    errors: tuple[ErrorCount, ...] = ()
    cycle_seconds: float = 0.0
