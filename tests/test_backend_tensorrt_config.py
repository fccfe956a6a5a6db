"""The `tensorrt` backend against a recording fake of the TensorRT module (no TensorRT here).

The fake implements just the API the backend calls, with the names and shapes of TensorRT 10's
Python API, and records every call, so these tests check how a TacticSelector becomes builder
configuration, the timing-cache round trip, the fusion report wiring and the compatibility checks.
"""

from __future__ import annotations

import enum
import json
import types
from typing import Any

import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh

from regiontrt.backends import tensorrt as trt_backend
from regiontrt.backends import trt_build
from regiontrt.backends.base import BuildRequest
from regiontrt.backends.tensorrt import TensorRTBackend
from regiontrt.errors import BuildError, IncompatibleEngineError
from regiontrt.precision import Precision
from regiontrt.shapes import Profile, Range
from regiontrt.tactics import TacticSelector


def make_fake_trt(version: str = "10.8.0.43", *, strongly_typed: int | None = 1,
                  max_num_tactics: bool = True) -> types.SimpleNamespace:
    calls: list[tuple[Any, ...]] = []
    major, minor, patch, build = (int(v) for v in version.split("."))

    flags = {"EXPLICIT_BATCH": 0}
    if strongly_typed is not None:
        flags["STRONGLY_TYPED"] = strongly_typed
    creation = enum.IntEnum("NetworkDefinitionCreationFlag", flags)
    tactic = enum.IntEnum("TacticSource", {"CUBLAS": 0, "CUBLAS_LT": 1, "CUDNN": 2,
                                           "EDGE_MASK_CONVOLUTIONS": 3, "JIT_CONVOLUTIONS": 4})
    pools = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1})
    hwc = enum.IntEnum("HardwareCompatibilityLevel",
                       {"NONE": 0, "AMPERE_PLUS": 1, "SAME_COMPUTE_CAPABILITY": 2})
    verbosity = enum.IntEnum("ProfilingVerbosity",
                             {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2})
    layer_fmt = enum.IntEnum("LayerInformationFormat", {"ONELINE": 0, "JSON": 1})
    io_mode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})

    class ILogger:
        def __init__(self) -> None:
            pass

    class Dims(tuple):
        pass

    class Tensor:
        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape, self.is_shape_tensor = name, Dims(shape), False

    data_type = enum.IntEnum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2})

    class Layer:
        num_outputs = 1

        def get_output(self, j: int) -> types.SimpleNamespace:
            return types.SimpleNamespace(dtype=data_type.FLOAT)

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags, self.inputs, self.num_layers = flags, [], 0

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

        def get_layer(self, i: int) -> Layer:
            return Layer()

    class OnnxParser:
        def __init__(self, network: Network, logger: ILogger) -> None:
            self.network = network
            self.num_errors = 0

        def parse(self, data: bytes) -> bool:
            model = onnx.load_from_string(data)
            for vi in model.graph.input:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1
                             for d in vi.type.tensor_type.shape.dim)
                self.network.inputs.append(Tensor(vi.name, dims))
            self.network.num_layers = len(model.graph.node)
            return True

    class TimingCache:
        def __init__(self, entries: dict[str, float]) -> None:
            self.entries = dict(entries)

        def combine(self, other: TimingCache, ignore_mismatch: bool) -> bool:
            calls.append(("combine", ignore_mismatch))
            for k, v in other.entries.items():
                self.entries.setdefault(k, v)
            return True

        def serialize(self) -> bytes:
            return json.dumps(self.entries, sort_keys=True).encode()

    class Profile_:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[Dims, Dims, Dims]] = {}

        def set_shape(self, name: str, lo: Dims, opt: Dims, hi: Dims) -> None:
            self.shapes[name] = (lo, opt, hi)

    class Config:
        def __init__(self) -> None:
            object.__setattr__(self, "profiles", [])
            object.__setattr__(self, "cache", None)
            if max_num_tactics:
                object.__setattr__(self, "max_num_tactics", -1)

        def __setattr__(self, name: str, value: Any) -> None:
            calls.append(("set", name, value))
            object.__setattr__(self, name, value)

        def add_optimization_profile(self, p: Profile_) -> int:
            self.profiles.append(p)
            return len(self.profiles) - 1

        def set_tactic_sources(self, bits: int) -> bool:
            calls.append(("set_tactic_sources", bits))
            return True

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            calls.append(("set_memory_pool_limit", pool, size))

        def create_timing_cache(self, data: bytes) -> TimingCache:
            return TimingCache(json.loads(data) if data else {})

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            calls.append(("set_timing_cache", dict(cache.entries), ignore_mismatch))
            object.__setattr__(self, "cache", cache)
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.cache

    def plan_bytes() -> bytes:
        head = bytearray(64)
        head[:4] = b"ftrt"
        head[24:28] = bytes([major, minor, patch, build])
        return bytes(head) + b"engine"

    class Builder:
        def __init__(self, logger: ILogger) -> None:
            self.logger = logger

        def create_network(self, flags: int) -> Network:
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile_:
            return Profile_()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            calls.append(("build", network, config))
            if getattr(config, "fail", False):
                self.logger.log(1, "[autotuner] no implementation for conv1")
                return None
            if config.cache is not None:  # the build "times" one more tactic
                config.cache.entries[f"layer{len(config.cache.entries)}"] = 1.0
            return plan_bytes()

    class Inspector:
        execution_context = None

        def get_engine_information(self, fmt: Any) -> str:
            calls.append(("inspect", fmt, self.execution_context))
            return json.dumps({"Layers": [
                {"Name": "conv1 + bn1 + relu1", "LayerType": "CaskConvolution",
                 "Inputs": [{"Format/Datatype": "Row major linear FP32 format"}],
                 "Outputs": [{"Format/Datatype": "Row major linear FP32 format"}]},
                {"Name": "add", "LayerType": "PointWise",
                 "Inputs": [{"Format/Datatype": "Float"}], "Outputs": []}],
                "Bindings": ["x", "y"]})

    class Context:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[int, ...]] = {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            self.shapes[name] = tuple(shape)
            return True

    class Engine:
        num_io_tensors = 0
        num_optimization_profiles = 0

        def create_engine_inspector(self) -> Inspector:
            return Inspector()

        def create_execution_context(self) -> Context:
            return Context()

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            pass

        def deserialize_cuda_engine(self, payload: bytes) -> Engine:
            calls.append(("deserialize", len(payload)))
            return Engine()

    return types.SimpleNamespace(
        __name__="tensorrt", __version__=version, calls=calls, ILogger=ILogger, Dims=Dims,
        Builder=Builder, OnnxParser=OnnxParser, Runtime=Runtime,
        NetworkDefinitionCreationFlag=creation, TacticSource=tactic, MemoryPoolType=pools,
        HardwareCompatibilityLevel=hwc, ProfilingVerbosity=verbosity,
        LayerInformationFormat=layer_fmt, TensorIOMode=io_mode, plan_bytes=plan_bytes)


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


def _install(monkeypatch, trt, sm: str | None) -> None:
    monkeypatch.setattr(TensorRTBackend, "_module", classmethod(lambda cls: trt))
    monkeypatch.setattr(trt_backend, "device_sm", lambda device=0: sm)
    monkeypatch.setattr(trt_backend, "gpu_count", lambda: 0 if sm is None else 1)
    monkeypatch.setattr(trt_build, "_LOGGERS", {})  # a fresh logger for each fake module


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
    assert [p.shapes for p in config.profiles] == [{"x": ((1, 4), (2, 4), (8, 4))}]


def test_tensorrt_11_sets_no_strongly_typed_flag(monkeypatch):
    trt = make_fake_trt("11.1.0.106", strongly_typed=0)
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


def test_builder_failure_reports_the_errors_tensorrt_logged(fake):
    class Failing(TacticSelector):
        def configure(self, config: Any, trt: Any) -> None:
            config.fail = True

    with pytest.raises(BuildError, match=r"(?s)failed to build 'r/fp32'.*no implementation"):
        build(Failing())


def test_building_without_a_gpu_is_refused(monkeypatch):
    trt = make_fake_trt()
    _install(monkeypatch, trt, sm=None)
    with pytest.raises(BuildError, match=r"need an NVIDIA GPU.*tensorrt-rtx"):
        build(TacticSelector())


def test_requested_targets_must_include_the_build_gpu(fake):
    with pytest.raises(BuildError, match=r"GPU it runs on \(sm90\)"):
        build(TacticSelector(compute_capabilities=("sm89",)))


def test_timing_cache_is_loaded_merged_and_saved_per_version_and_gpu(fake, tmp_path):
    path = tmp_path / "tensorrt-10.8.0.43-sm90.cache"
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


def test_load_checks_the_plan_header_before_deserializing(fake, monkeypatch):
    backend = TensorRTBackend()
    plan = bytearray(fake.plan_bytes())
    plan[25] = 6  # header says 10.6.0
    with pytest.raises(IncompatibleEngineError, match=r"10\.6\.0 but 10\.8\.0\.43"):
        backend.load(bytes(plan), {"target": "sm90"})
    assert not any(c[0] == "deserialize" for c in fake.calls)


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

