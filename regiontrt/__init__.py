"""regiontrt: one ONNX model, per-region TensorRT engines under each region's policy.

>>> import regiontrt as rt
>>> base = rt.RegionalEngineBuilder.from_onnx("model.onnx")          # doctest: +SKIP
>>> eu = base.for_region("EU").with_validation(eu_data).build()      # doctest: +SKIP

Heavy or optional packages (TensorRT, TensorRT-RTX, cuda-python, ONNX Runtime) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> module; resolved on first attribute access so `import regiontrt` stays fast.
_LAZY = {
    "RegionalEngineBuilder": "regiontrt.builder",
    "PrecisionPolicy": "regiontrt.policy",
    "Precision": "regiontrt.precision",
    "ShapeProfile": "regiontrt.shapes",
    "Bucketing": "regiontrt.shapes",
    "TacticSelector": "regiontrt.tactics",
    "Region": "regiontrt.regions",
    "RegionRegistry": "regiontrt.regions",
    "default_regions": "regiontrt.regions",
    "get_region": "regiontrt.regions",
    "load_regions": "regiontrt.regions",
    "Engine": "regiontrt.engine",
    "BenchmarkReport": "regiontrt.engine",
    "load_engine": "regiontrt.engine",
    "inspect": "regiontrt.inspection",
    "Calibrator": "regiontrt.calibration",
    "EntropyCalibrator": "regiontrt.calibration",
    "PercentileCalibrator": "regiontrt.calibration",
    "MinMaxCalibrator": "regiontrt.calibration",
    "QuantizeOptions": "regiontrt.graph.quantize",
    "DataSource": "regiontrt.datasets",
    "available_backends": "regiontrt.backends",
    "load_bundle": "regiontrt.deploy",
    "serve": "regiontrt.serve",
}
_ERRORS = (
    "RegionTRTError", "InvalidModelError", "UnknownRegionError", "RegionConfigError",
    "PolicyViolation", "AccuracyBudgetExceeded", "DataError", "CalibrationMismatch", "InputError",
    "ShapeOutOfProfile", "ShapeProfileError", "ArtifactError", "IncompatibleEngineError",
    "BackendUnavailable", "BuildError", "CudaError", "SignatureError",
    "Overloaded", "DeadlineExceeded", "ServerClosed",
    "InvalidArgumentError", "MetricError", "EngineRuntimeError",
    "FleetError", "BundleError", "RegistryError", "DowngradeError", "GraphPassError",
)
_LAZY.update({name: "regiontrt.errors" for name in _ERRORS})

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'regiontrt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from .backends import available_backends
    from .builder import RegionalEngineBuilder
    from .calibration import Calibrator, EntropyCalibrator, MinMaxCalibrator, PercentileCalibrator
    from .datasets import DataSource
    from .deploy import load_bundle
    from .engine import BenchmarkReport, Engine, load_engine
    from .errors import (
        AccuracyBudgetExceeded,
        ArtifactError,
        BackendUnavailable,
        BuildError,
        BundleError,
        CalibrationMismatch,
        CudaError,
        DataError,
        DeadlineExceeded,
        DowngradeError,
        EngineRuntimeError,
        FleetError,
        GraphPassError,
        IncompatibleEngineError,
        InputError,
        InvalidArgumentError,
        InvalidModelError,
        MetricError,
        Overloaded,
        PolicyViolation,
        RegionConfigError,
        RegionTRTError,
        RegistryError,
        ServerClosed,
        ShapeOutOfProfile,
        ShapeProfileError,
        SignatureError,
        UnknownRegionError,
    )
    from .graph.quantize import QuantizeOptions
    from .inspection import inspect
    from .policy import PrecisionPolicy
    from .precision import Precision
    from .regions import Region, RegionRegistry, default_regions, get_region, load_regions
    from .serve import serve
    from .shapes import Bucketing, ShapeProfile
    from .tactics import TacticSelector
