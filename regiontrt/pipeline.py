"""The build flow behind :meth:`RegionalEngineBuilder.build`.

For each precision the policy allows, in order: compile it into the graph, measure the loss
against the FP32 model on the region's validation data (ONNX Runtime), try keeping int8's most
sensitive layers in higher precision when whole-model int8 misses the budget, build the backend
payload, and re-measure on the payload itself where this machine can run it. The first precision
within budget wins; if none is, :class:`AccuracyBudgetExceeded` lists every attempt.
"""

from __future__ import annotations

import datetime as _dt
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from . import __version__
from .backends import Backend, BuildRequest, BuildResult, Runner, get_backend
from .backends.onnxruntime import OnnxRuntimeRunner
from .datasets import Batch, DataSource
from .errors import (
    AccuracyBudgetExceeded,
    Attempt,
    DataError,
    RegionConfigError,
    ShapeOutOfProfile,
)
from .graph.io import (
    TensorSpec,
    input_specs,
    model_bytes,
    model_sha256,
    opset_version,
    output_specs,
)
from .int8 import Int8Attempt
from .policy import PrecisionPolicy, enforce_compliance
from .precision import Precision
from .regions import Region
from .shapes import Profile, ShapeProfile, select_profile
from .validation import MetricFn, PrecisionTrial, ValidationReport, collate, get_metric

if TYPE_CHECKING:
    from .builder import _Shared, _State
    from .engine import Engine


# ONNX Runtime's CPU provider runs float16 nodes that lack float16 kernels in float32 (it drops
# the cast pairs around them), so on the CPU an fp16 loss is a lower bound; the report says so.
FP16_ON_CPU = "measured on ONNX Runtime CPU, which computes some fp16 ops in fp32: a lower bound"


class Validator:
    """The region's validation batches, their FP32 reference outputs, and the metric."""

    def __init__(
        self,
        data: Any,
        reference: onnx.ModelProto,
        metric: tuple[str, MetricFn],
        profiles: Sequence[Profile],
    ) -> None:
        self.inputs = input_specs(reference)
        source = DataSource(data, self.inputs)
        self.batches: list[Batch] = source.materialize()
        self.fingerprint = source.fingerprint
        self.num_samples = source.num_samples
        for i, batch in enumerate(self.batches):
            try:
                select_profile(profiles, {k: v.shape for k, v in batch.items()})
            except ShapeOutOfProfile as exc:
                raise DataError(
                    f"validation batch {i} does not fit the shape profile: {exc}"
                ) from None
        self.metric_name, self.metric = metric
        self.reference = self._outputs(OnnxRuntimeRunner(model_bytes(reference)))

    def _outputs(self, runner: Runner) -> dict[str, Any]:
        try:
            return collate([runner.run(b) for b in self.batches])
        finally:
            runner.close()

    def loss(self, runner: Runner) -> float:
        """The metric's loss of ``runner`` against the FP32 reference."""
        return float(self.metric(self.reference, self._outputs(runner)))

    def loss_of_model(self, model: onnx.ModelProto) -> float:
        """The loss of an ONNX variant, run with ONNX Runtime."""
        return self.loss(OnnxRuntimeRunner(model_bytes(model)))


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


# The int8 attempt lives in its own module; the old name stays for importers.
_Int8 = Int8Attempt


def _base_metadata(region: Region, policy: PrecisionPolicy, shared: _Shared,
                   inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                   profiles: Sequence[Profile], state: _State, backend: Backend) -> dict[str, Any]:
    model = shared.model
    return {
        "regiontrt_version": __version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "region": region.to_dict(),
        "policy": policy.to_dict(),
        "model": {
            "sha256": shared.sha256,
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "graph_name": model.graph.name,
            "opset": opset_version(model),
        },
        "inputs": [s.to_dict() for s in inputs],
        "outputs": [s.to_dict() for s in outputs],
        "shape_profiles": [p.to_dict() for p in profiles],
        "shape_buckets": state.shape_profile.buckets.to_dict()
        if state.shape_profile is not None and state.shape_profile.buckets else None,
        "tactics": state.tactics.to_dict(),
        "toolchain": _toolchain(backend),
    }


def _try_payload(
    backend: Backend, variant: onnx.ModelProto, precision: Precision, profiles: Sequence[Profile],
    state: _State, name: str, metadata: dict[str, Any], validator: Validator | None,
) -> tuple[BuildResult, float | None, str]:
    """Build the payload; measure on it when it runs here and is not the ONNX variant itself."""
    result = backend.build(BuildRequest(variant, precision, profiles, state.tactics, name))
    if validator is None or not result.runnable_here or result.payload_format == "onnx":
        return result, None, "onnxruntime"
    runner = backend.load(result.payload, {**metadata, **_payload_metadata(backend, result)})
    return result, validator.loss(runner), backend.name


def _payload_metadata(backend: Backend, result: BuildResult) -> dict[str, Any]:
    return {
        "backend": {"name": backend.name, "version": result.backend_version},
        "payload_format": result.payload_format,
        "target": result.target,
        "build": result.info,
        "gpu": result.info.get("gpu"),
    }


def run_build(shared: _Shared, state: _State, path: str | Path | None) -> Engine:
    """Build the engine described by ``state`` (see the module docstring)."""
    from .engine import Engine

    if state.region is None:
        raise RegionConfigError("no region chosen: call .for_region(name) before .build()")
    region = state.region
    policy = state.policy or PrecisionPolicy()
    candidates = policy.candidates(region)
    backend = state.backend if isinstance(state.backend, Backend) else get_backend(state.backend)
    cleaned = shared.cleaned()
    enforce_compliance(cleaned, region)
    inputs, outputs = input_specs(cleaned), output_specs(cleaned)
    profiles = (state.shape_profile or ShapeProfile()).resolve(
        inputs, require_all=backend.name != "onnxruntime"
    )
    metric = get_metric(state.metric, default=region.metric)
    validator = None
    if state.validation_data is not None:
        validator = Validator(state.validation_data, shared.model, metric, profiles)
    elif any(p is not Precision.FP32 for p in candidates):
        lossy = ", ".join(p.value for p in candidates if p is not Precision.FP32)
        raise DataError(
            f"region {region.name!r} may build {lossy}, which must be checked against its "
            "accuracy budget: pass the region's data with .with_validation(data)"
        )
    metadata = _base_metadata(region, policy, shared, inputs, outputs, profiles, state, backend)
    trials: list[PrecisionTrial] = []
    calibration: dict[str, Any] | None = None
    for precision in candidates:
        started = time.perf_counter()
        kept: tuple[str, ...] = ()
        note = ""
        if precision is Precision.INT8:
            assert validator is not None
            int8 = _Int8(state, policy, cleaned, region, validator)
            variant, loss, kept, note = int8.compile()
            calibration = int8.metadata or None
        else:
            variant = policy.compile(cleaned, precision)
            loss = validator.loss_of_model(variant) if validator is not None else None
            if validator is None:
                note = "not measured: no validation data"
        fits = variant is not None and (loss is None or loss <= region.budget)
        measured_on = "onnxruntime"
        if fits and variant is not None:
            enforce_compliance(variant, region)
            result, engine_loss, measured_on = _try_payload(
                backend, variant, precision, profiles, state,
                f"{region.name}-{precision.value}", metadata, validator)
            if engine_loss is not None:
                note = (note + "; " if note else "") + f"onnxruntime loss {loss:.4g}"
                loss, fits = engine_loss, engine_loss <= region.budget
        if precision is Precision.FP16 and measured_on == "onnxruntime" and loss is not None:
            note = (note + "; " if note else "") + FP16_ON_CPU
        trials.append(PrecisionTrial(precision.value, loss, region.budget, fits, measured_on,
                                     kept, note))
        if fits and variant is not None:
            break
    else:
        raise AccuracyBudgetExceeded(
            region.name, metric[0],
            [Attempt(t.precision, t.loss, t.budget, t.note) for t in trials],
        )
    report = ValidationReport(
        metric=metric[0], budget=region.budget, trials=tuple(trials), chosen=precision.value,
        num_samples=validator.num_samples if validator else 0,
        data_fingerprint=validator.fingerprint if validator else "",
    )
    metadata.update(_payload_metadata(backend, result))
    metadata.update({
        "precision": precision.value,
        "kept_high_precision": list(kept),
        "variant_sha256": model_sha256(variant),
        "validation": report.to_dict(),
        "calibration": calibration,
        "build_seconds": round(time.perf_counter() - started, 3),
    })
    engine = Engine(metadata, result.payload, backend=backend)
    if path is not None:
        engine.save(path)
    return engine

