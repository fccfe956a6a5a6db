"""Running the HTTP app on uvicorn: in the foreground (the CLI) or on a background thread.

uvicorn handles SIGTERM and SIGINT in the foreground: it stops accepting connections, waits for
in-flight requests to finish (up to ``graceful_s``), then runs the app's shutdown, which drains
and closes the server. :class:`BackgroundHTTP` runs the same stack on a thread, for tests and
benchmarks, bound to 127.0.0.1 by default.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

from regiontrt.serve.http import MAX_BODY, create_app
from regiontrt.serve.server import Server


def _config(server: Server, host: str, port: int, max_body: int, graceful_s: float,
            log_level: str) -> Any:
    import uvicorn

    app = create_app(server, max_body=max_body)
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                          timeout_graceful_shutdown=int(graceful_s), lifespan="on")


def serve_http(server: Server, *, host: str = "127.0.0.1", port: int = 8000,
               max_body: int = MAX_BODY, graceful_s: float = 30.0,
               log_level: str = "info") -> None:
    """Serve over HTTP until SIGTERM/SIGINT, then drain in-flight requests and close."""
    import uvicorn

    uvicorn.Server(_config(server, host, port, max_body, graceful_s, log_level)).run()


class BackgroundHTTP:
    """The HTTP app on uvicorn in a background thread; a context manager.

    Args:
        server: what to serve (closed when the thread stops).
        host: interface to bind (127.0.0.1 by default).
        port: port to bind; 0 picks a free one (read :attr:`port` after start).
    """

    def __init__(self, server: Server, host: str = "127.0.0.1", port: int = 0,
                 max_body: int = MAX_BODY, log_level: str = "warning") -> None:
        import uvicorn

        self._uv = uvicorn.Server(_config(server, host, port, max_body, 10.0, log_level))
        self._thread = threading.Thread(target=self._uv.run, name="regiontrt-http", daemon=True)
        self.host = host
        self.port = port

    def start(self, timeout: float = 20.0) -> BackgroundHTTP:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._uv.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.01)
        sockets = [s for srv in self._uv.servers for s in srv.sockets]
        self.port = int(sockets[0].getsockname()[1])
        return self

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, timeout: float = 20.0) -> None:
        self._uv.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> BackgroundHTTP:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
