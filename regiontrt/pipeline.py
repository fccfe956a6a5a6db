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
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from . import __version__
from .backends import Backend, BuildRequest, BuildResult, Runner, get_backend
from .compliance import check_model
from .datasets import Batch, DataSource
from .datastats import summarize_inputs
from .errors import (
    AccuracyBudgetExceeded,
    Attempt,
    BuildError,
    CalibrationMismatch,
    DataError,
    InvalidModelError,
    RegionConfigError,
    RegionTRTError,
    ShapeOutOfProfile,
)
from .graph.check import (
    check_pass,
    generated_inputs,
    metric_view,
    nondeterministic_outputs,
    run_onnx,
)
from .graph.io import (
    TensorSpec,
    input_specs,
    model_sha256,
    opset_version,
    output_specs,
)
from .policy import PrecisionPolicy, enforce_compliance
from .precision import Precision
from .regions import Region
from .shapes import Profile, ShapeProfile, select_profile
from .validation import (
    MetricFn,
    PrecisionTrial,
    ValidationReport,
    all_finite,
    checked_loss,
    collate,
    get_metric,
)

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
        profiles: Sequence[Profile] | None = None,
    ) -> None:
        self.inputs = input_specs(reference)
        if not self.inputs:
            raise DataError("the model has no inputs, so validation data cannot feed it")
        source = DataSource(data, self.inputs)
        try:
            self.batches: list[Batch] = source.materialize()
        except RegionTRTError:
            raise
        except Exception as exc:  # a user iterable or loader that fails
            raise DataError(f"reading the validation data failed: {exc!r}") from exc
        self.fingerprint = source.fingerprint
        self.num_samples = source.num_samples
        for i, batch in enumerate(self.batches):
            for name, arr in batch.items():
                if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
                    raise DataError(
                        f"validation batch {i}, input {name!r} holds NaN or Inf: the accuracy "
                        "gate needs finite data"
                    )
        if profiles is not None:
            self.check_profiles(profiles)
        self.metric_name, self.metric = metric
        try:
            self.reference_batches = run_onnx(reference, self.batches)
        except RegionTRTError:
            raise
        except Exception as exc:  # ONNX Runtime's own errors (custom ops, bad graphs)
            raise InvalidModelError(
                f"ONNX Runtime cannot run the FP32 model on the validation data (custom-domain "
                f"ops need their runtime library): {exc}"
            ) from exc
        self.reference = collate(self.reference_batches)
        if not all_finite(self.reference):
            raise DataError(
                "the FP32 model's outputs on the validation data hold NaN or Inf: no loss can be "
                "measured against them; check the data and the model"
            )

    def shapes(self) -> list[dict[str, tuple[int, ...]]]:
        """The input shapes of each batch."""
        return [{k: tuple(v.shape) for k, v in b.items()} for b in self.batches]

    def check_profiles(self, profiles: Sequence[Profile]) -> None:
        """Refuse validation batches that no profile covers."""
        for i, shapes in enumerate(self.shapes()):
            try:
                select_profile(profiles, shapes)
            except ShapeOutOfProfile as exc:
                raise DataError(
                    f"validation batch {i} does not fit the shape profile: {exc}"
                ) from None

    def _outputs(self, runner: Runner) -> dict[str, Any]:
        try:
            return collate([runner.run(b) for b in self.batches])
        finally:
            runner.close()

    def _score(self, outputs: dict[str, Any]) -> float:
        # Non-float outputs must match exactly; NaN/inf that agree do not poison the metric.
        ref, cand, differs = metric_view(self.reference, outputs)
        if differs is not None:
            return float("inf")
        return checked_loss(self.metric_name, self.metric, ref, cand) if ref else 0.0

    def loss(self, runner: Runner) -> float:
        """The metric's loss of ``runner`` against the FP32 reference (``inf`` for NaN outputs)."""
        return self._score(self._outputs(runner))

    def loss_of_model(self, model: onnx.ModelProto) -> float:
        """The loss of an ONNX variant, run with ONNX Runtime."""
        try:
            outputs = run_onnx(model, self.batches)
        except RegionTRTError:
            raise
        except Exception as exc:
            raise BuildError(f"ONNX Runtime cannot load or run a compiled variant: {exc}") from exc
        return self._score(collate(outputs))


def _check_clean(original: onnx.ModelProto, cleaned: onnx.ModelProto,
                 validator: Validator | None, profiles: Sequence[Profile]) -> dict[str, Any]:
    """Check the cleaned graph against the original on the validation data or generated inputs.

    Raises:
        GraphPassError: the cleaned graph computes something else.
    """
    if validator is not None:
        batches, reference = validator.batches, validator.reference_batches
        source = "validation data"
    else:
        opt = {n: r.opt for n, r in profiles[0].ranges.items()} if profiles else {}
        batches, source = [generated_inputs(input_specs(original), opt)], "generated inputs"
        try:
            reference = run_onnx(original, batches)
        except Exception as exc:
            warnings.warn(f"graph check not run: the original model rejects generated inputs "
                          f"({exc}); pass validation data to check the cleaned graph", stacklevel=3)
            return {"pass": "clean", "inputs": source, "checked": False, "reason": str(exc)[:300]}
    skip = nondeterministic_outputs(original, batches[0], reference[0])
    result = check_pass("clean", reference, cleaned, batches, skip_values=skip)
    return {**result.to_dict(), "inputs": source, "checked": True}


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


class _Int8:
    """Calibration, mismatch check and mixed-precision search for one region's int8 attempt."""

    def __init__(self, state: _State, policy: PrecisionPolicy, cleaned: onnx.ModelProto,
                 region: Region, validator: Validator) -> None:
        self.state, self.policy, self.cleaned = state, policy, cleaned
        self.region, self.validator = region, validator
        self.metadata: dict[str, Any] = {}

    def compile(self) -> tuple[onnx.ModelProto | None, float | None, tuple[str, ...], str]:
        """Returns ``(variant, loss, kept layers, note)``; ``variant`` is None if it can't fit."""
        from .calibration import EntropyCalibrator, check_mismatch

        if self.state.calibration_data is None:
            raise DataError(
                f"region {self.region.name!r} allows int8, which needs the region's own "
                "calibration data: .with_calibrator(data=...) (or remove int8 with "
                ".with_precision([...]))"
            )
        plan = self.policy.quantization_plan(self.cleaned)
        if not plan.nodes:
            return None, None, (), "no quantizable layer in the model"
        self.calibrator = self.state.calibrator or EntropyCalibrator()
        result = self.calibrator.calibrate(
            self.cleaned, self.state.calibration_data, plan.activations
        )
        self.amax = dict(result.amax)
        mismatch = check_mismatch(self.cleaned, result.amax, self.validator.batches,
                                  threshold=self.state.mismatch_threshold)
        strict = self.state.strict_calibration
        if strict is None:
            strict = self.region.strict_calibration
        self.metadata = {
            "method": result.method,
            "calibrator": f"{type(self.calibrator).__module__}."
                          f"{type(self.calibrator).__qualname__}",
            "fingerprint": result.fingerprint,
            "num_samples": result.num_samples,
            "num_batches": result.num_batches,
            "seconds": round(result.seconds, 3),
            "mismatch": mismatch.to_dict(),
        }
        if mismatch.exceeded:
            message = (
                f"region {self.region.name!r}: the validation data lies outside the calibrated "
                f"ranges; was the calibration set drawn from another region? {mismatch.summary()}"
            )
            if strict:
                raise CalibrationMismatch(message)
            warnings.warn(message, stacklevel=4)
        variant = self._variant(())
        loss = self.validator.loss_of_model(variant)
        budget = self.region.budget
        if loss <= budget or not self.policy.search_mixed:
            return self._done(variant, loss, (), "")
        from .mixed import search_mixed_precision

        search = search_mixed_precision(
            plan.nodes, lambda keep: self.validator.loss_of_model(self._variant(keep)), budget,
            max_kept=int(self.policy.max_kept_fraction * len(plan.nodes)),
        )
        self.metadata["mixed_precision"] = {"whole_model_loss": loss, **search.to_dict()}
        if not search.fits:
            note = (f"whole-model int8 loss {loss:.4g}; keeping up to {len(search.kept)} "
                    f"sensitive layers still gave {search.loss:.4g}")
            return self._done(None, search.loss, search.kept, note)
        note = (f"whole-model int8 loss {loss:.4g} over budget; kept {len(search.kept)} of "
                f"{len(plan.nodes)} layers in float32")
        return self._done(self._variant(search.kept), search.loss, search.kept, note)

    def _variant(self, keep: Iterable[str]) -> onnx.ModelProto:
        """The int8 graph with ``keep`` left in float32.

        Leaving a layer out can move Q/DQ onto tensors the first plan did not need (the skip
        branch of a residual Add whose conv is no longer quantized); those are calibrated here,
        on the same calibration data, the first time they are needed.
        """
        missing = [t for t in self.policy.quantization_plan(self.cleaned, keep).activations
                   if t not in self.amax]
        if missing:
            extra = self.calibrator.calibrate(self.cleaned, self.state.calibration_data, missing)
            self.amax.update(extra.amax)
        return self.policy.compile(self.cleaned, Precision.INT8, amax=self.amax, keep=keep)

    def _done(self, variant: onnx.ModelProto | None, loss: float | None, kept: tuple[str, ...],
              note: str) -> tuple[onnx.ModelProto | None, float | None, tuple[str, ...], str]:
        self.metadata["amax"] = {k: float(v) for k, v in sorted(self.amax.items())}
        return variant, loss, kept, note


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
    enforce_compliance(shared.model, region)
    cleaned = shared.cleaned()
    enforce_compliance(cleaned, region)
    inputs, outputs = input_specs(cleaned), output_specs(cleaned)
    metric = get_metric(state.metric, default=region.metric)
    validator = None
    if state.validation_data is not None:
        validator = Validator(state.validation_data, shared.model, metric)
    require_all = backend.name != "onnxruntime"
    if state.shape_profile is not None:  # a subclass may override resolve() without observed=
        profiles = state.shape_profile.resolve(inputs, require_all=require_all)
    else:  # the default profile spans the validation data's shapes
        observed = validator.shapes() if validator is not None else None
        profiles = ShapeProfile().resolve(inputs, require_all=require_all, observed=observed)
    if validator is not None:
        validator.check_profiles(profiles)
    elif any(p is not Precision.FP32 for p in candidates):
        lossy = ", ".join(p.value for p in candidates if p is not Precision.FP32)
        raise DataError(
            f"region {region.name!r} may build {lossy}, which must be checked against its "
            "accuracy budget: pass the region's data with .with_validation(data)"
        )
    graph_check = _check_clean(shared.model, cleaned, validator, profiles)
    metadata = _base_metadata(region, policy, shared, inputs, outputs, profiles, state, backend)
    metadata["graph_check"] = graph_check
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
        "compliance": {
            **check_model(variant, region.to_dict(), checked="onnx variant").to_dict(),
            "variant_sha256": model_sha256(variant),
        },
        "validation": report.to_dict(),
        "calibration": calibration,
        "input_stats": summarize_inputs(validator.batches) if validator is not None else None,
        "build_seconds": round(time.perf_counter() - started, 3),
    })
    engine = Engine(metadata, result.payload, backend=backend)
    if path is not None:
        engine.save(path)
    return engine

