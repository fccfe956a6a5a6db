"""Connection guards for uvicorn: a deadline on each request head, and draining on shutdown.

uvicorn (0.3x-0.5x) times out only idle keep-alive connections after a response: a connection
that never sends a complete request head (an idle socket, headers sent a byte at a time) stays
open for ever. :func:`head_timeout_protocol` returns a subclass of uvicorn's HTTP protocol that
closes a connection whose next request head is not complete within ``header_timeout_s`` of the
connection opening or of its previous response; once a head is in, the app's own body timeouts
(:func:`regiontrt.serve.http.create_app`) take over. The protocol is uvicorn's httptools one
where ``httptools`` is installed (a C parser: what uvicorn itself picks, and several times
cheaper a request than h11's pure-Python parsing, which the front end of a CPU host otherwise
spends its single event loop on), else its h11 one. :class:`DrainingUvicorn` marks the
served :class:`Server` as draining (readiness 503) the moment shutdown begins: on the signal,
not after uvicorn's next 0.1 s tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from types import FrameType
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from regiontrt.serve.server import Server

log = logging.getLogger("regiontrt.serve")

#: Default longest time for a connection to deliver a complete request head (s).
HEADER_TIMEOUT_S = 10.0
#: Largest request head (bytes): h11's own limit, which the httptools protocol enforces too
#: (httptools has none, so a head would otherwise grow as fast as a client sends it).
MAX_HEAD_BYTES = 16 * 1024
_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n"
              b"content-length: 0\r\n\r\n")


class _HeadDeadline:
    """The head deadline's timer, shared by the h11 and httptools protocols (mixed in first;
    ``self`` is the uvicorn protocol, hence the ``Any``)."""

    header_timeout_s = HEADER_TIMEOUT_S
    _head_timer: asyncio.TimerHandle | None = None

    def _arm(self: Any) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_expired)

    def _disarm(self: Any) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def connection_lost(self: Any, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _serving(self: Any) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _expired(self: Any) -> bool:
        """Whether the deadline really passed with no request being served (then logged)."""
        self._head_timer = None
        if self.transport.is_closing() or self._serving():
            return False
        log.info("closing the connection from %s: no complete request head within %g s",
                 self.client[0] if self.client else "?", self.header_timeout_s)
        return True


class _HeadTimeoutH11(_HeadDeadline, H11Protocol):
    """``H11Protocol`` with a deadline on each request head (see the module docstring)."""

    def handle_events(self) -> None:
        super().handle_events()
        if self._serving():  # a whole head arrived: the app's timeouts apply from here
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request
        if not self.transport.is_closing():
            self._arm()

    def _head_expired(self) -> None:
        if not self._expired():
            return
        with contextlib.suppress(h11.LocalProtocolError):  # mid-request: just drop it
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()


def _httptools_protocol() -> type[asyncio.Protocol] | None:
    """uvicorn's httptools protocol with the head deadline, or ``None`` without httptools."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class HeadTimeoutHttpTools(_HeadDeadline, HttpToolsProtocol):
        """``HttpToolsProtocol`` with a deadline on each request head, and h11's cap on its
        size (431 and closed past :data:`MAX_HEAD_BYTES`)."""

        _head_bytes = 0
        _in_head = False  # between a request's first byte and the end of its head

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._in_head or self.transport.is_closing():
                # No head in progress: bytes of an earlier request's body that the app answered
                # without reading (keep-alive) are the parser's to skip, not a head to cap.
                self._head_bytes = 0
                return
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                log.info("closing the connection from %s: request head over %d bytes",
                         self.client[0] if self.client else "?", MAX_HEAD_BYTES)
                self._disarm()
                self.transport.write(_TOO_LARGE)
                self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._head_bytes = True, 0

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._in_head = False
            self._disarm()  # a whole head arrived: the app's timeouts apply from here

        def on_response_complete(self) -> None:
            super().on_response_complete()  # may start a pipelined request
            if not self.transport.is_closing() and not self._serving():
                self._arm()

        def _head_expired(self) -> None:
            if self._expired():
                self.transport.close()

    return HeadTimeoutHttpTools


def head_timeout_protocol(header_timeout_s: float,
                          parser: str = "auto") -> type[asyncio.Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with this head deadline.

    Args:
        header_timeout_s: longest time for a complete request head.
        parser: ``"httptools"``, ``"h11"``, or ``"auto"`` (httptools where installed).

    Raises:
        ValueError: a deadline that is not positive, an unknown parser, or ``"httptools"``
            where it is not installed.
    """
    if not header_timeout_s > 0:
        raise ValueError(f"header_timeout_s must be > 0, got {header_timeout_s}")
    if parser not in ("auto", "httptools", "h11"):
        raise ValueError(f"parser must be auto, httptools or h11, got {parser!r}")
    base = _httptools_protocol() if parser != "h11" else None
    if base is None and parser == "httptools":
        raise ValueError("parser='httptools' needs httptools (pip install httptools)")
    base = base or _HeadTimeoutH11
    return type(base.__name__, (base,),
                {"header_timeout_s": header_timeout_s})


class DrainingUvicorn(uvicorn.Server):
    """``uvicorn.Server`` that marks ``served`` as draining as soon as shutdown begins."""

    def __init__(self, config: uvicorn.Config, served: Server) -> None:
        super().__init__(config)
        self.served = served

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.served.begin_drain()  # SIGTERM/SIGINT: readiness 503 from now on
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.served.begin_drain()  # should_exit set another way (a test, max requests)
        await super().shutdown(sockets)
