"""FakeScaleway at the wire level: the shapes, pagination, errors and faults the SDK relies on."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import requests

from testbed.scaleway import FakeScaleway
from testbed.world import RUNNING, STARTING, STOPPED, Delays, World

TOKEN = str(uuid.uuid4())


@pytest.fixture
def world() -> World:
    w = World(slots=3, delays=Delays(poweron_seconds=0.15, poweroff_seconds=0.1, terminate_seconds=0.1))
    w.add_image("bbb-image")
    return w


@pytest.fixture
def fake(world: World):
    f = FakeScaleway(world, token=TOKEN).start()
    yield f
    f.stop()


def call(fake: FakeScaleway, method: str, path: str, token: str = TOKEN, **kw) -> requests.Response:
    zone = fake.world.zone
    return requests.request(method, f"{fake.url}{path.format(zone=zone)}", headers={"X-Auth-Token": token},
                            timeout=5, **kw)


def create(fake: FakeScaleway, name: str, tags: list[str] | None = None) -> dict:
    image = next(iter(fake.world.images))
    r = call(fake, "POST", "/instance/v1/zones/{zone}/servers",
             json={"name": name, "commercial_type": "PRO2-M", "image": image, "tags": tags or [],
                   "project": fake.world.project_id})
    assert r.status_code == 201, r.text
    return r.json()["server"]


def test_url_has_no_trailing_slash_and_listens_on_loopback(fake):
    assert fake.url.startswith("http://127.0.0.1:") and not fake.url.endswith("/")


def test_create_answers_201_stopped_with_location_and_sbs_volume_map(fake):
    image = next(iter(fake.world.images))
    r = call(fake, "POST", "/instance/v1/zones/{zone}/servers",
             json={"name": "bbb-1", "commercial_type": "PRO2-M", "image": image, "project": fake.world.project_id})
    assert r.status_code == 201
    server = r.json()["server"]
    assert r.headers["Location"].endswith(f"/servers/{server['id']}")
    assert server["state"] == "stopped" and server["allowed_actions"] == ["poweron", "backup"]
    assert set(server["volumes"]) == {"0"}
    assert set(server["volumes"]["0"]) == {"boot", "id", "volume_type", "zone"}
    assert server["volumes"]["0"]["volume_type"] == "sbs_volume"


def test_pagination_total_count_and_empty_page_after_the_last(fake):
    for n in range(7):
        create(fake, f"bbb-{n}")
    seen = []
    for page in (1, 2, 3, 4):
        r = call(fake, "GET", "/instance/v1/zones/{zone}/servers", params={"page": page, "per_page": 3})
        assert r.headers["X-Total-Count"] == "7"
        seen.append(len(r.json()["servers"]))
    assert seen == [3, 3, 1, 0]
    r = call(fake, "GET", "/instance/v1/zones/{zone}/servers", params={"per_page": 101})
    assert r.status_code == 400 and r.json()["message"] == "Validation Error"


def test_name_filter_is_a_substring_and_tags_must_all_match(fake):
    create(fake, "bbb-1", ["divims", "divims-pool=a"])
    create(fake, "bbb-10", ["divims", "divims-pool=b"])
    create(fake, "other", [])
    names = lambda r: sorted(s["name"] for s in r.json()["servers"])  # noqa: E731
    assert names(call(fake, "GET", "/instance/v1/zones/{zone}/servers", params={"name": "bbb-1"})) == \
        ["bbb-1", "bbb-10"]
    assert names(call(fake, "GET", "/instance/v1/zones/{zone}/servers",
                      params={"tags": "divims,divims-pool=b"})) == ["bbb-10"]
    assert names(call(fake, "GET", "/instance/v1/zones/{zone}/servers",
                      params={"project": str(uuid.uuid4())})) == []


def test_actions_follow_the_state_machine_and_refuse_what_is_not_allowed(fake, world):
    s = create(fake, "bbb-1")
    path = f"/instance/v1/zones/{{zone}}/servers/{s['id']}/action"
    r = call(fake, "POST", path, json={"action": "poweroff"})
    assert r.status_code == 400 and r.json()["type"] == "invalid_request_error"
    r = call(fake, "POST", path, json={"action": "poweron"})
    assert r.status_code == 202 and r.json()["task"]["status"] == "pending"
    assert world.vms[s["id"]].state == STARTING
    time.sleep(0.2)
    got = call(fake, "GET", f"/instance/v1/zones/{{zone}}/servers/{s['id']}").json()["server"]
    assert got["state"] == RUNNING and "terminate" in got["allowed_actions"]
    r = call(fake, "DELETE", f"/instance/v1/zones/{{zone}}/servers/{s['id']}")
    assert r.status_code == 400  # only a stopped server can be deleted
    assert call(fake, "POST", path, json={"action": "poweroff"}).status_code == 202
    time.sleep(0.15)
    world.advance()
    assert world.vms[s["id"]].state == STOPPED
    assert call(fake, "DELETE", f"/instance/v1/zones/{{zone}}/servers/{s['id']}").status_code == 204
    assert s["id"] not in world.vms and len(world.volumes) == 1  # the volume stays, detached


def test_errors_are_scaleway_json(fake):
    r = call(fake, "GET", "/instance/v1/zones/{zone}/servers/nope")
    assert r.status_code == 404 and r.json()["type"] == "not_found" and r.json()["resource"] == "instance_server"
    r = call(fake, "GET", "/instance/v1/zones/{zone}/servers", token=str(uuid.uuid4()))
    assert r.status_code == 401 and r.json() == {"message": "authentication is denied",
                                                 "type": "denied_authentication", "method": "api_key",
                                                 "reason": "invalid_argument"}
    assert TOKEN not in r.text


def test_ips_create_attach_and_delete(fake, world):
    s = create(fake, "bbb-1")
    r = call(fake, "POST", "/instance/v1/zones/{zone}/ips",
             json={"project": world.project_id, "type": "routed_ipv4", "tags": ["divims-pool=a"]})
    assert r.status_code == 201 and r.json()["ip"]["state"] == "detached"
    ip = r.json()["ip"]
    r = call(fake, "PATCH", f"/instance/v1/zones/{{zone}}/ips/{ip['id']}", json={"server": s["id"]})
    assert r.json()["ip"]["server"]["id"] == s["id"]
    got = call(fake, "GET", f"/instance/v1/zones/{{zone}}/servers/{s['id']}").json()["server"]
    assert got["public_ip"]["address"] == ip["address"]
    listed = call(fake, "GET", "/instance/v1/zones/{zone}/ips", params={"tags": "divims-pool=a"})
    assert listed.headers["X-Total-Count"] == "1"
    assert call(fake, "DELETE", f"/instance/v1/zones/{{zone}}/ips/{ip['id']}").status_code == 204
    assert world.ips == {} and world.vms[s["id"]].public_ip_id is None


def test_block_volumes_tags_and_delete_only_when_detached(fake, world):
    s = create(fake, "bbb-1")
    vid = s["volumes"]["0"]["id"]
    r = call(fake, "PATCH", f"/block/v1alpha1/zones/{{zone}}/volumes/{vid}", json={"tags": ["divims-pool=a"]})
    assert r.status_code == 200 and r.json()["status"] == "in_use"
    listed = call(fake, "GET", "/block/v1alpha1/zones/{zone}/volumes",
                  params=[("tags", "divims-pool=a"), ("page_size", "10")]).json()
    assert listed["total_count"] == 1 and listed["volumes"][0]["references"][0]["product_resource_id"] == s["id"]
    r = call(fake, "DELETE", f"/block/v1alpha1/zones/{{zone}}/volumes/{vid}")
    assert r.status_code == 412 and r.json()["type"] == "precondition_failed"
    # The Instance API does not know SBS volumes.
    assert call(fake, "GET", f"/instance/v1/zones/{{zone}}/volumes/{vid}").status_code == 404


def test_products_catalog_has_hourly_prices(fake):
    r = call(fake, "GET", "/instance/v1/zones/{zone}/products/servers")
    servers = r.json()["servers"]
    assert servers["PRO2-M"]["hourly_price"] == 0.319 and "DEV1-S" in servers and "PRO2-S" in servers
    assert r.headers["X-Total-Count"] == str(len(servers))


@pytest.mark.parametrize("status, type_", [(429, "too_many_requests"), (500, "internal_error"),
                                           (503, "internal_error")])
def test_error_faults_answer_json_with_the_configured_status(fake, world, status, type_):
    world.faults["scaleway"].error_status = status
    world.faults["scaleway"].fail_next = 1
    r = call(fake, "GET", "/instance/v1/zones/{zone}/servers")
    assert r.status_code == status and r.json()["type"] == type_
    assert call(fake, "GET", "/instance/v1/zones/{zone}/servers").status_code == 200


def test_hang_and_down_faults(fake, world):
    world.faults["scaleway"].hang_next = 1
    with pytest.raises(requests.Timeout):
        requests.get(f"{fake.url}/instance/v1/zones/{world.zone}/servers", timeout=0.2,
                     headers={"X-Auth-Token": TOKEN})
    world.faults["scaleway"].down = True
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{fake.url}/instance/v1/zones/{world.zone}/servers", timeout=2,
                     headers={"X-Auth-Token": TOKEN})


def test_stop_releases_a_hanging_request_quickly(world):
    f = FakeScaleway(world).start()
    world.faults["scaleway"].hang_next = 1
    world.faults["scaleway"].hang_seconds = 30
    errors: list[BaseException] = []

    def hit() -> None:
        try:
            requests.get(f"{f.url}/instance/v1/zones/{world.zone}/servers", timeout=10)
        except requests.RequestException as e:
            errors.append(e)
    t = threading.Thread(target=hit)
    t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    f.stop()
    t.join(timeout=5)
    assert not t.is_alive() and time.monotonic() - t0 < 2 and errors


def test_billing_keeps_running_in_standby_and_stops_at_poweroff(world):
    clock = [1000.0]
    w = World(slots=1, clock=lambda: clock[0], delays=Delays(poweron_seconds=10, poweroff_seconds=10))
    image = w.add_image("img")
    vm = w.create_vm("bbb-1", "PRO2-M", image.id, [])
    w.vm_action(vm, "poweron")
    clock[0] += 100
    w.advance()
    w.vm_action(vm, "stop_in_place")
    clock[0] += 100
    w.advance()
    assert vm.power_periods == [(1000.0, None)]  # standby is billed
    w.vm_action(vm, "poweron")
    clock[0] += 100
    w.advance()
    w.vm_action(vm, "poweroff")
    clock[0] += 100
    w.advance()
    [(start, stop)] = vm.power_periods
    assert start == 1000.0 and stop is not None and stop >= 1310.0 and w.billed_hours(vm) == 1.0
