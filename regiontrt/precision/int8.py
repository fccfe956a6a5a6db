"""One region's int8 attempt: calibration, mismatch check and the mixed-precision search.

When whole-model int8 misses the budget, the search
(:func:`regiontrt.precision.mixed.search_mixed_precision`)
keeps the most sensitive layers in float32. Its cost is kept to a few model evaluations:

* ranking from one pass: a probe model (:func:`regiontrt.graph.qdq_probe.layer_probe`) runs the
  FP32 graph once with a quantized-input clone of every layer; each layer's sensitivity is the
  relative L2 error of its own output with int8 inputs against FP32 inputs;
* screening: the doubling and bisection over that ranking measure candidates on a prefix of the
  validation batches (about :data:`SCREEN_FRACTION` of the samples, reference outputs taken from
  the probe pass), and only the size they find is confirmed on all of the validation data;
* the cleaned model is named and raised to the Q/DQ opset once, not once per candidate.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import onnx

from regiontrt.data.sources import Batch, DataSource
from regiontrt.errors import CalibrationMismatch, DataError
from regiontrt.graph.arithmetic import Int8Arithmetic, cast_feeds, make_session, session_options
from regiontrt.precision.mixed import Evaluate, MixedPrecisionResult, search_mixed_precision
from regiontrt.precision.types import Precision
from regiontrt.precision.validation import collate

log = logging.getLogger("regiontrt.build.pipeline")

if TYPE_CHECKING:
    from regiontrt.precision.policy import PrecisionPolicy
    from regiontrt.precision.regions import Region
    from regiontrt.precision.validator import Validator


class Int8Settings(Protocol):
    """What the int8 attempt reads of a build's settings (the builder's state has them)."""

    @property
    def calibration_data(self) -> Any: ...

    @property
    def calibrator(self) -> Any: ...

    @property
    def mismatch_threshold(self) -> float: ...

    @property
    def strict_calibration(self) -> bool | None: ...

#: Share of the validation samples the search screens candidates on (a prefix of the batches;
#: user metrics that pair outputs with their own labels in order see the matching prefix).
SCREEN_FRACTION = 0.25

#: What ``sensitivity`` in the search report measures.
SENSITIVITY = "relative L2 error of the layer's output with int8 inputs, FP32 inputs upstream"


def screen_batches(batches: Sequence[Batch], fraction: float = SCREEN_FRACTION) -> int:
    """How many leading batches hold at least ``fraction`` of the samples (0: no real subset)."""
    sizes = [int(next(iter(b.values())).shape[0]) if b else 0 for b in batches]
    total, acc = sum(sizes), 0
    for i, size in enumerate(sizes):
        acc += size
        if acc >= fraction * total:
            return i + 1 if i + 1 < len(batches) else 0
    return 0


def probe_sensitivity(
    probe: onnx.ModelProto, pairs: dict[str, tuple[str, str]], outputs: Sequence[str],
    batches: Sequence[Batch], arithmetic: Int8Arithmetic | str = Int8Arithmetic.TENSORRT,
) -> tuple[dict[str, float], list[dict[str, np.ndarray]]]:
    """Run the probe over ``batches``: per-layer relative L2 error and the model's outputs.

    One batch's layer outputs (two per probed layer) are alive at a time. ``arithmetic`` is
    the int8 arithmetic the layers' int8 inputs are evaluated in (the one the gate uses).
    """
    from regiontrt.calibration.collect import _session_options
    from regiontrt.graph.io import input_specs

    session = make_session(probe, session_options(arithmetic, options=_session_options()))
    specs = input_specs(probe)
    fetch = list(outputs) + [t for pair in pairs.values() for t in pair]
    err = dict.fromkeys(pairs, 0.0)
    ref = dict.fromkeys(pairs, 0.0)
    model_outputs: list[dict[str, np.ndarray]] = []
    for batch in batches:
        values = dict(zip(fetch, session.run(fetch, cast_feeds(batch, specs))))
        model_outputs.append({name: np.asarray(values[name]) for name in outputs})
        for layer, (a, b) in pairs.items():
            x = np.asarray(values[a], dtype=np.float64)
            err[layer] += float(np.sum((np.asarray(values[b], dtype=np.float64) - x) ** 2))
            ref[layer] += float(np.sum(x * x))
        del values
    scores = {k: float(np.sqrt(err[k] / ref[k])) if ref[k] > 0 else float(err[k] > 0)
              for k in pairs}
    return scores, model_outputs


class Int8Attempt:
    """Calibration, mismatch check and mixed-precision search for one region's int8 attempt."""

    def __init__(self, state: Int8Settings, policy: PrecisionPolicy, cleaned: onnx.ModelProto,
                 region: Region, validator: Validator,
                 search: Callable[..., MixedPrecisionResult] = search_mixed_precision) -> None:
        self.state, self.policy, self.cleaned = state, policy, cleaned
        self.region, self.validator = region, validator
        self.search = search  # the mixed-precision search (a build stage, replaceable)
        self.metadata: dict[str, Any] = {}
        self._last: tuple[frozenset[str], onnx.ModelProto] | None = None
        self.note = ""  # the int8 techniques' summary, added to the trial's note
        self.candidate: Any = None  # the int8 techniques' choice, when not the plain ranges

    def compile(self) -> tuple[onnx.ModelProto | None, float | None, tuple[str, ...], str]:
        """Returns ``(variant, loss, kept layers, note)``; ``variant`` is None if it can't fit."""
        from regiontrt.calibration import AutoCalibrator, check_mismatch
        from regiontrt.graph.quantize import QDQ_MIN_OPSET, name_nodes, upgrade_opset

        if self.state.calibration_data is None:
            raise DataError(
                f"region {self.region.name!r} allows int8, which needs the region's own "
                "calibration data: {setting} (or leave int8 out: {precisions})",
                setting="calibration", also=("precisions",), region=self.region.name,
            )
        # Named and upgraded once: every candidate of the search is written from this copy.
        self.base = upgrade_opset(name_nodes(self.cleaned), QDQ_MIN_OPSET)
        plan = self.policy.quantization_plan(self.base)
        if not plan.nodes:
            return None, None, (), "no quantizable layer in the model"
        self.calibrator = self.state.calibrator or AutoCalibrator()
        self.data = DataSource(self.state.calibration_data, self.validator.inputs,
                               split=self.validator.split)
        log.info("int8: calibrating %d tensors of %d layers with %s", len(plan.activations),
                 len(plan.nodes), self.calibrator.name)
        result = self.calibrator.calibrate(self.base, self.data, plan.activations)
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
        log.info("int8: calibration mismatch check: %s", mismatch.summary())
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
        variant, loss = self._improve(result.stats, variant, loss)
        budget = self.region.budget
        log.info("int8: whole-model loss %.4g (budget %.4g)", loss, budget)
        if loss <= budget or not self.policy.search_mixed:
            return self._done(variant, loss, (), "")
        return self._search(plan.nodes, variant, loss)

    def _improve(self, stats: dict[str, Any], variant: onnx.ModelProto, loss: float
                 ) -> tuple[onnx.ModelProto, float]:
        """The int8 techniques (:mod:`regiontrt.precision.int8_techniques`), each kept only
        where the region's metric improves; returns the best variant and its loss."""
        from regiontrt.precision.int8_techniques import (
            Candidate,
            Hooks,
            improve,
            techniques_of,
        )

        if not techniques_of(self.calibrator):
            return variant, loss
        v, policy = self.validator, self.policy
        n_screen = screen_batches(v.batches)
        subset = v.batches[:n_screen] if n_screen else v.batches

        def layer_errors(model: onnx.ModelProto, amax: Any) -> dict[str, float]:
            from regiontrt.graph.qdq_probe import layer_probe

            layers = policy.quantization_plan(model).nodes
            probe, pairs = layer_probe(model, policy.compile(model, Precision.INT8, amax=amax),
                                       layers)
            return probe_sensitivity(probe, pairs, [], subset, v.arithmetic)[0]

        hooks = Hooks(
            self.calibrator, self.data,
            layers=lambda m: policy.quantization_plan(m).nodes,
            activations=lambda m: policy.quantization_plan(m).activations,
            measure=lambda m, a: v.loss_of_model(policy.compile(m, Precision.INT8, amax=a)),
            layer_errors=layer_errors, per_channel=policy.quantize_options().per_channel,
            alpha=float(getattr(self.calibrator, "smooth_alpha", 0.5)),
        )
        start = time.perf_counter()
        best, trials, summary = improve(
            Candidate("calibrated ranges", self.base, dict(self.amax), loss=loss), stats, hooks)
        self.metadata["techniques"] = {
            "trials": [t.to_dict() for t in trials], "chosen": best.name,
            "seconds": round(time.perf_counter() - start, 3)}
        if len(trials) > 1:
            self.note = summary
        log.info("int8: %s", summary)
        if best.model is self.base and best.amax == self.amax:
            return variant, loss
        self.base, self.amax, self._last = best.model, dict(best.amax), None
        self.candidate = best
        return self._variant(()), best.loss

    def _search(self, layers: Sequence[str], whole: onnx.ModelProto, whole_loss: float
                ) -> tuple[onnx.ModelProto | None, float | None, tuple[str, ...], str]:
        from regiontrt.graph.io import output_specs
        from regiontrt.graph.qdq_probe import layer_probe

        started = time.perf_counter()
        v = self.validator
        n_screen = screen_batches(v.batches)
        subset = v.batches[:n_screen] if n_screen else v.batches
        probe, pairs = layer_probe(self.base, whole, layers)
        outputs = [o.name for o in output_specs(self.base)]
        sensitivity, reference = probe_sensitivity(probe, pairs, outputs, subset,
                                                   v.arithmetic)
        del probe
        screen: Evaluate | None = None
        if n_screen:
            screen_ref = collate(reference)

            def screen_loss(keep: frozenset[str]) -> float:
                # The same runner and metric checks as the full evaluation, on the subset.
                from regiontrt.graph.check import run_onnx
                from regiontrt.precision.validation import checked_loss

                outs = collate(run_onnx(self._variant(keep), subset,
                                        arithmetic=v.arithmetic))
                return checked_loss(v.metric_name, v.metric, screen_ref, outs)

            screen = screen_loss
            try:  # a metric that cannot score a subset (labels of its own): no screening
                float(v.metric(screen_ref, screen_ref))
            except Exception:
                screen = None
        search = self.search(
            layers, lambda keep: v.loss_of_model(self._variant(keep)), self.region.budget,
            max_kept=int(self.policy.max_kept_fraction * len(layers)),
            sensitivity=sensitivity, screen=screen,
        )
        self.metadata["mixed_precision"] = {
            "whole_model_loss": whole_loss,
            **search.to_dict(),
            "sensitivity_measure": SENSITIVITY,
            "screen_samples": sum(int(next(iter(b.values())).shape[0]) for b in subset)
            if screen is not None else 0,
            "seconds": round(time.perf_counter() - started, 3),
        }
        log.info("int8: mixed-precision search kept %d of %d layers in float32 (loss %.4g, %s, "
                 "%d evaluations): %s", len(search.kept), len(layers), search.loss,
                 "fits" if search.fits else "over budget", search.evaluations,
                 ", ".join(search.kept) or "-")
        if not search.fits:
            note = (f"whole-model int8 loss {whole_loss:.4g}; keeping up to {len(search.kept)} "
                    f"sensitive layers still gave {search.loss:.4g}")
            return self._done(None, search.loss, search.kept, note)
        note = (f"whole-model int8 loss {whole_loss:.4g} over budget; kept {len(search.kept)} "
                f"of {len(layers)} layers in float32")
        return self._done(self._variant(search.kept), search.loss, search.kept, note)

    def _variant(self, keep: Iterable[str]) -> onnx.ModelProto:
        """The int8 graph with ``keep`` left in float32 (the last one is reused).

        Leaving a layer out can move Q/DQ onto tensors the first plan did not need (the skip
        branch of a residual Add whose conv is no longer quantized); those are calibrated here,
        on the same calibration data, the first time they are needed.
        """
        key = frozenset(keep)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        missing = [t for t in self.policy.quantization_plan(self.base, key).activations
                   if t not in self.amax]
        if missing:
            log.debug("int8: calibrating %d more tensors: %s", len(missing), ", ".join(missing))
            extra = self.calibrator.calibrate(self.base, self.data, missing)
            self.amax.update(extra.amax)
        model = self.base
        if self.candidate is not None:  # bias correction: on the quantized layers only
            model = self.candidate.graph_for(self.policy.quantization_plan(model, key).nodes)
        variant = self.policy.compile(model, Precision.INT8, amax=self.amax, keep=key)
        self._last = (key, variant)
        return variant

    def _done(self, variant: onnx.ModelProto | None, loss: float | None, kept: tuple[str, ...],
              note: str) -> tuple[onnx.ModelProto | None, float | None, tuple[str, ...], str]:
        self.metadata["amax"] = {k: float(v) for k, v in sorted(self.amax.items())}
        return variant, loss, kept, "; ".join(filter(None, [note, self.note]))
