"""The real ScalewayCloud + official SDK against FakeScaleway over HTTP on loopback."""

from __future__ import annotations

import logging
import time
import uuid
from types import SimpleNamespace

import pytest
from scaleway import Client
from scaleway.instance.v1 import ServerAction

from divims.clients.scaleway import ScalewayCloud
from divims.errors import APIError, AuthError, ConfigError, NotFoundError, TimeoutError_, TransientError
from divims.model import VMState
from testbed.scaleway import FakeScaleway
from testbed.world import STOPPED_IN_PLACE, Delays, World

ACCESS_KEY = "SCWABCDEFGHIJKLMNOPQ"


@pytest.fixture
def world() -> World:
    w = World(slots=5, delays=Delays(poweron_seconds=0.2, poweroff_seconds=0.1, terminate_seconds=0.1))
    w.add_image("bbb-26-image")
    return w


@pytest.fixture
def secret() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def fake(world: World, secret: str):
    f = FakeScaleway(world, token=secret).start()
    yield f
    f.stop()


class Sleeps(list):
    """Records the pauses of the retry loop while really (briefly) sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        time.sleep(seconds)


def make_cloud(world: World, fake: FakeScaleway, secret: str, **kw) -> ScalewayCloud:
    client = Client(access_key=ACCESS_KEY, secret_key=secret)
    args = dict(pool="p1", zone=world.zone, project_id=world.project_id, image="bbb-26-image",
                commercial_type="PRO2-M", hostname_template="bbb-{n}", api_url=fake.url,
                timeout_seconds=2.0, max_retries=4, client=client, base_delay=0.01, max_delay=0.05)
    args.update(kw)
    return ScalewayCloud(**args)


@pytest.fixture
def cloud(world: World, fake: FakeScaleway, secret: str) -> ScalewayCloud:
    return make_cloud(world, fake, secret)


def wait_state(cloud: ScalewayCloud, server_id: str, state: VMState, timeout: float = 3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        vm = cloud.get_server(server_id)
        if vm is not None and vm.state == state:
            return vm
        time.sleep(0.05)
    raise AssertionError(f"{server_id} never reached {state}")


def test_create_is_stopped_tagged_and_poweron_goes_through_starting_to_running(cloud, world):
    vm = cloud.create_server("bbb-1", 1)
    assert vm.state == VMState.STOPPED
    assert set(vm.tags) == {"divims", "divims-pool=p1", "divims-slot=1"}
    assert vm.slot == 1 and vm.commercial_type == "PRO2-M"
    # The SBS boot volume is tagged for the pool right away (findable after a crash).
    [vol] = vm.volumes
    assert vol.volume_type == "sbs_volume"
    assert "divims-pool=p1" in world.volumes[vol.id].tags
    cloud.poweron(vm.id)
    assert cloud.get_server(vm.id).state == VMState.STARTING
    running = wait_state(cloud, vm.id, VMState.RUNNING)
    assert running.modification_date >= vm.creation_date
    cloud.poweron(vm.id)  # idempotent: already running is not an error


def test_list_servers_pages_past_100_and_adopts_only_exact_template_names(cloud, world, fake):
    image = next(iter(world.images))
    for n in range(1, 131):
        world.create_vm(f"bbb-{n}", "PRO2-M", image, ["divims", "divims-pool=p1", f"divims-slot={n}"])
    world.create_vm("bbb-200", "PRO2-M", image, [])             # a DiViMS server: adopted by its name
    world.create_vm("bbb-201-old", "PRO2-M", image, [])         # substring match only: not ours
    world.create_vm("xbbb-202", "PRO2-M", image, [])            # substring match only: not ours
    world.create_vm("bbb-203", "PRO2-M", image, ["divims-pool=other"])  # another pool's
    fake.requests.clear()
    vms = cloud.list_servers()
    names = {v.name for v in vms}
    assert len(vms) == 131 and "bbb-200" in names
    assert not names & {"bbb-201-old", "xbbb-202", "bbb-203"}
    pages = [q for m, p, q in fake.requests if p.endswith("/servers") and "tags=divims-pool" in q]
    assert len(pages) == 2 and all("per_page=100" in q for q in pages)


def test_both_spellings_of_stopped_in_place(cloud, world):
    vm = cloud.create_server("bbb-2", 2)
    cloud.poweron(vm.id)
    wait_state(cloud, vm.id, VMState.RUNNING)
    cloud._action(vm.id, ServerAction.STOP_IN_PLACE, set())
    assert wait_state(cloud, vm.id, VMState.STOPPED_IN_PLACE).state == VMState.STOPPED_IN_PLACE
    assert world.vms[vm.id].state == STOPPED_IN_PLACE  # the API's spelling, with a space
    world.vms[vm.id].state = "stopped_in_place"        # the Python SDK's spelling
    assert cloud.get_server(vm.id).state == VMState.STOPPED_IN_PLACE


def test_terminate_leaves_sbs_volume_and_ip_which_are_then_deleted(cloud, world):
    vm = cloud.create_server("bbb-3", 3)
    ip = cloud.create_ip(3)
    cloud.attach_ip(ip.id, vm.id)
    assert cloud.get_server(vm.id).public_ip == ip.address
    cloud.poweron(vm.id)
    wait_state(cloud, vm.id, VMState.RUNNING)
    cloud.terminate(vm.id)
    deadline = time.monotonic() + 3
    while cloud.get_server(vm.id) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cloud.get_server(vm.id) is None
    vols = cloud.list_volumes()
    assert [v.id for v in vols] == [vm.volumes[0].id] and vols[0].server_id is None
    ips = cloud.list_ips()
    assert [(i.id, i.server_id) for i in ips] == [(ip.id, None)] and "divims-slot=3" in ips[0].tags
    cloud.delete_volume(vols[0].id)
    cloud.delete_ip(ip.id)
    assert cloud.list_volumes() == [] and cloud.list_ips() == [] and world.volumes == {} and world.ips == {}
    cloud.terminate(vm.id)  # already gone: fine


def test_terminate_of_a_stopped_server_deletes_it(cloud, world):
    vm = cloud.create_server("bbb-4", 4)
    cloud.terminate(vm.id)
    assert vm.id not in world.vms
    assert [v.id for v in cloud.list_volumes()] == [vm.volumes[0].id]


def test_deleting_an_attached_volume_is_an_api_error(cloud):
    vm = cloud.create_server("bbb-1", 1)
    with pytest.raises(APIError) as err:
        cloud.delete_volume(vm.volumes[0].id)
    assert "in use" in str(err.value) and err.value.key == "precondition_failed"


def test_a_429_storm_is_retried_with_bounded_backoff(world, fake, secret):
    sleeps = Sleeps()
    cloud = make_cloud(world, fake, secret, sleep=sleeps, base_delay=0.02, max_delay=0.1, max_retries=5)
    world.faults["scaleway"].error_status = 429
    world.faults["scaleway"].fail_next = 4
    assert cloud.list_servers() == []
    assert len(sleeps) == 4 and all(0.01 <= s <= 0.1 for s in sleeps)
    assert sleeps[1] >= 0.02  # exponential: the second pause is at least the base delay


def test_persistent_429_gives_up_after_max_retries(world, fake, secret):
    sleeps = Sleeps()
    cloud = make_cloud(world, fake, secret, sleep=sleeps, max_retries=2)
    world.faults["scaleway"].error_rate = 1.0
    world.faults["scaleway"].error_status = 429
    t0 = time.monotonic()
    with pytest.raises(TransientError) as err:
        cloud.list_servers()
    assert "HTTP 429" in str(err.value) and len(sleeps) == 2 and time.monotonic() - t0 < 2


def test_500s_then_success_and_persistent_500(world, fake, secret):
    cloud = make_cloud(world, fake, secret)
    world.faults["scaleway"].error_status = 500
    world.faults["scaleway"].fail_next = 2
    vm = cloud.create_server("bbb-1", 1)
    assert len(world.vms) == 1 and vm.id in world.vms
    world.faults["scaleway"].error_rate = 1.0
    with pytest.raises(TransientError, match="HTTP 500"):
        cloud.get_server(vm.id)


def test_a_hang_is_a_timeout_within_the_bound(world, fake, secret):
    cloud = make_cloud(world, fake, secret, timeout_seconds=0.3, max_retries=1)
    world.faults["scaleway"].hang_next = 10
    t0 = time.monotonic()
    with pytest.raises(TimeoutError_) as err:
        cloud.list_servers()
    elapsed = time.monotonic() - t0
    assert 0.55 <= elapsed < 1.5, elapsed  # two attempts of 0.3 s and one short pause
    assert err.value.kind == "timeout" and "no answer within 0.3 s" in str(err.value)


def test_a_bad_token_is_an_auth_error_without_the_secret(world, fake, secret, caplog):
    wrong = str(uuid.uuid4())
    cloud = make_cloud(world, fake, wrong)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthError) as err:
        cloud.list_servers()
    assert "HTTP 401" in str(err.value) and "denied" in str(err.value)
    for text in (str(err.value), repr(cloud), caplog.text):
        assert wrong not in text and secret not in text
    assert len(fake.requests) == 1  # 401 is not retried


def test_invalid_credentials_are_a_config_error_without_the_secret(world, fake):
    bad = "not-a-uuid-but-secret"
    with pytest.raises(ConfigError) as err:
        ScalewayCloud(pool="p1", zone=world.zone, project_id=world.project_id, image="x",
                      commercial_type="PRO2-M", api_url=fake.url,
                      client=Client(access_key=ACCESS_KEY, secret_key=bad))
    assert bad not in str(err.value) and "pools.p1.scaleway" in str(err.value)


def test_catalog_prices_are_read_once_and_cached(cloud, fake):
    assert cloud.hourly_price("PRO2-M") == pytest.approx(0.319)
    assert cloud.hourly_price("DEV1-S") == pytest.approx(0.0088)
    assert cloud.hourly_price("NOPE-XL") is None
    assert sum(1 for _, p, _ in fake.requests if p.endswith("/products/servers")) == 1


def test_create_that_timed_out_but_happened_is_not_created_twice(world, fake, secret, caplog):
    cloud = make_cloud(world, fake, secret, timeout_seconds=0.3)
    fake_calls_before = len(fake.requests)
    # The lookups answer; the POST itself is done but its answer never comes.
    original = fake._dispatch

    def dispatch(method, path, query, raw):
        result = original(method, path, query, raw)
        if method == "POST" and path.endswith("/servers"):
            world.faults["scaleway"].hang_after_next = 1
        return result
    fake._dispatch = dispatch
    caplog.set_level(logging.WARNING)
    vm = cloud.create_server("bbb-5", 5)
    assert [v.name for v in world.vms.values()] == ["bbb-5"] and vm.id in world.vms
    posts = [1 for m, p, _ in fake.requests[fake_calls_before:] if m == "POST" and p.endswith("/servers")]
    assert len(posts) == 1
    assert "did succeed" in caplog.text


def test_create_for_an_existing_slot_server_returns_it(cloud, world):
    first = cloud.create_server("bbb-1", 1)
    again = cloud.create_server("bbb-1", 1)
    assert again.id == first.id and len(world.vms) == 1


def test_image_by_id_and_unknown_image_name(world, fake, secret):
    image_id = next(iter(world.images))
    assert make_cloud(world, fake, secret, image=image_id).create_server("bbb-1", 1).id
    with pytest.raises(NotFoundError, match="no image named 'missing'"):
        make_cloud(world, fake, secret, image="missing").create_server("bbb-2", 2)


def test_an_action_not_allowed_is_an_api_error(cloud):
    vm = cloud.create_server("bbb-1", 1)
    with pytest.raises(APIError) as err:
        cloud._action(vm.id, ServerAction.REBOOT, set())  # a stopped server cannot reboot
    assert "not allowed" in str(err.value) and err.value.key == "invalid_request_error"


def test_server_down_is_a_transient_error(world, fake, secret):
    cloud = make_cloud(world, fake, secret, max_retries=1)
    world.faults["scaleway"].down = True
    with pytest.raises(TransientError, match="connection failed"):
        cloud.list_ips()


def test_from_pool_reads_the_config_attribute_paths(world, fake, secret):
    sw = SimpleNamespace(zone=world.zone, project_id=world.project_id, api_url=fake.url, image="bbb-26-image",
                         commercial_type="PRO2-S", hostname_template="bbb-{n}", timeout_seconds=3.0,
                         max_retries=2, allow_insecure=False, flexible_ips=True)
    cloud = ScalewayCloud.from_pool(SimpleNamespace(name="p9", scaleway=sw),
                                    client=Client(access_key=ACCESS_KEY, secret_key=secret))
    vm = cloud.create_server("bbb-1", 1)
    assert "divims-pool=p9" in vm.tags and vm.commercial_type == "PRO2-S"
    assert cloud.attempts == 3 and cloud.timeout_seconds == 3.0
    cloud.close()
    assert cloud.list_servers()[0].name == "bbb-1"  # a new session after close
