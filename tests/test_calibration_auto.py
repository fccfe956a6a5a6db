"""The default range choice: per tensor, the candidate with the least int8 error."""

from __future__ import annotations

import numpy as np
import pytest

from regiontrt.calibration import AutoCalibrator, TensorStats, get_calibrator
from regiontrt.calibration.auto import quantization_mse
from regiontrt.errors import RegionConfigError


def true_mse(x: np.ndarray, amax: float) -> float:
    """Symmetric int8 fake quantization of the raw samples."""
    s = amax / 127.0
    q = s * np.clip(np.round(x / s), -127, 127)
    return float(np.mean((x.astype(np.float64) - q) ** 2))


def stats_of(x: np.ndarray) -> TensorStats:
    st = TensorStats()
    for part in np.array_split(x, 5):  # several batches: the histogram grows as it goes
        st.update(part)
    return st


RNG = np.random.default_rng(0)
LONG_TAILED = RNG.standard_t(2, size=300_000).astype(np.float32)
# 99.95 % near zero, 0.05 % in a second mode at +-6: the 99.9th percentile clips that mode.
BIMODAL = np.concatenate([
    RNG.normal(0.0, 0.2, 299_850), RNG.normal(6.0, 0.3, 75), RNG.normal(-6.0, 0.3, 75),
]).astype(np.float32)


@pytest.mark.parametrize("x", [LONG_TAILED, BIMODAL], ids=["long-tailed", "bimodal"])
def test_picks_the_candidate_of_least_error(x):
    calib = AutoCalibrator(percentiles=(99.9, 99.99, 99.999))
    st = stats_of(x)
    name, amax, errors = calib.choose(st)
    cands = calib.candidates(st)
    truth = {k: true_mse(x, v) for k, v in cands.items()}
    # the histogram estimate ranks like the error on the raw samples ...
    for k in cands:
        assert errors[k] == pytest.approx(truth[k], rel=0.05)
    # ... and the pick is the raw samples' least-error candidate
    assert truth[name] == pytest.approx(min(truth.values()), rel=1e-6)
    assert calib.compute_amax(st) == amax == cands[name]
    assert max(truth.values()) > 1.5 * truth[name]  # the choice matters on these tensors


def test_the_two_failure_modes_are_avoided():
    calib = AutoCalibrator(percentiles=(99.9, 99.99, 99.999))
    name, amax, _ = calib.choose(stats_of(LONG_TAILED))
    assert name != "max" and amax < 0.5 * float(np.abs(LONG_TAILED).max())  # tail not covered
    name, amax, _ = calib.choose(stats_of(BIMODAL))
    assert name != "percentile 99.9" and amax > 5.5  # the second mode is kept in range


def test_histogram_error_matches_samples_across_ranges():
    x = RNG.laplace(size=100_000).astype(np.float32)
    st = stats_of(x)
    for amax in (0.5, 2.0, 6.0, float(np.abs(x).max())):
        assert quantization_mse(st, amax) == pytest.approx(true_mse(x, amax), rel=0.05)


def test_named_and_default_and_errors():
    assert isinstance(get_calibrator("auto"), AutoCalibrator)
    assert get_calibrator("auto").name == "auto"
    with pytest.raises(RegionConfigError):
        AutoCalibrator(percentiles=(), entropy=False, include_max=False)
    with pytest.raises(RegionConfigError):
        AutoCalibrator(percentiles=(101.0,))
    empty = TensorStats()
    assert AutoCalibrator().compute_amax(empty) == 0.0
