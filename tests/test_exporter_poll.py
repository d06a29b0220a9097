"""The poll loop against the fake BBB fleet (real HTTP, real BBB client): metrics per server, and each
BBB fault isolated to its own server."""

from __future__ import annotations

import logging
import time

import pytest
from exporter_fixtures import (
    Blocking,
    ListScalelite,
    add_meeting,
    bbb_pool,
    render,
    running_world,
    samples,
    scalelite_entries,
    value,
)

from divims.errors import TransientError
from exporter.poll import Poller
from testbed.bbb import FakeBBBFleet

POOL = "p1"


@pytest.fixture
def world():
    return running_world(4)


@pytest.fixture
def fleet(world):
    with FakeBBBFleet(world) as f:
        yield f


def make_poller(world, fleet, scalelite=None, **kw) -> tuple[Poller, ListScalelite]:
    scalelite = scalelite or ListScalelite(scalelite_entries(world, fleet.url_for))
    overrides = kw.pop("overrides", None)
    poller = Poller([bbb_pool(POOL, world, scalelite, timeout=kw.pop("client_timeout", 2.0),
                              overrides=overrides)],
                    interval_seconds=kw.pop("interval", 10.0), concurrency=kw.pop("concurrency", 8),
                    timeout_seconds=kw.pop("timeout", 2.0))
    return poller, scalelite


def test_meeting_sums_per_server_with_breakouts_counted(world, fleet):
    h1, h2 = world.domain(1), world.domain(2)
    add_meeting(world, h1, 30, video=4, voice=10, listeners=12, moderators=2)
    add_meeting(world, h1, 5, breakout=True)
    add_meeting(world, h2, 7)
    poller, _ = make_poller(world, fleet)
    try:
        poller.poll_once()
        m = samples(render(poller))
    finally:
        poller.stop()
    assert value(m, "bbb_api_up", pool=POOL, server=h1) == 1
    assert value(m, "bbb_meetings", pool=POOL, server=h1) == 2
    assert value(m, "bbb_meetings_participants", pool=POOL, server=h1) == 35
    assert value(m, "bbb_meetings_video_participants", pool=POOL, server=h1) == 4
    assert value(m, "bbb_meetings_voice_participants", pool=POOL, server=h1) == 10
    assert value(m, "bbb_meetings_listeners", pool=POOL, server=h1) == 12
    assert value(m, "bbb_meetings_moderators", pool=POOL, server=h1) == 3
    assert value(m, "bbb_meetings_largest_participants", pool=POOL, server=h1) == 30
    assert value(m, "bbb_meetings_participants", pool=POOL, server=h2) == 7
    assert value(m, "bbb_meetings", pool=POOL, server=world.domain(3)) == 0
    assert value(m, "bbb_api_latency_seconds", pool=POOL, server=h1) > 0
    assert value(m, "divims_pool_capacity_participants", pool=POOL) == 4 * 250


def test_no_meeting_name_or_id_or_secret_in_the_output(world, fleet):
    mid = add_meeting(world, world.domain(1), 3, name="Board meeting of ACME")
    poller, _ = make_poller(world, fleet)
    try:
        poller.poll_once()
        text = render(poller)
    finally:
        poller.stop()
    assert "ACME" not in text and mid not in text
    assert world.bbb_secret not in text


def _fault(world, host, kind):
    h = world.bbb_hosts[host]
    if kind == "garbage":
        h.garbage = True
    elif kind == "http_error":
        h.faults.error_rate, h.faults.error_status = 1.0, 503
    elif kind == "hang":
        h.hang = True


@pytest.mark.parametrize("kind, expected_kind", [
    ("garbage", "protocol"),
    ("http_error", "transient"),
    ("failed", "auth"),       # a wrong secret: checksumError, FAILED with HTTP 200
    ("hang", "timeout"),
])
def test_one_faulty_server_is_down_alone_with_one_log_line(world, fleet, caplog, kind, expected_kind):
    bad = world.domain(2)
    entries = scalelite_entries(world, fleet.url_for)
    if kind == "failed":
        entries = [e if e.host != bad else type(e)(**{**e.__dict__, "secret": "not-the-secret"})
                   for e in entries]
    else:
        _fault(world, bad, kind)
    add_meeting(world, world.domain(1), 9)
    poller, _ = make_poller(world, fleet, ListScalelite(entries), timeout=0.5, client_timeout=0.5)
    caplog.set_level(logging.INFO, logger="exporter")
    try:
        t0 = time.monotonic()
        poller.poll_once()
        first = time.monotonic() - t0
        poller.poll_once()  # a second failing cycle logs nothing new
        m = samples(render(poller))
    finally:
        poller.stop()
    assert value(m, "bbb_api_up", pool=POOL, server=bad) == 0
    assert value(m, "bbb_meetings", pool=POOL, server=bad) is None  # unknown, not zero
    for n in (1, 3, 4):
        assert value(m, "bbb_api_up", pool=POOL, server=world.domain(n)) == 1
    assert value(m, "bbb_meetings_participants", pool=POOL, server=world.domain(1)) == 9
    assert value(m, "divims_exporter_poll_errors_total", pool=POOL, source="bbb", kind=expected_kind) == 2
    assert value(m, "bbb_api_errors_total", pool=POOL, server=bad) == 2
    lines = [r for r in caplog.records if bad in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING, [r.getMessage() for r in lines]
    assert "not-the-secret" not in caplog.text and world.bbb_secret not in caplog.text
    assert first < 0.5 + 1.0 + 1.0  # the per-target timeout (+grace), not the hang, bounds the cycle


def test_a_hung_call_is_not_repeated_and_the_server_recovers(world, fleet, caplog):
    bad = world.domain(3)
    blocker = Blocking()
    poller, _ = make_poller(world, fleet, timeout=0.3, overrides={bad: blocker})
    caplog.set_level(logging.INFO, logger="exporter")
    try:
        poller.poll_once()
        t0 = time.monotonic()
        poller.poll_once()  # the first call still hangs: reported at once, no second call piled on
        assert time.monotonic() - t0 < 0.3 + 1.0
        m = samples(render(poller))
        assert value(m, "bbb_api_up", pool=POOL, server=bad) == 0
        blocker.released.set()
        time.sleep(0.05)
        poller.poll_once()
        m = samples(render(poller))
    finally:
        blocker.released.set()
        poller.stop()
    assert value(m, "bbb_api_up", pool=POOL, server=bad) == 1
    assert any("recovered" in r.getMessage() and bad in r.getMessage() for r in caplog.records)


def test_scalelite_down_keeps_the_last_list_marked_stale(world, fleet):
    poller, scalelite = make_poller(world, fleet)
    try:
        poller.poll_once()
        scalelite.error = TransientError("scalelite", "127.0.0.1", "HTTP 502")
        add_meeting(world, world.domain(4), 11)
        poller.poll_once()
        m = samples(render(poller))
    finally:
        poller.stop()
    assert value(m, "scalelite_up", pool=POOL) == 0
    assert value(m, "scalelite_server_list_stale", pool=POOL) == 1
    # the last known servers are still there, and still polled
    assert value(m, "scalelite_server_online", pool=POOL, server=world.domain(1)) == 1
    assert value(m, "bbb_meetings_participants", pool=POOL, server=world.domain(4)) == 11
    assert value(m, "divims_exporter_poll_errors_total", pool=POOL, source="scalelite", kind="transient") == 1


def test_servers_outside_the_domain_template_are_ignored(world, fleet):
    entries = scalelite_entries(world, fleet.url_for)
    stranger = type(entries[0])(**{**entries[0].__dict__, "id": "x", "url": "http://10.9.9.9/bigbluebutton/api"})
    poller, scalelite = make_poller(world, fleet, ListScalelite(entries + [stranger]))
    try:
        poller.poll_once()
        text = render(poller)
    finally:
        poller.stop()
    assert "10.9.9.9" not in text
    assert value(samples(text), "bbb_api_up", pool=POOL, server=world.domain(1)) == 1


def test_background_loop_swaps_snapshots(world, fleet):
    poller, scalelite = make_poller(world, fleet, interval=0.2)
    poller.start()
    try:
        deadline = time.monotonic() + 5
        while poller.cycles < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        first = poller.snapshot
        time.sleep(0.3)
        assert poller.snapshot is not first
    finally:
        poller.stop()
    assert poller.cycles >= 3 and scalelite.calls >= 3


class _Cloud:
    """An in-process Scaleway source (the wire protocol and its retries are the Scaleway client's tests)."""

    def __init__(self, vms, error=None):
        self.vms, self.error, self.price_calls = vms, error, 0

    def list_servers(self):
        if self.error is not None:
            raise self.error
        return list(self.vms)

    def hourly_price(self, commercial_type):
        self.price_calls += 1
        return 0.5


def _vm(name, state, created):
    from divims.model import VM
    return VM(id=f"id-{name}-{created}", name=name, state=state, commercial_type="PRO2-M", zone="fr-par-1",
              tags=(), creation_date=created, modification_date=created + 5)


def test_scaleway_states_one_vm_per_slot_and_down_after_errors(world, fleet):
    from divims.model import VMState
    vms = [_vm("bbb-1", VMState.STOPPED, 100.0), _vm("bbb-1", VMState.RUNNING, 50.0),
           _vm("bbb-2", VMState.STOPPED_IN_PLACE, 10.0), _vm("other-9", VMState.RUNNING, 1.0)]
    cloud = _Cloud(vms)
    scalelite = ListScalelite(scalelite_entries(world, fleet.url_for))
    poller = Poller([bbb_pool(POOL, world, scalelite, cloud=cloud)], interval_seconds=10, concurrency=4,
                    timeout_seconds=2)
    try:
        poller.poll_once()
        m = samples(render(poller))
        cloud.error = TransientError("scaleway", "fr-par-1", "HTTP 503 after 4 tries")
        poller.poll_once()
        down = samples(render(poller))
    finally:
        poller.stop()
    h1, h2 = world.domain(1), world.domain(2)
    assert value(m, "scaleway_up", pool=POOL) == 1
    assert value(m, "scaleway_server_state", pool=POOL, server=h1, state="running") == 1  # the live one wins
    assert value(m, "scaleway_server_state", pool=POOL, server=h2, state="stopped_in_place") == 1
    assert value(m, "scaleway_server_info", pool=POOL, server=h1, id="id-bbb-1-50.0", commercial_type="PRO2-M",
                 zone="fr-par-1") == 1
    assert value(m, "scaleway_server_hourly_price_euros", pool=POOL, server=h1) == 0.5
    assert value(m, "scaleway_server_state_changed_timestamp_seconds", pool=POOL, server=h1) == 55.0
    assert not any("other-9" in str(k) for k in m)
    assert cloud.price_calls == 1  # the catalog is cached
    assert value(down, "scaleway_up", pool=POOL) == 0
    assert value(down, "divims_exporter_poll_errors_total", pool=POOL, source="scaleway", kind="transient") == 1
    assert value(down, "bbb_api_up", pool=POOL, server=h1) == 1  # the other sources are unaffected
