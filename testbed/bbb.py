"""Fake BBB servers: the BBB API over real HTTP, one listening socket per slot address.

Slot n's server listens on `world.domain(n)` (127.0.1.n) and every server shares one port, so the
`server` label is unique per server exactly as in production. All servers run in ONE asyncio event
loop on a background thread: a hand-written HTTP/1.1 keep-alive loop is enough for the few GET calls
the BBB API has, and it lets hundreds of servers answer slowly at once without a thread each.

The answers follow docs.bigbluebutton.org/development/api: checksum verified with the image's secret
(`world.bbb_secret`, sha1/sha256/sha384/sha512 chosen by the checksum's length), checksum errors as
FAILED XML with HTTP 200, noMeetings / noRecordings, breakout parent/child fields.
While the slot's VM is not running and booted the connection is reset (RST), like a host whose
nginx is not up yet. Faults: `world.faults["bbb"]` for every server, and per host `hang`, `garbage`
and `faults` (latency, error rate, timeouts, down).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

from testbed.world import FakeBBBHost, FakeMeeting, FakeRecording, World

log = logging.getLogger(__name__)

API_PATH = "/bigbluebutton/api"
_ALGORITHM_BY_LENGTH = {40: "sha1", 64: "sha256", 96: "sha384", 128: "sha512"}
# Which pipeline stage getRecordings shows under which state. Stages before processing are not
# visible through the API (bbb-web reads only recording/process/); transferred ones are Scalelite's.
_STATE_OF_STAGE = {"processing": "processing", "published": "published"}
_DEFAULT_STATES = ("published", "unpublished")


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "text/xml;charset=utf-8"
    location: str | None = None


def _x(value: object) -> str:
    return escape(str(value))


def _b(value: bool) -> str:
    return "true" if value else "false"


def _ms(epoch_seconds: float) -> int:
    return int(epoch_seconds * 1000)


def _date(epoch_seconds: float) -> str:
    return time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(epoch_seconds))


def _voice_bridge(meeting_id: str) -> int:
    return 70000 + int(hashlib.sha1(meeting_id.encode()).hexdigest()[:6], 16) % 30000


def _response(inner: str) -> bytes:
    return f"<response>\n<returncode>SUCCESS</returncode>\n{inner}</response>\n".encode()


def _failed(key: str, message: str) -> Answer:
    body = (f"<response>\n<returncode>FAILED</returncode>\n<messageKey>{_x(key)}</messageKey>\n"
            f"<message>{_x(message)}</message>\n</response>\n")
    return Answer(200, body.encode())


def attendees_xml(m: FakeMeeting) -> str:
    """Attendees made up from the meeting's counts: moderators first, then listeners, voice, video."""
    if m.participants <= 0:
        return "<attendees />\n"
    rows = []
    for i in range(m.participants):
        listening = m.moderators <= i < m.moderators + m.listeners
        rows.append(
            f"<attendee>\n<userID>w_{i:06d}</userID>\n<fullName>User {i}</fullName>\n"
            f"<role>{'MODERATOR' if i < m.moderators else 'VIEWER'}</role>\n"
            f"<isPresenter>{_b(i == 0)}</isPresenter>\n<isListeningOnly>{_b(listening)}</isListeningOnly>\n"
            f"<hasJoinedVoice>{_b(i < m.voice)}</hasJoinedVoice>\n<hasVideo>{_b(i < m.video)}</hasVideo>\n"
            f"<clientType>HTML5</clientType>\n</attendee>\n")
    return "<attendees>\n" + "".join(rows) + "</attendees>\n"


def meeting_fields_xml(host: FakeBBBHost, m: FakeMeeting) -> str:
    """The fields of one meeting, as getMeetings' `<meeting>` and getMeetingInfo's `<response>` hold them."""
    joined = m.participants > 0
    parts = [
        f"<meetingName>{_x(m.name)}</meetingName>\n<meetingID>{_x(m.meeting_id)}</meetingID>\n",
        f"<internalMeetingID>{_x(m.internal_meeting_id)}</internalMeetingID>\n",
        f"<createTime>{_ms(m.create_time)}</createTime>\n<createDate>{_date(m.create_time)}</createDate>\n",
        f"<voiceBridge>{_voice_bridge(m.meeting_id)}</voiceBridge>\n<dialNumber>613-555-1234</dialNumber>\n",
        f"<attendeePW>{_x(m.attendee_pw)}</attendeePW>\n<moderatorPW>{_x(m.moderator_pw)}</moderatorPW>\n",
        f"<running>{_b(joined)}</running>\n<duration>0</duration>\n<hasUserJoined>{_b(joined)}</hasUserJoined>\n",
        f"<recording>{_b(m.recording)}</recording>\n<hasBeenForciblyEnded>false</hasBeenForciblyEnded>\n",
        f"<startTime>{_ms(m.create_time) + 50}</startTime>\n<endTime>0</endTime>\n",
        f"<participantCount>{m.participants}</participantCount>\n<listenerCount>{m.listeners}</listenerCount>\n",
        f"<voiceParticipantCount>{m.voice}</voiceParticipantCount>\n<videoCount>{m.video}</videoCount>\n",
        f"<maxUsers>0</maxUsers>\n<moderatorCount>{m.moderators}</moderatorCount>\n",
        attendees_xml(m),
        "<metadata>\n<bbb-origin>divims-testbed</bbb-origin>\n</metadata>\n",
        f"<isBreakout>{_b(m.is_breakout)}</isBreakout>\n",
    ]
    if m.is_breakout and m.parent_id:
        parent = host.meetings.get(m.parent_id)
        children = sorted(c.meeting_id for c in host.meetings.values() if c.parent_id == m.parent_id)
        sequence = children.index(m.meeting_id) + 1 if m.meeting_id in children else 1
        parent_internal = parent.internal_meeting_id if parent else m.parent_id
        parts.append(f"<breakout>\n<parentMeetingID>{_x(parent_internal)}</parentMeetingID>\n"
                     f"<sequence>{sequence}</sequence>\n<freeJoin>false</freeJoin>\n</breakout>\n")
    else:
        rooms = [c for c in host.meetings.values() if c.parent_id == m.meeting_id]
        if rooms:
            parts.append("<breakoutRooms>\n" + "".join(
                f"<breakout>{_x(c.internal_meeting_id)}</breakout>\n" for c in rooms) + "</breakoutRooms>\n")
    return "".join(parts)


def recording_xml(host: FakeBBBHost, rec: FakeRecording, state: str) -> str:
    published = state == "published"
    length = max(0, round((rec.end_time - rec.start_time) / 60))
    playback = ""
    if published:
        playback = (f"<playback>\n<format>\n<type>presentation</type>\n"
                    f"<url>https://{_x(host.host)}/playback/presentation/2.3/{_x(rec.record_id)}</url>\n"
                    f"<processingTime>{_ms(5)}</processingTime>\n<length>{length}</length>\n"
                    f"</format>\n</playback>\n")
    else:
        playback = "<playback />\n"
    return (f"<recording>\n<recordID>{_x(rec.record_id)}</recordID>\n<meetingID>{_x(rec.meeting_id)}</meetingID>\n"
            f"<internalMeetingID>{_x(rec.record_id)}</internalMeetingID>\n<name>{_x(rec.meeting_id)}</name>\n"
            f"<isBreakout>false</isBreakout>\n<published>{_b(published)}</published>\n<state>{state}</state>\n"
            f"<startTime>{_ms(rec.start_time)}</startTime>\n<endTime>{_ms(rec.end_time)}</endTime>\n"
            f"<participants>1</participants>\n<metadata />\n{playback}</recording>\n")


class BBBApi:
    """The API of one fake BBB host (pure: request in, Answer out), under `world.lock`."""

    def __init__(self, world: World, host: str):
        self.world = world
        self.host = host

    def handle(self, method: str, target: str) -> Answer:
        parts = urlsplit(target)
        path = parts.path.rstrip("/")
        if path == API_PATH:
            return Answer(200, _response("<version>2.0</version>\n<apiVersion>2.0</apiVersion>\n"
                                         "<bbbVersion>2.7.10</bbbVersion>\n"))
        if not path.startswith(API_PATH + "/") or method not in ("GET", "POST"):
            return Answer(404, b"<html><body>404 Not Found</body></html>", "text/html")
        call = path[len(API_PATH) + 1:]
        if not self._checksum_ok(call, parts.query):
            return _failed("checksumError", "You did not pass the checksum security check")
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        params.pop("checksum", None)
        handler: Callable[[dict[str, str]], Answer] | None = {
            "getMeetings": self.get_meetings, "getMeetingInfo": self.get_meeting_info,
            "isMeetingRunning": self.is_meeting_running, "getRecordings": self.get_recordings,
            "end": self.end, "create": self.create, "join": self.join,
        }.get(call)
        if handler is None:
            return _failed("unsupportedRequest", "This request is not supported.")
        with self.world.lock:
            return handler(params)

    def _checksum_ok(self, call: str, query: str) -> bool:
        pieces = query.split("&") if query else []
        given = [p[len("checksum="):] for p in pieces if p.startswith("checksum=")]
        if len(given) != 1:
            return False
        algorithm = _ALGORITHM_BY_LENGTH.get(len(given[0]))
        if algorithm is None:
            return False
        rest = "&".join(p for p in pieces if not p.startswith("checksum="))
        expected = hashlib.new(algorithm, (call + rest + self.world.bbb_secret).encode()).hexdigest()
        return expected == given[0].lower()

    @property
    def _h(self) -> FakeBBBHost:
        return self.world.bbb_hosts[self.host]

    def get_meetings(self, params: dict[str, str]) -> Answer:
        h = self._h
        if not h.meetings:
            return Answer(200, _response("<meetings/>\n<messageKey>noMeetings</messageKey>\n"
                                         "<message>no meetings were found on this server</message>\n"))
        inner = "".join(f"<meeting>\n{meeting_fields_xml(h, m)}</meeting>\n" for m in h.meetings.values())
        return Answer(200, _response(f"<meetings>\n{inner}</meetings>\n"))

    def _meeting(self, params: dict[str, str]) -> FakeMeeting | Answer:
        mid = params.get("meetingID", "")
        if not mid:
            return _failed("missingParamMeetingID", "You must specify a meeting ID for the meeting.")
        m = self._h.meetings.get(mid)
        if m is None:
            return _failed("notFound", "We could not find a meeting with that meeting ID - "
                                       "perhaps the meeting is not yet running?")
        return m

    def get_meeting_info(self, params: dict[str, str]) -> Answer:
        m = self._meeting(params)
        if isinstance(m, Answer):
            return m
        return Answer(200, _response(meeting_fields_xml(self._h, m)))

    def is_meeting_running(self, params: dict[str, str]) -> Answer:
        m = self._h.meetings.get(params.get("meetingID", ""))
        running = m is not None and m.participants > 0
        return Answer(200, _response(f"<running>{_b(running)}</running>\n"))

    def get_recordings(self, params: dict[str, str]) -> Answer:
        states_text = params.get("state", "")
        states = set(s.strip() for s in states_text.split(",") if s.strip()) or set(_DEFAULT_STATES)
        meeting_ids = set(filter(None, params.get("meetingID", "").split(",")))
        record_ids = set(filter(None, params.get("recordID", "").split(",")))
        h = self._h
        rows = []
        for rec in h.recordings.values():
            state = _STATE_OF_STAGE.get(rec.stage)
            if state is None or ("any" not in states and state not in states):
                continue
            if meeting_ids and rec.meeting_id not in meeting_ids:
                continue
            if record_ids and rec.record_id not in record_ids:
                continue
            rows.append(recording_xml(h, rec, state))
        if not rows:
            return Answer(200, _response("<recordings/>\n<messageKey>noRecordings</messageKey>\n"
                                         "<message>There are no recordings for the meeting(s).</message>\n"))
        return Answer(200, _response("<recordings>\n" + "".join(rows) + "</recordings>\n"))

    def end(self, params: dict[str, str]) -> Answer:
        m = self._meeting(params)
        if isinstance(m, Answer):
            return m
        password = params.get("password")
        if password is not None and password != m.moderator_pw:
            return _failed("invalidPassword", "You must supply the moderator password for this call.")
        self.world.end_meeting(self.host, m.meeting_id, "api-end")
        return Answer(200, _response(
            "<messageKey>sentEndMeetingRequest</messageKey>\n<message>A request to end the meeting was sent."
            " Please wait a few seconds, and then use the getMeetingInfo or isMeetingRunning API calls to verify"
            " that it was ended.</message>\n"))

    def create(self, params: dict[str, str]) -> Answer:
        mid = params.get("meetingID", "")
        if not mid:
            return _failed("missingParamMeetingID", "You must specify a meeting ID for the meeting.")
        h = self._h
        m = h.meetings.get(mid)
        warning = ""
        if m is None:
            now = self.world.now()
            parent = params.get("parentMeetingID") or None
            m = FakeMeeting(
                meeting_id=mid, internal_meeting_id=f"{hashlib.sha1(mid.encode()).hexdigest()}-{_ms(now)}",
                name=params.get("name", mid), create_time=now, participants=0, moderators=0,
                is_breakout=params.get("isBreakout") == "true" or parent is not None, parent_id=parent,
                recording=params.get("record") == "true",
                moderator_pw=params.get("moderatorPW", "mp"), attendee_pw=params.get("attendeePW", "ap"))
            h.meetings[mid] = m
        else:
            warning = ("<messageKey>duplicateWarning</messageKey>\n<message>This conference was already in "
                       "existence and may currently be in progress.</message>\n")
        return Answer(200, _response(
            f"<meetingID>{_x(m.meeting_id)}</meetingID>\n<internalMeetingID>{_x(m.internal_meeting_id)}"
            f"</internalMeetingID>\n<parentMeetingID>{_x(m.parent_id or 'bbb-none')}</parentMeetingID>\n"
            f"<attendeePW>{_x(m.attendee_pw)}</attendeePW>\n<moderatorPW>{_x(m.moderator_pw)}</moderatorPW>\n"
            f"<createTime>{_ms(m.create_time)}</createTime>\n<voiceBridge>{_voice_bridge(mid)}</voiceBridge>\n"
            f"<dialNumber>613-555-1234</dialNumber>\n<createDate>{_date(m.create_time)}</createDate>\n"
            f"<hasUserJoined>{_b(m.participants > 0)}</hasUserJoined>\n<duration>0</duration>\n"
            f"<hasBeenForciblyEnded>false</hasBeenForciblyEnded>\n{warning}"))

    def join(self, params: dict[str, str]) -> Answer:
        m = self._h.meetings.get(params.get("meetingID", ""))
        if m is None:
            return _failed("invalidMeetingIdentifier", "The meeting ID that you supplied did not match any "
                                                       "existing meetings")
        password, role = params.get("password"), params.get("role", "").upper()
        if role == "MODERATOR" or (password is not None and password == m.moderator_pw):
            moderator = True
        elif role == "VIEWER" or (password is not None and password == m.attendee_pw):
            moderator = False
        else:
            return _failed("invalidPassword", "The password you submitted is not valid.")
        m.participants += 1
        m.moderators += int(moderator)
        token = hashlib.sha1(f"{m.internal_meeting_id}-{m.participants}".encode()).hexdigest()[:16]
        url = f"http://{self.host}/html5client/join?sessionToken={token}"
        if params.get("redirect", "true") != "false":
            return Answer(302, b"", "text/html", location=url)
        return Answer(200, _response(
            f"<messageKey>successfullyJoined</messageKey>\n<message>You have joined successfully.</message>\n"
            f"<meeting_id>{_x(m.internal_meeting_id)}</meeting_id>\n<user_id>w_{m.participants:06d}</user_id>\n"
            f"<auth_token>{token}</auth_token>\n<session_token>{token}</session_token>\n<url>{_x(url)}</url>\n"))


_REASONS = {200: "OK", 302: "Found", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


class FakeBBBFleet:
    """The fake BBB servers of `world` (every host, or `hosts`), all on `port` (0: pick a free one)."""

    def __init__(self, world: World, port: int = 0, hosts: list[str] | None = None, *, seed: int = 0):
        self.world = world
        self.hosts = list(hosts) if hosts is not None else list(world.bbb_hosts)
        unknown = [h for h in self.hosts if h not in world.bbb_hosts]
        if unknown:
            raise ValueError(f"hosts not in the world: {', '.join(unknown[:5])}")
        self._port = port
        self._random = random.Random(seed)
        self._apis = {h: BBBApi(world, h) for h in self.hosts}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()
        self.requests = 0  # answered or not: for tests and benchmarks

    @property
    def port(self) -> int:
        return self._port

    def url_for(self, host: str) -> str:
        return f"http://{host}:{self._port}{API_PATH}"

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeBBBFleet:
        """Binds every server and returns once all listen; raises OSError if an address can't be bound."""
        if self._thread is not None:
            raise RuntimeError("fleet already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._bind_all())
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                failure.append(exc)
                ready.set()
                self._loop.run_until_complete(self._close_all())
                self._loop.close()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._close_all())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fake-bbb-fleet", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        log.info("fake bbb: %d servers listening on port %d", len(self.hosts), self._port)
        return self

    def stop(self) -> None:
        """Closes every listener and connection and joins the loop thread."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> FakeBBBFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _bind_all(self) -> None:
        for host in self.hosts:
            server = await asyncio.start_server(
                lambda r, w, host=host: self._track(self._serve(host, r, w)),
                host, self._port, reuse_address=True, backlog=256)
            self._servers.append(server)
            if self._port == 0:
                self._port = server.sockets[0].getsockname()[1]

    async def _close_all(self) -> None:
        for server in self._servers:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    def _track(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- one connection ------------------------------------------------------------------------
    def _gate(self, host: str) -> tuple[str, float, float]:
        """What to do with a request now: (`reset`|`hang`|`error`|`garbage`|`answer`, latency, hang seconds)."""
        w = self.world
        w.advance()
        with w.lock:
            h = w.bbb_hosts[host]
            fleet, own = w.faults["bbb"], h.faults
            if fleet.down or own.down or not w.bbb_reachable(host):
                return "reset", 0.0, 0.0
            latency = fleet.latency_seconds + own.latency_seconds
            if h.hang:
                return "hang", latency, float("inf")
            for faults in (fleet, own):
                if faults.timeout_rate and self._random.random() < faults.timeout_rate:
                    return "hang", latency, faults.hang_seconds
                if faults.error_rate and self._random.random() < faults.error_rate:
                    return f"error:{faults.error_status}", latency, 0.0
            if h.garbage:
                return "garbage", latency, 0.0
            return "answer", latency, 0.0

    async def _serve(self, host: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self._gate(host)[0] == "reset":
                _reset(writer)
                return
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, target, version = lines[0].split(" ", 2)
                except ValueError:
                    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0") or 0)
                if length:
                    await reader.readexactly(length)
                self.requests += 1
                action, latency, hang_seconds = self._gate(host)
                if action == "reset":
                    _reset(writer)
                    return
                if latency:
                    await asyncio.sleep(latency)
                if action == "hang":
                    await asyncio.sleep(hang_seconds if hang_seconds != float("inf") else 1e9)
                    writer.transport.abort()
                    return
                if action.startswith("error:"):
                    status = int(action.split(":", 1)[1])
                    answer = Answer(status, f"<html><body>{status}</body></html>".encode(), "text/html")
                elif action == "garbage":
                    answer = Answer(200, b"<html><body>502 Bad Gateway</body>", "text/html")
                else:
                    answer = self._apis[host].handle(method, target)
                keep_alive = (headers.get("connection", "").lower() != "close" and version == "HTTP/1.1")
                writer.write(_http_bytes(answer, keep_alive))
                await writer.drain()
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()


def _http_bytes(answer: Answer, keep_alive: bool) -> bytes:
    head = [f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, 'Error')}",
            f"Content-Type: {answer.content_type}", f"Content-Length: {len(answer.body)}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}"]
    if answer.location:
        head.append(f"Location: {answer.location}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + answer.body


def _reset(writer: asyncio.StreamWriter) -> None:
    """Closes with RST (SO_LINGER 0), as a host whose port is not served yet answers."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()
