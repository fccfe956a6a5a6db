"""Reading models and describing their inputs and outputs."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import InvalidModelError

ModelSource = str | Path | bytes | onnx.ModelProto
Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and declared shape of a graph input or output.

    A dimension is an ``int`` when static, a ``str`` for a named dynamic dimension and ``None``
    for an unnamed one.
    """

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_dynamic(self) -> bool:
        return any(not isinstance(d, int) for d in self.shape)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "dtype": self.dtype.name, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> TensorSpec:
        shape = d["shape"]
        assert isinstance(shape, list)
        return cls(str(d["name"]), np.dtype(str(d["dtype"])), tuple(shape))


def load_model(source: ModelSource, *, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX model from a path, raw bytes or a ``ModelProto``.

    External data next to a file is loaded too. The model is validated with the ONNX checker.

    Raises:
        InvalidModelError: the file is missing, unreadable, not ONNX, or fails the checker.
    """
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        model = onnx.ModelProto()
        try:
            model.ParseFromString(bytes(source))
        except Exception as exc:  # protobuf raises DecodeError and friends
            raise InvalidModelError(f"bytes are not a serialized ONNX model: {exc}") from None
    else:
        path = Path(source)
        if not path.is_file():
            raise InvalidModelError(f"ONNX model not found: {path}")
        try:
            model = onnx.load(str(path))
        except Exception as exc:
            raise InvalidModelError(f"{path}: not a readable ONNX model: {exc}") from None
    if not model.graph.node and not model.graph.output:
        raise InvalidModelError("the ONNX model has an empty graph")
    if check:
        try:
            onnx.checker.check_model(model)
        except Exception as exc:
            raise InvalidModelError(f"the ONNX model fails the checker: {exc}") from None
    return model


def model_bytes(model: onnx.ModelProto) -> bytes:
    """Deterministic serialization of ``model``."""
    return model.SerializeToString(deterministic=True)


def model_sha256(model: onnx.ModelProto) -> str:
    """SHA-256 of the deterministic serialization, as hex."""
    return hashlib.sha256(model_bytes(model)).hexdigest()


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    ttype = value.type.tensor_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type))
    except Exception:
        raise InvalidModelError(f"tensor {value.name!r} has no supported element type") from None
    dims: list[Dim] = []
    for d in ttype.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorSpec(value.name, dtype, tuple(dims))


def input_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The real graph inputs (initializers listed as inputs are left out)."""
    inits = {i.name for i in model.graph.initializer}
    return [_spec(v) for v in model.graph.input if v.name not in inits]


def output_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The graph outputs."""
    return [_spec(v) for v in model.graph.output]


def opset_version(model: onnx.ModelProto) -> int:
    """The default-domain opset the model imports."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def specs_by_name(specs: Sequence[TensorSpec]) -> dict[str, TensorSpec]:
    return {s.name: s for s in specs}
