"""Reading models and describing their inputs and outputs."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from regiontrt.errors import InvalidModelError

ModelSource = str | Path | bytes | onnx.ModelProto
Dim = int | str | None


#: Largest static dimension (TensorRT's int32 dimensions).
MAX_DIM = 2**31 - 1
#: Longest symbolic dimension written inline in a ``shape`` (a name or a short expression).
MAX_SYMBOL = 256
#: Longest expression kept in a tensor's ``symbolic_dims``.
MAX_EXPR = 4096
# Identifiers, numbers and arithmetic: every name or formula shape inference writes (``batch``,
# ``unk__17``, ``floor(height/2 - 1/2) + 1``, ``Max(1, s0)``), nothing a terminal or a page
# could read as markup or control sequences.
_SYMBOL = re.compile(r"[A-Za-z0-9_ +\-*/().,]+")


def is_symbol(value: Any, max_len: int = MAX_SYMBOL) -> bool:
    """Whether ``value`` may stand in a header as a symbolic dimension of at most ``max_len``.

    A symbolic dimension is a string of 1..``max_len`` characters from ``A-Z a-z 0-9 _``, space
    and ``+ - * / ( ) . ,``, not only spaces.
    """
    return (isinstance(value, str) and 1 <= len(value) <= max_len
            and _SYMBOL.fullmatch(value) is not None and not value.isspace())


def header_shape(shape: Sequence[Any]) -> tuple[list[int | str | None], dict[str, str]]:
    """The header form of a declared shape: ``(shape, symbolic_dims)``; never fails.

    Each dimension becomes an ``int`` (static, ``0..MAX_DIM``), a string (symbolic: a name such
    as ``batch`` or an expression from shape inference, see :func:`is_symbol`) or ``None``
    (dynamic, nothing known). An expression longer than :data:`MAX_SYMBOL` is written as ``None``
    in ``shape`` and kept whole in ``symbolic_dims`` (``{"axis": expression}``) when it has at
    most :data:`MAX_EXPR` characters; a longer one, a name with other characters or an
    out-of-range integer is only ``None``: the payload itself still declares it.
    """
    dims: list[int | str | None] = []
    exprs: dict[str, str] = {}
    for axis, dim in enumerate(shape):
        static = isinstance(dim, int) and not isinstance(dim, bool) and 0 <= dim <= MAX_DIM
        if static or is_symbol(dim, MAX_SYMBOL):
            dims.append(dim)
        else:
            dims.append(None)
            if is_symbol(dim, MAX_EXPR):
                exprs[str(axis)] = dim
    return dims, exprs


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and declared shape of a graph input or output.

    A dimension is an ``int`` when static, a ``str`` when symbolic (a name such as ``"batch"``
    or an expression that shape inference wrote, such as ``"floor(height/2 - 1/2) + 1"``) and
    ``None`` for an unnamed dynamic one.

    In an engine header (:meth:`to_dict`) ``shape`` holds the ints, the symbols of at most 256
    characters from ``A-Z a-z 0-9 _``, space and ``+ - * / ( ) . ,``, and ``null`` for the rest;
    an expression too long to stand inline (up to 4096 characters) is kept whole in
    ``symbolic_dims`` (``{"2": "..."}``), and :meth:`from_dict` puts it back. A name with other
    characters, or a longer expression, is only ``null`` (dynamic) in the header: the payload
    still declares it. Any shape gives a header the schema accepts
    (:func:`header_shape`); headers of older engines, whose ``shape`` lists
    ints, names and ``null``, read as before.
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
        dims, exprs = header_shape(self.shape)
        out: dict[str, object] = {"name": self.name, "dtype": self.dtype.name, "shape": dims}
        if exprs:
            out["symbolic_dims"] = exprs
        return out

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> TensorSpec:
        """The spec of a header entry (checked by
        :func:`~regiontrt.runtime.schema.validate_header`)."""
        shape = d["shape"]
        assert isinstance(shape, list)
        dims: list[Dim] = list(shape)
        exprs = d.get("symbolic_dims") or {}
        assert isinstance(exprs, dict)
        for axis, expr in exprs.items():
            if int(axis) < len(dims) and dims[int(axis)] is None:
                dims[int(axis)] = str(expr)
        return cls(str(d["name"]), np.dtype(str(d["dtype"])), tuple(dims))


AnyGraph = onnx.GraphProto | onnx.FunctionProto


def _attributes(where: str, graph: AnyGraph) -> Iterator[tuple[str, onnx.AttributeProto]]:
    """Every attribute held by ``graph``: its nodes' and, for a function, its default values
    (``FunctionProto.attribute_proto`` can store tensors and graphs like any node attribute)."""
    for node in graph.node:
        for attr in node.attribute:
            yield f"{where} > {node.op_type} {node.name or '?'}.{attr.name}", attr
    if isinstance(graph, onnx.FunctionProto):
        for attr in graph.attribute_proto:
            yield f"{where} default {attr.name}", attr


def iter_graphs(model: onnx.ModelProto) -> Iterator[tuple[str, AnyGraph]]:
    """Every graph of ``model``, with a path naming where it sits.

    The main graph, each subgraph (``If``/``Loop``/``Scan`` bodies, at any depth), each
    model-local function, the graphs stored as a function's default attribute values, and the
    training-info graphs (and the subgraphs inside all of them).
    """
    stack: list[tuple[str, AnyGraph]] = [("graph", model.graph)]
    stack += [(f"function {f.domain}:{f.name}", f) for f in model.functions]
    for i, info in enumerate(model.training_info):
        stack += [(f"training_info[{i}].{part}", getattr(info, part))
                  for part in ("initialization", "algorithm") if info.HasField(part)]
    while stack:
        where, graph = stack.pop()
        yield where, graph
        for label, attr in _attributes(where, graph):
            if attr.HasField("g"):
                stack.append((label, attr.g))
            stack.extend((f"{label}[{i}]", g) for i, g in enumerate(attr.graphs))


def iter_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """Every stored tensor: initializers, sparse initializers and tensor attributes (function
    defaults included), everywhere."""
    for where, graph in iter_graphs(model):
        if isinstance(graph, onnx.GraphProto):
            for t in graph.initializer:
                yield f"{where} initializer {t.name}", t
            for sp in graph.sparse_initializer:
                yield f"{where} sparse initializer {sp.values.name}", sp.values
                yield f"{where} sparse initializer {sp.values.name} indices", sp.indices
        for label, attr in _attributes(where, graph):
            if attr.HasField("t"):
                yield label, attr.t
            if attr.HasField("sparse_tensor"):
                yield label, attr.sparse_tensor.values
                yield label + " indices", attr.sparse_tensor.indices
            yield from ((f"{label}[{i}]", t) for i, t in enumerate(attr.tensors))
            for i, sp in enumerate(attr.sparse_tensors):
                yield f"{label}[{i}]", sp.values
                yield f"{label}[{i}] indices", sp.indices


def external_data_refs(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """``(where, location)`` of every tensor whose data lives outside the model bytes."""
    out = []
    for where, tensor in iter_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            entries = {e.key: e.value for e in tensor.external_data}
            out.append((where, entries.get("location", "")))
    return out


def _inline_external_data(model: onnx.ModelProto, base_dir: Path) -> None:
    """Read external data that lies inside ``base_dir`` into the model; refuse anything else."""
    from onnx.external_data_helper import load_external_data_for_model

    root = base_dir.resolve()
    for where, location in external_data_refs(model):
        rel = Path(location)
        target = (root / rel).resolve()
        if (not location or rel.is_absolute() or ".." in rel.parts
                or not target.is_relative_to(root) or not target.is_file()):
            raise InvalidModelError(
                f"{where}: external data location {location!r} is not a file beside the model "
                f"in {root}; refused"
            )
    try:
        load_external_data_for_model(model, str(root))
    except Exception as exc:
        raise InvalidModelError(f"cannot read the model's external data: {exc}") from exc
    left = external_data_refs(model)
    if left:
        raise InvalidModelError(
            f"external data that cannot be inlined (e.g. {left[0][0]}); save the model with its "
            "weights inside the file (onnx.save(model, path, save_as_external_data=False))"
        )


def load_model(
    source: ModelSource, *, check: bool = True, base_dir: str | Path | None = None
) -> onnx.ModelProto:
    """Load an ONNX model from a path, raw bytes or a ``ModelProto``.

    External data is always inlined, so the returned model (and every payload built from it) is
    self-contained and its hash covers the weights. For a path, the data files must lie in the
    model's folder (no absolute or ``..`` locations); for bytes or a ``ModelProto`` that names
    external data, pass ``base_dir``, the folder holding it. The model is validated with the ONNX
    checker.

    Raises:
        InvalidModelError: the source is of the wrong type, the file is missing, unreadable, not
            ONNX, names external data outside its folder, or fails the checker.
    """
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        model = onnx.ModelProto()
        try:
            model.ParseFromString(bytes(source))
        except Exception as exc:  # protobuf raises DecodeError and friends
            raise InvalidModelError(f"bytes are not a serialized ONNX model: {exc}") from exc
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InvalidModelError(f"ONNX model not found (or not a file): {path}")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:
            raise InvalidModelError(f"{path}: not a readable ONNX model: {exc}") from exc
        base_dir = path.parent if base_dir is None else base_dir
    else:
        raise InvalidModelError(
            f"a model source must be a path, bytes or an onnx.ModelProto, not "
            f"{type(source).__name__}"
        )
    refs = external_data_refs(model)
    if refs:
        if base_dir is None:
            raise InvalidModelError(
                f"the model names external data ({refs[0][1]!r} for {refs[0][0]}) but was given "
                "as bytes or a ModelProto: pass its path, or base_dir= (the folder of the data)"
            )
        _inline_external_data(model, Path(base_dir))
    if not model.graph.node and not model.graph.output:
        raise InvalidModelError("the ONNX model has an empty graph")
    if check:
        try:
            onnx.checker.check_model(model)
        except Exception as exc:
            raise InvalidModelError(f"the ONNX model fails the checker: {exc}") from exc
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
        # Exporters write -1 (PaddleOCR's PP-OCRv4 classifier: its batch axis) or 0 for "any
        # size", as ONNX Runtime and TensorRT read it: only a positive value fixes a dimension.
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorSpec(value.name, dtype, tuple(dims))


def free_unsized_dims(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make every graph input or output dimension declared as ``<= 0``, or named with something
    that is no symbol (``"?"``), an unnamed dynamic one.

    Modifies ``model`` in place and returns it. ONNX Runtime already reads -1 as "any size" but
    takes 0 literally; after this, both run any size there, as :func:`input_specs` reads them.
    TensorRT reads two dimensions of one name as equal: PP-OCR's classifier declares height and
    width both ``"?"``, which made a 48x192 profile a contradiction.
    """
    for d in _unsized_dims(model):
        d.Clear()
    return model


def without_unsized_dims(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` itself when no graph input or output declares a dimension ``<= 0`` or a name
    that is no symbol, else a copy with those dimensions freed (see :func:`free_unsized_dims`);
    ``model`` is not modified.
    """
    if next(_unsized_dims(model), None) is None:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return free_unsized_dims(copy)


def _unsized_dims(model: onnx.ModelProto) -> Iterator[Any]:
    for value in [*model.graph.input, *model.graph.output]:
        if value.type.HasField("tensor_type"):
            for d in value.type.tensor_type.shape.dim:
                unsized = d.HasField("dim_value") and d.dim_value <= 0
                if unsized or (d.HasField("dim_param") and not is_symbol(d.dim_param, MAX_EXPR)):
                    yield d


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
