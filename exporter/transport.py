"""A lean keep-alive HTTP transport for the exporter's BBB polls, in the shape of `requests.Session`.

A getMeetings poll through requests costs about 1.1 ms of CPU (adapters, hooks, cookie jar, urllib3's
pool), five times what the same GET costs over one `http.client` connection, and a poll cycle makes one
per server: for 500 servers that is half a second of GIL per cycle, which slows both the cycle and every
scrape waiting for the GIL. `KeepAliveSession` gives `divims.clients.bbb.BBBClient` the two methods it
uses (`get`, `close`) over one persistent connection per server, and raises the requests exceptions the
client already maps to its errors, so the client's logic (checksums, XML, error kinds) stays in one place.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

USER_AGENT = "divims-exporter"
# Failures that mean a kept-alive connection was closed by the server while idle: the request never
# reached it, so sending it again once on a new connection is safe (GET, idempotent anyway).
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


@dataclass(frozen=True)
class Response:
    """What the BBB client reads from an answer."""

    status_code: int
    content: bytes


def default_ssl_context() -> ssl.SSLContext:
    """Verifies certificates and host names like requests does: REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE when
    set, else certifi's bundle (the one requests uses)."""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if not bundle:
        import certifi

        bundle = certifi.where()
    return ssl.create_default_context(cafile=bundle)


class KeepAliveSession:
    """One persistent HTTP(S) connection to one origin; `get()` reconnects when it must.

    Calls are serialised (the poller never runs two calls of one server at once; the lock makes that a
    guarantee rather than an assumption).
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None):
        self._ssl_context = ssl_context
        self._conn: http.client.HTTPConnection | None = None
        self._origin: tuple[str, str, int] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # the origin only: a URL of ours would carry a checksum
        return f"KeepAliveSession({self._origin[1] if self._origin else 'unconnected'})"

    def get(self, url: str, timeout: float, allow_redirects: bool = False) -> Response:
        """GET `url` (redirects are never followed: `allow_redirects` exists for requests' signature).

        Raises requests.Timeout, requests.exceptions.SSLError or requests.ConnectionError (with a message
        free of the URL), as requests would."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise requests.exceptions.InvalidURL("not an http(s) URL")
        origin = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        with self._lock:
            try:
                return self._get(origin, target, timeout)
            except TimeoutError:
                self._drop()
                raise requests.Timeout("no answer in time") from None
            except ssl.SSLError as exc:
                self._drop()
                raise requests.exceptions.SSLError(f"TLS failed ({exc.__class__.__name__})") from None
            except ssl.CertificateError:
                self._drop()
                raise requests.exceptions.SSLError("TLS certificate rejected") from None
            except ConnectionRefusedError:
                self._drop()
                raise requests.ConnectionError("connection refused") from None
            except (*_STALE, http.client.IncompleteRead):
                self._drop()
                raise requests.ConnectionError("connection reset") from None
            except socket.gaierror:
                self._drop()
                raise requests.ConnectionError("name resolution failed") from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                raise requests.ConnectionError(f"connection failed ({exc.__class__.__name__})") from None

    def _get(self, origin: tuple[str, str, int], target: str, timeout: float) -> Response:
        reused = self._conn is not None and self._origin == origin and self._conn.sock is not None
        if not reused:
            self._connect(origin, timeout)
        try:
            return self._exchange(target, timeout)
        except _STALE:
            if not reused:
                raise
        self._connect(origin, timeout)  # the idle connection was closed under us: once more, fresh
        return self._exchange(target, timeout)

    def _connect(self, origin: tuple[str, str, int], timeout: float) -> None:
        self._drop()
        scheme, host, port = origin
        if scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = default_ssl_context()
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=timeout, context=self._ssl_context)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.connect()
        self._conn, self._origin = conn, origin

    def _exchange(self, target: str, timeout: float) -> Response:
        conn = self._conn
        assert conn is not None and conn.sock is not None
        conn.sock.settimeout(timeout)
        conn.request("GET", target, headers={"User-Agent": USER_AGENT, "Accept": "*/*"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.will_close:
            self._drop()
        return Response(resp.status, body)

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def close(self) -> None:
        with self._lock:
            self._drop()
