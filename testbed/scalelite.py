"""A fake Scalelite over real sockets: the management API (`/scalelite/api`), the poller, and rake.

It reads and writes `world.scalelite_servers` under `world.lock` and follows Scalelite's own code
(apis.md A1-A3, `servers_controller.rb`, `poll.rake`, `servers.rake`), quirks included:
checksum errors as XML with HTTP 200, 404 for "No servers are configured", BigDecimal multipliers as
JSON strings, the poller panicking servers that go offline, and rake `servers:disable` prompting on stdin.
"""

from __future__ import annotations

import hmac
import json
import logging
import random
import shlex
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from divims.clients.bbb import BBBClient, checksum
from divims.model import Meeting, url_host
from testbed.world import FakeScaleliteServer, World

log = logging.getLogger(__name__)

API_PREFIX = "/scalelite/api/"
LOAD_MIN_USER_COUNT = 15
LOAD_JOIN_BUFFER_SECONDS = 15 * 60
SERVER_HEALTHY_THRESHOLD = 1
SERVER_UNHEALTHY_THRESHOLD = 2
_HASH_BY_LENGTH = {40: "sha1", 64: "sha256", 128: "sha512"}

MeetingsFetcher = Callable[[FakeScaleliteServer], list[Meeting]]


# --- shared state changes (the API and rake both use these) -----------------------------------


def decimal_string(value: Any) -> str:
    """How Rails writes a BigDecimal: "2.0", "1.5" (ActiveSupport's to_s("F"))."""
    text = format(Decimal(str(value)).normalize(), "f")
    return text if "." in text else text + ".0"


def multiplier_of(server: FakeScaleliteServer) -> float:
    return float(server.load_multiplier) if server.load_multiplier not in (None, "") else 1.0


def server_json(server: FakeScaleliteServer) -> dict[str, Any]:
    """`server_to_json` of servers_controller.rb."""
    return {
        "id": server.id, "url": server.url, "secret": server.secret, "tag": server.tag or "",
        "bbb_version": server.bbb_version or "", "state": server.state,
        "load": server.load if server.load is not None else "unavailable",
        # A set multiplier is a BigDecimal, which Rails serialises as a JSON string.
        "load_multiplier": server.load_multiplier if isinstance(server.load_multiplier, str) else 1.0,
        "online": "online" if server.online else "offline",
    }


def _host_of(world: World, server: FakeScaleliteServer) -> str | None:
    host = url_host(server.url)
    return host if host in world.bbb_hosts else None


def panic_server(world: World, server: FakeScaleliteServer, keep_state: bool, why: str = "scalelite-panic") -> int:
    """Ends every meeting of the server's BBB host; disables it unless keep_state. Returns meetings ended."""
    with world.lock:
        ended = 0
        host = _host_of(world, server)
        if host is not None:
            for mid in [m.meeting_id for m in world.bbb_hosts[host].meetings.values() if m.parent_id is None]:
                ended += world.end_meeting(host, mid, why=why)
        if not keep_state:
            set_state(server, "disabled")
        return ended


def set_state(server: FakeScaleliteServer, state: str) -> None:
    """A disabled server leaves Redis' server_load set: its load is unknown until enabled and polled."""
    server.state = state
    if state == "disabled":
        server.load = None


def add_server(world: World, url: str, secret: str, load_multiplier: Any = None, tag: str | None = None) -> FakeScaleliteServer:
    """Server.create!: a new id, disabled, offline, load unknown, multiplier stored as a BigDecimal."""
    try:
        multiplier = Decimal(str(load_multiplier)) if load_multiplier not in (None, "") else Decimal(1)
    except InvalidOperation:
        multiplier = Decimal(0)  # String#to_d of garbage is 0
    if multiplier == 0:
        multiplier = Decimal(1)
    with world.lock:
        server = FakeScaleliteServer(id=str(uuid.uuid4()), url=url, secret=secret,
                                     load_multiplier=decimal_string(multiplier), tag=tag or "")
        world.scalelite_servers[server.id] = server
        return server


def place_meeting(world: World) -> str | None:
    """The BBB host Scalelite would give a new meeting: `Server.find_available`, the lowest score of the
    server_load set (enabled servers whose load is known, online ones), ties by id as Redis orders them.

    Between polls each create adds 1 x load_multiplier; that is read from the world itself (meetings
    created on the host since its last poll), so this stays a pure function of world state."""
    with world.lock:
        best: tuple[float, str, str] | None = None
        for server in world.scalelite_servers.values():
            if server.state != "enabled" or not server.online or server.load is None:
                continue
            host = _host_of(world, server)
            if host is None:
                continue
            created = 0 if server.polled_at is None else sum(
                1 for m in world.bbb_hosts[host].meetings.values()
                if m.parent_id is None and not m.is_breakout and m.create_time > server.polled_at)
            score = server.load + created * multiplier_of(server)
            if best is None or (score, server.id) < best[:2]:
                best = (score, server.id, host)
        return None if best is None else best[2]


def meetings_load(meetings: list[Meeting], now: float, multiplier: float) -> float:
    """poll.rake's load: per non-breakout meeting participantCount + moderatorCount, at least 15 while
    the meeting is younger than 15 min, summed, times the multiplier."""
    total = 0
    for m in meetings:
        if m.is_breakout:
            continue
        attendees = m.participant_count + m.moderator_count
        if now - m.create_time < LOAD_JOIN_BUFFER_SECONDS:
            attendees = max(attendees, LOAD_MIN_USER_COUNT)
        total += attendees
    return total * multiplier


def world_meetings(world: World) -> MeetingsFetcher:
    """A fetcher that reads the world directly (no HTTP): for unit tests of the poller's rules only."""
    def fetch(server: FakeScaleliteServer) -> list[Meeting]:
        with world.lock:
            host = _host_of(world, server)
            if host is None or not world.bbb_reachable(host):
                raise ConnectionError(f"BBB {url_host(server.url)} unreachable")
            h = world.bbb_hosts[host]
            if h.hang or h.garbage:
                raise ConnectionError(f"BBB {host} not answering")
            return [Meeting(m.meeting_id, m.internal_meeting_id, m.create_time, m.participants,
                            m.listeners, m.voice, m.video, m.moderators, m.is_breakout, m.recording)
                    for m in h.meetings.values()]
    return fetch


def bbb_http_meetings(*, bbb_port: int | None, timeout_seconds: float = 5.0,
                      algorithm: str = "sha256") -> MeetingsFetcher:
    """A fetcher that calls the server's BBB `getMeetings` over HTTP with its own secret, as Scalelite
    does. `bbb_port` (when set) replaces the scheme and port of the registered URL: the testbed's fake
    BBB servers all listen over plain HTTP on one port, each on its own 127.0.1.n address."""
    def fetch(server: FakeScaleliteServer) -> list[Meeting]:
        url = server.url
        if bbb_port is not None:
            parts = urlsplit(url)
            url = urlunsplit(("http", f"{parts.hostname}:{bbb_port}", parts.path, "", ""))
        client = BBBClient(url, server.secret, timeout_seconds=timeout_seconds, algorithm=algorithm)
        try:
            return client.get_meetings()
        finally:
            client.close()
    return fetch


# --- the poller ----------------------------------------------------------------------------------


class Poller:
    """poll.rake's `poll:servers`: polls every server (disabled ones too) and applies its rules."""

    def __init__(self, world: World, fetch: MeetingsFetcher, *, threads: int = 5):
        self.world = world
        self.fetch = fetch
        self.threads = threads

    def poll_once(self) -> None:
        with self.world.lock:
            servers = list(self.world.scalelite_servers.values())
        if not servers:
            return
        with ThreadPoolExecutor(max_workers=min(self.threads, len(servers)),
                                thread_name_prefix="fake-scalelite-poll") as pool:
            results = list(pool.map(self._fetch, servers))
        for server, result in zip(servers, results, strict=True):
            self._apply(server, result)

    def _fetch(self, server: FakeScaleliteServer) -> list[Meeting] | Exception:
        try:
            return self.fetch(server)
        except Exception as e:  # Scalelite counts any exception as a failed poll
            return e

    def _apply(self, server: FakeScaleliteServer, result: list[Meeting] | Exception) -> None:
        world = self.world
        with world.lock:
            if world.scalelite_servers.get(server.id) is not server:
                return  # deleted while we polled
            host = url_host(server.url)
            if isinstance(result, Exception):
                server.successes = 0
                if not server.online:
                    return
                server.failures += 1
                if server.failures < SERVER_UNHEALTHY_THRESHOLD:
                    log.info("fake scalelite: server %s (%s) poll failed once: %s", server.id, host, result)
                    return
                log.warning("fake scalelite: server %s (%s) unhealthy: panicking and setting offline",
                            server.id, host)
                panic_server(world, server, keep_state=True)
                server.failures = server.successes = 0
                server.load, server.online = None, False
                server.meetings = server.users = server.largest_meeting = server.videos = 0
                return
            server.failures = 0
            now = world.now()
            load = meetings_load(result, now, multiplier_of(server))
            if not server.online:
                server.successes += 1
                if server.successes < SERVER_HEALTHY_THRESHOLD:
                    return
                server.successes = 0
                server.online = True
                log.info("fake scalelite: server %s (%s) healthy: online", server.id, host)
            server.load = None if server.state == "disabled" else load
            if server.state == "cordoned" and not load:
                set_state(server, "disabled")
                log.info("fake scalelite: cordoned server %s (%s) at load 0: disabled", server.id, host)
            server.meetings = len(result)
            server.users = sum(m.participant_count for m in result)
            server.largest_meeting = max((m.participant_count for m in result), default=0)
            server.videos = sum(m.video_count for m in result)
            server.polled_at = now


# --- the HTTP API --------------------------------------------------------------------------------


def _xml_failed(key: str, message: str) -> str:
    return ("<?xml version=\"1.0\"?>\n<response>\n  <returncode>FAILED</returncode>\n"
            f"  <messageKey>{key}</messageKey>\n  <message>{message}</message>\n</response>\n")


class _Reply(Exception):
    """Raised by a route to send an answer."""

    def __init__(self, status: int, body: Any, content_type: str = "application/json"):
        self.status, self.body, self.content_type = status, body, content_type


class FakeScalelite:
    """Scalelite's management API on a real HTTP server, plus its poller thread.

    `fetch` is how the poller reads a server's meetings; by default BBB `getMeetings` over HTTP
    (`bbb_http_meetings(bbb_port=...)`)."""

    def __init__(self, world: World, secret: str, host: str = "127.0.0.1", port: int = 0, *,
                 poll_interval_seconds: float = 1.0, bbb_port: int | None = None,
                 bbb_timeout_seconds: float = 2.0, fetch: MeetingsFetcher | None = None,
                 algorithms: tuple[str, ...] = ("sha1", "sha256", "sha512"), seed: int = 0):
        self.world = world
        self._secret = secret
        self.algorithms = algorithms
        self.poll_interval_seconds = poll_interval_seconds
        self._fetch = fetch
        self._bbb_port = bbb_port
        self._bbb_timeout = bbb_timeout_seconds
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._threads: list[threading.Thread] = []
        self.poller: Poller | None = None

    def __repr__(self) -> str:
        return f"FakeScalelite({self.url!r})"

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self, *, poller: bool = True) -> FakeScalelite:
        fetch = self._fetch or bbb_http_meetings(bbb_port=self._bbb_port, timeout_seconds=self._bbb_timeout)
        self.poller = Poller(self.world, fetch)
        serve = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                 name="fake-scalelite-http", daemon=True)
        serve.start()
        self._threads.append(serve)
        if poller:
            loop = threading.Thread(target=self._poll_loop, name="fake-scalelite-poller", daemon=True)
            loop.start()
            self._threads.append(loop)
        log.info("fake scalelite listening on %s", self.url)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        for t in self._threads:
            t.join(timeout=10)
        self._threads.clear()

    def __enter__(self) -> FakeScalelite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def poll_once(self) -> None:
        """One poll of every server, now (what `rake poll:all` forces)."""
        if self.poller is None:
            raise RuntimeError("FakeScalelite is not started")
        self.poller.poll_once()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval_seconds):
            try:
                self.poll_once()
            except Exception:  # the testbed must keep polling whatever one round did
                log.exception("fake scalelite: poll round failed")

    # -- request handling
    def _fault(self) -> str | None:
        """Applies world.faults["scalelite"]: returns "drop", "hang", "hang-after", "error" or None."""
        with self.world.lock:
            f = self.world.faults["scalelite"]
            if f.down:
                return "drop"
            latency = f.latency_seconds
            verdict = None
            if f.hang_next > 0:
                f.hang_next -= 1
                verdict = "hang"
            elif f.hang_after_next > 0:
                f.hang_after_next -= 1
                verdict = "hang-after"
            elif f.fail_next > 0:
                f.fail_next -= 1
                verdict = "error"
            elif f.timeout_rate and self._rng.random() < f.timeout_rate:
                verdict = "hang"
            elif f.error_rate and self._rng.random() < f.error_rate:
                verdict = "error"
        if latency:
            self._stop.wait(latency)
        return verdict

    def _verify_checksum(self, action: str, raw_query: str) -> None:
        pairs = [p for p in raw_query.split("&") if p]
        sums = [p.partition("=")[2] for p in pairs if p.startswith("checksum=")]
        rest = "&".join(p for p in pairs if not p.startswith("checksum="))
        if len(sums) != 1:
            raise _Reply(200, _xml_failed("checksumError", "You did not pass the checksum security check"),
                         "application/xml")
        given = sums[0].lower()
        algorithm = _HASH_BY_LENGTH.get(len(given))
        expected = checksum(action, rest, self._secret, algorithm) if algorithm in self.algorithms else ""
        if not expected or not hmac.compare_digest(expected, given):
            raise _Reply(200, _xml_failed("checksumError", "You did not pass the checksum security check"),
                         "application/xml")

    def handle(self, method: str, path: str, headers: Any, body: bytes) -> _Reply:
        """Routes one request the way Scalelite's ServersController does."""
        parts = urlsplit(path)
        if not parts.path.startswith(API_PREFIX):
            return _Reply(404, "<html><body>Not Found</body></html>", "text/html")
        action = parts.path[len(API_PREFIX):]
        routes = {"getServers": "GET", "getServerInfo": "GET", "addServer": "POST",
                  "updateServer": "POST", "deleteServer": "POST", "panicServer": "POST"}
        if routes.get(action) != method:
            return _Reply(404, "<html><body>Not Found</body></html>", "text/html")
        try:
            # ScaleliteApiController: content type first, then the checksum.
            ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if method == "POST" and body and ctype != "application/json":
                raise _Reply(200, _xml_failed("unsupportedContentType",
                                              "POST request Content-Type is missing or unsupported, "
                                              "please use application/json"), "application/xml")
            self._verify_checksum(action, parts.query)
            params: dict[str, Any] = dict(parse_qsl(parts.query))
            params.pop("checksum", None)
            if body:
                try:
                    decoded = json.loads(body)
                except ValueError:
                    raise _Reply(400, {"error": "Invalid JSON in request body"}) from None
                if isinstance(decoded, dict):
                    params.update(decoded)
            return getattr(self, "_" + action)(params)
        except _Reply as reply:
            return reply

    def _find(self, params: dict[str, Any]) -> FakeScaleliteServer:
        server = self.world.scalelite_servers.get(str(params.get("id")))
        if server is None:
            raise _Reply(404, {"error": f"Couldn't find server with id={params.get('id')}"})
        return server

    @staticmethod
    def _require_server(params: dict[str, Any]) -> dict[str, Any]:
        server = params.get("server")
        if not isinstance(server, dict) or not server:
            raise _Reply(400, {"error": "param is missing or the value is empty: server"})
        return server

    def _getServers(self, params: dict[str, Any]) -> _Reply:
        with self.world.lock:
            servers = [server_json(s) for s in self.world.scalelite_servers.values()]
        if not servers:
            return _Reply(404, {"error": "No servers are configured"})
        return _Reply(200, servers)

    def _getServerInfo(self, params: dict[str, Any]) -> _Reply:
        with self.world.lock:
            return _Reply(200, server_json(self._find(params)))

    def _addServer(self, params: dict[str, Any]) -> _Reply:
        spec = self._require_server(params)
        if not spec.get("url") or not spec.get("secret"):
            return _Reply(400, {"error": "Server needs a URL and a secret"})
        server = add_server(self.world, str(spec["url"]), str(spec["secret"]), spec.get("load_multiplier"),
                            spec.get("tag") or None)
        with self.world.lock:
            return _Reply(201, server_json(server))

    def _updateServer(self, params: dict[str, Any]) -> _Reply:
        with self.world.lock:
            server = self._find(params)
            spec = self._require_server(params)
            if "state" in spec:
                states = {"enable": "enabled", "cordon": "cordoned", "disable": "disabled"}
                if spec["state"] not in states:
                    return _Reply(400, {"error": f"Invalid state parameter: {spec['state']}"})
            if "load_multiplier" in spec:
                try:
                    multiplier = Decimal(str(spec["load_multiplier"]))
                except InvalidOperation:
                    multiplier = Decimal(0)
                if multiplier == 0:
                    return _Reply(400, {"error": "Load-multiplier must be a non-zero number"})
                server.load_multiplier = decimal_string(multiplier)
            if "state" in spec:
                set_state(server, states[spec["state"]])
            if "secret" in spec and spec["secret"]:
                server.secret = str(spec["secret"])
            if "tag" in spec:
                server.tag = str(spec["tag"] or "")
            return _Reply(200, server_json(server))

    def _deleteServer(self, params: dict[str, Any]) -> _Reply:
        with self.world.lock:
            server = self._find(params)
            del self.world.scalelite_servers[server.id]  # meetings go on: deleteServer does not end them
            return _Reply(200, {"success": f"Server id={server.id} was destroyed"})

    def _panicServer(self, params: dict[str, Any]) -> _Reply:
        with self.world.lock:
            server = self._find(params)
            # params.permit(:keep_state).presence: JSON false/""/null are blank, any other value is true.
            keep = params.get("keep_state")
            panic_server(self.world, server, keep_state=keep not in (None, False, "", [], {}))
            return _Reply(200, {"success": f"Server id={server.id} has been disabled and the meetings "
                                           "have been destroyed"})

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                # The query string holds a checksum: log only the method and the path.
                log.debug("fake scalelite: %s %s", self.command, urlsplit(self.path).path)

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                verdict = fake._fault()
                if verdict == "drop":
                    self.close_connection = True
                    return
                if verdict == "hang-after":
                    fake.handle(self.command, self.path, self.headers, body)  # done, but never answered
                    verdict = "hang"
                if verdict == "hang":
                    with fake.world.lock:
                        hang = fake.world.faults["scalelite"].hang_seconds
                    fake._stop.wait(hang)
                    self.close_connection = True
                    return
                if verdict == "error":
                    with fake.world.lock:
                        status = fake.world.faults["scalelite"].error_status
                    reply = _Reply(status, "<html><body>fault injected</body></html>", "text/html")
                else:
                    reply = fake.handle(self.command, self.path, self.headers, body)
                data = (json.dumps(reply.body) if not isinstance(reply.body, str) else reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type + "; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = _serve
            do_POST = _serve

        return Handler


# --- rake over SSH -------------------------------------------------------------------------------


def parse_task_string(text: str) -> tuple[str, list[str]]:
    """Rake::Application#parse_task_string: `name[a,b\\,c]` -> ("name", ["a", "b,c"])."""
    if not (text.endswith("]") and "[" in text):
        return text, []
    name, _, rest = text[:-1].partition("[")
    args: list[str] = []
    current: list[str] = []
    chars = iter(rest)
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, ""))
        elif ch == ",":
            args.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if rest:
        args.append("".join(current).strip())
    return name, args


def _arg(args: list[str], i: int) -> str | None:
    """Rake::TaskArguments: a missing or empty argument is nil."""
    return args[i] if i < len(args) and args[i] != "" else None


def bigdecimal_dump(value: Any) -> str:
    """BigDecimal#_dump as Psych writes it: "18:0.15e1" for 1.5, "18:0.0" for 0."""
    d = Decimal(str(value)).normalize()
    if d == 0:
        return "18:0.0"
    sign, digits, exponent = d.as_tuple()
    mantissa = "".join(map(str, digits)).rstrip("0") or "0"
    return f"18:{'-' if sign else ''}0.{mantissa}e{len(digits) + int(exponent)}"


def _yaml_float(value: float) -> str:
    return repr(float(value))


class RakeHandler:
    """Answers `[sudo [-n]] docker exec [-i] [-t] <container> ./bin/rake <task>...` command lines from world
    state as Scalelite < 1.5.1 would: returns (exit code, stdout, stderr). `disable_calls` records every
    `servers:disable` (divims must never run it)."""

    def __init__(self, world: World, container: str = "scalelite-api"):
        self.world = world
        self.container = container
        self.commands: list[str] = []
        self.disable_calls: list[str] = []

    def __call__(self, command: str) -> tuple[int, str, str]:
        self.commands.append(command)
        try:
            argv = shlex.split(command)
        except ValueError as e:
            return 2, "", f"sh: syntax error: {e}\n"
        if argv[:1] == ["sudo"]:
            argv = [a for a in argv[1:] if a not in ("-n",)] if len(argv) > 1 else []
        if argv[:2] != ["docker", "exec"]:
            return 127, "", f"sh: 1: {argv[0] if argv else ''}: not found\n"
        argv = argv[2:]
        while argv and argv[0].startswith("-"):
            argv = argv[1:]
        if not argv or argv[0] != self.container:
            name = argv[0] if argv else ""
            return 1, "", f"Error response from daemon: No such container: {name}\n"
        if argv[1:2] != ["./bin/rake"]:
            return 127, "", "OCI runtime exec failed: executable file not found in $PATH\n"
        out: list[str] = []
        err: list[str] = []
        for task in argv[2:] or ["default"]:
            code = self._task(task, out, err)
            if code:
                return code, "".join(out), "".join(err)
        return 0, "".join(out), "".join(err)

    def _task(self, task: str, out: list[str], err: list[str]) -> int:
        name, args = parse_task_string(task)
        method = {"servers": self._servers, "servers:yaml": self._yaml, "servers:add": self._add,
                  "servers:remove": self._remove, "servers:enable": self._enable,
                  "servers:cordon": self._cordon, "servers:disable": self._disable,
                  "servers:panic": self._panic}.get(name)
        if method is None:
            err.append(f"rake aborted!\nDon't know how to build task '{name}' "
                       "(See the list of available tasks with `rake --tasks`)\n")
            return 1
        with self.world.lock:
            return method(args, out, err)

    def _find(self, args: list[str], out: list[str]) -> FakeScaleliteServer | None:
        sid = _arg(args, 0)
        server = self.world.scalelite_servers.get(sid or "")
        if server is None:
            out.append(f"ERROR: No server found with id: {sid or ''}\n")  # puts: stdout before 1.5
        return server

    def _servers(self, args: list[str], out: list[str], err: list[str]) -> int:
        servers = list(self.world.scalelite_servers.values())
        if not servers:
            out.append("No servers are configured\n")
        for s in servers:
            load = _yaml_float(s.load) if s.load is not None else "unavailable"
            mult = s.load_multiplier if isinstance(s.load_multiplier, str) else "1.0"
            out.append(f"id: {s.id}\n\turl: {s.url}\n\tsecret: {s.secret}\n\t{s.state}\n\tload: {load}\n"
                       f"\tload multiplier: {mult}\n\t{'online' if s.online else 'offline'}\n")
        return 0

    def _yaml(self, args: list[str], out: list[str], err: list[str]) -> int:
        """ServerSync.dump as Psych writes it before Scalelite 1.6: symbol keys, BigDecimal tags,
        `enabled` always empty, and (operator precedence) `state: enabled` for every state-bearing server."""
        verbose = _arg(args, 0) is not None
        servers = list(self.world.scalelite_servers.values())
        if not servers:
            out.append("---\n:servers: {}\n")
            return 0
        lines = ["---", ":servers:"]
        for s in servers:
            mult = s.load_multiplier if isinstance(s.load_multiplier, str) else 0  # nil.to_d is 0
            lines += [f"  {s.id}:", f"    :url: {s.url}", f"    :secret: {s.secret}",
                      f"    :load_multiplier: !ruby/object:BigDecimal {bigdecimal_dump(mult)}", "    :enabled:"]
            if verbose:
                load = _yaml_float(s.load) if s.load is not None else "-1.0"
                lines += ["    :state: enabled" if s.state else "    :state: disabled",
                          f"    :load: {load}", f"    :online: {'true' if s.online else 'false'}"]
        out.append("\n".join(lines) + "\n")
        return 0

    def _add(self, args: list[str], out: list[str], err: list[str]) -> int:
        url, secret = _arg(args, 0), _arg(args, 1)
        if url is None or secret is None:
            out.append("Error: Please input at least a URL and a secret!\n")
            return 1
        if not url.startswith(("http://", "https://")):
            out.append("Error: Server URL must start with http:// or https://\n")
            return 1
        server = add_server(self.world, url, secret, _arg(args, 2), _arg(args, 3))
        out.append(f"OK\nid: {server.id}\n")
        return 0

    def _remove(self, args: list[str], out: list[str], err: list[str]) -> int:
        server = self._find(args, out)
        if server is None:
            return 1
        del self.world.scalelite_servers[server.id]
        out.append("OK\n")
        return 0

    def _enable(self, args: list[str], out: list[str], err: list[str]) -> int:
        server = self._find(args, out)
        if server is None:
            return 1
        set_state(server, "enabled")
        out.append("OK\n")
        return 0

    def _cordon(self, args: list[str], out: list[str], err: list[str]) -> int:
        server = self._find(args, out)
        if server is None:
            return 1
        set_state(server, "cordoned")
        out.append("OK\n")
        return 0

    def _disable(self, args: list[str], out: list[str], err: list[str]) -> int:
        self.disable_calls.append(_arg(args, 0) or "")
        server = self._find(args, out)
        if server is None:
            return 1
        if (server.load or 0) > 0:
            # It asks on stdin; over a non-interactive exec, $stdin.gets is nil and rake dies.
            out.append("WARNING: You are trying to disable a server with active load. You should use the "
                       "cordon option if\n          you do not want to clear all the meetings\n"
                       "If you still wish to continue please enter `yes`\n")
            err.append("rake aborted!\nNoMethodError: undefined method `chomp' for nil:NilClass\n")
            return 1
        set_state(server, "disabled")
        out.append("OK\n")
        return 0

    def _panic(self, args: list[str], out: list[str], err: list[str]) -> int:
        server = self._find(args, out)
        if server is None:
            return 1
        # Rake passes strings, and every Ruby string is true: "false" keeps the state too.
        keep_state = _arg(args, 1) is not None
        host = _host_of(self.world, server)
        if host is not None:
            for m in self.world.bbb_hosts[host].meetings.values():
                if m.parent_id is None:
                    out.append(f"Clearing Meeting id={m.meeting_id}\n")
        panic_server(self.world, server, keep_state=keep_state)
        out.append("OK\n")
        return 0


def rake_handler(world: World, container: str = "scalelite-api") -> RakeHandler:
    """The rake command-line handler for the fake SSH server (testbed/sshd.py)."""
    return RakeHandler(world, container)
