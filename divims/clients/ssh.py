"""The one SSH client of divims (paramiko): BBB hosts' stats and Scalelite's rake both run through it.

What it promises:

- host keys are verified against known_hosts (RejectPolicy); unknown keys are accepted only with
  `accept_unknown_host_keys`, a changed key never; the known_hosts file is read, never rewritten;
- public-key auth with `key_file` (optionally encrypted, `key_passphrase`), else the default keys;
- every network step has a timeout: connect, banner, auth (`timeout_seconds`) and each exec;
- one connection is kept and reused; when its transport died it is opened again;
- every failure is raised once, here, as a `divims.errors` class whose message names the host (and
  never the passphrase or the command line, which may hold a secret):
  AuthError (host key unknown or CHANGED, key refused, encrypted key without passphrase, key file or
  known_hosts missing), TimeoutError_ (connect or exec took too long), TransientError (refused, reset,
  dropped).
"""

from __future__ import annotations

import logging
import select
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import paramiko

from divims.errors import AuthError, ClientError, TimeoutError_, TransientError

log = logging.getLogger(__name__)

SERVICE = "ssh"

# The connection settings a wrapper (BBBHostSSH, ScaleliteRake) shows as its own attributes.
SETTINGS = ("host", "port", "user", "key_file", "known_hosts", "accept_unknown_host_keys", "timeout_seconds")

_Wrapper = TypeVar("_Wrapper", bound=type)


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str = field(repr=False)


class _UnknownHostKey(Exception):
    pass


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    """paramiko's RejectPolicy, but keeping the key so the error can show its fingerprint."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHostKey(f"{key.get_name()} {key.fingerprint}")


class _AcceptUnknown(paramiko.MissingHostKeyPolicy):
    """Accepts an unknown key for this connection only. paramiko's AutoAddPolicy would also save it
    into known_hosts when the file was loaded with load_host_keys: the operator's file is not ours."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        log.info("ssh %s: accepting unknown host key %s %s (accept_unknown_host_keys)", hostname,
                    key.get_name(), key.fingerprint)


class SSHClient:
    """One SSH connection to one host, kept open between `run` calls and reopened when it broke.

    Thread-safe: one command at a time per client."""

    def __init__(self, host: str, *, port: int = 22, user: str = "root", key_file: str | None = None,
                 key_passphrase: Any = None, known_hosts: str | None = None,
                 accept_unknown_host_keys: bool = False, timeout_seconds: float = 10):
        self.host = host
        self.port = port
        self.user = user
        self.key_file = key_file
        # str or pydantic SecretStr; kept out of repr and of every message
        self._passphrase: str | None = (key_passphrase.get_secret_value()
                                        if hasattr(key_passphrase, "get_secret_value") else key_passphrase)
        self.known_hosts = known_hosts
        self.accept_unknown_host_keys = accept_unknown_host_keys
        self.timeout_seconds = timeout_seconds
        self._pkey: paramiko.PKey | None = None  # the decrypted client key, once read
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SSHClient({self.user}@{self.host}:{self.port})"

    @property
    def target(self) -> str:
        """The host as errors name it: `host`, or `host:port` off port 22."""
        return self.host if self.port == 22 else f"{self.host}:{self.port}"

    def __enter__(self) -> SSHClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection (the next `run` opens a new one)."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _auth_error(self, message: str) -> AuthError:
        return AuthError(SERVICE, self.target, message)

    def _host_keys(self, client: paramiko.SSHClient) -> None:
        """Loads known_hosts into the client's keys without remembering the file (paramiko rewrites a
        file given to load_host_keys when it adds a key)."""
        if not self.known_hosts:
            client.load_system_host_keys()
            return
        path = Path(self.known_hosts).expanduser()
        try:
            client.get_host_keys().load(str(path))
        except FileNotFoundError:
            if not self.accept_unknown_host_keys:
                raise self._auth_error(f"known_hosts file {path} not found (it does not exist)") from None
        except (OSError, paramiko.SSHException) as exc:
            raise self._auth_error(f"known_hosts file {path} unreadable: {exc.__class__.__name__}") from None

    def _connect(self) -> paramiko.SSHClient:
        """The live connection, opened (or reopened) as needed. Call with the lock held."""
        if self._client is not None:
            transport = self._client.get_transport()
            if transport is not None and transport.is_active():
                return self._client
            log.info("ssh %s: connection lost, reconnecting", self.target)
            self._drop()
        pkey = self._key()
        client = paramiko.SSHClient()
        try:
            self._host_keys(client)
            client.set_missing_host_key_policy(_AcceptUnknown() if self.accept_unknown_host_keys
                                               else _RejectUnknown())
            self._open(client, pkey)
        except BaseException:
            client.close()
            raise
        self._client = client
        log.debug("ssh %s: connected as %s", self.target, self.user)
        return client

    def _key(self) -> paramiko.PKey | None:
        """The client key of `key_file`, read and decrypted once per client: decrypting (bcrypt, on
        purpose slow) takes seconds, and paramiko's own key_filename path decrypts once per key type it
        tries, on every connect, while the server waits. None: the default ~/.ssh keys."""
        if not self.key_file:
            return None
        if self._pkey is None:
            path = Path(self.key_file).expanduser()
            passphrase = self._passphrase.encode() if self._passphrase else None
            try:
                try:
                    self._pkey = paramiko.PKey.from_path(path, passphrase)
                except TypeError as exc:
                    if passphrase is None:  # "Password was not given but private key is encrypted"
                        raise self._auth_error(f"key file {self.key_file} is encrypted: "
                                               "set key_passphrase") from None
                    if "not encrypted" not in str(exc):
                        raise
                    self._pkey = paramiko.PKey.from_path(path)  # a passphrase it does not need: as ssh does
            except FileNotFoundError:
                raise self._auth_error(f"key file {self.key_file} not found") from None
            except (ValueError, TypeError, OSError, paramiko.SSHException) as exc:
                if passphrase is not None and isinstance(exc, ValueError):
                    raise self._auth_error(f"key file {self.key_file} could not be decrypted: wrong "
                                           "key_passphrase, or not a private key") from None
                raise self._auth_error(f"key file {self.key_file} is not a private key paramiko reads: "
                                       f"{exc.__class__.__name__}") from None
        return self._pkey

    def _open(self, client: paramiko.SSHClient, pkey: paramiko.PKey | None) -> None:
        """client.connect with every paramiko and socket failure mapped to a divims error."""
        t = self.timeout_seconds
        started = time.monotonic()
        try:
            client.connect(self.host, port=self.port, username=self.user, pkey=pkey, timeout=t,
                           banner_timeout=t, auth_timeout=t, channel_timeout=t, look_for_keys=pkey is None,
                           allow_agent=False)
        except _UnknownHostKey as exc:
            raise self._auth_error(f"host key {exc} is not in known_hosts"
                                   f"{' ' + self.known_hosts if self.known_hosts else ''}: refusing to connect "
                                   "(add it, or set accept_unknown_host_keys)") from None
        except paramiko.BadHostKeyException as exc:
            raise self._auth_error(f"host key CHANGED: got {exc.key.get_name()} {exc.key.fingerprint}, "
                                   f"known_hosts has {exc.expected_key.get_name()} "
                                   f"{exc.expected_key.fingerprint}; it differs from the known one (possible "
                                   "man-in-the-middle): refusing to connect") from None
        except paramiko.AuthenticationException:
            raise self._auth_error(f"public key refused for user {self.user}") from None
        except TimeoutError:
            raise TimeoutError_(SERVICE, self.target, f"connect: no answer within {t:g} s") from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            # a silent peer surfaces as a banner or session error, not a timeout: tell it by the clock
            if time.monotonic() - started >= t * 0.9:
                raise TimeoutError_(SERVICE, self.target, f"connect: no SSH answer within {t:g} s") from None
            raise TransientError(SERVICE, self.target, f"connect failed: {describe(exc)}") from None

    def run(self, command: str, timeout_seconds: float | None = None, *, label: str = "command") -> CommandResult:
        """Runs one command and returns its exit code and output, within `timeout_seconds` (default the
        client's `timeout_seconds`). `label` names the command in errors and logs (the command line
        itself never appears: it may hold a secret). A connection that was found dead when opening the
        session is reopened once; a command that was sent is never sent again."""
        timeout = self.timeout_seconds if timeout_seconds is None else timeout_seconds
        with self._lock:
            kept = self._client
            client = self._connect()
            reused = client is kept
            try:
                chan = self._session(client, timeout)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                self._drop()
                if not reused:
                    raise TransientError(SERVICE, self.target, f"{label}: no session: {describe(exc)}") from None
                # the kept connection died unnoticed (the host restarted): once more on a fresh one
                log.info("ssh %s: kept connection is dead (%s), reconnecting", self.target, describe(exc))
                client = self._connect()
                try:
                    chan = self._session(client, timeout)
                except (OSError, EOFError, paramiko.SSHException) as exc2:
                    self._drop()
                    raise TransientError(SERVICE, self.target,
                                         f"{label}: no session: {describe(exc2)}") from None
            try:
                return self._exec(chan, client, command, timeout, label)
            except ClientError:
                self._drop()
                raise
            except (OSError, EOFError, paramiko.SSHException) as exc:
                self._drop()
                raise TransientError(SERVICE, self.target, f"{label} failed: {describe(exc)}") from None

    def _session(self, client: paramiko.SSHClient, timeout: float) -> paramiko.Channel:
        transport = client.get_transport()
        if transport is None or not transport.is_active():
            raise EOFError("connection closed")
        return transport.open_session(timeout=timeout)

    def _exec(self, chan: paramiko.Channel, client: paramiko.SSHClient, command: str, timeout: float,
              label: str) -> CommandResult:
        transport = client.get_transport()
        deadline = time.monotonic() + timeout
        try:
            chan.settimeout(timeout)
            chan.exec_command(command)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            while True:
                while chan.recv_ready():
                    out += chan.recv(65536)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if chan.closed or transport is None or not transport.is_active():
                    if chan.exit_status_ready():
                        continue
                    raise TransientError(SERVICE, self.target, f"connection closed before the {label} ended")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError_(SERVICE, self.target, f"{label} did not end within {timeout:g} s")
                select.select([chan], [], [], min(remaining, 0.05))
            code = chan.recv_exit_status()
            if code == -1:  # closed without an exit status: the connection dropped mid-command
                raise TransientError(SERVICE, self.target, f"connection closed before the {label} ended")
            return CommandResult(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
        finally:
            chan.close()


def shows_ssh_settings(cls: _Wrapper) -> _Wrapper:
    """Class decorator for a class that holds its SSHClient in `self.ssh`: gives it the client's
    SETTINGS (host, port, user, ...) as read-only attributes, so there is one copy of each."""
    for name in SETTINGS:
        setattr(cls, name, property(lambda self, _n=name: getattr(self.ssh, _n), doc=f"the SSH {name}"))
    return cls


def describe(exc: BaseException) -> str:
    """`Class: message` (cut to 120 characters) for an exception from paramiko or a socket; such
    messages hold hosts and ports, never a passphrase."""
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text[:120]}" if text else exc.__class__.__name__
