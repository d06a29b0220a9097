"""Helpers for the exporter's tests: a running fake BBB fleet, Scalelite entries for it, pool sources
with the real BBB client, and the exposition parsed back into {(sample name, labels): value}."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from divims.clients.bbb import BBBClient
from divims.errors import ClientError
from divims.model import ScaleliteServer, ScaleliteState
from exporter.poll import Poller, PoolSources
from exporter.server import build_registry
from testbed.world import RUNNING, FakeMeeting, World

Samples = dict[tuple[str, frozenset], float]


def running_world(slots: int = 4, *, world: World | None = None) -> World:
    """A world whose every slot has a running, booted VM (so its fake BBB server answers)."""
    w = world or World(slots=slots)
    image = w.add_image("bbb-template")
    with w.lock:
        for host in w.bbb_hosts.values():
            vm = w.create_vm(w.hostname(host.slot), "PRO2-M", image.id, ["divims", f"divims-slot={host.slot}"])
            vm.state, vm.running_since = RUNNING, w.now() - 3600
    return w


def add_meeting(world: World, host: str, participants: int, *, video: int = 0, voice: int = 0,
                listeners: int = 0, moderators: int = 1, breakout: bool = False, name: str = "") -> str:
    with world.lock:
        mid = world.new_id()
        world.bbb_hosts[host].meetings[mid] = FakeMeeting(
            meeting_id=mid, internal_meeting_id=world.new_id(), name=name or f"Secret Course {mid[:6]}",
            create_time=world.now() - 60, participants=participants, moderators=moderators,
            listeners=listeners, voice=voice, video=video, is_breakout=breakout)
        return mid


def scalelite_entries(world: World, url_for: Callable[[str], str], *,
                      hosts: Iterable[str] | None = None, secret: str | None = None) -> list[ScaleliteServer]:
    out = []
    for host in hosts if hosts is not None else world.bbb_hosts:
        slot = world.bbb_hosts[host].slot if host in world.bbb_hosts else 0
        out.append(ScaleliteServer(id=f"id-{host}", url=url_for(host), secret=secret or world.bbb_secret,
                                   state=ScaleliteState.ENABLED, online=True, load=float(slot),
                                   load_multiplier=1.0))
    return out


@dataclass
class ListScalelite:
    """A Scalelite source returning a fixed list, or raising `error` (in-process: exercises the poller's
    handling, not the wire protocol, which tests/test_scalelite_* cover)."""

    servers: list[ScaleliteServer]
    error: ClientError | None = None
    calls: int = 0

    def get_servers(self) -> list[ScaleliteServer]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return list(self.servers)


@dataclass
class Blocking:
    """A meetings source that blocks until released (a server that accepts and never answers)."""

    released: threading.Event = field(default_factory=threading.Event)

    def get_meetings(self) -> list:
        self.released.wait(30)
        return []


def template_slot(template: str, max_slot: int = 500) -> Callable[[str], int | None]:
    def slot_of(value: str) -> int | None:
        for n in range(1, max_slot + 1):
            if template.format(n=n) == value:
                return n
        return None
    return slot_of


def bbb_pool(name: str, world: World, scalelite, *, timeout: float = 2.0, cloud=None, host_stats=None,
             overrides: dict[str, object] | None = None) -> PoolSources:
    """Pool sources over the real BBB client; `overrides` maps a host to a stand-in meetings source."""
    overrides = overrides or {}

    def bbb_client(server: ScaleliteServer):
        if server.host in overrides:
            return overrides[server.host]
        return BBBClient(server.url, server.secret, timeout_seconds=timeout, algorithm="sha256")

    return PoolSources(name=name, scalelite=scalelite, bbb_client=bbb_client,
                       slot_of_host=template_slot(world.domain_template),
                       slot_of_name=template_slot(world.hostname_template),
                       slot_domain=world.domain, cloud=cloud, host_stats=host_stats)


def render(poller: Poller) -> str:
    return generate_latest(build_registry(lambda: poller.snapshot)).decode()


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(parsed: Samples, name: str, **labels: str) -> float | None:
    return parsed.get((name, frozenset(labels.items())))


def names(parsed: Samples) -> set[str]:
    return {name for name, _ in parsed}
