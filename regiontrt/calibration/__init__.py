"""INT8 calibration from a region's own data: streaming statistics, calibrators, caches, checks.

* :class:`AutoCalibrator` (the default): per tensor, the candidate range (entropy, percentiles,
  max) of least int8 error on the tensor's histogram.
* :class:`Calibrator` and its methods :class:`EntropyCalibrator` (TensorRT's KL-divergence
  search, vectorised), :class:`PercentileCalibrator` and :class:`MinMaxCalibrator`; subclass
  :class:`Calibrator` and override :meth:`~Calibrator.compute_amax` for a new method.
* :func:`collect_statistics`: one streaming pass through ONNX Runtime into :class:`TensorStats`,
  so peak memory does not grow with the calibration set.
* :func:`read_calibration_cache` / :func:`write_calibration_cache`: TensorRT's cache text format.
* :func:`check_mismatch`: validation activations against the calibrated ranges.
"""

from __future__ import annotations

from regiontrt.calibration.auto import AutoCalibrator, quantization_mse
from regiontrt.calibration.base import (
    CalibrationResult,
    Calibrator,
    EntropyCalibrator,
    MinMaxCalibrator,
    PercentileCalibrator,
)
from regiontrt.calibration.cache import (
    parse_calibration_cache,
    read_calibration_cache,
    write_calibration_cache,
)
from regiontrt.calibration.collect import activation_tensors, collect_statistics
from regiontrt.calibration.entropy import (
    entropy_divergences,
    entropy_divergences_reference,
    entropy_threshold,
    entropy_threshold_reference,
)
from regiontrt.calibration.mismatch import MismatchReport, check_mismatch
from regiontrt.calibration.registry import get_calibrator
from regiontrt.calibration.stats import TensorStats

__all__ = [
    "AutoCalibrator",
    "CalibrationResult",
    "Calibrator",
    "EntropyCalibrator",
    "MinMaxCalibrator",
    "MismatchReport",
    "PercentileCalibrator",
    "TensorStats",
    "activation_tensors",
    "check_mismatch",
    "collect_statistics",
    "entropy_divergences",
    "entropy_divergences_reference",
    "entropy_threshold",
    "entropy_threshold_reference",
    "get_calibrator",
    "parse_calibration_cache",
    "quantization_mse",
    "read_calibration_cache",
    "write_calibration_cache",
]
