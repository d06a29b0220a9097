"""The only code of the scaler with effects: executes a `Plan` through the Cloud and Scalelite protocols.

Every action is idempotent and re-reads the current state first, so a retried or repeated plan (after
a crash, a timeout, a second cycle on stale data) converges instead of duplicating:
- a clone first looks for a VM of the slot and adopts it; a create that failed in transit is followed
  by a re-list, so a create the hoster did perform is adopted, not repeated;
- destructive steps (cordon, panic, poweroff, terminate, delete volume) re-check right before acting,
  and terminate/poweroff/panic ask the server's BBB API directly: a server with a meeting is never cut.
Clones run concurrently, at most `max_concurrent_clones` at a time; everything else runs in plan order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from divims.clients.protocols import Cloud, Scalelite
from divims.errors import ClientError, TransientError
from divims.model import VM, Meeting, ScaleliteServer, ScaleliteState, VMState, url_host
from scaler.inventory import SlotNaming, match_ips, match_vms
from scaler.snapshot import Action, ActionKind, Plan

log = logging.getLogger(__name__)

OK, SKIPPED, REFUSED, FAILED, DRY_RUN = "ok", "skipped", "refused", "failed", "dry_run"
_STOPPED = (VMState.STOPPED, VMState.STOPPED_IN_PLACE)


class BBBApi(Protocol):
    def get_meetings(self) -> list[Meeting]: ...


@dataclass(frozen=True)
class ActionResult:
    """What one action did: `result` is ok | skipped (already so) | refused (a safety re-check said
    no) | failed (an error) | dry_run; `detail` says why, naming the server, never a secret."""

    action: Action
    result: str
    detail: str
    duration_seconds: float = 0.0


class _Refused(Exception):
    pass


class _Skipped(Exception):
    pass


# Called with (stage, action) between the steps of an action: tests inject crashes here.
StepHook = Callable[[str, Action], None]


class Actuator:
    """Executes plans for one pool. `bbb(url, secret)` makes a BBB API client (BBBClient)."""

    def __init__(self, naming: SlotNaming, *, cloud: Cloud, scalelite: Scalelite,
                 bbb: Callable[[str, str], Any], add_secret: str, bbb_secret: str | None = None,
                 flexible_ips: bool = False, max_concurrent_clones: int = 3,
                 meetings_max_duration_seconds: float = 600 * 60,
                 clock: Callable[[], float] = time.time, step_hook: StepHook | None = None):
        self.naming = naming
        self.cloud = cloud
        self.scalelite = scalelite
        self._bbb = bbb
        self._add_secret = add_secret
        self._bbb_secret = bbb_secret
        self.flexible_ips = flexible_ips
        self.max_concurrent_clones = max(1, int(max_concurrent_clones))
        self.meetings_max_seconds = meetings_max_duration_seconds
        self.clock = clock
        self._hook = step_hook
        # Serialises the read-check-create of clones: two clones of one slot never both create.
        self._create_lock = threading.Lock()

    @property
    def pool(self) -> str:
        return self.naming.pool

    # --- entry point ---------------------------------------------------------------------------
    def execute(self, plan: Plan) -> list[ActionResult]:
        """Runs every action of the plan and returns one result per action, in plan order.

        Actions on one slot run in order; chains that clone run concurrently (bounded), the others
        one after another. An error in one action never stops the others."""
        chains: dict[object, list[int]] = {}
        for i, action in enumerate(plan.actions):
            key: object = action.slot if action.slot is not None else ("noslot", i)
            chains.setdefault(key, []).append(i)
        results: list[ActionResult | None] = [None] * len(plan.actions)

        def run_chain(indexes: list[int]) -> None:
            for i in indexes:
                results[i] = self.execute_one(plan.actions[i])

        clone_chains = [ix for ix in chains.values()
                        if any(plan.actions[i].kind == ActionKind.CLONE for i in ix)]
        other_chains = [ix for ix in chains.values() if ix not in clone_chains]
        if clone_chains:
            with ThreadPoolExecutor(max_workers=self.max_concurrent_clones,
                                    thread_name_prefix=f"clone-{self.pool}") as ex:
                futures = [ex.submit(run_chain, ix) for ix in clone_chains]
                for ix in other_chains:
                    run_chain(ix)
                for f in futures:
                    f.result()  # re-raises a simulated crash from a clone thread
        else:
            for ix in other_chains:
                run_chain(ix)
        return [r for r in results if r is not None]

    def execute_one(self, action: Action) -> ActionResult:
        """One action, with its result; only BaseExceptions that are not Exceptions (a simulated
        crash, KeyboardInterrupt) escape."""
        start = time.monotonic()
        handler = getattr(self, f"_do_{action.kind.value}", None)
        where = f"pool {self.pool} slot {action.slot}"
        try:
            if handler is None:
                raise _Refused(f"unknown action {action.kind}")
            detail = handler(action)
            result = OK
        except _Skipped as exc:
            result, detail = SKIPPED, str(exc)
        except _Refused as exc:
            result, detail = REFUSED, str(exc)
        except ClientError as exc:
            result, detail = FAILED, f"{exc.kind}: {exc}"
        except Exception as exc:  # a bug must not stop the other actions; it is logged with its trace
            log.exception("%s: %s failed unexpectedly", where, action.kind.value)
            result, detail = FAILED, f"internal error: {type(exc).__name__}"
        level = logging.WARNING if result in (FAILED, REFUSED) else logging.INFO
        log.log(level, "%s: %s %s: %s (%s)", where, action.kind.value, result, detail, action.reason)
        return ActionResult(action, result, detail, time.monotonic() - start)

    def _step(self, stage: str, action: Action) -> None:
        if self._hook is not None:
            self._hook(stage, action)

    # --- reading current state ----------------------------------------------------------------
    def _slot_vm(self, slot: int) -> VM | None:
        chosen, _ = match_vms(self.naming, self.cloud.list_servers())
        return chosen.get(slot)

    def _entry(self, slot: int | None, server_id: str | None) -> ScaleliteServer | None:
        servers = self.scalelite.get_servers()
        if server_id:
            for s in servers:
                if s.id == server_id:
                    return s
        if slot is not None:
            domain = self.naming.slot_domain(slot).lower()
            for s in servers:
                if url_host(s.url) == domain:
                    return s
        return None

    def _require_slot(self, action: Action) -> int:
        if action.slot is None:
            raise _Refused(f"{action.kind.value} needs a slot")
        return action.slot

    def _bbb_client(self, slot: int, entry: ScaleliteServer | None) -> Any:
        url = entry.url if entry is not None else self.naming.slot_url(slot)
        secret = self._bbb_secret or (entry.secret if entry is not None else "")
        return self._bbb(url, secret)

    def _check_no_meeting(self, slot: int, vm: VM | None, entry: ScaleliteServer | None) -> str:
        """Refuses unless the server has no meeting now (asked of BBB directly) and no recording BBB
        still processes. A VM that is not running has none; a running one whose BBB API does not
        answer passes only when Scalelite holds it offline (unresponsive: Scalelite already ended
        its meetings)."""
        if vm is not None and vm.state in _STOPPED:
            return f"VM {vm.state.value}: no meeting possible"
        client = self._bbb_client(slot, entry)
        try:
            meetings = client.get_meetings()
        except ClientError as exc:
            if entry is None or not entry.online:
                return f"BBB API not answering ({exc.kind}) and offline in Scalelite: unresponsive"
            raise _Refused(f"cannot verify meetings: BBB API of {self.naming.slot_domain(slot)} "
                           f"failed ({exc.kind}) while Scalelite holds it online") from None
        if meetings:
            raise _Refused(f"{len(meetings)} meeting(s) running on {self.naming.slot_domain(slot)}")
        get_recordings = getattr(client, "get_recordings", None)
        if get_recordings is not None:
            try:
                recs = get_recordings(["processing"])
            except ClientError as exc:
                raise _Refused(f"cannot verify recordings on {self.naming.slot_domain(slot)} ({exc.kind})") from None
            if recs:
                raise _Refused(f"{len(recs)} recording(s) processing on {self.naming.slot_domain(slot)}")
        return "no meeting, no recording processing"

    # --- scale out -----------------------------------------------------------------------------
    def _do_clone(self, action: Action) -> str:
        slot = self._require_slot(action)
        with self._create_lock:
            vm = self._slot_vm(slot)
            if vm is None:
                vm = self._create(slot)
                created = f"created {vm.name} ({vm.id})"
            else:
                created = f"adopted existing {vm.name} ({vm.id}, {vm.state.value})"
        self._step("clone:created", action)
        parts = [created]
        if self.flexible_ips:
            parts.append(self._ensure_ip(slot, vm.id))
            self._step("clone:ip_attached", action)
        parts.append(self._ensure_poweron(vm.id))
        self._step("clone:powered_on", action)
        return "; ".join(parts)

    def _create(self, slot: int) -> VM:
        name = self.naming.slot_name(slot)
        try:
            return self.cloud.create_server(name, slot)
        except TransientError:
            # The hoster may have created it before the answer was lost: look before failing,
            # so the next cycle's retry does not make a second VM for the slot.
            vm = self._slot_vm(slot)
            if vm is not None:
                log.warning("pool %s slot %s: create failed in transit but %s exists: adopted",
                            self.pool, slot, vm.id)
                return vm
            raise

    def _ensure_ip(self, slot: int, server_id: str) -> str:
        ip = match_ips(self.cloud.list_ips()).get(slot)
        if ip is None:
            ip = self.cloud.create_ip(slot)
        if ip.server_id == server_id:
            return f"IP {ip.address} already attached"
        self.cloud.attach_ip(ip.id, server_id)
        return f"IP {ip.address} attached"

    def _ensure_poweron(self, server_id: str) -> str:
        vm = self.cloud.get_server(server_id)
        if vm is None:
            raise _Refused(f"VM {server_id} does not exist")
        if vm.state in _STOPPED:
            self.cloud.poweron(server_id)
            return f"powered on {vm.name}"
        if vm.state in (VMState.RUNNING, VMState.STARTING):
            return f"{vm.name} already {vm.state.value}"
        raise _Refused(f"{vm.name} is {vm.state.value}: cannot power on now")

    def _do_attach_ip(self, action: Action) -> str:
        # server_id of an ATTACH_IP is the IP's id (the planner's repair) or absent: the VM is the slot's
        slot = self._require_slot(action)
        vm = self._slot_vm(slot)
        if vm is None:
            raise _Refused(f"slot {slot} has no VM to attach its IP to")
        return self._ensure_ip(slot, vm.id)

    def _do_poweron(self, action: Action) -> str:
        slot = self._require_slot(action)
        vm = self.cloud.get_server(action.server_id) if action.server_id else self._slot_vm(slot)
        if vm is None:
            raise _Refused(f"slot {slot} has no VM to power on")
        detail = self._ensure_poweron(vm.id)
        if detail.endswith(("running", "starting")):
            raise _Skipped(detail)
        return detail

    def _do_add_to_scalelite(self, action: Action) -> str:
        slot = self._require_slot(action)
        entry = self._entry(slot, None)
        if entry is not None:
            raise _Skipped(f"Scalelite already has {entry.host} ({entry.id})")
        added = self.scalelite.add_server(self.naming.slot_url(slot), self._add_secret)
        return f"added {added.host} to Scalelite ({added.id}, disabled)"

    def _do_enable(self, action: Action) -> str:
        slot = self._require_slot(action)
        entry = self._entry(slot, action.server_id)
        if entry is None:
            raise _Refused(f"no Scalelite entry for {self.naming.slot_domain(slot)}")
        if entry.state == ScaleliteState.ENABLED:
            raise _Skipped(f"{entry.host} already enabled")
        try:
            self._bbb_client(slot, entry).get_meetings()
        except ClientError as exc:
            raise _Refused(f"BBB API of {entry.host} not answering yet ({exc.kind})") from None
        self._step("enable:checked", action)
        self.scalelite.enable(entry.id)
        return f"enabled {entry.host}"

    _do_uncordon = _do_enable

    # --- scale in -------------------------------------------------------------------------------
    def _do_cordon(self, action: Action) -> str:
        slot = self._require_slot(action)
        servers = self.scalelite.get_servers()
        entry = next((s for s in servers if s.id == action.server_id), None) or next(
            (s for s in servers if url_host(s.url) == self.naming.slot_domain(slot).lower()), None)
        if entry is None:
            raise _Skipped(f"no Scalelite entry for {self.naming.slot_domain(slot)}")
        if entry.state != ScaleliteState.ENABLED:
            raise _Skipped(f"{entry.host} already {entry.state.value}")
        others = [s for s in servers if s.id != entry.id and s.state == ScaleliteState.ENABLED and s.online]
        if entry.online and not others:
            raise _Refused(f"{entry.host} is the last online enabled server")
        self.scalelite.cordon(entry.id)
        self._step("cordon:done", action)
        return f"cordoned {entry.host}"

    def _do_end_meeting(self, action: Action) -> str:
        slot = self._require_slot(action)
        entry = self._entry(slot, None)
        if entry is not None and entry.state == ScaleliteState.ENABLED:
            raise _Refused(f"{entry.host} is enabled: meetings are ended only on a draining server")
        client = self._bbb_client(slot, entry)
        now = self.clock()
        ended = 0
        for m in client.get_meetings():
            if action.meeting_id and m.meeting_id != action.meeting_id:
                continue
            if now - m.create_time < self.meetings_max_seconds:
                continue
            client.end_meeting(m.meeting_id, m.moderator_pw)
            ended += 1
        if not ended:
            raise _Skipped(f"no meeting older than {self.meetings_max_seconds / 60:.0f} min")
        return f"ended {ended} meeting(s) older than {self.meetings_max_seconds / 60:.0f} min"

    def _do_panic(self, action: Action) -> str:
        slot = self._require_slot(action)
        entry = self._entry(slot, action.server_id)
        if entry is None:
            raise _Skipped(f"no Scalelite entry for {self.naming.slot_domain(slot)}")
        if entry.state == ScaleliteState.ENABLED:
            raise _Refused(f"{entry.host} is enabled: cordon it first")
        vm = self._slot_vm(slot)
        why = self._check_no_meeting(slot, vm, entry)
        self._step("panic:checked", action)
        self.scalelite.panic(entry.id)
        self._step("panic:done", action)
        return f"panicked {entry.host} ({why})"

    def _check_terminable(self, action: Action) -> tuple[VM, str]:
        """The VM to stop, re-read, and why it may go. A stray (slot None, a duplicate) is checked
        against the slot of its tag or name; the slot's own VM must not be enabled in Scalelite."""
        if action.slot is None and not action.server_id:
            raise _Refused(f"{action.kind.value} needs a slot or a server id")
        vm = self.cloud.get_server(action.server_id) if action.server_id else self._slot_vm(action.slot)
        if vm is None:
            raise _Skipped(f"VM {action.server_id or action.slot} already gone")
        slot = action.slot or vm.slot or next(
            (n for n in range(1, self.naming.size_max + 1) if self.naming.slot_name(n) == vm.name), None)
        if slot is None:
            if vm.state in _STOPPED:
                return vm, f"VM {vm.state.value}, outside every slot"
            raise _Refused(f"VM {vm.name} ({vm.id}) is outside every slot and not stopped")
        entry = self._entry(slot, None)
        slot_vm = self._slot_vm(slot)
        is_slot_vm = slot_vm is not None and slot_vm.id == vm.id
        if is_slot_vm and entry is not None and entry.state == ScaleliteState.ENABLED:
            raise _Refused(f"{entry.host} is enabled in Scalelite")
        return vm, self._check_no_meeting(slot, vm, entry)

    def _do_terminate(self, action: Action) -> str:
        vm, why = self._check_terminable(action)
        self._step("terminate:checked", action)
        self.cloud.terminate(vm.id)
        self._step("terminate:done", action)
        return f"terminated {vm.name} ({vm.id}; {why})"

    def _do_poweroff(self, action: Action) -> str:
        vm, why = self._check_terminable(action)
        if vm.state in _STOPPED:
            raise _Skipped(f"{vm.name} already {vm.state.value}")
        self.cloud.poweroff(vm.id)
        return f"powered off {vm.name} ({why})"

    def _do_delete_volume(self, action: Action) -> str:
        if not action.server_id:
            raise _Refused("delete_volume needs a volume id")
        vol = next((v for v in self.cloud.list_volumes() if v.id == action.server_id), None)
        if vol is None:
            raise _Skipped(f"volume {action.server_id} already gone")
        if vol.server_id is not None:
            raise _Refused(f"volume {vol.id} is attached to {vol.server_id}")
        self.cloud.delete_volume(vol.id)
        return f"deleted detached volume {vol.id}"


def dry_run_results(plan: Plan) -> list[ActionResult]:
    """The results of a plan that is only shown, never executed."""
    return [ActionResult(a, DRY_RUN, "dry run: not executed") for a in plan.actions]
