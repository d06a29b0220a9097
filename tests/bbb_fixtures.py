"""Fixtures for the BBB-side tests: a small world whose slots can be booted, and the fake BBB fleet."""

from __future__ import annotations

import pytest

from testbed.bbb import FakeBBBFleet
from testbed.world import RUNNING, Delays, FakeMeeting, FakeVM, World


def boot(world: World, slot: int, *, booted_seconds_ago: float = 3600.0) -> FakeVM:
    """Puts a running, booted VM in `slot` (what the fake Scaleway does after create + poweron)."""
    now = world.now()
    since = now - booted_seconds_ago
    vm = FakeVM(id=world.new_id(), name=world.hostname(slot), project=world.project_id, zone=world.zone,
                commercial_type="PRO2-M", image_id="img", tags=["divims", f"divims-slot={slot}"],
                state=RUNNING, creation_date=since, modification_date=since, running_since=since,
                power_periods=[(since, None)])
    with world.lock:
        world.vms[vm.id] = vm
        world.bbb_hosts[world.domain(slot)].tls_expiry = since + 80 * 86400
    return vm


def add_meeting(world: World, slot: int, meeting_id: str, participants: int, **kw) -> FakeMeeting:
    m = FakeMeeting(meeting_id=meeting_id, internal_meeting_id=f"int-{meeting_id}", name=f"Room {meeting_id}",
                    create_time=kw.pop("create_time", world.now() - 60), participants=participants, **kw)
    with world.lock:
        world.bbb_hosts[world.domain(slot)].meetings[meeting_id] = m
    return m


@pytest.fixture
def bbb_world() -> World:
    return World(slots=3, bbb_secret="639259d4-9dd8-4b25-bf01-95f9567eaf4b",
                 delays=Delays(recording_seconds=3600))


@pytest.fixture
def bbb_fleet(bbb_world: World):
    fleet = FakeBBBFleet(bbb_world, 0).start()
    try:
        yield fleet
    finally:
        fleet.stop()
