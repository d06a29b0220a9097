"""Scalelite clients: the HTTP management API (Scalelite >= 1.5.1) and rake over SSH (older releases).

Both satisfy `divims.clients.protocols.Scalelite`; `make_scalelite(pool_cfg)` picks one from the config.
Wire details (checksum, quirks) follow the Scalelite source as described in apis.md A1-A3.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import requests
import yaml

from divims.clients.bbb import ALGORITHMS
from divims.clients.bbb import checksum as bbb_checksum
from divims.clients.ssh import SSHClient, shows_ssh_settings
from divims.errors import (
    APIError,
    AuthError,
    ClientError,
    NotFoundError,
    NotSupportedError,
    ProtocolError,
    TimeoutError_,
    TransientError,
)
from divims.model import ScaleliteServer, ScaleliteState, url_host
from divims.retry import retry_call

log = logging.getLogger(__name__)

SERVICE = "scalelite"


def api_checksum(action: str, query: str, secret: str, algorithm: str = "sha256") -> str:
    """Scalelite's API checksum: hex(SHA(action + query string without checksum + secret)), the BBB
    scheme (the JSON body is not part of it, api_helper.rb)."""
    return bbb_checksum(action, query, secret, algorithm)


# --- parsing the `server` object (shared by both transports) ------------------------------------


def _parse_multiplier(value: Any, target: str) -> float:
    """`load_multiplier` is a number when unset and a string when set (Rails serialises BigDecimal as
    a JSON string); rake YAML may give `!ruby/object:BigDecimal 18:0.2e1` (handled by the loader)."""
    if value is None or value == "":
        return 1.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ProtocolError(SERVICE, target, f"load_multiplier is not a number: {value!r}") from None
    return number if number > 0 else 1.0  # Scalelite itself turns 0 into 1


def _parse_load(value: Any, target: str) -> float | None:
    """A number, or "unavailable" (API), or -1.0 (rake YAML) when Scalelite has no load for it."""
    if value is None or value == "unavailable" or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ProtocolError(SERVICE, target, f"load is not a number: {value!r}") from None
    return None if number < 0 else number


def _parse_online(value: Any, target: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("online", "offline"):
        return value == "online"
    raise ProtocolError(SERVICE, target, f"online is neither 'online' nor 'offline': {value!r}")


def _parse_state(value: Any, target: str) -> ScaleliteState:
    try:
        return ScaleliteState(str(value))
    except ValueError:
        raise ProtocolError(SERVICE, target, f"unknown server state {value!r}") from None


def parse_server(obj: Any, target: str) -> ScaleliteServer:
    """One `server` JSON object of the API (`{id, url, secret, tag, bbb_version, state, load,
    load_multiplier, online}`) as a `ScaleliteServer`; ProtocolError when it is not one."""
    if not isinstance(obj, Mapping) or not obj.get("id") or not obj.get("url"):
        raise ProtocolError(SERVICE, target, "server entry without id or url")
    sid = str(obj["id"])
    return ScaleliteServer(
        id=sid,
        url=str(obj["url"]),
        secret=str(obj.get("secret") or ""),
        state=_parse_state(obj.get("state"), sid),
        online=_parse_online(obj.get("online"), sid),
        load=_parse_load(obj.get("load"), sid),
        load_multiplier=_parse_multiplier(obj.get("load_multiplier"), sid),
        tag=str(obj.get("tag") or ""),
        bbb_version=str(obj.get("bbb_version") or ""),
    )


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    """Removes secrets from text that came from the remote side before it goes into an error."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


# --- the HTTP API ------------------------------------------------------------------------------


class ScaleliteHTTP:
    """Scalelite's management API under `<base_url>/scalelite/api` (Scalelite >= 1.5.1).

    Every call has `timeout_seconds`. Idempotent GETs are retried on transient errors; POSTs are not
    (a panic or an add that timed out may have happened)."""

    def __init__(self, base_url: str, secret: str, *, timeout_seconds: float = 10,
                 verify_tls: bool = True, algorithm: str = "sha256",
                 session: requests.Session | None = None, get_attempts: int = 3,
                 retry_sleep: Callable[[float], None] | None = None):
        if not secret:
            raise ValueError("Scalelite secret must not be empty")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown checksum algorithm {algorithm!r}")
        self.base_url = base_url.rstrip("/")
        self.api_url = self.base_url + "/scalelite/api"
        self.host = url_host(self.base_url) or self.base_url
        self._secret = secret
        self.timeout_seconds = timeout_seconds
        self.verify_tls = verify_tls
        self.algorithm = algorithm
        self._session = session or requests.Session()
        self._get_attempts = max(1, get_attempts)
        self._retry_sleep = retry_sleep

    def __repr__(self) -> str:
        return f"ScaleliteHTTP({self.base_url!r})"

    # -- transport
    def _call(self, method: str, action: str, target: str, params: Mapping[str, str] | None = None,
              body: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        """One request; returns (status, decoded JSON) for a JSON answer below 500 (or raises)."""
        query = urlencode(dict(params or {}))
        checksum = api_checksum(action, query, self._secret, self.algorithm)
        url = f"{self.api_url}/{action}?{query + '&' if query else ''}checksum={checksum}"
        kwargs: dict[str, Any] = {"timeout": self.timeout_seconds, "verify": self.verify_tls}
        if body is not None:
            kwargs["data"] = json.dumps(body)
            kwargs["headers"] = {"Content-Type": "application/json", "Accept": "application/json"}
        try:
            resp = self._session.request(method, url, **kwargs)
        except requests.Timeout:
            raise TimeoutError_(SERVICE, target,
                                f"{action} timed out after {self.timeout_seconds:g}s") from None
        except requests.RequestException as e:
            # The exception text holds the URL with the checksum: keep only its class name.
            raise TransientError(SERVICE, target, f"{action} failed: {type(e).__name__}") from None
        status = resp.status_code
        text = resp.text or ""
        if status == 429 or status >= 500:
            raise TransientError(SERVICE, target, f"{action} answered HTTP {status}")
        if text.lstrip().startswith("<"):
            self._raise_xml(action, target, status, text)
        try:
            data = resp.json()
        except ValueError:
            raise ProtocolError(SERVICE, target, f"{action} answered HTTP {status} with non-JSON") from None
        return status, data

    def _raise_xml(self, action: str, target: str, status: int, text: str) -> None:
        """Checksum and content-type errors come back as BBB-style XML, with HTTP 200."""
        try:
            root = ET.fromstring(text)
        except ET.ParseError:
            raise ProtocolError(SERVICE, target, f"{action} answered HTTP {status} with unparsable XML") from None
        code = (root.findtext("returncode") or "").strip()
        key = (root.findtext("messageKey") or "").strip()
        message = _scrub((root.findtext("message") or "").strip(), (self._secret,))
        if code == "FAILED" and key == "checksumError":
            raise AuthError(SERVICE, target, f"{action}: checksum rejected (wrong Scalelite secret or "
                                             f"checksum algorithm {self.algorithm})")
        if code == "FAILED":
            raise APIError(SERVICE, target, f"{action}: {message or 'FAILED'}", key)
        raise ProtocolError(SERVICE, target, f"{action} answered XML instead of JSON")

    def _error(self, action: str, target: str, status: int, data: Any) -> ClientError:
        text = data.get("error") if isinstance(data, Mapping) else None
        message = _scrub(str(text or f"HTTP {status}"), (self._secret,))
        if status == 404:
            return NotFoundError(SERVICE, target, f"{action}: {message}")
        if status in (401, 403):
            return AuthError(SERVICE, target, f"{action}: {message}")
        return APIError(SERVICE, target, f"{action}: {message} (HTTP {status})")

    def _get(self, action: str, target: str, params: Mapping[str, str] | None = None) -> tuple[int, Any]:
        def attempt() -> tuple[int, Any]:
            return self._call("GET", action, target, params)

        def on_retry(n: int, error: BaseException, delay: float) -> None:
            log.warning("scalelite %s: %s failed (%s), retry %d in %.1fs", self.host, action, error, n, delay)

        extra = {} if self._retry_sleep is None else {"sleep": self._retry_sleep}
        return retry_call(attempt, attempts=self._get_attempts, base_delay=0.5, max_delay=5.0,
                          deadline_seconds=self.timeout_seconds * self._get_attempts,
                          on_retry=on_retry, **extra)

    def _post(self, action: str, target: str, body: Mapping[str, Any], ok: tuple[int, ...] = (200,)) -> Any:
        status, data = self._call("POST", action, target, body=body)
        if status not in ok:
            raise self._error(action, target, status, data)
        return data

    # -- the protocol
    def get_servers(self) -> list[ScaleliteServer]:
        """Every server Scalelite knows; [] for the 404 "No servers are configured"."""
        status, data = self._get("getServers", self.host)
        if status == 404 and isinstance(data, Mapping) and data.get("error") == "No servers are configured":
            return []
        if status != 200:
            raise self._error("getServers", self.host, status, data)
        if not isinstance(data, list):
            raise ProtocolError(SERVICE, self.host, "getServers did not answer a list")
        return [parse_server(item, self.host) for item in data]

    def get_server(self, server_id: str) -> ScaleliteServer:
        """One server by id (NotFoundError when Scalelite does not know it)."""
        status, data = self._get("getServerInfo", server_id, {"id": server_id})
        if status != 200:
            raise self._error("getServerInfo", server_id, status, data)
        return parse_server(data, server_id)

    def add_server(self, url: str, secret: str, load_multiplier: float | None = None,
                   tag: str | None = None) -> ScaleliteServer:
        """Registers a BBB server; Scalelite answers 201 with it, disabled."""
        target = url_host(url) or url
        server: dict[str, Any] = {"url": url, "secret": secret}
        if load_multiplier is not None:
            server["load_multiplier"] = load_multiplier
        if tag is not None:
            server["tag"] = tag
        status, data = self._call("POST", "addServer", target, body={"server": server})
        if status not in (200, 201):
            error = self._error("addServer", target, status, data)
            raise type(error)(SERVICE, target, _scrub(error.message, (secret,)))
        added = parse_server(data, target)
        log.info("scalelite %s: added server %s (%s)", self.host, added.id, target)
        return added

    def _update_state(self, server_id: str, verb: str) -> None:
        self._post("updateServer", server_id, {"id": server_id, "server": {"state": verb}})
        log.info("scalelite %s: server %s -> %s", self.host, server_id, verb)

    def enable(self, server_id: str) -> None:
        self._update_state(server_id, "enable")

    def cordon(self, server_id: str) -> None:
        """The drain: no new meetings; the poller disables it at load 0."""
        self._update_state(server_id, "cordon")

    def disable(self, server_id: str) -> None:
        """Through the API this does not end meetings."""
        self._update_state(server_id, "disable")

    def panic(self, server_id: str, keep_state: bool = False) -> None:
        """Ends the server's meetings; disables it unless keep_state. keep_state goes at the top level:
        the controller reads `params.permit(:keep_state)`, not the documented `server.keep_state`."""
        self._post("panicServer", server_id, {"id": server_id, "keep_state": bool(keep_state)})
        log.info("scalelite %s: panicked server %s (keep_state=%s)", self.host, server_id, keep_state)

    def delete_server(self, server_id: str) -> None:
        self._post("deleteServer", server_id, {"id": server_id})
        log.info("scalelite %s: deleted server %s", self.host, server_id)


# --- rake over SSH -----------------------------------------------------------------------------


class _RubyYAMLLoader(yaml.SafeLoader):
    """Reads what Psych writes for `servers:yaml`: symbol keys (`:url:`) and BigDecimal scalars."""


def _construct_bigdecimal(loader: yaml.SafeLoader, node: yaml.Node) -> float:
    # BigDecimal#_dump is "<precision>:<value>", e.g. "18:0.15e1" for 1.5.
    text = str(loader.construct_scalar(node))  # type: ignore[arg-type]
    return float(text.rpartition(":")[2])


_RubyYAMLLoader.add_constructor("!ruby/object:BigDecimal", _construct_bigdecimal)


def _unsymbol(value: Any) -> Any:
    """Ruby symbol keys (":url") as plain keys ("url"), recursively."""
    if isinstance(value, dict):
        return {(k[1:] if isinstance(k, str) and k.startswith(":") else k): _unsymbol(v)
                for k, v in value.items()}
    return value


_LISTING_ID = re.compile(r"^id: (\S+)\s*$")


def parse_servers_listing(text: str) -> dict[str, dict[str, str]]:
    """The `rake servers` listing (`id: X` then tab-indented lines) as {id: {state, online, tag, ...}}."""
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        match = _LISTING_ID.match(raw)
        if match:
            current = out.setdefault(match.group(1), {})
            continue
        line = raw.strip()
        if current is None or not raw.startswith("\t") or not line:
            continue
        if line in ("enabled", "cordoned", "disabled"):
            current["state"] = line
        elif line in ("online", "offline"):
            current["online"] = line
        elif ":" in line:
            key, _, value = line.partition(":")
            current[key.strip()] = value.strip()
    return out


def parse_servers_yaml(text: str, target: str) -> dict[str, dict[str, Any]]:
    """`rake servers:yaml[verbose]` as {id: {url, secret, load_multiplier, enabled, state, load, online}},
    in both the pre-1.6 form (symbol keys, BigDecimal tags) and the later one (string keys)."""
    try:
        doc = _unsymbol(yaml.load(text, Loader=_RubyYAMLLoader)) if text.strip() else {}
    except yaml.YAMLError:
        raise ProtocolError(SERVICE, target, "servers:yaml printed unparsable YAML") from None
    servers = (doc or {}).get("servers") if isinstance(doc, dict) else None
    if servers is None:
        return {}
    if not isinstance(servers, dict):
        raise ProtocolError(SERVICE, target, "servers:yaml has no servers mapping")
    return {str(k): (v or {}) for k, v in servers.items()}


def rake_arg(value: str) -> str:
    """One rake task argument: rake splits on commas and unescapes backslashes (Rake::Application
    #parse_task_string), so both are escaped."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def _format_multiplier(value: float) -> str:
    return repr(float(value))


@shows_ssh_settings
class ScaleliteRake:
    """Scalelite < 1.5.1 through `[sudo] docker exec <container> ./bin/rake <task>` over SSH, through the
    shared `divims.clients.ssh.SSHClient` (`self.ssh`; host keys verified against `known_hosts` unless
    accept_unknown_host_keys); its settings read as attributes here.
    `servers:disable` is never run: it asks for `yes` on stdin when the server has load."""

    def __init__(self, host: str, *, port: int = 22, user: str = "root", key_file: str | None = None,
                 key_passphrase: str | None = None, known_hosts: str | None = None,
                 accept_unknown_host_keys: bool = False, timeout_seconds: float = 10,
                 container: str = "scalelite-api", sudo: bool = True):
        self.ssh = SSHClient(host, port=port, user=user, key_file=key_file, key_passphrase=key_passphrase,
                             known_hosts=known_hosts, accept_unknown_host_keys=accept_unknown_host_keys,
                             timeout_seconds=timeout_seconds)
        self.container = container
        self.sudo = sudo
        self._lock = threading.Lock()  # one rake (a Rails boot) at a time on the Scalelite host

    def __repr__(self) -> str:
        return f"ScaleliteRake({self.ssh.user}@{self.ssh.host}:{self.ssh.port}, container={self.container!r})"

    def command(self, *tasks: str) -> str:
        """The shell command line that runs these rake tasks (each shell-quoted)."""
        parts = (["sudo", "-n"] if self.sudo else []) + ["docker", "exec", self.container, "./bin/rake"]
        return " ".join(shlex.quote(p) for p in [*parts, *tasks])

    def run(self, *tasks: str, secrets: tuple[str, ...] = ()) -> tuple[int, str, str]:
        """Runs rake tasks in one invocation (on a fresh connection, closed after: rake runs are minutes
        apart); returns (exit code, stdout, stderr). The command line may hold secrets (servers:add):
        neither it nor `secrets` ever reach a log or an error."""
        names = " ".join(t.partition("[")[0] for t in tasks)
        with self._lock:
            try:
                result = self.ssh.run(self.command(*tasks), label=f"rake {names}")
            finally:
                self.ssh.close()
        log.debug("scalelite %s: rake %s exited %d", self.ssh.host, names, result.exit_code)
        return result.exit_code, result.stdout, result.stderr

    def _task(self, task: str, server_id: str, *, secrets: tuple[str, ...] = ()) -> str:
        """Runs one state-changing task and checks for `OK`; returns stdout."""
        code, out, err = self.run(task, secrets=secrets)
        name = task.partition("[")[0]
        text = _scrub((err + "\n" + out).strip(), secrets)
        if "No server found with id" in text:
            raise NotFoundError(SERVICE, server_id, f"rake {name}: no server with id {server_id}")
        if code != 0 or not any(line.strip() == "OK" for line in out.splitlines()):
            last = text.splitlines()[-1] if text else ""
            if code == 127 or "command not found" in text or "No such container" in text:
                raise APIError(SERVICE, self.host, f"rake {name}: cannot run rake ({last})")
            raise APIError(SERVICE, server_id, f"rake {name} failed with exit {code}: {last}")
        return out

    def get_servers(self) -> list[ScaleliteServer]:
        """Runs `servers:yaml[verbose]` and `servers` in one rake invocation (one Rails boot).

        The YAML is the machine-readable part, but before Scalelite 1.6 (PR #1056) its `state` is always
        "enabled" for state-bearing servers (an operator-precedence bug), so the state comes from the
        `servers` listing, which has always printed it correctly."""
        code, out, err = self.run("servers:yaml[verbose]", "servers")
        if code != 0:
            last = (err.strip().splitlines() or [f"exit {code}"])[-1]
            raise APIError(SERVICE, self.host, f"rake servers:yaml failed with exit {code}: {last}")
        lines = out.splitlines()
        split = next((i for i, line in enumerate(lines) if _LISTING_ID.match(line)), len(lines))
        yaml_text = "\n".join(line for line in lines[:split] if line.strip() != "No servers are configured")
        dumped = parse_servers_yaml(yaml_text, self.host)
        listing = parse_servers_listing("\n".join(lines[split:]))
        servers = []
        for sid, info in dumped.items():
            extra = listing.get(sid, {})
            state = extra.get("state") or info.get("state") or ("enabled" if info.get("enabled") else "disabled")
            online = info.get("online") if "online" in info else extra.get("online", "offline")
            servers.append(parse_server({
                "id": sid, "url": info.get("url"), "secret": info.get("secret"), "state": state,
                "online": bool(online) if not isinstance(online, str) else online,
                "load": info.get("load"), "load_multiplier": info.get("load_multiplier"),
                "tag": extra.get("tag", ""), "bbb_version": extra.get("bbb version", ""),
            }, self.host))
        return servers

    def add_server(self, url: str, secret: str, load_multiplier: float | None = None,
                   tag: str | None = None) -> ScaleliteServer:
        """`servers:add[url,secret,multiplier(,tag)]`; parses `OK` and `id: ...`. Added disabled."""
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"server URL must start with http:// or https://, got {url!r}")
        args = [rake_arg(url), rake_arg(secret)]
        if load_multiplier is not None or tag:
            args.append(_format_multiplier(load_multiplier if load_multiplier is not None else 1.0))
        if tag:
            args.append(rake_arg(tag))
        target = url_host(url) or url
        out = self._task(f"servers:add[{','.join(args)}]", target, secrets=(secret,))
        ids = [m.group(1) for m in map(_LISTING_ID.match, out.splitlines()) if m]
        if not ids:
            raise ProtocolError(SERVICE, target, "rake servers:add printed OK but no id")
        log.info("scalelite %s: added server %s (%s) via rake", self.host, ids[-1], target)
        return ScaleliteServer(id=ids[-1], url=url, secret=secret, state=ScaleliteState.DISABLED,
                               online=False, load=None,
                               load_multiplier=load_multiplier if load_multiplier else 1.0, tag=tag or "")

    def enable(self, server_id: str) -> None:
        self._task(f"servers:enable[{rake_arg(server_id)}]", server_id)
        log.info("scalelite %s: server %s -> enable (rake)", self.host, server_id)

    def cordon(self, server_id: str) -> None:
        self._task(f"servers:cordon[{rake_arg(server_id)}]", server_id)
        log.info("scalelite %s: server %s -> cordon (rake)", self.host, server_id)

    def disable(self, server_id: str) -> None:
        """Not available: rake's servers:disable waits for `yes` on stdin. Use cordon, or panic."""
        raise NotSupportedError(SERVICE, server_id, "disable is not possible over rake (servers:disable "
                                                    "prompts on stdin): use cordon or panic")

    def panic(self, server_id: str, keep_state: bool = False) -> None:
        """`servers:panic[id]`, or `servers:panic[id,true]` to keep the state. Rake hands arguments over as
        strings and Ruby treats every string (even "false" or "") as true, so an argument is passed only to
        mean true; skip_end_calls is never passed, so BBB's meetings are really ended."""
        task = f"servers:panic[{rake_arg(server_id)}{',true' if keep_state else ''}]"
        self._task(task, server_id)
        log.info("scalelite %s: panicked server %s (keep_state=%s, rake)", self.host, server_id, keep_state)

    def delete_server(self, server_id: str) -> None:
        self._task(f"servers:remove[{rake_arg(server_id)}]", server_id)
        log.info("scalelite %s: removed server %s (rake)", self.host, server_id)


def make_scalelite(pool_cfg: Any) -> ScaleliteHTTP | ScaleliteRake:
    """The Scalelite client for a pool: rake over SSH when `pool.scalelite.ssh` is set, else the API."""
    sl = pool_cfg.scalelite
    ssh = sl.ssh
    if ssh is not None:
        passphrase = ssh.key_passphrase.get_secret_value() if ssh.key_passphrase is not None else None
        return ScaleliteRake(ssh.host, port=ssh.port, user=ssh.user, key_file=ssh.key_file,
                             key_passphrase=passphrase, known_hosts=ssh.known_hosts,
                             accept_unknown_host_keys=ssh.accept_unknown_host_keys,
                             timeout_seconds=ssh.timeout_seconds, container=ssh.container, sudo=ssh.sudo)
    return ScaleliteHTTP(sl.url, sl.secret.get_secret_value(), timeout_seconds=sl.timeout_seconds,
                         verify_tls=sl.verify_tls,
                         algorithm=getattr(sl, "checksum_algorithm", "sha256"))
