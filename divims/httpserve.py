"""The one way divims serves HTTP: a WSGI app under waitress (a production server), in a thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from waitress import wasyncore
from waitress.server import create_server

log = logging.getLogger(__name__)


class WSGIServer:
    """waitress serving `app` on host:port (port 0: a free one, see `.port`) in a background thread.
    Extra keyword arguments go to waitress (threads, max_request_body_size, outbuf_overflow, ...)."""

    def __init__(self, app: Callable[..., Any], host: str, port: int, *, ident: str, threads: int = 4,
                 **waitress_options: Any):
        self.app = app
        self.ident = ident
        self._server = create_server(app, host=host, port=port, threads=threads, ident=ident,
                                     clear_untrusted_proxy_headers=True, **waitress_options)
        self.host = host
        self.port = int(self._server.effective_port)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> WSGIServer:
        self._thread = threading.Thread(target=self._server.run, name=f"{self.ident}-http", daemon=True)
        self._thread.start()
        log.info("%s listening on %s", self.ident, self.url)
        return self

    def stop(self) -> None:
        """Closes the socket, ends the serving loop and joins waitress' worker threads."""
        if self._thread is not None and self._thread.is_alive():
            # Close every socket from inside the loop's own thread: closing them from here while the loop
            # sits in select() makes it fail with EBADF. An empty socket map ends the loop.
            self._server.trigger.pull_trigger(lambda: wasyncore.close_all(self._server._map))
            self._thread.join(timeout=5)
        else:
            self._server.close()
        # A single-socket waitress server's close() leaves its task threads running: end them too.
        self._server.task_dispatcher.shutdown(timeout=5)
