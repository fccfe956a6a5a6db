"""The KServe v2 / Triton HTTP endpoint: a Starlette app over a :class:`Server`.

Routes: ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2``, ``/v2/models/{name}[/versions/
{v}]``, ``.../ready``, ``.../config``, ``POST .../infer``, ``POST /v2/repository/index`` and
``GET /metrics`` (Prometheus). Every refusal is a 4xx with ``{"error": message}``; the app never
lets a request's failure reach the server's state. Needs the ``serve`` extra (starlette,
uvicorn, prometheus-client); nothing else in regiontrt imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from regiontrt._version import __version__
from regiontrt.errors import DeadlineExceeded, InputError, Overloaded, RegionTRTError, ServerClosed
from regiontrt.serve.jsonscan import SMALL
from regiontrt.serve.protocol import (
    ENCODE_CHUNK,
    HEADER_LENGTH,
    MAX_DECODED,
    InferRequest,
    ProtocolError,
    decode_infer,
    encode_infer,
    model_metadata,
    repository_index,
)
from regiontrt.serve.server import Server, UnknownModel
from regiontrt.serve.sources import ServedModel

log = logging.getLogger("regiontrt.serve")

#: Default largest request body (bytes).
MAX_BODY = 64 * 1024 * 1024
#: Default longest wait for the next piece of a request body (s): 408 past it.
BODY_IDLE_S = 10.0
#: Default longest time to receive a whole request body (s): 408 past it.
BODY_TIMEOUT_S = 60.0
#: Default threads decoding request bodies (and encoding large responses) off the event loop.
DECODE_WORKERS = 2

_T = TypeVar("_T")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _status(exc: BaseException) -> int:
    if isinstance(exc, ProtocolError):
        return exc.status
    if isinstance(exc, UnknownModel):
        return 404
    if isinstance(exc, (Overloaded, ServerClosed)):
        return 503
    if isinstance(exc, DeadlineExceeded):
        return 504
    if isinstance(exc, (InputError, ValueError)):
        return 400
    return 500


async def _body(request: Request, limit: int, idle_s: float = BODY_IDLE_S,
                total_s: float = BODY_TIMEOUT_S) -> list[bytes]:
    """The body's pieces: at most ``limit`` bytes, each piece within ``idle_s``, all within
    ``total_s`` (a slow or stalled sender gets 408 and the connection is closed)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise ProtocolError("invalid Content-Length")
        if int(declared) > limit:
            raise ProtocolError(f"request body of {declared} bytes over the {limit}-byte limit",
                                413)
    if request.headers.get("content-encoding", "identity") not in ("identity", ""):
        raise ProtocolError("compressed request bodies are not accepted", 415)
    chunks: list[bytes] = []
    size = 0
    deadline = time.monotonic() + total_s
    stream = request.stream().__aiter__()
    while True:
        wait = min(idle_s, deadline - time.monotonic())
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(wait, 0.0))
        except StopAsyncIteration:
            return chunks
        except TimeoutError:
            which = "whole body" if wait < idle_s else "next piece of the body"
            raise ProtocolError(f"the {which} did not arrive within "
                                f"{total_s if wait < idle_s else idle_s:g} s", 408) from None
        size += len(chunk)  # the limit holds for chunked bodies too
        if size > limit:
            raise ProtocolError(f"request body over the {limit}-byte limit", 413)
        if chunk:
            chunks.append(chunk)


def create_app(server: Server, *, max_body: int = MAX_BODY, close_server: bool = True,
               max_decoded: int = MAX_DECODED, body_idle_s: float = BODY_IDLE_S,
               body_timeout_s: float = BODY_TIMEOUT_S,
               decode_workers: int = DECODE_WORKERS) -> Starlette:
    """The Starlette app serving ``server``.

    Args:
        server: the in-process server.
        max_body: largest request body in bytes (413 past it).
        close_server: close (drain) ``server`` when the app shuts down.
        max_decoded: cap on one request's decoded input arrays in bytes (413 past it).
        body_idle_s: longest wait for the next piece of a request body (408 past it).
        body_timeout_s: longest time to receive a whole request body (408 past it).
        decode_workers: threads that decode bodies and encode large responses, so the event
            loop (health checks included) never waits on them; at most four times as many
            requests wait for one (503 past it).
    """
    if decode_workers < 1 or max_decoded < 1 or not (body_idle_s > 0 and body_timeout_s > 0):
        raise ValueError("decode_workers, max_decoded and the body timeouts must be positive")
    pool = ThreadPoolExecutor(decode_workers, thread_name_prefix="regiontrt-decode")
    ep = _Endpoints(server, max_body, _Limits(max_decoded, body_idle_s, body_timeout_s,
                                               4 * decode_workers), pool)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)
        if close_server:
            # uvicorn calls this after in-flight requests finished (it stops accepting first);
            # closing drains whatever is still queued.
            await asyncio.get_running_loop().run_in_executor(None, server.close)

    m = "/v2/models/{name}"
    mv = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2/health/live", ep.live), Route("/v2/health/ready", ep.ready),
        Route("/v2", ep.server_metadata),
        Route(m, ep.metadata), Route(mv, ep.metadata),
        Route(m + "/ready", ep.model_ready), Route(mv + "/ready", ep.model_ready),
        Route(m + "/config", ep.config), Route(mv + "/config", ep.config),
        Route(m + "/infer", ep.infer, methods=["POST"]),
        Route(mv + "/infer", ep.infer, methods=["POST"]),
        Route("/v2/repository/index", ep.index, methods=["POST"]),
        Route("/metrics", ep.metrics),
    ]
    # Expected refusals are handled by Starlette's exception middleware (answered, not logged as
    # crashes); anything else reaches the outer handler, which answers 500 and logs it.
    handlers: dict[Any, Any] = {RegionTRTError: _on_error, ValueError: _on_error,
                                ClientDisconnect: _on_disconnect,
                                Exception: _on_error, 404: _not_found, 405: _not_allowed}
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)


class _Limits:
    """Per-request limits of the infer route."""

    def __init__(self, max_decoded: int, idle_s: float, total_s: float,
                 max_waiting: int) -> None:
        self.max_decoded, self.idle_s, self.total_s = max_decoded, idle_s, total_s
        self.max_waiting = max_waiting


class _Endpoints:
    """The KServe v2 endpoints over one in-process :class:`Server`."""

    def __init__(self, server: Server, max_body: int, limits: _Limits,
                 pool: ThreadPoolExecutor) -> None:
        self.server, self.max_body, self.limits, self.pool = server, max_body, limits, pool
        self.waiting = 0  # requests with work on (or queued for) the pool; loop-thread only

    async def off_loop(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` on the decode pool; 503 when too many requests wait for it."""
        if self.waiting >= self.limits.max_waiting:
            raise Overloaded(f"{self.waiting} requests are waiting to be decoded; retry later")
        self.waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        finally:
            self.waiting -= 1

    def model_of(self, request: Request) -> ServedModel:
        model = self.server.model(request.path_params["name"])
        version = request.path_params.get("version")
        if not model.answers_to(version):
            raise UnknownModel(f"model {model.name!r} has no version {version!r} "
                               f"(serving {model.protocol_version!r})")
        return model

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        ok = self.server.ready  # False from the moment draining starts
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "regiontrt", "version": __version__,
                             "extensions": ["binary_tensor_data", "model_repository"]})

    async def metadata(self, request: Request) -> Response:
        model = self.model_of(request)
        return JSONResponse(model_metadata(model, self.server.sla_ms(model.name)))

    async def model_ready(self, request: Request) -> Response:
        self.model_of(request)
        ok = self.server.ready
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def config(self, request: Request) -> Response:
        meta = model_metadata(self.model_of(request))
        return JSONResponse({"name": meta["name"], "platform": meta["platform"],
                             "max_batch_size": 0, "input": [
                                 {"name": i["name"], "data_type": "TYPE_" + i["datatype"],
                                  "dims": i["shape"]} for i in meta["inputs"]],
                             "output": [{"name": o["name"], "data_type": "TYPE_" + o["datatype"],
                                         "dims": o["shape"]} for o in meta["outputs"]]})

    async def infer(self, request: Request) -> Response:
        model = self.model_of(request)
        lim = self.limits
        try:
            chunks = await _body(request, self.max_body, lim.idle_s, lim.total_s)
        except ProtocolError as exc:
            if exc.status != 408:
                raise
            # The rest of the body may still come: the connection cannot be reused.
            return JSONResponse({"error": str(exc)}, status_code=408,
                                headers={"connection": "close"})
        header_length = request.headers.get(HEADER_LENGTH.lower())
        if sum(len(c) for c in chunks) < SMALL:  # well under a millisecond on the loop
            decoded = _decode(chunks, header_length, model, lim.max_decoded)
        else:
            decoded = await self.off_loop(_decode, chunks, header_length, model,
                                          lim.max_decoded)
        future = self.server.submit(decoded.inputs, model=model.name,
                                    deadline_ms=decoded.timeout_ms)
        results = await asyncio.wrap_future(future)
        if any(getattr(v, "size", 0) > ENCODE_CHUNK for v in results.values()):
            payload, header_length_out = await self.off_loop(encode_infer, model, decoded,
                                                             results)
        else:
            payload, header_length_out = encode_infer(model, decoded, results)
        if header_length_out is None:
            return Response(payload, media_type="application/json")
        return Response(payload, media_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(header_length_out)})

    async def index(self, request: Request) -> Response:
        body = b"".join(await _body(request, 1 << 16, self.limits.idle_s, self.limits.total_s))
        if body.strip():
            try:
                json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ProtocolError(f"malformed JSON: {exc}") from None
        return JSONResponse(repository_index(list(self.server.models.values()),
                                             self.server.ready))

    async def metrics(self, request: Request) -> Response:
        return Response(self.server.metrics.prometheus_text(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")


async def _on_error(request: Request, exc: Exception) -> Response:
    status = _status(exc)
    if status >= 500 and not isinstance(exc, (Overloaded, ServerClosed, DeadlineExceeded)):
        log.exception("internal error on %s: %s", request.url.path, exc)
        return _error(status, f"internal error: {type(exc).__name__}")
    return _error(status, str(exc))


async def _on_disconnect(request: Request, exc: Exception) -> Response:
    # Nobody reads the answer; one line, no traceback (a client going away is no server fault).
    log.info("client %s went away during %s %s", request.client.host if request.client else "?",
             request.method, request.url.path)
    return Response(status_code=400)


def _decode(chunks: list[bytes], header_length: str | None, model: ServedModel,
            max_decoded: int) -> InferRequest:
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return decode_infer(body, header_length, model, max_bytes=max_decoded)


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(404, f"no route {request.method} {request.url.path}")


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return _error(405, f"method {request.method} not allowed on {request.url.path}")
