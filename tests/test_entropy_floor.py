"""The entropy calibrator's percentile floor: bounded clipping on long-tailed activations."""

from __future__ import annotations

import numpy as np
import pytest

from regiontrt.calibration import EntropyCalibrator, TensorStats
from regiontrt.errors import RegionConfigError


def stats_of(x: np.ndarray) -> TensorStats:
    s = TensorStats()
    s.update(x)
    return s


@pytest.mark.parametrize("seed", range(5))
def test_floor_bounds_the_clipped_share(seed):
    rng = np.random.default_rng(seed)
    # a long tail: most values small, a few percent spread far out (as in PP-OCR's backbone)
    x = np.concatenate([rng.exponential(0.005, 200_000), rng.exponential(0.1, 5_000)])
    s = stats_of(x.astype(np.float32))
    plain = EntropyCalibrator(floor_percentile=None).compute_amax(s)
    floored = EntropyCalibrator().compute_amax(s)
    clipped = lambda amax: float(np.mean(np.abs(x) > amax))  # noqa: E731
    assert floored >= plain and floored <= s.amax
    assert clipped(floored) <= 2e-4  # 1e-4 target, plus the histogram's bin resolution
    assert floored == pytest.approx(max(plain, s.percentile(99.99)))


def test_plain_search_clips_more_on_the_same_tail():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.exponential(0.005, 200_000), rng.exponential(0.1, 5_000)])
    s = stats_of(x.astype(np.float32))
    plain = EntropyCalibrator(floor_percentile=None).compute_amax(s)
    floored = EntropyCalibrator().compute_amax(s)
    # the plain KL search saturates ten times the values the floor allows
    assert np.mean(np.abs(x) > plain) > 1e-3 > 2e-4 >= np.mean(np.abs(x) > floored)


def test_floor_validation():
    with pytest.raises(RegionConfigError):
        EntropyCalibrator(floor_percentile=0)
