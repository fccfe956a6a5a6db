"""The `tensorrt` backend where real TensorRT differs from a naive reading of its API.

Each test drives the backend through :func:`regiontrt.testing.make_recording_trt`, whose names,
signatures and enum values ``test_tensorrt_conformance.py`` checks against the compiled bindings,
made to fail the way TensorRT fails: an unverified plan header, plugins, ``set_shape`` raising,
``set_timing_cache`` returning False, a failing parser, a too-old driver, TensorRT 11's enums.
"""

from __future__ import annotations

import json
import logging
import struct
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
from regiontrt.errors import BuildError, IncompatibleEngineError, ShapeProfileError
from regiontrt.precision.types import Precision
from regiontrt.shapes.profiles import Profile, Range
from regiontrt.testing import make_recording_trt

PROFILE = Profile({"x": Range((1, 4), (2, 4), (8, 4))})


def small_model() -> onnx.ModelProto:
    nodes = [oh.make_node("Relu", ["x"], ["y"], name="relu1")]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TP.FLOAT, ["N", 4])],
                          [oh.make_tensor_value_info("y", TP.FLOAT, ["N", 4])])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def install(monkeypatch, trt: types.SimpleNamespace, sm: str | None = "sm90",
            device: str | None = "nvidia-h100-80gb-hbm3") -> types.SimpleNamespace:
    monkeypatch.setattr(TensorRTBackend, "_module", classmethod(lambda cls: trt))
    monkeypatch.setattr(trt_backend, "device_sm", lambda device=0: sm)
    monkeypatch.setattr(trt_backend, "device_name", lambda d=0: device if sm else None)
    monkeypatch.setattr(trt_backend, "gpu_count", lambda: 0 if sm is None else 1)
    monkeypatch.setattr(trt_build, "_LOGGERS", {})
    monkeypatch.setattr(trt_env, "_PLUGINS", {})
    # the CUDA device a plan is deserialized on, recorded in order with TensorRT's calls
    monkeypatch.setattr(trt_backend.cuda, "set_device",
                        lambda device: trt.calls.append(("set_device", device)))
    return trt


def build(tactics: TacticSelector | None = None, profiles: list[Profile] | None = None):
    return TensorRTBackend().build(BuildRequest(
        small_model(), Precision.FP32, [PROFILE] if profiles is None else profiles,
        tactics or TacticSelector(), name="r/fp32"))


def fake_runner(monkeypatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    class Runner:
        def __init__(self, engine, profiles, *, create_context=None, owner=None, device=0):
            seen.update(engine=engine, profiles=profiles, device=device)

    module = types.ModuleType("regiontrt.backends.trt_runner")
    module.TensorRTRunner = Runner  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "regiontrt.backends.trt_runner", module)
    return seen


# -- 1. the plan header is advisory for full TensorRT ------------------------------------------
def test_a_build_whose_plan_header_is_unreadable_still_succeeds(monkeypatch):
    install(monkeypatch, make_recording_trt(plan=b"\x01" * 40))  # no plausible version bytes
    result = build()
    header = result.info["plan_header"]
    assert header["trt_version"] is None and header["verified"] is False
    assert "not a TensorRT" in header["raw"]["error"]
    assert result.backend_version == "10.8.0.43"  # the module's version is what is recorded


def test_load_deserializes_whatever_the_header_bytes_say(monkeypatch):
    trt = install(monkeypatch, make_recording_trt())
    seen = fake_runner(monkeypatch)
    plan = bytearray(trt.plan_bytes())
    plan[24:27] = bytes([99, 99, 99])  # nonsense version bytes: TensorRT decides, not us
    TensorRTBackend().load(bytes(plan), {"target": "sm90"})
    assert ("deserialize", len(plan)) in trt.calls and seen["engine"] is not None


@pytest.mark.parametrize("device", [0, 1])
def test_a_plan_is_deserialized_on_the_chosen_device_and_runs_there(monkeypatch, device):
    trt = install(monkeypatch, make_recording_trt())
    seen = fake_runner(monkeypatch)
    TensorRTBackend(device=device).load(trt.plan_bytes(), {"target": "sm90"})
    order = [c for c in trt.calls if c[0] in ("set_device", "deserialize")]
    assert order[0] == ("set_device", device) and order[-1][0] == "deserialize"
    assert seen["device"] == device  # the runner sets it again in every thread it runs in


def test_an_unverified_header_version_is_not_used_for_compatibility(monkeypatch):
    install(monkeypatch, make_recording_trt())
    meta = {"payload_format": "tensorrt-plan", "target": "sm90",
            "plan_header": {"format": "tensorrt", "trt_version": "10.6.0"}}
    TensorRTBackend().check_compatible(meta)  # only the recorded backend_version counts
    with pytest.raises(IncompatibleEngineError, match=r"10\.6\.0\.1 but 10\.8\.0\.43"):
        TensorRTBackend().check_compatible(dict(meta, backend_version="10.6.0.1"))


def test_a_verified_tensorrt_rtx_plan_is_refused_by_the_tensorrt_backend(monkeypatch):
    trt = install(monkeypatch, make_recording_trt())
    head = bytearray(64 + 24 * 2 + 16)
    head[:4] = b"vtrt"
    head[24:28] = bytes([1, 7, 1, 116])
    struct.pack_into("<Q", head, 16, len(head))
    with pytest.raises(IncompatibleEngineError, match="tensorrt-rtx plan"):
        TensorRTBackend().load(bytes(head), {"target": "sm90"})
    assert not any(c[0] == "deserialize" for c in trt.calls)


def test_deserialize_raising_becomes_a_typed_error(monkeypatch):
    trt = install(monkeypatch, make_recording_trt())

    def boom(self, serialized_engine):
        raise RuntimeError("std::exception in deserializeCudaEngine")

    monkeypatch.setattr(trt.Runtime, "deserialize_cuda_engine", boom)
    with pytest.raises(IncompatibleEngineError, match="std::exception") as info:
        TensorRTBackend().load(trt.plan_bytes(), {"target": "sm90"})
    assert isinstance(info.value.__cause__, RuntimeError)


# -- 2. plugins ---------------------------------------------------------------------------------
def test_plugins_are_registered_once_before_parsing_and_deserializing(monkeypatch):
    trt = install(monkeypatch, make_recording_trt())
    fake_runner(monkeypatch)
    build()
    build()
    TensorRTBackend().load(trt.plan_bytes(), {"target": "sm90"})
    kinds = [c[0] for c in trt.calls]
    assert kinds.count("init_plugins") == 1
    assert kinds.index("init_plugins") < kinds.index("parse") < kinds.index("deserialize")
    assert ("init_plugins", "") in trt.calls  # the default namespace, as Polygraphy uses


def test_plugins_are_registered_before_a_load_in_a_fresh_process(monkeypatch):
    trt = install(monkeypatch, make_recording_trt())
    fake_runner(monkeypatch)
    TensorRTBackend().load(trt.plan_bytes(), {"target": "sm90"})
    kinds = [c[0] for c in trt.calls]
    assert kinds.index("init_plugins") < kinds.index("deserialize")


def test_a_module_without_the_plugin_library_still_builds(monkeypatch, caplog):
    install(monkeypatch, make_recording_trt(plugins=False))
    assert build().payload
    assert trt_env._PLUGINS == {"tensorrt": False}


# -- 4. errors that TensorRT raises instead of returning ------------------------------------
def test_set_shape_raising_becomes_a_shape_profile_error(monkeypatch):
    install(monkeypatch, make_recording_trt(profile_error="Dimension exceeds the int32 range"))
    with pytest.raises(ShapeProfileError, match=r"profile 0 for input 'x'.*int32 range") as info:
        build()
    assert isinstance(info.value.__cause__, RuntimeError)


def test_parser_failure_names_each_node(monkeypatch):
    install(monkeypatch, make_recording_trt(parse_errors=[
        (3, "roi", "RoiAlign", "no importer registered"), (-1, "", "", "bad model")]))
    with pytest.raises(BuildError) as info:
        build()
    text = str(info.value)
    assert "node #3 'roi' (op RoiAlign): no importer registered [UNSUPPORTED_NODE]" in text
    assert "model: bad model" in text and "(2 error(s))" in text


# -- 6. timing caches across devices of one compute capability -----------------------------
def test_a_refused_timing_cache_warns_and_the_build_goes_on(monkeypatch, tmp_path, caplog):
    trt = install(monkeypatch, make_recording_trt(refuse_timing_cache=1))
    path = tmp_path / "tensorrt-10.8.0.43-sm90-nvidia-h100-80gb-hbm3.cache"
    path.write_text(json.dumps({"timed-on-another-h100": 3.0}))
    with caplog.at_level(logging.WARNING, "regiontrt.tensorrt"):
        result = build(TacticSelector(timing_cache=str(tmp_path)))
    tried = [c[1] for c in trt.calls if c[0] == "set_timing_cache"]
    assert tried == [{"timed-on-another-h100": 3.0}, {}]  # then a fresh cache
    assert all(c[2] is False for c in trt.calls if c[0] == "set_timing_cache")
    assert "refused the timing cache" in caplog.text
    applied = result.info["builder_config"]
    assert applied["timing_cache_refused"] is True
    assert json.loads(path.read_text()) == {"layer0": 1.0}  # the fresh cache replaced it


def test_a_cache_refused_even_when_empty_fails_the_build(monkeypatch, tmp_path):
    install(monkeypatch, make_recording_trt(refuse_timing_cache=2))
    with pytest.raises(BuildError, match="refused even an empty timing cache"):
        build(TacticSelector(timing_cache=str(tmp_path)))


def test_cache_files_of_two_gpus_of_one_compute_capability_differ(monkeypatch, tmp_path):
    for device in ("nvidia-h100-80gb-hbm3", "nvidia-h200"):
        install(monkeypatch, make_recording_trt(), device=device)
        build(TacticSelector(timing_cache=str(tmp_path)))
    assert sorted(p.name for p in tmp_path.glob("*.cache")) == [
        "tensorrt-10.8.0.43-sm90-nvidia-h100-80gb-hbm3.cache",
        "tensorrt-10.8.0.43-sm90-nvidia-h200.cache"]


def test_device_names_become_file_name_slugs():
    assert trt_env.slug(b"NVIDIA H100 80GB HBM3\x00\x00junk") == "nvidia-h100-80gb-hbm3"
    assert trt_env.slug("NVIDIA H200 MIG 1g.18gb") == "nvidia-h200-mig-1g-18gb"
    assert trt_env.slug("///") is None


# -- 7. a driver too old for cuda-python 13 ---------------------------------------------------
def test_a_too_old_driver_says_what_to_install(monkeypatch):
    install(monkeypatch, make_recording_trt(), sm=None)
    monkeypatch.setattr(trt_env, "_device_count", lambda: (0, "cudaErrorInsufficientDriver"))
    monkeypatch.setattr(trt_env, "_driver_cuda_version", lambda: 12040)
    with pytest.raises(BuildError, match=r"supports CUDA 12\.4.*r580 or newer.*"
                                         r"regiontrt\[tensorrt-cu12\]"):
        build()
    monkeypatch.setattr(trt_env, "_driver_cuda_version", lambda: None)
    assert trt_env.gpu_problem() == "no NVIDIA driver was found on this machine"
    monkeypatch.setattr(trt_env, "_device_count", lambda: (0, "no-cuda-python"))
    assert "regiontrt[cuda]" in str(trt_env.gpu_problem())


# -- 8. TensorRT 11 --------------------------------------------------------------------------
def test_tensorrt_11_tactic_sources_use_its_own_numbering(monkeypatch):
    trt = install(monkeypatch, make_recording_trt("11.4.0.106"))
    build(TacticSelector(tactic_sources=("EDGE_MASK_CONVOLUTIONS", "JIT_CONVOLUTIONS")))
    assert ("set_tactic_sources", 0b11) in trt.calls  # 3 and 4 in TensorRT 10, 0 and 1 in 11
    assert ("create_network", 0) in trt.calls  # strongly typed by default: no flag


def test_tensorrt_11_refuses_the_removed_tactic_sources_by_name(monkeypatch):
    install(monkeypatch, make_recording_trt("11.4.0.106"))
    for removed in ("CUBLAS", "CUBLAS_LT", "CUDNN"):
        with pytest.raises(BuildError, match=rf"no tactic source '{removed}'.*JIT_CONVOLUTIONS"):
            build(TacticSelector(tactic_sources=(removed,)))


def test_extras_pair_tensorrt_with_the_cuda_python_of_its_cuda_major():
    from pathlib import Path

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())[
        "project"]["optional-dependencies"]
    assert "cuda-python>=12.6.1" in extras["cuda"]  # cuda.bindings exists from 12.6.1
    for name in ("tensorrt", "tensorrt-cu12"):
        assert any(d.startswith("tensorrt-cu12") for d in extras[name]), name
        assert "cuda-python>=12.6.1,<13" in extras[name], name  # cuda-python 13: r580+ driver
    assert any(d.startswith("tensorrt-cu13") for d in extras["tensorrt-cu13"])
    assert "cuda-python>=13.0" in extras["tensorrt-cu13"]
    # the tensorrt-rtx metapackage requires tensorrt_rtx_cu13: its CUDA 13 cuda-python
    assert "cuda-python>=13.0" in extras["rtx"]
    assert not any(d.startswith("cuda-python") and d != "cuda-python>=13.0" for d in extras["rtx"])


# -- shape-tensor outputs: refused at build, not at a load that can never succeed --------------
def test_a_shape_tensor_output_is_refused_at_build(monkeypatch):
    trt = install(monkeypatch, make_recording_trt(shape_outputs=["y"]))
    with pytest.raises(BuildError, match=r"outputs \['y'\] are shape tensors"):
        build()
    assert not any(c[0] == "build" for c in trt.calls)  # nothing was built


def test_real_shape_tensor_outputs_are_seen_by_the_check():
    trt = pytest.importorskip("tensorrt_rtx", reason="needs the tensorrt-rtx package")
    network = trt.Builder(trt.Logger(trt.Logger.ERROR)).create_network(0)
    x = network.add_input("x", trt.float32, (-1, 4))
    network.mark_output(network.add_identity(x).get_output(0))
    trt_build.check_network_outputs(network)  # an execution-tensor output passes
    shape = network.add_shape(x).get_output(0)
    shape.name = "dims"
    assert network.mark_output_for_shapes(shape)
    with pytest.raises(BuildError, match=r"\['dims'\]"):
        trt_build.check_network_outputs(network)
