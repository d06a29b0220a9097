"""The exporter's keep-alive transport under the real BBB client: one connection reused, a connection the
server closed while idle replaced transparently, and refusals, timeouts and bad certificates turned into
the client's usual errors (naming no URL)."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading

import pytest
from exporter_fixtures import add_meeting, running_world

from divims.clients.bbb import BBBClient
from divims.errors import TimeoutError_, TransientError
from exporter.poll import session_for
from exporter.transport import KeepAliveSession
from testbed.bbb import FakeBBBFleet

BODY = b"<response><returncode>SUCCESS</returncode><meetings/></response>"


def _one_shot_server(answers: int, tls: ssl.SSLContext | None = None) -> tuple[socket.socket, list[int]]:
    """A server that answers `answers` requests per connection with keep-alive, then closes it silently
    (as an idle-timeout would); returns the listening socket and the count of connections accepted."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            try:
                if tls is not None:
                    conn = tls.wrap_socket(conn, server_side=True)
                for _ in range(answers):
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: "
                                 + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener, accepted


def test_one_connection_is_kept_for_every_poll_of_a_server():
    world = running_world(1)
    host = world.domain(1)
    add_meeting(world, host, 12)
    with FakeBBBFleet(world) as fleet:
        session = session_for(fleet.url_for(host))
        assert isinstance(session, KeepAliveSession)
        client = BBBClient(fleet.url_for(host), world.bbb_secret, timeout_seconds=2, session=session)
        for _ in range(5):
            assert [m.participant_count for m in client.get_meetings()] == [12]
        sock = session._conn.sock
        client.get_meetings()
        assert session._conn.sock is sock  # the same TCP connection
        assert "checksum" not in repr(session) and world.bbb_secret not in repr(session)
        client.close()
        assert session._conn is None


def test_a_connection_closed_while_idle_is_replaced_without_an_error():
    listener, accepted = _one_shot_server(answers=1)
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/bigbluebutton/api"
        client = BBBClient(url, "secret", timeout_seconds=2, session=KeepAliveSession())
        for _ in range(3):
            assert client.get_meetings() == []
        assert len(accepted) == 3
    finally:
        listener.close()


def test_refused_and_timeouts_become_the_clients_errors():
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    refused = BBBClient(f"http://127.0.0.1:{port}/bigbluebutton/api", "secret", timeout_seconds=1,
                        session=KeepAliveSession())
    with pytest.raises(TransientError, match="connection refused") as exc:
        refused.get_meetings()
    assert "checksum" not in str(exc.value)

    world = running_world(1)
    host = world.domain(1)
    world.faults["bbb"].latency_seconds = 2.0
    with FakeBBBFleet(world) as fleet:
        slow = BBBClient(fleet.url_for(host), world.bbb_secret, timeout_seconds=0.3,
                         session=KeepAliveSession())
        with pytest.raises(TimeoutError_):
            slow.get_meetings()
        world.faults["bbb"].latency_seconds = 0.0
        assert slow.get_meetings() == []  # a fresh connection after the timeout


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_tls_verifies_the_certificate_and_the_host(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    listener, _ = _one_shot_server(answers=5, tls=server_ctx)
    try:
        url = f"https://127.0.0.1:{listener.getsockname()[1]}/bigbluebutton/api"
        untrusted = BBBClient(url, "secret", timeout_seconds=2, session=KeepAliveSession())
        with pytest.raises(TransientError, match="TLS"):
            untrusted.get_meetings()  # self-signed: not in certifi's bundle
        trusted = BBBClient(url, "secret", timeout_seconds=2,
                            session=KeepAliveSession(ssl.create_default_context(cafile=str(cert))))
        assert trusted.get_meetings() == []
    finally:
        listener.close()


def test_a_proxied_url_keeps_requests_with_the_proxy(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    session = session_for("https://bbb.example.org/bigbluebutton/api")
    assert not isinstance(session, KeepAliveSession)
    assert session.proxies.get("https") == "http://127.0.0.1:3128"
