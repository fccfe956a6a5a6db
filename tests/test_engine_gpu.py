"""Engine.infer and Engine.benchmark end to end on a GPU, through TensorRTRunner.

TensorRT cannot be installed here, so the backend below is a named test double that loads
:class:`regiontrt.testing.FakeCudaEngine` (its execution context launches a real NVRTC kernel)
into the real :class:`TensorRTRunner`: the Engine's guard, the runner's buffers, streams, events
and copies all run on the GPU as they would with a TensorRT plan.
"""

from __future__ import annotations

import numpy as np
import pytest

import regiontrt as rt
from regiontrt.backends.base import Backend, BuildRequest, BuildResult, Runner

pytestmark = pytest.mark.gpu
PROFILE = {"x": [[1, 1], [8, 64], [64, 256]], "k": [[1], [8], [64]]}


class DoubleTensorRTBackend(Backend):
    """Test double of the TensorRT backend: loads the fake engine into the real runner."""

    name = "tensorrt-double"
    payload_format = "tensorrt-plan"

    @classmethod
    def is_available(cls) -> bool:
        return True

    def version(self) -> str:
        return "double"

    def build(self, request: BuildRequest) -> BuildResult:  # pragma: no cover - not used
        raise NotImplementedError

    def load(self, payload, metadata) -> Runner:
        from regiontrt.backends.trt_runner import TensorRTRunner
        from regiontrt.shapes.profiles import Profile
        from regiontrt.testing import FakeCudaEngine

        self.engine = FakeCudaEngine(max_rows=64, max_cols=256)
        profiles = [Profile.from_dict(p) for p in metadata["shape_profiles"]]
        return TensorRTRunner(self.engine, profiles)


def make_engine() -> rt.Engine:
    meta = {
        "region": {"name": "GPU-TEST", "latency_p99_ms": 50.0},
        "precision": "fp32",
        "backend": {"name": "tensorrt-double", "version": "double"},
        "payload_format": "tensorrt-plan",
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["N", "C"]},
                   {"name": "k", "dtype": "int32", "shape": ["N"]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["N", "C"]},
                    {"name": "s", "dtype": "float32", "shape": ["N"]}],
        "shape_profiles": [PROFILE],
    }
    return rt.Engine(meta, b"plan-bytes-of-the-double", backend=DoubleTensorRTBackend())


def test_engine_infer_on_the_gpu_matches_the_reference():
    with make_engine() as engine:
        rng = np.random.default_rng(0)
        for rows, cols in [(8, 64), (1, 1), (64, 256), (3, 17)]:
            x = rng.standard_normal((rows, cols)).astype(np.float32)
            k = rng.integers(-5, 5, rows).astype(np.int32)
            out = engine.infer({"x": x, "k": k})
            ref = engine._backend.engine.reference(x, k)
            np.testing.assert_allclose(out["y"], ref["y"], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(out["s"], ref["s"], rtol=1e-5, atol=1e-4)


def test_engine_guard_refuses_before_any_gpu_work():
    engine = make_engine()
    with pytest.raises(rt.errors.ShapeOutOfProfile):
        engine.infer({"x": np.zeros((65, 8), np.float32), "k": np.zeros(65, np.int32)})
    with pytest.raises(rt.errors.InputError, match="dtype"):
        engine.infer({"x": np.zeros((2, 8), np.float64), "k": np.zeros(2, np.int32)})
    assert engine._runner is None  # nothing loaded, nothing allocated, nothing launched


def test_engine_device_outputs_and_benchmark_with_cuda_events():
    with make_engine() as engine:
        x = np.ones((8, 64), np.float32)
        k = np.zeros(8, np.int32)
        dev = engine.infer({"x": x, "k": k}, outputs="device")
        assert hasattr(dev["y"], "__cuda_array_interface__")
        np.testing.assert_allclose(dev["y"].to_host(), np.full((8, 64), 1.25, np.float32))
        report = engine.benchmark(iterations=50, warmup=5)
        assert report.timer == "cuda-events" and report.batch == 8
        assert report.h2d_ms > 0 and report.compute_ms > 0 and report.d2h_ms > 0
        assert report.p50_ms <= report.p99_ms and report.meets_sla is not None
