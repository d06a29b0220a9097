"""The pool's inventory: a `Snapshot` of what exists, read from Scaleway and Scalelite directly.

Scaleway and Scalelite are the source of truth for what exists; Prometheus only adds load. Slots
1..size.max are matched by name (`hostname_template`) or by the `divims-slot` tag, Scalelite entries
by the host of their URL (`domain_template`), flexible IPs by their `divims-slot` tag. A source that
cannot be read makes `inventory_complete` False with a problem naming it, so the planner never reads
"could not list" as "nothing there".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from divims.clients.protocols import Cloud, Scalelite
from divims.errors import ClientError
from divims.model import VM, FlexibleIP, Meeting, ScaleliteServer, ScaleliteState, VMState, Volume, url_host
from scaler.snapshot import ActionRequest, ServerLoad, Signals, SlotState, Snapshot

log = logging.getLogger(__name__)


class MeetingsReader(Protocol):
    def get_meetings(self) -> list[Meeting]: ...


# (url, secret) -> a BBB API client of that server (divims.clients.bbb.BBBClient in production).
BBBFactory = Callable[[str, str], MeetingsReader]

# Which of several VMs of one slot is "the slot's one": the most alive, then the oldest.
_STATE_RANK = {VMState.RUNNING: 0, VMState.STARTING: 1, VMState.STOPPING: 2, VMState.STOPPED_IN_PLACE: 3,
               VMState.STOPPED: 4, VMState.LOCKED: 5}


@dataclass(frozen=True)
class SlotNaming:
    """How slot n is named; built from a PoolConfig (its helpers) or given directly in tests."""

    pool: str
    size_max: int
    slot_name: Callable[[int], str]
    slot_domain: Callable[[int], str]
    slot_url: Callable[[int], str]

    @classmethod
    def from_pool(cls, pool: Any) -> SlotNaming:
        return cls(pool=pool.name, size_max=int(pool.size.max), slot_name=pool.slot_name,
                   slot_domain=pool.slot_domain, slot_url=pool.slot_url)


def read_maintenance(slots: Iterable[int], maintenance_file: str | Path | None) -> tuple[frozenset[int], list[str]]:
    """The operator's maintenance list: the configured slots plus those in the DiViMS-style JSON file
    (an array of slot numbers). A missing file is an empty list; an unreadable one is a problem."""
    result = set(int(s) for s in slots)
    problems: list[str] = []
    if maintenance_file:
        path = Path(maintenance_file)
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8") or "[]")
                if not isinstance(data, list) or not all(isinstance(x, int) for x in data):
                    raise ValueError("expected a JSON array of slot numbers")
                result.update(data)
            except (OSError, ValueError) as exc:
                problems.append(f"maintenance file {path}: {exc}")
    return frozenset(result), problems


def _vm_rank(vm: VM) -> tuple[int, float]:
    return (_STATE_RANK.get(vm.state, 9), vm.creation_date)


def match_vms(naming: SlotNaming, vms: Iterable[VM]) -> tuple[dict[int, VM], list[VM]]:
    """Each slot's VM, and the strays: pool-tagged VMs that are a slot's duplicate or outside every slot."""
    by_name = {naming.slot_name(n): n for n in range(1, naming.size_max + 1)}
    candidates: dict[int, list[VM]] = {}
    strays: list[VM] = []
    pool_tag = f"divims-pool={naming.pool}"
    for vm in vms:
        slot = vm.slot if pool_tag in vm.tags else None
        name_slot = by_name.get(vm.name)
        if slot is None:
            slot = name_slot
        elif name_slot is not None and name_slot != slot:
            strays.append(vm)  # tag and name disagree: not safe to adopt
            continue
        if slot is None or not 1 <= slot <= naming.size_max:
            if pool_tag in vm.tags:
                strays.append(vm)
            continue
        candidates.setdefault(slot, []).append(vm)
    chosen: dict[int, VM] = {}
    for slot, items in candidates.items():
        items.sort(key=_vm_rank)
        chosen[slot] = items[0]
        strays.extend(items[1:])
    return chosen, strays


def match_scalelite(naming: SlotNaming, servers: Iterable[ScaleliteServer]) -> tuple[dict[int, ScaleliteServer], list[str]]:
    """Each slot's Scalelite entry by URL host; duplicates are reported, the first one kept."""
    by_domain = {naming.slot_domain(n).lower(): n for n in range(1, naming.size_max + 1)}
    out: dict[int, ScaleliteServer] = {}
    problems: list[str] = []
    for s in servers:
        slot = by_domain.get(url_host(s.url))
        if slot is None:
            continue
        if slot in out:
            problems.append(f"scalelite: two entries for {naming.slot_domain(slot)} ({out[slot].id}, {s.id})")
            continue
        out[slot] = s
    return out, problems


def match_ips(ips: Iterable[FlexibleIP]) -> dict[int, FlexibleIP]:
    out: dict[int, FlexibleIP] = {}
    for ip in ips:
        for tag in ip.tags:
            if tag.startswith("divims-slot=") and tag[12:].isdigit():
                out.setdefault(int(tag[12:]), ip)
    return out


def _draining_meetings(bbb: BBBFactory, url: str, secret: str, now: float, pool: str,
                       domain: str) -> tuple[int | None, int | None, float | None, bool | None]:
    """Meetings of a draining server straight from its BBB API: (meetings, participants, oldest age, up)."""
    try:
        meetings = bbb(url, secret).get_meetings()
    except ClientError as exc:
        log.info("pool %s server %s: BBB API not answering while draining: %s", pool, domain, exc.kind)
        return None, None, None, False
    oldest = max((now - m.create_time for m in meetings), default=None)
    return len(meetings), sum(m.participant_count for m in meetings), oldest, True


def build_snapshot(naming: SlotNaming, *, cloud: Cloud, scalelite: Scalelite, signals: Signals, now: float,
                   maintenance: frozenset[int] = frozenset(), requests: tuple[ActionRequest, ...] = (),
                   flexible_ips: bool = False, bbb: BBBFactory | None = None, bbb_secret: str | None = None,
                   problems: Iterable[str] = ()) -> Snapshot:
    """Reads Scaleway and Scalelite and joins them with the per-server signals into a Snapshot.

    Never raises for a source's failure: it is reported in `inventory_problems` and makes
    `inventory_complete` False. When `bbb` is given, draining (cordoned) servers are asked directly
    for their meetings, since a drain decision must not rest on a scrape that may be a minute old.
    """
    problem_list = list(problems)
    pool = naming.pool
    vms: list[VM] = []
    volumes: list[Volume] = []
    ips: list[FlexibleIP] = []
    try:
        vms = cloud.list_servers()
        volumes = cloud.list_volumes()
        if flexible_ips:
            ips = cloud.list_ips()
    except ClientError as exc:
        problem_list.append(f"scaleway: {exc}")
        log.warning("pool %s: Scaleway inventory incomplete: %s", pool, exc)
    entries: list[ScaleliteServer] = []
    scalelite_ok = True
    try:
        entries = scalelite.get_servers()
    except ClientError as exc:
        scalelite_ok = False
        problem_list.append(f"scalelite: {exc}")
        log.warning("pool %s: Scalelite inventory incomplete: %s", pool, exc)
    chosen, strays = match_vms(naming, vms)
    by_slot, dup_problems = match_scalelite(naming, entries) if scalelite_ok else ({}, [])
    problem_list.extend(dup_problems)
    slot_ips = match_ips(ips)
    per_server = signals.per_server or {}
    slots = []
    for n in range(1, naming.size_max + 1):
        domain = naming.slot_domain(n).lower()
        vm, entry = chosen.get(n), by_slot.get(n)
        load: ServerLoad | None = per_server.get(domain)
        meetings = load.meetings if load else None
        participants = load.participants if load else None
        up = load.bbb_api_up if load else None
        oldest = None
        # Servers the exporter does not poll (no Scalelite entry yet, or not enabled): ask BBB directly,
        # so a new clone can be added and enabled once its API answers, and a drain sees its meetings.
        secret = bbb_secret or (entry.secret if entry is not None else None)
        if (bbb is not None and secret and (entry is None or entry.state != ScaleliteState.ENABLED)
                and vm is not None and vm.state == VMState.RUNNING):
            url = entry.url if entry is not None else naming.slot_url(n)
            m, p, oldest, up_now = _draining_meetings(bbb, url, secret, now, pool, domain)
            up = up_now
            if m is not None:
                meetings, participants = m, p
        slots.append(SlotState(
            slot=n, name=naming.slot_name(n), domain=domain, vm=vm, scalelite=entry, ip=slot_ips.get(n),
            meetings=meetings, participants=participants,
            recordings_unfinished=load.recordings_unfinished if load else None,
            oldest_meeting_age_seconds=oldest, bbb_api_up=up,
            services_healthy=load.services_healthy if load else None,
            recordings_failed=load.recordings_failed if load else None,
            uptime_seconds=load.uptime_seconds if load else None,
            in_maintenance=n in maintenance))
    orphans = tuple(v for v in volumes if v.server_id is None)
    for vm in strays:
        log.warning("pool %s: stray VM %s (%s) is not its slot's VM", pool, vm.name, vm.id)
    return Snapshot(pool=pool, now=now, signals=signals, slots=tuple(slots), orphan_volumes=orphans,
                    stray_vms=tuple(strays), requests=tuple(requests),
                    inventory_complete=not problem_list, inventory_problems=tuple(problem_list))
