"""An in-process SSH server (asyncssh, on its own event-loop thread) that answers exec requests
from a Python handler: the BBB hosts' stats and Scalelite's rake, over real SSH.

Public-key auth only. The handler gets the exec'd command line and returns (exit code, stdout, stderr);
raising `ConnectionAbortedError` drops the connection (a host that is going down).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncssh

from divims.clients.bbbhost import STATS_MARKER
from testbed.world import RUNNING, World

log = logging.getLogger(__name__)

Handler = Callable[[str], tuple[int, str, str]]


class SSHServerHandle:
    """A running fake SSH server: `host`, `port`, `known_hosts_line()`, `commands` (what was exec'd)."""

    def __init__(self, host: str, port: int, public_key: str, loop: asyncio.AbstractEventLoop,
                 thread: threading.Thread, stop_event: asyncio.Event):
        self.host = host
        self.port = port
        self.public_key = public_key  # "ssh-ed25519 AAAA..."
        self.commands: list[str] = []
        self._loop = loop
        self._thread = thread
        self._stop_event = stop_event

    def known_hosts_line(self) -> str:
        """The known_hosts entry for this server (`[host]:port` form off port 22, as OpenSSH writes it)."""
        pattern = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{pattern} {self.public_key}"

    def stop(self) -> None:
        """Drops every connection, closes the listener and joins the thread."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop_event.set)
            self._thread.join(timeout=10)

    def __enter__(self) -> SSHServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Server(asyncssh.SSHServer):
    def __init__(self, conns: set, authorized: asyncssh.SSHAuthorizedKeys | None):
        self._conns = conns
        self._authorized = authorized
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._conns.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self._conns.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True  # every user must authenticate

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # asyncssh checks authorized_client_keys first; this is the fallback: without a list, any key
        # whose possession the client proves is accepted, with one, nothing else is
        return self._authorized is None


def _authorized(authorized_keys: str | Path | Sequence[str] | None) -> asyncssh.SSHAuthorizedKeys | None:
    if authorized_keys is None:
        return None
    if isinstance(authorized_keys, str | Path):
        return asyncssh.read_authorized_keys(str(authorized_keys))
    return asyncssh.import_authorized_keys("\n".join(authorized_keys) + "\n")


def start_ssh_server(host: str, port: int, handler: Handler, *, host_key_path: str | None = None,
                     authorized_keys: str | Path | Sequence[str] | None = None) -> SSHServerHandle:
    """Starts the server and returns once it listens (port 0 picks a free port).

    `authorized_keys`: an authorized_keys file, or public key lines; None accepts any client key
    (still public-key auth). A host key is generated (ed25519) unless `host_key_path` is given."""
    host_key = (asyncssh.read_private_key(host_key_path) if host_key_path
                else asyncssh.generate_private_key("ssh-ed25519"))
    public_key = host_key.export_public_key().decode().split()
    authorized = _authorized(authorized_keys)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    failure: list[BaseException] = []
    state: dict[str, object] = {}
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"fake-sshd-{host}")
    conns: set = set()

    async def process(proc: asyncssh.SSHServerProcess) -> None:
        command = proc.command
        if command is None:
            proc.stderr.write("this server runs commands only\n")
            proc.exit(1)
            return
        handle: SSHServerHandle = state["handle"]  # type: ignore[assignment]
        handle.commands.append(command)
        try:
            code, out, err = await loop.run_in_executor(executor, handler, command)
        except ConnectionAbortedError:
            proc.channel.get_connection().abort()
            return
        except Exception as exc:  # noqa: BLE001 - a broken handler is a failed command, not a dead server
            log.exception("fake sshd %s:%s: handler failed on %r", host, state.get("port"), command[:60])
            code, out, err = 255, "", f"fake sshd handler failed: {exc.__class__.__name__}\n"
        proc.stdout.write(out)
        proc.stderr.write(err)
        proc.exit(code)

    async def main() -> None:
        stop_event = asyncio.Event()
        try:
            acceptor = await asyncssh.create_server(
                lambda: _Server(conns, authorized), host, port, server_host_keys=[host_key],
                process_factory=process, encoding="utf-8", login_timeout=30, keepalive_interval=0,
                authorized_client_keys=authorized)
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            failure.append(exc)
            ready.set()
            return
        state["port"] = acceptor.sockets[0].getsockname()[1]
        state["stop_event"] = stop_event
        ready.set()
        await stop_event.wait()
        acceptor.close()
        for conn in list(conns):
            conn.abort()
        await acceptor.wait_closed()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main())
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=run, name=f"fake-sshd-{host}", daemon=True)
    thread.start()
    ready.wait()
    if failure:
        thread.join()
        raise failure[0]
    handle = SSHServerHandle(host, int(state["port"]), f"{public_key[0]} {public_key[1]}", loop, thread,
                             state["stop_event"])  # type: ignore[arg-type]
    state["handle"] = handle
    log.info("fake sshd listening on %s:%d", host, handle.port)
    return handle


def _openssl_date(epoch: float) -> str:
    """`openssl x509 -enddate` style: `Mar  5 12:00:00 2027 GMT`."""
    t = time.gmtime(epoch)
    return time.strftime("%b ", t) + f"{t.tm_mday:2d}" + time.strftime(" %H:%M:%S %Y GMT", t)


def bbb_stats_handler(world: World, host: str) -> Handler:
    """Answers divims' stats script for `host` from the world, as the real script would print it;
    any other command is `command not found` (127). While the slot's VM is not running, the
    connection drops."""

    def handle(command: str) -> tuple[int, str, str]:
        world.advance()
        with world.lock:
            h = world.bbb_hosts[host]
            vm = world.vm_of_host(host)
            if vm is None or vm.state != RUNNING or vm.running_since is None:
                raise ConnectionAbortedError(host)
            if STATS_MARKER not in command:
                name = command.split()[0] if command.split() else ""
                return 127, "", f"sh: 1: {name}: not found\n"
            now = world.now()
            stages = [r.stage for r in h.recordings.values()]
            processing = [r for r in h.recordings.values() if r.stage == "processing"]
            # a processing entry's mtime is when it entered the stage: the end of sanity
            oldest = min((r.next_at - world.delays.recording_seconds for r in processing if r.next_at),
                         default=None)
            participants = sum(m.participants for m in h.meetings.values())
            healthy = h.services_healthy and world.bbb_reachable(host)
            lines = [
                f"load1={0.05 + participants * 0.02:.2f}", f"cpus={h.cpus}",
                f"uptime={now - vm.running_since:.2f}", f"services={'ok' if healthy else 'ko'}",
                f"recorded={stages.count('recorded')}", f"archived={stages.count('archived')}",
                f"sanity={stages.count('sanity')}", f"processing={len(processing)}",
                f"processing_oldest_mtime={'' if oldest is None else int(oldest)}", f"now={int(now)}",
                f"published_not_transferred={stages.count('published')}", f"failed={stages.count('failed')}",
                f"tls_not_after={_openssl_date(h.tls_expiry) if h.tls_expiry else ''}", "end=ok",
            ]
        return 0, "\n".join(lines) + "\n", ""

    return handle
