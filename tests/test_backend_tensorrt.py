"""Real TensorRT-RTX builds on the CPU: precisions, targets, profiles, parser errors, loading."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

from regiontrt.backends.base import BuildRequest
from regiontrt.backends.plan import read_plan_header
from regiontrt.backends.tactics import TacticSelector
from regiontrt.backends.tensorrt_rtx import TensorRTRTXBackend, _runtime_cache_from
from regiontrt.backends.timing_cache import (
    RuntimeCacheContexts,
    RuntimeCacheFile,
    RuntimeCacheOwner,
)
from regiontrt.backends.trt_build import device_sm
from regiontrt.errors import ArtifactError, BuildError, IncompatibleEngineError, ShapeProfileError
from regiontrt.graph.io import input_specs
from regiontrt.precision.types import Precision
from regiontrt.shapes.profiles import Profile, Range, ShapeProfile

trt = pytest.importorskip("tensorrt_rtx", reason="needs the tensorrt-rtx package (CPU builder)")
pytestmark = pytest.mark.rtx

BATCH = [(1, 3, 16, 16), (2, 3, 16, 16), (8, 3, 16, 16)]


def cnn(kind: str = "fp32") -> onnx.ModelProto:
    """Conv-BN-ReLU twice with a residual Add; FP16 via explicit Casts, INT8 via Q/DQ pairs."""
    rng = np.random.default_rng(0)
    ftype = np.float16 if kind == "fp16" else np.float32
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(nh.from_array(arr, name))
        return name

    x = "x"
    if kind == "fp16":
        nodes.append(oh.make_node("Cast", ["x"], ["x16"], name="cast_in", to=TP.FLOAT16))
        x = "x16"

    def block(i: int, inp: str, cin: int, cout: int) -> str:
        w = rng.standard_normal((cout, cin, 3, 3)) * 0.1
        if kind == "int8":
            s = const(f"xs{i}", np.array(0.05, np.float32))
            z = const(f"xz{i}", np.array(0, np.int8))
            nodes.append(oh.make_node("QuantizeLinear", [inp, s, z], [f"xq{i}"], name=f"q{i}"))
            nodes.append(oh.make_node("DequantizeLinear", [f"xq{i}", s, z], [f"xd{i}"],
                                      name=f"dq{i}"))
            wq = const(f"wq{i}", np.clip(np.round(w / 0.005), -127, 127).astype(np.int8))
            ws = const(f"ws{i}", np.full(cout, 0.005, np.float32))
            wz = const(f"wz{i}", np.zeros(cout, np.int8))
            nodes.append(oh.make_node("DequantizeLinear", [wq, ws, wz], [f"wd{i}"],
                                      name=f"dqw{i}", axis=0))
            inp, wname = f"xd{i}", f"wd{i}"
        else:
            wname = const(f"w{i}", w.astype(ftype))
        nodes.append(oh.make_node("Conv", [inp, wname], [f"c{i}"], name=f"conv{i}", pads=[1] * 4))
        bn = [const(f"{p}{i}", v.astype(ftype)) for p, v in (
            ("g", rng.uniform(0.5, 1.5, cout)), ("b", rng.standard_normal(cout) * 0.1),
            ("m", rng.standard_normal(cout) * 0.1), ("v", rng.uniform(0.5, 1.5, cout)))]
        nodes.append(oh.make_node("BatchNormalization", [f"c{i}", *bn], [f"n{i}"], name=f"bn{i}"))
        nodes.append(oh.make_node("Relu", [f"n{i}"], [f"r{i}"], name=f"relu{i}"))
        return f"r{i}"

    a = block(1, x, 3, 8)
    b = block(2, a, 8, 8)
    nodes.append(oh.make_node("Add", [a, b], ["sum"], name="add"))
    if kind == "fp16":
        nodes.append(oh.make_node("Cast", ["sum"], ["y"], name="cast_out", to=TP.FLOAT))
    else:
        nodes.append(oh.make_node("Identity", ["sum"], ["y"], name="out"))
    graph = oh.make_graph(
        nodes, "cnn", [oh.make_tensor_value_info("x", TP.FLOAT, ["N", 3, 16, 16])],
        [oh.make_tensor_value_info("y", TP.FLOAT, ["N", 8, 16, 16])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def request(model: onnx.ModelProto, profiles: list[Profile] | None = None,
            **tactics: object) -> BuildRequest:
    if profiles is None:
        profiles = ShapeProfile({"x": BATCH}).resolve(input_specs(model))
    tactics.setdefault("optimization_level", 0)
    return BuildRequest(model, Precision.FP32, profiles, TacticSelector(**tactics), name="test")


@pytest.fixture(autouse=True)
def _no_cuda_device(monkeypatch):
    """Loading pins a CUDA device first; these tests run without one."""
    from regiontrt.backends import cuda

    monkeypatch.setattr(cuda, "set_device", lambda device: None)


@pytest.fixture(scope="module")
def backend() -> TensorRTRTXBackend:
    return TensorRTRTXBackend()


@pytest.mark.parametrize("kind", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("targets", [("sm89",), ("sm120",), ("sm89", "sm120")])
def test_builds_each_precision_for_requested_targets(backend, kind, targets):
    result = backend.build(request(cnn(kind), compute_capabilities=targets))
    header = read_plan_header(result.payload)
    assert result.payload_format == "tensorrt-rtx-plan"
    assert result.backend_version == trt.__version__ == header.trt_version
    assert header.format == "tensorrt-rtx"
    assert header.compute_capabilities == targets
    assert result.target == "+".join(targets)
    assert result.runnable_here == (device_sm() in targets)
    info = result.info
    assert info["plan_header"] == header.to_dict()
    assert info["builder_config"]["compute_capabilities"] == list(targets)
    assert info["builder_config"]["optimization_level"] == 0
    assert info["profiles"] == [{"x": [list(s) for s in BATCH]}]
    assert info["build_seconds"] > 0
    assert info["gpu"] == device_sm()
    assert info["onnx_nodes"] == len(cnn(kind).graph.node)
    dtypes = info["network_dtypes"]  # precision comes from the graph (strongly typed network)
    assert ("HALF" in dtypes) == (kind == "fp16")
    assert ("INT8" in dtypes) == (kind == "int8")
    if not result.runnable_here:
        assert "skipped" in info["fusion_report"]


def test_default_targets_without_a_gpu(backend):
    if device_sm() is not None:
        pytest.skip("needs a machine without a GPU (with one, RTX builds for the current GPU)")
    result = backend.build(request(cnn()))
    header = read_plan_header(result.payload)
    assert result.info["builder_config"]["compute_capabilities"].startswith("default")
    assert {"sm89", "sm120"} <= set(header.compute_capabilities)
    assert result.target == "+".join(header.compute_capabilities)


def test_unknown_target_is_refused_with_the_supported_list(backend):
    with pytest.raises(BuildError, match=r"cannot target \['sm90'\].*sm89"):
        backend.build(request(cnn(), compute_capabilities=("sm90",)))


def _with_output_node(model: onnx.ModelProto, node: onnx.NodeProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.node[-1].output[0] = "pre"
    node.input[0] = "pre"
    out.graph.node.append(node)
    return out


def test_parser_error_names_custom_domain_node(backend):
    model = _with_output_node(cnn(), oh.make_node("FancyOp", ["pre"], ["y"], name="my_fancy",
                                                  domain="com.example"))
    model.opset_import.append(oh.make_opsetid("com.example", 1))
    with pytest.raises(BuildError) as info:
        backend.build(request(model, compute_capabilities=("sm89",)))
    text = str(info.value)
    assert "'my_fancy'" in text and "op FancyOp" in text and "node #" in text


def test_parser_error_names_unsupported_standard_node(backend):
    model = _with_output_node(cnn(), oh.make_node("StringNormalizer", ["pre"], ["y"],
                                                  name="normalise_me"))
    with pytest.raises(BuildError, match=r"'normalise_me' \(op StringNormalizer\)"):
        backend.build(request(model, compute_capabilities=("sm89",)))


def test_node_without_operator_is_named(backend):
    model = cnn()
    model.graph.node[0].op_type = ""  # no importer (nor plugin) matches an empty operator
    with pytest.raises(BuildError, match=r"(?s)rejected the model 'test'.*node #0 'conv1'"):
        backend.build(request(model, compute_capabilities=("sm89",)))


def test_profile_contradicting_a_static_dim_is_refused(backend):
    bad = Profile({"x": Range((1, 3, 16, 16), (2, 3, 16, 16), (8, 3, 32, 16))})
    with pytest.raises(ShapeProfileError, match=r"'x' axis 2 is static \(16\).*16..32"):
        backend.build(request(cnn(), [bad], compute_capabilities=("sm89",)))


def test_dynamic_input_without_range_is_named(backend):
    with pytest.raises(ShapeProfileError, match=r"input 'x' has dynamic axes \[0\]"):
        backend.build(request(cnn(), [Profile({})], compute_capabilities=("sm89",)))


def test_profile_naming_unknown_input_is_refused(backend):
    extra = Profile({"x": Range(*BATCH), "z": Range((1,), (1,), (1,))})
    with pytest.raises(ShapeProfileError, match=r"unknown inputs \['z'\]"):
        backend.build(request(cnn(), [extra], compute_capabilities=("sm89",)))


def test_two_profiles_are_both_built(backend):
    profiles = [Profile({"x": Range(*BATCH)}),
                Profile({"x": Range((16, 3, 16, 16), (16, 3, 16, 16), (32, 3, 16, 16))})]
    result = backend.build(request(cnn(), profiles, compute_capabilities=("sm89",)))
    assert result.info["profiles"] == [p.to_dict() for p in profiles]


@pytest.fixture(scope="module")
def built(backend):
    result = backend.build(request(cnn(), compute_capabilities=("sm89", "sm120")))
    metadata = {"payload_format": result.payload_format, "backend_version": result.backend_version,
                "target": result.target, "backend_info": result.info}
    return result, metadata


def test_check_compatible_refuses_another_version(backend, built):
    _, metadata = built
    old = dict(metadata, backend_version="1.6.0.1")
    with pytest.raises(IncompatibleEngineError, match=r"1\.6\.0\.1 but 1\.7"):
        backend.check_compatible(old)


def test_check_compatible_reads_the_pipeline_metadata_layout(backend, built):
    result, _ = built
    metadata = {"backend": {"name": "tensorrt-rtx", "version": "1.6.0.1"},
                "payload_format": result.payload_format, "target": result.target,
                "build": result.info}
    with pytest.raises(IncompatibleEngineError, match=r"1\.6\.0\.1 but 1\.7"):
        backend.check_compatible(metadata)
    metadata["backend"]["version"] = None  # then the plan header recorded at build time decides
    metadata["build"] = dict(result.info, plan_header=dict(result.info["plan_header"],
                                                           trt_version="1.5.0.9"))
    with pytest.raises(IncompatibleEngineError, match=r"1\.5\.0\.9 but 1\.7"):
        backend.check_compatible(metadata)


def test_check_compatible_refuses_another_payload_format(backend, built):
    _, metadata = built
    with pytest.raises(IncompatibleEngineError, match="tensorrt-plan"):
        backend.check_compatible(dict(metadata, payload_format="tensorrt-plan"))


def test_load_refuses_when_the_gpu_is_not_targeted(backend, built):
    result, metadata = built
    if device_sm() in ("sm89", "sm120"):
        pytest.skip("this GPU is a target of the plan, so it would load")
    with pytest.raises(IncompatibleEngineError, match="GPU"):
        backend.load(result.payload, metadata)


def test_load_refuses_a_truncated_plan(backend, built, monkeypatch):
    from regiontrt.backends import tensorrt_rtx

    result, metadata = built
    monkeypatch.setattr(tensorrt_rtx, "device_sm", lambda device=0: "sm89")
    monkeypatch.setattr(TensorRTRTXBackend, "_check_validity", lambda *a: None)  # needs a GPU
    with pytest.raises(ArtifactError, match="truncated"):
        backend.load(result.payload[:-100], metadata)


def test_load_asks_the_library_before_reading_any_header_bits(backend, built, monkeypatch):
    from regiontrt.backends import tensorrt_rtx

    _, metadata = built
    seen = []

    def validity(self, trt, runtime, payload):
        seen.append(payload)
        raise IncompatibleEngineError("the library says no")

    monkeypatch.setattr(tensorrt_rtx, "device_sm", lambda device=0: "sm89")
    monkeypatch.setattr(TensorRTRTXBackend, "_check_validity", validity)
    with pytest.raises(IncompatibleEngineError, match="the library says no"):
        backend.load(b"\0" * 10, metadata)  # our header reader would call this truncated
    assert seen == [b"\0" * 10]


def test_load_without_a_gpu_says_why(backend, built, monkeypatch):
    from regiontrt.backends import tensorrt_rtx

    result, metadata = built
    monkeypatch.setattr(tensorrt_rtx, "device_sm", lambda device=0: None)
    with pytest.raises(IncompatibleEngineError, match="needs an NVIDIA GPU; none is usable"):
        backend.load(result.payload, metadata)


def test_runtime_cache_setting_is_recorded_and_used_at_load(backend, tmp_path):
    path = str(tmp_path / "rtx.cache")
    result = backend.build(request(cnn(), compute_capabilities=("sm89",), runtime_cache=path,
                                   timing_cache=str(tmp_path / "t")))
    applied = result.info["builder_config"]
    assert applied["runtime_cache"] == path
    assert applied["timing_cache"].startswith("unsupported")
    assert _runtime_cache_from({"backend_info": result.info}) == path
    assert TensorRTRTXBackend(runtime_cache="/other").runtime_cache == "/other"


class _FakeRuntimeCache:
    def __init__(self) -> None:
        self.blob = b""

    def deserialize(self, data: bytes) -> bool:
        self.blob = bytes(data)
        return data.startswith(b"ok")

    def serialize(self) -> bytes:
        return self.blob + b"+kernels"


class _FakeRuntimeConfig:
    def __init__(self) -> None:
        self.cache: _FakeRuntimeCache | None = None

    def create_runtime_cache(self) -> _FakeRuntimeCache:
        return _FakeRuntimeCache()

    def set_runtime_cache(self, cache: _FakeRuntimeCache) -> bool:
        self.cache = cache
        return True


class _FakeEngine:
    def create_runtime_config(self) -> _FakeRuntimeConfig:
        return _FakeRuntimeConfig()

    def create_execution_context(self, runtime_config: object = None) -> tuple[str, object]:
        return ("context", runtime_config)


def test_rtx_contexts_carry_the_runtime_cache_and_save_it(tmp_path):
    cache_file = RuntimeCacheFile(tmp_path / "rtx.cache")
    cache_file.write(b"ok-previous")
    contexts = RuntimeCacheContexts(cache_file)
    kind, runtime_config = contexts(_FakeEngine())
    assert kind == "context"
    assert runtime_config.cache is not None and runtime_config.cache.blob == b"ok-previous"
    owner = RuntimeCacheOwner("runtime", contexts)
    owner.close()
    assert cache_file.read() == b"ok-previous+kernels"
    assert owner.runtime is None
    assert RuntimeCacheContexts(None)(_FakeEngine()) == ("context", None)


def test_rtx_engine_validity_diagnostics_become_the_error_message():
    class Runtime:
        def get_engine_validity(self, payload: bytes) -> tuple[object, int]:
            diag = trt.EngineInvalidityDiagnostics
            return trt.EngineValidity.INVALID, int(diag.UNSUPPORTED_CC) | int(diag.OLD_CUDA_DRIVER)

    with pytest.raises(IncompatibleEngineError, match="unsupported cc, old cuda driver"):
        TensorRTRTXBackend()._check_validity(trt, Runtime(), b"plan")

    class Fine(Runtime):
        def get_engine_validity(self, payload: bytes) -> tuple[object, int]:
            return trt.EngineValidity.SUBOPTIMAL, 0

    TensorRTRTXBackend()._check_validity(trt, Fine(), b"plan")


def test_gpu_checks_explain_what_to_do(monkeypatch):
    from regiontrt.backends import tensorrt_rtx as module

    backend = TensorRTRTXBackend()
    monkeypatch.setattr(module, "device_sm", lambda device=0: "sm90")
    with pytest.raises(IncompatibleEngineError, match=r"cannot target sm90.*'tensorrt' backend"):
        backend._check_gpu(None, ("sm89",))
    monkeypatch.setattr(module, "device_sm", lambda device=0: "sm86")
    with pytest.raises(IncompatibleEngineError, match="including 'sm86'"):
        backend._check_gpu("sm89+sm120", ())
    backend._check_gpu(None, ("sm86",))


# -- the runtime's VALID verdict decides; unknown target bits are kept, never refused on ------
def test_a_default_build_keeps_its_unknown_target_bit(backend):
    if device_sm() is not None:
        pytest.skip("needs a machine without a GPU (with one, RTX builds for the current GPU)")
    header = read_plan_header(backend.build(request(cnn())).payload)
    unknown = header.raw["unknown_cc_bits"]
    assert unknown, "TensorRT-RTX 1.7 default builds set a bit outside the known targets"
    assert [f"cc-bit{b}" for b in unknown] == [c for c in header.compute_capabilities
                                               if c.startswith("cc-bit")]
    assert {"sm80", "sm86", "sm89", "sm120", "sm121"} <= set(header.compute_capabilities)


@pytest.mark.parametrize("valid", [True, False])
def test_a_valid_verdict_outranks_our_header_reading(backend, built, monkeypatch, valid):
    from regiontrt.backends import tensorrt_rtx

    result, metadata = built  # built for sm89+sm120 only
    monkeypatch.setattr(tensorrt_rtx, "device_sm", lambda device=0: "sm90")  # not a target
    monkeypatch.setattr(TensorRTRTXBackend, "_check_validity", lambda *a: valid)
    backend.check_compatible(metadata)  # metadata alone never refuses a present GPU
    if valid:  # the runtime vouched: neither the targets nor a header we cannot read refuse
        assert backend._preflight(trt, result.payload, metadata).compute_capabilities
        assert backend._preflight(trt, result.payload[:-100], metadata).verified is False
    else:  # the runtime could not say: our header reading refuses, with reasons
        with pytest.raises(IncompatibleEngineError, match="targets sm89, sm120"):
            backend._preflight(trt, result.payload, metadata)
        with pytest.raises(ArtifactError, match="truncated"):
            backend._preflight(trt, result.payload[:-100], metadata)


def test_an_unknown_target_bit_is_never_a_reason_to_refuse(backend, monkeypatch):
    from regiontrt.backends import tensorrt_rtx

    monkeypatch.setattr(tensorrt_rtx, "device_sm", lambda device=0: "sm130")
    backend._check_gpu(None, ("sm89", "cc-bit6"))  # bit 6 may well be this GPU
    with pytest.raises(IncompatibleEngineError, match="targets sm89"):
        backend._check_gpu(None, ("sm89",))
