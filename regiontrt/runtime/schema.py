"""The documented schema of an engine header, and the payload checked against it.

:mod:`regiontrt.runtime.artifact` parses a header under generic limits (size, depth, string
length, finite numbers). This module checks what each field holds (types, enums, bounded
dimensions, sizes of lists) so that every reader (``inspect``, ``load_engine``, the CLI) can use
the fields without further guards. A violation is an :class:`ArtifactError` that
names the field, e.g. ``header field inputs[0].shape[2]: expected an integer in 0..2147483647``.

Fields not listed are kept as they are (forward compatibility), under the generic limits only.
The schema is documented in ``docs/format.md``; keep the two in step.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import onnx

from regiontrt._names import normalize_region_name, reason_problem
from regiontrt.backends import backend_names, payload_formats
from regiontrt.errors import ArtifactError, InvalidModelError
from regiontrt.graph.io import (  # noqa: F401 - MAX_EXPR, header_shape: the header's rules
    MAX_EXPR,
    MAX_SYMBOL,
    external_data_refs,
    header_shape,
    input_specs,
    is_symbol,
    opset_version,
    output_specs,
)

#: Largest dimension of a shape, profile or bucket (TensorRT's int32 dimensions).
MAX_DIM = 2**31 - 1
#: Most dimensions of one tensor.
MAX_RANK = 16
#: Most inputs, outputs, profiles, trials... in one list.
MAX_ITEMS = 4096
#: Longest name (tensor, region, backend...).
MAX_NAME = 4096
#: Longest free-text field (description, note, override reason).
MAX_TEXT = 64 * 1024

PRECISIONS = ("fp32", "fp16", "int8")
PAYLOAD_FORMATS = ("onnx", "tensorrt-plan", "tensorrt-rtx-plan")
DTYPES = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
          "float16", "float32", "float64")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_AXIS = re.compile(r"[0-9]{1,2}")

Check = Callable[[Any, str], None]


def _fail(path: str, why: str) -> ArtifactError:
    exc = ArtifactError(f"header field {path}: {why}")
    exc.field = path
    return exc


def text(max_len: int = MAX_NAME, min_len: int = 0) -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, str):
            raise _fail(path, f"expected a string, got {type(value).__name__}")
        if not min_len <= len(value) <= max_len:
            raise _fail(path, f"expected {min_len}..{max_len} characters, got {len(value)}")
    return check


def integer(lo: int = 0, hi: int = MAX_DIM) -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise _fail(path, f"expected an integer in {lo}..{hi}, got {value!r:.60}")
    return check


def number(lo: float = 0.0, hi: float = 1e12) -> Check:
    def check(value: Any, path: str) -> None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not lo <= value <= hi:
            raise _fail(path, f"expected a finite number in {lo:g}..{hi:g}, got {value!r:.60}")
    return check


def boolean(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        raise _fail(path, f"expected true or false, got {value!r:.60}")


def anything(value: Any, path: str) -> None:
    """Any JSON value (already bounded by the generic limits of the container)."""


def one_of(*values: str) -> Check:
    def check(value: Any, path: str) -> None:
        if value not in values:
            raise _fail(path, f"expected one of {', '.join(values)}, got {value!r:.60}")
    return check


def hex64(value: Any, path: str) -> None:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise _fail(path, "expected a lower-case hex SHA-256 digest")


def optional(inner: Check) -> Check:
    def check(value: Any, path: str) -> None:
        if value is not None:
            inner(value, path)
    return check


def either(*choices: Check) -> Check:
    def check(value: Any, path: str) -> None:
        errors = []
        for choice in choices:
            try:
                choice(value, path)
                return
            except ArtifactError as exc:
                errors.append(str(exc).split(": ", 1)[-1])
        raise _fail(path, " or ".join(errors))
    return check


def array(item: Check, min_items: int = 0, max_items: int = MAX_ITEMS) -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, list):
            raise _fail(path, f"expected a list, got {type(value).__name__}")
        if not min_items <= len(value) <= max_items:
            raise _fail(path, f"expected {min_items}..{max_items} items, got {len(value)}")
        for i, v in enumerate(value):
            item(v, f"{path}[{i}]")
    return check


def mapping(value_check: Check, key: Check | None = None, max_items: int = MAX_ITEMS) -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise _fail(path, f"expected an object, got {type(value).__name__}")
        if len(value) > max_items:
            raise _fail(path, f"expected at most {max_items} entries, got {len(value)}")
        for k, v in value.items():
            (key or text())(k, f"{path} key")
            value_check(v, f"{path}.{k}")
    return check


def obj(required: Mapping[str, Check], optional_fields: Mapping[str, Check] | None = None) -> Check:
    """An object with ``required`` and optional fields; other keys are kept unchecked."""
    def check(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise _fail(path, f"expected an object, got {type(value).__name__}")
        for name, field_check in required.items():
            if name not in value:
                raise _fail(f"{path}.{name}".lstrip("."), "missing")
            field_check(value[name], f"{path}.{name}".lstrip("."))
        for name, field_check in (optional_fields or {}).items():
            if name in value:
                field_check(value[name], f"{path}.{name}".lstrip("."))
    return check


def symbol(max_len: int = MAX_SYMBOL) -> Check:
    def check(value: Any, path: str) -> None:
        if not is_symbol(value, max_len):
            raise _fail(path, f"expected a symbolic dimension of 1..{max_len} characters "
                              f"A-Z a-z 0-9 _ +-*/()., and space, got {value!r:.60}")
    return check


_DIM = integer(0, MAX_DIM)
_SHAPE3 = array(array(_DIM, 0, MAX_RANK), 3, 3)


def _null(value: Any, path: str) -> None:
    if value is not None:
        raise _fail(path, "expected null")


def _axis_key(value: Any, path: str) -> None:
    if not isinstance(value, str) or not _AXIS.fullmatch(value) or int(value) >= MAX_RANK:
        raise _fail(path, f"expected an axis number 0..{MAX_RANK - 1}, got {value!r:.60}")


TENSOR = obj({
    "name": text(MAX_NAME, 1),
    "dtype": one_of(*DTYPES),
    "shape": array(either(_DIM, symbol(MAX_SYMBOL), _null), 0, MAX_RANK),
}, {
    "symbolic_dims": mapping(symbol(MAX_EXPR), key=_axis_key, max_items=MAX_RANK),
})
def _region_name(value: Any, path: str) -> None:
    text(128, 1)(value, path)
    try:
        if normalize_region_name(value) != value:
            raise ValueError(f"not in its normalised spelling {normalize_region_name(value)!r}")
    except ValueError as exc:
        raise _fail(path, str(exc)) from None


def _reason(value: Any, path: str) -> None:
    text(MAX_TEXT, 1)(value, path)
    problem = reason_problem(value)
    if problem is not None:
        raise _fail(path, f"an override reason {problem}")


REGION = obj({"name": _region_name}, {
    "precisions": array(one_of(*PRECISIONS), 0, 3),
    "forbidden": array(one_of(*PRECISIONS), 0, 3),
    "budget": number(0, 1e12),
    "metric": text(),
    "latency_p99_ms": optional(number(0, 1e12)),
    "strict_calibration": boolean,
    "description": text(MAX_TEXT),
    "tags": mapping(text(MAX_TEXT), max_items=256),
    "override_compliance": optional(_reason),
})
TRIAL = obj({
    "precision": text(64), "loss": optional(number(0, 1e300)), "budget": number(0, 1e12),
    "accepted": boolean, "measured_on": text(),
}, {"kept_high_precision": array(text()), "note": text(MAX_TEXT)})
VALIDATION = obj({}, {
    "metric": text(), "budget": number(0, 1e12), "chosen": text(64),
    "num_samples": integer(0, 2**62), "data_fingerprint": text(), "trials": array(TRIAL, 0, 64),
})
BUCKETS = obj({
    "buckets": mapping(mapping(array(integer(1, MAX_DIM), 1), key=_axis_key, max_items=MAX_RANK)),
}, {
    "pad_value": number(-1e300, 1e300),
    "outputs": mapping(integer(0, MAX_RANK - 1)),
})
COMPLIANCE = obj({}, {
    "compliant": boolean, "checked": text(), "reasons": array(text(MAX_TEXT), 0, 64),
    "variant_sha256": optional(hex64), "override": optional(_reason),
})

HEADER = obj({
    "payload_sha256": hex64,
    "payload_size": integer(0, 2**62),
    "region": REGION,
    "precision": one_of(*PRECISIONS),
    "backend": obj({"name": text(64, 1)}, {"version": optional(text())}),
    "payload_format": one_of(*PAYLOAD_FORMATS),
    "inputs": array(TENSOR, 1),
    "outputs": array(TENSOR, 1),
    "shape_profiles": array(mapping(_SHAPE3), 0, 64),
}, {
    "kept_high_precision": array(text()),
    "target": optional(text()),
    "shape_buckets": optional(BUCKETS),
    "validation": optional(VALIDATION),
    "calibration": optional(obj({}, {"method": text(), "fingerprint": text()})),
    "model": optional(obj({}, {"sha256": optional(text())})),
    "variant_sha256": optional(hex64),
    "regiontrt_version": text(),
    "created_at": text(),
    "gpu": optional(either(text(), mapping(anything))),
    "compliance": COMPLIANCE,
    "shape_profile_origin": optional(obj({}, {
        "source": text(), "derived": array(mapping(_SHAPE3), 0, 64)})),
    "evaluation": optional(obj({}, {
        "int8_arithmetic": one_of("tensorrt", "fused"), "portable_loss": optional(number(0, 1e300)),
        "cpu": obj({}, {"machine": text(64), "flags": array(text(64), 0, 64)})})),
})


def validate_header(metadata: Any, *, known_backend: bool = True, payload: bool = True) -> None:
    """Check an engine header against the schema and its cross-field rules.

    Args:
        metadata: the parsed header.
        known_backend: require ``backend.name`` to be a backend regiontrt ships (a caller that
            passes its own backend instance to :class:`~regiontrt.runtime.engine.Engine` sets
            ``False``).
        payload: require ``payload_sha256``/``payload_size`` (absent on an in-memory engine).

    Raises:
        ArtifactError: the first violation, naming the field.
    """
    if not isinstance(metadata, dict):
        raise ArtifactError("engine metadata must be a JSON object")
    fields = metadata
    if not payload:
        fields = {"payload_sha256": "0" * 64, "payload_size": 0, **metadata}
    HEADER(fields, "")
    if known_backend:
        one_of(*backend_names())(metadata["backend"]["name"], "backend.name")
        formats = payload_formats(metadata["backend"]["name"])
        if formats and metadata["payload_format"] not in formats:
            raise _fail("payload_format", f"the {metadata['backend']['name']} backend runs "
                        f"{' or '.join(formats)} payloads, not {metadata['payload_format']!r}")
    _cross_check(metadata)


def _cross_check(meta: Mapping[str, Any]) -> None:
    """Rules between fields: unique names, profiles and buckets that fit the declared inputs."""
    for kind in ("inputs", "outputs"):
        names = [t["name"] for t in meta[kind]]
        if len(set(names)) != len(names):
            raise _fail(kind, "tensor names repeat")
        for i, tensor in enumerate(meta[kind]):
            for axis in tensor.get("symbolic_dims") or {}:
                if int(axis) >= len(tensor["shape"]) or tensor["shape"][int(axis)] is not None:
                    raise _fail(f"{kind}[{i}].symbolic_dims.{axis}",
                                "names no axis whose shape entry is null")
    ranks = {t["name"]: len(t["shape"]) for t in meta["inputs"]}
    for i, profile in enumerate(meta["shape_profiles"]):
        for name, (lo, opt, hi) in profile.items():
            path = f"shape_profiles[{i}].{name}"
            if name not in ranks:
                raise _fail(path, "names no declared input")
            if not len(lo) == len(opt) == len(hi) == ranks[name]:
                raise _fail(path, f"min/opt/max must all have the input's rank {ranks[name]}")
            if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
                raise _fail(path, "needs min <= opt <= max in every dimension")
    buckets = meta.get("shape_buckets")
    if buckets:
        for name, axes in buckets["buckets"].items():
            if name not in ranks:
                raise _fail(f"shape_buckets.buckets.{name}", "names no declared input")
            for axis in axes:
                if int(axis) >= ranks[name]:
                    raise _fail(f"shape_buckets.buckets.{name}.{axis}", "axis beyond the rank")
        outputs = {t["name"]: len(t["shape"]) for t in meta["outputs"]}
        for name, axis in (buckets.get("outputs") or {}).items():
            if name not in outputs or axis >= outputs[name]:
                raise _fail(f"shape_buckets.outputs.{name}", "names no output axis")


def check_payload(metadata: Mapping[str, Any], payload: bytes) -> Any:
    """Check an ONNX payload against its (valid) header before any runtime sees it.

    Refused: bytes that are not an ONNX model, an IR or opset version newer than this onnx
    package knows, any tensor naming external data (ONNX Runtime would read that file), and inputs
    or outputs whose names, dtypes or ranks differ from the header's. A TensorRT plan is opaque
    without TensorRT; what is checked is that it is *not* an ONNX model under a plan label (which
    would otherwise escape the payload scan). Its runtime checks it against the header.

    Returns:
        The parsed ``onnx.ModelProto`` for an ONNX payload, else ``None``.

    Raises:
        ArtifactError: the first mismatch, naming it.
    """
    if metadata["payload_format"] != "onnx":
        if _is_onnx(payload):
            raise _fail("payload_format", f"says {metadata['payload_format']!r} but the payload "
                        "is an ONNX model; refused (the payload format comes from the bytes)")
        return None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(bytes(payload))
    except Exception as exc:  # protobuf's DecodeError, recursion limits...
        raise ArtifactError(f"payload is not a readable ONNX model: {exc}") from exc
    if not 3 <= model.ir_version <= onnx.IR_VERSION:
        raise ArtifactError(
            f"payload ONNX IR version {model.ir_version} is outside 3..{onnx.IR_VERSION} "
            f"(onnx {onnx.__version__}); refused before loading"
        )
    newest = onnx.defs.onnx_opset_version()
    if not 1 <= opset_version(model) <= newest:
        raise ArtifactError(f"payload opset {opset_version(model)} is outside 1..{newest}")
    refs = external_data_refs(model)
    if refs:
        raise ArtifactError(
            f"payload names external data ({refs[0][1]!r:.200} for {refs[0][0]:.200}); an engine "
            "payload must be self-contained, so it is refused before ONNX Runtime could read it"
        )
    try:
        declared = {"inputs": input_specs(model), "outputs": output_specs(model)}
    except InvalidModelError as exc:
        raise ArtifactError(f"payload: {exc}") from exc
    for kind, specs in declared.items():
        header = [(t["name"], t["dtype"], len(t["shape"])) for t in metadata[kind]]
        actual = [(s.name, s.dtype.name, s.rank) for s in specs]
        if sorted(header) != sorted(actual):
            raise ArtifactError(
                f"header field {kind} does not match the payload: header {header[:8]} vs "
                f"payload {actual[:8]}"
            )
    return model


def _is_onnx(payload: bytes) -> bool:
    """Whether bytes parse as an ONNX model with a graph (a plan's bytes do not: protobuf refuses
    them within the first fields, so this costs next to nothing on a real plan)."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(bytes(payload))
    except Exception:  # protobuf's DecodeError: not a protobuf, so not ONNX
        return False
    return bool(model.graph.node or model.graph.output or model.opset_import)
