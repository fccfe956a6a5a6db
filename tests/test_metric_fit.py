"""Metrics that fit the output: top1 for class scores only, a scale-aware error elsewhere."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

import regiontrt as rt
from regiontrt.errors import MetricError
from regiontrt.graph.io import output_specs
from regiontrt.precision.metrics import plan_metrics


def _model(out_shape: list, *, classes_out: bool = False) -> onnx.ModelProto:
    """x [N, 4] -> MatMul -> y of ``out_shape`` (a Reshape of the 4-wide product)."""
    rng = np.random.default_rng(0)
    w = nh.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w")
    shape = nh.from_array(np.array([0 if d == "N" else d for d in out_shape], np.int64), "s")
    nodes = [oh.make_node("MatMul", ["x", "w"], ["m"]),
             oh.make_node("Reshape", ["m", "s"], ["y"])]
    outputs = [oh.make_tensor_value_info("y", TP.FLOAT, out_shape)]
    if classes_out:
        nodes.append(oh.make_node("Identity", ["m"], ["logits"]))
        outputs.append(oh.make_tensor_value_info("logits", TP.FLOAT, ["N", 4]))
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TP.FLOAT, ["N", 4])],
                          outputs, [w, shape])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_auto_picks_top1_only_for_class_scores() -> None:
    plan = plan_metrics("auto", output_specs(_model(["N", 4, 1], classes_out=True)))
    chosen = plan.to_dict()
    assert chosen["logits"]["metric"] == "top1" and "class scores" in chosen["logits"]["why"]
    assert chosen["y"]["metric"] == "relative_l2" and "dense 3-D" in chosen["y"]["why"]
    one_column = plan_metrics(None, output_specs(_model(["N", 1, 4])), default="auto")
    assert one_column.to_dict()["y"]["metric"] == "relative_l2"


def test_the_gate_can_fail_on_a_one_column_probability() -> None:
    """top1 over one column can never change, so it must not judge a [N, 1] output."""
    model = _model(["N", 4])
    # a [N, 1] output: cut one column off the product
    model.graph.node[1].op_type = "ReduceSum"
    model.graph.node[1].input[1] = "axes"
    model.graph.initializer[1].CopyFrom(nh.from_array(np.array([1], np.int64), "axes"))
    model.graph.output[0].CopyFrom(oh.make_tensor_value_info("y", TP.FLOAT, ["N", 1]))
    with pytest.raises(MetricError, match="cannot judge output 'y'"):
        plan_metrics("top1", output_specs(model))
    data = [{"x": np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32)}]
    builder = rt.RegionalEngineBuilder.from_onnx(model).for_region("EU")
    with pytest.raises(MetricError):  # before any build work
        builder.with_validation(data, metric="top1").build()
    engine = builder.with_validation(data).build()
    [trial] = engine.report.trials
    assert engine.report.output_metrics["y"]["metric"] == "relative_l2"
    assert trial.output_losses["y"] == trial.loss and 0 < trial.loss < 0.005


def test_per_output_metrics_and_the_largest_loss_decides(tmp_path) -> None:
    model = _model(["N", 2, 2], classes_out=True)
    data = [{"x": np.random.default_rng(2).standard_normal((32, 4)).astype(np.float32)}]
    engine = (rt.RegionalEngineBuilder.from_onnx(model).for_region("EU")
              .with_validation(data, metric={"y": "max_abs"}).build())
    report = engine.report
    assert report.output_metrics["y"]["metric"] == "max_abs"
    assert report.output_metrics["logits"]["metric"] == "top1"  # left out: auto
    trial = report.trials[0]
    assert trial.loss == max(trial.output_losses.values())
    engine.save(tmp_path / "e.engine")
    shown = rt.inspect(tmp_path / "e.engine")["validation"]["output_metrics"]
    assert shown["logits"]["metric"] == "top1" and shown["y"]["metric"] == "max_abs"
    with pytest.raises(rt.errors.InvalidArgumentError, match="does not have"):
        (rt.RegionalEngineBuilder.from_onnx(model).for_region("EU")
         .with_validation(data, metric={"nope": "top1"}).build())


def test_a_text_detector_gets_a_lossy_precision_under_the_default_metric() -> None:
    """PP-OCRv4 det outputs a probability map: judged by relative L2, FP16 fits NA's budget
    (under top1 it was argmax over the image width, and FP16 was refused)."""
    dc = pytest.importorskip("benchmarks.ocr_det_cls", reason="run from the repository root")
    try:
        model = dc.model_path(dc.DET_MODEL_NAME)
        pages = dc.render_pages(16, seed=3)
    except dc.ocr.OCRAssetMissing as exc:
        pytest.skip(f"needs the PP-OCRv4 models and fonts: {exc}")
    cal = [{"x": np.concatenate(pages[i:i + 4])} for i in range(0, 8, 4)]
    val = [{"x": np.concatenate(pages[i:i + 4])} for i in range(8, 16, 4)]
    engine = (rt.RegionalEngineBuilder.from_onnx(model).for_region("NA")
              .with_calibrator(data=cal).with_validation(val).build())
    assert engine.precision in ("int8", "fp16")
    [(name, chosen)] = engine.report.output_metrics.items()
    assert chosen["metric"] == "relative_l2" and "dense 4-D" in chosen["why"]
    accepted = engine.report.chosen_trial
    assert accepted is not None and accepted.loss is not None and accepted.loss <= 0.02
    assert accepted.output_losses == {name: accepted.loss}


def test_refusals_come_before_any_model_run(monkeypatch) -> None:
    """A metric that cannot judge an output, or a profile that does not fit the model, is
    refused before the FP32 reference, calibration or any payload build runs."""
    from regiontrt.precision import validator

    def no_work(*args, **kwargs):
        raise AssertionError("the build ran the model before refusing it")

    monkeypatch.setattr(validator, "reference_outputs", no_work)
    model = _model(["N", 4, 1])
    data = [{"x": np.zeros((8, 4), np.float32)}]
    base = (rt.RegionalEngineBuilder.from_onnx(model).for_region("NA")
            .with_calibrator(data=data).with_validation(data, metric={"y": "top1"}))
    with pytest.raises(MetricError, match="cannot judge output 'y'"):
        base.build()
    bad_profile = base.with_validation(data).with_shape_profile({"x": [(1, 5), (2, 5), (4, 5)]})
    with pytest.raises(rt.errors.ShapeProfileError, match="static"):
        bad_profile.build()
