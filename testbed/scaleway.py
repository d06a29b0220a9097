"""A fake Scaleway speaking Instance API v1 (and the Block API's volumes) over real HTTP on loopback.

Shapes follow the official SDK's recorded cassettes (scaleway-sdk-python, instance/v1/tests/cassettes):
create answers 201 with the server `stopped`, `allowed_actions` and a Location header; SBS entries of a
server's `volumes` map carry only id/volume_type/zone/boot; lists carry `X-Total-Count` and answer an
empty page after the last one; errors are JSON `{"message": ..., "type": ...}`.

Volumes: on real Scaleway, SBS volumes live in the Block API (`/block/v1alpha1/zones/{zone}/volumes`) and the
Instance API's `/volumes` only knows local (l_ssd) volumes. The fake does the same, from the one
`world.volumes` table.

State lives in `testbed.world.World`; this module holds only the wire format. Faults come from
`world.faults["scaleway"]` and are applied to every request.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from testbed.world import (
    LOCKED,
    RUNNING,
    STARTING,
    STOPPED,
    STOPPED_IN_PLACE,
    STOPPING,
    FakeImage,
    FakeIP,
    FakeVM,
    FakeVolume,
    World,
)

log = logging.getLogger(__name__)

# name -> (hourly EUR, ncpus, ram bytes). A few real commercial types, with prices near the public ones.
DEFAULT_CATALOG: dict[str, tuple[float, int, int]] = {
    "DEV1-S": (0.0088, 2, 2 * 1024**3),
    "DEV1-M": (0.0198, 3, 4 * 1024**3),
    "GP1-XS": (0.091, 4, 16 * 1024**3),
    "PRO2-XS": (0.08, 4, 16 * 1024**3),
    "PRO2-S": (0.16, 8, 32 * 1024**3),
    "PRO2-M": (0.319, 16, 64 * 1024**3),
    "PRO2-L": (0.639, 32, 128 * 1024**3),
}

# What the API allows in each state (the cassettes show ["poweron", "backup"] for a stopped server).
ALLOWED_ACTIONS: dict[str, list[str]] = {
    RUNNING: ["poweroff", "terminate", "reboot", "stop_in_place", "backup"],
    STOPPED: ["poweron", "backup"],
    STOPPED_IN_PLACE: ["poweron", "poweroff", "terminate", "backup"],
    STARTING: [],
    STOPPING: [],
    LOCKED: [],
}
ACTIONS = ("poweron", "poweroff", "stop_in_place", "reboot", "terminate", "backup", "enable_routed_ip")

_ZONE = r"(?P<zone>[a-z]{2}-[a-z]{3}-\d)"
_ID = r"(?P<id>[^/]+)"


def iso(ts: float | None) -> str | None:
    """Epoch seconds as Scaleway writes dates: RFC 3339 with microseconds and +00:00."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


class ApiError(Exception):
    """An error answer: status and Scaleway's JSON body."""

    def __init__(self, status: int, message: str, type_: str, **extra: Any):
        super().__init__(message)
        self.status = status
        self.body = {"message": message, "type": type_, **extra}


def not_found(resource: str, resource_id: str) -> ApiError:
    return ApiError(404, "resource is not found", "not_found", resource=resource, resource_id=resource_id)


class FakeScaleway:
    """The fake Scaleway API. `token` (the secret key) is required in X-Auth-Token when set."""

    def __init__(self, world: World, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 catalog: dict[str, tuple[float, int, int]] | None = None, seed: int = 0):
        self.world = world
        self.token = token
        self.catalog = dict(catalog or DEFAULT_CATALOG)
        self.requests: list[tuple[str, str, str]] = []  # (method, path, query) of every request, for tests
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., tuple[int, Any, dict[str, str]]]]] = [
            ("GET", re.compile(rf"/instance/v1/zones/{_ZONE}/servers"), self._list_servers),
            ("POST", re.compile(rf"/instance/v1/zones/{_ZONE}/servers"), self._create_server),
            ("GET", re.compile(rf"/instance/v1/zones/{_ZONE}/servers/{_ID}"), self._get_server),
            ("PATCH", re.compile(rf"/instance/v1/zones/{_ZONE}/servers/{_ID}"), self._update_server),
            ("DELETE", re.compile(rf"/instance/v1/zones/{_ZONE}/servers/{_ID}"), self._delete_server),
            ("POST", re.compile(rf"/instance/v1/zones/{_ZONE}/servers/{_ID}/action"), self._server_action),
            ("GET", re.compile(rf"/instance/v1/zones/{_ZONE}/images"), self._list_images),
            ("GET", re.compile(rf"/instance/v1/zones/{_ZONE}/images/{_ID}"), self._get_image),
            ("GET", re.compile(rf"/instance/v1/zones/{_ZONE}/ips"), self._list_ips),
            ("POST", re.compile(rf"/instance/v1/zones/{_ZONE}/ips"), self._create_ip),
            ("GET", re.compile(rf"/instance/v1/zones/{_ZONE}/ips/{_ID}"), self._get_ip),
            ("PATCH", re.compile(rf"/instance/v1/zones/{_ZONE}/ips/{_ID}"), self._update_ip),
            ("DELETE", re.compile(rf"/instance/v1/zones/{_ZONE}/ips/{_ID}"), self._delete_ip),
            ("GET", re.compile(rf"/instance/v1/zones/{_ZONE}/volumes"), self._list_local_volumes),
            ("GET", re.compile(rf"/instance/v1/zones/{_ZONE}/volumes/{_ID}"), self._get_local_volume),
            ("PATCH", re.compile(rf"/instance/v1/zones/{_ZONE}/volumes/{_ID}"), self._update_local_volume),
            ("DELETE", re.compile(rf"/instance/v1/zones/{_ZONE}/volumes/{_ID}"), self._delete_local_volume),
            ("GET", re.compile(rf"/instance/v1/zones/{_ZONE}/products/servers"), self._list_products),
            ("GET", re.compile(rf"/block/v1alpha1/zones/{_ZONE}/volumes"), self._list_block_volumes),
            ("GET", re.compile(rf"/block/v1alpha1/zones/{_ZONE}/volumes/{_ID}"), self._get_block_volume),
            ("PATCH", re.compile(rf"/block/v1alpha1/zones/{_ZONE}/volumes/{_ID}"), self._update_block_volume),
            ("DELETE", re.compile(rf"/block/v1alpha1/zones/{_ZONE}/volumes/{_ID}"), self._delete_block_volume),
        ]

    # --- lifecycle ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeScaleway:
        # A short poll interval so that stop() (shutdown) returns quickly.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-scaleway", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving; requests that hang (fault knobs) are released at once."""
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeScaleway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- HTTP plumbing --------------------------------------------------------------------------
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "Scaleway API Gateway (fake)"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                log.debug("fake scaleway: " + format, *args)

            def _serve(self) -> None:
                fake._serve(self)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve

        return Handler

    def _fault(self) -> str | None:
        """Which fault hits this request: "down", "hang", "error" or None (knobs read under the lock)."""
        with self.world.lock:
            f = self.world.faults["scaleway"]
            if f.down:
                return "down"
            if f.hang_next > 0:
                f.hang_next -= 1
                return "hang"
            if f.timeout_rate and self._rng.random() < f.timeout_rate:
                return "hang"
            if f.fail_next > 0:
                f.fail_next -= 1
                return "error"
            if f.error_rate and self._rng.random() < f.error_rate:
                return "error"
        return None

    def _take(self, knob: str) -> bool:
        with self.world.lock:
            f = self.world.faults["scaleway"]
            if getattr(f, knob) > 0:
                setattr(f, knob, getattr(f, knob) - 1)
                return True
        return False

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        split = urlsplit(h.path)
        with self.world.lock:
            self.requests.append((h.command, split.path, split.query))
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        faults = self.world.faults["scaleway"]
        if faults.latency_seconds:
            self._stop.wait(faults.latency_seconds)
        fault = self._fault()
        if fault == "down":
            h.close_connection = True  # no answer at all: the client sees the connection drop
            return
        if fault == "hang":
            self._stop.wait(faults.hang_seconds)
            h.close_connection = True
            return
        try:
            if fault == "error":
                status = faults.error_status
                if status == 429:
                    raise ApiError(429, "too many requests", "too_many_requests")
                raise ApiError(status, "internal error", "internal_error" if status >= 500 else "unknown")
            if self.token is not None and h.headers.get("X-Auth-Token") != self.token:
                raise ApiError(401, "authentication is denied", "denied_authentication",
                               method="api_key", reason="invalid_argument")
            status, body, headers = self._dispatch(h.command, split.path, parse_qs(split.query), raw)
            if self._take("hang_after_next"):
                # Done, but the answer never comes: the client cannot know whether it worked.
                self._stop.wait(faults.hang_seconds)
                h.close_connection = True
                return
        except ApiError as e:
            status, body, headers = e.status, e.body, {}
        except Exception:  # a bug in the fake must still answer like an API, not hang the client
            log.exception("fake scaleway: %s %s failed", h.command, split.path)
            status, body, headers = 500, {"message": "internal error", "type": "internal_error"}, {}
        payload = b"" if body is None else json.dumps(body).encode()
        h.send_response(status)
        if body is not None:
            h.send_header("Content-Type", "application/json")
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        if payload:
            h.wfile.write(payload)

    def _dispatch(self, method: str, path: str, query: dict[str, list[str]], raw: bytes
                  ) -> tuple[int, Any, dict[str, str]]:
        path = path.rstrip("/")
        path_matched = False
        for m, pattern, fn in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            path_matched = True
            if m != method:
                continue
            if match["zone"] != self.world.zone:
                raise ApiError(404, f"zone {match['zone']} is not available", "not_found")
            body: dict[str, Any] = {}
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise ApiError(400, "request body is not valid JSON", "invalid_request_error") from None
                if not isinstance(body, dict):
                    raise ApiError(400, "request body must be a JSON object", "invalid_request_error")
            # Instance lists send tags comma-separated, the Block API repeats the parameter: accept both.
            q = {k: ",".join(v) if k == "tags" else v[-1] for k, v in query.items()}
            self.world.advance()
            with self.world.lock:
                args = [match["id"]] if "id" in pattern.groupindex else []
                return fn(*args, q=q, body=body)
        if path_matched:
            raise ApiError(405, "method not allowed", "method_not_allowed")
        raise ApiError(404, "route not found", "not_found")

    # --- pagination and filters -----------------------------------------------------------------
    @staticmethod
    def _page(items: list[Any], q: dict[str, str], size_key: str = "per_page", default: int = 50
              ) -> tuple[list[Any], int]:
        """One page of `items` (1-based `page`); a page after the last is empty, as the SDK expects."""
        try:
            page = int(q.get("page", "1"))
            size = int(q.get(size_key, str(default)))
        except ValueError:
            raise ApiError(400, "Validation Error", "invalid_arguments",
                           fields={"page": ["must be an integer"]}) from None
        if page < 1 or not 1 <= size <= 100:
            raise ApiError(400, "Validation Error", "invalid_arguments",
                           fields={size_key: ["must be between 1 and 100"], "page": ["must be >= 1"]})
        return items[(page - 1) * size: page * size], len(items)

    @staticmethod
    def _has_tags(tags: list[str], q: dict[str, str]) -> bool:
        wanted = [t for t in q.get("tags", "").split(",") if t]
        return all(t in tags for t in wanted)

    def _project_ok(self, project: str, q: dict[str, str], key: str = "project") -> bool:
        if q.get(key) and q[key] != project:
            return False
        org = q.get("organization") or q.get("organization_id")
        return not org or org == self.world.organization_id

    # --- JSON shapes ----------------------------------------------------------------------------
    def _image_json(self, image: FakeImage) -> dict[str, Any]:
        return {
            "id": image.id, "name": image.name, "arch": "x86_64",
            "organization": self.world.organization_id, "project": image.project,
            "root_volume": {"id": image.id + "-root", "name": image.name, "volume_type": image.volume_type,
                            "size": image.size},
            "extra_volumes": {}, "public": False, "creation_date": iso(0.0), "modification_date": iso(0.0),
            "default_bootscript": None, "from_server": "", "state": "available", "tags": [],
            "zone": image.zone,
        }

    def _server_volume_json(self, vol: FakeVolume, vm: FakeVM) -> dict[str, Any]:
        if vol.volume_type == "sbs_volume":  # as the cassettes show: only these four fields
            return {"boot": False, "id": vol.id, "volume_type": "sbs_volume", "zone": vol.zone}
        return {
            "boot": False, "id": vol.id, "name": vol.name, "volume_type": vol.volume_type,
            "export_uri": None, "organization": self.world.organization_id, "project": vol.project,
            "server": {"id": vm.id, "name": vm.name}, "size": vol.size, "state": "available",
            "creation_date": iso(vol.creation_date), "modification_date": iso(vol.creation_date),
            "tags": list(vol.tags), "zone": vol.zone,
        }

    def _server_ip_json(self, ip: FakeIP) -> dict[str, Any]:
        return {"id": ip.id, "address": ip.address, "gateway": "62.210.0.1", "netmask": "32",
                "family": "inet", "dynamic": False, "provisioning_mode": "dhcp", "tags": list(ip.tags),
                "ipam_id": ip.id, "state": "attached"}

    def _server_json(self, vm: FakeVM) -> dict[str, Any]:
        w = self.world
        image = w.images.get(vm.image_id)
        ip = w.ips.get(vm.public_ip_id) if vm.public_ip_id else None
        volumes = {str(i): self._server_volume_json(w.volumes[vid], vm)
                   for i, vid in enumerate(v for v in vm.volume_ids if v in w.volumes)}
        detail = {RUNNING: "booted", STARTING: "provisioning node"}.get(vm.state, "")
        return {
            "id": vm.id, "name": vm.name, "arch": "x86_64", "commercial_type": vm.commercial_type,
            "boot_type": "local", "organization": w.organization_id, "project": vm.project,
            "hostname": vm.name, "image": self._image_json(image) if image else None,
            "volumes": volumes, "tags": list(vm.tags), "state": vm.state, "protected": False,
            "state_detail": detail, "public_ip": self._server_ip_json(ip) if ip else None,
            "public_ips": [self._server_ip_json(ip)] if ip else [], "mac_address": "de:00:00:00:00:01",
            "routed_ip_enabled": True, "ipv6": None, "extra_networks": [], "dynamic_ip_required": False,
            "enable_ipv6": False, "private_ip": None, "creation_date": iso(vm.creation_date),
            "modification_date": iso(vm.modification_date), "bootscript": None,
            "security_group": {"id": "00000000-0000-4000-8000-000000000001", "name": "Default security group"},
            "location": None, "maintenances": list(vm.maintenances),
            "allowed_actions": list(ALLOWED_ACTIONS.get(vm.state, [])), "placement_group": None,
            "private_nics": [], "zone": vm.zone, "filesystems": [], "end_of_service": False,
        }

    def _ip_json(self, ip: FakeIP) -> dict[str, Any]:
        vm = self.world.vms.get(ip.server_id) if ip.server_id else None
        return {"id": ip.id, "address": ip.address, "prefix": None, "reverse": None,
                "server": {"id": vm.id, "name": vm.name} if vm else None,
                "organization": self.world.organization_id, "project": ip.project, "zone": ip.zone,
                "type": "routed_ipv4", "state": "attached" if vm else "detached", "tags": list(ip.tags),
                "ipam_id": ip.id}

    def _local_volume_json(self, vol: FakeVolume) -> dict[str, Any]:
        vm = self.world.vms.get(vol.server_id) if vol.server_id else None
        return {"id": vol.id, "name": vol.name, "volume_type": vol.volume_type, "export_uri": None,
                "organization": self.world.organization_id, "project": vol.project,
                "server": {"id": vm.id, "name": vm.name} if vm else None, "size": vol.size,
                "state": "available", "creation_date": iso(vol.creation_date),
                "modification_date": iso(vol.creation_date), "tags": list(vol.tags), "zone": vol.zone}

    def _block_volume_json(self, vol: FakeVolume) -> dict[str, Any]:
        vm = self.world.vms.get(vol.server_id) if vol.server_id else None
        refs = ([{"id": vol.id + "-ref", "product_resource_type": "instance_server",
                  "product_resource_id": vm.id, "created_at": iso(vol.creation_date), "type": "exclusive",
                  "status": "attached"}] if vm else [])
        return {"id": vol.id, "name": vol.name, "type": "sbs_5k", "size": vol.size, "project_id": vol.project,
                "created_at": iso(vol.creation_date), "updated_at": iso(vol.creation_date),
                "references": refs, "parent_snapshot_id": None, "status": "in_use" if vm else "available",
                "tags": list(vol.tags), "specs": {"perf_iops": 5000, "class": "sbs"},
                "last_detached_at": None, "zone": vol.zone}

    def _server_type_json(self, name: str) -> dict[str, Any]:
        hourly, ncpus, ram = self.catalog[name]
        return {
            "monthly_price": round(hourly * 730, 2), "hourly_price": hourly, "alt_names": [],
            "per_volume_constraint": {"l_ssd": {"min_size": 0, "max_size": 0}},
            "volumes_constraint": {"min_size": 0, "max_size": 0}, "ncpus": ncpus, "ram": ram,
            "arch": "x86_64", "gpu": 0, "baremetal": False, "scratch_storage_max_size": None,
            "network": {"interfaces": [{"internal_bandwidth": 400000000, "internet_bandwidth": 400000000}],
                        "sum_internal_bandwidth": 400000000, "sum_internet_bandwidth": 400000000,
                        "ipv6_support": True},
            "capabilities": {"block_storage": True, "boot_types": ["local", "rescue"],
                             "max_file_systems": 0},
            "block_bandwidth": 419430400, "end_of_service": False,
        }

    # --- servers ----------------------------------------------------------------------------------
    def _vm(self, server_id: str) -> FakeVM:
        vm = self.world.vms.get(server_id)
        if vm is None:
            raise not_found("instance_server", server_id)
        return vm

    def _list_servers(self, *, q: dict[str, str], body: dict) -> tuple[int, Any, dict[str, str]]:
        vms = [vm for vm in self.world.vms.values()
               if self._project_ok(vm.project, q) and self._has_tags(vm.tags, q)
               and (not q.get("name") or q["name"] in vm.name)
               and (not q.get("state") or q["state"].replace("_", " ") == vm.state)
               and (not q.get("commercial_type") or q["commercial_type"] == vm.commercial_type)
               and (not q.get("servers") or vm.id in q["servers"].split(","))]
        order = q.get("order", "creation_date_desc")
        key = "modification_date" if order.startswith("modification") else "creation_date"
        vms.sort(key=lambda v: (getattr(v, key), v.id), reverse=order.endswith("desc"))
        page, total = self._page(vms, q)
        return 200, {"servers": [self._server_json(vm) for vm in page]}, {"X-Total-Count": str(total)}

    def _get_server(self, server_id: str, *, q: dict[str, str], body: dict) -> tuple[int, Any, dict[str, str]]:
        return 200, {"server": self._server_json(self._vm(server_id))}, {}

    def _create_server(self, *, q: dict[str, str], body: dict) -> tuple[int, Any, dict[str, str]]:
        missing = {k: ["required"] for k in ("commercial_type",) if not body.get(k)}
        if not (body.get("project") or body.get("organization")):
            missing["project"] = ["required"]
        if missing:
            raise ApiError(400, "Validation Error", "invalid_arguments", fields=missing)
        if body["commercial_type"] not in self.catalog:
            raise ApiError(400, f"commercial type {body['commercial_type']} is not available in this zone",
                           "invalid_request_error")
        image_id = body.get("image")
        if not image_id or image_id not in self.world.images:
            raise not_found("instance_image", str(image_id))
        tags = body.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ApiError(400, "Validation Error", "invalid_arguments", fields={"tags": ["must be strings"]})
        vm = self.world.create_vm(body.get("name") or f"scw-{self.world.new_id()[:8]}",
                                  body["commercial_type"], image_id, tags,
                                  project=body.get("project") or self.world.project_id)
        location = f"{self.url}/instance/v1/zones/{vm.zone}/servers/{vm.id}"
        return 201, {"server": self._server_json(vm)}, {"Location": location}

    def _update_server(self, server_id: str, *, q: dict[str, str], body: dict) -> tuple[int, Any, dict[str, str]]:
        vm = self._vm(server_id)
        if "name" in body:
            vm.name = str(body["name"])
        if "tags" in body:
            vm.tags = [str(t) for t in body["tags"]]
        return 200, {"server": self._server_json(vm)}, {}

    def _delete_server(self, server_id: str, *, q: dict[str, str], body: dict) -> tuple[int, Any, dict[str, str]]:
        vm = self._vm(server_id)
        if vm.state != STOPPED:
            raise ApiError(400, "instance should be powered off.", "invalid_request_error")
        self.world.delete_vm(vm)
        return 204, None, {}

    def _server_action(self, server_id: str, *, q: dict[str, str], body: dict) -> tuple[int, Any, dict[str, str]]:
        vm = self._vm(server_id)
        action = body.get("action") or "poweron"  # the API's default action
        if action not in ACTIONS:
            raise ApiError(400, "Validation Error", "invalid_arguments",
                           fields={"action": [f"unknown action {action!r}"]})
        if action not in ALLOWED_ACTIONS.get(vm.state, []):
            raise ApiError(400, f"server is {vm.state}: action {action} is not allowed",
                           "invalid_request_error")
        if action in ("backup", "enable_routed_ip"):
            raise ApiError(400, f"action {action} is not supported by the fake", "invalid_request_error")
        self.world.vm_action(vm, action)
        now = self.world.now()
        task = {"id": self.world.new_id(), "description": f"server_{action}", "status": "pending",
                "href_from": f"/servers/{vm.id}/action", "href_result": f"/servers/{vm.id}",
                "started_at": iso(now), "terminated_at": None, "progress": 0, "zone": vm.zone}
        return 202, {"task": task}, {}

    # --- images -----------------------------------------------------------------------------------
    def _list_images(self, *, q: dict[str, str], body: dict) -> tuple[int, Any, dict[str, str]]:
        images = [i for i in self.world.images.values()
                  if self._project_ok(i.project, q) and (not q.get("name") or q["name"] in i.name)]
        images.sort(key=lambda i: i.id)
        page, total = self._page(images, q)
        return 200, {"images": [self._image_json(i) for i in page]}, {"X-Total-Count": str(total)}

    def _get_image(self, image_id: str, *, q: dict[str, str], body: dict) -> tuple[int, Any, dict[str, str]]:
        image = self.world.images.get(image_id)
        if image is None:
            raise not_found("instance_image", image_id)
        return 200, {"image": self._image_json(image)}, {}

    # --- flexible IPs -----------------------------------------------------------------------------
    def _ip(self, ip_id: str) -> FakeIP:
        for ip in self.world.ips.values():
            if ip.id == ip_id or ip.address == ip_id:  # the API accepts the id or the address
                return ip
        raise not_found("instance_ip", ip_id)

    def _list_ips(self, *, q: dict[str, str], body: dict) -> tuple[int, Any, dict[str, str]]:
        ips = sorted((ip for ip in self.world.ips.values()
                      if self._project_ok(ip.project, q) and self._has_tags(ip.tags, q)), key=lambda i: i.id)
        page, total = self._page(ips, q)
        return 200, {"ips": [self._ip_json(ip) for ip in page]}, {"X-Total-Count": str(total)}

    def _create_ip(self, *, q: dict[str, str], body: dict) -> tuple[int, Any, dict[str, str]]:
        if not (body.get("project") or body.get("organization")):
            raise ApiError(400, "Validation Error", "invalid_arguments", fields={"project": ["required"]})
        if body.get("type", "routed_ipv4") != "routed_ipv4":
            raise ApiError(400, "only routed_ipv4 is supported by the fake", "invalid_request_error")
        server = body.get("server")
        if server is not None:
            self._vm(server)
        ip = self.world.create_ip([str(t) for t in body.get("tags") or []],
                                  project=body.get("project"), server_id=server)
        location = f"{self.url}/instance/v1/zones/{ip.zone}/ips/{ip.id}"
        return 201, {"ip": self._ip_json(ip)}, {"Location": location}

    def _get_ip(self, ip_id: str, *, q: dict[str, str], body: dict) -> tuple[int, Any, dict[str, str]]:
        return 200, {"ip": self._ip_json(self._ip(ip_id))}, {}

    def _update_ip(self, ip_id: str, *, q: dict[str, str], body: dict) -> tuple[int, Any, dict[str, str]]:
        ip = self._ip(ip_id)
        if "server" in body:
            server = body["server"]
            if server is not None:
                self._vm(server)
            self.world.attach_ip(ip, server)
        if "tags" in body:
            ip.tags = [str(t) for t in body["tags"]]
        return 200, {"ip": self._ip_json(ip)}, {}

    def _delete_ip(self, ip_id: str, *, q: dict[str, str], body: dict) -> tuple[int, Any, dict[str, str]]:
        ip = self._ip(ip_id)
        self.world.attach_ip(ip, None)
        del self.world.ips[ip.id]
        return 204, None, {}

    # --- volumes ----------------------------------------------------------------------------------
    def _volume(self, volume_id: str, block: bool) -> FakeVolume:
        vol = self.world.volumes.get(volume_id)
        if vol is None or (vol.volume_type == "sbs_volume") != block:
            raise not_found("block_volume" if block else "instance_volume", volume_id)
        return vol

    def _volumes(self, q: dict[str, str], block: bool) -> list[FakeVolume]:
        key = "project_id" if block else "project"
        vols = [v for v in self.world.volumes.values()
                if (v.volume_type == "sbs_volume") == block and self._project_ok(v.project, q, key)
                and self._has_tags(v.tags, q) and (not q.get("name") or q["name"] in v.name)
                and (not q.get("volume_type") or q["volume_type"] == v.volume_type)
                and (not q.get("product_resource_id") or q["product_resource_id"] == v.server_id)]
        return sorted(vols, key=lambda v: (v.creation_date, v.id))

    def _delete_volume(self, vol: FakeVolume) -> tuple[int, Any, dict[str, str]]:
        if vol.server_id is not None and vol.server_id in self.world.vms:
            raise ApiError(412, "volume is in use", "precondition_failed", precondition="resource_still_in_use")
        del self.world.volumes[vol.id]
        return 204, None, {}

    def _update_tags(self, vol: FakeVolume, body: dict) -> None:
        if "tags" in body:
            vol.tags = [str(t) for t in body["tags"] or []]
        if body.get("name"):
            vol.name = str(body["name"])

    def _list_local_volumes(self, *, q: dict[str, str], body: dict) -> tuple[int, Any, dict[str, str]]:
        page, total = self._page(self._volumes(q, block=False), q)
        return 200, {"volumes": [self._local_volume_json(v) for v in page]}, {"X-Total-Count": str(total)}

    def _get_local_volume(self, volume_id: str, *, q: dict[str, str], body: dict
                          ) -> tuple[int, Any, dict[str, str]]:
        return 200, {"volume": self._local_volume_json(self._volume(volume_id, block=False))}, {}

    def _update_local_volume(self, volume_id: str, *, q: dict[str, str], body: dict
                             ) -> tuple[int, Any, dict[str, str]]:
        vol = self._volume(volume_id, block=False)
        self._update_tags(vol, body)
        return 200, {"volume": self._local_volume_json(vol)}, {}

    def _delete_local_volume(self, volume_id: str, *, q: dict[str, str], body: dict
                             ) -> tuple[int, Any, dict[str, str]]:
        return self._delete_volume(self._volume(volume_id, block=False))

    def _list_block_volumes(self, *, q: dict[str, str], body: dict) -> tuple[int, Any, dict[str, str]]:
        page, total = self._page(self._volumes(q, block=True), q, size_key="page_size")
        return 200, {"volumes": [self._block_volume_json(v) for v in page], "total_count": total}, {}

    def _get_block_volume(self, volume_id: str, *, q: dict[str, str], body: dict
                          ) -> tuple[int, Any, dict[str, str]]:
        return 200, self._block_volume_json(self._volume(volume_id, block=True)), {}

    def _update_block_volume(self, volume_id: str, *, q: dict[str, str], body: dict
                             ) -> tuple[int, Any, dict[str, str]]:
        vol = self._volume(volume_id, block=True)
        self._update_tags(vol, body)
        return 200, self._block_volume_json(vol), {}

    def _delete_block_volume(self, volume_id: str, *, q: dict[str, str], body: dict
                             ) -> tuple[int, Any, dict[str, str]]:
        return self._delete_volume(self._volume(volume_id, block=True))

    # --- catalog ----------------------------------------------------------------------------------
    def _list_products(self, *, q: dict[str, str], body: dict) -> tuple[int, Any, dict[str, str]]:
        names, total = self._page(sorted(self.catalog), q)
        return 200, {"servers": {n: self._server_type_json(n) for n in names}}, {"X-Total-Count": str(total)}
