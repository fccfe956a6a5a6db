"""Symbolic dimensions in engine headers (issue 17, item 5).

A YOLO-style detector, built here with ``onnx.helper``, declares the length of its box axis as
the expression ONNX Runtime's symbolic shape inference writes (``(floor(...) + 1)*(...) + ...``,
over 256 characters). It must build for NA, EU and CERTIFIED on ONNX Runtime and TensorRT-RTX,
save, load and show the expression in ``inspect``. Then hypothesis: every declared shape gives a
header the schema accepts, and hostile shape fields are refused with typed errors only.
"""

from __future__ import annotations

import datetime
import json
import math
import re

import numpy as np
import onnx
import pytest
from hostile import build_blob, forge, split
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import regiontrt as rt
from regiontrt.graph.io import TensorSpec
from regiontrt.runtime.inspection import summarize
from regiontrt.runtime.schema import MAX_DIM, MAX_EXPR, MAX_SYMBOL, validate_header
from regiontrt.runtime.trust import sign_file

CLASSES = 3
PROFILE = {"images": [(1, 3, 32, 32), (2, 3, 64, 64), (4, 3, 96, 96)]}
SYMBOL_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ +-*/().,"
_SYMBOL = re.compile(r"[A-Za-z0-9_ +\-*/().,]+")


def _yolo_graph(seed: int = 0) -> onnx.ModelProto:
    """``images[N, 3, H, W]`` -> 4 stride-2 convs -> heads at 3 scales -> ``[N, 4 + C, boxes]``."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def weight(name: str, shape: list[int]) -> str:
        return const(name, (rng.standard_normal(shape) * 0.3).astype(np.float32))

    def conv(x: str, cin: int, cout: int, name: str) -> str:
        nodes.append(helper.make_node(
            "Conv", [x, weight(f"{name}_w", [cout, cin, 3, 3]), weight(f"{name}_b", [cout])],
            [f"{name}_c"], strides=[2, 2], pads=[1, 1, 1, 1], name=name))
        nodes.append(helper.make_node("Relu", [f"{name}_c"], [name], name=f"{name}_relu"))
        return name

    p2 = conv(conv("images", 3, 8, "stem"), 8, 16, "p2")
    p3 = conv(p2, 16, 16, "p3")
    p4 = conv(p3, 16, 16, "p4")
    heads = []
    const("head_shape", np.array([0, 4 + CLASSES, -1], np.int64))
    for i, p in enumerate((p2, p3, p4)):
        nodes.append(helper.make_node(
            "Conv", [p, weight(f"h{i}_w", [4 + CLASSES, 16, 1, 1]),
                     weight(f"h{i}_b", [4 + CLASSES])], [f"h{i}"], name=f"head{i}"))
        nodes.append(helper.make_node("Reshape", [f"h{i}", "head_shape"], [f"h{i}_flat"],
                                      name=f"head{i}_flat"))
        heads.append(f"h{i}_flat")
    nodes.append(helper.make_node("Concat", heads, ["preds"], axis=2, name="concat_scales"))
    start, split_at, end, axis = (const(n, np.array([v], np.int64)) for n, v in
                                  (("s0", 0), ("s4", 4), ("s_end", 4 + CLASSES), ("ax1", 1)))
    nodes.append(helper.make_node("Slice", ["preds", start, split_at, axis], ["boxes"],
                                  name="boxes"))
    nodes.append(helper.make_node("Slice", ["preds", split_at, end, axis], ["logits"],
                                  name="logits"))
    nodes.append(helper.make_node("Sigmoid", ["logits"], ["scores"], name="scores"))
    nodes.append(helper.make_node("Concat", ["boxes", "scores"], ["output0"], axis=1,
                                  name="detections"))
    graph = helper.make_graph(
        nodes, "yolo_like",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height",
                                                                     "width"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def yolo() -> onnx.ModelProto:
    """The detector with its output shape written by ONNX Runtime's symbolic shape inference."""
    pytest.importorskip("sympy", reason="ONNX Runtime's symbolic shape inference needs sympy")
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = SymbolicShapeInference.infer_shapes(_yolo_graph(), auto_merge=True)
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    return model


def _declared(model: onnx.ModelProto) -> list[object]:
    dims = model.graph.output[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def _boxes(expr: str, height: int, width: int) -> int:
    """The box count the expression gives (it only uses floor and arithmetic)."""
    assert _SYMBOL.fullmatch(expr)
    return int(eval(expr, {"__builtins__": {}}, {"floor": math.floor, "height": height,
                                                  "width": width}))


def _data(seed: int, count: int, batch: int = 2, hw: tuple[int, int] = (64, 64)) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"images": rng.uniform(0, 1, (batch, 3, *hw)).astype(np.float32)}
            for _ in range(count)]


def test_the_model_declares_an_expression_longer_than_the_inline_cap(yolo):
    batch, channels, boxes = _declared(yolo)
    assert (batch, channels) == ("batch", 4 + CLASSES)
    assert isinstance(boxes, str) and "floor" in boxes and len(boxes) > MAX_SYMBOL
    # the expression is the real length: 64x64 -> 16x16 + 8x8 + 4x4 boxes
    assert _boxes(boxes, 64, 64) == 16 * 16 + 8 * 8 + 4 * 4


def _check_engine(path, yolo, trust=None) -> None:
    """Saved, loaded and inspected: the names stay inline, the long expression beside them."""
    expr = _declared(yolo)[2]
    info = rt.inspect(path, trust=trust)
    assert info["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    out = info["outputs"][0]
    assert out["shape"] == ["batch", 4 + CLASSES, None] and out["symbolic_dims"] == {"2": expr}
    assert any(expr in value for _, value in summarize(info))
    engine = rt.load_engine(path, trust=trust)
    assert engine.outputs[0].shape == ("batch", 4 + CLASSES, expr)
    assert engine.inputs[0].shape == ("batch", 3, "height", "width")


@pytest.mark.parametrize("region", ["NA", "EU", "CERTIFIED"])
def test_yolo_head_builds_on_onnxruntime(yolo, region, tmp_path):
    builder = (rt.RegionalEngineBuilder.from_onnx(yolo).for_region(region)
               .with_backend("onnxruntime").with_shape_profile(PROFILE)
               .with_validation(_data(1, 3), metric="relative_l2"))
    if region == "NA":
        builder = builder.with_calibrator("minmax", data=_data(2, 8))
    engine = builder.build(tmp_path / "yolo.engine")
    _check_engine(tmp_path / "yolo.engine", yolo)
    # the engine runs shapes other than the validation data's, with the declared box count
    images = np.random.default_rng(3).uniform(0, 1, (1, 3, 40, 56)).astype(np.float32)
    got = rt.load_engine(tmp_path / "yolo.engine").infer({"images": images})["output0"]
    assert got.shape == (1, 4 + CLASSES, _boxes(_declared(yolo)[2], 40, 56))
    assert engine.region == region


@pytest.mark.rtx
@pytest.mark.parametrize("region", ["NA", "EU", "CERTIFIED"])
def test_yolo_head_builds_with_tensorrt_rtx(yolo, region, tmp_path, signing_keys):
    builder = (rt.RegionalEngineBuilder.from_onnx(yolo).for_region(region)
               .with_backend("tensorrt-rtx").with_shape_profile(PROFILE)
               .with_tactics(rt.TacticSelector(optimization_level=0,
                                               compute_capabilities=("sm89",)))
               .with_validation(_data(1, 3), metric="relative_l2"))
    if region == "NA":
        builder = builder.with_calibrator("minmax", data=_data(2, 8))
    engine = builder.build(tmp_path / "yolo.engine")
    assert engine.metadata["payload_format"] == "tensorrt-rtx-plan"
    sign_file(tmp_path / "yolo.engine", signing_keys[0])  # EU/CERTIFIED plans load signed only
    _check_engine(tmp_path / "yolo.engine", yolo, trust=signing_keys[1])


# -- every declared shape gives a header the schema accepts ---------------------------------------
BLOB = build_blob()
META, PAYLOAD = split(BLOB)

dims = st.one_of(
    st.integers(-(2**40), 2**40), st.none(), st.text(max_size=300),
    st.text(SYMBOL_CHARS, min_size=1, max_size=300),
    st.text(SYMBOL_CHARS, min_size=MAX_SYMBOL - 2, max_size=MAX_EXPR + 50),
    st.sampled_from(["batch", "unk__17", "N", " ", "batch:0", "h\x1b[2J", "<b>x</b>", "é", "",
                     "floor(height/2 - 1/2) + 1", "Max(1, s0)", "x" * (MAX_EXPR + 1)]),
)


def _expected(dim: object) -> object:
    if isinstance(dim, int) and 0 <= dim <= MAX_DIM:
        return dim
    if (isinstance(dim, str) and 1 <= len(dim) <= MAX_EXPR and _SYMBOL.fullmatch(dim)
            and not dim.isspace()):
        return dim
    return None


@settings(max_examples=300, deadline=datetime.timedelta(seconds=5), database=None,
          derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.lists(dims, max_size=16))
def test_any_declared_shape_gives_a_valid_header_and_reads_back(shape):
    spec = TensorSpec("output0", np.dtype("float32"), tuple(shape))
    entry = spec.to_dict()
    meta = json.loads(json.dumps(META))
    meta["outputs"] = [entry]
    validate_header(meta)  # never raises, whatever the model declared
    assert all(d is None or isinstance(d, int) or len(d) <= MAX_SYMBOL for d in entry["shape"])
    back = TensorSpec.from_dict(json.loads(json.dumps(entry)))
    assert back.shape == tuple(_expected(d) for d in shape)
    # a negative or oversized int (never read from a model) is dynamic in the header
    changed = back.shape != spec.shape
    assert back.rank == spec.rank and back.is_dynamic == (spec.is_dynamic or changed)


# -- hostile shape fields: typed refusals only ----------------------------------------------------
json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=20),
    st.text(SYMBOL_CHARS, max_size=20), st.sampled_from(["0", "1", "2", "15", "16", "99", "-1"]),
    st.integers(0, 2).map(lambda i: ["a" * (MAX_EXPR + 1), "b" * (MAX_SYMBOL + 1), "\x00"][i]),
)
json_value = st.recursive(
    json_leaf, lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=3), st.sampled_from(["0", "1", "2"])),
                        inner, max_size=4)),
    max_leaves=10)


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


@settings(max_examples=200, deadline=datetime.timedelta(seconds=10), database=None,
          derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["inputs", "outputs"]), field=st.sampled_from(
    ["shape", "symbolic_dims", "symbolic_dims"]), value=json_value,
    shape=st.lists(st.one_of(st.none(), st.integers(0, 8), st.sampled_from(["N", "n"])),
                   min_size=2, max_size=2))
def test_hostile_symbolic_dims_are_refused_with_typed_errors(tmp_path_factory, kind, field,
                                                             value, shape):
    def edit(meta):
        meta[kind][0]["shape"] = list(shape)
        meta[kind][0][field] = value

    path = tmp_path_factory.mktemp("hostile") / "f.engine"
    path.write_bytes(forge(BLOB, edit))
    for read in (lambda: rt.inspect(path, verify_payload=False), lambda: rt.inspect(path),
                 lambda: rt.load_engine(path)):
        try:
            result = read()
        except rt.RegionTRTError:
            continue
        meta = result if isinstance(result, dict) else result.metadata
        tensor = meta[kind][0]
        # accepted: every symbolic string is bounded and in the strict character set
        for text in _strings(tensor["shape"]) + _strings(tensor.get("symbolic_dims") or {}):
            assert _SYMBOL.fullmatch(text) and len(text) <= MAX_EXPR
        for axis in tensor.get("symbolic_dims") or {}:
            assert tensor["shape"][int(axis)] is None


def test_old_headers_read_as_before(tmp_path):
    """An engine written before ``symbolic_dims`` (names inline, no extra field) loads as is."""
    assert META["inputs"][0]["shape"] == ["N", 4] and "symbolic_dims" not in META["inputs"][0]
    path = tmp_path / "old.engine"
    path.write_bytes(BLOB)
    assert rt.load_engine(path).inputs[0].shape == ("N", 4)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda t: t.update(shape=["N", "h\x1b[2J"]), r"shape\[1\]"),
    (lambda t: t.update(shape=["N", "b" * (MAX_SYMBOL + 1)]), r"shape\[1\]"),
    (lambda t: t.update(symbolic_dims={"1": "height"}), r"symbolic_dims\.1"),
    (lambda t: t.update(shape=["N", None], symbolic_dims={"1": "a<b"}), r"symbolic_dims\.1"),
    (lambda t: t.update(shape=[None, 4], symbolic_dims={"2": "x"}), r"symbolic_dims\.2"),
    (lambda t: t.update(shape=[None, 4], symbolic_dims={"x": "y"}), "axis number"),
])
def test_each_bad_symbolic_field_is_named(tmp_path, edit, match):
    path = tmp_path / "bad.engine"
    path.write_bytes(forge(BLOB, lambda meta: edit(meta["outputs"][0])))
    with pytest.raises(rt.errors.ArtifactError, match=match):
        rt.inspect(path)
    with pytest.raises(rt.errors.ArtifactError, match=match):
        rt.load_engine(path)
