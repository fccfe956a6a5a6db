"""Issue 17, item 7: bucketed outputs have the original model's length at every width.

Where symbolic shape inference cannot name an output's length (it passes through a computed
``Reshape``), the length is measured from the FP32 model and fitted to a formula that every
measurement confirms; where no formula fits, bucketing that output is refused before any build
work. The truth in every test is the original model run unpadded by ONNX Runtime.
"""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import regiontrt as rt
from regiontrt.errors import ShapeProfileError
from regiontrt.shapes.length_fit import LengthMismatch, fit_length
from regiontrt.shapes.rules import LengthRules, symbolic_length_rules

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("sympy", reason="needs sympy (ONNX Runtime's symbolic shape inference)")

BUCKETS = [64, 128, 256, 512, 1280]


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _reshape_model(height: int | str = 8) -> onnx.ModelProto:
    """Conv (stride 2) and MaxPool (kernel 3, stride 2) along the width, then a ``Reshape`` to
    ``[1, T, -1]`` whose ``T`` is the width after pooling sent through float ``Div``/``Ceil``:
    ONNX Runtime's symbolic inference cannot follow it, so it cannot name ``T``."""
    inits = [numpy_helper.from_array(np.linspace(-1, 1, 36, dtype=np.float32).reshape(4, 1, 3, 3),
                                     "w"),
             _ints("i1", [1]), _ints("one", [1]), _ints("rest", [-1]),
             numpy_helper.from_array(np.array([1.0], np.float32), "onef")]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c"], ["m"], kernel_shape=[1, 3], strides=[1, 2]),
        helper.make_node("Transpose", ["m"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Shape", ["t"], ["sh"]),
        helper.make_node("Gather", ["sh", "i1"], ["steps"], axis=0),
        helper.make_node("Cast", ["steps"], ["steps_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["steps_f", "onef"], ["steps_d"]),
        helper.make_node("Ceil", ["steps_d"], ["steps_c"]),
        helper.make_node("Cast", ["steps_c"], ["steps_i"], to=TensorProto.INT64),
        helper.make_node("Concat", ["one", "steps_i", "rest"], ["shape"], axis=0),
        helper.make_node("Reshape", ["t", "shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "reshape_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, height, "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "T", "C"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _sqrt_model() -> onnx.ModelProto:
    """An output of ``floor(sqrt(width))`` steps: no conv/pool formula gives it."""
    nodes = [
        helper.make_node("Shape", ["x"], ["sh"]),
        helper.make_node("Gather", ["sh", "i1"], ["wd"], axis=0),
        helper.make_node("Cast", ["wd"], ["wf"], to=TensorProto.FLOAT),
        helper.make_node("Sqrt", ["wf"], ["ws"]),
        helper.make_node("Floor", ["ws"], ["wl"]),
        helper.make_node("Cast", ["wl"], ["n"], to=TensorProto.INT64),
        helper.make_node("Concat", ["one", "n"], ["shape"], axis=0),
        helper.make_node("ConstantOfShape", ["shape"], ["y"],
                         value=numpy_helper.from_array(np.array([1.0], np.float32))),
        helper.make_node("Relu", ["x"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes, "sqrt_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "T"]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, "W"])],
        [_ints("i1", [1]), _ints("one", [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _session(model: onnx.ModelProto | str | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 4  # widths too small for the model fail, and are caught
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def test_a_length_through_reshape_is_measured_and_exact_at_every_width(tmp_path) -> None:
    model = _reshape_model()
    rules, missing = symbolic_length_rules(model, {"y": 1})
    assert not rules and "y" in missing  # the inference cannot name it: this is measured
    sp = rt.ShapeProfile({"x": [(1, 1, 8, 64), (1, 1, 8, 512), (1, 1, 8, 1280)]},
                         buckets={"x": {3: BUCKETS}}, bucket_outputs={"y": 1})
    built = (rt.RegionalEngineBuilder.from_onnx(model).for_region("CERTIFIED")
             .with_shape_profile(sp).build(tmp_path / "r.engine"))
    lengths = built.metadata["shape_buckets"]["lengths"]
    measured = lengths["measured"]["y"]
    assert len(measured) <= 80  # a few dozen shape-only runs, not a sweep
    assert set(BUCKETS) <= set(measured)
    engine = rt.load_engine(tmp_path / "r.engine")  # the measured formula travels in the file
    assert engine.bucketing.lengths.measured == {"y": measured}
    reference = _session(model)
    rng = np.random.default_rng(0)
    truth, runs = {}, 0
    for width in range(1, 1281):
        line = rng.standard_normal((1, 1, 8, width)).astype(np.float32)
        try:
            expected = reference.run(["y"], {"x": line})[0].shape
        except Exception:  # too narrow for the model's pooling window: no truth to compare
            assert width < 33
            continue
        truth[width] = expected[1]
        got = engine.infer({"x": line})["y"].shape
        runs += 1
        assert got == expected, f"width {width}: engine {got}, model {expected}"
    assert runs >= 1248
    # The old guess, floor(len at the bucket * width / bucket), is wrong at many of these widths.
    guess = {w: truth[b] * w // b for w in truth for b in [next(b for b in BUCKETS if w <= b)]}
    assert sum(guess[w] != truth[w] for w in truth) > 300


def _rec_path() -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        pytest.skip("needs the PP-OCRv4 models: pip install --no-deps rapidocr-onnxruntime")
    return next(Path(spec.origin).parent.rglob("ch_PP-OCRv4_rec_infer.onnx"))


def test_pp_ocrv4_rec_engine_cuts_to_the_model_length_across_33_to_1280(tmp_path) -> None:
    """The recogniser's formula comes from symbolic inference; checked at every width from 33 to
    1280 against the model run unpadded (one run per width: about a minute on two cores). The
    engine's own pad/cut logic gives the kept length; real engine runs at each bucket (and at a
    few widths) tie it to what the engine returns."""
    path = _rec_path()
    output = onnx.load(str(path), load_external_data=False).graph.output[0].name
    buckets = [128, 256, 384, 512, 768, 1024, 1280]
    sp = rt.ShapeProfile({"x": [(1, 3, 48, 128), (1, 3, 48, 512), (1, 3, 48, 1280)]},
                         buckets={"x": {3: buckets}}, bucket_outputs={output: 1})
    (rt.RegionalEngineBuilder.from_onnx(path).for_region("CERTIFIED").with_shape_profile(sp)
     .build(tmp_path / "rec.engine"))
    engine = rt.load_engine(tmp_path / "rec.engine")
    assert not engine.bucketing.lengths.measured  # inferred, not measured
    at_bucket = {b: engine.infer({"x": np.zeros((1, 3, 48, b), np.float32)})[output].shape[1]
                 for b in buckets}
    reference = _session(path)
    widths = range(33, 1281)
    wrong = {}
    for width in widths:
        line = np.zeros((1, 3, 48, width), np.float32)
        truth = reference.run([output], {"x": line})[0].shape[1]
        padded, info = engine.bucketing.pad({"x": line})
        ran = np.zeros((1, at_bucket[padded["x"].shape[3]], 1), np.float32)
        cut = engine.bucketing.unpad({output: ran}, info)[output].shape[1]
        if cut != truth:
            wrong[width] = (cut, truth)
    assert not wrong, f"engine cut vs model at widths {wrong}"
    assert len(widths) == 1248
    for width in (33, 197, 335, 999):  # the engine end to end, random lines
        line = np.random.default_rng(width).random((1, 3, 48, width), np.float32)
        assert (engine.infer({"x": line})[output].shape
                == reference.run([output], {"x": line})[0].shape)


def test_measuring_pp_ocrv4_rec_agrees_with_its_inferred_formula(monkeypatch) -> None:
    """Pretend symbolic inference failed on the recogniser: the measured formula gives the
    inferred one's lengths at every width it holds at, and the model's own at the few smallest
    widths, where ONNX Runtime gives one step although the inferred formula says none."""
    from regiontrt.shapes import length_measure as _length_measure

    path = _rec_path()
    model = onnx.load(str(path))
    output = model.graph.output[0].name
    sizes = [128, 256, 512, 1280]
    inferred = rt.Bucketing({"x": {3: sizes}}, outputs={output: 1}).for_model(model).lengths
    assert inferred is not None and not inferred.measured
    monkeypatch.setattr(_length_measure, "symbolic_length_rules",
                        lambda m, outs: ({}, dict.fromkeys(outs, "pretend it failed")))
    sp = rt.ShapeProfile({"x": [(1, 3, 48, 128), (1, 3, 48, 512), (1, 3, 48, 1280)]})
    measured = (rt.Bucketing({"x": {3: sizes}}, outputs={output: 1})
                .for_model(model, profiles=sp.profiles).lengths)
    assert measured is not None and len(measured.measured[output]) <= 80

    def length(rules: LengthRules, w: int) -> int:
        return rules.lengths({"x": (1, 3, 48, w)})[output]

    differ = [w for w in range(1, 1281) if length(measured, w) != length(inferred, w)]
    assert differ == sorted(differ) and (not differ or differ[-1] < 33)
    session = _session(path)
    for w in {*differ, *range(1, 40), 197, 1280}:
        truth = session.run([output], {"x": np.zeros((1, 3, 48, w), np.float32)})[0].shape[1]
        assert length(measured, w) == truth, w


def test_no_formula_fits_is_refused_before_any_build_work(tmp_path) -> None:
    def no_build(*args, **kwargs):
        raise AssertionError("build work started before the refusal")

    sp = rt.ShapeProfile({"x": [(1, 64), (1, 256), (1, 512)]}, buckets={"x": {1: [64, 512]}},
                         bucket_outputs={"y": 1})
    builder = (rt.RegionalEngineBuilder.from_onnx(_sqrt_model()).for_region("CERTIFIED")
               .with_shape_profile(sp).with_stages(compile=no_build, backend_build=no_build))
    with pytest.raises(LengthMismatch) as info:
        builder.build(tmp_path / "s.engine")
    assert not (tmp_path / "s.engine").exists()
    message = str(info.value)
    assert "output 'y'" in message and f"at width {info.value.width} the model gives" in message
    assert "floor(len" not in message
    assert isinstance(info.value, ShapeProfileError)
    # The counter-example is true of the model.
    w = info.value.width
    got = _session(_sqrt_model()).run(["y"], {"x": np.zeros((1, w), np.float32)})[0].shape[1]
    assert got == info.value.length == math.isqrt(w)


def _ceil(a: int, s: int) -> int:
    return -(-a // s)


@pytest.mark.parametrize(("low", "length"), [
    (1, lambda w: (w + 1) // 2),  # conv k3 s2 p1
    (7, lambda w: (((w - 3) // 2 + 1) - 3) // 2 + 1),  # two valid k3 s2
    (1, lambda w: _ceil(_ceil(_ceil(w, 2), 2), 2)),  # three ceil-mode pools
    (9, lambda w: ((((w + 2 - 3) // 2 + 1) + 2 - 3) // 2 + 1 - 2) // 1 + 1),  # offsets
    (1, lambda w: 2 * ((w + 3) // 4)),  # stride 4, then upsample x2
    (1, lambda w: 3 * w // 2),  # resize x1.5
    (1, lambda w: 25),  # global pooling
    (2, lambda w: w - 1),
    (32, lambda w: (w + 31) // 32 - 1),  # a YOLO-like stride 32
    (3, lambda w: max(1, (w - 1) // 4)),  # ONNX Runtime's one step for a too-narrow window
])
def test_fit_recovers_conv_and_pool_arithmetic_exactly(low, length) -> None:
    calls: list[int] = []

    def probe(w: int) -> int:
        calls.append(w)
        return length(w)

    fit = fit_length(probe, low, 1280, boundaries=BUCKETS)
    assert [fit(w) for w in range(low, 1281)] == [length(w) for w in range(low, 1281)]
    rule = LengthRules({"s0": ("x", 3)}, {"y": fit.rule("s0")})
    assert all(rule.lengths({"x": (1, 1, 8, w)})["y"] == length(w) for w in range(low, 1281))
    assert len(set(calls)) <= 80 and set(fit.widths) <= set(calls)


@pytest.mark.parametrize("length", [math.isqrt, lambda w: w % 7, lambda w: w // 3 + (w > 700)])
def test_fit_refuses_lengths_outside_the_family_with_a_true_counter_example(length) -> None:
    with pytest.raises(LengthMismatch) as info:
        fit_length(length, 1, 1280, boundaries=BUCKETS)
    w = info.value.width
    assert info.value.length == length(w)
    formula = re.search(r": (.*) fits the", str(info.value))
    assert formula is not None
    rule = LengthRules({"w": ("x", 0)}, {"y": formula.group(1)})
    assert rule.lengths({"x": (w,)})["y"] != length(w)  # it is a counter-example


def test_a_length_that_depends_on_another_dynamic_axis_is_refused() -> None:
    """Heights are dynamic here, and ``T`` is steps * height: measuring at one height only
    would cut other heights wrong, so the check at a second height refuses."""
    model = _reshape_model(height="H")
    steps = model.graph.node[4]
    assert steps.op_type == "Gather"
    model.graph.initializer.append(_ints("i3", [3]))  # [1, steps, 4, height] after Transpose
    model.graph.node.insert(5, helper.make_node("Gather", ["sh", "i3"], ["hgt"], axis=0))
    model.graph.node.insert(6, helper.make_node("Mul", ["steps", "hgt"], ["steps_h"]))
    model.graph.node[7].input[0] = "steps_h"
    bucketing = rt.Bucketing({"x": {3: BUCKETS}}, outputs={"y": 1})
    with pytest.raises(LengthMismatch, match="depends on more than the bucketed axis"):
        bucketing.for_model(model)
    sp = rt.ShapeProfile({"x": [(1, 1, 8, 64), (1, 1, 32, 512), (1, 1, 32, 1280)]})
    with pytest.raises(LengthMismatch, match=r"opt|32"):
        bucketing.for_model(model, profiles=sp.profiles)


def test_measuring_needs_one_bucketed_axis() -> None:
    bucketing = rt.Bucketing({"x": {2: [8, 16], 3: BUCKETS}}, outputs={"y": 1})
    with pytest.raises(ShapeProfileError, match="one bucketed axis"):
        bucketing.for_model(_reshape_model(height="H"))


def test_measured_formula_is_derived_once_per_model_and_profiles(monkeypatch) -> None:
    from regiontrt.shapes import buckets

    calls = []
    derive = buckets.derive_length_rules
    monkeypatch.setattr(buckets, "derive_length_rules",
                        lambda *a, **k: calls.append(a) or derive(*a, **k))
    model = _reshape_model()
    bucketing = rt.Bucketing({"x": {3: BUCKETS}}, outputs={"y": 1})
    first = bucketing.for_model(model)
    second = bucketing.for_model(model)  # one build per region asks again
    assert len(calls) == 1 and first.lengths is second.lengths
    assert first.lengths is not None and first.lengths.measured["y"]
    sp = rt.ShapeProfile({"x": [(1, 1, 8, 64), (1, 1, 8, 512), (1, 1, 8, 1280)]})
    third = bucketing.for_model(model, profiles=sp.profiles)  # other profiles: measured again
    assert len(calls) == 2 and third.lengths is not None
    assert third.lengths.rules == first.lengths.rules


@pytest.mark.parametrize("measured", [
    {"y": "1,2"}, {"y": [1.5]}, {"y": [-3]}, {"other": [5]}, {"y": list(range(1, 5000))}, [1],
])
def test_hostile_measured_widths_in_metadata_are_refused(measured) -> None:
    meta = {"buckets": {"x": {"3": [64]}}, "outputs": {"y": 1},
            "lengths": {"symbols": {"s0": ["x", 3]}, "rules": {"y": "s0"}, "measured": measured}}
    with pytest.raises(ShapeProfileError):
        rt.Bucketing.from_dict(meta)
