"""The build's stages: small typed callables, each replaceable.

:func:`regiontrt.build.pipeline.run_build` plans the build (every refusal first), reads the
region's data, then for each precision the region allows, in order, runs:

0. ``validate``: :func:`make_validator`, the region's validation data and the FP32 reference
   (once per build);
1. ``compile``: :func:`compile_precision`, the precision compiled into the graph and measured
   against FP32 on the region's data. For INT8 this calibrates and, when whole-model INT8
   misses the budget, runs ``search`` (:func:`~regiontrt.precision.mixed.search_mixed_precision`:
   which layers to keep in float);
2. ``backend_build``: :func:`build_payload`, the backend payload, re-measured on the payload where
   this machine runs it;

and for the precision chosen:

3. ``comply``: :func:`check_compliance`, the payload itself against the region's rules;
4. ``package``: :func:`package_engine`, the engine written to its file.

Replace any of them on a builder: ``builder.with_stages(package=my_publish)``. A stage takes
what the one before produced and a :class:`BuildContext`, and returns plain data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from regiontrt._progress import task
from regiontrt.backends import Backend, BuildRequest, BuildResult, load_payload
from regiontrt.backends.tactics import TacticSelector
from regiontrt.build.pins import Pins
from regiontrt.errors import PolicyViolation
from regiontrt.graph.arithmetic import Int8Arithmetic
from regiontrt.precision.int8 import Int8Attempt, Int8Settings
from regiontrt.precision.metrics import MetricPlan
from regiontrt.precision.mixed import MixedPrecisionResult, search_mixed_precision
from regiontrt.precision.policy import PrecisionPolicy
from regiontrt.precision.regions import Region
from regiontrt.precision.types import Precision
from regiontrt.precision.validator import Validator
from regiontrt.runtime.engine import BUILT_HERE, Engine
from regiontrt.shapes.profiles import Profile

log = logging.getLogger("regiontrt.build.pipeline")


@dataclass(frozen=True)
class BuildPlan:
    """What a build settles before any work (every check that can refuse it ran)."""

    model: onnx.ModelProto  # the model as given, with the pinned inputs folded in
    region: Region
    policy: PrecisionPolicy
    candidates: tuple[Precision, ...]
    backend: Backend
    metric: MetricPlan
    arithmetic: Int8Arithmetic
    given_profiles: tuple[Profile, ...] | None = None  # the caller's, resolved on the model
    pins: Pins = field(default_factory=Pins)  # the inputs folded into ``model``, and why


@dataclass(frozen=True)
class BuildContext:
    """What the precision stages read: the plan, the graph and data, the settings."""

    plan: BuildPlan
    settings: Int8Settings  # the builder's state: calibrator, calibration data, thresholds
    tactics: TacticSelector
    cleaned: onnx.ModelProto
    validator: Validator | None
    profiles: Sequence[Profile]
    metadata: dict[str, Any]
    search: Callable[..., MixedPrecisionResult] = search_mixed_precision


@dataclass(frozen=True)
class Candidate:
    """One precision compiled and measured on ONNX Runtime (``variant`` None: cannot fit)."""

    precision: Precision
    variant: onnx.ModelProto | None
    loss: float | None
    kept: tuple[str, ...] = ()
    note: str = ""
    calibration: dict[str, Any] | None = None


def make_validator(data: Any, plan: BuildPlan, *, threads: int = 0,
                   split: tuple[int, int] | None = None) -> Validator:
    """The region's validation data read and its FP32 reference run (ONNX Runtime)."""
    return Validator(data, plan.model, plan.metric, threads=threads, split=split,
                     arithmetic=plan.arithmetic)


def compile_precision(precision: Precision, ctx: BuildContext) -> Candidate:
    """Compile ``precision`` into the cleaned graph and measure it against FP32."""
    plan, validator = ctx.plan, ctx.validator
    if precision is Precision.INT8:
        assert validator is not None  # planning refuses lossy precisions without data
        int8 = Int8Attempt(ctx.settings, plan.policy, ctx.cleaned, plan.region, validator,
                           ctx.search)
        variant, loss, kept, note = int8.compile()
        return Candidate(precision, variant, loss, kept, note, int8.metadata or None)
    variant = plan.policy.compile(ctx.cleaned, precision)
    if validator is None:
        return Candidate(precision, variant, None, note="not measured: no validation data")
    return Candidate(precision, variant, validator.loss_of_model(variant))


def payload_metadata(backend: Backend, result: BuildResult) -> dict[str, Any]:
    """The header fields a payload build decides."""
    return {
        "backend": {"name": backend.name, "version": result.backend_version},
        "payload_format": result.payload_format,
        "target": result.target,
        "build": result.info,
        "gpu": result.info.get("gpu"),
    }


def build_payload(candidate: Candidate, ctx: BuildContext
                  ) -> tuple[BuildResult, float | None, str]:
    """Build the backend payload: ``(result, loss on the payload or None, measured on)``.

    The loss is re-measured on the payload where it runs on this machine and is not the ONNX
    variant itself.
    """
    backend, variant = ctx.plan.backend, candidate.variant
    assert variant is not None
    name = f"{ctx.plan.region.name}-{candidate.precision.value}"
    with task(f"{backend.name} build ({name})"):
        result = backend.build(BuildRequest(variant, candidate.precision, ctx.profiles,
                                            ctx.tactics, name))
    log.info("%s: built the %s payload (%d bytes) for %s", name, result.payload_format,
             len(result.payload), result.target)
    if ctx.validator is None or not result.runnable_here or result.payload_format == "onnx":
        return result, None, "onnxruntime"
    runner = load_payload(backend, result.payload,  # built by this process: vouched for
                          {**ctx.metadata, **payload_metadata(backend, result)}, BUILT_HERE)
    return result, ctx.validator.loss(runner), backend.name


def check_compliance(engine: Engine, region: Region) -> None:
    """Refuse a payload that breaks the region's rules (the payload itself, not the graph).

    Raises:
        PolicyViolation: the payload holds a precision the region forbids.
    """
    built = engine.compliance()
    if not built.compliant:
        raise PolicyViolation(f"region {region.name!r}: the built payload is refused: "
                              f"{built.summary()}")


def package_engine(engine: Engine, path: str | Path | None) -> Engine:
    """Write the engine to ``path`` (atomically, after its own compliance check)."""
    if path is not None:
        engine.save(path)
    return engine


@dataclass(frozen=True)
class Stages:
    """The replaceable stages of a build (see the module docstring)."""

    validate: Callable[..., Validator] = field(default=make_validator)
    compile: Callable[[Precision, BuildContext], Candidate] = field(
        default=compile_precision)
    search: Callable[..., MixedPrecisionResult] = field(default=search_mixed_precision)
    backend_build: Callable[[Candidate, BuildContext], tuple[BuildResult, float | None, str]] = (
        field(default=build_payload))
    comply: Callable[[Engine, Region], None] = field(default=check_compliance)
    package: Callable[[Engine, str | Path | None], Engine] = field(default=package_engine)
