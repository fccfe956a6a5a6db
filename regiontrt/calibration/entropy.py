"""TensorRT's entropy (KL-divergence) threshold search over a histogram of ``|x|``.

The method (NVIDIA, "8-bit Inference with TensorRT", GTC 2017), for a histogram ``h`` of
``N`` bins (2048 in TensorRT) and ``M`` quantization levels (128, the positive half of INT8):

for every candidate ``i`` in ``start_bin .. N - 1``:
  * ``P = h[:i]`` with the outliers ``sum(h[i:])`` added to its last bin ``P[i - 1]``;
  * ``Q``: ``h[:i]`` (without the outliers) merged into ``M`` levels and expanded back: each bin
    of a level gets ``level total / number of non-empty bins of the level``, and empty bins stay
    0. Bin ``j`` belongs to level ``floor(j * M / i)``, so levels are equal in range (as in
    NVIDIA's pytorch-quantization, which mirrors TensorRT's calibrator);
  * ``divergence[i] = KL(P / sum P || Q / sum Q)``; it is infinite when ``Q`` is 0 where ``P``
    is not (the last bin empty but outliers beyond it) or when ``h[:i]`` is empty.

The chosen index ``m`` is the candidate of least divergence (the first one among ties closer
than 1e-12, so that the vectorised search and the reference loop agree on exact ties); when
every divergence is infinite the last candidate (least clipping) is taken. TensorRT sets the
threshold to ``(m + 0.5) * bin_width`` (the slides' formula, "the centre of the bin"); the
calibrator clamps it to the observed amax.

:func:`entropy_threshold` evaluates every candidate at once. With prefix sums ``C`` (counts),
``Z`` (non-empty bins) and ``G`` (``h log h``), each level ``k`` of candidate ``i`` spans bins
``ceil(k i / M) .. ceil((k + 1) i / M) - 1``, so its total and its non-empty count are two
differences of prefix sums; the divergence of candidate ``i`` is then

``(G[i-1] + (h[i-1] + o) log(h[i-1] + o) - sum_k L_k log(L_k / n_k) - o log(L_last / n_last))
/ S + log(C[i] / S)``

with ``o`` the outliers and ``S`` the total. Memory is ``O(N * M)``.
:func:`entropy_threshold_reference` is the straightforward per-candidate loop, kept as the test
reference.
"""

from __future__ import annotations

import threading

import numpy as np

from regiontrt.errors import DataError

_TIE = 1e-12


def _validate(hist: np.ndarray, num_quant_bins: int, start_bin: int) -> np.ndarray:
    h = np.asarray(hist, dtype=np.float64)
    if h.ndim != 1:
        raise DataError(f"histogram must be 1-D, got shape {h.shape}")
    if not np.all(np.isfinite(h)) or np.any(h < 0):
        raise DataError("histogram counts must be finite and non-negative")
    if num_quant_bins < 1:
        raise DataError(f"num_quant_bins must be >= 1, got {num_quant_bins}")
    if start_bin < num_quant_bins:
        raise DataError(
            f"start_bin ({start_bin}) must be >= num_quant_bins ({num_quant_bins}): a candidate "
            "needs at least one bin per quantization level"
        )
    if h.size <= start_bin:
        raise DataError(
            f"the histogram has {h.size} bins; the entropy search needs more than start_bin "
            f"({start_bin})"
        )
    return h


def _pick(divergences: np.ndarray, start_bin: int) -> int:
    finite = np.isfinite(divergences)
    if not finite.any():
        return start_bin + divergences.size - 1
    best = float(divergences[finite].min())
    close = np.flatnonzero(finite & (divergences <= best + _TIE * (1.0 + abs(best))))
    return start_bin + int(close[0])


class _Workspace:
    """Level boundaries of one search shape and scratch buffers, reused across tensors.

    Level ``k`` of candidate ``i`` holds the bins ``j`` with ``floor(j * M / i) == k``, i.e.
    ``ceil(k * i / M) <= j < ceil((k + 1) * i / M)``; ``bounds[c, M]`` is the candidate itself.
    The boundaries depend only on the shape of the search, and fresh multi-megabyte temporaries
    cost more in page faults than the arithmetic on them, so both are kept per thread.
    """

    def __init__(self, num_bins: int, num_levels: int, start_bin: int) -> None:
        cand = np.arange(start_bin, num_bins, dtype=np.intp)
        k = np.arange(num_levels + 1, dtype=np.intp)
        # Left writeable: np.take with read-only indices takes a much slower path (numpy 2.4).
        self.bounds = (k[None, :] * cand[:, None] + (num_levels - 1)) // num_levels
        self.gathered = np.empty(self.bounds.shape, dtype=np.float64)
        self.level_sum = np.empty((cand.size, num_levels), dtype=np.float64)
        self.log_q = np.empty((cand.size, num_levels), dtype=np.float64)
        self.filled = np.empty((cand.size, num_levels), dtype=bool)


_LOCAL = threading.local()


def _workspace(num_bins: int, num_levels: int, start_bin: int) -> _Workspace:
    cache: dict[tuple[int, int, int], _Workspace] = _LOCAL.__dict__.setdefault("cache", {})
    key = (num_bins, num_levels, start_bin)
    ws = cache.get(key)
    if ws is None:
        if len(cache) >= 4:
            cache.clear()
        ws = cache[key] = _Workspace(num_bins, num_levels, start_bin)
    return ws


def _xlogx(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    pos = x > 0
    out[pos] = x[pos] * np.log(x[pos])
    return out


def entropy_divergences(
    hist: np.ndarray, num_quant_bins: int = 128, start_bin: int = 128
) -> np.ndarray:
    """KL divergence of every candidate ``start_bin .. len(hist) - 1``, vectorised.

    Args:
        hist: counts of ``|x|`` per bin.
        num_quant_bins: quantization levels (128 for INT8).
        start_bin: first candidate (number of bins kept).

    Returns:
        ``float64`` array of ``len(hist) - start_bin`` divergences (``inf`` where undefined).
    """
    h = _validate(hist, num_quant_bins, start_bin)
    n, m = h.size, num_quant_bins
    total = float(h.sum())
    cand = np.arange(start_bin, n, dtype=np.intp)
    if total <= 0:
        return np.full(cand.size, np.inf)
    csum = np.concatenate(([0.0], np.cumsum(h)))
    nonzero = np.concatenate(([0.0], np.cumsum(h > 0, dtype=np.float64)))
    glog = np.concatenate(([0.0], np.cumsum(_xlogx(h))))

    ws = _workspace(n, m, start_bin)
    level_sum, log_q, at = ws.level_sum, ws.log_q, ws.gathered
    np.take(csum, ws.bounds, out=at)
    np.subtract(at[:, 1:], at[:, :-1], out=level_sum)
    np.take(nonzero, ws.bounds, out=at)
    np.subtract(at[:, 1:], at[:, :-1], out=log_q)
    # Expanded Q of a level: its total over its non-empty bins. An empty level contributes
    # 0; give it ratio 1 so that its log is 0 and not -inf (0 * -inf would be NaN).
    np.greater(level_sum, 0, out=ws.filled)
    np.divide(level_sum, log_q, out=log_q, where=ws.filled)
    np.copyto(log_q, 1.0, where=~ws.filled)
    np.log(log_q, out=log_q)
    cross = np.einsum("ij,ij->i", level_sum, log_q)

    kept = csum[cand]
    outliers = total - kept
    last = h[cand - 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        self_term = glog[cand - 1] + _xlogx(last + outliers)
        raw = self_term - cross - outliers * log_q[:, -1]
        div = raw / total + np.log(kept / total)
    invalid = (kept <= 0) | ((last <= 0) & (outliers > 0))
    div[invalid] = np.inf
    # Exact arithmetic gives div >= 0; rounding can leave a tiny negative value.
    return np.maximum(div, 0.0)


def entropy_threshold(hist: np.ndarray, num_quant_bins: int = 128, start_bin: int = 128) -> int:
    """The bin index ``m`` TensorRT's entropy method picks; ``amax = (m + 0.5) * bin_width``.

    Vectorised over every candidate (see the module docstring).

    Args:
        hist: counts of ``|x|`` per bin (2048 bins in TensorRT).
        num_quant_bins: quantization levels (128 for INT8).
        start_bin: first candidate.

    Returns:
        the number of bins kept, in ``[start_bin, len(hist) - 1]``.

    Raises:
        DataError: a malformed histogram, or ``len(hist) <= start_bin``.
    """
    return _pick(entropy_divergences(hist, num_quant_bins, start_bin), start_bin)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    ps, qs = float(p.sum()), float(q.sum())
    if ps <= 0 or qs <= 0:
        return float("inf")
    pn, qn = p / ps, q / qs
    support = pn > 0
    if np.any(qn[support] == 0):
        return float("inf")
    return float(np.sum(pn[support] * np.log(pn[support] / qn[support])))


def entropy_divergences_reference(
    hist: np.ndarray, num_quant_bins: int = 128, start_bin: int = 128
) -> np.ndarray:
    """Divergence of every candidate, one candidate at a time (the test reference)."""
    h = _validate(hist, num_quant_bins, start_bin)
    out = []
    for i in range(start_bin, h.size):
        p = h[:i].copy()
        p[i - 1] += h[i:].sum()
        kept = h[:i]
        levels = (np.arange(i) * num_quant_bins) // i  # bin j -> level floor(j * M / i)
        level_total = np.bincount(levels, weights=kept, minlength=num_quant_bins)
        level_filled = np.bincount(levels, weights=kept > 0, minlength=num_quant_bins)
        # Each non-empty bin gets its level's total spread evenly over the level's non-empty
        # bins; empty bins stay 0.
        per_bin = level_total / np.maximum(level_filled, 1)
        q = np.where(kept > 0, per_bin[levels], 0.0)
        out.append(_kl(p, q))
    return np.asarray(out, dtype=np.float64)


def entropy_threshold_reference(
    hist: np.ndarray, num_quant_bins: int = 128, start_bin: int = 128
) -> int:
    """:func:`entropy_threshold` as a plain per-candidate loop: slow, obviously correct.

    Builds ``P`` and ``Q`` explicitly for every candidate. Kept in the package as the reference
    the vectorised search is tested against.
    """
    return _pick(entropy_divergences_reference(hist, num_quant_bins, start_bin), start_bin)
