"""The background poll loop: every interval, read each pool's Scalelite, BBB servers, SSH and Scaleway,
build one immutable `ExporterSnapshot`, and swap it in.

Bounded concurrency: BBB API and SSH calls run on one thread pool of `concurrency` workers; the
Scalelite and Scaleway calls run on a small pool of their own so a flood of slow BBB servers can never
starve them. Per-target timeout: the clients time out by themselves, and the loop also gives up on any
call that has run longer than the timeout (plus a grace second), so one slow or dead server never delays
the others or the cycle. A server whose previous call is still running is not called again: it is
reported down (kind `timeout`) until that call returns.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ALL_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests

from divims.errors import ClientError
from divims.model import VM, HostStats, Meeting, ScaleliteServer, VMState
from exporter.snapshot import (
    SOURCE_BBB,
    SOURCE_SCALELITE,
    SOURCE_SCALEWAY,
    SOURCE_SSH,
    BBBSample,
    ErrorCount,
    ExporterSnapshot,
    MeetingTotals,
    PoolSnapshot,
    ScalewayServerSample,
    ServerSample,
    SourceStatus,
    SSHSample,
)
from exporter.transport import KeepAliveSession, default_ssl_context

log = logging.getLogger(__name__)

# A call is abandoned this long after its own timeout should have fired (slow-drip answers, stuck DNS).
GRACE_SECONDS = 1.0
# Catalog prices change rarely; asking for them once an hour is plenty.
PRICE_TTL_SECONDS = 3600.0
KIND_UNEXPECTED = "unexpected"
KIND_TIMEOUT = "timeout"


class MeetingsSource(Protocol):
    def get_meetings(self) -> list[Meeting]: ...


class HostStatsSource(Protocol):
    def stats(self) -> HostStats: ...


class ServerListSource(Protocol):
    def get_servers(self) -> list[ScaleliteServer]: ...


class VMSource(Protocol):
    def list_servers(self) -> list[VM]: ...

    def hourly_price(self, commercial_type: str) -> float | None: ...


@dataclass(frozen=True)
class PoolSources:
    """Everything the poller needs to read one pool, as narrow callables so that tests and the benchmark
    can hand in testbed-backed or in-memory sources. `sources_from_config` builds the real ones."""

    name: str
    scalelite: ServerListSource
    bbb_client: Callable[[ScaleliteServer], MeetingsSource]  # called once per server url+secret, cached
    slot_of_host: Callable[[str], int | None]                 # domain_template match; None: not ours
    slot_of_name: Callable[[str], int | None]                 # hostname_template match
    slot_domain: Callable[[int], str]
    cloud: VMSource | None = None
    host_stats: Callable[[str], HostStatsSource] | None = None  # None: SSH not configured
    ssh_timeout_seconds: float = 10.0
    participants_per_server: int = 250
    meetings_per_server: int = 15


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    return getter() if callable(getter) else str(value)


def sources_from_config(pool_cfg: Any, exporter_cfg: Any) -> PoolSources:
    """The real clients of one configured pool (divims.config PoolConfig and Settings.exporter)."""
    # Imported here so that `exporter.poll` stays importable (tests, bench) without the SDK's import cost.
    from divims.clients.bbb import BBBClient
    from divims.clients.scalelite import make_scalelite
    from divims.clients.scaleway import ScalewayCloud

    timeout = float(exporter_cfg.timeout_seconds)
    algorithm = pool_cfg.bbb.checksum_algorithm

    def bbb_client(server: ScaleliteServer) -> MeetingsSource:
        return BBBClient(server.url, server.secret, timeout_seconds=timeout, algorithm=algorithm,
                         session=session_for(server.url))

    host_stats = None
    ssh = pool_cfg.bbb.ssh
    if ssh is not None:
        from divims.clients.bbbhost import BBBHostSSH

        def host_stats(domain: str) -> HostStatsSource:
            return BBBHostSSH(ssh.host_template.format(domain=domain), port=ssh.port, user=ssh.user,
                              key_file=ssh.key_file, key_passphrase=_secret(ssh.key_passphrase),
                              known_hosts=ssh.known_hosts,
                              accept_unknown_host_keys=ssh.accept_unknown_host_keys,
                              timeout_seconds=ssh.timeout_seconds)

    return PoolSources(
        name=pool_cfg.name,
        scalelite=make_scalelite(pool_cfg),
        bbb_client=bbb_client,
        slot_of_host=pool_cfg.slot_of_host,
        slot_of_name=pool_cfg.slot_of_name,
        slot_domain=pool_cfg.slot_domain,
        cloud=ScalewayCloud.from_pool(pool_cfg, pool_cfg.name),
        host_stats=host_stats,
        ssh_timeout_seconds=float(ssh.timeout_seconds) if ssh is not None else 10.0,
        participants_per_server=pool_cfg.capacity.participants_per_server,
        meetings_per_server=pool_cfg.capacity.meetings_per_server,
    )


def session_for(url: str) -> requests.Session | KeepAliveSession:
    """The HTTP session of one server's BBB client: a lean keep-alive connection (exporter.transport),
    or, when the environment routes this URL through a proxy (HTTPS_PROXY, NO_PROXY...), a requests
    session with those settings read once.

    requests re-reads every environment variable on each call (trust_env) to find proxies: a quarter of
    the CPU of a getMeetings poll. Reading them here once per server keeps HTTPS_PROXY, NO_PROXY and
    REQUESTS_CA_BUNDLE working at none of that cost.
    """
    proxies = requests.utils.get_environ_proxies(url)
    if not proxies:
        return KeepAliveSession(_shared_ssl_context() if url.startswith("https:") else None)
    session = requests.Session()
    session.trust_env = False
    session.proxies = proxies
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    return session


@functools.cache
def _shared_ssl_context() -> ssl.SSLContext:
    # Loading a CA bundle costs milliseconds and memory: one context for every server's connection.
    return default_ssl_context()


@dataclass
class _Call:
    """One submitted remote call; `started` is set by the worker when it actually begins."""

    key: tuple[str, str, str]  # (pool, source, server)
    limit: float               # seconds it may run before the poller gives up on it
    future: Future | None = None
    started: float | None = None
    reused: bool = False       # the previous cycle's call, still running: reported as a timeout at once


@dataclass
class _PoolState:
    """What the poller remembers of a pool between cycles (the loop's own mutable state)."""

    servers: tuple[ScaleliteServer, ...] = ()
    where: dict[str, tuple[str, int]] = field(default_factory=dict)  # url -> (host, slot) of `servers`
    scalelite_ok_once: bool = False
    clients: dict[tuple[str, str, str], MeetingsSource] = field(default_factory=dict)
    ssh_clients: dict[str, HostStatsSource] = field(default_factory=dict)
    ssh: dict[str, SSHSample] = field(default_factory=dict)
    ssh_due: dict[str, float] = field(default_factory=dict)
    prices: dict[str, tuple[float | None, float]] = field(default_factory=dict)  # type -> (price, at)
    last_success: dict[str, float] = field(default_factory=dict)
    bbb_errors: dict[str, int] = field(default_factory=dict)


_STATE_RANK = {VMState.RUNNING: 0, VMState.STARTING: 1, VMState.STOPPING: 2, VMState.LOCKED: 3,
               VMState.STOPPED_IN_PLACE: 4, VMState.STOPPED: 5}


class Poller:
    """Polls every pool each `interval_seconds` and keeps the latest `ExporterSnapshot`.

    `poll_once()` runs one cycle in the calling thread (tests, the benchmark); `start()` runs cycles in a
    background thread until `stop()`. Never raises out of a cycle: every failure becomes a metric.
    """

    def __init__(self, pools: Sequence[PoolSources], *, interval_seconds: float = 15.0,
                 concurrency: int = 64, timeout_seconds: float = 5.0, ssh_interval_seconds: float = 60.0,
                 clock: Callable[[], float] = time.time,
                 on_snapshot: Callable[[ExporterSnapshot], None] | None = None):
        if concurrency < 1:
            raise ValueError(f"exporter concurrency must be at least 1, got {concurrency}")
        if interval_seconds <= 0 or timeout_seconds <= 0:
            raise ValueError("exporter interval_seconds and timeout_seconds must be positive")
        names = [p.name for p in pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique, got {names}")
        self.pools = tuple(pools)
        self.interval_seconds = float(interval_seconds)
        self.timeout_seconds = float(timeout_seconds)
        self.ssh_interval_seconds = float(ssh_interval_seconds)
        self.clock = clock
        # Called with each new snapshot just before it is swapped in (the HTTP side pre-renders it there,
        # so no scrape ever waits for a render).
        self.on_snapshot = on_snapshot
        self._workers = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="divims-poll")
        # Scalelite + Scaleway + catalog prices per pool, each on its own worker.
        self._control = ThreadPoolExecutor(max_workers=max(2, 3 * len(self.pools)),
                                           thread_name_prefix="divims-poll-api")
        self._state = {p.name: _PoolState() for p in self.pools}
        self._in_flight: dict[tuple[str, str, str], _Call] = {}
        self._errors: dict[tuple[str, str, str], int] = {}
        self._failing: dict[tuple[str, str, str], str] = {}  # (pool, source, server) -> kind
        self._lock = threading.Lock()
        self._snapshot: ExporterSnapshot | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cycles = 0

    # --- public -----------------------------------------------------------------------------
    @property
    def snapshot(self) -> ExporterSnapshot | None:
        """The latest finished cycle (None before the first one ends). Reading it is one attribute read."""
        return self._snapshot

    def start(self) -> None:
        """Runs cycles in a daemon thread, one every `interval_seconds` (a late cycle starts at once)."""
        if self._thread is not None:
            raise RuntimeError("poller already started")
        self._thread = threading.Thread(target=self._run, name="divims-exporter-poll", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the loop and the worker threads; calls still running are abandoned, not awaited."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._workers.shutdown(wait=False, cancel_futures=True)
        self._control.shutdown(wait=False, cancel_futures=True)

    def poll_once(self) -> ExporterSnapshot:
        """One full cycle over every pool; swaps in and returns the new snapshot."""
        started = time.monotonic()
        pools = [self._poll_pool(p) for p in self.pools]
        with self._lock:
            errors = tuple(ErrorCount(k[0], k[1], k[2], v) for k, v in sorted(self._errors.items()))
        snap = ExporterSnapshot(taken_at=self.clock(), pools=tuple(pools), errors=errors,
                                cycle_seconds=time.monotonic() - started)
        if self.on_snapshot is not None:
            try:
                self.on_snapshot(snap)
            except Exception:  # a failed pre-render must not lose the cycle; scrapes render it themselves
                log.exception("exporter snapshot hook failed")
        self._snapshot = snap  # one reference assignment: scrapes see the old or the new, never a mix
        self.cycles += 1
        return snap

    # --- the loop ---------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.poll_once()
            except Exception:  # a bug in a cycle must not end the exporter; the next cycle retries
                log.exception("exporter poll cycle failed")
            self._stop.wait(max(0.0, self.interval_seconds - (time.monotonic() - began)))

    def _poll_pool(self, p: PoolSources) -> PoolSnapshot:
        st = self._state[p.name]
        budget_end = time.monotonic() + self.interval_seconds  # the cycle must end before the next is due

        # Scalelite and Scaleway have their own timeouts and (Scaleway) retries: they get the cycle's budget.
        scalelite_call = self._submit(self._control, (p.name, SOURCE_SCALELITE, ""), p.scalelite.get_servers,
                                      self.interval_seconds)
        scaleway_call = (self._submit(self._control, (p.name, SOURCE_SCALEWAY, ""), lambda: self._scaleway(p),
                                      self.interval_seconds)
                         if p.cloud is not None else None)

        t0 = time.monotonic()
        listed = self._collect({scalelite_call.key: scalelite_call}, budget_end)[scalelite_call.key]
        scalelite_seconds = time.monotonic() - t0
        scalelite_up = not isinstance(listed, BaseException)
        if scalelite_up:
            st.servers = self._ours(p, st, listed)
            st.scalelite_ok_once = True
            st.last_success[SOURCE_SCALELITE] = self.clock()
        self._record(p.name, SOURCE_SCALELITE, "", listed)
        servers = st.servers
        self._prune(p, st, servers)
        where = st.where

        # BBB API of each server (and SSH when due) on the bounded worker pool.
        t1 = time.monotonic()
        bbb_calls: dict[tuple[str, str, str], _Call] = {}
        ssh_calls: dict[tuple[str, str, str], _Call] = {}
        now = self.clock()
        for s in servers:
            host = where[s.url][0]
            client = self._client(p, st, s)
            key = (p.name, SOURCE_BBB, host)
            bbb_calls[key] = self._submit(self._workers, key, lambda c=client: _timed(c.get_meetings),
                                          self.timeout_seconds + GRACE_SECONDS)
            if p.host_stats is not None and now >= st.ssh_due.get(host, 0.0):
                st.ssh_due[host] = now + self.ssh_interval_seconds
                ssh_client = st.ssh_clients.get(host)
                if ssh_client is None:
                    ssh_client = st.ssh_clients[host] = p.host_stats(host)
                ssh_calls[(p.name, SOURCE_SSH, host)] = self._submit(
                    self._workers, (p.name, SOURCE_SSH, host), ssh_client.stats,
                    2 * p.ssh_timeout_seconds + GRACE_SECONDS)  # connect, then the command
        bbb_results = self._collect(bbb_calls, budget_end)
        bbb_seconds = time.monotonic() - t1
        ssh_results = self._collect(ssh_calls, budget_end)
        ssh_seconds = time.monotonic() - t1

        samples = []
        bbb_any_ok = not servers
        for s in servers:
            host, slot = where[s.url]
            result = bbb_results[(p.name, SOURCE_BBB, host)]
            self._record(p.name, SOURCE_BBB, host, result)
            if isinstance(result, BaseException):
                st.bbb_errors[host] = st.bbb_errors.get(host, 0) + 1
                bbb = BBBSample(up=False, error_kind=_kind(result))
            else:
                meetings, latency = result
                bbb = BBBSample(up=True, totals=MeetingTotals.of(meetings), latency_seconds=latency)
                bbb_any_ok = True
            ssh_key = (p.name, SOURCE_SSH, host)
            if ssh_key in ssh_results:
                sres = ssh_results[ssh_key]
                self._record(p.name, SOURCE_SSH, host, sres)
                st.ssh[host] = (SSHSample(up=False, error_kind=_kind(sres), taken_at=now)
                                  if isinstance(sres, BaseException)
                                  else SSHSample(up=True, stats=sres, taken_at=now))
            samples.append(ServerSample(server=host, slot=slot, scalelite=s, bbb=bbb, ssh=st.ssh.get(host)))
        if bbb_any_ok:
            st.last_success[SOURCE_BBB] = self.clock()
        if ssh_calls and any(s.up for s in st.ssh.values()):
            st.last_success[SOURCE_SSH] = self.clock()

        scaleway_up: bool | None = None
        scaleway_servers: tuple[ScalewayServerSample, ...] = ()
        scaleway_seconds = 0.0
        if scaleway_call is not None:
            result = self._collect({scaleway_call.key: scaleway_call}, budget_end)[scaleway_call.key]
            self._record(p.name, SOURCE_SCALEWAY, "", result)
            scaleway_up = not isinstance(result, BaseException)
            if scaleway_up:
                scaleway_servers, scaleway_seconds = result
                st.last_success[SOURCE_SCALEWAY] = self.clock()
            else:
                scaleway_seconds = time.monotonic() - t0

        durations = {SOURCE_SCALELITE: scalelite_seconds, SOURCE_BBB: bbb_seconds}
        if p.host_stats is not None:
            durations[SOURCE_SSH] = ssh_seconds
        if p.cloud is not None:
            durations[SOURCE_SCALEWAY] = scaleway_seconds
        return PoolSnapshot(
            pool=p.name, taken_at=self.clock(), scalelite_up=scalelite_up, scalelite_stale=not scalelite_up,
            servers=tuple(samples), scaleway_up=scaleway_up, scaleway_servers=scaleway_servers,
            participants_per_server=p.participants_per_server, meetings_per_server=p.meetings_per_server,
            sources=tuple(SourceStatus(src, d, st.last_success.get(src)) for src, d in durations.items()),
            bbb_errors=tuple(sorted(st.bbb_errors.items())))

    def _scaleway(self, p: PoolSources) -> tuple[tuple[ScalewayServerSample, ...], float]:
        """The pool's VMs by slot, one per slot (the most alive one when duplicates exist), with prices."""
        assert p.cloud is not None
        t0 = time.monotonic()
        by_slot: dict[int, VM] = {}
        for vm in p.cloud.list_servers():
            slot = p.slot_of_name(vm.name)
            if slot is None:
                continue
            other = by_slot.get(slot)
            if other is None or _better(vm, other):
                by_slot[slot] = vm
        seconds = time.monotonic() - t0
        st = self._state[p.name]
        out = []
        for slot in sorted(by_slot):
            vm = by_slot[slot]
            out.append(ScalewayServerSample(server=p.slot_domain(slot), slot=slot, vm=vm,
                                            hourly_price_euros=self._price(p, st, vm.commercial_type)))
        return tuple(out), seconds

    def _price(self, p: PoolSources, st: _PoolState, commercial_type: str) -> float | None:
        cached = st.prices.get(commercial_type)
        now = self.clock()
        if cached is not None and now - cached[1] < PRICE_TTL_SECONDS:
            return cached[0]
        assert p.cloud is not None
        try:
            price = p.cloud.hourly_price(commercial_type)
        except ClientError as exc:  # no price is no reason to call Scaleway down: keep the old one
            self._count(p.name, SOURCE_SCALEWAY, exc.kind)
            log.warning("pool=%s scaleway catalog price of %s unavailable: %s", p.name, commercial_type, exc)
            return cached[0] if cached else None
        st.prices[commercial_type] = (price, now)
        return price

    # --- plumbing ---------------------------------------------------------------------------
    def _client(self, p: PoolSources, st: _PoolState, s: ScaleliteServer) -> MeetingsSource:
        # Keyed by url and secret: one client (and its HTTP keep-alive connection) per server, rebuilt
        # when Scalelite reports a new secret or URL.
        key = (s.id, s.url, _fingerprint(s.secret))
        client = st.clients.get(key)
        if client is None:
            for old in [k for k in st.clients if k[0] == s.id]:
                _close(st.clients.pop(old))
            client = st.clients[key] = p.bbb_client(s)
        return client

    def _ours(self, p: PoolSources, st: _PoolState,
              listed: Sequence[ScaleliteServer]) -> tuple[ScaleliteServer, ...]:
        """The listed servers inside domain_template; remembers each URL's host and slot (parsing a URL
        and matching the template cost more than the rest of a poll, so once per URL, not per cycle)."""
        where: dict[str, tuple[str, int]] = {}
        ours = []
        for s in listed:
            known = st.where.get(s.url)
            if known is None:
                host = s.host
                slot = p.slot_of_host(host)
                known = (host, slot) if slot is not None else None
            if known is not None:
                where[s.url] = known
                ours.append(s)
        st.where = where  # only the URLs listed now: the map never grows past the pool
        return tuple(ours)

    def _prune(self, p: PoolSources, st: _PoolState, servers: tuple[ScaleliteServer, ...]) -> None:
        """Forgets the clients and SSH samples of servers Scalelite no longer lists."""
        ids = {s.id for s in servers}
        hosts = {st.where[s.url][0] for s in servers}
        for key in [k for k in st.clients if k[0] not in ids]:
            _close(st.clients.pop(key))
        for host in [h for h in st.ssh_clients if h not in hosts]:
            _close(st.ssh_clients.pop(host))
        for d in (st.ssh, st.ssh_due, st.bbb_errors):
            for host in [h for h in d if h not in hosts]:
                del d[host]

    def _submit(self, executor: ThreadPoolExecutor, key: tuple[str, str, str],
                fn: Callable[[], Any], limit: float) -> _Call:
        with self._lock:
            running = self._in_flight.get(key)
            if running is not None:
                # The previous call of this target still hangs: don't pile a second one on it.
                return _Call(key, limit, running.future, running.started, reused=True)
            call = _Call(key, limit)
            self._in_flight[key] = call

        def work() -> Any:
            call.started = time.monotonic()
            return fn()

        def done(_: Future) -> None:
            with self._lock:
                if self._in_flight.get(key) is call:
                    del self._in_flight[key]

        try:
            call.future = executor.submit(work)
        except RuntimeError:  # shut down while a cycle was running
            with self._lock:
                self._in_flight.pop(key, None)
            call.future = Future()
            call.future.set_exception(ClientError(key[1], key[2] or key[0], "exporter is stopping"))
            return call
        call.future.add_done_callback(done)
        return call

    def _collect(self, calls: dict[tuple[str, str, str], _Call], budget_end: float) -> dict[tuple, Any]:
        """Waits for the calls; each result is its value, or the exception it raised, or a timeout error
        for a call that ran past the per-target timeout (or was still running at the end of the budget)."""
        results: dict[tuple, Any] = {}
        for c in calls.values():
            if c.reused:
                results[c.key] = TimeoutError_Exporter(c.key, c.limit, still_running=True)
        by_future = {c.future: c for c in calls.values() if c.future is not None and not c.reused}
        pending = set(by_future)
        while pending:
            now = time.monotonic()
            overdue = {f for f in pending if now >= budget_end
                       or (by_future[f].started is not None and now - by_future[f].started >= by_future[f].limit)}
            for f in overdue:
                c = by_future[f]
                results[c.key] = TimeoutError_Exporter(c.key, c.limit)
            pending -= overdue
            if not pending:
                break
            starts = [by_future[f].started + by_future[f].limit for f in pending
                      if by_future[f].started is not None]
            # Sleep until everything is done or the next deadline: waking on every completion would cost
            # O(n) per wake-up (wait() registers on each pending future), O(n^2) per cycle. Calls not yet
            # started have no deadline, hence the 0.5 s re-check.
            next_deadline = min(starts + [budget_end, now + 0.5])
            done, pending = wait(pending, timeout=max(0.005, next_deadline - now), return_when=ALL_COMPLETED)
            for f in done:
                c = by_future[f]
                exc = f.exception()
                results[c.key] = exc if exc is not None else f.result()
        return results

    def _record(self, pool: str, source: str, server: str, result: Any) -> None:
        """Counts a failure and logs a target once when it starts failing and once when it recovers."""
        key = (pool, source, server)
        where = f"pool={pool} {source}" + (f" server={server}" if server else "")
        if isinstance(result, BaseException):
            kind = _kind(result)
            self._count(pool, source, kind)
            with self._lock:
                previous = self._failing.get(key)
                self._failing[key] = kind
            if previous is None:
                log.warning("%s failed (%s): %s", where, kind, _describe(result))
            elif previous != kind:
                log.debug("%s still failing, now %s: %s", where, kind, _describe(result))
        else:
            with self._lock:
                previous = self._failing.pop(key, None)
            if previous is not None:
                log.info("%s recovered", where)

    def _count(self, pool: str, source: str, kind: str) -> None:
        with self._lock:
            key = (pool, source, kind)
            self._errors[key] = self._errors.get(key, 0) + 1


class TimeoutError_Exporter(ClientError):  # noqa: N801 - mirrors divims.errors.TimeoutError_
    """A call the poller stopped waiting for: it ran past the per-target timeout or the cycle's budget."""

    kind = KIND_TIMEOUT

    def __init__(self, key: tuple[str, str, str], limit: float, still_running: bool = False):
        message = ("the previous call is still running" if still_running
                   else f"no answer within {limit:.1f}s")
        super().__init__(key[1], key[2] or key[0], message)


def _timed(fn: Callable[[], list[Meeting]]) -> tuple[list[Meeting], float]:
    t0 = time.monotonic()
    meetings = fn()
    return meetings, time.monotonic() - t0


def _kind(exc: BaseException) -> str:
    return exc.kind if isinstance(exc, ClientError) else KIND_UNEXPECTED


def _describe(exc: BaseException) -> str:
    # ClientError messages are written to be safe (no secret); anything else may carry a URL with a
    # checksum, so only its type is told.
    if isinstance(exc, ClientError):
        return exc.message
    return f"unexpected {type(exc).__name__}"


def _fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def _close(client: object) -> None:
    close = getattr(client, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # closing a dead connection may fail; nothing to do about it
            log.debug("closing a client failed", exc_info=True)


def _better(vm: VM, other: VM) -> bool:
    """True when `vm` represents its slot better than `other`: more alive, then more recent."""
    return (_STATE_RANK.get(vm.state, 9), -vm.creation_date) < (_STATE_RANK.get(other.state, 9),
                                                              -other.creation_date)
