"""What each slot is (serving, booting, idle, draining, ...) and the named safety checks.

Every check is a function returning a `Check` (ok, reason): the planner acts only when all the
checks of an action pass, and shows the failing reasons as waits. Pure: only the Snapshot is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from divims.model import ScaleliteState, VMState
from scaler.snapshot import SlotState, Snapshot

PAID_HOUR = 3600.0


@dataclass(frozen=True)
class Rules:
    """The lifecycle limits the planner and its checks apply (build with `from_config`)."""

    max_changes_per_cycle: int = 5
    max_concurrent_clones: int = 3
    min_billed_seconds: float = 3600.0
    billing_hour_seconds: float = PAID_HOUR  # the unit Scaleway bills in after the minimum
    # terminate only within this many seconds of the end of a paid hour (None: no preference);
    # covers two scaler cycles, so a cycle late never starts a new paid hour
    paid_hour_margin_seconds: float | None = 180.0
    meetings_max_duration_seconds: float = 600 * 60.0
    unresponsive_after_seconds: float = 360.0
    recycle_uptime_seconds: float = 7 * 86400.0
    replacements_per_hour: int = 2
    # a server seen unresponsive within this window and answering again is a flapper (see planner.plan)
    flap_window_seconds: float = 1800.0
    flexible_ips: bool = False
    # how long Scaleway's `starting` lasts: the billing anchor when powered_on_at is unknown
    starting_estimate_seconds: float = 60.0

    @classmethod
    def from_config(cls, pool: Any, scaler: Any, **overrides: Any) -> Rules:
        lc = pool.lifecycle
        values = dict(
            max_changes_per_cycle=scaler.max_changes_per_cycle,
            max_concurrent_clones=pool.scaleway.max_concurrent_clones,
            min_billed_seconds=float(lc.min_billed_seconds),
            billing_hour_seconds=float(lc.billing_hour_seconds),
            paid_hour_margin_seconds=max(180.0, 2 * float(scaler.interval_seconds) + 60.0),
            meetings_max_duration_seconds=lc.meetings_max_duration_minutes * 60.0,
            unresponsive_after_seconds=float(lc.unresponsive_after_seconds),
            recycle_uptime_seconds=float(lc.recycle_uptime_seconds),
            replacements_per_hour=lc.replacements_per_hour,
            flexible_ips=pool.scaleway.flexible_ips,
        )
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class Check:
    ok: bool
    reason: str


class Phase(StrEnum):
    MAINTENANCE = "maintenance"   # operator's list: never touched, never counted
    EMPTY = "empty"               # no VM
    STOPPED = "stopped"           # a VM that is off
    STOPPING = "stopping"         # going off or away: wait
    BOOTING = "booting"           # starting, or running while BBB does not answer yet
    SERVING = "serving"           # enabled in Scalelite (new meetings may come)
    IDLE = "idle"                 # running, BBB answers, not enabled, not cordoned, no meeting
    DRAINING = "draining"         # cordoned, or disabled with meetings left


class Health(StrEnum):
    OK = "ok"
    UNRESPONSIVE = "unresponsive"
    MALFUNCTIONING = "malfunctioning"
    RECYCLE = "recycle"


def _state(slot: SlotState) -> ScaleliteState | None:
    return slot.scalelite.state if slot.scalelite else None


def running_for(slot: SlotState, now: float) -> float:
    """Seconds since the VM reached its current state (Scaleway's modification_date)."""
    return now - slot.vm.modification_date if slot.vm else 0.0


def phase(slot: SlotState) -> Phase:
    """The slot's lifecycle phase, from its VM state, Scalelite state, BBB answer and meetings."""
    if slot.in_maintenance:
        return Phase.MAINTENANCE
    vm = slot.vm
    if vm is None:
        return Phase.EMPTY
    if vm.state in (VMState.STOPPED, VMState.STOPPED_IN_PLACE):
        return Phase.STOPPED if _state(slot) != ScaleliteState.ENABLED else Phase.SERVING
    if vm.state in (VMState.STOPPING, VMState.LOCKED):
        return Phase.STOPPING
    state = _state(slot)
    if state == ScaleliteState.ENABLED:
        return Phase.SERVING
    if state == ScaleliteState.CORDONED:
        return Phase.DRAINING
    if vm.state == VMState.STARTING or slot.bbb_api_up is not True:
        return Phase.BOOTING
    if slot.meetings is None or slot.meetings:
        return Phase.DRAINING  # unknown meetings are not "no meeting"
    return Phase.IDLE


def health(slot: SlotState, now: float, rules: Rules) -> Health:
    """unresponsive: running > unresponsive_after and Scalelite offline or BBB API down;
    malfunctioning: services down or failed recordings; recycle: uptime above recycle_uptime."""
    vm = slot.vm
    if vm is None or vm.state != VMState.RUNNING:
        return Health.OK
    if running_for(slot, now) > rules.unresponsive_after_seconds:
        offline = slot.scalelite is not None and _state(slot) != ScaleliteState.DISABLED and not slot.scalelite.online
        if slot.bbb_api_up is False or offline:
            return Health.UNRESPONSIVE
    if slot.services_healthy is False or (slot.recordings_failed or 0) > 0:
        return Health.MALFUNCTIONING
    if slot.uptime_seconds is not None and slot.uptime_seconds >= rules.recycle_uptime_seconds:
        return Health.RECYCLE
    return Health.OK


def counts_active(slot: SlotState, now: float, rules: Rules) -> bool:
    """Serving (not unresponsive) or booting: capacity that takes, or soon takes, new meetings."""
    p = phase(slot)
    if p == Phase.BOOTING:
        return health(slot, now, rules) != Health.UNRESPONSIVE
    return p == Phase.SERVING and health(slot, now, rules) != Health.UNRESPONSIVE


def count_active(snapshot: Snapshot, rules: Rules | None = None) -> int:
    """How many slots serve or are booting (the `active` of a Decision)."""
    r = rules or Rules()
    return sum(1 for s in snapshot.slots if counts_active(s, snapshot.now, r))


def billing_start(slot: SlotState, rules: Rules) -> float | None:
    """When the current power-on period began: powered_on_at, else the state change minus the
    usual `starting` time (earlier is the safe side: the paid hour ends sooner)."""
    if slot.powered_on_at is not None:
        return slot.powered_on_at
    if slot.vm is None:
        return None
    if slot.vm.state == VMState.STARTING:
        return slot.vm.modification_date
    return slot.vm.modification_date - rules.starting_estimate_seconds


# --- the named checks ---------------------------------------------------------------------------

def not_in_maintenance(slot: SlotState) -> Check:
    return Check(not slot.in_maintenance, "in the maintenance list: left alone" if slot.in_maintenance else "")


def no_meetings(slot: SlotState) -> Check:
    """No meeting on the server, by a known count (unknown is not zero)."""
    if slot.meetings is None:
        return Check(False, "meetings unknown")
    return Check(slot.meetings == 0, f"{slot.meetings} meetings still running" if slot.meetings else "")


def no_unfinished_recordings(slot: SlotState) -> Check:
    """Nothing recorded, archived, in sanity, processing, or published but not transferred."""
    if slot.recordings_unfinished is None:
        return Check(False, "recordings unknown")
    n = slot.recordings_unfinished
    return Check(n == 0, f"{n} recordings not finished" if n else "")


def billed_minimum_reached(slot: SlotState, now: float, rules: Rules) -> Check:
    """At least min_billed_seconds since power-on (Scaleway bills each power-on period >= 1 hour),
    less the paid-hour margin when there is one: stopping in the last minutes of the minimum hour
    uses it up, while waiting past it would start a second paid hour."""
    start = billing_start(slot, rules)
    if start is None:
        return Check(True, "")
    age = now - start
    ok = age >= rules.min_billed_seconds - (rules.paid_hour_margin_seconds or 0.0)
    return Check(ok, "" if ok else f"powered on {age / 60:.0f} min ago, minimum {rules.min_billed_seconds / 60:.0f}")


def near_paid_hour_end(slot: SlotState, now: float, rules: Rules) -> Check:
    """Within paid_hour_margin of the end of the hour already paid: removing it sooner saves nothing."""
    if rules.paid_hour_margin_seconds is None:
        return Check(True, "")
    start = billing_start(slot, rules)
    if start is None:
        return Check(True, "")
    hour = rules.billing_hour_seconds
    left = hour - ((now - start) % hour)
    ok = left <= rules.paid_hour_margin_seconds
    return Check(ok, "" if ok else f"{left / 60:.0f} min left in its paid hour")


def vm_settled(slot: SlotState) -> Check:
    vm = slot.vm
    ok = vm is not None and vm.state not in (VMState.STARTING, VMState.STOPPING, VMState.LOCKED)
    return Check(ok, "" if ok else f"VM {vm.state if vm else 'missing'}")


def not_last_online(slot: SlotState, snapshot: Snapshot) -> Check:
    """Never take away the last enabled, online server of the pool."""
    online = [s for s in snapshot.slots if s.scalelite and s.scalelite.state == ScaleliteState.ENABLED
              and s.scalelite.online and not s.in_maintenance]
    ok = not (len(online) == 1 and online[0].slot == slot.slot)
    return Check(ok, "" if ok else "the last online server")


def termination_checks(slot: SlotState, snapshot: Snapshot, rules: Rules) -> list[Check]:
    """All that must hold before a drained server is terminated. An unresponsive server skips the
    meeting/recording/billing checks (its meetings are gone, as in DiViMS)."""
    now = snapshot.now
    checks = [not_in_maintenance(slot), vm_settled(slot), not_last_online(slot, snapshot)]
    if health(slot, now, rules) == Health.UNRESPONSIVE:
        return checks
    return checks + [no_meetings(slot), no_unfinished_recordings(slot),
                     billed_minimum_reached(slot, now, rules), near_paid_hour_end(slot, now, rules)]


def failing(checks: list[Check]) -> list[str]:
    return [c.reason for c in checks if not c.ok]
