"""Fixtures of the scaler tests: a tiny fake Prometheus over real HTTP, in-memory Cloud / Scalelite /
BBB that satisfy `divims.clients.protocols` (for unit tests of the actuator and inventory; the scenario
tests use the testbed's fakes over HTTP), and a naming for a small pool."""

from __future__ import annotations

import collections
import itertools
import json
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from divims.config import load_config
from divims.errors import NotFoundError, TransientError
from divims.model import (
    VM,
    FlexibleIP,
    Meeting,
    ScaleliteServer,
    ScaleliteState,
    VMState,
    Volume,
    pool_tags,
    url_host,
)
from scaler.inventory import SlotNaming
from scaler.loop import build_pool_scaler
from scaler.metrics import ScalerMetrics
from testbed.pool import TestbedOptions, TestbedPool
from testbed.world import Delays, FakeMeeting


def naming(pool: str = "p1", size_max: int = 4) -> SlotNaming:
    return SlotNaming(pool=pool, size_max=size_max, slot_name=lambda n: f"bbb-{n}",
                      slot_domain=lambda n: f"127.0.1.{n}",
                      slot_url=lambda n: f"http://127.0.1.{n}:8090/bigbluebutton/api")


# --- fake Prometheus -------------------------------------------------------------------------
class FakePrometheus:
    """Answers /api/v1/query from `answers` (query substring -> result list, or an int HTTP status).
    Unmatched queries get an empty vector. Records every request (method, path, query)."""

    def __init__(self):
        self.answers: dict[str, object] = {}
        self.requests: list[tuple[str, str, str]] = []
        self.status: int | None = None  # answer every query with this HTTP status
        self.provider = None  # query -> result, computed at request time (WorldPrometheus)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                parts = urlsplit(self.path)
                q = parse_qs(parts.query).get("query", [""])[0]
                outer.requests.append((self.command, parts.path, q))
                if outer.status is not None:
                    self.send_response(outer.status)
                    self.end_headers()
                    self.wfile.write(b"down")
                    return
                result: object = []
                if outer.provider is not None:
                    result = outer.provider(q)
                else:
                    for key, value in outer.answers.items():
                        if key in q:
                            result = value
                            break
                if isinstance(result, int):
                    self.send_response(result)
                    self.end_headers()
                    return
                body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            do_GET = _answer
            do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def start(self) -> FakePrometheus:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    @staticmethod
    def vector(value: float, **labels: str) -> list[dict]:
        return [{"metric": labels, "value": [0, str(value)]}]

    def set_pool(self, participants: float, meetings: float, age: float = 5.0,
                 per_server: dict[str, tuple[int, int]] | None = None, recordings: dict[str, int] | None = None,
                 up: dict[str, int] | None = None) -> None:
        """Answers for a pool: the given totals, all fresh (`age`), and per-server meetings/participants."""
        per_server = per_server or {}
        a = self.answers
        a.clear()
        # order matters: the more specific substrings first
        a["min by (server) (timestamp(bbb_meetings{"] = [
            {"metric": {"server": s}, "value": [0, str(age)]} for s in per_server]
        a["timestamp(bbb_meetings_participants{"] = self.vector(age)
        a["timestamp(bbb_meetings{"] = self.vector(age)
        a["deriv("] = self.vector(0)
        a["offset"] = []
        a["sum by (server) (bbb_meetings{"] = [
            {"metric": {"server": s}, "value": [0, str(m)]} for s, (m, _) in per_server.items()]
        a["sum by (server) (bbb_meetings_participants{"] = [
            {"metric": {"server": s}, "value": [0, str(p)]} for s, (_, p) in per_server.items()]
        a["sum by (server) (bbb_recordings_processing"] = [
            {"metric": {"server": s}, "value": [0, str((recordings or {}).get(s, 0))]} for s in per_server]
        a["bbb_api_up"] = [{"metric": {"server": s}, "value": [0, str((up or {}).get(s, 1))]} for s in per_server]
        a["sum(bbb_meetings_participants{"] = self.vector(participants)
        a["sum(bbb_meetings{"] = self.vector(meetings)


# --- in-memory services ------------------------------------------------------------------------
@dataclass
class Calls:
    log: list[tuple[str, tuple]] = field(default_factory=list)

    def add(self, name: str, *args) -> None:
        self.log.append((name, args))

    def names(self) -> list[str]:
        return [n for n, _ in self.log]


class MemoryCloud:
    """A Cloud that keeps VMs in a dict; `fail_next` makes the next call(s) of a method raise."""

    def __init__(self, pool: str = "p1", zone: str = "fr-par-1"):
        self.pool, self.zone = pool, zone
        self.vms: dict[str, VM] = {}
        self.volumes: dict[str, Volume] = {}
        self.ips: dict[str, FlexibleIP] = {}
        self.calls = Calls()
        self.fail_next: dict[str, list[Exception]] = {}
        self.create_then_fail = False  # create the VM, then lose the answer (a 504 in transit)
        self._ids = itertools.count(1)

    def _maybe_fail(self, name: str) -> None:
        errs = self.fail_next.get(name)
        if errs:
            raise errs.pop(0)

    def add_vm(self, slot: int, state: VMState = VMState.RUNNING, name: str | None = None,
               created: float = 0.0) -> VM:
        vid = f"vm-{next(self._ids)}"
        vol = Volume(f"vol-{vid}", "sbs_volume", 10, vid)
        self.volumes[vol.id] = vol
        vm = VM(vid, name or f"bbb-{slot}", state, "PRO2-M", self.zone, pool_tags(self.pool, slot),
                created, created, volumes=(vol,))
        self.vms[vid] = vm
        return vm

    def list_servers(self) -> list[VM]:
        self.calls.add("list_servers")
        self._maybe_fail("list_servers")
        return list(self.vms.values())

    def get_server(self, server_id: str) -> VM | None:
        self.calls.add("get_server", server_id)
        self._maybe_fail("get_server")
        return self.vms.get(server_id)

    def create_server(self, name: str, slot: int) -> VM:
        self.calls.add("create_server", name, slot)
        self._maybe_fail("create_server")
        vm = self.add_vm(slot, VMState.STOPPED, name=name)
        if self.create_then_fail:
            self.create_then_fail = False
            raise TransientError("scaleway", name, "HTTP 504 after the create")
        return vm

    def _set(self, server_id: str, state: VMState) -> None:
        if server_id not in self.vms:
            raise NotFoundError("scaleway", server_id, "no such server")
        self.vms[server_id] = replace(self.vms[server_id], state=state)

    def poweron(self, server_id: str) -> None:
        self.calls.add("poweron", server_id)
        self._maybe_fail("poweron")
        self._set(server_id, VMState.STARTING)

    def poweroff(self, server_id: str) -> None:
        self.calls.add("poweroff", server_id)
        self._set(server_id, VMState.STOPPED)

    def terminate(self, server_id: str) -> None:
        self.calls.add("terminate", server_id)
        self._maybe_fail("terminate")
        vm = self.vms.pop(server_id)
        for v in vm.volumes:
            self.volumes[v.id] = replace(self.volumes[v.id], server_id=None)

    def list_volumes(self) -> list[Volume]:
        self.calls.add("list_volumes")
        self._maybe_fail("list_volumes")
        return list(self.volumes.values())

    def delete_volume(self, volume_id: str) -> None:
        self.calls.add("delete_volume", volume_id)
        del self.volumes[volume_id]

    def list_ips(self) -> list[FlexibleIP]:
        self.calls.add("list_ips")
        return list(self.ips.values())

    def create_ip(self, slot: int) -> FlexibleIP:
        self.calls.add("create_ip", slot)
        ip = FlexibleIP(f"ip-{slot}", f"51.0.0.{slot}", None, pool_tags(self.pool, slot))
        self.ips[ip.id] = ip
        return ip

    def attach_ip(self, ip_id: str, server_id: str) -> None:
        self.calls.add("attach_ip", ip_id, server_id)
        self.ips[ip_id] = replace(self.ips[ip_id], server_id=server_id)

    def hourly_price(self, commercial_type: str) -> float | None:
        return 0.1


class MemoryScalelite:
    def __init__(self):
        self.servers: dict[str, ScaleliteServer] = {}
        self.calls = Calls()
        self.down = False
        self._ids = itertools.count(1)

    def add(self, slot: int, state: ScaleliteState = ScaleliteState.ENABLED, online: bool = True) -> ScaleliteServer:
        sid = f"sl-{slot}"
        s = ScaleliteServer(sid, f"http://127.0.1.{slot}:8090/bigbluebutton/api", "bbbsecret", state, online, 0.0)
        self.servers[sid] = s
        return s

    def get_servers(self) -> list[ScaleliteServer]:
        self.calls.add("get_servers")
        if self.down:
            raise TransientError("scalelite", "getServers", "connection refused")
        return list(self.servers.values())

    def add_server(self, url, secret, load_multiplier=None, tag=None) -> ScaleliteServer:
        self.calls.add("add_server", url)
        sid = f"sl-new-{next(self._ids)}"
        s = ScaleliteServer(sid, url, secret, ScaleliteState.DISABLED, False, None)
        self.servers[sid] = s
        return s

    def _state(self, sid: str, state: ScaleliteState) -> None:
        self.servers[sid] = replace(self.servers[sid], state=state)

    def enable(self, server_id):
        self.calls.add("enable", server_id)
        self._state(server_id, ScaleliteState.ENABLED)

    def cordon(self, server_id):
        self.calls.add("cordon", server_id)
        self._state(server_id, ScaleliteState.CORDONED)

    def disable(self, server_id):
        self.calls.add("disable", server_id)
        self._state(server_id, ScaleliteState.DISABLED)

    def panic(self, server_id, keep_state=False):
        self.calls.add("panic", server_id)
        self._state(server_id, ScaleliteState.DISABLED)

    def delete_server(self, server_id):
        self.calls.add("delete_server", server_id)
        del self.servers[server_id]


class MemoryBBB:
    """Meetings by host; `down` hosts raise; `factory(url, secret)` is the actuator's BBB factory."""

    def __init__(self):
        self.meetings: dict[str, list[Meeting]] = {}
        self.processing: dict[str, int] = {}
        self.down: set[str] = set()
        self.ended: list[str] = []

    def factory(self, url: str, secret: str) -> MemoryBBB._Client:
        return MemoryBBB._Client(self, url_host(url))

    def meeting(self, host: str, mid: str, created: float, participants: int = 3) -> None:
        self.meetings.setdefault(host, []).append(Meeting(mid, mid + "-int", created, participants))

    class _Client:
        def __init__(self, outer: MemoryBBB, host: str):
            self.o, self.host = outer, host

        def _check(self):
            if self.host in self.o.down:
                raise TransientError("bbb", self.host, "connection refused")

        def get_meetings(self):
            self._check()
            return list(self.o.meetings.get(self.host, []))

        def get_recordings(self, states):
            self._check()
            return ["r"] * self.o.processing.get(self.host, 0)

        def end_meeting(self, meeting_id, password=None):
            self._check()
            self.o.meetings[self.host] = [m for m in self.o.meetings.get(self.host, []) if m.meeting_id != meeting_id]
            self.o.ended.append(meeting_id)




class WorldPrometheus(FakePrometheus):
    """Answers the shipped queries from a testbed World, as Prometheus scraping the exporter would:
    series only for servers whose BBB API answers; no history (the forecast stays unknown)."""

    def __init__(self, world):
        super().__init__()
        self.world = world
        self.provider = self._answer

    def _hosts(self):
        w = self.world
        w.advance()
        with w.lock:
            return [(h, list(h.meetings.values()), list(h.recordings.values()))
                    for h in w.bbb_hosts.values() if w.bbb_reachable(h.host)]

    def _per(self, fn):
        return [{"metric": {"server": h.host}, "value": [0, str(fn(h, m, r))]} for h, m, r in self._hosts()]

    def _answer(self, q: str):
        hosts = self._hosts()
        if "timestamp(" in q:
            return self._per(lambda h, m, r: 2) if "by (server)" in q else self.vector(2)
        if "deriv(" in q:
            return self.vector(0)
        if "offset" in q:
            return []
        if "bbb_api_up" in q:
            return self._per(lambda h, m, r: 1)
        if "bbb_recordings_processing" in q:
            return self._per(lambda h, m, r: sum(1 for x in r if x.stage not in ("transferred", "failed")))
        if "sum by (server) (bbb_meetings{" in q:
            return self._per(lambda h, m, r: len(m))
        if "sum by (server) (bbb_meetings_participants{" in q:
            return self._per(lambda h, m, r: sum(x.participants for x in m))
        if "sum(bbb_meetings_participants{" in q:
            return self.vector(sum(x.participants for _, m, _ in hosts for x in m))
        if "sum(bbb_meetings{" in q:
            return self.vector(sum(len(m) for _, m, _ in hosts))
        return []


class ExporterPrometheus(WorldPrometheus):
    """WorldPrometheus whose `bbb_api_up` follows what the exporter reports: 0 for a server whose BBB API
    hangs, answers garbage or refuses (the world's fault flags), and no meeting series for it (a failed
    poll has no totals). WorldPrometheus shows such a server as up with its meetings."""

    def _answers(self, h) -> bool:
        return not (h.hang or h.garbage or h.faults.down or self.world.faults["bbb"].down)

    def _hosts(self):
        return [(h, m, r) for h, m, r in super()._hosts() if self._answers(h)]

    def _answer(self, q: str):
        if "bbb_api_up" in q:
            return [{"metric": {"server": h.host}, "value": [0, "1" if self._answers(h) else "0"]}
                    for h, _, _ in WorldPrometheus._hosts(self)]
        return super()._answer(q)


# --- the testbed scenario fixture --------------------------------------------------------------
SLOTS = 6


def bed_extra(tmp_path) -> dict:
    """The `bed` fixture's configuration overrides (a test adds its own to a copy)."""
    return {"scaler": {"state_dir": str(tmp_path / "state"), "interval_seconds": 1, "lock_ttl_seconds": 1,
                       "scale_in_window_seconds": 0},
            # bounded retries keep a 429 storm's backoff within a test's time
            "pools": [{"size": {"min": 1, "max": SLOTS}, "scaleway": {"max_retries": 2, "timeout_seconds": 2}}]}


class SimulatedCrash(BaseException):
    """Not an Exception: it goes through every `except Exception`, like a kill between two steps."""


@contextmanager
def scenario_bed(tmp_path, monkeypatch, extra: dict | None = None):
    """A fast TestbedPool, a Prometheus stand-in and the loaded settings (`bed_extra`, or `extra`)."""
    delays = Delays(poweron_seconds=0.1, bbb_boot_seconds=0.05, poweroff_seconds=0.05, terminate_seconds=0.05,
                    recording_seconds=0.3)
    pool = TestbedPool(TestbedOptions(slots=SLOTS, ssh=False, delays=delays, scalelite_poll_seconds=0.05,
                                      workdir=str(tmp_path / "bed"))).start()
    prom = WorldPrometheus(pool.world).start()
    try:
        for k, v in pool.environment().items():
            monkeypatch.setenv(k, v)
        path = pool.write_config(tmp_path / "divims.yml", prometheus_url=prom.url,
                                 extra=extra if extra is not None else bed_extra(tmp_path))
        yield pool, prom, load_config(str(path))
    finally:
        prom.stop()
        pool.stop()


@pytest.fixture
def bed(tmp_path, monkeypatch):
    with scenario_bed(tmp_path, monkeypatch) as parts:
        yield parts


def make_scaler(settings, **kw):
    s = build_pool_scaler(settings, settings.pools[0], dry_run=False, metrics=kw.pop("metrics", ScalerMetrics()),
                          **kw)
    # test time runs in seconds, not hours: no billing minimum, no paid-hour preference
    s.decide.rules = replace(s.decide.rules, min_billed_seconds=0, paid_hour_margin_seconds=None)
    return s


def add_meetings(world, slot: int, count: int, participants: int, *, recording: bool = False,
                 age: float = 0.0) -> list[str]:
    host = world.domain(slot)
    ids = []
    with world.lock:
        for _ in range(count):
            mid = uuid.uuid4().hex[:10]
            world.bbb_hosts[host].meetings[mid] = FakeMeeting(mid, mid + "-i", "class", world.now() - age,
                                                              participants, recording=recording)
            ids.append(mid)
    return ids


def enabled_slots(world) -> set[int]:
    with world.lock:
        return {world.bbb_hosts[h].slot for s in world.scalelite_servers.values()
                for h in world.bbb_hosts if s.state == "enabled" and f"//{h}:" in s.url}


def vm_names(world) -> list[str]:
    world.advance()
    with world.lock:
        return sorted(vm.name for vm in world.vms.values())


def assert_no_duplicate(world) -> None:
    """Never two VMs for one slot at the same time."""
    with world.lock:
        names = collections.Counter(vm.name for vm in world.vms.values())
    assert max(names.values(), default=1) == 1, names


def converge(scaler, world, done, *, cycles: int = 40, pause: float = 0.08, check=None):
    """Cycles until `done()`; after every cycle no slot has two VMs and `check()` (more invariants) holds."""
    for _ in range(cycles):
        outcome = scaler.cycle()
        assert_no_duplicate(world)
        if check is not None:
            check()
        if done():
            return outcome
        time.sleep(pause)
    raise AssertionError("did not converge")


def cut_meetings(world) -> list:
    """Meetings that ended because their server went away (not by their own end)."""
    return [e for e in world.ended_meetings if e[3] in ("vm-stopped", "scalelite-panic")]


def orphans(world) -> tuple[list, list]:
    with world.lock:
        vols = [v.id for v in world.volumes.values() if v.server_id is None]
        strays = [n for n, c in collections.Counter(vm.name for vm in world.vms.values()).items() if c > 1]
    return vols, strays


