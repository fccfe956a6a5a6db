"""Serving's rough edges: protocol versions, exact metadata shapes, SLA fields, batch invariance."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import regiontrt as rt
from regiontrt.serve.sources import engine_version, from_engine, protocol_version

httpx = pytest.importorskip("httpx", reason="needs httpx (the test extra)")
pytest.importorskip("uvicorn", reason="needs uvicorn (pip install 'regiontrt[serve]')")

from regiontrt.serve.runner import BackgroundHTTP  # noqa: E402


def _scale_model() -> onnx.ModelProto:
    """y = 2x on x [N, C, H, W] (every dim symbolic)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])], "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C", "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "C", "H", "W"])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def pinned_engine() -> rt.Engine:
    """CERTIFIED (no latency SLA), built only for C=3, W=16 and H in 8..16."""
    profile = rt.ShapeProfile({"x": [(1, 3, 8, 16), (2, 3, 16, 16), (8, 3, 16, 16)]})
    return (rt.RegionalEngineBuilder.from_onnx(_scale_model()).for_region("CERTIFIED")
            .with_shape_profile(profile).build())


def test_metadata_shapes_are_exact_where_the_profiles_pin_a_dim(pinned_engine):
    with BackgroundHTTP(rt.serve(pinned_engine, name="scale")) as http:
        meta = httpx.get(f"http://{http.url}/v2/models/scale_CERTIFIED", timeout=10).json()
        config = httpx.get(f"http://{http.url}/v2/models/scale_CERTIFIED/config",
                           timeout=10).json()
    assert pinned_engine.inputs[0].shape[1] == "C"  # symbolic in the graph...
    assert meta["inputs"][0]["shape"] == [-1, 3, -1, 16]  # ...pinned by the profile
    assert config["input"][0]["dims"] == [-1, 3, -1, 16]


def test_a_model_without_an_sla_reports_no_sla_figures(pinned_engine, na_engine):
    pytest.importorskip("prometheus_client", reason="needs prometheus-client (serve extra)")
    x = np.ones((2, 3, 16, 16), np.float32)
    with BackgroundHTTP(rt.serve(pinned_engine, name="scale")) as http:
        for _ in range(3):
            r = httpx.post(f"http://{http.url}/v2/models/scale_CERTIFIED/infer", timeout=10,
                           json={"inputs": [{"name": "x", "datatype": "FP32",
                                             "shape": [2, 3, 16, 16],
                                             "data": x.reshape(-1).tolist()}]})
            assert r.status_code == 200, r.text
        stats = http.server.stats()["scale_CERTIFIED"]
        text = httpx.get(f"http://{http.url}/metrics", timeout=10).text
        meta = httpx.get(f"http://{http.url}/v2/models/scale_CERTIFIED", timeout=10).json()
    assert stats["requests"] == 3 and stats["latency_ms"]["p50"] is not None
    assert "sla_ms" not in stats and "sla_attainment" not in stats
    assert "regiontrt_serve_requests_total" in text
    assert "sla_attainment{" not in text and "requests_within_sla_total{" not in text
    assert "sla_ms" not in meta["parameters"]
    # NA has a 10 ms SLA: there the figures are reported.
    with BackgroundHTTP(rt.serve(na_engine)) as http:
        httpx.post(f"http://{http.url}/v2/models/digits_cnn_NA/infer", timeout=10,
                   json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8],
                                     "data": [0.0] * 64}]})
        meta = httpx.get(f"http://{http.url}/v2/models/digits_cnn_NA", timeout=10).json()
        text = httpx.get(f"http://{http.url}/metrics", timeout=10).text
        stats = http.server.stats()["digits_cnn_NA"]
    assert meta["parameters"]["sla_ms"] == 10.0 and stats["sla_ms"] == 10.0
    assert 0.0 <= stats["sla_attainment"] <= 1.0 and "sla_attainment{" in text


def test_an_engine_file_is_served_as_version_1_with_its_digest_in_parameters(na_engine,
                                                                            tmp_path):
    path = tmp_path / "digits.NA.engine"
    na_engine.save(path)
    digest = engine_version(na_engine)
    assert digest != "1" and len(digest) == 12
    x = np.zeros((1, 1, 8, 8), np.float32)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8],
                        "data": x.reshape(-1).tolist()}]}
    with BackgroundHTTP(rt.serve(str(path))) as http, \
            httpx.Client(base_url=f"http://{http.url}/v2", timeout=10) as client:
        meta = client.get("/models/digits_NA/versions/1").json()
        assert meta["versions"] == ["1"]
        assert meta["parameters"]["version"] == "1"
        assert meta["parameters"]["source_version"] == digest
        assert client.get("/models/digits_NA/versions/1/ready").status_code == 200
        r = client.post("/models/digits_NA/versions/1/infer", json=body)
        assert r.status_code == 200 and r.json()["model_version"] == "1"
        assert client.get("/models/digits_NA/versions/2").status_code == 404
        assert client.get(f"/models/digits_NA/versions/{digest}").status_code == 200  # alias
        index = client.post("/repository/index").json()
        assert index == [{"name": "digits_NA", "version": "1", "state": "READY"}]


def test_version_mapping_keeps_integer_labels_and_maps_the_rest_to_1(na_engine):
    assert [protocol_version(v) for v in ("3", "12", "2.1.0", "v3", "007", "0", "")] == \
        ["3", "12", "1", "1", "1", "1", "1"]
    seven = from_engine(na_engine, version="7")
    assert (seven.version, seven.protocol_version) == ("7", "7")
    labelled = from_engine(na_engine, version="2024.06")
    assert (labelled.version, labelled.protocol_version) == ("2024.06", "1")
    assert labelled.answers_to("1") and labelled.answers_to("2024.06")
    assert not labelled.answers_to("2")


def test_batch_invariance_exact_is_bit_identical_alone_and_batched(na_engine):
    from regiontrt import demo

    x = demo.region_data("NA").validation[:12]
    requests = [x[i:i + 1] for i in range(12)]
    with rt.serve(na_engine, mode="latency", max_batch=8, batch_invariance="exact") as alone:
        solo = [alone.infer(r)["logits"] for r in requests]
        assert next(iter(alone.stats().values()))["batch_sizes"] == {1: 12}
    with rt.serve(na_engine, mode="throughput", max_batch=8, max_delay_ms=2000,
                  batch_invariance="exact") as batched:
        futures = [batched.submit(r) for r in requests]
        together = [f.result(60)["logits"] for f in futures]
        ran = next(iter(batched.stats().values()))["batch_sizes"]
    assert max(ran) > 1, ran  # requests really shared runs
    for a, b in zip(solo, together, strict=True):
        assert a.shape == (1, 10) and np.array_equal(a, b)
    with pytest.raises(ValueError, match="batch_invariance"):
        rt.serve(na_engine, batch_invariance="bitwise")


def test_exact_mode_pads_runs_to_one_size_and_splits_larger_requests(pinned_engine):
    """A request of more rows than the fixed size runs in several fixed-size runs."""
    server = rt.serve(pinned_engine, name="scale", mode="latency", max_batch=4,
                      batch_invariance="exact")
    seen: list[int] = []
    engine = server.model().engine
    original = engine.infer

    def spy(feeds, *a, **k):
        seen.append(int(next(iter(feeds.values())).shape[0]))
        return original(feeds, *a, **k)

    engine.infer = spy  # type: ignore[method-assign]
    try:
        x = np.arange(6 * 3 * 16 * 16, dtype=np.float32).reshape(6, 3, 16, 16)
        y = server.infer({"x": x})["y"]
        z = server.infer({"x": x[:1]})["y"]
    finally:
        server.close()
    assert seen == [4, 4, 4]  # 6 rows: two runs of 4 (the second padded), 1 row: one run of 4
    assert np.array_equal(y, 2 * x) and np.array_equal(z, 2 * x[:1])


@pytest.mark.parametrize(("label", "number"), [("3", "3"), ("2.1.0", "1")])
def test_a_real_bundle_is_served_with_its_version_mapped(na_engine, tmp_path, label, number):
    deploy = pytest.importorskip("regiontrt.deploy", reason="needs the fleet extra")
    path = deploy.write_bundle(tmp_path / "digits", name="digits", version=label,
                               region_engine=na_engine, variants=[])
    x = np.zeros((2, 1, 8, 8), np.float32)
    with BackgroundHTTP(rt.serve(str(path))) as http, \
            httpx.Client(base_url=f"http://{http.url}/v2", timeout=10) as client:
        meta = client.get(f"/models/digits_NA/versions/{number}").json()
        assert meta["versions"] == [number] and meta["parameters"]["source_version"] == label
        r = client.post(f"/models/digits_NA/versions/{number}/infer", json={"inputs": [
            {"name": "input", "datatype": "FP32", "shape": [2, 1, 8, 8],
             "data": x.reshape(-1).tolist()}]})
        assert r.status_code == 200 and r.json()["model_version"] == number
        got = np.asarray(r.json()["outputs"][0]["data"], np.float32).reshape(2, 10)
        np.testing.assert_array_equal(got, na_engine.infer(x)["logits"])
