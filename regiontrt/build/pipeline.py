"""The build flow behind :meth:`RegionalEngineBuilder.build`.

For each precision the policy allows, in order: compile it into the graph, measure the loss
against the FP32 model on the region's validation data (ONNX Runtime), try keeping int8's most
sensitive layers in higher precision when whole-model int8 misses the budget, build the backend
payload, and re-measure on the payload itself where this machine can run it. The first precision
within budget wins; if none is, :class:`AccuracyBudgetExceeded` lists every attempt.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from regiontrt._version import __version__
from regiontrt.backends import Backend, BuildResult, get_backend
from regiontrt.build.checks import check_clean, check_header, precision_label
from regiontrt.build.pins import Pins, choose_pins
from regiontrt.build.stages import (
    BuildContext,
    BuildPlan,
    Candidate,
    Stages,
    payload_metadata,
)
from regiontrt.build.state import Shared, State
from regiontrt.data.pinned import without_pinned
from regiontrt.data.sources import profile_split
from regiontrt.data.stats import summarize_inputs
from regiontrt.errors import (
    AccuracyBudgetExceeded,
    Attempt,
    BuildError,
    DataError,
    InvalidArgumentError,
    RegionConfigError,
)
from regiontrt.graph import clean as graph_clean
from regiontrt.graph.arithmetic import Int8Arithmetic, evaluation_record
from regiontrt.graph.control_flow import control_flow_report, trt_control_flow_problems
from regiontrt.graph.io import input_specs, model_sha256, opset_version, output_specs
from regiontrt.graph.pin import fold_pinned_inputs
from regiontrt.precision.compliance import check_model
from regiontrt.precision.metrics import plan_metrics
from regiontrt.precision.policy import PrecisionPolicy, enforce_compliance
from regiontrt.precision.regions import Region
from regiontrt.precision.types import Precision
from regiontrt.precision.validation import PrecisionTrial, ValidationReport
from regiontrt.precision.validator import Validator
from regiontrt.runtime.engine import BUILT_HERE, Engine
from regiontrt.shapes.defaults import ProfileChoice, choose_profiles

# ONNX Runtime's CPU provider runs float16 nodes that lack float16 kernels in float32 (it drops
# the cast pairs around them), so on the CPU an fp16 loss is a lower bound; the report says so.
FP16_ON_CPU = "measured on ONNX Runtime CPU, which computes some fp16 ops in fp32: a lower bound"

log = logging.getLogger("regiontrt.build.pipeline")


def _toolchain(backend: Backend) -> dict[str, str]:
    import onnxruntime

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        backend.name: backend.version(),
        "platform": platform.platform(),
    }


def _base_metadata(region: Region, policy: PrecisionPolicy, shared: Shared,
                   model: onnx.ModelProto, choice: ProfileChoice, state: State,
                   backend: Backend) -> dict[str, Any]:
    """The metadata known before any precision is tried (``model``: pinned inputs folded)."""
    return {
        "regiontrt_version": __version__,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "region": region.to_dict(),
        "policy": policy.to_dict(),
        "model": {
            "sha256": shared.sha256,
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "graph_name": model.graph.name,
            "opset": opset_version(model),
            **shared.origin,
        },
        "inputs": [s.to_dict() for s in input_specs(model)],
        "outputs": [s.to_dict() for s in output_specs(model)],
        "shape_profiles": [p.to_dict() for p in choice.profiles],
        "shape_profile_origin": choice.to_dict(),
        "shape_buckets": state.shape_profile.buckets.for_model(
            model, profiles=list(choice.profiles or choice.derived)).to_dict()
        if state.shape_profile is not None and state.shape_profile.buckets else None,
        "tactics": state.tactics.to_dict(),
        "toolchain": _toolchain(backend),
    }


def _arithmetic(state: State, backend: Backend) -> Int8Arithmetic:
    """The int8 arithmetic of the checks: TensorRT's, unless an ONNX Runtime target asks."""
    asked = state.int8_arithmetic
    if backend.name == "onnxruntime":
        return asked or Int8Arithmetic.TENSORRT
    if asked is Int8Arithmetic.FUSED:
        raise InvalidArgumentError(
            f"int8 arithmetic 'fused' is ONNX Runtime's CPU kernels; a {backend.name} engine "
            "runs TensorRT's arithmetic, which is what its checks use: leave {setting} out "
            "for this backend", setting="int8_arithmetic"
        )
    return Int8Arithmetic.TENSORRT


def plan_build(shared: Shared, state: State) -> BuildPlan:
    """Region, policy, backend, compliance and metric, checked in seconds (fail fast)."""
    if state.region is None:
        raise RegionConfigError("no region chosen: {setting}", setting="region")
    region = state.region
    policy = state.policy or PrecisionPolicy()
    candidates = tuple(policy.candidates(region))
    backend = state.backend if isinstance(state.backend, Backend) else get_backend(state.backend)
    arithmetic = _arithmetic(state, backend)
    model = shared.model
    pins = choose_pins(model, state, candidates, region.name)
    if pins.values:
        model = fold_pinned_inputs(model, pins.values)
    enforce_compliance(model, region)
    metric = plan_metrics(state.metric, output_specs(model), default=region.metric,
                          model=model)
    given = None
    if state.shape_profile is not None:  # a profile that does not fit the model: refused now
        given = tuple(state.shape_profile.resolve(input_specs(model),
                                                  require_all=backend.name != "onnxruntime"))
    if backend.name != "onnxruntime":
        problems = trt_control_flow_problems(model)
        if problems:
            raise BuildError(f"{backend.name} cannot build this model, refused before any build "
                             "work: " + "; ".join(problems))
    if state.validation_data is None and any(p is not Precision.FP32 for p in candidates):
        lossy = ", ".join(p.value for p in candidates if p is not Precision.FP32)
        raise DataError(
            f"region {region.name!r} may build {lossy}, which must be checked against its "
            "accuracy budget: pass the region's data with {setting}", setting="validation",
            region=region.name,
        )
    return BuildPlan(model, region, policy, candidates, backend, metric, arithmetic, given, pins)


def _try_precision(precision: Precision, ctx: BuildContext, stages: Stages
                   ) -> tuple[PrecisionTrial, Candidate, BuildResult | None]:
    """One precision through the compile and backend stages: ``(trial, candidate, payload)``;
    the trial says whether it was accepted."""
    plan, validator, region = ctx.plan, ctx.validator, ctx.plan.region
    candidate = stages.compile(precision, ctx)
    loss, note = candidate.loss, candidate.note
    variant = candidate.variant
    fits = variant is not None and (loss is None or loss <= region.budget)
    per_output = (validator.output_losses(variant)
                  if validator is not None and variant is not None and loss is not None else {})
    measured_on, result = "onnxruntime", None
    if fits:
        assert variant is not None
        enforce_compliance(variant, region)
        result, engine_loss, measured_on = stages.backend_build(candidate, ctx)
        if engine_loss is not None:
            assert validator is not None
            note = (note + "; " if note else "") + f"onnxruntime loss {loss:.4g}"
            loss, fits = engine_loss, engine_loss <= region.budget
            per_output = validator.payload_losses
    if precision is Precision.FP16 and measured_on == "onnxruntime" and loss is not None:
        note = (note + "; " if note else "") + FP16_ON_CPU
    if measured_on == "onnxruntime" and precision is Precision.INT8 and loss is not None:
        note = (note + "; " if note else "") + f"int8 in {plan.arithmetic.value} arithmetic"
    trial = PrecisionTrial(precision.value, loss, region.budget, fits, measured_on,
                           candidate.kept, note, per_output)
    log.info("region %s: %s loss %s vs budget %.4g on %s: %s%s", region.name, precision.value,
             "not measured" if loss is None else f"{loss:.4g}", region.budget, measured_on,
             "accepted" if fits else "rejected", f" ({note})" if note else "",
             extra={"trial": trial.to_dict(), "region": region.name})
    return trial, candidate, result


def _evaluation(plan: BuildPlan, validator: Validator | None, precision: Precision,
                variant: onnx.ModelProto) -> dict[str, Any]:
    """What the checks ran on; for fused int8, also the loss in the portable arithmetic."""
    record = evaluation_record(plan.arithmetic)
    if plan.arithmetic is Int8Arithmetic.FUSED and precision is Precision.INT8 and validator:
        loss = validator.loss_of_model(variant, Int8Arithmetic.TENSORRT)
        record["portable_loss"] = loss if math.isfinite(loss) else None
        log.info("region %s: int8 checked on this CPU's fused kernels (%s); in TensorRT's "
                 "arithmetic its loss is %.4g", plan.region.name,
                 ", ".join(record["cpu"]["flags"]) or "no int8 CPU flags known", loss)
    return record


def _control_flow(metadata: dict[str, Any], plan: BuildPlan, cleaned: onnx.ModelProto) -> None:
    """Record (and log, where int8 is tried) the layers that control flow keeps in float."""
    metadata.update(plan.pins.to_metadata())
    lines = control_flow_report(cleaned)
    if not lines:
        return
    metadata["control_flow"] = lines
    if Precision.INT8 in plan.candidates:
        for line in lines:
            log.warning("region %s: %s", plan.region.name, line)


def _outcome(plan: BuildPlan, validator: Validator | None, precision: Precision,
             variant: onnx.ModelProto, trials: list[PrecisionTrial], label: str
             ) -> dict[str, Any]:
    """The metadata of the chosen precision: label, report, compliance, evaluation, stats."""
    report = ValidationReport(
        metric=plan.metric.name, budget=plan.region.budget, trials=tuple(trials),
        chosen=precision.value, num_samples=validator.num_samples if validator else 0,
        data_fingerprint=validator.fingerprint if validator else "",
        output_metrics=plan.metric.to_dict(),
    )
    sha = model_sha256(variant)
    return {
        "precision": label,
        "kept_high_precision": list(trials[-1].kept_high_precision),
        "variant_sha256": sha,
        "compliance": {
            **check_model(variant, plan.region.to_dict(), checked="onnx variant").to_dict(),
            "variant_sha256": sha,
        },
        "validation": report.to_dict(),
        "evaluation": _evaluation(plan, validator, precision, variant),
        "input_stats": summarize_inputs(validator.batches) if validator is not None else None,
    }


def _without_pins(state: State, pins: Pins) -> State:
    """``state`` with the pinned inputs taken out of its calibration and validation data."""
    if not pins.values:
        return state
    return dataclasses.replace(
        state,
        calibration_data=without_pinned(state.calibration_data, pins.values, "calibration data"),
        validation_data=without_pinned(state.validation_data, pins.values, "validation data"))


def run_build(shared: Shared, state: State, path: str | Path | None) -> Engine:
    """Build the engine described by ``state`` (see the module docstring)."""
    plan = plan_build(shared, state)
    state = _without_pins(state, plan.pins)  # the data still holds what was pinned
    region = plan.region
    log.info("region %s: trying %s in order, budget %g (%s: %s), backend %s", region.name,
             " > ".join(p.value for p in plan.candidates), region.budget, plan.metric.name,
             plan.metric.describe(), plan.backend.name)
    inputs = input_specs(plan.model)
    # one file holding more samples than the profile's max batch is cut to opt batches
    split = profile_split(plan.given_profiles, inputs) if plan.given_profiles else None
    stages = state.stages
    validator = None
    if state.validation_data is not None:
        validator = stages.validate(state.validation_data, plan, threads=state.tactics.cpu_threads,
                                    split=split)
    choice = choose_profiles(plan.given_profiles, inputs, plan.backend.name,
                             validator.shapes() if validator is not None else None)
    if validator is not None:
        validator.check_profiles(choice.profiles)
    metadata = _base_metadata(region, plan.policy, shared, plan.model, choice, state,
                              plan.backend)
    check_header(metadata, plan.backend, plan.model)
    cleaned = shared.cleaned() if plan.model is shared.model else graph_clean.clean(plan.model)
    enforce_compliance(cleaned, region)
    metadata["graph_check"] = check_clean(plan.model, cleaned, validator, choice.profiles,
                                           state.tactics.cpu_threads)
    _control_flow(metadata, plan, cleaned)
    ctx = BuildContext(plan, state, state.tactics, cleaned, validator, choice.profiles,
                       metadata, stages.search)
    trials: list[PrecisionTrial] = []
    calibration = None  # kept when int8 is rejected: the report shows its search
    for precision in plan.candidates:
        started = time.perf_counter()
        log.info("region %s: trying %s", region.name, precision.value)
        trial, candidate, result = _try_precision(precision, ctx, stages)
        calibration = candidate.calibration or calibration
        trials.append(trial)
        if trial.accepted:
            break
    else:
        raise AccuracyBudgetExceeded(
            region.name, plan.metric.name,
            [Attempt(t.precision, t.loss, t.budget, t.note) for t in trials],
        )
    variant = candidate.variant
    assert variant is not None and result is not None
    label, trials[-1] = precision_label(precision, variant, trials[-1])
    trial = trials[-1]
    metadata.update(payload_metadata(plan.backend, result))
    metadata.update(_outcome(plan, validator, precision, variant, trials, label))
    metadata.update({"calibration": calibration,
                     "build_seconds": round(time.perf_counter() - started, 3)})
    engine = Engine(metadata, result.payload, backend=plan.backend, provenance=BUILT_HERE)
    stages.comply(engine, region)  # the payload itself (or a plan's layer report)
    log.info("region %s: chose %s (%d layers kept in float32)%s", region.name, precision.value,
             len(trial.kept_high_precision), f"; writing {path}" if path is not None else "",
             extra={"region": region.name, "chosen": precision.value,
                    "kept": list(trial.kept_high_precision)})
    return stages.package(engine, path)
