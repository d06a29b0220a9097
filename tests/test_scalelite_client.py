"""The real Scalelite clients (HTTP API, rake) against the fake Scalelite, over real sockets."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import requests
from bbb_fixtures import add_meeting, boot
from pydantic import SecretStr

from divims.clients.scalelite import (
    ScaleliteHTTP,
    ScaleliteRake,
    api_checksum,
    make_scalelite,
    parse_server,
    parse_servers_listing,
    parse_servers_yaml,
    rake_arg,
)
from divims.errors import (
    APIError,
    AuthError,
    NotFoundError,
    NotSupportedError,
    ProtocolError,
    TimeoutError_,
    TransientError,
)
from divims.model import ScaleliteState
from testbed.scalelite import FakeScalelite, add_server, rake_handler, world_meetings
from testbed.world import Delays, World

SECRET = "sl-secret-0123456789abcdef"
BBB_SECRET = "bbb-secret-fedcba9876543210"


@pytest.fixture
def world() -> World:
    return World(slots=3, bbb_secret=BBB_SECRET, delays=Delays(recording_seconds=3600))


@pytest.fixture
def fake(world: World):
    sl = FakeScalelite(world, SECRET, fetch=world_meetings(world)).start(poller=False)
    try:
        yield sl
    finally:
        sl.stop()


@pytest.fixture
def client(fake: FakeScalelite) -> ScaleliteHTTP:
    return ScaleliteHTTP(fake.url, SECRET, timeout_seconds=2, retry_sleep=lambda s: None)


def bbb_url(world: World, slot: int) -> str:
    return f"http://{world.domain(slot)}:8090/bigbluebutton/api"


def test_get_servers_maps_the_404_no_servers_to_an_empty_list(client: ScaleliteHTTP, fake: FakeScalelite):
    raw = requests.get(f"{fake.url}/scalelite/api/getServers?checksum="
                       + api_checksum("getServers", "", SECRET), timeout=2)
    assert raw.status_code == 404 and raw.json() == {"error": "No servers are configured"}
    assert client.get_servers() == []


def test_add_server_answers_201_disabled_and_a_string_multiplier(client: ScaleliteHTTP, world: World,
                                                                 fake: FakeScalelite):
    added = client.add_server(bbb_url(world, 1), BBB_SECRET, load_multiplier=2, tag="big")
    assert added.state is ScaleliteState.DISABLED and not added.online and added.load is None
    assert added.load_multiplier == 2.0 and added.tag == "big" and added.host == "127.0.1.1"
    # On the wire the multiplier is a string (a BigDecimal as Rails writes it).
    query = f"id={added.id}"
    raw = requests.get(f"{fake.url}/scalelite/api/getServerInfo?{query}&checksum="
                       + api_checksum("getServerInfo", query, SECRET), timeout=2).json()
    assert raw["load_multiplier"] == "2.0" and raw["load"] == "unavailable" and raw["online"] == "offline"
    assert [s.id for s in client.get_servers()] == [added.id]
    assert client.get_server(added.id) == added


def test_state_changes_go_through_update_server(client: ScaleliteHTTP, world: World):
    sid = client.add_server(bbb_url(world, 1), BBB_SECRET).id
    client.enable(sid)
    assert world.scalelite_servers[sid].state == "enabled"
    client.cordon(sid)
    assert client.get_server(sid).state is ScaleliteState.CORDONED
    client.disable(sid)
    assert client.get_server(sid).state is ScaleliteState.DISABLED
    client.delete_server(sid)
    assert client.get_servers() == []


def test_unknown_server_id_is_not_found_and_named(client: ScaleliteHTTP):
    with pytest.raises(NotFoundError) as err:
        client.enable("no-such-id")
    assert "no-such-id" in str(err.value)
    with pytest.raises(NotFoundError):
        client.get_server("no-such-id")


def test_add_server_without_secret_is_an_api_error(client: ScaleliteHTTP, world: World):
    with pytest.raises(APIError) as err:
        client.add_server(bbb_url(world, 1), "")
    assert "Server needs a URL and a secret" in str(err.value)


def test_wrong_secret_is_an_auth_error_from_xml_with_http_200(fake: FakeScalelite):
    raw = requests.get(f"{fake.url}/scalelite/api/getServers?checksum="
                       + api_checksum("getServers", "", "wrong"), timeout=2)
    assert raw.status_code == 200 and "<messageKey>checksumError</messageKey>" in raw.text
    bad = ScaleliteHTTP(fake.url, "wrong-secret-value", timeout_seconds=2, retry_sleep=lambda s: None)
    with pytest.raises(AuthError) as err:
        bad.get_servers()
    assert "wrong-secret-value" not in str(err.value) and "checksum" in str(err.value)
    with pytest.raises(AuthError):
        bad.enable("x")


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha512"])
def test_every_checksum_algorithm_is_accepted(fake: FakeScalelite, world: World, algorithm: str):
    add_server(world, bbb_url(world, 2), BBB_SECRET)
    c = ScaleliteHTTP(fake.url, SECRET, timeout_seconds=2, algorithm=algorithm)
    assert len(c.get_servers()) == 1


class _PlainTextSession(requests.Session):
    """Sends the JSON body as text/plain, to hit Scalelite's content-type check."""

    def request(self, method, url, **kwargs):  # type: ignore[override]
        if kwargs.get("headers"):
            kwargs["headers"] = {**kwargs["headers"], "Content-Type": "text/plain"}
        return super().request(method, url, **kwargs)


def test_non_json_post_is_unsupported_content_type_xml(fake: FakeScalelite, world: World):
    sid = add_server(world, bbb_url(world, 1), BBB_SECRET).id
    c = ScaleliteHTTP(fake.url, SECRET, timeout_seconds=2, session=_PlainTextSession())
    with pytest.raises(APIError) as err:
        c.enable(sid)
    assert err.value.key == "unsupportedContentType"
    assert world.scalelite_servers[sid].state == "disabled"


def test_invalid_state_verb_is_a_400_api_error(fake: FakeScalelite, world: World):
    sid = add_server(world, bbb_url(world, 1), BBB_SECRET).id
    c = ScaleliteHTTP(fake.url, SECRET, timeout_seconds=2)
    with pytest.raises(APIError) as err:
        c._update_state(sid, "drain")
    assert "Invalid state parameter: drain" in str(err.value)


def test_panic_ends_meetings_and_keep_state_is_top_level(client: ScaleliteHTTP, world: World):
    boot(world, 1)
    sid = client.add_server(bbb_url(world, 1), BBB_SECRET).id
    client.enable(sid)
    add_meeting(world, 1, "m1", 5)
    client.panic(sid, keep_state=True)
    assert world.bbb_hosts["127.0.1.1"].meetings == {}
    assert [(h, why) for h, _, _, why in world.ended_meetings] == [("127.0.1.1", "scalelite-panic")]
    assert client.get_server(sid).state is ScaleliteState.ENABLED
    client.panic(sid)
    assert client.get_server(sid).state is ScaleliteState.DISABLED


def test_load_online_and_multiplier_forms_are_parsed():
    base = {"id": "a", "url": "https://bbb-1.example.org/bigbluebutton/api", "secret": "s",
            "state": "enabled", "online": "online", "tag": "", "bbb_version": ""}
    assert parse_server({**base, "load": "unavailable", "load_multiplier": 1.0}, "t").load is None
    parsed = parse_server({**base, "load": 12.0, "load_multiplier": "2.5"}, "t")
    assert parsed.load == 12.0 and parsed.load_multiplier == 2.5 and parsed.online
    assert not parse_server({**base, "online": "offline", "load": 0}, "t").online
    with pytest.raises(ProtocolError):
        parse_server({**base, "state": "draining"}, "t")
    with pytest.raises(ProtocolError):
        parse_server({**base, "online": "maybe"}, "t")
    assert "secret=" not in repr(parsed)


def test_secret_is_in_no_repr_or_error(fake: FakeScalelite):
    c = ScaleliteHTTP(fake.url, SECRET, timeout_seconds=2)
    assert SECRET not in repr(c)
    with pytest.raises(NotFoundError) as err:
        c.get_server("x")
    assert SECRET not in str(err.value)


def test_service_down_is_transient(world: World, client: ScaleliteHTTP):
    world.faults["scalelite"].down = True
    with pytest.raises(TransientError):
        client.get_servers()


@pytest.mark.parametrize("status", [429, 500, 503])
def test_429_and_5xx_are_transient(world: World, client: ScaleliteHTTP, status: int):
    world.faults["scalelite"].error_rate = 1.0
    world.faults["scalelite"].error_status = status
    with pytest.raises(TransientError) as err:
        client.get_servers()
    assert str(status) in str(err.value)


def test_a_hung_request_is_a_timeout(world: World, fake: FakeScalelite):
    world.faults["scalelite"].hang_next = 1
    world.faults["scalelite"].hang_seconds = 3
    c = ScaleliteHTTP(fake.url, SECRET, timeout_seconds=0.3, get_attempts=1)
    start = time.monotonic()
    with pytest.raises(TimeoutError_):
        c.get_servers()
    assert time.monotonic() - start < 2


def test_gets_are_retried_posts_are_not(world: World, client: ScaleliteHTTP):
    sid = add_server(world, bbb_url(world, 1), BBB_SECRET).id
    world.faults["scalelite"].fail_next = 2
    assert [s.id for s in client.get_servers()] == [sid]  # two failures, then the third attempt
    world.faults["scalelite"].fail_next = 1
    with pytest.raises(TransientError):
        client.enable(sid)
    assert world.scalelite_servers[sid].state == "disabled"
    client.enable(sid)
    assert world.scalelite_servers[sid].state == "enabled"


def test_make_scalelite_picks_the_transport_from_the_config(fake: FakeScalelite):
    http_cfg = SimpleNamespace(scalelite=SimpleNamespace(
        url=fake.url, secret=SecretStr(SECRET), timeout_seconds=3, verify_tls=False,
        checksum_algorithm="sha512", ssh=None))
    c = make_scalelite(http_cfg)
    assert isinstance(c, ScaleliteHTTP) and c.algorithm == "sha512" and c.get_servers() == []
    ssh = SimpleNamespace(host="127.0.0.1", port=2222, user="deploy", key_file="/k", key_passphrase=None,
                          known_hosts="/kh", accept_unknown_host_keys=False, timeout_seconds=4,
                          container="sl-api", sudo=False)
    r = make_scalelite(SimpleNamespace(scalelite=SimpleNamespace(ssh=ssh)))
    assert isinstance(r, ScaleliteRake) and r.port == 2222 and r.container == "sl-api"
    assert r.command("servers") == "docker exec sl-api ./bin/rake servers"


# --- rake: the client's commands and parsing, answered by the fake's rake handler -------------------


class _HandlerRake(ScaleliteRake):
    """ScaleliteRake whose command lines go to the fake rake handler instead of over SSH
    (test_testbed_scalelite.py runs the same over a real SSH server)."""

    def __init__(self, handler, **kw):
        super().__init__("127.0.0.1", **kw)
        self.handler = handler

    def run(self, *tasks: str, secrets: tuple[str, ...] = ()):
        return self.handler(self.command(*tasks))


def test_rake_client_full_cycle_against_the_handler(world: World):
    boot(world, 1)
    handler = rake_handler(world)
    rake = _HandlerRake(handler)
    assert rake.get_servers() == []
    added = rake.add_server(bbb_url(world, 1), "se,cr\\et", load_multiplier=1.5)
    assert world.scalelite_servers[added.id].secret == "se,cr\\et"  # commas and backslashes survive rake
    assert world.scalelite_servers[added.id].load_multiplier == "1.5"
    rake.enable(added.id)
    rake.cordon(added.id)
    (listed,) = rake.get_servers()
    # servers:yaml says "enabled" for a cordoned server (pre-1.6 bug): the listing gives the truth.
    assert listed.state is ScaleliteState.CORDONED and listed.load is None and listed.load_multiplier == 1.5
    add_meeting(world, 1, "m1", 3)
    rake.panic(added.id, keep_state=True)
    assert world.scalelite_servers[added.id].state == "cordoned" and not world.bbb_hosts["127.0.1.1"].meetings
    rake.panic(added.id)
    assert world.scalelite_servers[added.id].state == "disabled"
    with pytest.raises(NotSupportedError):
        rake.disable(added.id)
    assert handler.disable_calls == []
    rake.delete_server(added.id)
    assert rake.get_servers() == []
    with pytest.raises(NotFoundError):
        rake.enable(added.id)
    assert all(c.startswith("sudo -n docker exec scalelite-api ./bin/rake ") for c in handler.commands)


def test_rake_wrong_container_is_a_clear_error(world: World):
    rake = _HandlerRake(rake_handler(world), container="nope")
    with pytest.raises(APIError) as err:
        rake.enable("x")
    assert "No such container" in str(err.value)


def test_rake_yaml_parsers_read_both_formats():
    legacy = ("---\n:servers:\n  abc:\n    :url: https://b/bigbluebutton/api/\n    :secret: s\n"
              "    :load_multiplier: !ruby/object:BigDecimal 18:0.25e1\n    :enabled:\n    :state: enabled\n"
              "    :load: -1.0\n    :online: false\n")
    assert parse_servers_yaml(legacy, "t")["abc"]["load_multiplier"] == 2.5
    fixed = ("---\nservers:\n  abc:\n    url: https://b/bigbluebutton/api\n    secret: s\n"
             "    load_multiplier: 2.0\n    enabled: true\n    state: cordoned\n    load: 3.0\n    online: true\n")
    assert parse_servers_yaml(fixed, "t")["abc"]["state"] == "cordoned"
    assert parse_servers_yaml("---\n:servers: {}\n", "t") == {}
    with pytest.raises(ProtocolError):
        parse_servers_yaml("servers: [unclosed", "t")
    listing = "id: abc\n\turl: u\n\tsecret: s\n\tcordoned\n\tload: unavailable\n\ttag: x\n\toffline\n"
    assert parse_servers_listing(listing) == {"abc": {"url": "u", "secret": "s", "state": "cordoned",
                                                      "load": "unavailable", "tag": "x", "online": "offline"}}


def test_rake_arguments_are_escaped_for_rake_and_quoted_for_the_shell():
    assert rake_arg("a,b\\c") == "a\\,b\\\\c"
    rake = ScaleliteRake("h", sudo=True)
    assert rake.command("servers:add[u,x;rm -rf /]") == "sudo -n docker exec scalelite-api ./bin/rake 'servers:add[u,x;rm -rf /]'"
