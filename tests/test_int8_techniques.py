"""INT8 techniques: measured range choice, per-channel weights, equalization, SmoothQuant."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import regiontrt as rt
from regiontrt.calibration import AutoCalibrator, EntropyCalibrator, MinMaxCalibrator
from regiontrt.calibration.smooth import channel_statistics
from regiontrt.errors import RegionConfigError
from regiontrt.graph.equalize import correct_bias, equalization_pairs, equalize_model, import_graph
from regiontrt.graph.quantize import QuantizeOptions, plan_quantization, quantize_model
from regiontrt.graph.smoothquant import smooth_model, smoothing_targets

ALL_LAYERS = QuantizeOptions(quantize_first_layer=True, quantize_last_layer=True)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of ``model`` in ONNX Runtime, Q/DQ unfused (TensorRT's arithmetic)."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(None, feeds)]


def rel_l2(ref: np.ndarray, out: np.ndarray) -> float:
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def minmax_amax(model: onnx.ModelProto, feeds: dict[str, np.ndarray],
                options: QuantizeOptions = ALL_LAYERS) -> dict[str, float]:
    tensors = plan_quantization(model, options).activations
    return MinMaxCalibrator().calibrate(model, [feeds], tensors).amax


def int8_error(model: onnx.ModelProto, feeds: dict[str, np.ndarray],
               options: QuantizeOptions = ALL_LAYERS) -> float:
    q = quantize_model(model, minmax_amax(model, feeds, options), options)
    return rel_l2(run(model, feeds)[0], run(q, feeds)[0])


def init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def finish(nodes, inits, inputs, outputs, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# --- 2. per-channel weights, one test per op ------------------------------------------------

def _weighted(op: str, rng: np.random.Generator) -> tuple[onnx.ModelProto, int, int]:
    """A two-layer model whose second layer is ``op``; returns it, the axis and channels."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 6, 6])
    first = helper.make_node("Conv", ["x", "w0"], ["h"], name="first", pads=[1, 1, 1, 1])
    w0 = rng.standard_normal((4, 4, 3, 3))
    if op in ("Conv", "ConvTranspose"):
        w = rng.standard_normal((4, 6, 3, 3) if op == "ConvTranspose" else (6, 4, 3, 3))
        w *= np.linspace(0.01, 3, 6).reshape((1, 6, 1, 1) if op == "ConvTranspose"
                                              else (6, 1, 1, 1))
        node = helper.make_node(op, ["h", "w"], ["y"], name="layer")
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])
        return finish([first, node], [init("w0", w0), init("w", w)], [x], [y]), \
            0 if op == "Conv" else 1, 6
    flat = helper.make_node("Flatten", ["h"], ["f"], name="flatten")
    trans = op == "Gemm"
    w = rng.standard_normal((6, 144) if trans else (144, 6))
    w *= np.linspace(0.01, 3, 6).reshape((6, 1) if trans else (1, 6))
    node = (helper.make_node("Gemm", ["f", "w"], ["y"], name="layer", transB=1) if trans
            else helper.make_node("MatMul", ["f", "w"], ["y"], name="layer"))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c"])
    return finish([first, flat, node], [init("w0", w0), init("w", w)], [x], [y]), \
        0 if trans else 1, 6


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose", "MatMul", "Gemm"])
def test_weights_are_quantized_per_output_channel(op):
    rng = np.random.default_rng(1)
    model, axis, channels = _weighted(op, rng)
    feeds = {"x": rng.standard_normal((2, 4, 6, 6)).astype(np.float32)}
    options = QuantizeOptions(quantize_last_layer=True)
    q = quantize_model(model, minmax_amax(model, feeds, options), options)
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and
              inits.get(n.input[0]) is not None and inits[n.input[0]].dtype == np.int8)
    assert helper.get_attribute_value(next(a for a in dq.attribute if a.name == "axis")) == axis
    scales = inits[dq.input[1]]
    assert scales.shape == (channels,)
    # each channel's scale is its own max / 127 (a per-tensor scale would be one number)
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w"))
    others = tuple(d for d in range(w.ndim) if d != axis)
    np.testing.assert_allclose(scales, np.abs(w).max(axis=others) / 127, rtol=1e-6)
    per_tensor = QuantizeOptions(quantize_last_layer=True, per_channel=False)
    err_pc = int8_error(model, feeds, options)
    assert err_pc < int8_error(model, feeds, per_tensor)


# --- 3. cross-layer equalization and bias correction ----------------------------------------

def conv_chain(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv -> ReLU -> Conv -> PRelu -> depthwise Conv -> Conv, with unbalanced channels."""
    c = 8
    spread = np.geomspace(0.02, 20, c)  # per-output-channel weight ranges over three decades
    w0 = rng.standard_normal((c, 3, 3, 3)) * spread.reshape(c, 1, 1, 1)
    w1 = rng.standard_normal((c, c, 3, 3)) * spread[::-1].reshape(c, 1, 1, 1) * 0.1
    w2 = rng.standard_normal((c, 1, 3, 3)) * spread.reshape(c, 1, 1, 1) * 0.1  # depthwise
    w3 = rng.standard_normal((4, c, 1, 1)) * 0.3
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("PRelu", ["c1", "slope"], ["r1"], name="prelu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="dw2", pads=[1, 1, 1, 1], group=c),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], name="conv3"),
    ]
    inits = [init("w0", w0), init("b0", rng.standard_normal(c)), init("w1", w1),
             init("b1", rng.standard_normal(c)), init("slope", np.full((c, 1, 1), 0.1)),
             init("w2", w2), init("w3", w3), init("b3", rng.standard_normal(4) * 0.1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])
    return finish(nodes, inits, [x], [y])


def test_equalization_keeps_fp32_and_balances_channel_ranges():
    rng = np.random.default_rng(2)
    model = conv_chain(rng)
    pairs = [(a.name, b.name) for a, b in equalization_pairs(import_graph(model))]
    assert pairs == [("conv0", "conv1"), ("conv1", "dw2"), ("dw2", "conv3")]
    eq, n = equalize_model(model)
    assert n == 3
    feeds = {"x": rng.standard_normal((4, 3, 8, 8)).astype(np.float32)}
    ref, out = run(model, feeds)[0], run(eq, feeds)[0]
    assert np.max(np.abs(out - ref)) <= 1e-5 * np.max(np.abs(ref))
    w = {i.name: numpy_helper.to_array(i) for i in eq.graph.initializer}
    r_out = np.abs(w["w0"]).reshape(8, -1).max(axis=1)  # conv0's output channels
    r_in = np.abs(w["w1"]).max(axis=(0, 2, 3))  # conv1's input channels
    np.testing.assert_allclose(r_out, r_in, rtol=0.05)
    before = np.abs(numpy_helper.to_array(model.graph.initializer[0])).reshape(8, -1).max(1)
    assert np.ptp(np.log(r_out)) < 0.6 * np.ptp(np.log(before))
    # per-tensor weights: equalization is what makes them usable
    per_tensor = QuantizeOptions(quantize_first_layer=True, quantize_last_layer=True,
                                 per_channel=False)
    err_before, err_after = int8_error(model, feeds, per_tensor), int8_error(eq, feeds, per_tensor)
    print(f"per-tensor int8 error: {err_before:.4f} -> {err_after:.4f} after equalization")
    assert err_after < 0.5 * err_before


def test_equalization_leaves_non_homogeneous_chains_alone():
    rng = np.random.default_rng(3)
    model = conv_chain(rng)
    for node in model.graph.node:
        if node.op_type == "Relu":
            node.op_type = "HardSwish"
    model.graph.node[3].op_type = "HardSwish"  # the PRelu
    del model.graph.node[3].input[1:]
    eq, n = equalize_model(model)
    assert n == 0 and eq.SerializeToString() == model.SerializeToString()


def test_bias_correction_removes_the_mean_shift_of_int8_weights():
    rng = np.random.default_rng(4)
    model = conv_chain(rng)
    feeds = {"x": (rng.standard_normal((8, 3, 8, 8)) + 3.0).astype(np.float32)}
    per_tensor = QuantizeOptions(quantize_first_layer=True, quantize_last_layer=True,
                                 per_channel=False)
    layers = plan_quantization(model, per_tensor).nodes
    inputs = {n.input[0]: 1 for n in model.graph.node if n.name in layers}
    means = {k: v.mean for k, v in channel_statistics(model, [feeds], inputs).items()}
    corrected, done = correct_bias(model, means, layers, per_channel=False)
    assert set(done) == set(layers)
    amax = minmax_amax(model, feeds, per_tensor)
    ref = run(model, feeds)[0]

    def channel_bias(m: onnx.ModelProto) -> float:
        out = run(quantize_model(m, amax, per_tensor), feeds)[0]
        return float(np.abs((out - ref).mean(axis=(0, 2, 3))).mean())

    before, after = channel_bias(model), channel_bias(corrected)
    print(f"whole chain, mean per-channel output shift: {before:.4f} -> {after:.4f}")
    assert after < before  # activation rounding and padding borders remain


def test_bias_correction_is_exact_for_one_layer_with_int8_weights():
    """One unpadded Conv, weights fake-quantized per tensor: the corrected mean shift is ~0."""
    rng = np.random.default_rng(6)
    w = rng.standard_normal((6, 4, 3, 3)) * np.geomspace(0.01, 1, 6).reshape(6, 1, 1, 1)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6, 6, 6])
    model = finish([node], [init("w", w), init("b", np.zeros(6))], [x], [y])
    feeds = {"x": (rng.standard_normal((16, 4, 8, 8)) + 2.0).astype(np.float32)}
    means = {k: v.mean for k, v in channel_statistics(model, [feeds], {"x": 1}).items()}
    corrected, done = correct_bias(model, means, ["conv"], per_channel=False)
    assert done == ["conv"]
    ref = run(model, feeds)[0]

    def shift(m: onnx.ModelProto) -> np.ndarray:
        fake = onnx.ModelProto()
        fake.CopyFrom(m)
        weight = next(i for i in fake.graph.initializer if i.name == "w")
        scale = np.abs(w).max() / 127
        weight.CopyFrom(init("w", np.clip(np.rint(w / scale), -127, 127) * scale))
        return (run(fake, feeds)[0] - ref).mean(axis=(0, 2, 3))

    before, after = np.abs(shift(model)), np.abs(shift(corrected))
    print(f"one layer, mean per-channel output shift: {before.mean():.5f} -> {after.mean():.2e}")
    assert after.max() < 0.05 * before.max()  # what is left is sampling noise


# --- 4. SmoothQuant on a transformer encoder block ------------------------------------------

def encoder_block(rng: np.random.Generator, d: int = 32, ff: int = 64) -> onnx.ModelProto:
    """Pre-norm encoder block: LN -> QKV -> attention -> proj + residual, LN -> FFN + residual."""
    def w(*shape: int, s: float = 0.2) -> np.ndarray:
        return rng.standard_normal(shape) * s

    nodes = [
        helper.make_node("LayerNormalization", ["x", "g1", "be1"], ["n1"], name="ln1", axis=-1),
        helper.make_node("MatMul", ["n1", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["n1", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["n1", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
        helper.make_node("Mul", ["s", "inv_sqrt_d"], ["s2"], name="scale"),
        helper.make_node("Softmax", ["s2"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["a"], name="attend"),
        helper.make_node("MatMul", ["a", "wo"], ["o"], name="out_proj"),
        helper.make_node("Add", ["x", "o"], ["h"], name="res1"),
        helper.make_node("LayerNormalization", ["h", "g2", "be2"], ["n2"], name="ln2", axis=-1),
        helper.make_node("MatMul", ["n2", "w1"], ["f1"], name="ffn1"),
        helper.make_node("Relu", ["f1"], ["f1r"], name="ffn_act"),
        helper.make_node("MatMul", ["f1r", "w2"], ["f2"], name="ffn2"),
        helper.make_node("Add", ["h", "f2"], ["y"], name="res2"),
    ]
    gain = np.ones(d)
    gain[[3, 17]] = 40.0  # outlier channels, as in LLM and BERT activations
    inits = [init("g1", gain), init("be1", rng.standard_normal(d) * 0.1),
             init("g2", gain[::-1]), init("be2", rng.standard_normal(d) * 0.1),
             init("wq", w(d, d)), init("wk", w(d, d)), init("wv", w(d, d)), init("wo", w(d, d)),
             init("w1", w(d, ff)), init("w2", w(ff, d, s=0.1)),
             init("inv_sqrt_d", np.array(1 / np.sqrt(d)))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16, d])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16, d])
    return finish(nodes, inits, [x], [y])


def test_smoothquant_is_exact_in_fp32_and_lowers_int8_error():
    rng = np.random.default_rng(5)
    model = encoder_block(rng)
    feeds = {"x": rng.standard_normal((4, 16, 32)).astype(np.float32)}
    targets = smoothing_targets(model)
    assert targets == {"n1": ["q_proj", "k_proj", "v_proj"], "a": ["out_proj"],
                       "n2": ["ffn1"], "f1r": ["ffn2"]}
    stats = channel_statistics(model, [feeds], dict.fromkeys(targets, -1))
    smoothed, n = smooth_model(model, {k: v.amax for k, v in stats.items()})
    assert n == 4
    # LayerNorm outputs are folded into the norm's gain; the others get one Mul each
    assert sum(node.op_type == "Mul" for node in smoothed.graph.node) == 3
    ref, out = run(model, feeds)[0], run(smoothed, feeds)[0]
    assert np.max(np.abs(out - ref)) <= 1e-5 * np.max(np.abs(ref))
    # the projections SmoothQuant acts on (attention's activation x activation MatMuls, which
    # it leaves alone, excluded so that their error does not hide the effect)
    projections = QuantizeOptions(quantize_first_layer=True, quantize_last_layer=True,
                                  exclude_nodes=frozenset({"scores", "attend"}))
    before, after = int8_error(model, feeds, projections), int8_error(smoothed, feeds, projections)
    whole = (int8_error(model, feeds), int8_error(smoothed, feeds))
    print(f"encoder projections int8 error: {before:.4f} -> {after:.4f}; whole block "
          f"{whole[0]:.4f} -> {whole[1]:.4f} with SmoothQuant (alpha 0.5)")
    assert after < 0.6 * before
    assert whole[1] < whole[0]
    with pytest.raises(RegionConfigError, match="alpha"):
        smooth_model(model, {}, alpha=1.5)


# --- 1. auto's range choice on a hardswish detector -----------------------------------------

def hardswish_net(rng: np.random.Generator, c: int = 8) -> onnx.ModelProto:
    """Conv -> HardSwish x3 -> Conv class map (a PicoDet-style head, per-pixel classes)."""
    nodes, inits, prev = [], [], "x"
    for k, cin in enumerate([4, c, c]):
        nodes += [helper.make_node("Conv", [prev, f"w{k}", f"b{k}"], [f"c{k}"], name=f"conv{k}",
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("HardSwish", [f"c{k}"], [f"h{k}"], name=f"hs{k}")]
        inits += [init(f"w{k}", rng.standard_normal((c, cin, 3, 3)) / np.sqrt(cin * 9)),
                  init(f"b{k}", rng.standard_normal(c) * 0.1)]
        prev = f"h{k}"
    nodes.append(helper.make_node("Conv", [prev, "wc"], ["classes"], name="cls"))
    inits.append(init("wc", rng.standard_normal((5, c, 1, 1))))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 16, 16])
    y = helper.make_tensor_value_info("classes", TensorProto.FLOAT, ["n", 5, 16, 16])
    return finish(nodes, inits, [x], [y], opset=14)


def pixel_disagreement(ref, cand) -> float:
    """Share of pixels whose class (argmax) changed: a detection-F1-like metric."""
    r, c = (np.concatenate(list(v["classes"]) if isinstance(v["classes"], list)
                           else [v["classes"]]) for v in (ref, cand))
    return float(np.mean(r.argmax(axis=1) != c.argmax(axis=1)))


def test_auto_picks_ranges_by_the_regions_metric_where_the_mse_proxy_collapses(tmp_path):
    rng = np.random.default_rng(7)
    model = hardswish_net(rng)
    path = tmp_path / "hs.onnx"
    onnx.save(model, path)
    calib = rng.standard_normal((128, 4, 16, 16)).astype(np.float32)
    calib[3, :, 5, 5] = 40.0  # two rare glare pixels: 2 of 32768 positions
    calib[70, :, 9, 2] = -40.0
    valid = rng.standard_normal((64, 4, 16, 16)).astype(np.float32)
    region = rt.Region("T", precisions=("int8",), budget=1.0)
    base = (rt.RegionalEngineBuilder.from_onnx(str(path)).for_region(region)
            .with_shape_profile({"x": [(1, 4, 16, 16), (16, 4, 16, 16), (16, 4, 16, 16)]})
            .with_validation([{"x": valid[i:i + 16]} for i in range(0, 64, 16)],
                             metric=pixel_disagreement)
            .with_precision(rt.PrecisionPolicy("int8", search_mixed=False,
                                               quantize=ALL_LAYERS)))
    data = [{"x": calib[i:i + 32]} for i in range(0, 128, 32)]

    def loss(calibrator) -> tuple[float, dict]:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the glare pixels lie outside clipped ranges
            engine = base.with_calibrator(calibrator, data=data).build()
        return engine.metadata["validation"]["trials"][0], engine.metadata["calibration"]

    old, _ = loss(AutoCalibrator(techniques=()))  # the histogram-MSE choice alone
    entropy, _ = loss(EntropyCalibrator(techniques=()))
    new, calibration = loss(AutoCalibrator())
    print(f"pixel disagreement: auto (MSE proxy) {old['loss']:.3f}, entropy "
          f"{entropy['loss']:.3f}, auto (by metric) {new['loss']:.3f}; "
          f"chosen: {calibration['techniques']['chosen']}")
    assert old["loss"] > 1.5 * entropy["loss"]  # the proxy loses to entropy here ...
    assert new["loss"] <= min(entropy["loss"], old["loss"]) + 1e-9  # ... the metric does not
    trials = calibration["techniques"]["trials"]
    assert trials[0]["loss"] == pytest.approx(old["loss"])
    assert any(t["name"] == "ranges: entropy" for t in trials)
    assert "int8 techniques" in new["note"]
