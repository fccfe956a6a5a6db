"""Streaming statistics of one tensor: min, max, amax, count and a histogram of ``|x|``.

A :class:`TensorStats` folds batches one at a time and never keeps them, so its memory is fixed
(``num_bins`` counters) however many batches a calibration set has.

The histogram covers ``[0, hist_max]`` in ``num_bins`` equal bins; bin ``k`` holds
``k * w <= |x| < (k + 1) * w`` with ``w = hist_max / num_bins`` (``|x| == hist_max`` goes in the
last bin). ``hist_max`` is set by the first batch with a non-zero value (to that batch's amax).
When a later batch holds a larger ``|x|``, the range grows by the smallest power of two ``f`` that
covers it and every ``f`` adjacent bins merge into one. Because the old edges are a subset of the
new ones, the merged counts are exactly those a histogram built with the final range from the start
would hold, so a single pass over a one-shot generator suffices. Values whose index is ``n``
(``|x| == hist_max``, or within rounding of it) are folded into the last bin but also counted in
``edge``: when the range grows they move to bin ``n // f``, where a histogram built with the grown
range puts them. Bin indices are ``floor(|x| * c)`` with ``c = n / hist_max``; scaling ``c`` by a
power of two commutes with float rounding and ``floor(floor(y) / f) == floor(y / f)``, so growth
is exact bit for bit (outside subnormal products, which land in bin 0 either way).

Mergeable: :meth:`TensorStats.merge` adds another's statistics whose ``hist_max`` differs by a power
of two (or is 0) exactly, so statistics of shards seeded with the same starting range (see
:mod:`regiontrt.calibration.distributed`) merge into exactly the single-pass statistics.

The approximation: the final ``hist_max`` can be up to twice the true amax, so the data spans
between ``num_bins / 2`` and ``num_bins`` bins instead of all of them (TensorRT's calibrator also
grows its histogram by powers of two rather than re-reading the data). Indices are computed in the
input's float precision, so a value within rounding of a bin edge may land in the neighbouring
bin. Non-finite values (NaN, inf) are counted in ``nonfinite`` and left out of every other
statistic.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from regiontrt.errors import DataError

_FLOAT_KINDS = "f"
_CHUNK = 1 << 16  # elements per histogram chunk: its buffers stay within L2
_LOCAL = threading.local()


def _scratch(dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-thread float, ``int32`` and ``intp`` buffers of ``_CHUNK`` elements."""
    key = f"buf_{dtype.str}"
    bufs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = getattr(_LOCAL, key, None)
    if bufs is None:
        bufs = (
            np.empty(_CHUNK, dtype=dtype),
            np.empty(_CHUNK, dtype=np.int32),
            np.empty(_CHUNK, dtype=np.intp),
        )
        setattr(_LOCAL, key, bufs)
    return bufs


def _chunks(arr: np.ndarray) -> Iterator[np.ndarray]:
    """``arr`` (1-D) in slices of ``_CHUNK`` elements: each stays in cache while it is used."""
    for start in range(0, arr.size, _CHUNK):
        yield arr[start : start + _CHUNK]


@dataclass
class TensorStats:
    """Running statistics of one tensor.

    Attributes:
        num_bins: number of histogram bins.
        histogram: whether batches are folded into the histogram (MinMax calibration needs none).
        min: smallest finite value seen (``inf`` before any).
        max: largest finite value seen (``-inf`` before any).
        count: number of finite values folded.
        nonfinite: number of NaN / inf values skipped.
        hist: ``int64`` counts of ``|x|`` over ``[0, hist_max]``.
        hist_max: upper edge of the histogram; 0 until a non-zero value is seen (a value given
            here seeds the range: it then grows from it by powers of two).
        edge: how many values of the last bin had index ``num_bins`` (see the module's notes).
    """

    num_bins: int = 2048
    histogram: bool = True
    min: float = math.inf
    max: float = -math.inf
    count: int = 0
    nonfinite: int = 0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)
    hist_max: float = 0.0
    edge: int = 0

    def __post_init__(self) -> None:
        if self.num_bins < 1:
            raise DataError(f"num_bins must be >= 1, got {self.num_bins}")
        if self.hist.size == 0:
            self.hist = np.zeros(self.num_bins, dtype=np.int64)
        elif self.hist.shape != (self.num_bins,):
            raise DataError(f"hist has shape {self.hist.shape}, expected ({self.num_bins},)")

    @property
    def amax(self) -> float:
        """``max |x|`` over every finite value folded (0 before any)."""
        if self.count == 0:
            return 0.0
        return max(abs(self.min), abs(self.max))

    @property
    def bin_width(self) -> float:
        """Width of one histogram bin (0 while the range is unset)."""
        return self.hist_max / self.num_bins

    @property
    def edges(self) -> np.ndarray:
        """The ``num_bins + 1`` bin edges."""
        return np.linspace(0.0, self.hist_max, self.num_bins + 1)

    def update(self, x: Any) -> None:
        """Fold one batch of values into the statistics; the batch is not kept.

        Args:
            x: an array (any shape) of a float dtype; other dtypes are converted to float32.
        """
        arr = np.asarray(x)
        if arr.dtype.kind != _FLOAT_KINDS or arr.dtype.itemsize < 4:
            arr = arr.astype(np.float32)  # float16 histograms need float32 arithmetic
        arr = arr.reshape(-1)
        if arr.size == 0:
            return
        if self.histogram and self.hist_max > 0.0 and self._update_in_range(arr):
            return
        lo, hi = float(arr.min()), float(arr.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            finite = np.isfinite(arr)
            bad = int(arr.size - np.count_nonzero(finite))
            self.nonfinite += bad
            arr = arr[finite]
            if arr.size == 0:
                return
            lo, hi = float(arr.min()), float(arr.max())
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        self.count += int(arr.size)
        if self.histogram:
            self._fold_histogram(arr, max(-lo, hi))

    def _update_in_range(self, arr: np.ndarray) -> bool:
        """Fold ``arr`` in one pass if it is finite and within the histogram's range.

        The batch's min and max are taken chunk by chunk while the chunk is in cache, instead of
        two passes over the whole batch first (a batch of every activation of a model is
        gigabytes). Once the range is set, most batches fit it, and then the counts are the ones
        :meth:`_fold_histogram` would make. Returns False, having changed nothing, as soon as a
        chunk holds a NaN, an inf or a value beyond ``hist_max``: the caller then takes the
        general path (which grows the range first).
        """
        lo, hi = math.inf, -math.inf
        counts = np.zeros(self.num_bins + 1, dtype=np.int64)
        for part in _chunks(arr):
            c_lo, c_hi = float(part.min()), float(part.max())
            if not (math.isfinite(c_lo) and math.isfinite(c_hi)):
                return False
            if max(-c_lo, c_hi) > self.hist_max:
                return False
            lo, hi = min(lo, c_lo), max(hi, c_hi)
            self._count_chunk(part, counts)
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        self.count += int(arr.size)
        self._add_counts(counts)
        return True

    def _fold_histogram(self, arr: np.ndarray, batch_amax: float) -> None:
        if batch_amax <= 0.0:
            self.hist[0] += arr.size  # all zeros: bin 0 whatever the range
            return
        if self.hist_max <= 0.0:
            self.hist_max = batch_amax
        elif batch_amax > self.hist_max:
            self._grow(batch_amax)
        counts = np.zeros(self.num_bins + 1, dtype=np.int64)
        for part in _chunks(arr):
            self._count_chunk(part, counts)
        self._add_counts(counts)

    def _count_chunk(self, part: np.ndarray, counts: np.ndarray) -> None:
        """Add the bin counts of one chunk (``|x| <= hist_max``) to ``counts`` (``n + 1`` slots).

        Index = floor(|x| * n / hist_max), then an integer bincount (np.histogram's general
        path is several times slower), in per-thread scratch buffers: fresh multi-megabyte
        temporaries per tensor cost more in page faults and cache misses than the arithmetic.
        The float -> int32 -> intp route is faster than a direct float -> intp cast (SIMD
        conversion to 32 bits, then a widening copy), and bincount wants intp.
        """
        n = self.num_bins
        fbuf, i32buf, ibuf = _scratch(part.dtype)
        f, i32, i = fbuf[: part.size], i32buf[: part.size], ibuf[: part.size]
        np.abs(part, out=f)
        np.multiply(f, part.dtype.type(n / self.hist_max), out=f)
        np.copyto(i32, f, casting="unsafe")  # float -> int truncates: floor for |x| >= 0
        np.copyto(i, i32)
        counts += np.bincount(i, minlength=n + 1)

    def _add_counts(self, counts: np.ndarray) -> None:
        # |x| <= hist_max gives an index <= n (n itself only for |x| == hist_max, or by
        # rounding): fold that extra slot into the last bin instead of clipping every value.
        n = self.num_bins
        self.edge += int(counts[n])
        counts[n - 1] += counts[n]
        self.hist += counts[:n]

    def _grow(self, needed: float) -> None:
        factor = 1
        while self.hist_max * factor < needed:
            factor *= 2
        if factor == 1:
            return
        n = self.num_bins
        # Old bin j lies entirely inside new bin j // factor because the new edges are every
        # factor-th old edge: merging is exact, no counts are split between bins. Values of
        # index n (folded into the last bin) belong to new bin n // factor.
        self.hist[n - 1] -= self.edge
        merged = np.add.reduceat(self.hist, np.arange(0, n, factor))
        self.hist = np.zeros(n, dtype=np.int64)
        self.hist[: merged.size] = merged
        self.hist[min(n // factor, n - 1)] += self.edge
        self.edge = 0
        self.hist_max *= factor

    def aligned(self, other: TensorStats) -> bool:
        """Whether :meth:`merge` adds ``other`` exactly (same bins, ranges 2**k apart)."""
        if (other.num_bins, other.histogram) != (self.num_bins, self.histogram):
            return False
        if not self.histogram or self.hist_max <= 0.0 or other.hist_max <= 0.0:
            return True
        return math.frexp(self.hist_max)[0] == math.frexp(other.hist_max)[0]

    def merge(self, other: TensorStats) -> None:
        """Add ``other``'s statistics to these, exactly (``other`` is not modified).

        The smaller range grows to the larger first (exact, see the module's notes); the result
        equals the statistics of one pass over both sets of batches whenever that pass would end
        on the same range, as it does for shards seeded with one starting range.

        Raises:
            DataError: the bins differ, or both ranges are set and not a power of two apart.
        """
        if not self.aligned(other):
            raise DataError(
                f"statistics cannot be merged exactly: {self.num_bins} bins over "
                f"[0, {self.hist_max!r}] and {other.num_bins} over [0, {other.hist_max!r}]")
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.count += other.count
        self.nonfinite += other.nonfinite
        if not self.histogram:
            return
        theirs = TensorStats(self.num_bins, hist=other.hist.copy(), hist_max=other.hist_max,
                             edge=other.edge)
        if theirs.hist_max > self.hist_max:
            if self.hist_max <= 0.0:  # only exact zeros so far: bin 0 whatever the range
                self.hist_max = theirs.hist_max
            else:
                self._grow(theirs.hist_max)
        elif 0.0 < theirs.hist_max < self.hist_max:
            theirs._grow(self.hist_max)
        self.hist += theirs.hist
        self.edge += theirs.edge

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) of ``|x|``, interpolated linearly inside its bin.

        Falls back to ``amax`` without a histogram. Never exceeds ``amax``.
        """
        if not 0.0 <= q <= 100.0:
            raise DataError(f"percentile must be within [0, 100], got {q}")
        total = int(self.hist.sum())
        if not self.histogram or total == 0 or self.hist_max <= 0.0:
            return self.amax
        cdf = np.cumsum(self.hist)
        target = q / 100.0 * total
        k = int(np.searchsorted(cdf, target, side="left"))
        k = min(k, self.num_bins - 1)
        before = float(cdf[k - 1]) if k > 0 else 0.0
        inside = float(self.hist[k])
        frac = 0.0 if inside == 0 else (target - before) / inside
        value = (k + min(max(frac, 0.0), 1.0)) * self.bin_width
        return min(value, self.amax)

    def nbytes(self) -> int:
        """Memory held by the statistics (the histogram dominates)."""
        return int(self.hist.nbytes) + 64

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (the histogram as a list)."""
        return {
            "num_bins": self.num_bins,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "amax": self.amax,
            "count": self.count,
            "nonfinite": self.nonfinite,
            "hist_max": self.hist_max,
            "edge": self.edge,
            "hist": self.hist.tolist() if self.histogram else None,
        }
