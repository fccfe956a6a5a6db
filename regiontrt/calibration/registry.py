"""Calibrators by method name (``--calibrator``, fleet files, ``with_calibrator("entropy")``)."""

from __future__ import annotations

from typing import Any

from regiontrt.calibration.auto import AutoCalibrator
from regiontrt.calibration.base import (
    Calibrator,
    EntropyCalibrator,
    MinMaxCalibrator,
    PercentileCalibrator,
)
from regiontrt.errors import RegionConfigError

_CALIBRATORS: dict[str, type[Calibrator]] = {
    "auto": AutoCalibrator,
    "entropy": EntropyCalibrator,
    "percentile": PercentileCalibrator,
    "minmax": MinMaxCalibrator,
}


def get_calibrator(name: str, **kwargs: Any) -> Calibrator:
    """A calibrator by method name: ``"auto"``, ``"entropy"``, ``"percentile"`` or ``"minmax"``.

    Keyword arguments go to its constructor (e.g. ``percentile=99.9``).

    Raises:
        RegionConfigError: an unknown name or bad arguments.
    """
    key = name.strip().lower().replace("-", "").replace("_", "")
    cls = _CALIBRATORS.get(key)
    if cls is None:
        known = ", ".join(_CALIBRATORS)
        raise RegionConfigError(f"unknown calibrator {name!r}; known: {known}")
    return cls(**kwargs)
