"""The simulated pool's shared state: what the fake Scaleway, Scalelite and BBB servers all see.

Every fake reads and writes this one object under `world.lock`. Time-driven transitions (a VM
booting, a recording finishing) are applied lazily by `advance()`, which every fake calls first.
Wire formats live in the fakes (scaleway.py, scalelite.py, bbb.py); this file holds only state.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

# Scaleway API spellings of the states (with the space, as the API and the Go SDK write it).
RUNNING, STOPPED, STOPPED_IN_PLACE = "running", "stopped", "stopped in place"
STARTING, STOPPING, LOCKED = "starting", "stopping", "locked"


@dataclass
class Delays:
    """Seconds of (real) time each transition takes; tests shrink them."""

    poweron_seconds: float = 2.0       # starting -> running
    bbb_boot_seconds: float = 1.0      # running -> BBB API answers
    poweroff_seconds: float = 1.0      # stopping -> stopped / stopped in place
    terminate_seconds: float = 1.0     # stopping -> gone
    recording_seconds: float = 5.0     # each pipeline stage of a recording after its meeting ends


@dataclass
class ServiceFaults:
    """Fault knobs of one fake service. `error_rate` of requests get `error_status`;
    `timeout_rate` of requests never get an answer within `hang_seconds`."""

    latency_seconds: float = 0.0
    error_rate: float = 0.0
    error_status: int = 500
    timeout_rate: float = 0.0
    hang_seconds: float = 30.0
    down: bool = False  # refuse every request
    # Deterministic knobs for tests: the next N requests get `error_status` / hang (then they count down).
    fail_next: int = 0
    hang_next: int = 0
    hang_after_next: int = 0  # processed, then never answered (a create that "timed out" but happened)


@dataclass
class FakeIP:
    id: str
    address: str
    server_id: str | None
    tags: list[str]
    project: str
    zone: str


@dataclass
class FakeVolume:
    id: str
    name: str
    volume_type: str  # "sbs_volume" or "l_ssd"
    size: int
    server_id: str | None
    tags: list[str]
    project: str
    zone: str
    creation_date: float


@dataclass
class FakeImage:
    id: str
    name: str
    project: str
    zone: str
    volume_type: str = "sbs_volume"
    size: int = 40_000_000_000


@dataclass
class FakeVM:
    id: str
    name: str
    project: str
    zone: str
    commercial_type: str
    image_id: str
    tags: list[str]
    state: str
    creation_date: float
    modification_date: float
    volume_ids: list[str] = field(default_factory=list)
    public_ip_id: str | None = None
    maintenances: list[dict] = field(default_factory=list)
    # pending transition: (state to reach or "gone", at time)
    pending: tuple[str, float] | None = None
    running_since: float | None = None
    # Billing: closed (start, stop) power-on periods; the open one is (running_since or start, None).
    power_periods: list[tuple[float, float | None]] = field(default_factory=list)


@dataclass
class FakeScaleliteServer:
    id: str
    url: str
    secret: str
    state: str = "disabled"  # enabled | cordoned | disabled
    load: float | None = None
    online: bool = False
    load_multiplier: str | float = 1.0  # a string when set, as Rails serialises BigDecimal
    tag: str = ""
    bbb_version: str = ""
    failures: int = 0
    successes: int = 0
    meetings: int = 0
    users: int = 0
    largest_meeting: int = 0
    videos: int = 0
    polled_at: float | None = None  # world time of the last successful poll (creates since then add load)


@dataclass
class FakeMeeting:
    meeting_id: str
    internal_meeting_id: str
    name: str
    create_time: float  # epoch seconds
    participants: int
    moderators: int = 1
    listeners: int = 0
    voice: int = 0
    video: int = 0
    is_breakout: bool = False
    parent_id: str | None = None
    recording: bool = False
    moderator_pw: str = "mp"
    attendee_pw: str = "ap"
    ends_at: float | None = None  # world time at which the load model ends it


@dataclass
class FakeRecording:
    record_id: str
    meeting_id: str
    stage: str  # recorded|archived|sanity|processing|published|transferred|failed
    start_time: float
    end_time: float
    next_at: float | None  # when it moves to the next stage


RECORDING_STAGES = ("recorded", "archived", "sanity", "processing", "published", "transferred")


@dataclass
class FakeBBBHost:
    """A BBB server's inside: exists for each slot; answers only while its VM is running and booted."""

    host: str
    slot: int
    meetings: dict[str, FakeMeeting] = field(default_factory=dict)
    recordings: dict[str, FakeRecording] = field(default_factory=dict)
    cpus: int = 8
    services_healthy: bool = True
    tls_expiry: float = 0.0  # epoch seconds; set at boot to boot + 80 days
    faults: ServiceFaults = field(default_factory=ServiceFaults)
    garbage: bool = False  # answers non-XML
    hang: bool = False     # accepts, never answers
    fail_recordings: bool = False  # recordings end in `failed`


class World:
    """The whole simulated pool. All fields are guarded by `lock`."""

    def __init__(self, *, zone: str = "fr-par-1", project_id: str | None = None,
                 slots: int = 20, hostname_template: str = "bbb-{n}",
                 domain_template: str = "127.0.1.{n}", bbb_secret: str | None = None,
                 delays: Delays | None = None, clock: Callable[[], float] = time.time):
        self.lock = threading.RLock()
        self.clock = clock
        self.zone = zone
        self.project_id = project_id or str(uuid.uuid4())
        self.organization_id = str(uuid.uuid4())
        self.hostname_template = hostname_template
        self.domain_template = domain_template
        self.bbb_secret = bbb_secret or uuid.uuid4().hex
        self.delays = delays or Delays()
        self.vms: dict[str, FakeVM] = {}
        self.ips: dict[str, FakeIP] = {}
        self.volumes: dict[str, FakeVolume] = {}
        self.images: dict[str, FakeImage] = {}
        self.scalelite_servers: dict[str, FakeScaleliteServer] = {}
        self.bbb_hosts: dict[str, FakeBBBHost] = {}
        self.faults: dict[str, ServiceFaults] = {
            "scaleway": ServiceFaults(), "scalelite": ServiceFaults(), "bbb": ServiceFaults()}
        self.deleted_vms: list[FakeVM] = []  # for billing and invariant checks
        self.ended_meetings: list[tuple[str, FakeMeeting, float, str]] = []  # (host, meeting, when, why)
        self._ids = itertools.count(1)
        for n in range(1, slots + 1):
            host = self.domain(n)
            self.bbb_hosts[host] = FakeBBBHost(host=host, slot=n)

    # --- naming -------------------------------------------------------------------------
    def domain(self, slot: int) -> str:
        return self.domain_template.format(n=slot)

    def hostname(self, slot: int) -> str:
        return self.hostname_template.format(n=slot)

    def slot_of_name(self, name: str) -> int | None:
        for host in self.bbb_hosts.values():
            if self.hostname(host.slot) == name:
                return host.slot
        return None

    def new_id(self) -> str:
        return str(uuid.uuid4())

    # --- time -----------------------------------------------------------------------------
    def now(self) -> float:
        return self.clock()

    def advance(self) -> None:
        """Applies every transition whose time has come."""
        now = self.now()
        with self.lock:
            for vm in list(self.vms.values()):
                if vm.pending and vm.pending[1] <= now:
                    target, _ = vm.pending
                    vm.pending = None
                    if target == "gone":
                        self._finish_terminate(vm, now)
                        continue
                    vm.state = target
                    vm.modification_date = now
                    if target == RUNNING:
                        vm.running_since = now
                        host = self.host_of_vm(vm)
                        if host is not None:
                            host.tls_expiry = now + 80 * 86400
                    elif target in (STOPPED, STOPPED_IN_PLACE):
                        # Standby (stopped in place) keeps being billed: only a full stop ends the period.
                        if target == STOPPED:
                            self._close_power_period(vm, now)
                        vm.running_since = None
                        if target == STOPPED:
                            self._wipe_host(vm)
            for host in self.bbb_hosts.values():
                for rec in host.recordings.values():
                    while rec.next_at is not None and rec.next_at <= now:
                        self._advance_recording(host, rec)

    def _advance_recording(self, host: FakeBBBHost, rec: FakeRecording) -> None:
        if rec.stage == "processing" and host.fail_recordings:
            rec.stage, rec.next_at = "failed", None
            return
        i = RECORDING_STAGES.index(rec.stage)
        rec.stage = RECORDING_STAGES[i + 1]
        rec.next_at = (None if rec.stage == "transferred"
                       else rec.next_at + self.delays.recording_seconds)

    def _close_power_period(self, vm: FakeVM, now: float) -> None:
        if vm.power_periods and vm.power_periods[-1][1] is None:
            vm.power_periods[-1] = (vm.power_periods[-1][0], now)

    def _wipe_host(self, vm: FakeVM) -> None:
        """A VM that is powered off loses its running meetings (nobody is in a dead server)."""
        host = self.host_of_vm(vm)
        if host is not None:
            for m in list(host.meetings.values()):
                self.ended_meetings.append((host.host, m, self.now(), "vm-stopped"))
            host.meetings.clear()

    def _finish_terminate(self, vm: FakeVM, now: float) -> None:
        self._close_power_period(vm, now)
        self._wipe_host(vm)
        host = self.host_of_vm(vm)
        if host is not None:
            host.recordings.clear()  # the disk is gone
        for vid in vm.volume_ids:
            vol = self.volumes.get(vid)
            if vol is None:
                continue
            if vol.volume_type == "l_ssd":
                del self.volumes[vid]
            else:  # SBS volumes are only detached, and keep being billed
                vol.server_id = None
        if vm.public_ip_id and vm.public_ip_id in self.ips:
            self.ips[vm.public_ip_id].server_id = None
        del self.vms[vm.id]
        self.deleted_vms.append(vm)

    # --- VM actions (the fake Scaleway calls these after validating the request) ------------
    def vm_action(self, vm: FakeVM, action: str) -> None:
        now = self.now()
        d = self.delays
        if action == "poweron":
            vm.state, vm.modification_date = STARTING, now
            vm.pending = (RUNNING, now + d.poweron_seconds)
            if not (vm.power_periods and vm.power_periods[-1][1] is None):
                vm.power_periods.append((now, None))  # billing starts at power-on (boot time counts)
        elif action == "poweroff":
            vm.state, vm.modification_date = STOPPING, now
            vm.pending = (STOPPED, now + d.poweroff_seconds)
        elif action == "stop_in_place":
            vm.state, vm.modification_date = STOPPING, now
            vm.pending = (STOPPED_IN_PLACE, now + d.poweroff_seconds)
        elif action == "reboot":
            vm.state, vm.modification_date = STARTING, now
            self._wipe_host(vm)
            vm.pending = (RUNNING, now + d.poweron_seconds)
        elif action == "terminate":
            vm.state, vm.modification_date = STOPPING, now
            vm.pending = ("gone", now + d.terminate_seconds)
        else:
            raise ValueError(action)

    # --- Scaleway resources (the fake Scaleway calls these after validating the request) -----
    def add_image(self, name: str, *, volume_type: str = "sbs_volume", size: int = 40_000_000_000,
                  project: str | None = None) -> FakeImage:
        with self.lock:
            image = FakeImage(self.new_id(), name, project or self.project_id, self.zone, volume_type, size)
            self.images[image.id] = image
            return image

    def create_vm(self, name: str, commercial_type: str, image_id: str, tags: list[str], *,
                  project: str | None = None) -> FakeVM:
        """A new VM in state `stopped` with a boot volume made from the image (SBS or local)."""
        with self.lock:
            now = self.now()
            image = self.images[image_id]
            vm = FakeVM(self.new_id(), name, project or self.project_id, self.zone, commercial_type,
                        image_id, list(tags), STOPPED, now, now)
            vol = FakeVolume(self.new_id(), f"{image.name} {name}", image.volume_type, image.size, vm.id,
                             [], vm.project, self.zone, now)
            self.volumes[vol.id] = vol
            vm.volume_ids.append(vol.id)
            self.vms[vm.id] = vm
            return vm

    def delete_vm(self, vm: FakeVM) -> None:
        """DELETE of a stopped server: every volume (local ones too) and the IP stay behind, detached."""
        with self.lock:
            for vid in vm.volume_ids:
                if vid in self.volumes:
                    self.volumes[vid].server_id = None
            if vm.public_ip_id and vm.public_ip_id in self.ips:
                self.ips[vm.public_ip_id].server_id = None
            del self.vms[vm.id]
            self.deleted_vms.append(vm)

    def create_ip(self, tags: list[str], *, project: str | None = None, server_id: str | None = None) -> FakeIP:
        with self.lock:
            n = next(self._ids)
            # Addresses in a Scaleway-like public range, unique per IP.
            ip = FakeIP(self.new_id(), f"51.15.{(n // 250) % 250}.{n % 250 + 1}", None, list(tags),
                        project or self.project_id, self.zone)
            self.ips[ip.id] = ip
            if server_id is not None:
                self.attach_ip(ip, server_id)
            return ip

    def attach_ip(self, ip: FakeIP, server_id: str | None) -> None:
        """Moves the IP to `server_id` (None detaches it); a server has at most one flexible IP here."""
        with self.lock:
            if ip.server_id and ip.server_id in self.vms:
                self.vms[ip.server_id].public_ip_id = None
            ip.server_id = server_id
            if server_id is not None:
                vm = self.vms[server_id]
                if vm.public_ip_id and vm.public_ip_id in self.ips and vm.public_ip_id != ip.id:
                    self.ips[vm.public_ip_id].server_id = None
                vm.public_ip_id = ip.id

    def billed_hours(self, vm: FakeVM) -> float:
        """Hours billed for this VM so far: each power-on period counts for at least one hour."""
        with self.lock:
            now = self.now()
            total = 0.0
            for start, stop in vm.power_periods:
                total += max(1.0, ((stop if stop is not None else now) - start) / 3600.0)
            return total

    # --- links between the parts -----------------------------------------------------------
    def host_of_vm(self, vm: FakeVM) -> FakeBBBHost | None:
        slot = self.slot_of_name(vm.name)
        return None if slot is None else self.bbb_hosts.get(self.domain(slot))

    def vm_of_host(self, host: str) -> FakeVM | None:
        h = self.bbb_hosts.get(host)
        if h is None:
            return None
        name = self.hostname(h.slot)
        for vm in self.vms.values():
            if vm.name == name:
                return vm
        return None

    def bbb_reachable(self, host: str) -> bool:
        """True when the BBB API of this host answers: its VM runs and has booted BBB."""
        vm = self.vm_of_host(host)
        return (vm is not None and vm.state == RUNNING and vm.running_since is not None
                and self.now() >= vm.running_since + self.delays.bbb_boot_seconds)

    def end_meeting(self, host: str, meeting_id: str, why: str) -> bool:
        """Ends a meeting (and its breakout rooms); a recorded meeting enters the recording pipeline."""
        h = self.bbb_hosts[host]
        m = h.meetings.pop(meeting_id, None)
        if m is None:
            return False
        now = self.now()
        self.ended_meetings.append((host, m, now, why))
        for child in [c for c in h.meetings.values() if c.parent_id == meeting_id]:
            h.meetings.pop(child.meeting_id, None)
        if m.recording and self.vm_of_host(host) is not None:
            rid = f"{m.internal_meeting_id}-{next(self._ids)}"
            h.recordings[rid] = FakeRecording(rid, m.meeting_id, "recorded", m.create_time, now,
                                              now + self.delays.recording_seconds)
        return True
