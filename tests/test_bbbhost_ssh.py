"""BBBHostSSH (paramiko) against the in-process asyncssh server, the stats script against real sh,
and once against Debian's real OpenSSH sshd."""

from __future__ import annotations

import calendar
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from bbb_fixtures import add_meeting, boot

from divims.clients.bbbhost import STATS_SCRIPT, BBBHostSSH, parse_not_after, parse_stats
from divims.errors import AuthError, ProtocolError, TimeoutError_, TransientError
from testbed.sshd import bbb_stats_handler, start_ssh_server
from testbed.world import Delays, FakeRecording, World

HOST = "127.0.1.1"
GOOD = """load1=0.42
cpus=8
uptime=1234.5
services=ok
recorded=1
archived=2
sanity=3
processing=4
processing_oldest_mtime=1000
now=1600
published_not_transferred=5
failed=6
tls_not_after=Mar  5 12:00:00 2027 GMT
end=ok
"""


# --- parsing -------------------------------------------------------------------------------------
def test_parse_stats_reads_every_key():
    s = parse_stats(GOOD, "h")
    assert (s.load1, s.cpus, s.uptime_seconds, s.services_healthy) == (0.42, 8, 1234.5, True)
    r = s.recordings
    assert (r.recorded, r.archived, r.sanity, r.processing, r.published_not_transferred, r.failed) == (1, 2, 3, 4, 5, 6)
    assert s.tls_expiry_timestamp == calendar.timegm((2027, 3, 5, 12, 0, 0))
    assert s.oldest_processing_age_seconds == 600.0


def test_parse_not_after_accepts_openssl_dates_only():
    assert parse_not_after("Dec 31 23:59:59 2026 GMT") == calendar.timegm((2026, 12, 31, 23, 59, 59))
    with pytest.raises(ValueError):
        parse_not_after("2026-12-31")


@pytest.mark.parametrize("change, message", [
    (lambda t: t.replace("end=ok\n", ""), "end"),
    (lambda t: t.replace("cpus=8\n", "").replace("failed=6\n", ""), "cpus, failed"),
    (lambda t: t.replace("load1=0.42", "load1=high"), "load1 is not a number"),
    (lambda t: t.replace("sanity=3", "sanity=-1"), "sanity is negative"),
    (lambda t: t.replace("services=ok", "services=maybe"), "services"),
    (lambda t: t.replace("Mar  5 12:00:00 2027 GMT", "soon"), "tls_not_after"),
    (lambda t: t.replace("cpus=8", "cpus=0"), "cpus is 0"),
])
def test_parse_stats_errors_name_the_key(change, message):
    with pytest.raises(ProtocolError, match=message) as err:
        parse_stats(change(GOOD), "bbb-3")
    assert err.value.target == "bbb-3"


def test_parse_stats_optional_values():
    s = parse_stats(GOOD.replace("Mar  5 12:00:00 2027 GMT", "").replace("mtime=1000", "mtime=")
                    .replace("services=ok", "services=missing"), "h")
    assert s.tls_expiry_timestamp is None and s.oldest_processing_age_seconds is None
    assert not s.services_healthy


# --- the script itself, run by a real sh over a fake BBB tree --------------------------------------
def _bbb_tree(root: Path, bbb_conf_output: str | None) -> Path:
    st = root / "var/bigbluebutton/recording/status"
    for d in ("recorded", "archived", "sanity", "processed", "published", "transferred"):
        (st / d).mkdir(parents=True)
    proc = root / "var/bigbluebutton/recording/process/presentation"
    proc.mkdir(parents=True)
    pub = root / "var/bigbluebutton/published"

    def touch(p: Path) -> None:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()

    # ids carry dashes, as BBB's <sha1>-<ms> do: r1 recorded, r2 archived, r3 sanity-checked,
    # r4 processing, r5 published (two formats) not transferred, r6 transferred (marker),
    # r7 transferred (files deleted), r8 failed.
    for i in range(1, 8):
        touch(st / f"recorded/ab-{i}.done")
    for i in range(2, 8):
        touch(st / f"archived/ab-{i}.done")
    for i in range(3, 8):
        touch(st / f"sanity/ab-{i}.done")
    (proc / "ab-4").mkdir()
    os.utime(proc / "ab-4", (1000, 1000))
    for i in (5, 6, 7):
        touch(st / f"processed/ab-{i}-presentation.done")
        touch(st / f"published/ab-{i}-presentation.done")
    touch(st / "published/ab-5-video.done")
    (pub / "video/ab-5").mkdir(parents=True)
    (pub / "presentation/ab-5").mkdir(parents=True)
    (pub / "presentation/ab-6").mkdir(parents=True)
    touch(st / "transferred/ab-6.done")
    touch(st / "processed/ab-8-presentation.fail")
    (root / "etc/nginx/sites-enabled").mkdir(parents=True)
    (root / "etc/nginx/sites-enabled/bigbluebutton").write_text(
        "server {\n  listen 443 ssl;\n  ssl_certificate /etc/ssl/bbb.pem;\n  ssl_certificate_key /etc/ssl/k.pem;\n}\n")
    (root / "etc/ssl").mkdir(parents=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ed25519", "-nodes", "-keyout", str(root / "etc/ssl/k.pem"),
                    "-subj", "/CN=bbb", "-days", "30", "-out", str(root / "etc/ssl/bbb.pem")],
                   check=True, capture_output=True, timeout=30)
    bindir = root / "bin"
    bindir.mkdir()
    if bbb_conf_output is not None:
        (bindir / "bbb-conf").write_text(f"#!/bin/sh\ncat <<'X'\n{bbb_conf_output}\nX\n")
        (bindir / "bbb-conf").chmod(0o755)
    return bindir


def _run_script(root: Path, bindir: Path) -> str:
    env = {"DIVIMS_ROOT": str(root), "PATH": f"{bindir}:/usr/bin:/bin"}
    out = subprocess.run(["sh", "-c", STATS_SCRIPT], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


@needs_openssl
def test_stats_script_counts_each_pipeline_stage_once(tmp_path):
    bindir = _bbb_tree(tmp_path, "nginx ———► [✔ - active]\nfreeswitch ———► [✔ - active]")
    s = parse_stats(_run_script(tmp_path, bindir), "h")
    r = s.recordings
    assert (r.recorded, r.archived, r.sanity, r.processing, r.published_not_transferred, r.failed) == (1, 1, 1, 1, 1, 1)
    assert s.services_healthy and s.cpus == os.cpu_count()
    expiry = s.tls_expiry_timestamp
    assert expiry is not None and abs(expiry - (time.time() + 30 * 86400)) < 3600
    assert s.oldest_processing_age_seconds > time.time() - 1000 - 60


@needs_openssl
@pytest.mark.parametrize("output, healthy", [
    ("nginx ———► [✔ - active]\nbbb-html5 ———► [✘ - inactive]", False),
    ("freeswitch ———► [✘ - failed]", False),
    ("etherpad ———► [✘ - activating]", False),
    (None, False),  # no bbb-conf at all
])
def test_stats_script_health_follows_bbb_conf(tmp_path, output, healthy):
    bindir = _bbb_tree(tmp_path, output)
    assert parse_stats(_run_script(tmp_path, bindir), "h").services_healthy is healthy


# --- paramiko against the in-process SSH server ------------------------------------------------------
@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    for name, passphrase in (("client", None), ("stranger", None), ("locked", "s3cret-pass")):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase or "", "-f", str(d / name)],
                       check=True, timeout=30)
    return d


@pytest.fixture
def world():
    return World(slots=2, delays=Delays(recording_seconds=100))


@pytest.fixture
def sshd(world, keys):
    handle = start_ssh_server(HOST, 0, bbb_stats_handler(world, HOST),
                              authorized_keys=[(keys / "client.pub").read_text(), (keys / "locked.pub").read_text()])
    (keys / f"known_hosts_{handle.port}").write_text(handle.known_hosts_line() + "\n")
    try:
        yield handle
    finally:
        handle.stop()


def _client(sshd, keys, **kw) -> BBBHostSSH:
    args = dict(port=sshd.port, key_file=str(keys / "client"), known_hosts=str(keys / f"known_hosts_{sshd.port}"),
                timeout_seconds=3)
    args.update(kw)
    return BBBHostSSH(HOST, **args)


def test_stats_over_ssh_come_from_the_world(world, sshd, keys):
    boot(world, 1, booted_seconds_ago=500)
    add_meeting(world, 1, "m", 10)
    h = world.bbb_hosts[HOST]
    now = world.now()
    for i, stage in enumerate(["recorded", "sanity", "processing", "processing", "published", "transferred",
                               "failed"]):
        h.recordings[f"r{i}"] = FakeRecording(f"r{i}", "m", stage, now - 900, now - 300,
                                              None if stage in ("transferred", "failed") else now + 50 + i)
    with _client(sshd, keys) as client:
        s = client.stats()
        r = s.recordings
        assert (r.recorded, r.archived, r.sanity, r.processing, r.published_not_transferred, r.failed) == \
            (1, 0, 1, 2, 1, 1)
        assert s.cpus == 8 and s.services_healthy and 499 < s.uptime_seconds < 520
        assert s.tls_expiry_timestamp == pytest.approx(h.tls_expiry, abs=1)
        assert 45 < s.oldest_processing_age_seconds < 60  # entered processing at next_at - 100
        assert s.load1 > 0
        h.services_healthy = False
        assert not client.stats().services_healthy  # same connection, reused
    assert sum(1 for c in sshd.commands if "divims-bbb-stats" in c) == 2


def test_other_commands_are_not_found(world, sshd, keys):
    boot(world, 1)
    with _client(sshd, keys) as client:
        result = client.run("rm -rf /")
    assert result.exit_code == 127 and "not found" in result.stderr


def test_unknown_host_key_is_refused_naming_the_host(world, sshd, keys, tmp_path):
    boot(world, 1)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(AuthError, match="not in known_hosts") as err:
        _client(sshd, keys, known_hosts=str(empty)).stats()
    assert err.value.target == f"{HOST}:{sshd.port}" and err.value.service == "ssh"
    assert _client(sshd, keys, known_hosts=str(empty), accept_unknown_host_keys=True).stats().cpus == 8
    assert empty.read_text() == ""  # accepting a key never rewrites the operator's known_hosts


def test_changed_host_key_is_refused(world, sshd, keys, tmp_path):
    boot(world, 1)
    other = start_ssh_server("127.0.0.1", 0, lambda c: (0, "", ""))
    other.stop()
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[{HOST}]:{sshd.port} {other.public_key}\n")
    with pytest.raises(AuthError, match="CHANGED"):
        _client(sshd, keys, known_hosts=str(wrong)).stats()
    with pytest.raises(AuthError, match="CHANGED"):  # even when unknown keys would be accepted
        _client(sshd, keys, known_hosts=str(wrong), accept_unknown_host_keys=True).stats()


def test_missing_known_hosts_file_is_a_clear_error(world, sshd, keys, tmp_path):
    with pytest.raises(AuthError, match="known_hosts file .* not found"):
        _client(sshd, keys, known_hosts=str(tmp_path / "nope")).stats()


def test_unauthorized_client_key_is_refused(world, sshd, keys):
    boot(world, 1)
    with pytest.raises(AuthError, match="public key refused for user root"):
        _client(sshd, keys, key_file=str(keys / "stranger")).stats()


def test_encrypted_key_needs_its_passphrase_which_stays_secret(world, sshd, keys):
    boot(world, 1)
    with pytest.raises(AuthError, match="encrypted"):
        _client(sshd, keys, key_file=str(keys / "locked")).stats()
    client = _client(sshd, keys, key_file=str(keys / "locked"), key_passphrase="s3cret-pass")
    assert client.stats().cpus == 8 and "s3cret" not in repr(client)
    client.close()


def test_host_going_down_is_transient_and_reconnects_after(world, sshd, keys):
    vm = boot(world, 1)
    with _client(sshd, keys) as client:
        assert client.stats().cpus == 8
        vm.state = "stopping"
        with pytest.raises(TransientError):
            client.stats()
        vm.state = "running"
        assert client.stats().cpus == 8


def test_connection_refused_is_transient(keys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransientError, match="connect failed"):
        BBBHostSSH("127.0.0.1", port=port, key_file=str(keys / "client"), timeout_seconds=2).stats()


def test_silent_port_times_out_on_connect(keys):
    with socket.socket() as listener:  # accepts (backlog) but never speaks SSH
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        start = time.monotonic()
        with pytest.raises(TimeoutError_):
            BBBHostSSH("127.0.0.1", port=listener.getsockname()[1], key_file=str(keys / "client"),
                       timeout_seconds=0.5, accept_unknown_host_keys=True).stats()
        assert time.monotonic() - start < 5


def test_hanging_command_times_out(keys):
    release = threading.Event()

    def slow(command):
        release.wait(10)
        return 0, "", ""

    with start_ssh_server(HOST, 0, slow) as handle:
        client = BBBHostSSH(HOST, port=handle.port, key_file=str(keys / "client"), accept_unknown_host_keys=True,
                            timeout_seconds=2)
        start = time.monotonic()
        with pytest.raises(TimeoutError_, match="did not end"):
            client.run("sleep 100", timeout_seconds=0.3)
        assert time.monotonic() - start < 2
        release.set()
        client.close()


# --- once against a real OpenSSH sshd -----------------------------------------------------------------
SSHD = "/usr/sbin/sshd"


@pytest.mark.integration
@pytest.mark.skipif(not os.path.exists(SSHD), reason="OpenSSH server not installed")
@needs_openssl
def test_real_openssh_sshd_runs_the_stats_script(tmp_path, keys):
    if not os.path.isdir("/run/sshd"):
        try:
            os.makedirs("/run/sshd", mode=0o755)
        except OSError:
            pytest.skip("sshd needs /run/sshd (privilege separation directory)")
    d = tmp_path / "sshd"
    d.mkdir(mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host")], check=True, timeout=30)
    (d / "authorized_keys").write_text((keys / "client.pub").read_text())
    root = tmp_path / "bbb"
    bindir = _bbb_tree(root, "nginx ———► [✔ - active]")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
StrictModes no
SetEnv DIVIMS_ROOT={root} PATH={bindir}:/usr/bin:/bin
""")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"sshd did not start: {proc.stderr.read().decode()[-500:]}")
                time.sleep(0.05)
        host_pub = (d / "host.pub").read_text().split()
        known = tmp_path / "known_hosts"
        known.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
        with BBBHostSSH("127.0.0.1", port=port, user=user, key_file=str(keys / "client"),
                        known_hosts=str(known), timeout_seconds=10) as client:
            assert client.run("echo hi").stdout == "hi\n"
            s = client.stats()
        r = s.recordings
        assert (r.recorded, r.archived, r.sanity, r.processing, r.published_not_transferred, r.failed) == \
            (1, 1, 1, 1, 1, 1)
        assert s.services_healthy and s.tls_expiry_timestamp is not None
        known.write_text("")
        with pytest.raises(AuthError, match="not in known_hosts"):
            BBBHostSSH("127.0.0.1", port=port, user=user, key_file=str(keys / "client"), known_hosts=str(known),
                       timeout_seconds=10).stats()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()
