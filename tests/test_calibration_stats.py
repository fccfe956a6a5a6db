"""Streaming tensor statistics: range growth, exactness of merged bins, percentiles."""

from __future__ import annotations

import numpy as np
import pytest

from regiontrt.calibration import TensorStats
from regiontrt.errors import DataError


def batches(seed: int, scales: list[float], size: int = 5000) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(size) * s).astype(np.float32) for s in scales]


def test_streaming_equals_histogram_of_everything() -> None:
    # Growing scales force several range doublings (including a jump by 8x).
    data = batches(0, [0.5, 0.7, 1.3, 9.0, 2.0])
    stats = TensorStats(num_bins=256)
    for batch in data:
        stats.update(batch)
    everything = np.abs(np.concatenate(data)).astype(np.float64)
    want, _ = np.histogram(everything, bins=256, range=(0.0, stats.hist_max))
    assert stats.hist.sum() == everything.size == stats.count
    # Merged bins are exact; only values within float32 rounding of an edge may move over.
    assert np.abs(stats.hist - want).sum() <= 4
    assert stats.hist.shape == (256,)
    first_amax = float(np.abs(data[0]).max())
    ratio = stats.hist_max / first_amax
    assert ratio == 2 ** round(np.log2(ratio))  # grew by powers of two only
    assert everything.max() <= stats.hist_max < 2 * everything.max()


def test_min_max_amax_count() -> None:
    stats = TensorStats(num_bins=64)
    stats.update(np.array([[1.0, -3.0], [2.0, 0.5]], dtype=np.float32))
    stats.update(np.array([4.0, -0.25], dtype=np.float64))
    assert (stats.min, stats.max, stats.amax, stats.count) == (-3.0, 4.0, 4.0, 6)


def test_nonfinite_values_are_counted_and_skipped() -> None:
    stats = TensorStats(num_bins=16)
    stats.update(np.array([1.0, np.nan, -np.inf, 2.0, np.inf], dtype=np.float32))
    assert stats.nonfinite == 3
    assert stats.count == 2 and stats.amax == 2.0
    assert stats.hist.sum() == 2


def test_zero_batches_before_the_range_is_known() -> None:
    stats = TensorStats(num_bins=32)
    stats.update(np.zeros(10, dtype=np.float32))
    assert stats.hist_max == 0.0 and stats.hist[0] == 10
    stats.update(np.array([0.0, 1.0, 2.0], dtype=np.float32))
    assert stats.hist[0] == 11 and stats.hist.sum() == 13
    assert stats.hist_max == 2.0 and stats.hist[-1] == 1  # |x| == hist_max: last bin


def test_float16_and_integer_inputs() -> None:
    stats = TensorStats(num_bins=8)
    stats.update(np.array([0.5, -1.5], dtype=np.float16))
    stats.update(np.array([1, -1], dtype=np.int32))
    assert stats.amax == 1.5 and stats.count == 4


def test_without_histogram_only_ranges() -> None:
    stats = TensorStats(num_bins=8, histogram=False)
    stats.update(np.arange(10, dtype=np.float32))
    assert stats.amax == 9.0 and stats.hist.sum() == 0
    assert stats.percentile(50) == 9.0  # no histogram: falls back to amax


def test_percentile_within_one_bin() -> None:
    data = batches(1, [1.0, 1.0, 1.0], size=20000)
    stats = TensorStats(num_bins=2048)
    for batch in data:
        stats.update(batch)
    values = np.abs(np.concatenate(data))
    for q in (50.0, 99.0, 99.99):
        assert abs(stats.percentile(q) - np.percentile(values, q)) <= stats.bin_width
    assert stats.percentile(100.0) <= stats.amax
    with pytest.raises(DataError):
        stats.percentile(101.0)


def test_memory_is_fixed() -> None:
    stats = TensorStats(num_bins=512)
    before = stats.nbytes()
    for batch in batches(2, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]):
        stats.update(batch)
    assert stats.nbytes() == before and stats.hist.size == 512


def test_bad_num_bins() -> None:
    with pytest.raises(DataError):
        TensorStats(num_bins=0)


@pytest.mark.parametrize("late", ["beyond the range", "nan", "inf", "none"])
def test_batches_past_the_first_fold_in_one_pass_or_fall_back_whole(late: str) -> None:
    # Batches of several cache chunks; the value that breaks the one-pass fold (a larger |x|, a
    # NaN, an inf) sits in the last chunk, after earlier chunks were counted: those partial
    # counts must be dropped, not added twice.
    rng = np.random.default_rng(3)
    size = 3 * (1 << 16) + 7
    first = rng.standard_normal(size).astype(np.float32)
    second = (rng.standard_normal(size) * 0.5).astype(np.float32)
    second[0] = float(np.abs(first).max())  # |x| == hist_max stays in range: the last bin
    special = {"beyond the range": 50.0, "nan": np.nan, "inf": np.inf, "none": 0.25}[late]
    second[-1] = special
    stats = TensorStats(num_bins=512)
    stats.update(first)
    stats.update(second)
    finite = np.concatenate([first, second])
    finite = finite[np.isfinite(finite)]
    assert stats.nonfinite == (0 if np.isfinite(special) else 1)
    assert stats.count == finite.size == stats.hist.sum()
    assert (stats.min, stats.max) == (float(finite.min()), float(finite.max()))
    # The documented binning, in the input's precision: floor(|x| * (n / hist_max)).
    scale = np.float32(512 / stats.hist_max)
    index = np.minimum((np.abs(finite) * scale).astype(np.int64), 511)
    if late != "beyond the range":
        assert np.array_equal(stats.hist, np.bincount(index, minlength=512))
    else:  # the range grew: bins merged, exact up to values within rounding of an edge
        want, _ = np.histogram(np.abs(finite).astype(np.float64), 512, (0.0, stats.hist_max))
        assert np.abs(stats.hist - want).sum() <= 16
    grew = late == "beyond the range"
    assert (stats.hist_max > float(np.abs(first).max())) == grew
