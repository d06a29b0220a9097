"""From a Decision to a Plan: which slots to uncordon, enable, power on, clone, cordon, terminate.

The DiViMS slot model: slots 1..size.max, each with its Scaleway name, its Scalelite entry and,
where used, its flexible IP. Pure and stateless apart from `replacements_last_hour`: everything is
read from the Snapshot, so a crash between any two steps is finished by the next plan:

- a CLONE is executed by the actuator as create (tagged for the slot) -> attach the slot's IP ->
  power on; a crash after create leaves a stopped VM (next plan: POWERON), a crash before the attach
  an unattached IP (ATTACH_IP); a retried create that made a duplicate shows as a stray (TERMINATE);
- a VM whose BBB answers but that has no Scalelite entry gets ADD_TO_SCALELITE (added disabled);
  it is ENABLEd only when needed and its BBB API answers;
- scale-in is CORDON (the drain) -> Scalelite disables it at load 0 -> PANIC + TERMINATE once every
  check of `eligibility.termination_checks` passes; the volumes it leaves are DELETE_VOLUMEd;
- a Scalelite entry enabled or cordoned with no VM behind it is PANICked (disabled).

Order of preference for scale-out, cheapest first: UNCORDON a running cordoned server, ENABLE an
idle one (already paid), POWERON a stopped one, CLONE into an empty slot. Scale-in picks servers
with scheduled hoster maintenance first, then stopped/starting, then fewest meetings and
participants. Changes per plan are bounded by max_changes_per_cycle, clones by max_concurrent_clones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from divims.model import ScaleliteState, VMState
from scaler.eligibility import (
    Health,
    Phase,
    Rules,
    billing_start,
    failing,
    health,
    no_meetings,
    not_last_online,
    phase,
    termination_checks,
)
from scaler.snapshot import Action, ActionKind, Decision, Plan, SlotState, Snapshot

A = ActionKind
# kinds that change capacity or cost: what max_changes_per_cycle bounds
CHANGES = frozenset({A.UNCORDON, A.ENABLE, A.POWERON, A.CLONE, A.CORDON, A.TERMINATE})


@dataclass
class _Builder:
    rules: Rules
    actions: list[Action] = field(default_factory=list)
    waits: list[str] = field(default_factory=list)
    changes: int = 0
    clones: int = 0
    touched: set[int] = field(default_factory=set)
    flappers: set[int] = field(default_factory=set)  # answering again, unresponsive within the flap window

    def room(self) -> bool:
        return self.changes < self.rules.max_changes_per_cycle

    def add(self, kind: ActionKind, slot: SlotState | None, reason: str, **kw: object) -> bool:
        if kind in CHANGES:
            if not self.room():
                if slot is not None:
                    self.waits.append(f"slot {slot.slot}: {kind} deferred, {self.rules.max_changes_per_cycle} "
                                      f"changes per cycle")
                return False
            self.changes += 1
        self.actions.append(Action(kind, slot.slot if slot else None, reason, **kw))  # type: ignore[arg-type]
        if slot is not None:
            self.touched.add(slot.slot)
        return True


def _count(n: int | None) -> str:
    return "unknown" if n is None else str(n)


def _paid_left(slot: SlotState, now: float, rules: Rules) -> float:
    start = billing_start(slot, rules)
    hour = rules.billing_hour_seconds
    return hour if start is None else hour - ((now - start) % hour)


def scale_in_order(slots: list[SlotState], now: float, rules: Rules) -> list[SlotState]:
    """Which serving servers to cordon first: hoster maintenance, then stopped/starting VMs, then
    fewest meetings, fewest participants, least time left in the paid hour, highest slot."""
    def key(s: SlotState) -> tuple:
        vm = s.vm
        maint = 0 if vm is not None and vm.maintenances > 0 else 1
        not_running = 0 if vm is None or vm.state != VMState.RUNNING else 1
        # unknown meetings are not "empty": such a server goes after every one whose load is known
        unknown = 0 if s.meetings is not None else 1
        return (maint, not_running, unknown, s.meetings or 0, s.participants or 0, _paid_left(s, now, rules),
                -s.slot)
    return sorted(slots, key=key)


def _request_slots(snapshot: Snapshot, action: str) -> dict[int, int]:
    by_domain = {s.domain.lower(): s.slot for s in snapshot.slots}
    out: dict[int, int] = {}
    for r in snapshot.requests:
        if r.action == action and r.server and r.server.lower() in by_domain:
            out[by_domain[r.server.lower()]] = r.id
    return out


def unresponsive_vms(snapshot: Snapshot, rules: Rules) -> dict[str, float]:
    """VM id -> `snapshot.now` for every VM the snapshot shows unresponsive: what the caller keeps (for
    `rules.flap_window_seconds`) and hands back to `plan` as `flapped`."""
    return {s.vm.id: snapshot.now for s in snapshot.slots
            if s.vm is not None and not s.in_maintenance and health(s, snapshot.now, rules) == Health.UNRESPONSIVE}


def plan(snapshot: Snapshot, decision: Decision, rules: Rules, replacements_last_hour: int = 0,
         flapped: Mapping[str, float] | None = None) -> Plan:
    """The actions that move the pool toward `decision.desired`, safely (see the module docstring).

    `flapped`: VM id -> when it was last seen unresponsive (from `unresponsive_vms` of earlier cycles).
    Such a VM, answering again within `rules.flap_window_seconds`, is not un-cordoned or enabled by
    scale-out while a clone or a power-on can bring the capacity instead, and is replaced when serving:
    otherwise a flapping server is cordoned when offline and enabled again when it answers, forever."""
    now = snapshot.now
    b = _Builder(rules)
    window = rules.flap_window_seconds
    flappers = {s.slot for s in snapshot.slots if s.vm is not None and flapped and s.vm.id in flapped
                and now - flapped[s.vm.id] <= window}
    slots = list(snapshot.slots)
    phases = {s.slot: phase(s) for s in slots}
    healths = {s.slot: health(s, now, rules) for s in slots}
    b.flappers = {n for n in flappers if healths[n] != Health.UNRESPONSIVE}
    for s in slots:
        if phases[s.slot] == Phase.MAINTENANCE:
            b.waits.append(f"slot {s.slot}: in maintenance, left alone")

    _repairs(snapshot, b, phases)

    budget = max(0, rules.replacements_per_hour - replacements_last_hour)
    # what is left of the budget within this cycle: each replacement started here counts
    left = budget
    cordon_requests = _request_slots(snapshot, "cordon_server")
    replace_requests = _request_slots(snapshot, "replace_server")

    serving = [s for s in slots if phases[s.slot] == Phase.SERVING]
    unresponsive = [s for s in serving if healths[s.slot] == Health.UNRESPONSIVE]
    serving = [s for s in serving if healths[s.slot] != Health.UNRESPONSIVE]
    booting = [s for s in slots if phases[s.slot] == Phase.BOOTING and healths[s.slot] != Health.UNRESPONSIVE]

    # unresponsive: cordon at once (its meetings are lost anyway) and let the count bring a replacement
    # (always, for safety; it counts against the budget as the caller counts it)
    for s in unresponsive:
        b.add(A.CORDON, s, "unresponsive: cordon and replace", server_id=s.scalelite.id if s.scalelite else None)
        left = max(0, left - 1)

    # to replace when capacity allows: malfunctioning, due for recycling, or asked by an alert
    to_replace: list[SlotState] = []
    for s in serving:
        why = (f"request {replace_requests[s.slot]}: replace" if s.slot in replace_requests
               else "malfunctioning" if healths[s.slot] == Health.MALFUNCTIONING
               else "uptime above the recycle limit" if healths[s.slot] == Health.RECYCLE
               else f"unresponsive within the last {window / 60:.0f} min (flapping)" if s.slot in b.flappers
               else "")
        if not why:
            continue
        if left > 0:
            to_replace.append(s)
            left -= 1
        else:
            b.waits.append(f"slot {s.slot}: {why}, but the replacement budget of the hour is spent")
    healthy = [s for s in serving if s not in to_replace]
    desired = decision.desired

    need = desired - len(healthy) - len(booting)
    # unresponsive servers not serving (a new clone whose BBB never answered, a drain that died): each
    # terminate of one without a Scalelite entry is a replacement of its own (no cordon counted it);
    # one with an entry was counted when it was cordoned, and is terminated while any budget is left
    terminable: set[int] = set()
    kept: list[SlotState] = []
    for s in slots:
        if healths[s.slot] != Health.UNRESPONSIVE or phases[s.slot] in (Phase.MAINTENANCE, Phase.SERVING):
            continue
        if s.scalelite is None and left > 0:
            terminable.add(s.slot)
            left -= 1
        elif s.scalelite is not None and budget > 0:
            terminable.add(s.slot)
        else:
            kept.append(s)
    if kept:
        # a broken image must not loop clone -> fail -> clone: the broken ones kept count as capacity
        need -= len(kept)
        b.waits.append(f"{len(kept)} unresponsive servers not replaced: the replacement budget of the hour is spent")
    enabled_now: set[int] = set()
    if need > 0:
        need -= _scale_out(snapshot, b, phases, healths, need, enabled_now)
        if need > 0:
            b.waits.append(f"{need} more servers wanted, no slot available now")

    # cordon those being replaced once the healthy ones (and those just enabled) cover the desired count
    covered = len(healthy) + len(enabled_now)
    for s in to_replace:
        if covered >= desired and not_last_online(s, snapshot).ok:
            b.add(A.CORDON, s, "replaced: healthy capacity covers the desired count",
                  server_id=s.scalelite.id if s.scalelite else None)
        else:
            b.waits.append(f"slot {s.slot}: to replace, waiting for its replacement")

    for s in serving:
        if s.slot in cordon_requests and s not in to_replace and not_last_online(s, snapshot).ok:
            if b.add(A.CORDON, s, f"request {cordon_requests[s.slot]}: cordon",
                     server_id=s.scalelite.id if s.scalelite else None, request_id=cordon_requests[s.slot]):
                healthy = [h for h in healthy if h.slot != s.slot]

    excess = len(healthy) + len(enabled_now) - desired
    if excess > 0:
        for s in scale_in_order([h for h in healthy if h.slot not in b.touched], now, rules)[:excess]:
            if not not_last_online(s, snapshot).ok:
                continue
            b.add(A.CORDON, s, f"scale in to {desired}: {_count(s.meetings)} meetings, {_count(s.participants)} participants",
                  server_id=s.scalelite.id if s.scalelite else None)

    _drain_and_terminate(snapshot, b, phases, healths, enabled_now, need_more=need > 0, terminable=terminable)
    return Plan(snapshot.pool, decision, tuple(b.actions), tuple(b.waits))


def _repairs(snapshot: Snapshot, b: _Builder, phases: dict[int, Phase]) -> None:
    """What any crash can leave behind, finished or undone from the Snapshot alone."""
    for vm in snapshot.stray_vms:
        b.add(A.TERMINATE, None, f"stray duplicate VM {vm.name} (slot {vm.slot})", server_id=vm.id)
    for vol in snapshot.orphan_volumes:
        b.add(A.DELETE_VOLUME, None, f"detached volume {vol.id} left by a terminate", server_id=vol.id)
    for s in snapshot.slots:
        if phases[s.slot] == Phase.MAINTENANCE:
            continue
        if s.vm is None and s.scalelite is not None and s.scalelite.state != ScaleliteState.DISABLED:
            b.add(A.PANIC, s, f"Scalelite entry {s.scalelite.state} with no VM", server_id=s.scalelite.id)
        if s.vm is not None and b.rules.flexible_ips and s.ip is not None and s.ip.server_id != s.vm.id \
                and s.vm.state not in (VMState.STOPPING, VMState.LOCKED):
            b.add(A.ATTACH_IP, s, f"the slot's IP {s.ip.address} is not attached", server_id=s.ip.id)
        if s.vm is not None and s.vm.state == VMState.RUNNING and s.bbb_api_up and s.scalelite is None:
            b.add(A.ADD_TO_SCALELITE, s, "BBB answers and the slot has no Scalelite entry")


def _scale_out(snapshot: Snapshot, b: _Builder, phases: dict[int, Phase], healths: dict[int, Health],
               need: int, enabled_now: set[int]) -> int:
    """Adds up to `need` servers, cheapest first; returns how many were started."""
    slots = snapshot.slots
    done = 0
    ok = [s for s in slots if healths[s.slot] == Health.OK and s.slot not in b.flappers]
    # 1. un-cordon running cordoned servers whose BBB answers (the busiest drains are the costliest)
    for s in sorted((s for s in ok if phases[s.slot] == Phase.DRAINING and s.scalelite is not None
                     and s.vm is not None and s.vm.state == VMState.RUNNING and s.bbb_api_up),
                    key=lambda s: -(s.meetings or 0)):
        if done >= need or not b.add(A.UNCORDON, s, "scale out: un-cordon a running server",
                                     server_id=s.scalelite.id if s.scalelite else None):
            break
        enabled_now.add(s.slot)
        done += 1
    # 2. enable idle ones (running, paid, BBB answers); without an entry, ADD_TO_SCALELITE came first
    for s in (s for s in ok if phases[s.slot] == Phase.IDLE):
        if done >= need:
            break
        if s.scalelite is None:
            # its entry is added this cycle (repairs) and it is enabled next cycle: it counts as
            # coming capacity, or every new server would cost a second, needless clone
            b.waits.append(f"slot {s.slot}: enable after its Scalelite entry is added")
            done += 1
            continue
        if not b.add(A.ENABLE, s, "scale out: BBB answers, enable in Scalelite", server_id=s.scalelite.id):
            break
        enabled_now.add(s.slot)
        done += 1
    # 3. power on stopped VMs (also an enabled entry whose VM is off)
    for s in slots:
        if done >= need:
            break
        if phases[s.slot] in (Phase.STOPPED, Phase.SERVING) and s.vm is not None \
                and s.vm.state in (VMState.STOPPED, VMState.STOPPED_IN_PLACE) and s.slot not in b.touched:
            if not b.add(A.POWERON, s, "scale out: power on the slot's stopped VM", server_id=s.vm.id):
                break
            done += 1
    # 4. clone into empty slots, lowest first, bounded per cycle
    for s in slots:
        if done >= need:
            break
        if phases[s.slot] != Phase.EMPTY or s.slot in b.touched:
            continue
        if b.clones >= b.rules.max_concurrent_clones:
            b.waits.append(f"{need - done} clones deferred: {b.rules.max_concurrent_clones} per cycle")
            break
        if not b.add(A.CLONE, s, "scale out: clone into the empty slot"):
            break
        b.clones += 1
        done += 1
    # 5. capacity still short: a server that was unresponsive lately but answers again is better than none
    for s in slots:
        if done >= need:
            break
        if s.slot not in b.flappers or s.slot in b.touched or healths[s.slot] != Health.OK \
                or s.scalelite is None or s.vm is None or s.vm.state != VMState.RUNNING or not s.bbb_api_up:
            continue
        if phases[s.slot] == Phase.DRAINING:
            kind, why = A.UNCORDON, "scale out, capacity short: un-cordon a server that flapped lately"
        elif phases[s.slot] == Phase.IDLE:
            kind, why = A.ENABLE, "scale out, capacity short: enable a server that flapped lately"
        else:
            continue
        if not b.add(kind, s, why, server_id=s.scalelite.id):
            break
        enabled_now.add(s.slot)
        done += 1
    return done


def _drain_and_terminate(snapshot: Snapshot, b: _Builder, phases: dict[int, Phase],
                         healths: dict[int, Health], enabled_now: set[int], need_more: bool,
                         terminable: set[int]) -> None:
    """Ends over-long meetings on draining servers; terminates those that pass every check."""
    max_age = b.rules.meetings_max_duration_seconds
    for s in snapshot.slots:
        p = phases[s.slot]
        if s.slot in b.touched or s.slot in enabled_now or p in (Phase.MAINTENANCE, Phase.EMPTY, Phase.STOPPING):
            continue
        unresponsive = healths[s.slot] == Health.UNRESPONSIVE
        if p == Phase.SERVING and not unresponsive:
            continue
        if unresponsive and s.slot not in terminable:
            b.waits.append(f"slot {s.slot}: unresponsive, kept: the replacement budget of the hour is spent")
            continue
        if p == Phase.BOOTING and not unresponsive:
            continue
        if p == Phase.STOPPED and need_more:
            continue  # a power-on candidate kept for the next cycle
        if p == Phase.DRAINING and s.oldest_meeting_age_seconds is not None \
                and s.oldest_meeting_age_seconds > max_age and not no_meetings(s).ok:
            b.add(A.END_MEETING, s, f"meetings older than {max_age / 60:.0f} min on a draining server")
        why = failing(termination_checks(s, snapshot, b.rules))
        if why:
            b.waits.append(f"slot {s.slot} ({p}): not terminated: {', '.join(why)}")
            continue
        if not b.room():
            b.waits.append(f"slot {s.slot}: terminate deferred, {b.rules.max_changes_per_cycle} changes per cycle")
            continue
        label = "unresponsive" if unresponsive else "drained"
        if s.scalelite is not None:
            b.add(A.PANIC, s, f"{label}: drop its Scalelite meeting records before terminate",
                  server_id=s.scalelite.id)
        b.add(A.TERMINATE, s, f"{label}: every termination check passed", server_id=s.vm.id if s.vm else None)


def replacements_in(plan_: Plan) -> int:
    """How many replacements a plan starts (unresponsive terminated, unhealthy cordoned for
    replacement): what the caller adds to its replacements-per-hour count."""
    return sum(1 for a in plan_.actions
               if (a.kind == A.TERMINATE and a.reason.startswith("unresponsive"))
               or (a.kind == A.CORDON and a.reason.startswith("replaced")))
