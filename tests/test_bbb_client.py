"""The BBB API client against the fake BBB fleet over real sockets, and against raw answers."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import bbb_fixtures
import pytest
from bbb_fixtures import add_meeting, boot

from divims.clients.bbb import BBBClient, checksum, parse_xml
from divims.errors import APIError, AuthError, ProtocolError, TimeoutError_, TransientError
from testbed.world import FakeRecording

bbb_world, bbb_fleet = bbb_fixtures.bbb_world, bbb_fixtures.bbb_fleet

SECRET = "639259d4-9dd8-4b25-bf01-95f9567eaf4b"
HOST = "127.0.1.1"


def test_checksum_matches_the_docs_test_vector():
    query = "name=Test+Meeting&meetingID=abc123&attendeePW=111222&moderatorPW=333444"
    assert checksum("create", query, SECRET) == "1fcbb0c4fc1f039f73aa6d697d2db9ba7f803f17"


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha384", "sha512"])
def test_checksum_supports_every_bbb_algorithm(algorithm):
    expected = hashlib.new(algorithm, b"getMeetings" + SECRET.encode()).hexdigest()
    assert checksum("getMeetings", "", SECRET, algorithm) == expected


def test_unknown_algorithm_is_refused_clearly():
    with pytest.raises(ValueError, match="md5"):
        checksum("getMeetings", "", SECRET, "md5")
    with pytest.raises(ValueError, match="md5"):
        BBBClient("http://x/bigbluebutton/api", SECRET, algorithm="md5")


def test_signed_url_encodes_values_and_signs_the_encoded_query():
    client = BBBClient("https://bbb.example.org/bigbluebutton/api/", SECRET, algorithm="sha1")
    url = client.signed_url("create", [("name", "Test Meeting"), ("meetingID", "abc123"),
                                       ("attendeePW", "111222"), ("moderatorPW", "333444")])
    assert url == ("https://bbb.example.org/bigbluebutton/api/create?name=Test+Meeting&meetingID=abc123"
                   "&attendeePW=111222&moderatorPW=333444&checksum=1fcbb0c4fc1f039f73aa6d697d2db9ba7f803f17")
    assert client.signed_url("getMeetings").endswith("getMeetings?checksum=" + checksum("getMeetings", "", SECRET))


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha384", "sha512"])
def test_fake_accepts_every_algorithm(bbb_world, bbb_fleet, algorithm):
    boot(bbb_world, 1)
    assert BBBClient(bbb_fleet.url_for(HOST), SECRET, algorithm=algorithm).get_meetings() == []


def test_get_meetings_single_meeting_with_counts_and_ms_create_time(bbb_world, bbb_fleet):
    boot(bbb_world, 1)
    created = 1_700_000_000.25
    add_meeting(bbb_world, 1, "m1", 5, moderators=2, listeners=1, voice=3, video=1, recording=True,
                create_time=created)
    [m] = BBBClient(bbb_fleet.url_for(HOST), SECRET).get_meetings()
    assert (m.meeting_id, m.internal_meeting_id) == ("m1", "int-m1")
    assert m.create_time == pytest.approx(created, abs=0.001)
    assert (m.participant_count, m.moderator_count, m.listener_count, m.voice_participant_count,
            m.video_count) == (5, 2, 1, 3, 1)
    assert m.recording and not m.is_breakout and m.moderator_pw == "mp"
    assert "mp" not in repr(m)


def test_get_meetings_many_with_empty_attendees_and_breakouts(bbb_world, bbb_fleet):
    boot(bbb_world, 2)
    add_meeting(bbb_world, 2, "empty", 0, moderators=0)
    add_meeting(bbb_world, 2, "parent", 4)
    add_meeting(bbb_world, 2, "room1", 2, is_breakout=True, parent_id="parent")
    add_meeting(bbb_world, 2, "room2", 1, is_breakout=True, parent_id="parent")
    meetings = {m.meeting_id: m for m in BBBClient(bbb_fleet.url_for("127.0.1.2"), SECRET).get_meetings()}
    assert set(meetings) == {"empty", "parent", "room1", "room2"}
    assert meetings["empty"].participant_count == 0
    assert [k for k, m in sorted(meetings.items()) if m.is_breakout] == ["room1", "room2"]


def test_no_meetings_is_an_empty_list(bbb_world, bbb_fleet):
    boot(bbb_world, 1)
    assert BBBClient(bbb_fleet.url_for(HOST), SECRET).get_meetings() == []


def _recording(world, slot, rid, stage, end_time):
    with world.lock:
        world.bbb_hosts[world.domain(slot)].recordings[rid] = FakeRecording(rid, "m-" + rid, stage, end_time - 600,
                                                                            end_time, None)


def test_get_recordings_by_state_and_no_recordings(bbb_world, bbb_fleet):
    boot(bbb_world, 1)
    client = BBBClient(bbb_fleet.url_for(HOST), SECRET)
    assert client.get_recordings(["processing", "processed"]) == []
    _recording(bbb_world, 1, "r-proc", "processing", 1_700_000_000.5)
    _recording(bbb_world, 1, "r-pub", "published", 1_700_000_100)
    _recording(bbb_world, 1, "r-arch", "archived", 1_700_000_200)
    [proc] = client.get_recordings(["processing", "processed"])
    assert (proc.record_id, proc.meeting_id, proc.state) == ("r-proc", "m-r-proc", "processing")
    assert proc.end_time == pytest.approx(1_700_000_000.5) and proc.start_time == pytest.approx(1_699_999_400.5)
    assert [r.record_id for r in client.get_recordings(["published"])] == ["r-pub"]
    assert {r.state for r in client.get_recordings(["any"])} == {"processing", "published"}


def test_end_meeting_ends_it_and_its_breakout_rooms(bbb_world, bbb_fleet):
    boot(bbb_world, 1)
    add_meeting(bbb_world, 1, "parent", 3)
    add_meeting(bbb_world, 1, "room", 1, is_breakout=True, parent_id="parent")
    client = BBBClient(bbb_fleet.url_for(HOST), SECRET)
    client.end_meeting("parent", "mp")
    assert client.get_meetings() == []
    assert [(h, m.meeting_id) for h, m, _, _ in bbb_world.ended_meetings] == [(HOST, "parent")]


def test_end_meeting_failures_carry_the_message_key(bbb_world, bbb_fleet):
    boot(bbb_world, 1)
    add_meeting(bbb_world, 1, "m & é", 1)
    client = BBBClient(bbb_fleet.url_for(HOST), SECRET)
    with pytest.raises(APIError) as err:
        client.end_meeting("m & é", "wrong")
    assert err.value.key == "invalidPassword" and err.value.target == HOST
    with pytest.raises(APIError) as err:
        client.end_meeting("nope")
    assert err.value.key == "notFound" and err.value.kind == "api"
    client.end_meeting("m & é")  # BBB 3 needs no password; the odd ID proves URL encoding + checksum agree
    assert client.get_meetings() == []


def _assert_no_secret(exc: Exception, secret: str = SECRET):
    text = str(exc) + repr(exc)
    assert secret not in text and "checksum=" not in text


def test_wrong_secret_is_an_auth_error_that_names_the_host_not_the_secret(bbb_world, bbb_fleet):
    boot(bbb_world, 1)
    bad = "not-the-secret-1234"
    client = BBBClient(bbb_fleet.url_for(HOST), bad)
    with pytest.raises(AuthError) as err:
        client.get_meetings()
    assert err.value.service == "bbb" and err.value.target == HOST
    _assert_no_secret(err.value, bad)
    assert bad not in repr(client)


def test_unbooted_vm_resets_the_connection(bbb_world, bbb_fleet):
    with pytest.raises(TransientError) as err:  # no VM at all
        BBBClient(bbb_fleet.url_for(HOST), SECRET).get_meetings()
    assert err.value.target == HOST and type(err.value) is TransientError
    _assert_no_secret(err.value)
    boot(bbb_world, 1, booted_seconds_ago=0.0)  # running, BBB not booted yet
    with pytest.raises(TransientError):
        BBBClient(bbb_fleet.url_for(HOST), SECRET).get_meetings()


def test_connection_refused_is_transient():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransientError, match="refused") as err:
        BBBClient(f"http://127.0.0.1:{port}/bigbluebutton/api", SECRET).get_meetings()
    _assert_no_secret(err.value)


def test_hanging_server_times_out_within_the_timeout(bbb_world, bbb_fleet):
    boot(bbb_world, 1)
    bbb_world.bbb_hosts[HOST].hang = True
    client = BBBClient(bbb_fleet.url_for(HOST), SECRET, timeout_seconds=0.3)
    start = time.monotonic()
    with pytest.raises(TimeoutError_) as err:
        client.get_meetings()
    assert time.monotonic() - start < 2.0
    assert err.value.kind == "timeout" and err.value.target == HOST
    _assert_no_secret(err.value)


def test_garbage_answer_is_a_protocol_error(bbb_world, bbb_fleet):
    boot(bbb_world, 1)
    bbb_world.bbb_hosts[HOST].garbage = True
    with pytest.raises(ProtocolError) as err:
        BBBClient(bbb_fleet.url_for(HOST), SECRET).get_meetings()
    assert err.value.target == HOST


def test_http_error_is_transient(bbb_world, bbb_fleet):
    boot(bbb_world, 1)
    bbb_world.faults["bbb"].error_rate = 1.0
    bbb_world.faults["bbb"].error_status = 503
    with pytest.raises(TransientError, match="HTTP 503"):
        BBBClient(bbb_fleet.url_for(HOST), SECRET).get_meetings()


class _Raw:
    """A tiny HTTP server answering one fixed body: for answers the fake never gives."""

    def __init__(self, body: bytes):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/bigbluebutton/api"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<response><returncode>SUCCESS</returncode><meetings><meeting><meetingID>&lol2;</meetingID>
<createTime>1</createTime></meeting></meetings></response>"""


@pytest.mark.parametrize("body, error, text", [
    (BILLION_LAUGHS, ProtocolError, "DTD"),
    (b"<response><returncode>SUCCESS</returncode></response>", ProtocolError, "no <meetings>"),
    (b"<response><meetings/></response>", ProtocolError, "returncode"),
    (b"<html><body>hi</body></html>", ProtocolError, "<html>"),
    (b"<response><returncode>SUCCESS</returncode><meetings><meeting><createTime>1</createTime>"
     b"</meeting></meetings></response>", ProtocolError, "meetingID"),
    (b"<response><returncode>SUCCESS</returncode><meetings><meeting><meetingID>a</meetingID>"
     b"<createTime>soon</createTime></meeting></meetings></response>", ProtocolError, "createTime"),
    (b"<response><returncode>FAILED</returncode><messageKey>tooBusy</messageKey><message>busy</message>"
     b"</response>", APIError, "tooBusy"),
])
def test_odd_answers_raise_clear_errors(body, error, text):
    with _Raw(body) as url:
        with pytest.raises(error, match=text) as err:
            BBBClient(url, SECRET).get_meetings()
    assert err.value.target == "127.0.0.1"


def test_single_meeting_without_attendees_element_parses():
    with _Raw(b"<response><returncode>SUCCESS</returncode><meetings><meeting><meetingID>a</meetingID>"
              b"<createTime>1500</createTime><participantCount>2</participantCount><attendees />"
              b"</meeting></meetings></response>") as url:
        [m] = BBBClient(url, SECRET).get_meetings()
    assert (m.meeting_id, m.create_time, m.participant_count, m.moderator_count) == ("a", 1.5, 2, 0)


def test_parse_xml_refuses_entities_without_expanding():
    with pytest.raises(ProtocolError):
        parse_xml(BILLION_LAUGHS, "bbb", "h")
