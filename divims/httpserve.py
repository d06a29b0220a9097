"""The one way divims serves HTTP: a WSGI app under waitress (a production server)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from waitress import wasyncore
from waitress.server import create_server

log = logging.getLogger(__name__)


class WSGIServer:
    """waitress serving `app` on host:port (port 0: a free one, see `.port`), or on an already bound,
    listening `sock` (inherited from a supervisor). `start()` serves in a background thread, `run()` in
    the caller's. Extra keyword arguments go to waitress (max_request_body_size, outbuf_overflow, ...)."""

    def __init__(self, app: Callable[..., Any], host: str = "127.0.0.1", port: int = 0, *, ident: str,
                 threads: int = 4, sock: socket.socket | None = None, **waitress_options: Any):
        self.app = app
        self.ident = ident
        where: dict[str, Any] = {"sockets": [sock]} if sock is not None else {"host": host, "port": port}
        self._server = create_server(app, threads=threads, ident=ident, clear_untrusted_proxy_headers=True,
                                     **where, **waitress_options)
        self.host = host if sock is None else str(sock.getsockname()[0])
        self.port = int(self._server.effective_port)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> WSGIServer:
        self._thread = threading.Thread(target=self.run, name=f"{self.ident}-http", daemon=True)
        self._thread.start()
        log.info("%s listening on %s", self.ident, self.url)
        return self

    def run(self) -> None:
        """Serves until `stop()` (returns then)."""
        while self._server._map:
            try:
                self._server.run()
            except (OSError, ValueError):
                # stop() from another thread closed a socket under select(): loop again, the map
                # is empty by then and the loop ends.
                continue

    def stop(self) -> None:
        """Stops accepting, closes every connection, stops the worker threads, joins the serving thread."""
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
        map_ = self._server._map
        try:
            # Closing inside the loop's own thread (via its trigger) ends the loop at once, without
            # waiting for select()'s timeout.
            self._server.trigger.pull_trigger(lambda: wasyncore.close_all(map_, ignore_all=True))
        except OSError:
            pass
        own = self._thread is not None and self._thread is not threading.current_thread()
        if own:
            self._thread.join(timeout=2)
        wasyncore.close_all(map_, ignore_all=True)
        if own:
            self._thread.join(timeout=5)

    close = stop
