"""Per-tensor range choice by a measured criterion: the candidate with the least int8 error.

Each method has a failure mode: max wastes levels on a long tail, TensorRT's entropy search can
clip a tail the model needs (see :class:`~regiontrt.calibration.base.EntropyCalibrator`),
a fixed percentile clips a second mode. :class:`AutoCalibrator` computes every candidate range
of a tensor (entropy, percentiles, max) and keeps the one whose symmetric int8 quantization has
the least mean squared error over that tensor's ``|x|`` histogram.

The error of a range ``t`` (scale ``s = t / 127``) is estimated from the histogram alone: the
values of each bin are taken as spread evenly over it (``SUBSAMPLES`` points per bin), each is
rounded to ``s * min(round(x / s), 127)``, and the squared differences are weighted by the bin's
count. Rounding and clipping are thus both counted, and no activation is read again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from regiontrt.calibration.base import Calibrator, EntropyCalibrator
from regiontrt.calibration.stats import TensorStats
from regiontrt.errors import RegionConfigError

#: Points per histogram bin at which the rounding error is evaluated.
SUBSAMPLES = 8
QMAX = 127.0


def quantization_mse(stats: TensorStats, amax: float) -> float:
    """Mean squared error of symmetric int8 with range ``amax``, estimated from the histogram."""
    total = float(stats.hist.sum())
    if total <= 0 or stats.hist_max <= 0:
        return 0.0
    if amax <= 0:
        return float("inf")
    w = stats.bin_width
    nz = np.flatnonzero(stats.hist)
    offsets = (np.arange(SUBSAMPLES) + 0.5) / SUBSAMPLES
    points = (nz[:, None] + offsets[None, :]) * w
    s = amax / QMAX
    q = s * np.minimum(np.round(points / s), QMAX)
    err = np.mean((points - q) ** 2, axis=1)
    return float(np.dot(stats.hist[nz], err) / total)


class AutoCalibrator(Calibrator):
    """Per tensor, the candidate range with the least int8 quantization error (the default).

    Args:
        percentiles: percentile candidates (the 99.99th is also the entropy search's floor).
        entropy: include TensorRT's entropy range (with its percentile floor).
        include_max: include the observed amax.
    """

    _threadsafe = True  # compute_amax reads only its own stats

    method = "auto"

    def __init__(
        self,
        percentiles: Sequence[float] = (99.99, 99.999),
        *,
        entropy: bool = True,
        include_max: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if any(not 0 < p <= 100 for p in percentiles):
            raise RegionConfigError(f"percentiles must be within (0, 100], got {percentiles}")
        if not percentiles and not entropy and not include_max:
            raise RegionConfigError("AutoCalibrator needs at least one candidate")
        self.percentiles = tuple(percentiles)
        self.include_max = include_max
        self._entropy = EntropyCalibrator(num_bins=self.num_bins) if entropy else None

    def candidates(self, stats: TensorStats) -> dict[str, float]:
        """Every candidate range of one tensor, by name."""
        out: dict[str, float] = {}
        if self._entropy is not None:
            out["entropy"] = self._entropy.compute_amax(stats)
        for p in self.percentiles:
            out[f"percentile {p:g}"] = stats.percentile(p)
        if self.include_max:
            out["max"] = stats.amax
        return out

    def choose(self, stats: TensorStats) -> tuple[str, float, dict[str, float]]:
        """``(name, amax, errors)``: the candidate of least error, and every candidate's error."""
        cands = {k: v for k, v in self.candidates(stats).items() if v > 0}
        if not cands or stats.count == 0:
            return "max", stats.amax, {}
        errors = {k: quantization_mse(stats, v) for k, v in cands.items()}
        best = min(errors, key=lambda k: (errors[k], -cands[k]))  # ties: the wider range
        return best, cands[best], errors

    def compute_amax(self, stats: TensorStats) -> float:
        return self.choose(stats)[1]
