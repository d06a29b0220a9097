"""One pool's Scaleway Instances over the official SDK (`scaleway` 2.12.0), with timeouts and bounded retries.

Mechanics worth knowing:
- Timeouts. The SDK sends every request through `API._request`, which calls `requests.request(...)` with
  no timeout. That method is the SDK's one transport hook, so `_TimedTransport` overrides it (same headers,
  params, body and X-Total-Count handling) to send through a per-thread `requests.Session` with
  `timeout=(connect, read)`. A stuck server therefore raises `requests.Timeout` in the calling thread; no
  thread is left behind. It also maps HTTP errors to `divims.errors` right there, with the status and
  Scaleway's `{"message", "type"}` body, and without the secret key.
- Retries. 429, 5xx, timeouts and connection errors are retried by `divims.retry.retry_call` (backoff with
  jitter, Retry-After honoured, an overall deadline). Actions are made idempotent: an action refused
  because the server is already where the action leads (a retried poweron after a timed-out one) counts
  as done.
- Create is never blindly retried: see `ScalewayCloud.create_server`.
- SBS volumes. `terminate` leaves SBS volumes behind (and flexible IPs). They live in the Block API, which
  has tags: divims tags every SBS volume of a server with the pool/slot tags right after creating it
  (and again before terminating it, in case a crash came in between), and `list_volumes` lists the Block
  volumes tagged `divims-pool=<pool>`, attached or not. So volumes left by a crash are found next cycle.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import requests
from scaleway import Client
from scaleway.block.v1alpha1 import BlockV1Alpha1API
from scaleway.instance.v1 import ServerAction
from scaleway.instance.v1.custom_api import InstanceUtilsV1API
from scaleway_core.api import Body, Params

from divims.errors import (
    APIError,
    AuthError,
    ClientError,
    ConfigError,
    NotFoundError,
    ProtocolError,
    TimeoutError_,
    TransientError,
)
from divims.model import TAG_MANAGED, VM, FlexibleIP, VMState, Volume, pool_tags
from divims.retry import retry_call

log = logging.getLogger(__name__)

T = TypeVar("T")
SERVICE = "scaleway"
PAGE_SIZE = 100  # the API's maximum
MAX_PAGES = 1000  # a guard against a server that never answers an empty page
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value).timestamp()
    return 0.0


class _TimedTransport:
    """Overrides the SDK's `API._request` to bound every request in time and map errors (see module doc)."""

    client: Client
    _timeout: tuple[float, float] = (10.0, 10.0)
    _local: threading.local

    def _session(self) -> requests.Session:
        # requests.Session is not documented as thread-safe: one per thread, keep-alive within a thread.
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _request(self, method: str, path: str, params: Params = {},  # noqa: B006 - the SDK's signature
                 headers: dict[str, str] = {}, body: Body | None = None) -> requests.Response:  # noqa: B006
        method = method.upper()
        extra: dict[str, str] = {}
        if method in ("POST", "PUT", "PATCH"):
            extra["Content-Type"] = "application/json; charset=utf-8"
        raw_body = body if isinstance(body, bytes) else json.dumps({} if body is None else body)
        query: list[tuple[str, Any]] = []
        for k, v in params.items():
            if v is None:
                continue
            if isinstance(v, list):
                query.extend((k, item) for item in v)
            else:
                query.append((k, v))
        all_headers = {"accept": "application/json", "user-agent": self.client.user_agent, **extra, **headers}
        secret = self.client.secret_key
        if secret is not None:
            all_headers["x-auth-token"] = secret
        where = f"{method} {path}"
        try:
            res = self._session().request(method, f"{self.client.api_url}{path}", params=query,
                                          headers=all_headers, data=raw_body, timeout=self._timeout,
                                          verify=not self.client.api_allow_insecure)
        except requests.Timeout:
            raise TimeoutError_(SERVICE, path, f"{method}: no answer within {self._timeout[1]:g} s") from None
        except requests.ConnectionError as e:
            raise TransientError(SERVICE, path, f"{method}: connection failed ({type(e).__name__})") from None
        except requests.RequestException as e:
            raise TransientError(SERVICE, path, f"{method}: {type(e).__name__}") from None
        if res.status_code >= 400:
            raise _http_error(res, where, path, secret)
        if res.headers.get("x-total-count"):
            # As the SDK does: the pagination total travels in the body for the unmarshaller.
            try:
                data = res.json()
            except ValueError:
                raise ProtocolError(SERVICE, path, f"{method}: answer is not JSON") from None
            data["total_count"] = res.headers["x-total-count"]
            res._content = json.dumps(data).encode()
        return res


def _http_error(res: requests.Response, where: str, path: str, secret: str | None) -> ClientError:
    """The divims error for an HTTP error answer: Scaleway's message and type, never the secret."""
    try:
        data = res.json()
    except ValueError:
        data = None
    message = type_ = ""
    if isinstance(data, dict):
        message = str(data.get("message", ""))
        type_ = str(data.get("type", ""))
        if data.get("fields"):
            message += f" {data['fields']}"
    status = res.status_code
    text = _scrub(f"{where}: HTTP {status}" + (f" {message}" if message else ""), secret)
    key = _scrub(type_, secret)
    if status == 429 or status >= 500:
        err = TransientError(SERVICE, path, text)
        retry_after = res.headers.get("Retry-After", "")
        if retry_after.replace(".", "", 1).isdigit():
            err.retry_after = float(retry_after)  # type: ignore[attr-defined]
        return err
    if status in (401, 403):
        return AuthError(SERVICE, path, text)
    if status == 404:
        return NotFoundError(SERVICE, path, text)
    return APIError(SERVICE, path, text, key=key)


class _InstanceAPI(_TimedTransport, InstanceUtilsV1API):
    pass


class _BlockAPI(_TimedTransport, BlockV1Alpha1API):
    pass


class ScalewayCloud:
    """`divims.clients.protocols.Cloud` for one pool: its servers, volumes and flexible IPs in one zone.

    Credentials come the SDK's way (`Client.from_config_file_and_env()`: SCW_ACCESS_KEY / SCW_SECRET_KEY,
    or the scw config file); zone, project and api_url come from the pool's configuration.
    """

    def __init__(self, *, pool: str, zone: str, project_id: str, image: str, commercial_type: str,
                 hostname_template: str = "bbb-{n}", api_url: str | None = None,
                 timeout_seconds: float = 10.0, max_retries: int = 4, allow_insecure: bool = False,
                 flexible_ips: bool = False, client: Client | None = None,
                 base_delay: float = 0.5, max_delay: float = 8.0, deadline_seconds: float | None = None,
                 catalog_ttl_seconds: float = 3600.0, sleep: Callable[[float], None] = time.sleep):
        if "{n}" not in hostname_template:
            raise ConfigError([f"pools.{pool}.scaleway.hostname_template: must contain {{n}}"])
        self.pool = pool
        self.zone = zone
        self.project_id = project_id
        self.image = image
        self.commercial_type = commercial_type
        self.hostname_template = hostname_template
        self.flexible_ips = flexible_ips
        self.timeout_seconds = float(timeout_seconds)
        self.attempts = max_retries + 1
        self.base_delay = base_delay
        self.max_delay = max_delay
        # Room for a few full timeouts plus the pauses between them, well inside a scaler cycle.
        self.deadline_seconds = deadline_seconds if deadline_seconds is not None else 3 * self.timeout_seconds
        self.catalog_ttl_seconds = catalog_ttl_seconds
        self._sleep = sleep

        if client is None:
            client = Client.from_config_file_and_env()
        client.default_zone = zone
        client.default_project_id = project_id
        # The project decides; an organization from the environment would only narrow list filters.
        client.default_organization_id = None
        if api_url:
            client.api_url = api_url.rstrip("/")
        client.api_allow_insecure = allow_insecure
        self._secret = client.secret_key
        try:
            client.validate()
        except ValueError as e:
            raise ConfigError([f"pools.{pool}.scaleway: {_scrub(str(e), self._secret)}"]) from None
        self._client = client
        self.instance = _InstanceAPI(client, bypass_validation=True)
        self.block = _BlockAPI(client, bypass_validation=True)
        local = threading.local()
        for api in (self.instance, self.block):
            api._timeout = (self.timeout_seconds, self.timeout_seconds)
            api._local = local
        head, _, tail = hostname_template.partition("{n}")
        self._name_re = re.compile(re.escape(head) + r"(\d+)" + re.escape(tail))
        # The API's name filter is a substring match: filter on the longest literal part, then match exactly.
        self._name_filter = max(head, tail, key=len)
        self._image_id: str | None = None
        self._catalog: dict[str, float] = {}
        self._catalog_at = float("-inf")
        self._lock = threading.Lock()

    @classmethod
    def from_pool(cls, pool_cfg: Any, pool_name: str | None = None, *, client: Client | None = None
                  ) -> ScalewayCloud:
        """Builds the client from a `divims.config.PoolConfig` (`pool.scaleway.*`)."""
        sw = pool_cfg.scaleway
        return cls(pool=pool_name or pool_cfg.name, zone=sw.zone, project_id=sw.project_id, image=sw.image,
                   commercial_type=sw.commercial_type, hostname_template=sw.hostname_template,
                   api_url=sw.api_url, timeout_seconds=sw.timeout_seconds, max_retries=sw.max_retries,
                   allow_insecure=sw.allow_insecure, flexible_ips=sw.flexible_ips, client=client)

    def close(self) -> None:
        """Closes this thread's HTTP session (each thread keeps one for keep-alive)."""
        session = getattr(self.instance._local, "session", None)
        if session is not None:
            session.close()
            self.instance._local.session = None

    def __repr__(self) -> str:
        return f"ScalewayCloud(pool={self.pool!r}, zone={self.zone!r}, api_url={self._client.api_url!r})"

    # --- plumbing ---------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """`fn` with bounded retries on transient errors; unmarshalling trouble becomes ProtocolError."""
        def once() -> T:
            try:
                return fn()
            except ClientError:
                raise
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                raise ProtocolError(SERVICE, what, f"unexpected answer ({type(e).__name__})") from None

        def on_retry(attempt: int, error: BaseException, delay: float) -> None:
            log.warning("pool=%s scaleway %s: attempt %d failed (%s), retrying in %.2f s",
                        self.pool, what, attempt, error, delay)

        return retry_call(once, attempts=self.attempts, base_delay=self.base_delay, max_delay=self.max_delay,
                          deadline_seconds=self.deadline_seconds, sleep=self._sleep, on_retry=on_retry)

    def _pages(self, what: str, fetch: Callable[[int], tuple[list[T], int | None]]) -> list[T]:
        """Every item of a paged list, each page with its own retries; stops at an empty page or the total."""
        items: list[T] = []
        for page in range(1, MAX_PAGES + 1):
            batch, total = self._call(f"{what} page {page}", lambda p=page: fetch(p))
            items.extend(batch)
            if not batch or (total is not None and len(items) >= total):
                return items
        raise ProtocolError(SERVICE, what, f"more than {MAX_PAGES} pages")

    def _to_vm(self, s: Any) -> VM:
        volumes = tuple(Volume(id=v.id, volume_type=str(v.volume_type), size_bytes=int(v.size or 0),
                               server_id=s.id) for _, v in sorted((s.volumes or {}).items()))
        ip = s.public_ip.address if s.public_ip else next((p.address for p in s.public_ips or []), None)
        return VM(id=s.id, name=s.name, state=VMState.parse(s.state), commercial_type=s.commercial_type,
                  zone=str(s.zone or self.zone), tags=tuple(s.tags or ()),
                  creation_date=_epoch(s.creation_date), modification_date=_epoch(s.modification_date),
                  public_ip=ip, volumes=volumes, maintenances=len(s.maintenances or []))

    def _pool_tag(self) -> str:
        return f"divims-pool={self.pool}"

    # --- servers ----------------------------------------------------------------------------------
    def _list(self, **filters: Any) -> list[Any]:
        def fetch(page: int) -> tuple[list[Any], int | None]:
            r = self.instance.list_servers(page=page, per_page=PAGE_SIZE, project=self.project_id, **filters)
            return list(r.servers), int(r.total_count) if r.total_count is not None else None
        return self._pages("list servers", fetch)

    def list_servers(self) -> list[VM]:
        """The pool's servers, all pages: tagged `divims-pool=<pool>`, plus (for adopting a DiViMS pool)
        servers named exactly by hostname_template that carry no other pool's tag."""
        found = {s.id: s for s in self._list(tags=[self._pool_tag()])}
        for s in self._list(name=self._name_filter or None):
            tags = s.tags or []
            other_pool = any(t.startswith("divims-pool=") for t in tags)
            if s.id not in found and not other_pool and self._name_re.fullmatch(s.name or ""):
                found[s.id] = s
        vms = [self._to_vm(s) for s in found.values()]
        return sorted(vms, key=lambda v: (v.name, v.id))

    def get_server(self, server_id: str) -> VM | None:
        try:
            s = self._call(f"get server {server_id}", lambda: self.instance.get_server(server_id=server_id).server)
        except NotFoundError:
            return None
        return self._to_vm(s)

    def _find_created(self, name: str, slot: int) -> VM | None:
        tags = [self._pool_tag(), f"divims-slot={slot}"]
        matches = [s for s in self._list(name=name, tags=tags) if s.name == name]
        return self._to_vm(matches[0]) if matches else None

    def _resolve_image(self) -> str:
        """The image id: `image` itself when it is a UUID, else the newest image of that exact name."""
        if self._image_id is not None:
            return self._image_id
        if _UUID.match(self.image):
            self._image_id = self.image
            return self._image_id

        def fetch(page: int) -> tuple[list[Any], int | None]:
            r = self.instance.list_images(page=page, per_page=PAGE_SIZE, name=self.image)
            return list(r.images), int(r.total_count) if r.total_count is not None else None
        images = [i for i in self._pages("list images", fetch) if i.name == self.image]
        if not images:
            raise NotFoundError(SERVICE, f"image {self.image}",
                                f"no image named {self.image!r} in zone {self.zone}")
        own = [i for i in images if i.project == self.project_id] or images
        self._image_id = max(own, key=lambda i: (_epoch(i.creation_date), i.id)).id
        return self._image_id

    def create_server(self, name: str, slot: int) -> VM:
        """Creates the slot's VM (pool image and commercial type, tags `divims`, `divims-pool=<pool>`,
        `divims-slot=<slot>`); it starts `stopped`, and its SBS volumes get the same tags.

        Idempotent: a create that failed transiently (a timeout, a 5xx) may have succeeded, so before every
        new attempt, and before the first one, it looks for a server with this name and slot tags and
        returns that one instead of creating a second. A create is therefore never blindly retried.
        """
        image_id = self._resolve_image()
        tags = list(pool_tags(self.pool, slot))
        attempt = 0

        def once() -> VM:
            nonlocal attempt
            attempt += 1
            existing = self._find_created(name, slot)
            if existing is not None:
                if attempt > 1:
                    log.warning("pool=%s server=%s: an earlier create that failed did succeed (%s)",
                                self.pool, name, existing.id)
                else:
                    log.info("pool=%s server=%s: already exists (%s), not creating", self.pool, name,
                             existing.id)
                return existing
            r = self.instance.create_server(commercial_type=self.commercial_type, name=name, image=image_id,
                                            tags=tags, project=self.project_id,
                                            dynamic_ip_required=not self.flexible_ips)
            return self._to_vm(r.server)

        def on_retry(n: int, error: BaseException, delay: float) -> None:
            log.warning("pool=%s server=%s: create attempt %d failed (%s); will look for it before retrying"
                        " in %.2f s", self.pool, name, n, error, delay)

        vm = retry_call(once, attempts=self.attempts, base_delay=self.base_delay, max_delay=self.max_delay,
                        deadline_seconds=self.deadline_seconds, sleep=self._sleep, on_retry=on_retry)
        self._tag_volumes(vm, slot)
        log.info("pool=%s server=%s: created %s (%s)", self.pool, name, vm.id, vm.state)
        return vm

    def _tag_volumes(self, vm: VM, slot: int | None) -> None:
        """Tags the VM's SBS volumes for the pool/slot, so they can be found once terminate detaches them.
        Best effort: a failure is logged, and retried at terminate."""
        if slot is None:
            slot = self._slot_of(vm)
        tags = list(pool_tags(self.pool, slot)) if slot is not None else [TAG_MANAGED, self._pool_tag()]
        for vol in vm.volumes:
            if vol.volume_type != "sbs_volume":
                continue
            try:
                current = self._call(f"get volume {vol.id}", lambda v=vol.id: self.block.get_volume(volume_id=v))
                if all(t in current.tags for t in tags):
                    continue
                merged = list(dict.fromkeys([*current.tags, *tags]))
                self._call(f"tag volume {vol.id}",
                           lambda v=vol.id, m=merged: self.block.update_volume(volume_id=v, tags=m))
            except ClientError as e:
                log.warning("pool=%s server=%s: could not tag volume %s: %s", self.pool, vm.name, vol.id, e)

    def _slot_of(self, vm: VM) -> int | None:
        if vm.slot is not None:
            return vm.slot
        m = self._name_re.fullmatch(vm.name)
        return int(m.group(1)) if m else None

    def _action(self, server_id: str, action: ServerAction, done: set[VMState]) -> None:
        """Sends an action; a refusal because the server is already in (or heading to) `done` counts as
        success, so a retry after a timed-out action that went through is harmless."""
        what = f"{action.value} {server_id}"
        try:
            self._call(what, lambda: self.instance.server_action(server_id=server_id, action=action))
        except APIError:
            vm = self.get_server(server_id)
            if vm is None or vm.state not in done:
                raise
            log.info("pool=%s server=%s: %s already done (%s)", self.pool, vm.name, action.value, vm.state)
            return
        log.info("pool=%s server=%s: %s sent", self.pool, server_id, action.value)

    def poweron(self, server_id: str) -> None:
        self._action(server_id, ServerAction.POWERON, {VMState.STARTING, VMState.RUNNING})

    def poweroff(self, server_id: str) -> None:
        self._action(server_id, ServerAction.POWEROFF, {VMState.STOPPING, VMState.STOPPED})

    def terminate(self, server_id: str) -> None:
        """Deletes the VM and its local volumes; SBS volumes (tagged for the pool first) and flexible IPs
        stay behind, for `list_volumes` / `list_ips` and `delete_volume` / `delete_ip`.
        A running (or stopped-in-place) server gets the `terminate` action; a stopped one, which the API
        does not let terminate, is deleted and its local volumes removed. A server already gone is fine."""
        vm = self.get_server(server_id)
        if vm is None:
            log.info("pool=%s server=%s: already gone", self.pool, server_id)
            return
        self._tag_volumes(vm, None)
        if vm.state in (VMState.RUNNING, VMState.STOPPED_IN_PLACE):
            self._action(server_id, ServerAction.TERMINATE, {VMState.STOPPING})
        elif vm.state == VMState.STOPPED:
            try:
                self._call(f"delete server {server_id}", lambda: self.instance.delete_server(server_id=server_id))
            except NotFoundError:
                pass  # a retried delete whose first attempt went through
            for vol in vm.volumes:
                if vol.volume_type != "sbs_volume":
                    self.delete_volume(vol.id)
        else:
            raise APIError(SERVICE, server_id, f"server {vm.name} is {vm.state.value}: terminate it once it "
                           "is running or stopped", key="invalid_state")
        log.info("pool=%s server=%s: terminating %s", self.pool, vm.name, server_id)

    # --- volumes ----------------------------------------------------------------------------------
    def list_volumes(self) -> list[Volume]:
        """The pool's SBS volumes (Block API, tagged `divims-pool=<pool>`), attached or left behind."""
        def fetch(page: int) -> tuple[list[Any], int | None]:
            r = self.block.list_volumes(page=page, page_size=PAGE_SIZE, project_id=self.project_id,
                                        tags=[self._pool_tag()])
            return list(r.volumes), int(r.total_count) if r.total_count is not None else None
        out = []
        for v in self._pages("list volumes", fetch):
            server = next((r.product_resource_id for r in v.references or []
                           if r.product_resource_type == "instance_server" and r.status == "attached"), None)
            out.append(Volume(id=v.id, volume_type="sbs_volume", size_bytes=int(v.size or 0), server_id=server))
        return out

    def delete_volume(self, volume_id: str) -> None:
        """Deletes a detached volume (Block API, or a local one through the Instance API); gone is fine."""
        try:
            self._call(f"delete volume {volume_id}", lambda: self.block.delete_volume(volume_id=volume_id))
        except NotFoundError:
            try:
                self._call(f"delete volume {volume_id}",
                           lambda: self.instance.delete_volume(volume_id=volume_id))
            except NotFoundError:
                log.info("pool=%s volume=%s: already gone", self.pool, volume_id)
                return
        log.info("pool=%s volume=%s: deleted", self.pool, volume_id)

    # --- flexible IPs -----------------------------------------------------------------------------
    @staticmethod
    def _to_ip(ip: Any) -> FlexibleIP:
        return FlexibleIP(id=ip.id, address=ip.address or "", server_id=ip.server.id if ip.server else None,
                          tags=tuple(ip.tags or ()))

    def list_ips(self) -> list[FlexibleIP]:
        def fetch(page: int) -> tuple[list[Any], int | None]:
            r = self.instance.list_ips(page=page, per_page=PAGE_SIZE, project=self.project_id,
                                       tags=[self._pool_tag()])
            return list(r.ips), int(r.total_count) if r.total_count is not None else None
        return [self._to_ip(ip) for ip in self._pages("list ips", fetch)]

    def create_ip(self, slot: int) -> FlexibleIP:
        """A routed IPv4 tagged for the slot. Like create_server, a failed attempt is followed by a look for
        an unattached IP of that slot before trying again, so a timed-out create does not leak an IP."""
        tags = list(pool_tags(self.pool, slot))
        attempt = 0

        def once() -> FlexibleIP:
            nonlocal attempt
            attempt += 1
            if attempt > 1:
                for ip in self.list_ips():
                    if ip.server_id is None and f"divims-slot={slot}" in ip.tags:
                        return ip
            r = self.instance.create_ip(project=self.project_id, tags=tags, type_="routed_ipv4")
            return self._to_ip(r.ip)

        ip = retry_call(once, attempts=self.attempts, base_delay=self.base_delay, max_delay=self.max_delay,
                        deadline_seconds=self.deadline_seconds, sleep=self._sleep)
        log.info("pool=%s slot=%d: flexible IP %s (%s)", self.pool, slot, ip.address, ip.id)
        return ip

    def attach_ip(self, ip_id: str, server_id: str) -> None:
        self._call(f"attach ip {ip_id}", lambda: self.instance.update_ip(ip=ip_id, server=server_id))
        log.info("pool=%s server=%s: flexible IP %s attached", self.pool, server_id, ip_id)

    def delete_ip(self, ip_id: str) -> None:
        """Releases a flexible IP (not part of the Cloud protocol yet); an IP already gone is fine."""
        try:
            self._call(f"delete ip {ip_id}", lambda: self.instance.delete_ip(ip=ip_id))
        except NotFoundError:
            log.info("pool=%s ip=%s: already gone", self.pool, ip_id)
            return
        log.info("pool=%s ip=%s: released", self.pool, ip_id)

    # --- catalog ----------------------------------------------------------------------------------
    def hourly_price(self, commercial_type: str) -> float | None:
        """EUR per hour from `GET /instance/v1/zones/{zone}/products/servers`, cached for
        `catalog_ttl_seconds`; None for a type the catalog does not list."""
        with self._lock:
            fresh = time.monotonic() - self._catalog_at < self.catalog_ttl_seconds
        if not fresh:
            catalog: dict[str, float] = {}
            for page in range(1, MAX_PAGES + 1):
                r = self._call(f"list server types page {page}",
                               lambda p=page: self.instance.list_servers_types(page=p, per_page=PAGE_SIZE))
                catalog.update({name: float(t.hourly_price) for name, t in (r.servers or {}).items()})
                total = int(r.total_count) if r.total_count is not None else None
                if not r.servers or (total is not None and len(catalog) >= total):
                    break
            with self._lock:
                self._catalog, self._catalog_at = catalog, time.monotonic()
        return self._catalog.get(commercial_type)

