"""A region's validation data, its FP32 reference outputs, and the losses of candidates."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import onnx

from regiontrt._progress import task, track
from regiontrt.data.sources import Batch, DataSource
from regiontrt.errors import (
    BuildError,
    DataError,
    InvalidModelError,
    RegionTRTError,
    ShapeOutOfProfile,
)
from regiontrt.graph.arithmetic import Int8Arithmetic
from regiontrt.graph.check import metric_view, reference_outputs, run_onnx
from regiontrt.graph.io import (
    input_specs,
    load_model,
    model_bytes,
    output_specs,
    without_unsized_dims,
)
from regiontrt.precision.metrics import METRIC_NAMES, MetricPlan, MetricSpec, plan_metrics
from regiontrt.precision.validation import (
    METRICS,
    PrecisionTrial,
    all_finite,
    checked_loss,
    collate,
)
from regiontrt.shapes.profiles import Profile, select_profile


class Runs(Protocol):
    """What the checks need of a runtime: a backend runner (precision sits below the runtime
    layer, so it names the shape of what it calls, not the runtime's classes)."""

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]: ...

    def close(self) -> None: ...


class Checkable(Protocol):
    """What :func:`validate_engine` needs of an engine."""

    profiles: Any

    @property
    def precision(self) -> str: ...

    @property
    def backend_name(self) -> str: ...

    @property
    def metadata(self) -> dict[str, Any]: ...

    def infer(self, feeds: Any) -> dict[str, Any]: ...

log = logging.getLogger("regiontrt.build.pipeline")


class Validator:
    """The region's validation batches, their FP32 reference outputs, and the metric.

    Args:
        data: the region's validation data (anything :class:`~regiontrt.data.sources.DataSource`
            reads).
        reference: the FP32 model.
        metric: which metric judges each output (:func:`regiontrt.precision.metrics.plan_metrics`).
        profiles: refuse batches no profile covers.
        threads: ONNX Runtime intra-op threads (0: its default).
        split: ``(max, opt)``: a batch over the profile's max is cut into opt batches.
        arithmetic: the int8 arithmetic every candidate graph is evaluated in.
    """

    def __init__(
        self,
        data: Any,
        reference: onnx.ModelProto,
        metric: MetricPlan,
        profiles: Sequence[Profile] | None = None,
        threads: int = 0,
        split: tuple[int, int] | None = None,
        arithmetic: Int8Arithmetic = Int8Arithmetic.TENSORRT,
    ) -> None:
        self.inputs = input_specs(reference)
        if not self.inputs:
            raise DataError("the model has no inputs, so validation data cannot feed it")
        self.split = split
        self.arithmetic = arithmetic
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
        self.plan = metric
        self.metric_name, self.metric = metric.name, metric
        self.threads = threads
        self._runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.payload_losses: dict[str, float] = {}
        self._reference(reference)

    def _reference(self, reference: onnx.ModelProto) -> None:
        try:
            self.reference_batches, self.nondeterministic = reference_outputs(
                reference, self.batches, threads=self.threads)
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

    def model_outputs(self, model: onnx.ModelProto,
                      arithmetic: Int8Arithmetic | None = None) -> list[dict[str, Any]]:
        """Per-batch outputs of an ONNX graph (cached per graph and arithmetic)."""
        mode = arithmetic or self.arithmetic
        data = model_bytes(model)
        key = (hashlib.sha256(data).hexdigest(), mode.value)
        if key not in self._runs:
            with task(f"validation ({len(self.batches)} batches)", log_level=logging.DEBUG):
                self._runs[key] = run_onnx(data, self.batches, threads=self.threads,
                                           arithmetic=mode)
        return self._runs[key]

    def _outputs(self, runner: Runs) -> dict[str, Any]:
        try:
            return collate([runner.run(b) for b in track(self.batches, "validation on the payload",
                                                          log_level=logging.DEBUG)])
        finally:
            runner.close()

    def _score(self, outputs: dict[str, Any]) -> tuple[float, dict[str, float]]:
        """``(loss, per-output losses)``; per-output is empty for a caller's whole metric."""
        # Non-float outputs must match exactly; NaN/inf that agree do not poison the metric.
        ref, cand, differs = metric_view(self.reference, outputs)
        if differs is not None:
            return float("inf"), {}
        if not ref:
            return 0.0, {}
        if self.plan.whole is not None:
            return checked_loss(self.metric_name, self.plan.whole[1], ref, cand), {}
        losses = self.plan.losses(ref, cand)
        return max(losses.values(), default=0.0), losses

    def loss(self, runner: Runs) -> float:
        """The metric's loss of ``runner`` against the FP32 reference (``inf`` for NaN outputs);
        its per-output losses are kept in :attr:`payload_losses`."""
        loss, self.payload_losses = self._score(self._outputs(runner))
        return loss

    def output_losses(self, model: onnx.ModelProto) -> dict[str, float]:
        """Each output's loss of an ONNX variant (its outputs are cached: no model run); empty
        for a caller's whole-model metric, which is not called again."""
        if self.plan.whole is not None:
            return {}
        return self._score(collate(self.model_outputs(model)))[1]

    def loss_of_model(self, model: onnx.ModelProto,
                      arithmetic: Int8Arithmetic | None = None) -> float:
        """The loss of an ONNX variant, run with ONNX Runtime in ``arithmetic``."""
        try:
            outputs = self.model_outputs(model, arithmetic)
        except RegionTRTError:
            raise
        except Exception as exc:
            raise BuildError(f"ONNX Runtime cannot load or run a compiled variant: {exc}") from exc
        return self._score(collate(outputs))[0]


def validate_engine(engine: Checkable, data: Any, reference: Any) -> PrecisionTrial:
    """Re-check an engine as it runs on this machine, on this site's own data.

    The engine runs ``data`` exactly as it serves (its runtime, its arithmetic on this CPU);
    ``reference``, the FP32 ONNX model, runs the same data; the loss is measured with the metric
    the engine was built under (``auto`` and named metrics are re-planned per output; a caller's
    own metric function is not stored in an engine, so ``relative_l2`` stands in) and compared
    with the region's budget. Region data never travels inside an engine: a site brings its own.

    Args:
        engine: the engine to check.
        data: validation data in any form the builder takes.
        reference: the FP32 model: a path, bytes or an ``onnx.ModelProto``.

    Returns:
        The trial (``accepted`` says whether the loss is within budget here).
    """
    model = without_unsized_dims(load_model(reference))
    report = engine.metadata.get("validation") or {}
    name = str(report.get("metric") or engine.metadata["region"].get("metric") or "auto")
    metrics = {k: v["metric"] for k, v in (report.get("output_metrics") or {}).items()
               if k != "_all" and v.get("metric") in METRICS}
    spec: MetricSpec = metrics or (name if name in METRIC_NAMES else "relative_l2")
    plan = plan_metrics(spec, output_specs(model), model=model)
    validator = Validator(data, model, plan, profiles=engine.profiles)
    outputs = collate([engine.infer(batch) for batch in validator.batches])
    loss, losses = validator._score(outputs)
    budget = float(engine.metadata["region"]["budget"])
    return PrecisionTrial(engine.precision, loss, budget, loss <= budget,
                          f"{engine.backend_name} on this machine", (),
                          "site re-check against the FP32 model", losses)
