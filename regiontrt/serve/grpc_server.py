"""The KServe v2 / Triton gRPC endpoint (``inference.GRPCInferenceService``) over a :class:`Server`.

The service protos are tritonclient's (``tritonclient.grpc.service_pb2``), so
``tritonclient.grpc`` works unchanged: server live/ready/metadata, model ready/metadata/config,
the repository index and ``ModelInfer`` with binary tensors (``raw_input_contents`` /
``raw_output_contents``) or typed ``contents``. The service runs on ``grpc.aio`` (one event loop
on its own thread): a request waits on the in-process :meth:`Server.submit` future without a
thread; large requests are decoded on a small thread pool. Names, datatypes, shapes and byte
counts are checked with :func:`regiontrt.serve.protocol.check_tensor` before any array is built.
Refusals are gRPC status codes: ``INVALID_ARGUMENT`` (a request that does not fit the model),
``NOT_FOUND`` (unknown model or version), ``RESOURCE_EXHAUSTED`` (over the size caps),
``UNAVAILABLE`` (queue full, shutting down), ``DEADLINE_EXCEEDED``; ``INTERNAL`` only for a fault
of ours, which is logged. Needs ``grpcio`` and ``tritonclient[grpc]`` (the ``serve`` extra).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from regiontrt._version import __version__
from regiontrt.errors import DeadlineExceeded, InputError, Overloaded, ServerClosed
from regiontrt.serve.jsonscan import SMALL
from regiontrt.serve.protocol import (
    MAX_DECODED,
    MAX_TENSORS,
    MAX_TIMEOUT_US,
    ProtocolError,
    check_tensor,
    datatype,
    input_shape,
    model_metadata,
)
from regiontrt.serve.server import Server, UnknownModel
from regiontrt.serve.sources import ServedModel

log = logging.getLogger("regiontrt.serve")

#: Default largest request message (bytes), as the HTTP endpoint's ``max_body``.
MAX_MESSAGE = 64 * 1024 * 1024
#: Default threads decoding large requests off the event loop.
DECODE_WORKERS = 2

_T = TypeVar("_T")
#: Which typed ``contents`` field carries each datatype (FP16 travels only as raw bytes).
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
             "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
             "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
             "FP32": "fp32_contents", "FP64": "fp64_contents"}


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status code answering ``exc`` (``INTERNAL`` only for unexpected faults)."""
    if isinstance(exc, UnknownModel):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, ProtocolError) and exc.status == 413:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, (Overloaded, ServerClosed)):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, DeadlineExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(exc, (InputError, ValueError)):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


_Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _rpc(fn: _Handler) -> _Handler:
    """Answer a refusal with its status code; log (only) unexpected faults."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except Exception as exc:
            code = status_of(exc)
            if code is grpc.StatusCode.INTERNAL:
                log.exception("internal error in %s: %s", fn.__name__, exc)
                await context.abort(code, f"internal error: {type(exc).__name__}")
            await context.abort(code, str(exc))

    return wrapper


def _timeout_ms(request: Any, context: grpc.aio.ServicerContext) -> float | None:
    """The request's deadline in ms: the gRPC deadline, or Triton's ``timeout`` parameter (µs)."""
    left = context.time_remaining()
    wanted = None if left is None else left * 1e3
    if "timeout" in request.parameters:
        param = request.parameters["timeout"]
        us = getattr(param, param.WhichOneof("parameter_choice") or "int64_param")
        if isinstance(us, bool) or not isinstance(us, (int, float)) or \
                not (0 < us <= MAX_TIMEOUT_US and math.isfinite(us)):
            raise ProtocolError("parameters.timeout must be in (0, 86400e6] microseconds")
        wanted = us / 1e3 if wanted is None else min(wanted, us / 1e3)
    return wanted


def decode_request(request: Any, model: ServedModel,
                   max_bytes: int = MAX_DECODED) -> tuple[dict[str, np.ndarray], list[str]]:
    """The inputs and requested outputs of a ``ModelInferRequest`` (hostile), all checked.

    Raises:
        ProtocolError: anything that does not fit the model (400), or over ``max_bytes`` (413).
    """
    entries, raw = request.inputs, request.raw_input_contents
    if not entries or len(entries) > MAX_TENSORS:
        raise ProtocolError(f"inputs must be a non-empty list of at most {MAX_TENSORS} tensors")
    if raw and len(raw) != len(entries):
        raise ProtocolError(f"raw_input_contents holds {len(raw)} tensors for {len(entries)} "
                            "inputs")
    expected = {s.name: s.dtype for s in model.engine.inputs}
    plans: dict[str, tuple[tuple[int, ...], np.dtype, Any]] = {}
    for k, t in enumerate(entries):
        shape, dtype = check_tensor(t.name, t.datatype, list(t.shape), expected)
        if t.name in plans:
            raise ProtocolError(f"input {t.name!r} given twice")
        count = math.prod(shape)
        if raw:
            source: Any = raw[k]
            if len(source) != count * dtype.itemsize:
                raise ProtocolError(f"input {t.name!r}: {len(source)} bytes of raw data for "
                                    f"shape {list(shape)} of {t.datatype} "
                                    f"({count * dtype.itemsize} bytes)")
        else:
            field = _CONTENTS.get(t.datatype)
            if field is None:
                raise ProtocolError(f"input {t.name!r}: {t.datatype} travels only as "
                                    "raw_input_contents")
            source = getattr(t.contents, field)
            if len(source) != count:  # compared before any array is built
                raise ProtocolError(f"input {t.name!r}: {len(source)} values for shape "
                                    f"{list(shape)} ({count} expected)")
        plans[t.name] = (shape, dtype, source)
    total = sum(math.prod(s) * d.itemsize for s, d, _ in plans.values())
    if total > max_bytes:
        raise ProtocolError(f"the inputs take {total} bytes, over the {max_bytes}-byte cap per "
                            "request", 413)
    known = [s.name for s in model.engine.outputs]
    outputs = [o.name for o in request.outputs] or known
    unknown = [o for o in outputs if o not in known]
    if unknown or len(set(outputs)) != len(outputs):
        raise ProtocolError(f"unknown or repeated outputs {unknown or outputs}; the model gives "
                            f"{known}")
    inputs = {}
    for name, (shape, dtype, source) in plans.items():
        if isinstance(source, bytes):
            arr = np.frombuffer(source, dtype=dtype.newbyteorder("<")).astype(dtype, copy=True)
        else:
            try:
                arr = np.asarray(source, dtype=dtype)
            except (TypeError, ValueError, OverflowError) as exc:
                raise ProtocolError(f"input {name!r}: data is not {datatype(dtype)}: "
                                    f"{exc}") from None
        inputs[name] = arr.reshape(shape)
    return inputs, outputs


def encode_response(model: ServedModel, request_id: str, outputs: list[str],
                    results: dict[str, Any]) -> Any:
    """A ``ModelInferResponse`` with every output as little-endian raw bytes."""
    response = pb.ModelInferResponse(model_name=model.name, model_version=model.protocol_version,
                                     id=request_id)
    for name in outputs:
        arr = np.asarray(results[name])
        response.outputs.add(name=name, datatype=datatype(arr.dtype), shape=list(arr.shape))
        response.raw_output_contents.append(
            np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes())
    return response


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """``inference.GRPCInferenceService`` over one in-process :class:`Server`."""

    def __init__(self, server: Server, pool: ThreadPoolExecutor,
                 max_decoded: int = MAX_DECODED, max_waiting: int = 4 * DECODE_WORKERS) -> None:
        self.server, self.pool, self.max_decoded = server, pool, max_decoded
        self.max_waiting, self.waiting = max_waiting, 0

    def model_of(self, name: str, version: str) -> ServedModel:
        model = self.server.model(name)
        if not model.answers_to(version):
            raise UnknownModel(f"model {model.name!r} has no version {version!r} "
                               f"(serving {model.protocol_version!r})")
        return model

    async def off_loop(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` on the decode pool; UNAVAILABLE when too many requests wait for it."""
        if self.waiting >= self.max_waiting:
            raise Overloaded(f"{self.waiting} requests are waiting to be decoded; retry later")
        self.waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        finally:
            self.waiting -= 1

    @_rpc
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.server.ready)

    @_rpc
    async def ModelReady(self, request: Any, context: Any) -> Any:
        self.model_of(request.name, request.version)
        return pb.ModelReadyResponse(ready=self.server.ready)

    @_rpc
    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name="regiontrt", version=__version__,
                                         extensions=["binary_tensor_data", "model_repository"])

    @_rpc
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        meta = model_metadata(self.model_of(request.name, request.version))
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(name=i["name"], datatype=i["datatype"], shape=i["shape"])
                    for i in meta["inputs"]],
            outputs=[tensor(name=o["name"], datatype=o["datatype"], shape=o["shape"])
                     for o in meta["outputs"]])

    @_rpc
    async def ModelConfig(self, request: Any, context: Any) -> Any:
        model = self.model_of(request.name, request.version)
        meta = model_metadata(model, self.server.sla_ms(model.name))
        # gRPC model metadata has no parameters: region, precision, versions and provenance
        # travel here, each a JSON string.
        params = {k: mc.ModelParameter(string_value=json.dumps(v))
                  for k, v in meta["parameters"].items()}
        config = mc.ModelConfig(
            name=model.name, platform=meta["platform"], max_batch_size=0, parameters=params,
            input=[mc.ModelInput(name=i["name"], data_type=mc.DataType.Value(
                "TYPE_" + i["datatype"]), dims=input_shape(model, i["name"]))
                for i in meta["inputs"]],
            output=[mc.ModelOutput(name=o["name"], data_type=mc.DataType.Value(
                "TYPE_" + o["datatype"]), dims=o["shape"]) for o in meta["outputs"]])
        return pb.ModelConfigResponse(config=config)

    @_rpc
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        state = "READY" if self.server.ready else "UNAVAILABLE"
        return pb.RepositoryIndexResponse(models=[
            pb.RepositoryIndexResponse.ModelIndex(name=m.name, version=m.protocol_version,
                                                  state=state)
            for m in self.server.models.values()])

    @_rpc
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        model = self.model_of(request.model_name, request.model_version)
        size = sum(len(r) for r in request.raw_input_contents)
        if size < SMALL and len(request.raw_input_contents) == len(request.inputs):
            inputs, outputs = decode_request(request, model, self.max_decoded)
        else:  # large, or typed contents (converted value by value): off the loop
            inputs, outputs = await self.off_loop(decode_request, request, model,
                                                  self.max_decoded)
        future = self.server.submit(inputs, model=model.name,
                                    deadline_ms=_timeout_ms(request, context))
        results = await asyncio.wrap_future(future)
        if sum(getattr(results[o], "nbytes", 0) for o in outputs) >= SMALL:
            return await self.off_loop(encode_response, model, request.id, outputs, results)
        return encode_response(model, request.id, outputs, results)


class BackgroundGRPC:
    """The gRPC service on its own thread and event loop; a context manager.

    Args:
        server: what to serve.
        host: interface to bind (127.0.0.1 by default).
        port: port to bind; 0 picks a free one (read :attr:`port` after start).
        max_message: largest request message in bytes (``RESOURCE_EXHAUSTED`` past it).
        max_decoded: cap on one request's decoded input arrays in bytes.
        decode_workers: threads decoding large requests off the event loop.
        close_server: close (drain) ``server`` when stopped (False when HTTP also serves it).
        grace_s: how long :meth:`stop` lets in-flight calls finish.
    """

    def __init__(self, server: Server, host: str = "127.0.0.1", port: int = 0, *,
                 max_message: int = MAX_MESSAGE, max_decoded: int = MAX_DECODED,
                 decode_workers: int = DECODE_WORKERS, close_server: bool = True,
                 grace_s: float = 10.0) -> None:
        if decode_workers < 1 or max_message < 1 or max_decoded < 1:
            raise ValueError("decode_workers, max_message and max_decoded must be positive")
        self.server, self.host, self.port = server, host, port
        self.close_server, self.grace_s, self.max_message = close_server, grace_s, max_message
        self._pool = ThreadPoolExecutor(decode_workers, thread_name_prefix="regiontrt-grpc")
        self._service = InferenceService(server, self._pool, max_decoded, 4 * decode_workers)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="regiontrt-grpc", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._started.set()

    async def _main(self) -> None:
        options = [("grpc.max_receive_message_length", self.max_message),
                   ("grpc.max_send_message_length", -1)]
        aio = grpc.aio.server(options=options)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self._service, aio)
        port = aio.add_insecure_port(f"{self.host}:{self.port}")
        if not port:
            raise OSError(f"cannot bind gRPC to {self.host}:{self.port}")
        self.port = port
        await aio.start()
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._started.set()
        await self._stop.wait()
        await aio.stop(self.grace_s)

    def start(self, timeout: float = 20.0) -> BackgroundGRPC:
        self._thread.start()
        if not self._started.wait(timeout) or self._error is not None:
            self._pool.shutdown(wait=False)
            raise RuntimeError(f"the gRPC server did not start: {self._error}") from self._error
        log.info("gRPC (KServe v2) listening on %s", self.url)
        return self

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, timeout: float = 20.0) -> None:
        """Stop accepting, let in-flight calls finish (``grace_s``), then close the server."""
        if self.close_server:
            self.server.begin_drain()
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        self._pool.shutdown()
        if self.close_server:
            self.server.close()

    def __enter__(self) -> BackgroundGRPC:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


__all__ = ["BackgroundGRPC", "InferenceService", "decode_request", "encode_response",
           "status_of"]
