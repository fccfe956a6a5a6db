"""The `tensorrt` backend against a real TensorRT on a real GPU (marker ``tensorrt``).

Nothing here has run on our machines: full TensorRT cannot be installed where regiontrt is
developed (see docs/tensorrt.md). A user with TensorRT 10 or 11, cuda-python and an NVIDIA GPU
runs these with ``python -m pytest -m tensorrt -rs`` to check, on their machine, the assumptions
the fakes encode: plugins registered before parsing, the plan header's version bytes (advisory:
a mismatch is reported as an expected failure, never a broken build), timing caches keyed by GPU,
data-dependent outputs through the output allocator, profile switches and misaligned device
views. Everything else skips with the reason.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

from regiontrt.backends.base import BuildRequest
from regiontrt.backends.plan import advisory_plan_header, same_release
from regiontrt.backends.tactics import TacticSelector
from regiontrt.backends.tensorrt import TensorRTBackend
from regiontrt.backends.trt_build import device_name, device_sm, gpu_problem
from regiontrt.precision.types import Precision
from regiontrt.shapes.profiles import Profile, Range

pytestmark = pytest.mark.tensorrt

if not TensorRTBackend.is_available():
    pytest.skip("needs TensorRT 10/11 (pip install 'regiontrt[tensorrt-cu12]' or "
                "'regiontrt[tensorrt-cu13]') and an NVIDIA GPU", allow_module_level=True)
if gpu_problem() is not None:
    pytest.skip(f"needs an NVIDIA GPU: {gpu_problem()}", allow_module_level=True)

RNG = np.random.default_rng(7)


def _model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    model = oh.make_model(oh.make_graph(nodes, "g", inputs, outputs, list(inits)),
                          opset_imports=[oh.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def conv_model() -> onnx.ModelProto:
    w = nh.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    return _model([oh.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4),
                   oh.make_node("Relu", ["c"], ["y"])],
                  [oh.make_tensor_value_info("x", TP.FLOAT, ["N", 3, 8, 8])],
                  [oh.make_tensor_value_info("y", TP.FLOAT, ["N", 4, 8, 8])], [w])


def reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)  # type: ignore[no-any-return]


def build_and_load(model: onnx.ModelProto, profiles: list[Profile], **tactics):
    backend = TensorRTBackend()
    tactics.setdefault("optimization_level", 0)
    result = backend.build(BuildRequest(model, Precision.FP32, profiles,
                                        TacticSelector(**tactics), name="real"))
    meta = {"payload_format": result.payload_format, "backend_version": result.backend_version,
            "target": result.target, "backend_info": result.info}
    return result, backend.load(result.payload, meta)


BATCH = Profile({"x": Range((1, 3, 8, 8), (2, 3, 8, 8), (8, 3, 8, 8))})


def test_build_load_and_run_match_onnx_runtime():
    model = conv_model()
    result, runner = build_and_load(model, [BATCH])
    with runner:
        for n in (1, 3, 8):
            x = RNG.standard_normal((n, 3, 8, 8)).astype(np.float32)
            np.testing.assert_allclose(runner.run({"x": x})["y"], reference(model, {"x": x})[0],
                                       rtol=1e-3, atol=1e-3)
    assert result.target == device_sm()


def test_the_plan_header_version_bytes_on_this_release():
    import tensorrt

    result, runner = build_and_load(conv_model(), [BATCH])
    runner.close()
    header = advisory_plan_header(result.payload)
    if not same_release(header.trt_version, tensorrt.__version__):  # advisory: report, go on
        pytest.xfail(f"TensorRT {tensorrt.__version__}'s plan header does not carry its version "
                     f"at bytes 24-26 (read {header.raw.get('version_bytes')}); regiontrt "
                     "does not depend on it, but please report it")


def test_a_plugin_op_builds_because_plugins_are_registered():
    # RoiAlign is imported by the ONNX parser through the ROIAlign plugin (TensorRT 10.x)
    rois = nh.from_array(np.array([[0, 0, 6, 6], [1, 1, 7, 7]], np.float32), "rois")
    idx = nh.from_array(np.array([0, 0], np.int64), "idx")
    model = _model([oh.make_node("RoiAlign", ["x", "rois", "idx"], ["y"], output_height=2,
                                 output_width=2, sampling_ratio=2)],
                   [oh.make_tensor_value_info("x", TP.FLOAT, [1, 3, 8, 8])],
                   [oh.make_tensor_value_info("y", TP.FLOAT, [2, 3, 2, 2])], [rois, idx])
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    _, runner = build_and_load(model, [])
    with runner:
        np.testing.assert_allclose(runner.run({"x": x})["y"], reference(model, {"x": x})[0],
                                   rtol=1e-3, atol=1e-3)


def test_timing_cache_is_reused_and_keyed_by_gpu(tmp_path):
    for _ in range(2):
        result, runner = build_and_load(conv_model(), [BATCH], timing_cache=str(tmp_path))
        runner.close()
    files = list(tmp_path.glob("*.cache"))
    assert len(files) == 1 and str(device_name()) in files[0].name
    assert result.info["builder_config"]["timing_cache_saved"]["merged"] is True
    assert "timing_cache_refused" not in result.info["builder_config"]


def test_data_dependent_output_through_the_allocator_even_when_empty():
    model = _model([oh.make_node("NonZero", ["x"], ["y"])],
                   [oh.make_tensor_value_info("x", TP.FLOAT, [4, 4])],
                   [oh.make_tensor_value_info("y", TP.INT64, [2, None])])
    _, runner = build_and_load(model, [])
    with runner:
        for x in (np.eye(4, dtype=np.float32), np.zeros((4, 4), np.float32)):
            got = runner.run({"x": x})["y"]
            np.testing.assert_array_equal(got, np.stack(np.nonzero(x)))
        assert runner.data_dependent_outputs == {"y"}


def test_two_profiles_switch_per_call():
    model = conv_model()
    big = Profile({"x": Range((9, 3, 8, 8), (16, 3, 8, 8), (32, 3, 8, 8))})
    _, runner = build_and_load(model, [BATCH, big])
    with runner:
        for n in (2, 20, 1, 32):
            x = RNG.standard_normal((n, 3, 8, 8)).astype(np.float32)
            np.testing.assert_allclose(runner.run({"x": x})["y"], reference(model, {"x": x})[0],
                                       rtol=1e-3, atol=1e-3)


def test_a_misaligned_torch_view_is_staged():
    torch = pytest.importorskip("torch", reason="needs PyTorch with CUDA for a device view")
    model = conv_model()
    host = RNG.standard_normal((4, 3, 8, 8)).astype(np.float32)
    padded = torch.from_numpy(np.concatenate([np.zeros(16, np.float32), host.ravel()])).cuda()
    view = padded[16:].reshape(4, 3, 8, 8)  # 64 bytes into the allocation: not 256-aligned
    _, runner = build_and_load(model, [BATCH])
    with runner:
        got = runner.run({"x": view})["y"]
        assert runner.stats.staged_misaligned == 1
    np.testing.assert_allclose(got, reference(model, {"x": host})[0], rtol=1e-3, atol=1e-3)
