"""The shared SSH client (divims.clients.ssh.SSHClient, paramiko) against testbed/sshd.py's in-process
server: host-key checks, key auth, timeouts, reconnects and the errors they raise."""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import asyncssh
import pytest

from divims.clients.ssh import CommandResult, SSHClient
from divims.errors import AuthError, TimeoutError_, TransientError
from testbed.sshd import start_ssh_server

HOST = "127.0.0.1"
PASSPHRASE = "s3cret-pass-7f2a"


RELEASE = threading.Event()  # lets a `hang` command end


def echo(command: str) -> tuple[int, str, str]:
    if command.startswith("hang"):
        RELEASE.wait(10)
    if command.startswith("fail"):
        return 3, "", "it failed\n"
    return 0, f"ran {command}\n", ""


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("sshkeys")
    for name, passphrase in (("client", ""), ("stranger", ""), ("locked", PASSPHRASE)):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-a", "1", "-N", passphrase, "-f", str(d / name)],
                       check=True, timeout=30)
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(d / "host_key"))
    return d


@pytest.fixture
def server(keys, tmp_path):
    RELEASE.clear()
    handle = start_ssh_server(HOST, 0, echo, host_key_path=str(keys / "host_key"),
                              authorized_keys=[(keys / "client.pub").read_text(), (keys / "locked.pub").read_text()])
    known = tmp_path / "known_hosts"
    known.write_text(handle.known_hosts_line() + "\n")
    handle.known_hosts_file = known
    try:
        yield handle
    finally:
        RELEASE.set()
        handle.stop()


def client(server, keys, **kw) -> SSHClient:
    args = dict(port=server.port, key_file=str(keys / "client"), known_hosts=str(server.known_hosts_file),
                timeout_seconds=3)
    args.update(kw)
    return SSHClient(HOST, **args)


def test_runs_commands_on_one_kept_connection(server, keys):
    with client(server, keys) as c:
        assert c.run("hello") == CommandResult(0, "ran hello\n", "")
        transport = c._client.get_transport()
        result = c.run("fail now")
        assert (result.exit_code, result.stderr) == (3, "it failed\n")
        assert c._client.get_transport() is transport  # reused, not reopened
    assert c._client is None and server.commands == ["hello", "fail now"]


def test_unknown_host_key_is_refused_unless_accepted_and_known_hosts_is_never_written(server, keys, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(AuthError, match="is not in known_hosts") as err:
        client(server, keys, known_hosts=str(empty)).run("x")
    assert err.value.service == "ssh" and err.value.target == f"{HOST}:{server.port}"
    assert "SHA256:" in err.value.message  # the key's fingerprint, to compare with the host's
    with client(server, keys, known_hosts=str(empty), accept_unknown_host_keys=True) as c:
        assert c.run("x").exit_code == 0
    assert empty.read_text() == ""
    assert server.commands == ["x"]  # nothing ran on the unverified connection


def test_changed_host_key_is_refused_with_both_fingerprints(server, keys, tmp_path):
    other = asyncssh.generate_private_key("ssh-ed25519")
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[{HOST}]:{server.port} {other.export_public_key().decode().strip()}\n")
    got = asyncssh.read_private_key(str(keys / "host_key")).get_fingerprint()  # "SHA256:..."
    for accept in (False, True):  # accepting unknown keys never accepts a changed one
        with pytest.raises(AuthError, match="CHANGED") as err:
            client(server, keys, known_hosts=str(wrong), accept_unknown_host_keys=accept).run("x")
        assert got in err.value.message and other.get_fingerprint() in err.value.message
        assert "differs" in err.value.message
    assert wrong.read_text().count("\n") == 1 and server.commands == []


def test_missing_known_hosts_or_key_file_is_an_auth_error(server, keys, tmp_path):
    with pytest.raises(AuthError, match="known_hosts file .* not found"):
        client(server, keys, known_hosts=str(tmp_path / "nope")).run("x")
    with pytest.raises(AuthError, match="key file .*absent not found"):
        client(server, keys, key_file=str(tmp_path / "absent")).run("x")


def test_refused_client_key(server, keys):
    with pytest.raises(AuthError, match="public key refused for user deploy"):
        client(server, keys, key_file=str(keys / "stranger"), user="deploy").run("x")


def test_encrypted_key_needs_its_passphrase_which_never_shows(server, keys):
    with pytest.raises(AuthError, match="encrypted: set key_passphrase"):
        client(server, keys, key_file=str(keys / "locked")).run("x")
    with pytest.raises(AuthError) as err:
        client(server, keys, key_file=str(keys / "locked"), key_passphrase="wrong-" + PASSPHRASE).run("x")
    assert "could not be decrypted" in str(err.value)
    assert "wrong-" not in str(err.value) and PASSPHRASE not in str(err.value)

    class Secret:  # what pydantic's SecretStr offers
        def get_secret_value(self) -> str:
            return PASSPHRASE

    for passphrase in (PASSPHRASE, Secret()):
        with client(server, keys, key_file=str(keys / "locked"), key_passphrase=passphrase) as c:
            assert c.run("in").stdout == "ran in\n"
            assert PASSPHRASE not in repr(c)


def test_exec_timeout_names_the_label_not_the_command_and_the_next_run_works(server, keys):
    with client(server, keys) as c:
        start = time.monotonic()
        with pytest.raises(TimeoutError_, match="rake servers did not end within 0.3 s") as err:
            c.run("hang secret-token-123", timeout_seconds=0.3, label="rake servers")
        assert time.monotonic() - start < 2 and "secret-token-123" not in str(err.value)
        RELEASE.set()
        assert c.run("next").stdout == "ran next\n"  # on a new connection: the timed-out one was dropped


def test_reconnects_after_the_server_restarts(server, keys):
    c = client(server, keys)
    assert c.run("before").exit_code == 0
    first = c._client
    port = server.port
    server.stop()  # drops the connection
    with pytest.raises(TransientError):  # nothing listens now
        c.run("while down")
    again = start_ssh_server(HOST, port, echo, host_key_path=str(keys / "host_key"),
                             authorized_keys=[(keys / "client.pub").read_text()])
    try:
        assert c.run("after").stdout == "ran after\n"
        assert c._client is not first and again.commands == ["after"]
    finally:
        c.close()
        again.stop()


def test_kept_connection_that_died_unnoticed_is_reopened_once(server, keys):
    c = client(server, keys)
    assert c.run("one").exit_code == 0
    # the peer vanished without the transport noticing yet: opening a session fails on it
    c._client.get_transport().open_session = lambda **kw: (_ for _ in ()).throw(EOFError())
    assert c.run("two").stdout == "ran two\n"
    c.close()


def test_connection_refused_is_transient():
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    with pytest.raises(TransientError, match="connect failed") as err:
        SSHClient(HOST, port=port, accept_unknown_host_keys=True, timeout_seconds=2).run("x")
    assert err.value.target == f"{HOST}:{port}"


def test_silent_port_times_out_on_connect():
    with socket.socket() as listener:  # accepts (backlog) but never speaks SSH
        listener.bind((HOST, 0))
        listener.listen(1)
        start = time.monotonic()
        with pytest.raises(TimeoutError_, match="within 0.5 s"):
            SSHClient(HOST, port=listener.getsockname()[1], accept_unknown_host_keys=True,
                      timeout_seconds=0.5).run("x")
        assert time.monotonic() - start < 5
