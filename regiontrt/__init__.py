"""regiontrt: one ONNX model, per-region TensorRT engines under each region's policy.

>>> import regiontrt as rt
>>> base = rt.RegionalEngineBuilder.from_onnx("model.onnx")          # doctest: +SKIP
>>> eu = base.for_region("EU").with_validation(eu_data).build()      # doctest: +SKIP

The root holds what most programs need: the builder, the strategy bases and their built-ins,
engines, serving, bundles and the base error. Everything else is one level down, by layer:
``rt.graph``, ``rt.data``, ``rt.shapes``, ``rt.calibration``, ``rt.precision``, ``rt.backends``,
``rt.runtime``, ``rt.build``, ``rt.deploy``, ``rt.serve``, ``rt.report``, ``rt.errors``
(``docs/architecture.md``). Names load on first use, so ``import regiontrt`` stays fast and
optional packages (TensorRT, cuda-python, Dask, the web stack) load only when asked for.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import TYPE_CHECKING, Any

from regiontrt import _moved
from regiontrt._version import __version__

# Public name -> module; resolved on first attribute access.
_LAZY = {
    "RegionalEngineBuilder": "regiontrt.build.builder",
    "PrecisionPolicy": "regiontrt.precision.policy",
    "Precision": "regiontrt.precision.types",
    "Region": "regiontrt.precision.regions",
    "get_region": "regiontrt.precision.regions",
    "load_regions": "regiontrt.precision.regions",
    "Calibrator": "regiontrt.calibration",
    "AutoCalibrator": "regiontrt.calibration",
    "EntropyCalibrator": "regiontrt.calibration",
    "PercentileCalibrator": "regiontrt.calibration",
    "MinMaxCalibrator": "regiontrt.calibration",
    "ShapeProfile": "regiontrt.shapes.profiles",
    "Bucketing": "regiontrt.shapes.buckets",
    "TacticSelector": "regiontrt.backends.tactics",
    "DataSource": "regiontrt.data.sources",
    "Engine": "regiontrt.runtime.engine",
    "load_engine": "regiontrt.runtime.engine",
    "inspect": "regiontrt.runtime.inspection",
    "serve": "regiontrt.serve",
    "load_bundle": "regiontrt.deploy",
    "RegionTRTError": "regiontrt.errors",
}
#: The layers, reachable as ``rt.<name>`` without an import.
_PACKAGES = ("graph", "data", "shapes", "calibration", "precision", "backends", "runtime",
             "build", "deploy", "report", "errors", "cli", "demo", "testing")
# Names the root exported before the split into layers: they still resolve, with a warning
# naming their place one level down.
_FORMER = {
    "RegionRegistry": "regiontrt.precision.regions",
    "default_regions": "regiontrt.precision.regions",
    "BenchmarkReport": "regiontrt.runtime.benchmarking",
    "QuantizeOptions": "regiontrt.graph.quantize",
    "available_backends": "regiontrt.backends",
}

__all__ = ["__version__", *sorted(_LAZY)]

_moved.install()
if "IPython" in sys.modules:  # a notebook: give engines, reports and bundles their HTML views
    import regiontrt.report


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif name in _PACKAGES:
        value = importlib.import_module(f"regiontrt.{name}")
    elif name in _moved.MOVED:
        value = _moved.moved(name)
    else:
        errors = importlib.import_module("regiontrt.errors")
        home = _FORMER.get(name) or ("regiontrt.errors" if hasattr(errors, name) else None)
        if home is None:
            raise AttributeError(f"module 'regiontrt' has no attribute {name!r}")
        warnings.warn(f"regiontrt.{name} moved to {home}.{name}; the root keeps it for one "
                      "more release", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # what a user should see: the public names and the layers, not this module's own helpers
    return sorted({*__all__, *_PACKAGES, "serve"})


if TYPE_CHECKING:
    from regiontrt import (
        backends,
        build,
        calibration,
        cli,
        data,
        demo,
        deploy,
        errors,
        graph,
        precision,
        report,
        runtime,
        shapes,
        testing,
    )
    from regiontrt.backends.tactics import TacticSelector
    from regiontrt.build.builder import RegionalEngineBuilder
    from regiontrt.calibration import (
        AutoCalibrator,
        Calibrator,
        EntropyCalibrator,
        MinMaxCalibrator,
        PercentileCalibrator,
    )
    from regiontrt.data.sources import DataSource
    from regiontrt.deploy import load_bundle
    from regiontrt.errors import RegionTRTError
    from regiontrt.precision.policy import PrecisionPolicy
    from regiontrt.precision.regions import Region, get_region, load_regions
    from regiontrt.precision.types import Precision
    from regiontrt.runtime.engine import Engine, load_engine
    from regiontrt.runtime.inspection import inspect
    from regiontrt.shapes.buckets import Bucketing
    from regiontrt.shapes.profiles import ShapeProfile
