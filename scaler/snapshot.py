"""The values that cross the line between deciding and acting.

signals + inventory -> Snapshot -> policy (terms, Decision) -> planner (Plan of Actions) -> actuator.
The live scaler builds Snapshots from Prometheus, Scaleway and Scalelite; the backtest builds them from
its simulated pool. Both hand them to the same pure policy and planner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from divims.model import VM, FlexibleIP, ScaleliteServer, Volume


@dataclass(frozen=True)
class Signal:
    """One PromQL signal. `value is None` means unknown (missing, empty, stale or unreachable):
    never read it as zero. `reason` says why it is unknown."""

    name: str
    value: float | None
    age_seconds: float | None = None
    reason: str = ""

    @property
    def known(self) -> bool:
        return self.value is not None


@dataclass(frozen=True)
class ServerLoad:
    meetings: int | None                      # None: unknown (no fresh series, e.g. its BBB API is down)
    participants: int | None
    recordings_unfinished: int | None = None  # None: unknown (no SSH / no signal)
    bbb_api_up: bool | None = None            # None: unknown
    services_healthy: bool | None = None
    recordings_failed: int | None = None
    uptime_seconds: float | None = None


@dataclass(frozen=True)
class Signals:
    participants: Signal
    meetings: Signal
    # growth of participants per second over the growth window (PromQL deriv/predict_linear)
    participants_growth: Signal = field(default_factory=lambda: Signal("participants_growth", None))
    # participants seen one day / one week ago at now + boot time (PromQL offset): the forecast term
    participants_yesterday: Signal = field(default_factory=lambda: Signal("participants_yesterday", None))
    participants_last_week: Signal = field(default_factory=lambda: Signal("participants_last_week", None))
    meetings_yesterday: Signal = field(default_factory=lambda: Signal("meetings_yesterday", None))
    meetings_last_week: Signal = field(default_factory=lambda: Signal("meetings_last_week", None))
    # participants one day / one week ago at now (PromQL offset 1d / 7d, no look-ahead): the forecast
    # scales yesterday's curve by today's ratio to it, so a Saturday does not replay a Friday
    participants_yesterday_now: Signal = field(default_factory=lambda: Signal("participants_yesterday_now", None))
    participants_last_week_now: Signal = field(default_factory=lambda: Signal("participants_last_week_now", None))
    # per server host (the `server` label): None when the per-server signal is unknown
    per_server: dict[str, ServerLoad] | None = None
    prometheus_up: bool = True

    def all(self) -> list[Signal]:
        return [self.participants, self.meetings, self.participants_growth, self.participants_yesterday,
                self.participants_last_week, self.meetings_yesterday, self.meetings_last_week,
                self.participants_yesterday_now, self.participants_last_week_now]


@dataclass(frozen=True)
class SlotState:
    """Everything known about slot n: its VM (if any), its Scalelite entry (if any), its live load."""

    slot: int
    name: str           # Scaleway server name (hostname_template)
    domain: str         # host of the Scalelite URL (domain_template): the `server` label
    vm: VM | None = None
    scalelite: ScaleliteServer | None = None
    ip: FlexibleIP | None = None
    meetings: int | None = None             # None: unknown
    participants: int | None = None
    recordings_unfinished: int | None = None
    oldest_meeting_age_seconds: float | None = None
    bbb_api_up: bool | None = None
    services_healthy: bool | None = None
    recordings_failed: int | None = None
    uptime_seconds: float | None = None
    in_maintenance: bool = False            # operator's maintenance list: never touched
    # epoch seconds the current power-on period began (billing anchor), when known; else the
    # planner estimates it from vm.modification_date
    powered_on_at: float | None = None


@dataclass(frozen=True)
class ActionRequest:
    """A durable request from the alert webhook (scale_out, replace_server, cordon_server, hold_scale_in)."""

    id: int
    action: str
    server: str | None = None   # the alert's `server` label
    servers: int | None = None  # for scale_out
    until: float | None = None  # epoch seconds, for scale_out / hold_scale_in
    reason: str = ""


@dataclass(frozen=True)
class Snapshot:
    pool: str
    now: float                              # epoch seconds
    signals: Signals
    slots: tuple[SlotState, ...]
    orphan_volumes: tuple[Volume, ...] = ()  # detached volumes of the pool
    stray_vms: tuple[VM, ...] = ()           # pool-tagged VMs that are not the slot's one (duplicates)
    requests: tuple[ActionRequest, ...] = ()
    inventory_complete: bool = True          # False when Scaleway or Scalelite could not be read
    inventory_problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Term:
    """One term of the desired-capacity formula, with the reason a human reads."""

    name: str                 # load | schedule | forecast | request
    servers: int | None       # None: the term could not be computed (its reason says why)
    reason: str


@dataclass(frozen=True)
class Decision:
    terms: tuple[Term, ...]
    desired: int              # final, after clamping and damping
    active: int               # servers currently enabled (or coming up) for new meetings
    holds: tuple[str, ...] = ()  # reasons scale-in is held (unknown signals, Prometheus down, ...)
    reason: str = ""


class ActionKind(StrEnum):
    UNCORDON = "uncordon"          # enable a running cordoned server again
    POWERON = "poweron"            # a stopped VM of the slot
    CLONE = "clone"                # create the slot's VM from the image
    ATTACH_IP = "attach_ip"
    ADD_TO_SCALELITE = "add_to_scalelite"
    ENABLE = "enable"              # in Scalelite, once its BBB API answers
    CORDON = "cordon"              # start draining
    END_MEETING = "end_meeting"    # older than meetings_max_duration on a draining server
    PANIC = "panic"                # Scalelite panic before terminate
    TERMINATE = "terminate"
    DELETE_VOLUME = "delete_volume"
    POWEROFF = "poweroff"


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    slot: int | None
    reason: str
    server_id: str | None = None      # Scaleway id, Scalelite id or volume id, by kind
    meeting_id: str | None = None
    request_id: int | None = None     # the webhook request it executes


@dataclass(frozen=True)
class Plan:
    pool: str
    decision: Decision
    actions: tuple[Action, ...]
    waits: tuple[str, ...] = ()       # why a slot is not acted on yet (draining with meetings, ...)
