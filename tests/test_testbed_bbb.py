"""The fake BBB fleet's wire protocol: checksums, XML shapes, reachability, faults, scale."""

from __future__ import annotations

import socket
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

import bbb_fixtures
import pytest
import requests
from bbb_fixtures import add_meeting, boot

from divims.clients.bbb import BBBClient
from divims.errors import TransientError
from testbed.bbb import FakeBBBFleet
from testbed.world import World

bbb_world, bbb_fleet = bbb_fixtures.bbb_world, bbb_fixtures.bbb_fleet
HOST = "127.0.1.1"


def _get(fleet: FakeBBBFleet, world: World, call: str, params=(), host: str = HOST) -> ET.Element:
    url = BBBClient(fleet.url_for(host), world.bbb_secret, algorithm="sha1").signed_url(call, params)
    resp = requests.get(url, timeout=5, allow_redirects=False)
    assert resp.status_code == 200
    return ET.fromstring(resp.content)


def test_every_server_listens_on_its_own_address_on_one_port(bbb_world, bbb_fleet):
    for slot in (1, 2, 3):
        boot(bbb_world, slot)
        add_meeting(bbb_world, slot, f"only-on-{slot}", slot)
    for slot in (1, 2, 3):
        host = bbb_world.domain(slot)
        assert bbb_fleet.url_for(host) == f"http://{host}:{bbb_fleet.port}/bigbluebutton/api"
        [m] = BBBClient(bbb_fleet.url_for(host), bbb_world.bbb_secret).get_meetings()
        assert (m.meeting_id, m.participant_count) == (f"only-on-{slot}", slot)


def test_api_root_answers_the_version_without_checksum(bbb_world, bbb_fleet):
    boot(bbb_world, 1)
    root = ET.fromstring(requests.get(bbb_fleet.url_for(HOST), timeout=5).content)
    assert root.findtext("returncode") == "SUCCESS" and root.findtext("version") == "2.0"


def test_missing_or_wrong_checksum_is_failed_xml_with_http_200(bbb_world, bbb_fleet):
    boot(bbb_world, 1)
    for url in (bbb_fleet.url_for(HOST) + "/getMeetings",
                bbb_fleet.url_for(HOST) + "/getMeetings?checksum=" + "0" * 40,
                bbb_fleet.url_for(HOST) + "/getMeetings?checksum=abc"):
        resp = requests.get(url, timeout=5)
        root = ET.fromstring(resp.content)
        assert resp.status_code == 200
        assert (root.findtext("returncode"), root.findtext("messageKey")) == ("FAILED", "checksumError")
        assert bbb_world.bbb_secret.encode() not in resp.content


def test_get_meetings_xml_has_the_documented_shape(bbb_world, bbb_fleet):
    boot(bbb_world, 1)
    add_meeting(bbb_world, 1, "empty", 0, moderators=0)
    add_meeting(bbb_world, 1, "parent", 3, moderators=1, listeners=1, video=1)
    add_meeting(bbb_world, 1, "room", 1, is_breakout=True, parent_id="parent")
    root = _get(bbb_fleet, bbb_world, "getMeetings")
    meetings = {m.findtext("meetingID"): m for m in root.find("meetings").findall("meeting")}
    empty, parent, room = meetings["empty"], meetings["parent"], meetings["room"]
    assert empty.find("attendees") is not None and len(empty.find("attendees")) == 0
    attendees = parent.find("attendees").findall("attendee")
    assert [a.findtext("role") for a in attendees] == ["MODERATOR", "VIEWER", "VIEWER"]
    assert [a.findtext("isListeningOnly") for a in attendees] == ["false", "true", "false"]
    assert [a.findtext("hasVideo") for a in attendees] == ["true", "false", "false"]
    assert parent.findtext("isBreakout") == "false"
    assert [b.text for b in parent.find("breakoutRooms")] == ["int-room"]
    assert room.findtext("isBreakout") == "true"
    assert room.find("breakout").findtext("parentMeetingID") == "int-parent"
    assert room.find("breakout").findtext("sequence") == "1"
    for field in ("internalMeetingID", "createTime", "createDate", "voiceBridge", "moderatorPW", "running",
                  "participantCount", "listenerCount", "voiceParticipantCount", "videoCount", "moderatorCount",
                  "metadata"):
        assert parent.find(field) is not None, field
    assert int(parent.findtext("createTime")) > 10**12  # milliseconds


def test_no_meetings_answer(bbb_world, bbb_fleet):
    boot(bbb_world, 1)
    root = _get(bbb_fleet, bbb_world, "getMeetings")
    assert root.findtext("messageKey") == "noMeetings" and len(root.find("meetings")) == 0


def test_create_join_info_and_end(bbb_world, bbb_fleet):
    boot(bbb_world, 1)
    created = _get(bbb_fleet, bbb_world, "create", [("name", "Cours A"), ("meetingID", "c1"),
                                                    ("moderatorPW", "m0d"), ("attendeePW", "att"),
                                                    ("record", "true")])
    assert created.findtext("returncode") == "SUCCESS" and created.findtext("meetingID") == "c1"
    again = _get(bbb_fleet, bbb_world, "create", [("name", "Cours A"), ("meetingID", "c1")])
    assert again.findtext("messageKey") == "duplicateWarning"
    joined = _get(bbb_fleet, bbb_world, "join", [("meetingID", "c1"), ("fullName", "Prof"),
                                                 ("password", "m0d"), ("redirect", "false")])
    assert joined.findtext("messageKey") == "successfullyJoined"
    url = BBBClient(bbb_fleet.url_for(HOST), bbb_world.bbb_secret).signed_url(
        "join", [("meetingID", "c1"), ("fullName", "Student"), ("password", "att")])
    resp = requests.get(url, timeout=5, allow_redirects=False)
    assert resp.status_code == 302 and "sessionToken=" in resp.headers["Location"]
    bad = _get(bbb_fleet, bbb_world, "join", [("meetingID", "c1"), ("fullName", "X"), ("password", "nope")])
    assert bad.findtext("messageKey") == "invalidPassword"
    info = _get(bbb_fleet, bbb_world, "getMeetingInfo", [("meetingID", "c1")])
    assert (info.findtext("participantCount"), info.findtext("moderatorCount")) == ("2", "1")
    assert info.findtext("recording") == "true"
    assert _get(bbb_fleet, bbb_world, "getMeetingInfo", [("meetingID", "zz")]).findtext("messageKey") == "notFound"
    assert _get(bbb_fleet, bbb_world, "isMeetingRunning", [("meetingID", "c1")]).findtext("running") == "true"
    ended = _get(bbb_fleet, bbb_world, "end", [("meetingID", "c1"), ("password", "m0d")])
    assert ended.findtext("messageKey") == "sentEndMeetingRequest"
    # a recorded meeting enters the recording pipeline when it ends
    [rec] = bbb_world.bbb_hosts[HOST].recordings.values()
    assert (rec.meeting_id, rec.stage) == ("c1", "recorded")


def test_get_recordings_maps_pipeline_stages_to_api_states(bbb_world, bbb_fleet):
    boot(bbb_world, 1)
    add_meeting(bbb_world, 1, "r", 1, recording=True)
    bbb_world.end_meeting(HOST, "r", "test")
    [rec] = bbb_world.bbb_hosts[HOST].recordings.values()
    seen = {}
    for stage in ("recorded", "archived", "sanity", "processing", "published", "transferred", "failed"):
        rec.stage = stage
        root = _get(bbb_fleet, bbb_world, "getRecordings", [("state", "any")])
        seen[stage] = [r.findtext("state") for r in root.find("recordings")]
    assert seen == {"recorded": [], "archived": [], "sanity": [], "processing": ["processing"],
                    "published": ["published"], "transferred": [], "failed": []}
    rec.stage = "published"
    default = _get(bbb_fleet, bbb_world, "getRecordings")  # default: published + unpublished
    assert default.find("recordings").find("recording").findtext("published") == "true"
    other = _get(bbb_fleet, bbb_world, "getRecordings", [("meetingID", "someone-else")])
    assert other.findtext("messageKey") == "noRecordings"


def test_unknown_call_and_path(bbb_world, bbb_fleet):
    boot(bbb_world, 1)
    assert _get(bbb_fleet, bbb_world, "deleteEverything").findtext("messageKey") == "unsupportedRequest"
    assert requests.get(f"http://{HOST}:{bbb_fleet.port}/elsewhere", timeout=5).status_code == 404


def test_server_answers_only_once_its_vm_has_booted(bbb_world, bbb_fleet):
    client = BBBClient(bbb_fleet.url_for(HOST), bbb_world.bbb_secret)
    vm = boot(bbb_world, 1, booted_seconds_ago=0.0)
    with pytest.raises(TransientError):
        client.get_meetings()
    vm.running_since = bbb_world.now() - bbb_world.delays.bbb_boot_seconds - 0.01
    assert client.get_meetings() == []  # same session: a reset connection is not reused
    vm.state = "stopping"
    with pytest.raises(TransientError):
        client.get_meetings()


def test_reset_is_a_real_tcp_reset(bbb_world, bbb_fleet):
    with pytest.raises(ConnectionResetError):  # RST, not a clean close; it may even beat connect()
        with socket.create_connection((HOST, bbb_fleet.port), timeout=2) as s:
            time.sleep(0.05)  # the fake resets right after accept: no VM runs in slot 1
            s.recv(100)


def test_latency_and_per_host_faults_stay_on_their_host(bbb_world, bbb_fleet):
    for slot in (1, 2):
        boot(bbb_world, slot)
    bbb_world.bbb_hosts[HOST].faults.latency_seconds = 0.3
    bbb_world.bbb_hosts["127.0.1.2"].faults.error_rate = 1.0
    start = time.monotonic()
    assert BBBClient(bbb_fleet.url_for(HOST), bbb_world.bbb_secret).get_meetings() == []
    assert time.monotonic() - start >= 0.3
    with pytest.raises(TransientError, match="HTTP 500"):
        BBBClient(bbb_fleet.url_for("127.0.1.2"), bbb_world.bbb_secret).get_meetings()
    bbb_world.faults["bbb"].down = True
    with pytest.raises(TransientError, match="reset"):
        BBBClient(bbb_fleet.url_for(HOST), bbb_world.bbb_secret).get_meetings()


def test_timeout_rate_hangs_then_closes(bbb_world, bbb_fleet):
    boot(bbb_world, 1)
    bbb_world.faults["bbb"].timeout_rate = 1.0
    bbb_world.faults["bbb"].hang_seconds = 0.2
    with pytest.raises(TransientError):
        BBBClient(bbb_fleet.url_for(HOST), bbb_world.bbb_secret, timeout_seconds=2).get_meetings()


def test_stop_closes_hanging_connections_and_listeners(bbb_world):
    fleet = FakeBBBFleet(bbb_world, 0).start()
    boot(bbb_world, 1)
    bbb_world.bbb_hosts[HOST].hang = True
    s = socket.create_connection((HOST, fleet.port), timeout=2)
    s.sendall(b"GET /bigbluebutton/api HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.1)
    start = time.monotonic()
    fleet.stop()
    assert time.monotonic() - start < 2
    s.settimeout(2)
    try:
        assert s.recv(10) == b""
    except ConnectionResetError:
        pass
    s.close()
    with pytest.raises(OSError):
        socket.create_connection((HOST, fleet.port), timeout=1).close()


def test_unknown_host_is_refused_at_construction(bbb_world):
    with pytest.raises(ValueError, match="10.0.0.1"):
        FakeBBBFleet(bbb_world, 0, hosts=["10.0.0.1"])


def test_500_slow_servers_answer_64_concurrent_clients():
    # 127.1.<n> is the a.b.c form of 127.1.x.y, so slots beyond 254 still get their own loopback address.
    world = World(slots=500, domain_template="127.1.{n}", bbb_secret="s")
    for n in range(1, 501):
        boot(world, n)
    add_meeting(world, 321, "busy", 7)
    world.faults["bbb"].latency_seconds = 0.1
    with FakeBBBFleet(world, 0) as fleet:
        clients = [BBBClient(fleet.url_for(h), "s", timeout_seconds=10) for h in world.bbb_hosts]
        start = time.monotonic()
        with ThreadPoolExecutor(64) as pool:
            counts = list(pool.map(lambda c: sum(m.participant_count for m in c.get_meetings()), clients))
        elapsed = time.monotonic() - start
        for c in clients:
            c.close()
    assert counts[320] == 7 and sum(counts) == 7
    # 500 answers x 0.1 s over 64 connections is >= 0.8 s; serialised it would be 50 s.
    assert 0.7 < elapsed < 15
