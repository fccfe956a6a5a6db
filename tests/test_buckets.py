"""Width buckets cut outputs back to the length the model itself gives for the real width."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import regiontrt as rt
from regiontrt.errors import ArtifactError, ShapeProfileError
from regiontrt.shapes.rules import LengthRules

pytest.importorskip("sympy", reason="needs sympy (ONNX Runtime's symbolic shape inference)")

# Widths where floor(len * original / padded) was one step short on PP-OCRv4 (issue 11).
ISSUE_WIDTHS = (167, 335, 999)


def _ocr_model() -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        pytest.skip("needs the PP-OCRv4 models: pip install --no-deps rapidocr-onnxruntime")
    return next(Path(spec.origin).parent.rglob("ch_PP-OCRv4_rec_infer.onnx"))


@pytest.fixture(scope="module")
def rec():
    path = _ocr_model()
    model = onnx.load(str(path))
    output = model.graph.output[0].name
    bucketing = rt.Bucketing({"x": {3: [320, 640, 1280]}}, outputs={output: 1}).for_model(model)
    return path, output, bucketing


def test_every_width_from_32_to_1280_matches_the_model(rec) -> None:
    """The formula at all 1249 widths; ONNX Runtime runs the real model at a subset of them.

    The subset: every 64th width, the issue's widths, and both sides of each step of the
    formula below 200 px (where a run is cheapest), so an off-by-one at a step edge shows.
    (All 1249 widths were also run once by hand: they all match.)
    """
    import onnxruntime as ort

    path, output, bucketing = rec
    assert bucketing.lengths is not None and output in bucketing.lengths.rules
    widths = range(32, 1281)
    formula = {w: bucketing.lengths.lengths({"x": (1, 3, 48, w)})[output] for w in widths}
    assert all(0 < formula[w] <= formula[w + 1] for w in range(32, 1280))  # monotone steps
    steps = [w for w in range(33, 200) if formula[w] != formula[w - 1]]
    assert len(steps) > 15
    subset = sorted({*range(32, 1281, 64), 1280, *ISSUE_WIDTHS, *steps, *(w - 1 for w in steps)})
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    wrong = {}
    for w in subset:
        got = session.run([output], {"x": np.zeros((1, 3, 48, w), np.float32)})[0].shape[1]
        if got != formula[w]:
            wrong[w] = (formula[w], got)
    assert not wrong, f"formula vs model at widths {wrong}"
    # The old rule, floor(len at the 1280 bucket * w / 1280), was short at the issue's widths.
    full = formula[1280]
    assert [full * w // 1280 for w in ISSUE_WIDTHS] == [formula[w] - 1 for w in ISSUE_WIDTHS]


def test_bucketed_engine_returns_the_model_length(rec, tmp_path) -> None:
    import onnxruntime as ort

    path, output, _ = rec
    sp = rt.ShapeProfile({"x": [(1, 3, 48, 64), (1, 3, 48, 256), (1, 3, 48, 512)]},
                         buckets={"x": {3: [64, 128, 256, 512]}}, bucket_outputs={output: 1})
    built = (rt.RegionalEngineBuilder.from_onnx(path).for_region("CERTIFIED")
             .with_shape_profile(sp).build(tmp_path / "rec.engine"))
    assert built.metadata["shape_buckets"]["lengths"]["rules"][output].startswith("floor(")
    engine = rt.load_engine(tmp_path / "rec.engine")  # the formula travels in the file
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for width in (167, 335, 100):
        line = (rng.random((1, 3, 48, width)) * 2 - 1).astype(np.float32)
        got = engine.infer({"x": line})[output]
        ref = reference.run([output], {"x": line})[0]
        assert got.shape == ref.shape, width
    assert len(engine.bucketing.lengths._cache) == 3  # one formula evaluation per width
    engine.infer({"x": np.zeros((1, 3, 48, 167), np.float32)})
    assert len(engine.bucketing.lengths._cache) == 3
    assert engine.sample_inputs()["x"].shape == (1, 3, 48, 256)  # bench: the profile's opt


def test_bench_on_ppocr_without_a_profile_refuses_instead_of_timing_1x1(rec, tmp_path, capsys,
                                                                         monkeypatch) -> None:
    from regiontrt.cli import main

    path, _, _ = rec
    monkeypatch.chdir(tmp_path)
    assert main(["build", str(path), "--region", "CERTIFIED", "-q"]) == 0
    capsys.readouterr()
    engine = "ch_PP-OCRv4_rec_infer.CERTIFIED.engine"
    assert main(["bench", engine, "--iterations", "1"]) == 2
    err = capsys.readouterr().err
    assert "dynamic dimensions at axes [2, 3]" in err and "--shape" in err
    assert main(["bench", engine, "--iterations", "1", "--warmup", "0", "--json",
                 "--shape", "x:1x3x48x320"]) == 0
    assert '"batch": 1' in capsys.readouterr().out


@pytest.mark.parametrize("rule", [
    "__import__('os').system('true')",
    "s0.__class__",
    "(lambda: 1)()",
    "s0 ** 99999",
    "open",
    "unknown + 1",
    "[s0][0]",
    "floor(s0, key=1)",
    "x" * 5000,
])
def test_hostile_formulas_in_metadata_are_refused(rule: str) -> None:
    with pytest.raises(ShapeProfileError):
        LengthRules({"s0": ("x", 3)}, {"y": rule})
    meta = {"buckets": {"x": {"3": [64]}}, "outputs": {"y": 1},
            "lengths": {"symbols": {"s0": ["x", 3]}, "rules": {"y": rule}}}
    with pytest.raises(ShapeProfileError):
        rt.Bucketing.from_dict(meta)


def test_formula_arithmetic_is_exact() -> None:
    rules = LengthRules({"s0": ("x", 3)}, {"y": "floor(floor(s0/2 - 1/2)/2) + 1",
                                            "z": "ceiling(s0/3) + Max(s0, 7) - Min(2, s0)"})
    assert rules.lengths({"x": (1, 3, 48, 11)}) == {"y": 3, "z": 4 + 11 - 2}
    with pytest.raises(ShapeProfileError, match="need the shapes"):
        rules.lengths({"other": (1,)})


def test_engine_with_a_hostile_formula_is_refused_on_load(tmp_path) -> None:
    from conftest import make_cnn

    engine = (rt.RegionalEngineBuilder.from_onnx(make_cnn()).for_region("CERTIFIED").build())
    meta = engine.metadata
    meta["shape_buckets"] = {"buckets": {"input": {"0": [8]}}, "outputs": {"logits": 0},
                             "lengths": {"symbols": {"s0": ["input", 0]},
                                         "rules": {"logits": "__import__('os')"}}}
    with pytest.raises(ArtifactError):
        rt.Engine(meta, engine.payload)


def test_a_model_neither_inference_nor_onnxruntime_can_read_is_refused(tmp_path,
                                                                       monkeypatch) -> None:
    """Issue 17: where the length cannot be inferred it is measured; a model ONNX Runtime cannot
    run cannot be measured, so bucketing it is refused (it fell back to the floor guess before).
    """
    monkeypatch.chdir(tmp_path)
    graph = helper.make_graph(
        [helper.make_node("Mystery", ["x"], ["y"], domain="example.custom")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "T"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("example.custom", 1)])
    with pytest.raises(ShapeProfileError, match=r"cannot bucket outputs 'y'.*cannot run"):
        rt.Bucketing({"x": {1: [16, 32]}}, outputs={"y": 1}).for_model(model)
    assert list(tmp_path.iterdir()) == []  # ONNX Runtime's sym_shape_infer_temp.onnx: never
    # An engine of an older version carries no formulas: only there is the floor rule left.
    b = rt.Bucketing({"x": {1: [16, 32]}}, outputs={"y": 1})
    assert b.lengths is None
    padded, info = b.pad({"x": np.ones((1, 10), np.float32)})
    assert padded["x"].shape == (1, 16)
    assert b.unpad({"y": np.zeros((1, 8))}, info)["y"].shape == (1, 5)  # floor(8 * 10 / 16)
