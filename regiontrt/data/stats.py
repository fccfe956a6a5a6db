"""Summary statistics of a region's input data, recorded in engine metadata for drift checks.

The build records, per input tensor, the validation data's moments and a decile histogram
(``metadata["input_stats"]``), for every precision. At serving time the drift monitor bins live
inputs on the same edges and measures the Population Stability Index (PSI) against the recorded
proportions: ``sum((p - q) * ln(p / q))``, the standard drift score of credit-risk and ML
monitoring (below 0.1 stable, 0.1-0.25 moderate shift, above 0.25 a different population).

Deciles put about a tenth of the validation mass in each bin, so every bin is populated and the
score is sensitive where the data is; repeated values (the blank paper of an image) collapse
edges, which is why the proportions per bin are stored rather than assumed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

#: Quantiles whose values become the bin edges (deciles).
QUANTILES = tuple(q / 10 for q in range(1, 10))

#: Proportions are floored at this value so an empty bin gives a finite PSI.
EPSILON = 1e-4

#: At most this many values per tensor enter the statistics (an evenly strided subsample).
MAX_VALUES = 2_000_000


def _values(arrays: list[np.ndarray], limit: int) -> np.ndarray:
    # Stride each array before widening to float64, so a large validation set (OCR lines,
    # images) never exists as one float64 copy.
    step = max(1, math.ceil(sum(a.size for a in arrays) / limit))
    flat = np.concatenate([np.asarray(a).reshape(-1)[::step].astype(np.float64)
                           for a in arrays])
    return flat[np.isfinite(flat)]


def histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each bin ``(-inf, e0], (e0, e1], ..., (e_last, inf)``."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return np.zeros(len(edges) + 1)
    counts = np.bincount(np.searchsorted(edges, flat, side="left"), minlength=len(edges) + 1)
    return counts / float(flat.size)


def summarize(values: np.ndarray) -> dict[str, Any]:
    """Moments, decile edges and the share of values per bin of one tensor's values."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    if flat.size == 0:
        return {"count": 0}
    edges = np.unique(np.quantile(flat, QUANTILES))
    return {
        "count": int(flat.size),
        "mean": float(flat.mean()),
        "std": float(flat.std()),
        "min": float(flat.min()),
        "max": float(flat.max()),
        "edges": [float(e) for e in edges],
        "proportions": [float(p) for p in histogram(flat, edges)],
    }


def summarize_inputs(
    batches: Iterable[Mapping[str, Any]], *, limit: int = MAX_VALUES
) -> dict[str, dict[str, Any]]:
    """Per input name, :func:`summarize` of its values over every batch (numeric inputs only)."""
    collected: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        for name, value in batch.items():
            arr = np.asarray(value)
            if np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating):
                collected.setdefault(name, []).append(arr)
    return {name: summarize(_values(arrays, limit)) for name, arrays in collected.items()}


def psi(reference: Mapping[str, Any], values: np.ndarray) -> float:
    """Population Stability Index of ``values`` against a :func:`summarize` record."""
    edges = np.asarray(reference.get("edges", ()), dtype=np.float64)
    expected = np.asarray(reference.get("proportions", ()), dtype=np.float64)
    if expected.size != edges.size + 1 or expected.size < 2:
        return 0.0  # no reference recorded (an empty tensor): nothing to compare
    actual = np.maximum(histogram(values, edges), EPSILON)
    expected = np.maximum(expected, EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def mean_shift(reference: Mapping[str, Any], values: np.ndarray) -> float:
    """``|mean(values) - mean_ref| / std_ref`` (0 for an empty sample or a constant reference)."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    std = float(reference.get("std", 0.0) or 0.0)
    if flat.size == 0 or std <= 0:
        return 0.0
    return abs(float(flat.mean()) - float(reference.get("mean", 0.0))) / std
