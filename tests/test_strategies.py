"""Each strategy can be subclassed in a few lines, and the builder uses the subclass."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import regiontrt as rt
from regiontrt import demo
from regiontrt.calibration import Calibrator, TensorStats
from regiontrt.data.sources import split_batches
from regiontrt.graph.io import TensorSpec
from regiontrt.precision.types import Precision
from regiontrt.shapes.profiles import Profile, Range

PROFILE = {"input": [(1, 1, 8, 8), (32, 1, 8, 8), (64, 1, 8, 8)]}


def val(region="NA"):
    return split_batches({"input": demo.region_data(region).validation}, 64)


def cal(region="NA"):
    return split_batches({"input": demo.region_data(region).calibration}, 64)


class Fp16Only(rt.PrecisionPolicy):
    """A downstream policy: always try fp16 first, keep the stem conv in fp32."""

    def candidates(self, region):
        return (Precision.FP16, *[p for p in region.precisions if p is not Precision.FP16])

    def compile(self, model, precision, **kwargs):
        self.compiled = [*getattr(self, "compiled", []), precision]
        return super().compile(model, precision, **kwargs)


class HalfMax(Calibrator):
    """A downstream calibrator: clip at 90 % of the observed maximum."""

    needs_histogram = False

    def compute_amax(self, stats: TensorStats) -> float:
        return 0.9 * float(stats.amax)


class BatchSizes(rt.ShapeProfile):
    """A downstream profile: batch sizes of a site, everything else from the model."""

    def __init__(self, sizes):
        super().__init__()
        self.sizes = sorted(sizes)

    def resolve(self, inputs, *, require_all=True):
        spec = inputs[0]
        rest = tuple(int(d) for d in spec.shape[1:])
        lo, hi = self.sizes[0], self.sizes[-1]
        return [Profile({spec.name: Range((lo, *rest), (hi, *rest), (hi, *rest))})]


class CountingTactics(rt.TacticSelector):
    """A downstream tactic selector that records what it configured."""

    calls: list = []  # noqa: RUF012 - shared record for the test

    def configure_onnxruntime(self, options):
        super().configure_onnxruntime(options)
        options.intra_op_num_threads = 1
        CountingTactics.calls.append(options.intra_op_num_threads)


def test_policy_subclass_reorders_and_sees_compiles():
    policy = Fp16Only()
    engine = (rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region("NA")
              .with_shape_profile(PROFILE).with_precision(policy).with_validation(val()).build())
    assert engine.precision == "fp16"
    assert policy.compiled == [Precision.FP16]
    assert engine.metadata["policy"]["class"].endswith("Fp16Only")


def test_calibrator_subclass_sets_the_ranges():
    engine = (rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region("NA")
              .with_shape_profile(PROFILE).with_precision("int8")
              .with_calibrator(HalfMax(), data=cal()).with_validation(val()).build())
    calib = engine.metadata["calibration"]
    assert calib["calibrator"].endswith("HalfMax")
    stats = rt.MinMaxCalibrator().calibrate(demo.load_model(), cal(), list(calib["amax"]))
    for name, amax in calib["amax"].items():
        assert amax == pytest.approx(0.9 * stats.amax[name], rel=1e-5)


def test_shape_profile_subclass_guards_infer():
    engine = (rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region("CERTIFIED")
              .with_shape_profile(BatchSizes([2, 4, 16])).with_validation(
                  split_batches({"input": demo.region_data("CERTIFIED").validation[:32]}, 16))
              .build())
    assert engine.metadata["shape_profiles"] == [{"input": [[2, 1, 8, 8], [16, 1, 8, 8],
                                                            [16, 1, 8, 8]]}]
    with pytest.raises(rt.errors.ShapeOutOfProfile):
        engine.infer(np.zeros((1, 1, 8, 8), np.float32))


def test_tactic_selector_subclass_is_applied():
    CountingTactics.calls.clear()
    (rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region("CERTIFIED")
     .with_tactics(CountingTactics()).with_shape_profile(PROFILE).with_validation(val()).build())
    assert CountingTactics.calls == [1]


# -- ShapeProfile ---------------------------------------------------------------------------------

SPEC = [TensorSpec("x", np.dtype("float32"), ("N", 3, "W"))]


def test_profile_resolution_errors():
    with pytest.raises(rt.errors.ShapeProfileError, match="dynamic dimensions"):
        rt.ShapeProfile().resolve(SPEC)
    assert rt.ShapeProfile().resolve(SPEC, require_all=False)[0].ranges == {}
    with pytest.raises(rt.errors.ShapeProfileError, match="axis 1 is static"):
        rt.ShapeProfile({"x": [(1, 4, 8), (1, 4, 8), (1, 4, 8)]}).resolve(SPEC)
    with pytest.raises(rt.errors.ShapeProfileError, match="rank"):
        rt.ShapeProfile({"x": [(1, 3), (1, 3), (1, 3)]}).resolve(SPEC)
    with pytest.raises(rt.errors.ShapeProfileError, match="unknown inputs"):
        rt.ShapeProfile({"y": [(1,)]}).resolve(SPEC)
    with pytest.raises(rt.errors.ShapeProfileError, match="min <= opt <= max"):
        rt.ShapeProfile({"x": [(4, 3, 8), (1, 3, 8), (8, 3, 8)]})


def test_several_profiles_pick_the_first_that_fits():
    from regiontrt.shapes.profiles import select_profile

    sp = rt.ShapeProfile(profiles=[{"x": [(1, 3, 8), (1, 3, 64), (1, 3, 128)]},
                                   {"x": [(1, 3, 129), (4, 3, 512), (8, 3, 1024)]}])
    profiles = sp.resolve(SPEC)
    assert select_profile(profiles, {"x": (1, 3, 100)}) == 0
    assert select_profile(profiles, {"x": (2, 3, 600)}) == 1
    with pytest.raises(rt.errors.ShapeOutOfProfile, match=r"profile 0.*\n.*profile 1"):
        select_profile(profiles, {"x": (1, 3, 2000)})


def test_bucketing_pads_and_unpads():
    b = rt.Bucketing({"x": {2: [32, 64, 128]}})
    x = np.ones((1, 3, 40), np.float32)
    padded, info = b.pad({"x": x})
    assert padded["x"].shape == (1, 3, 64) and padded["x"][..., 40:].sum() == 0
    np.testing.assert_array_equal(padded["x"][..., :40], x)
    # an output that downsamples the width by 8 is cut back to floor(40 / 8) = 5 steps
    out = b.unpad({"y": np.zeros((1, 8, 2))}, info, {"y": 1})
    assert out["y"].shape == (1, 5, 2)
    _, info = b.pad({"x": np.ones((1, 3, 45), np.float32)})
    assert b.unpad({"y": np.zeros((1, 8, 2))}, info, {"y": 1})["y"].shape == (1, 5, 2)
    with pytest.raises(rt.errors.ShapeOutOfProfile, match="largest bucket"):
        b.pad({"x": np.ones((1, 3, 200), np.float32)})


def test_tactic_selector_validation():
    t = rt.TacticSelector(compute_capabilities=("8.9", "sm120", 86))
    assert t.compute_capabilities == ("sm89", "sm120", "sm86")
    for bad in ({"optimization_level": 9}, {"hardware_compatibility": "any"},
                {"max_tactics": 0}, {"compute_capabilities": ("hopper",)}):
        with pytest.raises(ValueError):
            rt.TacticSelector(**bad)


def test_onnx_model_is_not_mutated_by_builds(tiny_cnn):
    before = tiny_cnn.SerializeToString()
    rt.RegionalEngineBuilder.from_onnx(tiny_cnn).for_region("CERTIFIED").with_validation(
        np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)).build()
    assert tiny_cnn.SerializeToString() == before
    assert isinstance(onnx.load_from_string(before), onnx.ModelProto)
