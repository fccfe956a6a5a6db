"""Running the HTTP app on uvicorn: in the foreground (the CLI) or on a background thread.

uvicorn handles SIGTERM and SIGINT in the foreground: readiness turns 503 at once, uvicorn stops
accepting connections, waits for in-flight requests to finish (up to ``graceful_s``), then runs
the app's shutdown, which drains and closes the server. :class:`BackgroundHTTP` runs the same
stack on a thread, for tests and benchmarks, bound to 127.0.0.1 by default. :class:`HTTPLimits`
holds the limits against slow, idle and oversized clients.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import TracebackType

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from regiontrt.serve.guard import HEADER_TIMEOUT_S, DrainingUvicorn, head_timeout_protocol
from regiontrt.serve.http import (
    BODY_IDLE_S,
    BODY_TIMEOUT_S,
    DECODE_WORKERS,
    MAX_BODY,
    create_app,
)
from regiontrt.serve.protocol import MAX_DECODED
from regiontrt.serve.server import Server


@dataclass(frozen=True)
class HTTPLimits:
    """Limits on each connection and request (defaults in brackets).

    Attributes:
        max_decoded: cap on one request's decoded input arrays, bytes (128 MiB); 413 past it.
        header_timeout_s: a connection must deliver a complete request head within this of
            opening, or of its previous response (10 s); closed otherwise.
        body_idle_s: longest wait for the next piece of a body (10 s); 408 and closed.
        body_timeout_s: longest time for a whole body (60 s); 408 and closed.
        keep_alive_s: idle keep-alive connections are closed after this (5 s, uvicorn's).
        decode_workers: threads decoding bodies off the event loop (2); at most four times as
            many requests wait for them (503 past it).
        max_connections: open connections and requests past which uvicorn answers 503
            (``limit_concurrency``; None: no limit).
        parser: the HTTP/1.1 parser: ``"auto"`` (httptools where installed, else h11),
            ``"httptools"`` or ``"h11"``.
    """

    max_decoded: int = MAX_DECODED
    header_timeout_s: float = HEADER_TIMEOUT_S
    body_idle_s: float = BODY_IDLE_S
    body_timeout_s: float = BODY_TIMEOUT_S
    keep_alive_s: int = 5
    decode_workers: int = DECODE_WORKERS
    max_connections: int | None = None
    parser: str = "auto"


def _uvicorn(server: Server, host: str, port: int, max_body: int, graceful_s: float,
             log_level: str, limits: HTTPLimits,
             uvicorn_logging: bool = True) -> DrainingUvicorn:
    app = create_app(server, max_body=max_body, max_decoded=limits.max_decoded,
                     body_idle_s=limits.body_idle_s, body_timeout_s=limits.body_timeout_s,
                     decode_workers=limits.decode_workers)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=int(graceful_s), lifespan="on",
                            http=head_timeout_protocol(limits.header_timeout_s, limits.parser),
                            timeout_keep_alive=limits.keep_alive_s,
                            limit_concurrency=limits.max_connections,
                            # None: uvicorn installs no handlers of its own, so its records go
                            # through the caller's logging (one line per event, one format).
                            log_config=LOGGING_CONFIG if uvicorn_logging else None)
    return DrainingUvicorn(config, server)


def serve_http(server: Server, *, host: str = "127.0.0.1", port: int = 8000,
               max_body: int = MAX_BODY, graceful_s: float = 30.0,
               log_level: str = "info", limits: HTTPLimits | None = None,
               uvicorn_logging: bool = True) -> None:
    """Serve over HTTP until SIGTERM/SIGINT, then drain in-flight requests and close.

    ``uvicorn_logging=False`` keeps uvicorn from configuring logging: its records then reach
    the handlers the caller set up (``regiontrt serve`` does so, one line per event).
    """
    _uvicorn(server, host, port, max_body, graceful_s, log_level, limits or HTTPLimits(),
             uvicorn_logging).run()


class BackgroundHTTP:
    """The HTTP app on uvicorn in a background thread; a context manager.

    Args:
        server: what to serve (closed when the thread stops).
        host: interface to bind (127.0.0.1 by default).
        port: port to bind; 0 picks a free one (read :attr:`port` after start).
        max_body: largest request body in bytes.
        log_level: uvicorn's log level.
        limits: connection and request limits (:class:`HTTPLimits` defaults).
    """

    def __init__(self, server: Server, host: str = "127.0.0.1", port: int = 0,
                 max_body: int = MAX_BODY, log_level: str = "warning",
                 limits: HTTPLimits | None = None) -> None:
        self.server = server
        self._uv = _uvicorn(server, host, port, max_body, 10.0, log_level,
                            limits or HTTPLimits())
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
        self.server.begin_drain()
        self._uv.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> BackgroundHTTP:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


__all__ = ["BackgroundHTTP", "HTTPLimits", "serve_http"]
