"""Shared fixtures, and the skips for tests that need what this machine may lack."""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import regiontrt.report  # noqa: F401 - registers the notebook views (_repr_html_) tests call


@functools.lru_cache(maxsize=1)
def _gpu_reason() -> str | None:
    """Why GPU tests cannot run here, or None when a CUDA GPU is usable."""
    if importlib.util.find_spec("cuda") is None:
        return "needs cuda-python (pip install 'regiontrt[cuda]') and an NVIDIA GPU"
    try:
        from cuda.bindings import runtime as cudart

        err, count = cudart.cudaGetDeviceCount()
    except Exception as exc:  # no driver library at all
        return f"needs an NVIDIA GPU with a CUDA driver ({exc.__class__.__name__})"
    if int(err) != 0 or count < 1:
        return f"needs an NVIDIA GPU with a CUDA driver (cudaGetDeviceCount: {err})"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu = _gpu_reason()
    rtx = importlib.util.find_spec("tensorrt_rtx") is None
    for item in items:
        if gpu and "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=gpu))
        if rtx and "rtx" in item.keywords:
            item.add_marker(pytest.mark.skip(
                reason="needs tensorrt-rtx (pip install 'regiontrt[rtx]'; builds on the CPU)"))


def make_cnn(opset: int = 13, seed: int = 0, channels: int = 8) -> onnx.ModelProto:
    """A tiny residual CNN (Conv-BN-Relu, Conv-BN, Add, Relu, GAP, Gemm) with a dynamic batch."""
    rng = np.random.default_rng(seed)
    c = channels

    def init(name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
        return helper.make_tensor(name, TensorProto.FLOAT, shape,
                                  (rng.standard_normal(shape) * scale).astype(np.float32).ravel())

    def bn(prefix: str) -> list[onnx.TensorProto]:
        return [
            helper.make_tensor(f"{prefix}_s", TensorProto.FLOAT, [c],
                               (1 + 0.1 * rng.standard_normal(c)).astype(np.float32)),
            helper.make_tensor(f"{prefix}_b", TensorProto.FLOAT, [c],
                               (0.1 * rng.standard_normal(c)).astype(np.float32)),
            helper.make_tensor(f"{prefix}_m", TensorProto.FLOAT, [c],
                               (0.1 * rng.standard_normal(c)).astype(np.float32)),
            helper.make_tensor(f"{prefix}_v", TensorProto.FLOAT, [c],
                               (1 + 0.1 * rng.random(c)).astype(np.float32)),
        ]

    nodes = [
        helper.make_node("Conv", ["input", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c0", "bn0_s", "bn0_b", "bn0_m", "bn0_v"], ["b0"],
                         name="bn0"),
        helper.make_node("Relu", ["b0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn1_s", "bn1_b", "bn1_m", "bn1_v"], ["b1"],
                         name="bn1"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c2", "bn2_s", "bn2_b", "bn2_m", "bn2_v"], ["b2"],
                         name="bn2"),
        helper.make_node("Add", ["b2", "r0"], ["a0"], name="add0"),
        helper.make_node("Relu", ["a0"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    inits = [init("w0", c, 1, 3, 3), init("w1", c, c, 3, 3, scale=0.2),
             init("w2", c, c, 3, 3, scale=0.2), init("wf", 10, c), init("bf", 10, scale=0.1)]
    for i in range(3):
        inits += bn(f"bn{i}")
    graph = helper.make_graph(
        nodes, "tiny_resnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="regiontrt-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory):
    """``(private, public)`` PEM keys. A TensorRT plan for a region that forbids a precision loads
    only from a signed file (issue 19), so tests that save such plans sign them with these."""
    pytest.importorskip("model_signing", reason="needs model-signing (the fleet extra)")
    from regiontrt.runtime.trust import keygen

    return keygen(tmp_path_factory.mktemp("signing-keys"))


@pytest.fixture(scope="session")
def tiny_cnn() -> onnx.ModelProto:
    return make_cnn()


@pytest.fixture(scope="session")
def demo_model_path():
    from regiontrt import demo

    return demo.model_path()


def demo_engine(region: str):
    """The demo model built for a preset region on its own data (int8 regions calibrate)."""
    import regiontrt as rt
    from regiontrt import demo
    from regiontrt.data.sources import split_batches
    from regiontrt.demo.run import PROFILE

    d = demo.region_data(region)
    builder = (rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region(region)
               .with_shape_profile(PROFILE)
               .with_validation(split_batches({"input": d.validation}, 64)))
    if region != "EU":
        builder = builder.with_calibrator("entropy",
                                          data=split_batches({"input": d.calibration}, 64))
    return builder.build()


@pytest.fixture(scope="session")
def na_engine():
    """The demo NA engine (int8), built once for the serving tests."""
    return demo_engine("NA")
