"""The build flow behind :meth:`RegionalEngineBuilder.build`.

For each precision the policy allows, in order: compile it into the graph, measure the loss
against the FP32 model on the region's validation data (ONNX Runtime), try keeping int8's most
sensitive layers in higher precision when whole-model int8 misses the budget, build the backend
payload, and re-measure on the payload itself where this machine can run it. The first precision
within budget wins; if none is, :class:`AccuracyBudgetExceeded` lists every attempt.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import platform
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from . import __version__
from ._progress import task, track
from .backends import Backend, BuildRequest, BuildResult, Runner, get_backend
from .compliance import check_model
from .datasets import Batch, DataSource, profile_split
from .datastats import summarize_inputs
from .errors import (
    AccuracyBudgetExceeded,
    Attempt,
    BuildError,
    DataError,
    InvalidModelError,
    PolicyViolation,
    RegionConfigError,
    RegionTRTError,
    ShapeOutOfProfile,
)
from .graph.check import (
    check_pass,
    generated_inputs,
    metric_view,
    reference_outputs,
    run_onnx,
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

log = logging.getLogger("regiontrt.pipeline")


class Validator:
    """The region's validation batches, their FP32 reference outputs, and the metric."""

    def __init__(
        self,
        data: Any,
        reference: onnx.ModelProto,
        metric: tuple[str, MetricFn],
        profiles: Sequence[Profile] | None = None,
        threads: int = 0,
        split: tuple[int, int] | None = None,
    ) -> None:
        self.inputs = input_specs(reference)
        if not self.inputs:
            raise DataError("the model has no inputs, so validation data cannot feed it")
        self.split = split  # (max, opt): a batch over the profile's max is cut to opt batches
        source = DataSource(data, self.inputs, split=split)
        try:
            self.batches: list[Batch] = source.materialize()
        except RegionTRTError:
            raise
        except Exception as exc:  # a user iterable or loader that fails
            raise DataError(f"reading the validation data failed: {exc!r}") from exc
        self.fingerprint = source.fingerprint
        self.num_samples = source.num_samples
        log.info("validation data: %d samples in %d batches", self.num_samples, len(self.batches))
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
        self.threads = threads
        self._runs: dict[str, list[dict[str, Any]]] = {}
        try:
            self.reference_batches, self.nondeterministic = reference_outputs(
                reference, self.batches, threads=threads)
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

    def model_outputs(self, model: onnx.ModelProto) -> list[dict[str, Any]]:
        """Per-batch outputs of an ONNX graph (cached: the FP32 variant is the cleaned graph)."""
        data = model_bytes(model)
        key = hashlib.sha256(data).hexdigest()
        if key not in self._runs:
            with task(f"validation ({len(self.batches)} batches)", log_level=logging.DEBUG):
                self._runs[key] = run_onnx(data, self.batches, threads=self.threads)
        return self._runs[key]

    def _outputs(self, runner: Runner) -> dict[str, Any]:
        try:
            return collate([runner.run(b) for b in track(self.batches, "validation on the payload",
                                                          log_level=logging.DEBUG)])
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
            outputs = self.model_outputs(model)
        except RegionTRTError:
            raise
        except Exception as exc:
            raise BuildError(f"ONNX Runtime cannot load or run a compiled variant: {exc}") from exc
        return self._score(collate(outputs))


def _check_clean(original: onnx.ModelProto, cleaned: onnx.ModelProto,
                 validator: Validator | None, profiles: Sequence[Profile],
                 threads: int) -> dict[str, Any]:
    """Check the cleaned graph against the original on the validation data or generated inputs.

    Raises:
        GraphPassError: the cleaned graph computes something else.
    """
    if validator is not None:
        result = check_pass("clean", validator.reference_batches,
                            lambda: validator.model_outputs(cleaned), validator.batches,
                            skip_values=validator.nondeterministic)
        return {**result.to_dict(), "inputs": "validation data", "checked": True}
    opt = {n: r.opt for n, r in profiles[0].ranges.items()} if profiles else {}
    batches, source = [generated_inputs(input_specs(original), opt)], "generated inputs"
    try:
        reference, skip = reference_outputs(original, batches, threads=threads)
    except Exception as exc:
        warnings.warn(f"graph check not run: the original model rejects generated inputs "
                      f"({exc}); pass validation data to check the cleaned graph", stacklevel=3)
        return {"pass": "clean", "inputs": source, "checked": False, "reason": str(exc)[:300]}
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
        "shape_buckets": state.shape_profile.buckets.for_model(shared.model).to_dict()
        if state.shape_profile is not None and state.shape_profile.buckets else None,
        "tactics": state.tactics.to_dict(),
        "toolchain": _toolchain(backend),
    }


def _try_payload(
    backend: Backend, variant: onnx.ModelProto, precision: Precision, profiles: Sequence[Profile],
    state: _State, name: str, metadata: dict[str, Any], validator: Validator | None,
) -> tuple[BuildResult, float | None, str]:
    """Build the payload; measure on it when it runs here and is not the ONNX variant itself."""
    with task(f"{backend.name} build ({name})"):
        result = backend.build(BuildRequest(variant, precision, profiles, state.tactics, name))
    log.info("%s: built the %s payload (%d bytes) for %s", name, result.payload_format,
             len(result.payload), result.target)
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
    log.info("region %s: trying %s in order, budget %g (%s), backend %s", region.name,
             " > ".join(p.value for p in candidates), region.budget, metric[0], backend.name)
    split = None  # one file holding more samples than the profile's max batch is cut to opt
    if state.shape_profile is not None:
        split = profile_split(state.shape_profile.resolve(inputs, require_all=False), inputs)
    validator = None
    if state.validation_data is not None:
        validator = Validator(state.validation_data, shared.model, metric,
                              threads=state.tactics.cpu_threads, split=split)
    require_all = backend.name != "onnxruntime"
    if state.shape_profile is not None:  # a subclass may override resolve() without observed=
        profiles = state.shape_profile.resolve(inputs, require_all=require_all)
    else:  # the default profile spans the validation data's shapes
        observed = validator.shapes() if validator is not None else None
        profiles = ShapeProfile().resolve(inputs, require_all=require_all, observed=observed)
        if observed and any(s.is_dynamic for s in inputs):
            log.warning("region %s: no shape profile given, so the engine accepts only the "
                        "validation data's shapes %s; give the range it must accept with "
                        "--shape NAME:MIN,OPT,MAX (Python: .with_shape_profile(...))",
                        region.name, [p.to_dict() for p in profiles])
    if validator is not None:
        validator.check_profiles(profiles)
    elif any(p is not Precision.FP32 for p in candidates):
        lossy = ", ".join(p.value for p in candidates if p is not Precision.FP32)
        raise DataError(
            f"region {region.name!r} may build {lossy}, which must be checked against its "
            "accuracy budget: pass the region's data with .with_validation(data)"
        )
    graph_check = _check_clean(shared.model, cleaned, validator, profiles,
                               state.tactics.cpu_threads)
    metadata = _base_metadata(region, policy, shared, inputs, outputs, profiles, state, backend)
    metadata["graph_check"] = graph_check
    trials: list[PrecisionTrial] = []
    calibration: dict[str, Any] | None = None
    log.info("region %s: shape profiles %s", region.name, [p.to_dict() for p in profiles])
    for precision in candidates:
        started = time.perf_counter()
        log.info("region %s: trying %s", region.name, precision.value)
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
        log.info("region %s: %s loss %s vs budget %.4g on %s: %s%s", region.name,
                 precision.value, "not measured" if loss is None else f"{loss:.4g}",
                 region.budget, measured_on, "accepted" if fits else "rejected",
                 f" ({note})" if note else "", extra={"trial": trials[-1].to_dict(),
                                                      "region": region.name})
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
    built = engine.compliance()  # the payload itself (or a plan's layer report), not the graph
    if not built.compliant:
        raise PolicyViolation(f"region {region.name!r}: the built payload is refused: "
                              f"{built.summary()}")
    log.info("region %s: chose %s (%d layers kept in float32)%s", region.name, precision.value,
             len(kept), f"; writing {path}" if path is not None else "",
             extra={"region": region.name, "chosen": precision.value, "kept": list(kept)})
    if path is not None:
        engine.save(path)
    return engine

