"""The KServe v2 / Triton inference protocol: request decoding and response encoding.

Pure functions over bytes and numpy (no web framework), so the codec is testable on its own and
every refusal is a typed :class:`ProtocolError` that the HTTP layer turns into a 4xx JSON body.
Supported: JSON tensors (flat or nested ``data``) and the binary tensor data extension
(``Inference-Header-Content-Length``; ``binary_data_size`` per input; ``binary_data`` per output
or ``binary_data_output`` for all). Request bodies come from outside: every size, count and
shape is checked before anything is allocated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from regiontrt.errors import InputError
from regiontrt.serve.sources import ServedModel

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_TENSORS = 64
MAX_RANK = 16

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
_BY_DTYPE = {v: k for k, v in DATATYPES.items()}


class ProtocolError(InputError):
    """A request that breaks the protocol or does not fit the model (HTTP ``status``)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def datatype(dtype: np.dtype) -> str:
    """The protocol's datatype name of a numpy dtype."""
    try:
        return _BY_DTYPE[np.dtype(dtype)]
    except KeyError:
        raise ProtocolError(f"dtype {dtype} has no KServe v2 datatype", 500) from None


def model_metadata(model: ServedModel) -> dict[str, Any]:
    """The model metadata response, with region, precision, version and provenance added."""
    engine = model.engine

    def spec(s: Any) -> dict[str, Any]:
        return {"name": s.name, "datatype": datatype(s.dtype),
                "shape": [d if isinstance(d, int) else -1 for d in s.shape]}

    return {
        "name": model.name,
        "versions": [model.version],
        "platform": f"regiontrt_{engine.backend_name}",
        "inputs": [spec(s) for s in engine.inputs],
        "outputs": [spec(s) for s in engine.outputs],
        "parameters": model.description(),
    }


@dataclass
class InferRequest:
    """A decoded infer request."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[str]
    binary: dict[str, bool] = field(default_factory=dict)
    timeout_ms: float | None = None


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_RANK:
        raise ProtocolError(f"input {name!r}: shape must be a list of at most {MAX_RANK} ints")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise ProtocolError(f"input {name!r}: shape must hold non-negative ints, got {value}")
    return tuple(value)


def _decode_input(entry: Any, expected: Mapping[str, np.dtype], blob: memoryview,
                  offset: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ProtocolError("each input needs a name, datatype, shape and data")
    name = entry["name"]
    if name not in expected:
        raise ProtocolError(f"unknown input {name!r}; the model takes {sorted(expected)}")
    dt = entry.get("datatype")
    want = datatype(expected[name])
    if dt != want:
        raise ProtocolError(f"input {name!r} has datatype {dt!r}; the model expects {want}")
    shape = _shape(entry.get("shape"), name)
    count = math.prod(shape)
    dtype = expected[name]
    params = entry.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError(f"input {name!r}: parameters must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"input {name!r}: binary_data_size must be a non-negative int")
        if size != count * dtype.itemsize:
            raise ProtocolError(f"input {name!r}: {size} bytes of binary data for shape "
                                f"{list(shape)} of {want} ({count * dtype.itemsize} bytes)")
        if offset + size > len(blob):
            raise ProtocolError(f"input {name!r}: binary data ends past the request body")
        arr = np.frombuffer(blob[offset:offset + size], dtype=dtype.newbyteorder("<"))
        return name, arr.astype(dtype, copy=True).reshape(shape), offset + size
    if "data" not in entry:
        raise ProtocolError(f"input {name!r} has neither data nor binary_data_size")
    try:
        arr = np.asarray(entry["data"], dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"input {name!r}: data is not {want}: {exc}") from None
    if arr.size != count:
        raise ProtocolError(f"input {name!r}: {arr.size} values for shape {list(shape)} "
                            f"({count} expected)")
    return name, arr.reshape(shape), offset


def decode_infer(body: bytes, header_length: str | None, model: ServedModel) -> InferRequest:
    """Decode an infer request body (JSON, or JSON plus binary tensor data)."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} must be an integer") from None
        if not 0 < n <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {n} outside the body of {len(body)} bytes")
        header, blob = _json(body[:n]), memoryview(body)[n:]
    else:
        header, blob = _json(body), memoryview(b"")
    if not isinstance(header, dict):
        raise ProtocolError("the request must be a JSON object")
    entries = header.get("inputs")
    if not isinstance(entries, list) or not entries or len(entries) > MAX_TENSORS:
        raise ProtocolError(f"inputs must be a non-empty list of at most {MAX_TENSORS} tensors")
    expected = {s.name: s.dtype for s in model.engine.inputs}
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for entry in entries:
        name, arr, offset = _decode_input(entry, expected, blob, offset)
        if name in inputs:
            raise ProtocolError(f"input {name!r} given twice")
        inputs[name] = arr
    if offset != len(blob):
        raise ProtocolError(f"{len(blob) - offset} bytes of binary data left unread")
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("parameters must be an object")
    all_binary = bool(params.get("binary_data_output", False))
    known = [s.name for s in model.engine.outputs]
    requested = header.get("outputs")
    outputs, binary = list(known), dict.fromkeys(known, all_binary)
    if requested is not None:
        if not isinstance(requested, list) or len(requested) > MAX_TENSORS:
            raise ProtocolError("outputs must be a list")
        outputs = []
        for o in requested:
            if not isinstance(o, dict) or o.get("name") not in known:
                raise ProtocolError(f"unknown output {o!r}; the model gives {known}")
            outputs.append(o["name"])
            oparams = o.get("parameters") or {}
            binary[o["name"]] = bool(oparams.get("binary_data", all_binary)) \
                if isinstance(oparams, dict) else all_binary
    timeout = params.get("timeout")
    timeout_ms = None
    if timeout is not None:
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise ProtocolError("parameters.timeout must be a positive number of microseconds")
        timeout_ms = float(timeout) / 1e3
    rid = header.get("id")
    return InferRequest(None if rid is None else str(rid), inputs, outputs, binary, timeout_ms)


def encode_infer(model: ServedModel, request: InferRequest,
                 results: Mapping[str, np.ndarray]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name in request.outputs:
        arr = np.asarray(results[name])
        entry: dict[str, Any] = {"name": name, "datatype": datatype(arr.dtype),
                                 "shape": list(arr.shape)}
        if request.binary.get(name):
            raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = arr.reshape(-1).tolist()
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model.name, "model_version": model.version,
                                "outputs": entries}
    if request.id is not None:
        response["id"] = request.id
    head = json.dumps(response, separators=(",", ":")).encode()
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)


def repository_index(models: Sequence[ServedModel], ready: bool) -> list[dict[str, Any]]:
    """``POST /v2/repository/index``: every served model, its version and state."""
    state = "READY" if ready else "UNAVAILABLE"
    return [{"name": m.name, "version": m.version, "state": state} for m in models]
