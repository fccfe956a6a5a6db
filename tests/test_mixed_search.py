"""The budgeted search through the builder: one probe pass ranks, a few evaluations size.

The model is a chain of MatMul layers where a few layers read a tensor with one huge channel
(which they ignore): per-tensor int8 on that input rounds every other channel to zero, so those
layers, and only those, are sensitive. The search must keep exactly them, measuring the whole
validation set O(log n) times (counted by the metric itself).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import regiontrt as rt
from regiontrt.graph.qdq_probe import layer_probe
from regiontrt.graph.quantize import name_nodes, plan_quantization, quantize_model
from regiontrt.precision.int8 import probe_sensitivity, screen_batches

WIDTH, LAYERS = 16, 24
SENSITIVE = (5, 11, 17)  # layers whose input carries the outlier channel
VAL_BATCHES, BATCH = 8, 16
BUDGET = 0.08  # the 19 other layers' int8 errors add up to about 0.05


def chain_model(layers: int = LAYERS, sensitive: tuple[int, ...] = SENSITIVE) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = []
    for _ in range(layers):
        q, _r = np.linalg.qr(rng.normal(size=(WIDTH, WIDTH)))
        weights.append(q.astype(np.float32))
    for s in sensitive:
        weights[s - 1][:, 0] *= 1000.0  # the previous layer writes a huge channel 0 ...
        weights[s][0, :] = 0.0  # ... which the sensitive layer ignores in FP32
    nodes, inits, x = [], [], "input"
    for i, w in enumerate(weights):
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"layer{i}"))
        x = f"h{i}"
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, WIDTH])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [None, WIDTH])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def batches(seed: int, n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.normal(size=(BATCH, WIDTH)).astype(np.float32)} for _ in range(n)]


def test_probe_ranks_the_known_sensitive_layers_first():
    model = name_nodes(chain_model())
    plan = plan_quantization(model)
    amax = {t: float(np.abs(np.concatenate([b["input"] for b in batches(1, 4)])).max()) * 4
            for t in plan.activations}
    for s in SENSITIVE:
        amax[f"h{s - 1}"] = 4000.0
    quantized = quantize_model(model, amax)
    probe, pairs = layer_probe(model, quantized, plan.nodes)
    assert set(pairs) == set(plan.nodes)
    scores, outputs = probe_sensitivity(probe, pairs, ["h23"], batches(2, 2))
    top = sorted(scores, key=scores.get, reverse=True)[: len(SENSITIVE)]
    assert set(top) == {f"layer{s}" for s in SENSITIVE}
    assert min(scores[f"layer{s}"] for s in SENSITIVE) > 0.9  # output ~0: relative error ~1
    others = [v for k, v in scores.items() if k not in top]
    assert max(others) < 0.05
    # the probe's own outputs are the FP32 model's
    x = batches(2, 2)[0]["input"]
    expected = x
    for w in chain_model().graph.initializer:
        expected = expected @ numpy_helper.to_array(w)
    np.testing.assert_allclose(outputs[0]["h23"], expected, rtol=1e-4, atol=1e-3)


def test_search_keeps_the_sensitive_layers_with_log_n_full_evaluations():
    model = chain_model()
    full_rows = BATCH * VAL_BATCHES
    calls = {"full": 0, "subset": 0}

    def rel_l2(reference, outputs):
        ref, out = reference["h23"], outputs["h23"]
        calls["full" if len(ref) == full_rows else "subset"] += 1
        return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))

    region = rt.Region("T", ("int8",), budget=BUDGET, metric="relative_l2")
    engine = (
        rt.RegionalEngineBuilder.from_onnx(model)
        .for_region(region)
        .with_precision(rt.PrecisionPolicy("int8", max_kept_fraction=1.0))
        .with_calibrator("minmax", data=batches(1, 4))
        .with_validation(batches(3, VAL_BATCHES), metric=rel_l2)
        .with_calibration_check(strict=False)
        .build()
    )
    meta = engine.metadata
    search = meta["calibration"]["mixed_precision"]
    n = len(search["sensitivity"])
    assert n == LAYERS - 2  # first and last layers stay FP32 by default
    assert search["whole_model_loss"] > 0.5  # whole-model int8 is far off ...
    assert sorted(meta["kept_high_precision"]) == sorted(f"layer{s}" for s in SENSITIVE)
    assert meta["validation"]["trials"][0]["loss"] <= BUDGET  # ... the three kept layers fit
    # Full evaluations: whole-model int8 (1) and the search's confirmations: O(log n), not n.
    searched = calls["full"] - 1
    assert searched == search["evaluations"]
    assert 1 <= searched <= 2 * math.ceil(math.log2(n)) + 1
    assert search["screen_evaluations"] <= 2 * math.ceil(math.log2(n)) + 1
    assert search["screen_samples"] == BATCH * screen_batches(batches(3, VAL_BATCHES))
    assert list(search["sensitivity"])[:3] == meta["kept_high_precision"]
