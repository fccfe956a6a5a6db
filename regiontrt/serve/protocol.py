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
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from regiontrt.serve.jsonscan import NumberRun, ProtocolError, load_infer_json
from regiontrt.serve.sources import ServedModel

__all__ = ["DATATYPES", "HEADER_LENGTH", "MAX_DECODED", "InferRequest", "ProtocolError",
           "check_tensor", "datatype", "decode_infer", "encode_infer", "input_shape",
           "model_metadata", "repository_index"]

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_TENSORS = 64
MAX_RANK = 16
#: Default cap on one request's decoded input arrays (bytes): 413 past it.
MAX_DECODED = 128 * 1024 * 1024
#: Largest shape dimension accepted (int64, as ONNX dimensions); the memory cap bounds the product.
MAX_DIM = (1 << 63) - 1
#: Largest ``parameters.timeout`` (microseconds, as Triton): one day.
MAX_TIMEOUT_US = 86_400 * 10**6
#: Output values encoded to JSON per call (larger outputs are encoded slice by slice).
ENCODE_CHUNK = 16384

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
_BY_DTYPE = {v: k for k, v in DATATYPES.items()}


def datatype(dtype: np.dtype) -> str:
    """The protocol's datatype name of a numpy dtype."""
    try:
        return _BY_DTYPE[np.dtype(dtype)]
    except KeyError:
        raise ProtocolError(f"dtype {dtype} has no KServe v2 datatype", 500) from None


def input_shape(model: ServedModel, name: str) -> list[int]:
    """The shape clients must send for input ``name``: ``-1`` where it may vary.

    A dimension is a number where the engine fixes it (a static dimension) or where every
    optimization profile pins it to the same value (an engine built only for 256x256 answers
    ``[-1, 3, 256, 256]``). Bucketed inputs keep ``-1`` on dynamic dimensions: shorter inputs
    are padded up to a bucket, so the profile's width is not what a client must send.
    """
    engine = model.engine
    spec = next(s for s in engine.inputs if s.name == name)
    shape = [d if isinstance(d, int) else -1 for d in spec.shape]
    if engine.bucketing is not None or not engine.profiles:
        return shape
    ranges = [p.ranges.get(name) for p in engine.profiles]
    if any(r is None or len(r.min) != len(shape) for r in ranges):
        return shape  # an input some profile leaves unconstrained: nothing pinned
    for axis, dim in enumerate(shape):
        values = {v for r in ranges if r is not None for v in (r.min[axis], r.max[axis])}
        if dim == -1 and len(values) == 1:
            shape[axis] = values.pop()
    return shape


def model_metadata(model: ServedModel, sla_ms: float | None = None) -> dict[str, Any]:
    """The model metadata response, with region, precision, version and provenance added.

    ``sla_ms`` (the model's p99 latency SLA) is added to the parameters only when there is one.
    """
    engine = model.engine
    params = model.description()
    if sla_ms is not None:
        params["sla_ms"] = sla_ms
    return {
        "name": model.name,
        "versions": [model.protocol_version],
        "platform": f"regiontrt_{engine.backend_name}",
        "inputs": [{"name": s.name, "datatype": datatype(s.dtype),
                    "shape": input_shape(model, s.name)} for s in engine.inputs],
        "outputs": [{"name": s.name, "datatype": datatype(s.dtype),
                     "shape": [d if isinstance(d, int) else -1 for d in s.shape]}
                    for s in engine.outputs],
        "parameters": params,
    }


@dataclass
class InferRequest:
    """A decoded infer request."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[str]
    binary: dict[str, bool] = field(default_factory=dict)
    timeout_ms: float | None = None


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_RANK:
        raise ProtocolError(f"input {name!r}: shape must be a list of at most {MAX_RANK} ints")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM
               for d in value):
        raise ProtocolError(f"input {name!r}: shape must hold ints in [0, 2**63 - 1], got "
                            f"{_short(value)}")
    return tuple(value)


def _short(value: Any) -> str:
    """``repr`` cut to 80 characters: refusals quote hostile input, never all of it."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "a huge int"
    return text if len(text) <= 80 else text[:77] + "..."


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(f"{what} must be true or false, got {_short(value)}")
    return value


def _number(value: Any, what: str, low: float, high: float) -> float:
    """A finite JSON number in ``(low, high]`` (400 otherwise, never an OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"{what} must be a number, got {_short(value)}")
    if isinstance(value, int) and not low < value <= high:  # compared as ints: no overflow
        raise ProtocolError(f"{what} must be in ({low:g}, {high:g}], got {_short(value)}")
    if not (math.isfinite(value) and low < value <= high):
        raise ProtocolError(f"{what} must be in ({low:g}, {high:g}], got {_short(value)}")
    return float(value)


@dataclass
class _Planned:
    """One input checked against the model, before its array is built."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    source: Any  # the JSON data, a NumberRun, or a memoryview of binary data

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def build(self) -> np.ndarray:
        label, count = f"input {self.name!r}", math.prod(self.shape)
        if isinstance(self.source, memoryview):
            arr = np.frombuffer(self.source, dtype=self.dtype.newbyteorder("<"))
            return arr.astype(self.dtype, copy=True).reshape(self.shape)
        if isinstance(self.source, NumberRun):
            return self.source.materialize(self.dtype, label).reshape(self.shape)
        try:
            arr = np.asarray(self.source, dtype=self.dtype)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"{label}: data is not {datatype(self.dtype)}: {exc}") from None
        if arr.size != count:
            raise ProtocolError(f"{label}: {arr.size} values for shape {list(self.shape)} "
                                f"({count} expected)")
        return arr.reshape(self.shape)


def _leaves(data: Any, limit: int) -> int:
    """Scalars in nested lists (stops counting past ``limit``), before any array is built."""
    count, stack = 0, [data]
    while stack and count <= limit:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        else:
            count += 1
    return count


def check_tensor(name: Any, dt: Any, shape: Any,
                 expected: Mapping[str, np.dtype]) -> tuple[tuple[int, ...], np.dtype]:
    """An input's shape and dtype once its name, datatype and shape are checked (hostile).

    Raises:
        ProtocolError: an unknown input, another datatype, or a malformed shape (400).
    """
    if not isinstance(name, str) or name not in expected:
        raise ProtocolError(f"unknown input {_short(name)}; the model takes {sorted(expected)}")
    dtype = expected[name]
    want = datatype(dtype)
    if dt != want:
        raise ProtocolError(f"input {name!r} has datatype {_short(dt)}; the model expects {want}")
    return _shape(shape, name), dtype


def _plan_input(entry: Any, expected: Mapping[str, np.dtype], blob: memoryview,
                offset: int) -> tuple[_Planned, int]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ProtocolError("each input needs a name, datatype, shape and data")
    name = entry["name"]
    shape, dtype = check_tensor(name, entry.get("datatype"), entry.get("shape"), expected)
    want, count = datatype(dtype), math.prod(shape)
    params = entry.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError(f"input {name!r}: parameters must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"input {name!r}: binary_data_size must be a non-negative int")
        if size != count * dtype.itemsize:
            raise ProtocolError(f"input {name!r}: {_short(size)} bytes of binary data for shape "
                                f"{list(shape)} of {want} ({count * dtype.itemsize} bytes)")
        if offset + size > len(blob):
            raise ProtocolError(f"input {name!r}: binary data ends past the request body")
        return _Planned(name, shape, dtype, blob[offset:offset + size]), offset + size
    if "data" not in entry:
        raise ProtocolError(f"input {name!r} has neither data nor binary_data_size")
    data = entry["data"]
    given = data.count if isinstance(data, NumberRun) else _leaves(data, count)
    if given != count:  # compared before any array is built
        more = "more than " if given > count and not isinstance(data, NumberRun) else ""
        raise ProtocolError(f"input {name!r}: {more}{given} values for shape {list(shape)} "
                            f"({count} expected)")
    return _Planned(name, shape, dtype, data), offset


def _header(body: bytes, header_length: str | None,
            max_bytes: int) -> tuple[Any, memoryview]:
    if header_length is None:
        return load_infer_json(body, max_bytes), memoryview(b"")
    text = header_length.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        raise ProtocolError(f"{HEADER_LENGTH} must be a decimal integer")
    n = int(text)
    if not 0 < n <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH} {n} outside the body of {len(body)} bytes")
    return load_infer_json(body[:n], max_bytes), memoryview(body)[n:]


def decode_infer(body: bytes, header_length: str | None, model: ServedModel, *,
                 max_bytes: int = MAX_DECODED) -> InferRequest:
    """Decode an infer request body (JSON, or JSON plus binary tensor data).

    Every count, size and shape is compared with the model and ``max_bytes`` before any input
    array is built. Slow on large bodies: call it off the event loop.

    Args:
        body: the request body (hostile).
        header_length: the ``Inference-Header-Content-Length`` header, if any.
        model: the model the request is for.
        max_bytes: cap on the decoded input arrays' bytes (and on what parsing JSON numbers
            outside flat ``data`` arrays costs); 413 past it.

    Raises:
        ProtocolError: the request is malformed or does not fit the model (4xx ``status``).
    """
    header, blob = _header(body, header_length, max_bytes)
    if not isinstance(header, dict):
        raise ProtocolError("the request must be a JSON object")
    entries = header.get("inputs")
    if not isinstance(entries, list) or not entries or len(entries) > MAX_TENSORS:
        raise ProtocolError(f"inputs must be a non-empty list of at most {MAX_TENSORS} tensors")
    expected = {s.name: s.dtype for s in model.engine.inputs}
    plans: dict[str, _Planned] = {}
    offset = 0
    for entry in entries:
        plan, offset = _plan_input(entry, expected, blob, offset)
        if plan.name in plans:
            raise ProtocolError(f"input {plan.name!r} given twice")
        plans[plan.name] = plan
    if offset != len(blob):
        raise ProtocolError(f"{len(blob) - offset} bytes of binary data left unread")
    total = sum(p.nbytes for p in plans.values())
    if total > max_bytes:
        raise ProtocolError(f"the inputs take {total} bytes, over the {max_bytes}-byte cap per "
                            "request", 413)
    outputs, binary, timeout_ms = _options(header, model)
    inputs = {name: plan.build() for name, plan in plans.items()}
    rid = header.get("id")
    return InferRequest(None if rid is None else str(rid), inputs, outputs, binary, timeout_ms)


def _options(header: dict[str, Any],
             model: ServedModel) -> tuple[list[str], dict[str, bool], float | None]:
    """The requested outputs, which are binary, and the deadline in ms (all checked)."""
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("parameters must be an object")
    all_binary = _flag(params.get("binary_data_output", False), "binary_data_output")
    known = [s.name for s in model.engine.outputs]
    requested = header.get("outputs")
    outputs, binary = list(known), dict.fromkeys(known, all_binary)
    if requested is not None:
        if not isinstance(requested, list) or len(requested) > MAX_TENSORS:
            raise ProtocolError("outputs must be a list")
        outputs = []
        for o in requested:
            if not isinstance(o, dict) or o.get("name") not in known:
                raise ProtocolError(f"unknown output {_short(o)}; the model gives {known}")
            outputs.append(o["name"])
            oparams = o.get("parameters") or {}
            if not isinstance(oparams, dict):
                raise ProtocolError(f"output {o['name']!r}: parameters must be an object")
            binary[o["name"]] = _flag(oparams.get("binary_data", all_binary),
                                      f"output {o['name']!r}: binary_data")
    timeout = params.get("timeout")
    timeout_ms = None
    if timeout is not None:
        timeout_ms = _number(timeout, "parameters.timeout (microseconds)", 0,
                             MAX_TIMEOUT_US) / 1e3
    return outputs, binary, timeout_ms


def encode_infer(model: ServedModel, request: InferRequest,
                 results: Mapping[str, np.ndarray]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    large: list[np.ndarray] = []
    token = "\x00regiontrt-" + secrets.token_hex(8) + "-"
    for name in request.outputs:
        arr = np.asarray(results[name])
        entry: dict[str, Any] = {"name": name, "datatype": datatype(arr.dtype),
                                 "shape": list(arr.shape)}
        if request.binary.get(name):
            raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif arr.size <= ENCODE_CHUNK:
            entry["data"] = arr.reshape(-1).tolist()
        else:  # spliced in below, encoded a slice at a time (no long GIL hold, no huge list)
            entry["data"] = f"{token}{len(large)}"
            large.append(arr.reshape(-1))
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model.name, "model_version": model.protocol_version,
                                "outputs": entries}
    if request.id is not None:
        response["id"] = request.id
    head = json.dumps(response, separators=(",", ":")).encode()
    if large:
        head = _splice(head, token, large)
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)


def _json_values(flat: np.ndarray) -> bytes:
    """``json.dumps(flat.tolist())`` built :data:`ENCODE_CHUNK` values at a time."""
    parts = [json.dumps(flat[i:i + ENCODE_CHUNK].tolist(), separators=(",", ":"))[1:-1]
             for i in range(0, flat.size, ENCODE_CHUNK)]
    return ("[" + ",".join(parts) + "]").encode()


def _splice(head: bytes, token: str, large: list[np.ndarray]) -> bytes:
    pieces, pos = [], 0
    for k, flat in enumerate(large):
        marker = json.dumps(f"{token}{k}").encode()
        at = head.index(marker, pos)
        pieces += [head[pos:at], _json_values(flat)]
        pos = at + len(marker)
    return b"".join([*pieces, head[pos:]])


def repository_index(models: Sequence[ServedModel], ready: bool) -> list[dict[str, Any]]:
    """``POST /v2/repository/index``: every served model, its version and state."""
    state = "READY" if ready else "UNAVAILABLE"
    return [{"name": m.name, "version": m.protocol_version, "state": state} for m in models]
