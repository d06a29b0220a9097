"""The domain model shared by every divims service: plain, frozen values.

Clients turn wire formats into these; the exporter, the scaler and the testbed only see these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import urlsplit


class ScaleliteState(StrEnum):
    ENABLED = "enabled"
    CORDONED = "cordoned"
    DISABLED = "disabled"


class VMState(StrEnum):
    """Scaleway Instance states. The Python SDK says `stopped_in_place`, the API and Go SDK
    `stopped in place`: `VMState.parse` accepts both."""

    RUNNING = "running"
    STOPPED = "stopped"
    STOPPED_IN_PLACE = "stopped_in_place"
    STARTING = "starting"
    STOPPING = "stopping"
    LOCKED = "locked"

    @classmethod
    def parse(cls, value: object) -> VMState:
        text = str(getattr(value, "value", value)).strip().lower().replace(" ", "_")
        try:
            return cls(text)
        except ValueError:
            raise ValueError(f"unknown Scaleway server state {value!r}") from None


def url_host(url: str) -> str:
    """The host of a URL (no port, no scheme), lower-cased: the `server` label everywhere."""
    return (urlsplit(url).hostname or "").lower()


@dataclass(frozen=True)
class ScaleliteServer:
    """One entry of Scalelite's getServers (or rake servers:yaml[verbose])."""

    id: str
    url: str
    secret: str = field(repr=False)
    state: ScaleliteState
    online: bool
    load: float | None  # None when Scalelite says "unavailable"
    load_multiplier: float = 1.0
    tag: str = ""
    bbb_version: str = ""

    @property
    def host(self) -> str:
        return url_host(self.url)


@dataclass(frozen=True)
class Meeting:
    """One meeting of a BBB server's getMeetings. Names and IDs never leave the process as metrics."""

    meeting_id: str
    internal_meeting_id: str
    create_time: float  # epoch seconds (BBB gives milliseconds)
    participant_count: int
    listener_count: int = 0
    voice_participant_count: int = 0
    video_count: int = 0
    moderator_count: int = 0
    is_breakout: bool = False
    recording: bool = False
    moderator_pw: str = field(default="", repr=False)


@dataclass(frozen=True)
class Recording:
    record_id: str
    meeting_id: str
    state: str  # processing | processed | published | unpublished | deleted
    start_time: float  # epoch seconds
    end_time: float


@dataclass(frozen=True)
class RecordingPipeline:
    """Recordings on a BBB host by pipeline stage, read over SSH from /var/bigbluebutton/recording/status."""

    recorded: int = 0
    archived: int = 0
    sanity: int = 0
    processing: int = 0
    published_not_transferred: int = 0
    failed: int = 0

    @property
    def unprocessed(self) -> int:
        return self.recorded + self.archived + self.sanity

    @property
    def unfinished(self) -> int:
        """Everything that still needs this host: a host with unfinished recordings must not be deleted."""
        return self.unprocessed + self.processing + self.published_not_transferred


@dataclass(frozen=True)
class HostStats:
    """What SSH tells about a BBB host."""

    load1: float
    cpus: int
    uptime_seconds: float
    services_healthy: bool
    recordings: RecordingPipeline
    tls_expiry_timestamp: float | None  # epoch seconds of the certificate's notAfter
    # age of the oldest recording in the processing stage, None when none is processing or unknown
    oldest_processing_age_seconds: float | None = None


@dataclass(frozen=True)
class Volume:
    id: str
    volume_type: str  # l_ssd | sbs_volume | ...
    size_bytes: int = 0
    server_id: str | None = None


@dataclass(frozen=True)
class FlexibleIP:
    id: str
    address: str
    server_id: str | None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class VM:
    """A Scaleway Instance as divims sees it."""

    id: str
    name: str
    state: VMState
    commercial_type: str
    zone: str
    tags: tuple[str, ...]
    creation_date: float  # epoch seconds
    modification_date: float  # epoch seconds: when the state last changed
    public_ip: str | None = None
    volumes: tuple[Volume, ...] = ()
    maintenances: int = 0  # scheduled hoster maintenances

    def tag_value(self, key: str) -> str | None:
        prefix = key + "="
        for tag in self.tags:
            if tag.startswith(prefix):
                return tag[len(prefix):]
        return None

    @property
    def slot(self) -> int | None:
        value = self.tag_value("divims-slot")
        return int(value) if value and value.isdigit() else None


# Tags every divims-made VM carries, so that each cycle can reconcile from what exists.
TAG_MANAGED = "divims"


def pool_tags(pool: str, slot: int) -> tuple[str, ...]:
    return (TAG_MANAGED, f"divims-pool={pool}", f"divims-slot={slot}")
