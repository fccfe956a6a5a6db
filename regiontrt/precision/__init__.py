"""The precision layer: what a region allows, how a precision is compiled and how it is judged.

Regions and their rules (:class:`Region`), the precisions (:class:`Precision`), the policy that
compiles FP16 casts and INT8 Q/DQ into the graph (:class:`PrecisionPolicy`), INT8's calibration
and mixed-precision search, compliance scans, the metrics that judge each output, and the
validator that measures a candidate against FP32 on the region's data.

May import: ``errors``, ``graph``, ``data``, ``shapes``, ``calibration``. Never the runtime,
build, deploy, serve, report or CLI layers.
"""

from regiontrt.precision.compliance import ComplianceReport, check_model
from regiontrt.precision.metrics import MetricPlan, plan_metrics
from regiontrt.precision.policy import PrecisionPolicy
from regiontrt.precision.regions import (
    Region,
    RegionRegistry,
    default_regions,
    get_region,
    load_regions,
)
from regiontrt.precision.types import Precision
from regiontrt.precision.validation import PrecisionTrial, ValidationReport
from regiontrt.precision.validator import Validator, validate_engine

__all__ = [
    "ComplianceReport", "MetricPlan", "Precision", "PrecisionPolicy", "PrecisionTrial", "Region",
    "RegionRegistry", "ValidationReport", "Validator", "check_model", "default_regions",
    "get_region", "load_regions", "plan_metrics", "validate_engine",
]
