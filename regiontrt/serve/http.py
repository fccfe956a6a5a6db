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
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from regiontrt._version import __version__
from regiontrt.errors import DeadlineExceeded, InputError, Overloaded, RegionTRTError, ServerClosed
from regiontrt.serve.protocol import (
    HEADER_LENGTH,
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


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ProtocolError("invalid Content-Length")
        if int(declared) > limit:
            raise ProtocolError(f"request body of {declared} bytes over the {limit}-byte limit",
                                413)
    if request.headers.get("content-encoding", "identity") not in ("identity", ""):
        raise ProtocolError("compressed request bodies are not accepted", 415)
    chunks, size = [], 0
    async for chunk in request.stream():  # the limit holds for chunked bodies too
        size += len(chunk)
        if size > limit:
            raise ProtocolError(f"request body over the {limit}-byte limit", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(server: Server, *, max_body: int = MAX_BODY, close_server: bool = True) -> Starlette:
    """The Starlette app serving ``server``.

    Args:
        server: the in-process server.
        max_body: largest request body in bytes (413 past it).
        close_server: close (drain) ``server`` when the app shuts down.
    """
    ep = _Endpoints(server, max_body)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
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
                                Exception: _on_error, 404: _not_found, 405: _not_allowed}
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)


class _Endpoints:
    """The KServe v2 endpoints over one in-process :class:`Server`."""

    def __init__(self, server: Server, max_body: int) -> None:
        self.server, self.max_body = server, max_body

    def model_of(self, request: Request) -> ServedModel:
        model = self.server.model(request.path_params["name"])
        version = request.path_params.get("version")
        if version not in (None, "", model.version):
            raise UnknownModel(f"model {model.name!r} has no version {version!r} "
                               f"(serving {model.version!r})")
        return model

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        ok = self.server.ready
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "regiontrt", "version": __version__,
                             "extensions": ["binary_tensor_data", "model_repository"]})

    async def metadata(self, request: Request) -> Response:
        return JSONResponse(model_metadata(self.model_of(request)))

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
        body = await _body(request, self.max_body)
        decoded = decode_infer(body, request.headers.get(HEADER_LENGTH.lower()), model)
        future = self.server.submit(decoded.inputs, model=model.name,
                                    deadline_ms=decoded.timeout_ms)
        results = await asyncio.wrap_future(future)
        payload, header_length = encode_infer(model, decoded, results)
        if header_length is None:
            return Response(payload, media_type="application/json")
        return Response(payload, media_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(header_length)})

    async def index(self, request: Request) -> Response:
        body = await _body(request, 1 << 16)
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


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(404, f"no route {request.method} {request.url.path}")


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return _error(405, f"method {request.method} not allowed on {request.url.path}")
