"""The build layer: one ONNX model into one region's engine.

:class:`RegionalEngineBuilder` (fluent, immutable) composes the strategies; :func:`run_build`
plans and refuses early, reads the region's data, then runs the replaceable :class:`Stages`:
compile (and measure, and search) each precision, build the backend payload, check compliance,
package the engine. :func:`retarget` rebuilds an
engine's precision-compiled graph for another backend.

May import every layer below: ``graph``, ``data``, ``shapes``, ``calibration``, ``precision``,
``backends``, ``runtime``. Never deploy, serve, report or the CLI.
"""

from regiontrt.build.builder import RegionalEngineBuilder
from regiontrt.build.pipeline import run_build
from regiontrt.build.retarget import retarget
from regiontrt.build.stages import (
    BuildContext,
    BuildPlan,
    Candidate,
    Stages,
    build_payload,
    check_compliance,
    compile_precision,
    package_engine,
)

__all__ = ["BuildContext", "BuildPlan", "Candidate", "RegionalEngineBuilder", "Stages",
           "build_payload", "check_compliance", "compile_precision", "package_engine", "retarget",
           "run_build"]
