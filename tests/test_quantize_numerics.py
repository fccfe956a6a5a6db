"""Quantized models run in ONNX Runtime close to FP32; opset upgrade; amax errors."""

from __future__ import annotations

from collections.abc import Callable

import onnx
import pytest
from test_quantize_models import (  # the helpers module beside this file
    ALL_LAYERS,
    concat_model,
    feeds_for,
    inits_of,
    matmul_model,
    node_of,
    opset11_model,
    quantize_with_real_amax,
    real_amax,
    rel_l2,
    resnet_block,
    run,
    source_of,
    weight_dq,
)

from regiontrt.errors import DataError
from regiontrt.graph.quantize import (
    QuantizeOptions,
    count_qdq,
    plan_quantization,
    quantize_model,
    upgrade_opset,
)

# ----------------------------------------------------------------------------- numerics


@pytest.mark.parametrize(
    ("build", "opts"),
    [
        (resnet_block, QuantizeOptions()),
        (concat_model, QuantizeOptions()),
        (matmul_model, QuantizeOptions()),
        (opset11_model, QuantizeOptions()),
        (resnet_block, ALL_LAYERS),
        (concat_model, ALL_LAYERS),
        (opset11_model, ALL_LAYERS),
    ],
    ids=lambda v: v.__name__ if callable(v) else ("all" if v.quantize_first_layer else "default"),
)
def test_outputs_close_to_fp32(build: Callable[[], onnx.ModelProto], opts: QuantizeOptions) -> None:
    model = build()
    plan = plan_quantization(model, opts)
    # calibrate on 64 samples, compare on 16 others
    q = quantize_model(model, real_amax(model, plan.activations, feeds_for(model, 100, 64)), opts)
    test = feeds_for(model, 200, 16)
    out_q, out_f = run(q, test), run(model, test)
    for name in out_f:
        err = rel_l2(out_q[name], out_f[name])
        assert err < 0.05, (name, err)
        assert err > 0  # the INT8 path really ran
    onnx.checker.check_model(q, full_check=True)


# ----------------------------------------------------------------------------- opset


def test_opset11_model_upgraded_to_13() -> None:
    model = opset11_model()
    plan, q = quantize_with_real_amax(model)
    assert next(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) == 13
    assert q.ir_version >= 7
    assert plan.nodes == ("conv2", "conv3", "matmul")
    assert ("r1", "r2", "cat") in {tuple(g) for g in plan.shared_scale_groups} or any(
        set(g) == {"r1", "r2", "cat"} for g in plan.shared_scale_groups
    )
    assert source_of(q, "add", 1) == ("act", "r1")  # skip branch of conv2's residual Add
    assert source_of(q, "add", 0) == ("float", "c2")
    dq = weight_dq(q, "matmul", 1)
    assert inits_of(q)[dq.input[1]].shape == (10,)
    # opset-13 Unsqueeze takes its axes as an input: the converter rewrote it
    assert len(node_of(q, "unsqueeze").input) == 2
    assert model.opset_import[0].version == 11  # the input model is untouched
    feeds = feeds_for(model, 4)
    assert rel_l2(run(q, feeds)["y"], run(model, feeds)["y"]) < 0.05


def test_upgrade_opset_keeps_newer_opsets() -> None:
    model = resnet_block()
    model.opset_import[0].version = 17
    assert upgrade_opset(model).opset_import[0].version == 17
    assert upgrade_opset(opset11_model(), 13).opset_import[0].version == 13


def test_nothing_to_quantize_leaves_the_opset() -> None:
    model = opset11_model()
    opts = QuantizeOptions(exclude_nodes=frozenset({"conv2", "conv3", "matmul"}))
    assert plan_quantization(model, opts).nodes == ()
    q = quantize_model(model, {}, opts)
    assert q.opset_import[0].version == 11 and count_qdq(q) == 0


# ----------------------------------------------------------------------------- errors


def test_missing_amax_names_the_tensors() -> None:
    model = resnet_block()
    with pytest.raises(DataError, match=r"r2.*r3|r3.*r2") as info:
        quantize_model(model, {"r1": 1.0})
    assert "r1" not in str(info.value).split(":", 1)[1]


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), 1e300])
def test_bad_amax(bad: float) -> None:
    model = resnet_block()
    amax = {"r1": 1.0, "r2": bad, "r3": 1.0}
    with pytest.raises(DataError, match="r2"):
        quantize_model(model, amax)


# ----------------------------------------------------------------------------- TensorRT-RTX


@pytest.mark.rtx
@pytest.mark.parametrize(
    "build", [resnet_block, concat_model, matmul_model, opset11_model], ids=lambda f: f.__name__
)
def test_tensorrt_rtx_parses_and_builds(build: Callable[[], onnx.ModelProto]) -> None:
    """TensorRT-RTX parses the Q/DQ graph (int8 weights, per-channel DQ) and builds it."""
    trt = pytest.importorskip("tensorrt_rtx", reason="needs the tensorrt-rtx package")
    model = build()
    _, q = quantize_with_real_amax(model, ALL_LAYERS)
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(q.SerializeToString())
    assert ok, [parser.get_error(i).desc() for i in range(parser.num_errors)]
    layer_types = {network.get_layer(i).type for i in range(network.num_layers)}
    assert trt.LayerType.QUANTIZE in layer_types and trt.LayerType.DEQUANTIZE in layer_types
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    inp = network.get_input(0)
    dims = tuple(inp.shape)[1:]
    profile.set_shape(inp.name, (1, *dims), (4, *dims), (8, *dims))
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is not None
