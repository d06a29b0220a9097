"""The fake Scalelite's poller, place_meeting and rake handler, as Scalelite's own code behaves."""

from __future__ import annotations

import time

import pytest
from bbb_fixtures import add_meeting, boot

from divims.clients.scalelite import ScaleliteHTTP, parse_servers_yaml
from divims.errors import TimeoutError_
from divims.model import Meeting
from testbed.bbb import FakeBBBFleet
from testbed.scalelite import (
    FakeScalelite,
    Poller,
    add_server,
    bbb_http_meetings,
    bigdecimal_dump,
    decimal_string,
    meetings_load,
    parse_task_string,
    place_meeting,
    rake_handler,
    world_meetings,
)
from testbed.world import STOPPED, Delays, World

SECRET = "fake-scalelite-secret"


@pytest.fixture
def world() -> World:
    return World(slots=3, delays=Delays(recording_seconds=3600))


def register(world: World, slot: int, *, state: str = "enabled", multiplier: str | None = None,
             port: int = 8090) -> str:
    server = add_server(world, f"http://{world.domain(slot)}:{port}/bigbluebutton/api", world.bbb_secret,
                        multiplier)
    server.state = state
    return server.id


def meeting(participants: int, moderators: int = 1, age: float = 3600, breakout: bool = False) -> Meeting:
    return Meeting("m", "i", time.time() - age, participants, moderator_count=moderators, is_breakout=breakout)


def test_load_formula_counts_moderators_twice_floors_young_meetings_and_skips_breakouts():
    now = time.time()
    meetings = [meeting(10, 2), meeting(1, 1, age=60), meeting(40, 0, age=60), meeting(50, breakout=True)]
    # 10+2, max(1+1, 15), max(40+0, 15), breakout skipped; times 1.5
    assert meetings_load(meetings, now, 1.5) == (12 + 15 + 40) * 1.5


def test_poller_over_http_brings_a_server_online_with_its_load(world: World):
    fleet = FakeBBBFleet(world, 0).start()
    try:
        boot(world, 1)
        sid = register(world, 1, multiplier="2", port=fleet.port)
        add_meeting(world, 1, "old", 20, moderators=2, create_time=world.now() - 3600)
        add_meeting(world, 1, "young", 3, moderators=1)
        poller = Poller(world, bbb_http_meetings(bbb_port=None, timeout_seconds=2))
        poller.poll_once()
        s = world.scalelite_servers[sid]
        assert s.online and s.load == (22 + 15) * 2 and s.meetings == 2 and s.users == 23
        assert s.polled_at is not None
    finally:
        fleet.stop()


def test_offline_after_two_failures_then_panicked_and_back_after_one_success(world: World):
    vm = boot(world, 1)
    sid = register(world, 1)
    poller = Poller(world, world_meetings(world))
    poller.poll_once()
    assert world.scalelite_servers[sid].online
    world.bbb_hosts["127.0.1.1"].hang = True
    add_meeting(world, 1, "m1", 8)
    poller.poll_once()
    s = world.scalelite_servers[sid]
    assert s.online and "m1" in world.bbb_hosts["127.0.1.1"].meetings  # one failure is tolerated
    poller.poll_once()
    assert not s.online and s.load is None and s.meetings == 0 and s.state == "enabled"
    assert [(why, m.meeting_id) for _, m, _, why in world.ended_meetings] == [("scalelite-panic", "m1")]
    world.bbb_hosts["127.0.1.1"].hang = False
    poller.poll_once()
    assert s.online and s.load == 0
    vm.state = STOPPED  # unreachable: the same path
    poller.poll_once()
    poller.poll_once()
    assert not s.online


def test_cordoned_server_is_disabled_at_load_zero_only(world: World):
    boot(world, 1)
    sid = register(world, 1, state="cordoned")
    add_meeting(world, 1, "m1", 4)
    poller = Poller(world, world_meetings(world))
    poller.poll_once()
    s = world.scalelite_servers[sid]
    assert s.state == "cordoned" and s.load == 15
    world.end_meeting("127.0.1.1", "m1", why="ended")
    poller.poll_once()
    assert s.state == "disabled" and s.load is None and s.online


def test_disabled_server_is_polled_but_has_no_load(world: World):
    boot(world, 1)
    sid = register(world, 1, state="disabled")
    Poller(world, world_meetings(world)).poll_once()
    s = world.scalelite_servers[sid]
    assert s.online and s.load is None


def test_place_meeting_picks_the_lowest_known_load_among_enabled_online(world: World):
    for slot in (1, 2, 3):
        boot(world, slot)
    a, b, c = register(world, 1), register(world, 2, multiplier="3"), register(world, 3, state="cordoned")
    assert place_meeting(world) is None  # nobody polled yet: no load known
    add_meeting(world, 1, "x", 30, create_time=world.now() - 3600)
    Poller(world, world_meetings(world)).poll_once()
    assert world.scalelite_servers[c].state == "disabled"
    assert place_meeting(world) == "127.0.1.2"  # load 0 beats 31
    add_meeting(world, 2, "new", 1, create_time=world.now())  # each create since the poll adds 1 x multiplier (3)
    before = (world.scalelite_servers[a].load, world.scalelite_servers[b].load)
    for i in range(10):
        add_meeting(world, 2, f"n{i}", 1, create_time=world.now())
    assert place_meeting(world) == "127.0.1.1"  # 0 + 11*3 = 33 > 31
    assert (world.scalelite_servers[a].load, world.scalelite_servers[b].load) == before  # pure
    world.scalelite_servers[a].online = False
    assert place_meeting(world) == "127.0.1.2"


def test_poller_thread_runs_on_its_interval_and_the_api_shows_the_result(world: World):
    boot(world, 1)
    sid = register(world, 1)
    fake = FakeScalelite(world, SECRET, poll_interval_seconds=0.05, fetch=world_meetings(world)).start()
    try:
        deadline = time.monotonic() + 5
        while not world.scalelite_servers[sid].online and time.monotonic() < deadline:
            time.sleep(0.02)
        (server,) = ScaleliteHTTP(fake.url, SECRET, timeout_seconds=2).get_servers()
        assert server.online and server.load == 0
    finally:
        fake.stop()


def test_a_post_that_hangs_after_doing_its_work_has_happened(world: World):
    sid = register(world, 1, state="disabled")
    world.faults["scalelite"].hang_after_next = 1
    world.faults["scalelite"].hang_seconds = 2
    with FakeScalelite(world, SECRET, fetch=world_meetings(world)) as fake:
        with pytest.raises(TimeoutError_):
            ScaleliteHTTP(fake.url, SECRET, timeout_seconds=0.3).enable(sid)
        assert world.scalelite_servers[sid].state == "enabled"


# --- rake ------------------------------------------------------------------------------------------


def test_rake_task_strings_parse_like_rake():
    assert parse_task_string("servers") == ("servers", [])
    assert parse_task_string("servers:add[http://h/api,a\\,b,2.0]") == ("servers:add", ["http://h/api", "a,b", "2.0"])
    assert parse_task_string("servers:panic[id,,]") == ("servers:panic", ["id", "", ""])


def test_bigdecimal_forms():
    assert [bigdecimal_dump(v) for v in ("1.0", "1.5", "2", "0.05", "0")] == \
        ["18:0.1e1", "18:0.15e1", "18:0.2e1", "18:0.5e-1", "18:0.0"]
    assert [decimal_string(v) for v in ("2", "1.50", "0.5")] == ["2.0", "1.5", "0.5"]


def test_servers_yaml_verbose_is_the_pre_1_6_psych_output(world: World):
    sid = register(world, 1, state="cordoned", multiplier="2")
    code, out, err = rake_handler(world)("docker exec scalelite-api ./bin/rake servers:yaml[verbose]")
    url = world.scalelite_servers[sid].url
    assert code == 0 and err == ""
    assert out == (f"---\n:servers:\n  {sid}:\n    :url: {url}\n    :secret: {world.bbb_secret}\n"
                   "    :load_multiplier: !ruby/object:BigDecimal 18:0.2e1\n    :enabled:\n"
                   "    :state: enabled\n    :load: -1.0\n    :online: false\n")
    parsed = parse_servers_yaml(out, "t")[sid]
    assert parsed["load_multiplier"] == 2.0 and parsed["load"] == -1.0 and parsed["online"] is False


def test_servers_disable_prompts_and_dies_without_stdin(world: World):
    boot(world, 1)
    sid = register(world, 1)
    world.scalelite_servers[sid].load = 20.0
    handler = rake_handler(world)
    code, out, err = handler(f"sudo -n docker exec scalelite-api ./bin/rake servers:disable[{sid}]")
    assert code == 1 and "please enter `yes`" in out and "rake aborted!" in err
    assert world.scalelite_servers[sid].state == "enabled" and handler.disable_calls == [sid]


def test_rake_panic_keep_state_is_any_non_empty_string(world: World):
    sid = register(world, 1)
    handler = rake_handler(world)
    assert handler(f"docker exec scalelite-api ./bin/rake servers:panic[{sid},false]")[0] == 0
    assert world.scalelite_servers[sid].state == "enabled"  # "false" is a true Ruby string
    assert handler(f"docker exec scalelite-api ./bin/rake servers:panic[{sid},,]")[0] == 0
    assert world.scalelite_servers[sid].state == "disabled"  # empty rake arguments are nil


def test_rake_errors_look_like_rake(world: World):
    handler = rake_handler(world)
    assert handler("docker exec scalelite-api ./bin/rake servers:remove[nope]") == \
        (1, "ERROR: No server found with id: nope\n", "")
    code, _, err = handler("docker exec scalelite-api ./bin/rake servers:drain[x]")
    assert code == 1 and "Don't know how to build task 'servers:drain'" in err
    code, out, _ = handler("docker exec scalelite-api ./bin/rake servers:add[ftp://x,s]")
    assert code == 1 and "must start with http" in out
    assert handler("docker exec other ./bin/rake servers")[0] == 1


# --- the rake client over a real SSH connection (paramiko client, testbed/sshd.py server on loopback) ----


@pytest.fixture
def ssh_rake(tmp_path, world: World):
    import asyncssh

    from testbed.sshd import start_ssh_server

    client_key = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "client_ed25519"
    client_key.write_private_key(str(key_file))
    handler = rake_handler(world)
    server = start_ssh_server("127.0.0.1", 0, handler,
                              authorized_keys=[client_key.export_public_key().decode().strip()])
    server.client_key_file = key_file
    try:
        yield server, handler
    finally:
        server.stop()


def _rake_client(server, known_hosts, **kw):
    from divims.clients.scalelite import ScaleliteRake
    return ScaleliteRake("127.0.0.1", port=server.port, user="root", key_file=str(server.client_key_file),
                         known_hosts=str(known_hosts), timeout_seconds=5, **kw)


def test_rake_client_over_ssh_with_a_verified_host_key(ssh_rake, tmp_path, world: World):
    server, handler = ssh_rake
    known = tmp_path / "known_hosts"
    known.write_text(server.known_hosts_line() + "\n")
    rake = _rake_client(server, known)
    added = rake.add_server(f"http://{world.domain(1)}:8090/bigbluebutton/api", "s3cr3t", load_multiplier=2)
    rake.enable(added.id)
    (listed,) = rake.get_servers()
    assert listed.id == added.id and listed.state.value == "enabled" and listed.load_multiplier == 2.0
    assert handler.commands[0].startswith("sudo -n docker exec scalelite-api ./bin/rake 'servers:add[")


def test_rake_client_refuses_unknown_and_changed_host_keys(ssh_rake, tmp_path):
    import asyncssh

    from divims.errors import AuthError

    server, handler = ssh_rake
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(AuthError) as err:
        _rake_client(server, empty).get_servers()
    assert "not in known_hosts" in str(err.value)
    other_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    other = tmp_path / "other_known_hosts"
    other.write_text(f"[127.0.0.1]:{server.port} {other_key}\n")
    with pytest.raises(AuthError) as err:
        _rake_client(server, other).get_servers()
    assert "differs" in str(err.value)
    assert handler.commands == []  # nothing ran on an unverified host
    assert _rake_client(server, empty, accept_unknown_host_keys=True).get_servers() == []
