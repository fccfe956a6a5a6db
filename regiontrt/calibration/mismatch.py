"""Calibration/validation mismatch check: do the region's validation activations fit the ranges?

Calibration data from another population (the issue's Portuguese speech calibrated on Spanish
data) shows up as activations beyond the calibrated amax, which INT8 clips. The check streams the
validation data through the same collection as calibration and measures, per tensor, the share of
values with ``|x| > amax``; the build warns, or fails under a strict policy, when the worst share
passes a threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from regiontrt.calibration.collect import as_model, as_source, fold_batches, resolve_tensors
from regiontrt.calibration.stats import TensorStats
from regiontrt.data.sources import DataLike
from regiontrt.errors import DataError, RegionConfigError
from regiontrt.graph.io import ModelSource


@dataclass
class MismatchReport:
    """Share of validation values beyond the calibrated range, per tensor.

    Attributes:
        per_tensor: ``{tensor: share}``, the fraction of validation values with ``|x| > amax``.
        worst: the tensor with the largest share and that share (``None`` without tensors).
        threshold: share above which the check fails.
        percentile_ratio: ``{tensor: p / amax}``, with ``p`` the validation ``percentile`` of
            ``|x|`` (``inf`` where amax is 0 and the validation data is not).
        max_ratio: ``{tensor: validation max|x| / amax}``.
        percentile: the percentile used for ``percentile_ratio``.
        num_batches: validation batches read.
        num_samples: validation samples read.
        fingerprint: SHA-256 of the validation data.
    """

    per_tensor: dict[str, float]
    worst: tuple[str, float] | None
    threshold: float
    percentile_ratio: dict[str, float] = field(default_factory=dict)
    max_ratio: dict[str, float] = field(default_factory=dict)
    percentile: float = 99.99
    num_batches: int = 0
    num_samples: int = 0
    fingerprint: str = ""

    @property
    def exceeded(self) -> bool:
        """Whether some tensor's share passes the threshold."""
        return self.worst is not None and self.worst[1] > self.threshold

    def offenders(self) -> list[tuple[str, float]]:
        """Tensors past the threshold, worst first."""
        bad = [(n, s) for n, s in self.per_tensor.items() if s > self.threshold]
        return sorted(bad, key=lambda item: (-item[1], item[0]))

    def summary(self) -> str:
        """One line for the build report."""
        if self.worst is None:
            return "calibration/validation mismatch check: no tensors checked"
        name, share = self.worst
        ratio = self.percentile_ratio.get(name)
        extra = f", validation p{self.percentile:g} = {ratio:.3g}x amax" if ratio else ""
        if not self.exceeded:
            return (
                f"calibration ranges fit the validation data: at most {share:.3%} of values "
                f"beyond amax ({name!r}{extra}), threshold {self.threshold:.3%}"
            )
        bad = self.offenders()
        return (
            f"calibration/validation mismatch: {len(bad)} of {len(self.per_tensor)} tensors have "
            f"more than {self.threshold:.3%} of validation values beyond the calibrated amax; "
            f"worst {name!r} with {share:.3%}{extra}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (infinite ratios as the string ``"inf"``)."""

        def num(x: float) -> float | str:
            return x if math.isfinite(x) else str(x)

        return {
            "per_tensor": dict(self.per_tensor),
            "worst": list(self.worst) if self.worst is not None else None,
            "threshold": self.threshold,
            "exceeded": self.exceeded,
            "percentile": self.percentile,
            "percentile_ratio": {k: num(v) for k, v in self.percentile_ratio.items()},
            "max_ratio": {k: num(v) for k, v in self.max_ratio.items()},
            "num_batches": self.num_batches,
            "num_samples": self.num_samples,
            "fingerprint": self.fingerprint,
        }


def _ratio(value: float, amax: float) -> float:
    if amax > 0:
        return value / amax
    return 0.0 if value <= 0 else math.inf


def check_mismatch(
    model: ModelSource,
    amax: Mapping[str, float],
    data: DataLike,
    *,
    threshold: float = 0.01,
    percentile: float = 99.99,
    num_bins: int = 2048,
    batch_limit: int | None = None,
) -> MismatchReport:
    """Compare validation activations with calibrated ranges, streaming batch by batch.

    Args:
        model: the FP32 model the ranges were calibrated on.
        amax: calibrated range per tensor (e.g. :attr:`CalibrationResult.amax`).
        data: the region's validation data.
        threshold: largest acceptable share of values beyond amax, in ``[0, 1]``.
        percentile: percentile of ``|x|`` reported against amax.
        num_bins: histogram bins for the percentile.
        batch_limit: read at most this many batches.

    Raises:
        RegionConfigError: a threshold outside ``[0, 1]``.
        DataError: empty or mis-shaped data, or ``amax`` names tensors the model lacks or holds
            a negative or non-finite range.
    """
    if not 0.0 <= threshold <= 1.0:
        raise RegionConfigError(f"mismatch threshold must be within [0, 1], got {threshold}")
    if not 0.0 < percentile <= 100.0:
        raise RegionConfigError(f"percentile must be within (0, 100], got {percentile}")
    proto = as_model(model)
    source = as_source(proto, data, batch_limit)
    names, types = resolve_tensors(proto, list(amax))
    limits = {n: float(amax[n]) for n in names}
    bad = [n for n, v in limits.items() if not (math.isfinite(v) and v >= 0)]
    if bad:
        raise DataError(f"calibrated amax must be finite and >= 0; not so for {bad}")
    beyond = dict.fromkeys(names, 0)
    total = dict.fromkeys(names, 0)
    stats = {n: TensorStats(num_bins=num_bins) for n in names}

    def fold(name: str, arr: np.ndarray) -> None:
        limit = limits[name]
        flat = arr.reshape(-1)
        beyond[name] += int(np.count_nonzero(flat > limit) + np.count_nonzero(flat < -limit))
        total[name] += int(flat.size)
        stats[name].update(flat)

    fold_batches(proto, source, names, types, fold, "calibration mismatch check")
    per_tensor = {n: (beyond[n] / total[n] if total[n] else 0.0) for n in names}
    worst = max(per_tensor.items(), key=lambda item: item[1]) if per_tensor else None
    return MismatchReport(
        per_tensor=per_tensor,
        worst=worst,
        threshold=threshold,
        percentile_ratio={n: _ratio(stats[n].percentile(percentile), limits[n]) for n in names},
        max_ratio={n: _ratio(stats[n].amax, limits[n]) for n in names},
        percentile=percentile,
        num_batches=source.num_batches,
        num_samples=source.num_samples,
        fingerprint=source.fingerprint,
    )
