"""The `tensorrt` backend against a recording fake of the TensorRT module (no TensorRT here).

The fake (:mod:`regiontrt.testing.recording_trt`) implements just the API the backend calls, with
the names, signatures and enum values of the real bindings (checked by
``test_tensorrt_conformance.py``), records every call and can fail the way TensorRT fails, so these
tests check how a TacticSelector becomes builder configuration, the timing-cache round trip, the
fusion report wiring, the compatibility checks and the error paths.
"""

from __future__ import annotations

import json
import types
from typing import Any

import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh

from regiontrt.backends import tensorrt as trt_backend
from regiontrt.backends import trt_build, trt_env
from regiontrt.backends.base import BuildRequest
from regiontrt.backends.tactics import TacticSelector
from regiontrt.backends.tensorrt import TensorRTBackend
from regiontrt.errors import BuildError, IncompatibleEngineError
from regiontrt.precision.types import Precision
from regiontrt.shapes.profiles import Profile, Range
from regiontrt.testing import make_recording_trt


def make_fake_trt(version: str = "10.8.0.43", **kwargs: Any) -> types.SimpleNamespace:
    return make_recording_trt(version, **kwargs)


def small_model() -> onnx.ModelProto:
    nodes = [oh.make_node("Relu", ["x"], ["r"], name="relu1"),
             oh.make_node("Identity", ["r"], ["y"], name="out")]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TP.FLOAT, ["N", 4])],
                          [oh.make_tensor_value_info("y", TP.FLOAT, ["N", 4])])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


PROFILE = Profile({"x": Range((1, 4), (2, 4), (8, 4))})


@pytest.fixture
def fake(monkeypatch):
    trt = make_fake_trt()
    _install(monkeypatch, trt, sm="sm90")
    return trt


def _install(monkeypatch, trt, sm: str | None, device: str | None = "nvidia-h200") -> None:
    monkeypatch.setattr(TensorRTBackend, "_module", classmethod(lambda cls: trt))
    monkeypatch.setattr(trt_backend, "device_sm", lambda device=0: sm)
    monkeypatch.setattr(trt_backend, "device_name", lambda d=0: device if sm else None)
    monkeypatch.setattr(trt_backend, "gpu_count", lambda: 0 if sm is None else 1)
    monkeypatch.setattr(trt_build, "_LOGGERS", {})  # a fresh logger for each fake module
    monkeypatch.setattr(trt_env, "_PLUGINS", {})  # plugins register once per process and module
    monkeypatch.setattr(trt_backend.cuda, "set_device",  # builds and loads pin the device
                        lambda device: trt.calls.append(("set_device", device)))


def build(tactics: TacticSelector, model: onnx.ModelProto | None = None):
    return TensorRTBackend().build(
        BuildRequest(model or small_model(), Precision.FP32, [PROFILE], tactics, name="r/fp32"))


def setattrs(trt) -> dict[str, Any]:
    return {c[1]: c[2] for c in trt.calls if c[0] == "set"}


def test_tactic_selector_maps_onto_builder_config(fake):
    tactics = TacticSelector(optimization_level=2, tactic_sources=("cublas", "JIT_CONVOLUTIONS"),
                             max_tactics=7, workspace_bytes=1 << 28,
                             hardware_compatibility="ampere_plus",
                             profiling_verbosity="layer_names_only")
    result = build(tactics)
    attrs = setattrs(fake)
    assert attrs["builder_optimization_level"] == 2
    assert attrs["max_num_tactics"] == 7
    assert attrs["hardware_compatibility_level"] == fake.HardwareCompatibilityLevel.AMPERE_PLUS
    assert attrs["profiling_verbosity"] == fake.ProfilingVerbosity.LAYER_NAMES_ONLY
    assert ("set_tactic_sources", 1 << 0 | 1 << 4) in fake.calls
    assert ("set_memory_pool_limit", fake.MemoryPoolType.WORKSPACE, 1 << 28) in fake.calls
    assert ("create_network", 1 << 1) in fake.calls  # STRONGLY_TYPED has value 1 in TensorRT 10
    assert result.target == "sm80+"
    assert result.payload_format == "tensorrt-plan"
    assert result.info["plan_header"]["trt_version"] == "10.8.0"
    assert result.info["builder_config"]["tactic_sources"] == ["CUBLAS", "JIT_CONVOLUTIONS"]
    assert result.info["network_dtypes"] == {"FLOAT": 2}
    assert result.info["gpu"] == "sm90"


def test_user_configure_hook_runs_last(fake):
    class Extra(TacticSelector):
        def configure(self, config: Any, trt: Any) -> None:
            config.builder_optimization_level = 5

    build(Extra(optimization_level=1))
    levels = [c[2] for c in fake.calls if c[:2] == ("set", "builder_optimization_level")]
    assert levels == [1, 5]


def test_profiles_become_optimization_profiles(fake):
    build(TacticSelector())
    config = next(c[2] for c in fake.calls if c[0] == "build")
    assert [p.shapes for p in config._profiles] == [{"x": ((1, 4), (2, 4), (8, 4))}]


def test_tensorrt_11_sets_no_strongly_typed_flag(monkeypatch):
    trt = make_fake_trt("11.1.0.106")
    _install(monkeypatch, trt, sm="sm90")
    build(TacticSelector())
    assert ("create_network", 0) in trt.calls


def test_missing_max_num_tactics_is_recorded_not_fatal(monkeypatch):
    trt = make_fake_trt(max_num_tactics=False)
    _install(monkeypatch, trt, sm="sm90")
    result = build(TacticSelector(max_tactics=3))
    assert result.info["builder_config"]["max_tactics"].startswith("unsupported")


def test_unknown_tactic_source_lists_the_known_ones(fake):
    with pytest.raises(BuildError, match=r"no tactic source 'CUBLAZ'.*CUDNN"):
        build(TacticSelector(tactic_sources=("CUBLAZ",)))


def test_builder_failure_reports_the_errors_tensorrt_logged(monkeypatch):
    trt = make_fake_trt(build_error="[autotuner] no implementation for conv1")
    _install(monkeypatch, trt, sm="sm90")
    with pytest.raises(BuildError, match=r"(?s)failed to build 'r/fp32'.*no implementation"):
        build(TacticSelector())


def test_building_without_a_gpu_is_refused(monkeypatch):
    trt = make_fake_trt()
    _install(monkeypatch, trt, sm=None)
    with pytest.raises(BuildError, match=r"need an NVIDIA GPU.*tensorrt-rtx"):
        build(TacticSelector())


def test_requested_targets_must_include_the_build_gpu(fake):
    with pytest.raises(BuildError, match=r"GPU it runs on \(sm90\)"):
        build(TacticSelector(compute_capabilities=("sm89",)))


def test_timing_cache_is_loaded_merged_and_saved_per_version_and_gpu(fake, tmp_path):
    path = tmp_path / "tensorrt-10.8.0.43-sm90-nvidia-h200.cache"  # version, CC and GPU model
    path.write_text(json.dumps({"old": 2.0}))
    result = build(TacticSelector(timing_cache=str(tmp_path)))
    loaded = next(c for c in fake.calls if c[0] == "set_timing_cache")
    assert loaded[1:] == ({"old": 2.0}, False)
    assert json.loads(path.read_text()) == {"old": 2.0, "layer1": 1.0}
    assert result.info["builder_config"]["timing_cache"] == str(path)
    assert result.info["builder_config"]["timing_cache_saved"]["merged"] is True


def test_fusion_report_comes_from_the_inspector_with_a_context(fake):
    model = small_model()
    result = build(TacticSelector(), model)
    report = result.info["fusion_report"]
    assert report["onnx_nodes"] == 2 and report["engine_layers"] == 2
    assert report["layers"][0]["onnx_nodes"] == ["relu1"]
    assert report["precisions"] == {"fp32": 2}
    inspected = next(c for c in fake.calls if c[0] == "inspect")
    assert inspected[1] == fake.LayerInformationFormat.JSON
    assert inspected[2].shapes == {"x": (2, 4)}  # the opt shape of profile 0


def test_check_compatible_compares_release_and_gpu(fake):
    backend = TensorRTBackend()
    ok = {"payload_format": "tensorrt-plan", "backend_version": "10.8.0.43", "target": "sm90"}
    backend.check_compatible(ok)
    backend.check_compatible(dict(ok, backend_version="10.8.0.99"))  # same release
    with pytest.raises(IncompatibleEngineError, match=r"10\.9\.0\.1 but 10\.8\.0\.43"):
        backend.check_compatible(dict(ok, backend_version="10.9.0.1"))
    with pytest.raises(IncompatibleEngineError, match="built for sm89 and this GPU is sm90"):
        backend.check_compatible(dict(ok, target="sm89"))
    backend.check_compatible(dict(ok, target="sm80+"))


def test_load_leaves_the_verdict_on_an_unverified_header_to_tensorrt(monkeypatch):
    trt = make_fake_trt(deserialize_error="Serialization assertion plan version failed")
    _install(monkeypatch, trt, sm="sm90")
    plan = bytearray(trt.plan_bytes())
    plan[25] = 6  # the header bytes say 10.6.0: not a reason to refuse on our own
    with pytest.raises(IncompatibleEngineError,
                       match=r"(?s)plan version failed.*header suggests TensorRT 10\.6\.0, "
                             r"unverified; 10\.8\.0\.43 is installed"):
        TensorRTBackend().load(bytes(plan), {"target": "sm90"})
    assert ("deserialize", len(plan)) in trt.calls  # TensorRT was asked, and it decided


def test_load_hands_engine_and_profiles_to_the_runner(fake, monkeypatch):
    seen: dict[str, Any] = {}

    class Runner:
        def __init__(self, engine, profiles, *, create_context=None, owner=None, device=0):
            seen.update(engine=engine, profiles=profiles, create_context=create_context,
                        owner=owner)

    module = types.ModuleType("regiontrt.backends.trt_runner")
    module.TensorRTRunner = Runner  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "regiontrt.backends.trt_runner", module)
    meta = {"target": "sm90", "backend_info": {"profiles": [PROFILE.to_dict()]}}
    TensorRTBackend().load(fake.plan_bytes(), meta)
    assert seen["profiles"] == [PROFILE]  # the fake engine has none: the metadata's are used
    assert seen["create_context"] is None
    assert isinstance(seen["owner"], fake.Runtime)

