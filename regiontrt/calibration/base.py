"""Calibrators: per-tensor activation ranges (amax) from a region's calibration data.

A :class:`Calibrator` turns the running statistics of one tensor into its symmetric range;
:meth:`Calibrator.calibrate` does the streaming collection around it. A downstream library adds
a method by overriding :meth:`Calibrator.compute_amax`::

    class FractionOfMax(Calibrator):
        needs_histogram = False

        def __init__(self, fraction: float = 0.9, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.fraction = fraction

        def compute_amax(self, stats: TensorStats) -> float:
            return self.fraction * stats.amax
"""

from __future__ import annotations

import copy
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

from regiontrt.calibration.collect import (
    FOLD_THREADS,
    as_model,
    as_source,
    fold_batches,
    resolve_tensors,
)
from regiontrt.calibration.distributed import check_executor, distributed_statistics
from regiontrt.calibration.entropy import entropy_threshold
from regiontrt.calibration.stats import TensorStats
from regiontrt.data.sources import DataLike
from regiontrt.errors import DataError, RegionConfigError
from regiontrt.graph.io import ModelSource

log = logging.getLogger("regiontrt.calibration")

#: Range given to a tensor that was identically zero over the calibration data: scale 2**-14
#: (the smallest normal float16, valid as an FP16 or FP32 Q/DQ scale). Q/DQ needs a positive
#: scale, and a small one keeps the tensor effectively zero, as calibration saw it, while the
#: mismatch check still flags validation data that is not.
ZERO_RANGE_AMAX = 127.0 * 2.0**-14

#: The int8 techniques a build can try on top of a calibrator's ranges, in the order tried
#: (:mod:`regiontrt.precision.int8_techniques`).
INT8_TECHNIQUES = ("ranges", "equalize", "smoothquant", "bias_correction")


@dataclass
class CalibrationResult:
    """Ranges found for one model and one calibration set.

    Attributes:
        amax: symmetric range per tensor (INT8 scale = amax / 127), always positive: a tensor
            that was identically zero gets :data:`ZERO_RANGE_AMAX` (its ``stats`` show 0).
        method: the calibrator's method name.
        num_batches: batches read.
        num_samples: samples read (sum of the batches' first dimensions).
        fingerprint: SHA-256 of the calibration data (:attr:`DataSource.fingerprint`).
        seconds: wall time of collection and range computation.
        stats: the running statistics per tensor (about 16 KiB each with 2048 bins); empty when
            the calibrator was asked not to keep them.
    """

    amax: dict[str, float]
    method: str
    num_batches: int
    num_samples: int
    fingerprint: str
    seconds: float
    stats: dict[str, TensorStats] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (without the histograms)."""
        return {
            "amax": dict(self.amax),
            "method": self.method,
            "num_batches": self.num_batches,
            "num_samples": self.num_samples,
            "fingerprint": self.fingerprint,
            "seconds": self.seconds,
        }


class Calibrator(ABC):
    """Base class of the calibration methods; override :meth:`compute_amax`.

    Args:
        num_bins: histogram bins per tensor.
        keep_stats: keep the per-tensor statistics in the result.
        techniques: the int8 techniques the build tries on top of these ranges, each kept only
            when the region's metric improves (``"ranges"``, ``"equalize"``, ``"smoothquant"``,
            ``"bias_correction"``; see docs/int8.md); ``None``: all that apply for ``auto``, none
            for the other calibrators; ``()``: none.
        smooth_alpha: SmoothQuant's migration strength in ``[0, 1]``.

    Attributes:
        needs_histogram: whether :meth:`compute_amax` reads ``stats.hist`` (skipping it makes
            the collection pass cheaper).
        method: name recorded in :class:`CalibrationResult` (defaults to the class name).
    """

    needs_histogram: ClassVar[bool] = True
    method: ClassVar[str] = ""
    #: Where statistics are collected: ``None`` in this process (see :meth:`distributed`).
    executor: Any = None

    def __init__(self, *, num_bins: int = 2048, keep_stats: bool = True,
                 techniques: Sequence[str] | None = None, smooth_alpha: float = 0.5) -> None:
        if num_bins < 1:
            raise RegionConfigError(f"num_bins must be >= 1, got {num_bins}")
        if isinstance(techniques, str):
            techniques = (techniques,)
        unknown = [t for t in techniques or () if t not in INT8_TECHNIQUES]
        if unknown:
            raise RegionConfigError(
                f"unknown int8 techniques {unknown}; known: {', '.join(INT8_TECHNIQUES)}")
        if not 0.0 <= smooth_alpha <= 1.0:
            raise RegionConfigError(f"smooth_alpha must be within [0, 1], got {smooth_alpha}")
        self.num_bins = num_bins
        self.keep_stats = keep_stats
        self.techniques = None if techniques is None else tuple(techniques)
        self.smooth_alpha = float(smooth_alpha)

    @property
    def name(self) -> str:
        """The method name."""
        return self.method or type(self).__name__

    @abstractmethod
    def compute_amax(self, stats: TensorStats) -> float:
        """The symmetric range of one tensor from its running statistics."""

    def calibrate(
        self,
        model: ModelSource,
        data: DataLike,
        tensors: Sequence[str] | None = None,
        *,
        batch_limit: int | None = None,
    ) -> CalibrationResult:
        """Collect statistics over ``data`` in one streaming pass and compute every range.

        Args:
            model: the FP32 model (not modified).
            data: calibration batches; a one-shot generator works (read once).
            tensors: activation tensors to calibrate; ``None`` for every float tensor that feeds
                a node, graph inputs included.
            batch_limit: read at most this many batches.

        Raises:
            DataError: empty or mis-shaped data, unknown or non-float tensors, or a
                ``compute_amax`` that returns a negative or non-finite value.
            InvalidModelError: ONNX Runtime cannot load the model.
        """
        start = time.perf_counter()
        proto = as_model(model)
        source = as_source(proto, data, batch_limit)
        names, types = resolve_tensors(proto, tensors)
        if self.executor is not None and batch_limit is None:  # see distributed()
            collected = distributed_statistics(
                proto, source, names, types, executor=self.executor, num_bins=self.num_bins,
                histogram=self.needs_histogram)
            stats = collected.stats
            read = (collected.num_batches, collected.num_samples, collected.fingerprint)
        else:
            stats = {n: TensorStats(num_bins=self.num_bins, histogram=self.needs_histogram)
                     for n in names}
            fold_batches(proto, source, names, types, lambda name, arr: stats[name].update(arr))
            read = (source.num_batches, source.num_samples, source.fingerprint)
        amax: dict[str, float] = {}
        for name, raw in zip(stats, self._compute_all(list(stats.values()))):
            value = float(raw)
            if not math.isfinite(value) or value < 0:
                raise DataError(f"{self.name}: invalid amax {value!r} for tensor {name!r}")
            amax[name] = value if value > 0 else ZERO_RANGE_AMAX
        log.info("calibration (%s): %d tensors from %d samples in %d batches, %.2f s",
                 self.name, len(amax), read[1], read[0], time.perf_counter() - start)
        log.debug("calibration (%s) amax: %s", self.name,
                  ", ".join(f"{k}={v:.4g}" for k, v in amax.items()))
        return CalibrationResult(
            amax=amax,
            method=self.name,
            num_batches=read[0],
            num_samples=read[1],
            fingerprint=read[2],
            seconds=time.perf_counter() - start,
            stats=stats if self.keep_stats else {},
        )

    def distributed(self, executor: Any) -> Calibrator:
        """A copy of this calibrator that collects its statistics on ``executor``'s workers.

        ``executor``: a ``concurrent.futures`` executor or a ``dask.distributed.Client``; the
        data must be shardable (paths or URLs, a Dask bag or array, a list of batches). The
        merged statistics equal a single pass's bit for bit
        (:mod:`regiontrt.calibration.distributed`). ``None`` gives a local copy back.
        """
        if executor is not None:
            check_executor(executor)
        twin = copy.copy(self)
        twin.executor = executor
        return twin

    def _compute_all(self, stats: list[TensorStats]) -> list[float]:
        """:meth:`compute_amax` of every tensor; on two threads for the built-in methods.

        Their searches are numpy array arithmetic, which releases the GIL, with per-thread
        scratch space; a subclass's ``compute_amax`` is not assumed thread-safe.
        """
        if not type(self).__dict__.get("_threadsafe", False) or len(stats) < 2 or FOLD_THREADS < 2:
            return [self.compute_amax(st) for st in stats]
        with ThreadPoolExecutor(FOLD_THREADS, thread_name_prefix="regiontrt-ranges") as pool:
            return list(pool.map(self.compute_amax, stats))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_bins={self.num_bins})"


class MinMaxCalibrator(Calibrator):
    """``amax = max |x|`` over the calibration data (no histogram needed)."""

    # compute_amax reads only its own stats: ranges may be computed on several threads
    _threadsafe = True

    needs_histogram = False
    method = "minmax"

    def compute_amax(self, stats: TensorStats) -> float:
        return stats.amax


class PercentileCalibrator(Calibrator):
    """``amax`` = the given percentile of ``|x|``, interpolated inside its histogram bin.

    Args:
        percentile: in ``(0, 100]``; 99.99 by default.
    """

    # compute_amax reads only its own stats: ranges may be computed on several threads
    _threadsafe = True

    method = "percentile"

    def __init__(self, percentile: float = 99.99, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 < percentile <= 100.0:
            raise RegionConfigError(f"percentile must be within (0, 100], got {percentile}")
        self.percentile = percentile

    def compute_amax(self, stats: TensorStats) -> float:
        return stats.percentile(self.percentile)


class EntropyCalibrator(Calibrator):
    """TensorRT's entropy calibration (``EntropyCalibration2``'s KL-divergence search).

    The search over the 2048-bin ``|x|`` histogram is :func:`entropy_threshold`; the range is
    ``(m + 0.5) * bin_width`` as TensorRT defines it, clamped to the observed amax. Sources:
    NVIDIA's "8-bit Inference with TensorRT" (GTC 2017) for the search and the threshold, and
    NVIDIA's MLPerf calibration notes ("discarding the first bin in the histogram ... immediately
    after it has been built", "the dynamic range chosen is the center of the bin").

    Args:
        num_quant_bins: quantization levels (128: the positive half of INT8).
        start_bin: first candidate threshold bin.
        discard_zero_bin: empty the first bin before the search, as TensorRT does (it holds the
            exact zeros of ReLU outputs, which every scale represents exactly, and which would
            otherwise dominate the divergence).
        floor_percentile: never clip below this percentile of ``|x|`` (``None``: the plain
            TensorRT search). On long-tailed activations the KL search can settle near its
            lowest candidate and saturate percents of the values: on PP-OCRv4's recogniser it
            chose 0.051 for a tensor whose max is 0.40, saturating 1.95 % of its values, and the
            model emitted blank lines. Bounding the clipped share at 1e-4 keeps the entropy
            range where it is sound and fixes that (see docs/benchmarks.md).
    """

    # compute_amax reads only its own stats: ranges may be computed on several threads
    _threadsafe = True

    method = "entropy"

    def __init__(
        self,
        num_quant_bins: int = 128,
        start_bin: int = 128,
        *,
        discard_zero_bin: bool = True,
        floor_percentile: float | None = 99.99,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if start_bin < num_quant_bins or num_quant_bins < 1:
            raise RegionConfigError(
                f"need 1 <= num_quant_bins <= start_bin, got {num_quant_bins} and {start_bin}"
            )
        if self.num_bins <= start_bin:
            raise RegionConfigError(
                f"num_bins ({self.num_bins}) must exceed start_bin ({start_bin})"
            )
        self.num_quant_bins = num_quant_bins
        self.start_bin = start_bin
        self.discard_zero_bin = discard_zero_bin
        if floor_percentile is not None and not 0 < floor_percentile <= 100:
            raise RegionConfigError(f"floor_percentile must be in (0, 100], got {floor_percentile}")
        self.floor_percentile = floor_percentile

    def compute_amax(self, stats: TensorStats) -> float:
        if stats.count == 0 or stats.hist_max <= 0.0:
            return stats.amax
        hist = stats.hist
        if self.discard_zero_bin:
            hist = hist.copy()
            hist[0] = 0
        if not hist.any():
            return stats.amax
        m = entropy_threshold(hist, self.num_quant_bins, self.start_bin)
        amax = (m + 0.5) * stats.bin_width
        if self.floor_percentile is not None:
            amax = max(amax, stats.percentile(self.floor_percentile))
        return min(amax, stats.amax)
