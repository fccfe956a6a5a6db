"""The zoo benchmark runner on a tiny zoo entry built here: rows, coverage, exclusions, timers,
environment, both arithmetics."""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

bench_zoo = pytest.importorskip("benchmarks.bench_zoo", reason="run from the repository root")
from benchmarks import _env, peers, zoo_ours  # noqa: E402
from benchmarks.bench_quantization import ours_quantize  # noqa: E402
from benchmarks.zoo.base import Split, ZooModel  # noqa: E402
from benchmarks.zoo_coverage import int8_coverage  # noqa: E402


def _tiny_cnn(path: Path) -> Path:
    """input [N,3,12,12] -> conv1 -> relu -> conv2 -> relu -> conv3 -> relu -> GAP -> fc."""
    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "input"
    for i, (cin, cout) in enumerate([(3, 8), (8, 8), (8, 8)], start=1):
        inits += [numpy_helper.from_array(rng.normal(0, 0.4, (cout, cin, 3, 3)).astype(np.float32),
                                          f"w{i}"),
                  numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}",
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    inits += [numpy_helper.from_array(rng.normal(0, 0.5, (8, 10)).astype(np.float32), "wfc"),
              numpy_helper.from_array(np.zeros(10, np.float32), "bfc")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["logits"], name="fc")]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 12, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class TinyZoo(ZooModel):
    """A random CNN; metric: top-1 agreement with FP32."""

    name, family, metric = "tiny-cnn", "classification", "top-1 agreement"

    def __init__(self, folder: Path) -> None:
        self.path = _tiny_cnn(folder / "tiny.onnx")

    def model_path(self) -> Path:
        return self.path

    def data(self, n_calibration: int, n_evaluation: int, seed: int = 0) -> Split:
        rng = np.random.default_rng(seed)

        def feed(n: int) -> list[dict[str, np.ndarray]]:
            return [{"input": rng.normal(0, 1, (4, 3, 12, 12)).astype(np.float32)}
                    for _ in range(n)]
        return Split(feed(n_calibration), feed(n_evaluation))

    def sample_stats(self, reference: Any, candidate: Any) -> np.ndarray:
        return np.array([float(np.mean(reference[0].argmax(-1) == candidate[0].argmax(-1)))])


def _args(**kw: Any) -> SimpleNamespace:
    base = dict(quick=True, seed=0, workdir=None, timeout=300.0, mem_cap_mb=8000.0,
                no_modelopt=False, no_frontier=True, frontier_budget=0.0, argv=["--test"])
    return SimpleNamespace(**{**base, **kw})


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("zoo")
    res = bench_zoo.run([TinyZoo(folder)], _args(workdir=folder / "work"), log=lambda m: None)
    res["_folder"] = str(folder)
    return res


def test_rows_for_ours_and_onnxruntime_in_both_arithmetics(result: dict[str, Any]) -> None:
    rows = result["models"]["tiny-cnn"]["rows"]
    ours = [r for r in rows if r["tool"] == "regiontrt"]
    ort = [r for r in rows if r["tool"] == "onnxruntime"]
    assert {r["method"] for r in ours} == {"auto", "entropy", "percentile"}
    assert {(r["method"], r["variant"]) for r in ort} == {
        (m, v) for m in peers.ORT_METHODS for v in ("default", "our exclusions")}
    for r in ours + ort:
        assert r["status"] == "ok", r.get("error")
        assert set(r["metric"]) == {"tensorrt", "fused"}
        assert 0.0 <= r["metric"]["tensorrt"] <= 1.0
    assert result["headline_arithmetic"] == "tensorrt"
    modelopt = [r for r in rows if r["tool"] == "modelopt"]
    assert len(modelopt) == 4
    if result["modelopt"] is None:
        assert all(r["status"] == "skipped" and r["error"] for r in modelopt)
        assert result["modelopt_skipped"]
    else:
        assert result["modelopt_version"] and all(r["status"] == "ok" for r in modelopt)
    comps = result["models"]["tiny-cnn"]["comparisons"]
    assert comps and all("verdict" in c for c in comps)
    scored = [c for c in comps if "bootstrap" in c]
    assert scored and all(set(c["bootstrap"]) == {"tensorrt", "fused"} for c in scored)


def test_exclusions_are_ours_and_honoured_by_the_peer(result: dict[str, Any]) -> None:
    res = result["models"]["tiny-cnn"]
    # Ours keeps the first conv and the last layer (fc) in float by default.
    assert sorted(res["our_exclusions"]) == ["conv1", "fc"]
    ours = next(r for r in res["rows"] if r["tool"] == "regiontrt" and r["variant"] == "default"
                and r["method"] == "auto")
    assert sorted(ours["coverage"]["int8_layer_names"]) == ["conv2", "conv3"]
    for r in res["rows"]:
        if r["tool"] != "onnxruntime":
            continue
        float_layers = set(r["coverage"]["float_layer_names"])
        if r["variant"] == "our exclusions":
            assert r["info"]["excluded"] == res["our_exclusions"]
            assert float_layers == {"conv1", "fc"}
            model = onnx.load(r["path"])
            producers = {o: n for n in model.graph.node for o in n.output}
            conv1 = next(n for n in model.graph.node if n.name == "conv1")
            assert all(producers.get(t) is None or producers[t].op_type != "DequantizeLinear"
                       for t in conv1.input)
        else:
            assert float_layers == set()  # ORT's default quantizes every layer


def test_coverage_of_a_hand_built_qdq_model(tmp_path: Path) -> None:
    """conv1: weight and input through Q/DQ (int8); conv2: weight only (float); fc: none;
    a MatMul of two activations is no weighted layer."""
    rng = np.random.default_rng(1)
    w1 = numpy_helper.from_array(rng.integers(-5, 5, (4, 3, 3, 3)).astype(np.int8), "w1_q")
    w2 = numpy_helper.from_array(rng.integers(-5, 5, (4, 4, 1, 1)).astype(np.int8), "w2_q")
    wfc = numpy_helper.from_array(rng.normal(0, 1, (4, 5)).astype(np.float32), "wfc")
    s = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    z = numpy_helper.from_array(np.array(0, np.int8), "z")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["x_q"], name="q_x"),
        helper.make_node("DequantizeLinear", ["x_q", "s", "z"], ["x_dq"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w1_q", "s", "z"], ["w1"], name="dq_w1"),
        helper.make_node("Conv", ["x_dq", "w1"], ["c1"], name="conv1"),  # 8x8 out, k=3 pads 0
        helper.make_node("DequantizeLinear", ["w2_q", "s", "z"], ["w2"], name="dq_w2"),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], name="conv2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "wfc"], ["y"], name="fc"),
        helper.make_node("Transpose", ["f"], ["ft"], name="t", perm=[1, 0]),
        helper.make_node("MatMul", ["ft", "f"], ["gram"], name="gram"),
    ]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("gram", TensorProto.FLOAT, None)], [w1, w2, wfc, s, z])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    cov = int8_coverage(model, {"x": np.zeros((2, 3, 10, 10), np.float32)})
    assert (cov.layers, cov.int8_layers) == (3, 1)
    assert cov.int8_layer_names == ["conv1"] and cov.float_layer_names == ["conv2", "fc"]
    f1 = 2 * (2 * 4 * 8 * 8) * (3 * 3 * 3)
    f2 = 2 * (2 * 4 * 8 * 8) * 4
    ffc = 2 * (2 * 5) * 4
    assert cov.flops == f1 + f2 + ffc and cov.int8_flops == f1
    assert cov.flop_share == pytest.approx(f1 / (f1 + f2 + ffc))
    assert cov.layer_share == pytest.approx(1 / 3)
    assert cov.quantized_tensors == ["x"]


def _first_timer_after_imports(fn: Any) -> None:
    """In ``fn``'s source, every import comes before the first ``perf_counter()`` call."""
    tree = ast.parse(inspect.getsource(fn).lstrip())
    imports = [n.lineno for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    timers = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call)
              and getattr(n.func, "attr", getattr(n.func, "id", "")) == "perf_counter"]
    assert timers, f"{fn.__name__} has no timer"
    assert max(imports, default=0) < min(timers), fn.__name__


def test_timers_start_after_imports(result: dict[str, Any]) -> None:
    for fn in (peers.ort_quantize, peers._modelopt_main, zoo_ours.ours_int8,
               zoo_ours.ours_frontier, ours_quantize):
        _first_timer_after_imports(fn)
    # zoo_ours imports regiontrt at module level, so nothing is imported inside the timer.
    assert "regiontrt" in inspect.getsource(zoo_ours).split("def ")[0]
    rows = result["models"]["tiny-cnn"]["rows"]
    for r in rows:
        if r["tool"] == "onnxruntime":
            assert r["seconds"] > 0 and r["info"]["rss_after_imports_mb"] > 0


def test_result_json_embeds_the_environment(result: dict[str, Any], tmp_path: Path) -> None:
    env = result["environment"]
    for key in ("command", "machine", "versions", "commit", "load_before", "load_after",
                "started_at", "finished_at"):
        assert key in env
    assert json.loads(json.dumps(result, default=_env.jsonable))["environment"] == env


class TinyL2Zoo(TinyZoo):
    """The same CNN scored by minus the relative L2 error: no int8 layer matches FP32 exactly,
    so the search walks its whole ladder."""

    name, metric = "tiny-cnn-l2", "minus relative L2"

    def sample_stats(self, reference: Any, candidate: Any) -> np.ndarray:
        r, c = reference[0].astype(np.float64), candidate[0].astype(np.float64)
        return np.array([-float(np.linalg.norm(c - r) / max(np.linalg.norm(r), 1e-12))])


def test_frontier_records_every_point_the_search_measures(tmp_path: Path) -> None:
    zoo = TinyL2Zoo(tmp_path)
    split = zoo.data(4, 0)
    named = bench_zoo.named_copy(zoo.model_path(), tmp_path / "named.onnx")
    walk = zoo_ours.ours_frontier(named, zoo, split.calibration, str(tmp_path), "minmax", 0.0)
    points = walk["points"]
    # Only keeping every quantized layer in float meets a loss of exactly 0.
    assert sorted(walk["chosen_kept"]) == ["conv2", "conv3"]
    assert points[0]["kept"] == [] and len(points) > 2
    kept_sizes = {len(p["kept"]) for p in points}
    assert {0, 1, 2} <= kept_sizes  # doubling from one kept layer up to all of them
    for p in points:
        cov = int8_coverage(onnx.load(p["path"]), split.calibration[0])
        assert cov.int8_layers == 2 - len(set(p["kept"]) & {"conv2", "conv3"})


class MissingAssetsZoo(TinyZoo):
    """A zoo entry whose data cannot be made here (as without scikit-image)."""

    name = "missing-assets"

    def data(self, n_calibration: int, n_evaluation: int, seed: int = 0) -> Split:
        from benchmarks.zoo.base import ZooAssetError

        raise ZooAssetError("needs a package this machine lacks")


def test_a_model_without_its_assets_is_skipped_and_each_model_is_checkpointed(
        tmp_path: Path) -> None:
    """A model whose assets are missing does not lose the models measured before it: it is
    listed as skipped, and the result is handed to the checkpoint after every measured model."""
    seen: list[list[str]] = []
    res = bench_zoo.run([TinyZoo(tmp_path), MissingAssetsZoo(tmp_path)],
                        _args(workdir=tmp_path / "work", no_modelopt=True), log=lambda m: None,
                        checkpoint=lambda r: seen.append(sorted(r["models"])))
    assert list(res["models"]) == ["tiny-cnn"]
    assert "lacks" in res["skipped_models"]["missing-assets"]
    assert seen == [["tiny-cnn"]]
