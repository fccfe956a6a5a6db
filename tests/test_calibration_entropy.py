"""The vectorised entropy search against the per-candidate reference loop."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regiontrt.calibration import (
    entropy_divergences,
    entropy_divergences_reference,
    entropy_threshold,
    entropy_threshold_reference,
)
from regiontrt.errors import DataError


def assert_same_search(hist: np.ndarray, num_quant_bins: int, start_bin: int) -> None:
    fast = entropy_divergences(hist, num_quant_bins, start_bin)
    ref = entropy_divergences_reference(hist, num_quant_bins, start_bin)
    assert fast.shape == ref.shape == (hist.size - start_bin,)
    np.testing.assert_array_equal(np.isinf(fast), np.isinf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(fast[finite], ref[finite], rtol=1e-9, atol=1e-11)
    got = entropy_threshold(hist, num_quant_bins, start_bin)
    want = entropy_threshold_reference(hist, num_quant_bins, start_bin)
    assert start_bin <= got < hist.size
    if got != want:
        # Only a floating-point near-tie may separate the two: same divergence either way.
        a, b = ref[got - start_bin], ref[want - start_bin]
        assert np.isfinite(a) and abs(a - b) <= 1e-10 * (1 + abs(b)), (got, want, a, b)


@st.composite
def histograms(draw: st.DrawFn) -> tuple[np.ndarray, int, int]:
    num_quant_bins = draw(st.sampled_from([4, 8, 16, 128]))
    start_bin = num_quant_bins + draw(st.integers(0, 24))
    num_bins = start_bin + draw(st.integers(1, 3 * num_quant_bins + 40))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["dense", "sparse", "zero_heavy", "spike", "gaussian", "tail"]))
    rng = np.random.default_rng(seed)
    if kind == "dense":
        hist = rng.integers(0, 1000, num_bins)
    elif kind == "sparse":
        hist = rng.integers(0, 50, num_bins) * (rng.random(num_bins) < 0.1)
    elif kind == "zero_heavy":
        hist = rng.integers(0, 20, num_bins) * (rng.random(num_bins) < 0.5)
        hist[0] = rng.integers(10**5, 10**7)
    elif kind == "spike":
        hist = np.zeros(num_bins, dtype=np.int64)
        hist[rng.integers(0, num_bins)] = rng.integers(1, 10**6)
    elif kind == "gaussian":
        x = np.abs(rng.standard_normal(rng.integers(100, 20000)))
        hist, _ = np.histogram(x, bins=num_bins, range=(0, x.max() * rng.uniform(1, 2)))
    else:  # heavy tail: a few large outliers far beyond the bulk
        x = np.abs(rng.standard_cauchy(rng.integers(100, 5000)))
        hist, _ = np.histogram(x, bins=num_bins, range=(0, x.max()))
    return np.asarray(hist, dtype=np.int64), num_quant_bins, start_bin


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histograms())
def test_vectorised_matches_reference(case: tuple[np.ndarray, int, int]) -> None:
    hist, num_quant_bins, start_bin = case
    assert_same_search(hist, num_quant_bins, start_bin)


@pytest.mark.parametrize("seed", [0, 1])
def test_full_size_tensorrt_shape_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.standard_normal(50_000) * rng.uniform(0.5, 3), 0)
    hist, _ = np.histogram(x, bins=2048, range=(0, x.max()))
    assert_same_search(hist, 128, 128)


def test_uniform_histogram_keeps_everything() -> None:
    # A uniform histogram merges into uniform levels without loss; only the outliers folded into
    # the last bin make P differ from Q, so the fewest outliers (the last candidate) win.
    hist = np.full(512, 100)
    assert entropy_threshold(hist) == 511
    assert entropy_threshold_reference(hist) == 511


def test_data_below_start_bin_gives_zero_divergence_at_start() -> None:
    # All mass in bins < 128: at i = 128 every level is one bin, so Q == P exactly.
    rng = np.random.default_rng(3)
    hist = np.zeros(2048, dtype=np.int64)
    hist[:100] = rng.integers(1, 1000, 100)
    div = entropy_divergences(hist)
    assert div[0] == pytest.approx(0.0, abs=1e-12)
    assert np.all(div[1:] >= div[0])
    assert entropy_threshold(hist) == 128


def test_outlier_behind_empty_bin_is_infinite() -> None:
    hist = np.zeros(300, dtype=np.int64)
    hist[:150] = 10
    hist[299] = 1
    div = entropy_divergences(hist, 16, 16)
    ref = entropy_divergences_reference(hist, 16, 16)
    # Candidates i in [151, 299]: the last kept bin is empty while an outlier lies beyond it.
    assert np.all(np.isinf(div[151 - 16 : 299 - 16]))
    assert np.all(np.isinf(ref[151 - 16 : 299 - 16]))
    assert np.isfinite(div[150 - 16])


def test_gaussian_threshold_clips_tail_only() -> None:
    rng = np.random.default_rng(7)
    x = np.abs(rng.standard_normal(2_000_000))
    hist, edges = np.histogram(x, bins=2048, range=(0, x.max()))
    m = entropy_threshold(hist)
    amax = (m + 0.5) * (edges[1] - edges[0])
    # KL clipping of a Gaussian lands in its tail: well above the bulk, below the maximum.
    assert 2.5 < amax < x.max()


def test_empty_histogram_falls_back_to_last_candidate() -> None:
    assert entropy_threshold(np.zeros(256)) == 255
    assert entropy_threshold_reference(np.zeros(256)) == 255


@pytest.mark.parametrize(
    ("hist", "kwargs"),
    [
        (np.ones((2, 300)), {}),
        (-np.ones(300), {}),
        (np.full(300, np.nan), {}),
        (np.ones(128), {}),
        (np.ones(300), {"num_quant_bins": 128, "start_bin": 64}),
        (np.ones(300), {"num_quant_bins": 0, "start_bin": 64}),
    ],
)
def test_bad_histograms_raise(hist: np.ndarray, kwargs: dict[str, int]) -> None:
    with pytest.raises(DataError):
        entropy_threshold(hist, **kwargs)
