"""The in-process server: batching equals running alone, modes, backpressure, deadlines, metrics."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import regiontrt as rt
from regiontrt.serve import AdaptivePolicy, LoadStats
from regiontrt.serve.modes import LATENCY, THROUGHPUT, BatchPlan, LoadTracker


def _sequence_model() -> onnx.ModelProto:
    """y = 2x + 1 per step ([N, T]) and s = sum over T ([N]): a width-bucketed sequence model."""
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["x2"]),
        helper.make_node("Add", ["x2", "one"], ["y"]),
        helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0),
    ]
    inits = [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
             helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
             helper.make_tensor("axes", TensorProto.INT64, [1], [1])]
    graph = helper.make_graph(
        nodes, "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T"]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def seq_engine():
    profile = rt.ShapeProfile({"x": [(1, 1), (8, 16), (64, 64)]},
                              buckets={"x": {1: [16, 32, 64]}}, bucket_outputs={"y": 1})
    return (rt.RegionalEngineBuilder.from_onnx(_sequence_model()).for_region("CERTIFIED")
            .with_shape_profile(profile).build())


def _threads_before() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.ident is not None}


def test_batched_outputs_equal_each_request_run_alone(na_engine):
    from regiontrt import demo

    x = demo.region_data("NA").validation
    requests = [x[i:i + 1 + i % 3] for i in range(0, 120, 2)]
    alone = [na_engine.infer(r)["logits"] for r in requests]
    with rt.serve(na_engine, max_batch=16, max_delay_ms=20, mode="throughput") as server:
        with ThreadPoolExecutor(8) as pool:
            futures = list(pool.map(server.submit, requests))
        got = [f.result(10)["logits"] for f in futures]
        stats = server.stats()["digits_cnn_NA"]
    for want, have in zip(alone, got):
        assert have.shape == want.shape
        assert np.array_equal(have, want)  # bit for bit, not allclose
    assert max(stats["batch_sizes"]) > 3, stats["batch_sizes"]  # requests were really batched
    assert stats["batches"] < len(requests)
    assert stats["outcomes"] == {"ok": len(requests)}


def test_sequence_requests_are_grouped_by_bucket_and_cut_back(seq_engine):
    rng = np.random.default_rng(0)
    widths = [5, 16, 20, 40, 7, 33, 64, 3, 17, 12] * 3
    requests = [rng.standard_normal((1 + i % 2, w)).astype(np.float32)
                for i, w in enumerate(widths)]
    with rt.serve(seq_engine, max_batch=8, max_delay_ms=30, mode="throughput") as server:
        futures = [server.submit({"x": r}) for r in requests]
        got = [f.result(10) for f in futures]
        stats = server.stats()
    for r, out in zip(requests, got):
        alone = seq_engine.infer({"x": r})
        assert out["y"].shape == r.shape
        assert np.array_equal(out["y"], alone["y"]) and np.array_equal(out["s"], alone["s"])
        np.testing.assert_allclose(out["y"], 2 * r + 1, rtol=1e-6)
    (s,) = stats.values()
    assert s["batches"] < len(requests) and max(s["batch_sizes"]) > 2


def test_overloaded_is_raised_at_once_and_queued_requests_drain(na_engine):
    x = np.zeros((1, 1, 8, 8), np.float32)
    server = rt.serve(na_engine, max_batch=64, max_delay_ms=5000, mode="throughput",
                      max_queue=2)
    first, second = server.submit(x), server.submit(x)
    started = time.perf_counter()
    with pytest.raises(rt.errors.Overloaded, match="queue full"):
        server.submit(x)
    assert time.perf_counter() - started < 0.5  # typed refusal at once, not a blocked caller
    server.close(drain=True)
    want = na_engine.infer(x)["logits"]
    assert np.array_equal(first.result(1)["logits"], want)
    assert np.array_equal(second.result(1)["logits"], want)
    assert server.stats()["digits_cnn_NA"]["outcomes"]["overloaded"] == 1
    with pytest.raises(rt.errors.ServerClosed):
        server.submit(x)


def test_expired_deadline_fails_typed_without_running(na_engine):
    x = np.ones((1, 1, 8, 8), np.float32)
    with rt.serve(na_engine, max_batch=64, max_delay_ms=300, mode="throughput") as server:
        late = server.submit(x, deadline_ms=30)
        patient = server.submit(x)
        with pytest.raises(rt.errors.DeadlineExceeded, match="deadline passed"):
            late.result(5)
        assert np.array_equal(patient.result(5)["logits"], na_engine.infer(x)["logits"])
        s = server.stats()["digits_cnn_NA"]
    assert s["outcomes"]["deadline_exceeded"] == 1
    assert sum(s["batch_sizes"].values()) == 1 and s["batch_sizes"] == {1: 1}  # ran alone


def test_bad_inputs_fail_alone_and_the_server_keeps_serving(na_engine):
    good = np.zeros((2, 1, 8, 8), np.float32)
    with rt.serve(na_engine, mode="latency") as server:
        with pytest.raises(rt.errors.InputError, match="dtype"):
            server.submit(good.astype(np.float64))
        with pytest.raises(rt.errors.ShapeOutOfProfile):
            server.submit(np.zeros((65, 1, 8, 8), np.float32))
        with pytest.raises(rt.errors.InputError, match="names"):
            server.submit({"nope": good})
        with pytest.raises(rt.serve.UnknownModel):
            server.submit(good, model="other_EU")
        assert np.array_equal(server.infer(good)["logits"], na_engine.infer(good)["logits"])
        assert server.stats()["digits_cnn_NA"]["batch_sizes"] == {2: 1}


def test_latency_mode_runs_one_request_per_batch(na_engine):
    x = np.zeros((1, 1, 8, 8), np.float32)
    with rt.serve(na_engine, mode="latency", max_batch=32) as server:
        futures = [server.submit(x) for _ in range(40)]
        for f in futures:
            f.result(10)
        s = server.stats()["digits_cnn_NA"]
    assert s["batch_sizes"] == {1: 40} and s["mode"] == LATENCY


def test_adaptive_policy_switches_with_hysteresis_and_dwell():
    policy = AdaptivePolicy(max_batch=16, max_delay_ms=8, up=0.6, down=0.3, dwell_s=0.5)

    def load(rate: float, depth: int, now: float) -> LoadStats:
        return LoadStats(rate, depth, 0.001, 0.004, 0.010, now)

    assert policy.plan(load(100, 0, 0.0)).role == LATENCY           # rho 0.1: quiet
    plan = policy.plan(load(700, 3, 1.0))                             # rho 0.7 >= up
    assert plan.role == THROUGHPUT and policy.switches == 1
    assert plan.max_wait_s == pytest.approx(0.001)                    # (10 - 2*4) / 2 ms
    # Between the thresholds nothing moves, in either direction: no flapping.
    for i, rate in enumerate([450, 350, 550, 400] * 5):
        assert policy.plan(load(rate, 1, 2.0 + i * 0.1)).role == THROUGHPUT
    assert policy.plan(load(200, 0, 5.0)).role == LATENCY             # rho 0.2 <= down
    assert policy.plan(load(900, 0, 5.1)).role == LATENCY             # within the dwell time
    assert policy.plan(load(900, 0, 5.6)).role == THROUGHPUT
    assert policy.switches == 3
    assert policy.plan(load(0, 40, 6.2)).role == THROUGHPUT           # a deep queue holds it


def test_adaptive_policy_does_not_wait_when_batching_is_measured_not_to_pay():
    policy = AdaptivePolicy(max_batch=16, max_delay_ms=8, dwell_s=0.5)
    quiet = LoadStats(200, 0, 0.001, 0.004, 0.050, 1.0, batch_rows=16)     # 0.25 ms a row
    assert quiet.batching_pays and policy.plan(quiet) == BatchPlan(4, 0.0, LATENCY)
    costly = LoadStats(900, 5, 0.001, 0.015, 0.050, 2.0, batch_rows=16)    # 0.94 ms a row
    plan = policy.plan(costly)                                               # explores once
    assert costly.batching_pays is False and plan.role == THROUGHPUT and plan.max_wait_s == 0
    assert plan.max_batch == 4                                               # a small probe
    later = LoadStats(900, 5, 0.001, 0.015, 0.050, 3.0, batch_rows=16)
    assert policy.plan(later).max_batch == 1                                 # one by one
    again = LoadStats(900, 5, 0.001, 0.015, 0.050, 2.0 + policy.explore_s, batch_rows=16)
    assert policy.plan(again).max_batch == 4                                 # re-measures
    # A queue past high water says one by one is falling behind: batch what waits, at once.
    deep = LoadStats(900, 16, 0.001, 0.015, 0.050, 2.6 + policy.explore_s, batch_rows=16,
                     largest_batch=16)
    assert policy.plan(deep) == BatchPlan(16, 0.0, THROUGHPUT)


def test_load_tracker_estimates_are_not_thrown_by_one_slow_run():
    tracker = LoadTracker()
    for _ in range(5):
        tracker.ran(1, 0.001)
        tracker.ran(8, 0.002)
    before = tracker.snapshot(0, None, 0.0)
    assert before.service_s == pytest.approx(0.001) and before.batching_pays
    tracker.ran(8, 0.050)   # a garbage collection, a busy core
    tracker.ran(1, 0.030)
    after = tracker.snapshot(0, None, 0.0)
    assert after.batching_pays and after.service_s == pytest.approx(0.001)
    assert after.batch_service_s == pytest.approx(0.002)
    # Two runs of a batch are no verdict yet; a third is.
    fresh = LoadTracker()
    fresh.ran(1, 0.001)
    for i in range(3):
        stats = fresh.snapshot(0, None, 0.0)
        assert (stats.batching_pays is None) == (i < 3)
        fresh.ran(4 + i, 0.010 * (4 + i))
    assert fresh.snapshot(0, None, 0.0).batching_pays is False


def test_adaptive_batches_grow_by_doubling_while_they_pay():
    policy = AdaptivePolicy(max_batch=32, max_delay_ms=0)
    sizes = [policy.plan(LoadStats(0, 40, 0.001, 0.001 * largest / 4, None, 0.0,
                                   batch_rows=largest, largest_batch=largest)).max_batch
             for largest in (0, 4, 8, 16, 32)]
    assert sizes == [4, 8, 16, 32, 32]


class _SlowEngine(rt.Engine):
    """The same engine, 10 ms slower a run: a burst then queues whatever the machine's speed."""

    def infer(self, feeds, **kwargs):
        time.sleep(0.01)
        return super().infer(feeds, **kwargs)


def test_adaptive_mode_batches_a_burst_and_returns_to_latency(na_engine):
    x = np.zeros((1, 1, 8, 8), np.float32)
    policy = AdaptivePolicy(max_batch=16, max_delay_ms=2, dwell_s=0.05, high_water=8)
    slow = _SlowEngine(na_engine.metadata, na_engine.payload)
    with rt.serve(slow, mode=policy) as server:
        for f in [server.submit(x) for _ in range(200)]:
            f.result(10)
        busy = server.stats()["digits_cnn_NA"]
        time.sleep(1.2)                                               # the window empties
        server.infer(x)
        quiet = server.stats()["digits_cnn_NA"]
    assert max(busy["batch_sizes"]) > 1 and busy["mode_switches"] >= 1
    assert quiet["mode"] == LATENCY and quiet["mode_switches"] >= 2


def test_metrics_dict_and_prometheus_carry_region_and_version(na_engine):
    pytest.importorskip("prometheus_client", reason="needs prometheus-client (serve extra)")
    x = np.zeros((4, 1, 8, 8), np.float32)
    with rt.serve(na_engine, mode="latency") as server:
        for _ in range(5):
            server.infer(x)
        s = server.stats()["digits_cnn_NA"]
        text = server.metrics.prometheus_text().decode()
    assert s["region"] == "NA" and s["sla_ms"] == 10.0 and s["requests"] == 5
    assert 0.0 <= s["sla_attainment"] <= 1.0 and s["latency_ms"]["p50"] <= s["latency_ms"]["p99"]
    version = s["version"]
    assert f'regiontrt_serve_requests_total{{model="digits_cnn_NA",outcome="ok",region="NA",' \
           f'variant="default",version="{version}"}} 5.0' in text
    assert "regiontrt_serve_batch_size_bucket" in text and "regiontrt_serve_sla_attainment" in text


def test_serving_a_file_names_the_model_after_its_stem_and_closes_cleanly(na_engine, tmp_path):
    path = tmp_path / "digits.NA.engine"
    na_engine.save(path)
    before = _threads_before()
    server = rt.serve(str(path))
    assert list(server.models) == ["digits_NA"] and server.ready
    x = np.zeros((1, 1, 8, 8), np.float32)
    assert np.array_equal(server.infer(x)["logits"], na_engine.infer(x)["logits"])
    server.close()
    assert not server.ready
    leaked = [t for t in threading.enumerate() if t.ident not in before]
    assert leaked == []


def test_serve_refuses_missing_paths_and_strange_sources(na_engine, tmp_path):
    with pytest.raises(rt.errors.ArtifactError, match="nothing to serve"):
        rt.serve(tmp_path / "absent.engine")
    with pytest.raises(TypeError):
        rt.serve(42)
    with pytest.raises(ValueError, match="unknown mode"):
        rt.serve(na_engine, mode="fast")
    with pytest.raises(ValueError, match="max_batch"):
        rt.serve(na_engine, max_batch=0)


class _Variant:
    def __init__(self, target: str, backend: str, role: str | None) -> None:
        self.target, self.backend, self.role = target, backend, role


class _ContractBundle:
    """Stand-in for regiontrt.deploy's Bundle, written to its agreed contract (name, version,
    region, variants with target/backend/role, select().engine, load_variant(v)); the real
    bundle test comes once deploy is merged."""

    def __init__(self, engines: dict[str | None, rt.Engine]) -> None:
        self.name, self.version, self.region = "digits", "2.1.0", "CERTIFIED"
        self._engines = engines
        self.variants = [_Variant("cpu", "onnxruntime", role) for role in engines] + \
            [_Variant("sm90", "tensorrt", "latency")]  # another target: never loaded here
        self.loaded: list[str | None] = []

    def select(self):
        return type("Selection", (), {"engine": self._engines[None]})()

    def load_variant(self, v: _Variant) -> rt.Engine:
        assert v.backend == "onnxruntime", "only variants runnable here are loaded"
        self.loaded.append(v.role)
        return self._engines[v.role]


def test_bundle_variants_serve_the_batches_their_role_is_built_for():
    from regiontrt import demo

    def build(max_batch: int) -> rt.Engine:
        profile = {"input": [(1, 1, 8, 8), (1, 1, 8, 8), (max_batch, 1, 8, 8)]}
        return (rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region("CERTIFIED")
                .with_shape_profile(profile).build())

    bundle = _ContractBundle({None: build(64), "latency": build(2), "throughput": build(64)})
    x = np.zeros((1, 1, 8, 8), np.float32)
    with rt.serve(bundle, mode="latency") as server:
        assert list(server.models) == ["digits_CERTIFIED"]
        model = server.model()
        assert model.version == "2.1.0" and [v.role for v in model.variants] == \
            [None, "latency", "throughput"]
        server.infer(x)
        assert np.array_equal(server.infer(np.zeros((5, 1, 8, 8), np.float32))["logits"],
                              bundle._engines[None].infer(np.zeros((5, 1, 8, 8), np.float32))
                              ["logits"])  # too big for the latency profile: default variant
        assert server.stats()["digits_CERTIFIED"]["variants"] == {"latency:cpu": 1,
                                                                  "default": 1}
    with rt.serve(bundle, mode="throughput", max_delay_ms=1) as server:
        server.infer(x)
        assert server.stats()["digits_CERTIFIED"]["variants"] == {"throughput:cpu": 1}
    assert "latency" in bundle.loaded and "throughput" in bundle.loaded


def test_several_sources_are_served_side_by_side_by_name(na_engine, seq_engine, tmp_path):
    na_engine.save(tmp_path / "digits.NA.engine")
    with rt.serve([tmp_path / "digits.NA.engine", seq_engine]) as server:
        assert sorted(server.models) == ["digits_NA", "seq_CERTIFIED"]
        x = np.zeros((2, 1, 8, 8), np.float32)
        assert np.array_equal(server.infer(x, model="digits_NA")["logits"],
                              na_engine.infer(x)["logits"])
        with pytest.raises(rt.serve.UnknownModel, match="name one"):
            server.submit(x)
    with pytest.raises(rt.errors.ArtifactError, match="same model name"):
        rt.serve([na_engine, na_engine])


def test_cli_serve_refuses_what_it_cannot_serve(tmp_path, capsys):
    from regiontrt.cli import main

    assert main(["serve", str(tmp_path / "missing.engine"), "--port", "1"]) == 2
    assert "nothing to serve" in capsys.readouterr().err
    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"not an engine")
    assert main(["serve", str(bad), "--port", "1"]) == 2
    assert "regiontrt: error" in capsys.readouterr().err
