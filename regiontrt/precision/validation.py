"""Accuracy checks: a precision variant against the FP32 model, on a region's own data.

Metrics are losses (0 is perfect). A built-in metric is named by a string; a user metric is any
callable ``(reference_outputs, candidate_outputs) -> float`` where each argument maps an output
name to its batches concatenated along axis 0 (a list of per-batch arrays when their trailing
shapes differ, e.g. variable-width text lines).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from regiontrt import _display
from regiontrt.errors import DataError, InvalidArgumentError, MetricError, RegionTRTError

Outputs = Mapping[str, np.ndarray | Sequence[np.ndarray]]
MetricFn = Callable[[Outputs, Outputs], float]


def _pieces(value: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(value, np.ndarray):
        return [value]
    return [np.asarray(v) for v in value]


def _pairs(ref: Outputs, cand: Outputs) -> list[tuple[np.ndarray, np.ndarray]]:
    if set(ref) != set(cand):
        raise DataError(f"output names differ: {sorted(ref)} vs {sorted(cand)}")
    pairs = []
    for name in ref:
        r, c = _pieces(ref[name]), _pieces(cand[name])
        if len(r) != len(c):
            raise DataError(f"output {name!r}: {len(r)} reference batches vs {len(c)} candidate")
        for a, b in zip(r, c):
            if a.shape != b.shape:
                raise DataError(f"output {name!r}: shape {a.shape} vs {b.shape}")
            pairs.append((a.astype(np.float64, copy=False), b.astype(np.float64, copy=False)))
    return pairs


def relative_l2(ref: Outputs, cand: Outputs) -> float:
    """``||cand - ref|| / ||ref||`` over every output element."""
    num = den = 0.0
    for a, b in _pairs(ref, cand):
        num += float(np.sum((b - a) ** 2))
        den += float(np.sum(a**2))
    return float(np.sqrt(num / den)) if den > 0 else float(np.sqrt(num))


def max_abs(ref: Outputs, cand: Outputs) -> float:
    """Largest absolute difference of any output element."""
    return max((float(np.max(np.abs(b - a))) if a.size else 0.0) for a, b in _pairs(ref, cand))


def cosine(ref: Outputs, cand: Outputs) -> float:
    """``1 - cosine similarity`` of all outputs flattened together."""
    dot = na = nb = 0.0
    for a, b in _pairs(ref, cand):
        dot += float(np.sum(a * b))
        na += float(np.sum(a * a))
        nb += float(np.sum(b * b))
    if na == 0 or nb == 0:
        return 0.0 if na == nb else 1.0
    return 1.0 - dot / np.sqrt(na * nb)


def top1(ref: Outputs, cand: Outputs) -> float:
    """Share of positions whose argmax over the last axis differs (``1 - top-1 agreement``).

    For a classifier that is the share of samples whose class changes; for a sequence model
    with outputs ``[N, T, C]``, the share of time steps.
    """
    differ = total = 0
    for a, b in _pairs(ref, cand):
        if a.ndim == 0:
            continue
        differ += int(np.count_nonzero(np.argmax(a, axis=-1) != np.argmax(b, axis=-1)))
        total += int(np.prod(a.shape[:-1])) if a.ndim > 1 else 1
    return differ / total if total else 0.0


METRICS: dict[str, MetricFn] = {
    "top1": top1,
    "relative_l2": relative_l2,
    "max_abs": max_abs,
    "cosine": cosine,
}


def get_metric(metric: str | MetricFn | None, default: str = "top1") -> tuple[str, MetricFn]:
    """Resolve a metric name or callable into ``(name, function)``."""
    if metric is None:
        metric = default
    if isinstance(metric, str):
        try:
            return metric, METRICS[metric]
        except KeyError:
            raise InvalidArgumentError(
                f"unknown metric {metric!r}; built in: {', '.join(METRICS)}, or pass a callable"
            ) from None
    if not callable(metric):
        raise InvalidArgumentError(
            f"metric must be a name or a callable (reference, candidate) -> loss, got "
            f"{type(metric).__name__} {metric!r:.40}"
        )
    return str(getattr(metric, "__name__", type(metric).__name__)), metric


def all_finite(outputs: Outputs) -> bool:
    """Whether every floating-point value of ``outputs`` is finite."""
    for value in outputs.values():
        for piece in _pieces(value):
            if piece.dtype.kind in "fc" and not np.isfinite(piece).all():
                return False
    return True


def checked_loss(name: str, metric: MetricFn, ref: Outputs, cand: Outputs) -> float:
    """Run a metric and check its result.

    A candidate whose outputs hold NaN or Inf loses outright (``inf``, never within a budget);
    the reference must be finite (checked by the caller).

    Raises:
        MetricError: the metric raised, or returned something that is not a finite number >= 0
            (the message names the metric; its exception is chained).
    """
    if not all_finite(cand):
        return math.inf
    try:
        value = metric(ref, cand)
    except RegionTRTError:
        raise
    except Exception as exc:
        raise MetricError(f"metric {name!r} raised {type(exc).__name__}: {exc}") from exc
    try:
        loss = float(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MetricError(
            f"metric {name!r} returned {value!r:.60}, not a number; a metric returns a loss >= 0"
        ) from exc
    if not math.isfinite(loss) or loss < 0:
        raise MetricError(
            f"metric {name!r} returned {loss!r}; a metric must return a finite loss >= 0 "
            "(0 is perfect)"
        )
    return loss


def collate(batches: Sequence[Mapping[str, np.ndarray]]) -> dict[str, Any]:
    """Concatenate per-batch outputs along axis 0, or keep a list when shapes differ."""
    if not batches:
        raise DataError("no outputs to collate")
    out: dict[str, Any] = {}
    for name in batches[0]:
        arrays = [np.asarray(b[name]) for b in batches]
        if len({a.shape[1:] for a in arrays}) == 1 and arrays[0].ndim > 0:
            out[name] = np.concatenate(arrays, axis=0)
        else:
            out[name] = arrays
    return out


def _losses(value: Any) -> dict[str, float]:
    """Per-output losses read back from metadata (``None`` stood for a non-finite loss)."""
    if not isinstance(value, Mapping):
        return {}
    return {str(k): (math.inf if v is None else float(v)) for k, v in value.items()
            if v is None or isinstance(v, (int, float))}


def _output_metrics(value: Any) -> dict[str, dict[str, str]]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): {"metric": str(v.get("metric", "")), "why": str(v.get("why", ""))}
            for k, v in value.items() if isinstance(v, Mapping)}


@dataclass(frozen=True)
class PrecisionTrial:
    """One precision tried for a region: where it was measured and what it lost."""

    precision: str
    loss: float | None
    budget: float
    accepted: bool
    measured_on: str = "onnxruntime"
    kept_high_precision: tuple[str, ...] = ()
    note: str = ""
    output_losses: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        finite = self.loss is None or math.isfinite(self.loss)
        d: dict[str, Any] = {
            "precision": self.precision,
            "loss": self.loss if finite else None,
            "budget": self.budget,
            "accepted": self.accepted,
            "measured_on": self.measured_on,
            "kept_high_precision": list(self.kept_high_precision),
            "note": self.note if finite else "; ".join(
                filter(None, [self.note, "non-finite outputs (NaN or Inf): rejected"])),
        }
        if self.output_losses:
            d["output_losses"] = {k: (v if math.isfinite(v) else None)
                                  for k, v in self.output_losses.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PrecisionTrial:
        """Inverse of :meth:`to_dict`; missing fields take their defaults."""
        loss = d.get("loss")
        return cls(
            precision=str(d.get("precision")),
            loss=None if loss is None else float(loss),
            budget=float(d.get("budget") or 0.0),
            accepted=bool(d.get("accepted")),
            measured_on=str(d.get("measured_on") or "onnxruntime"),
            kept_high_precision=tuple(str(k) for k in d.get("kept_high_precision") or ()),
            note=str(d.get("note") or ""),
            output_losses=_losses(d.get("output_losses")),
        )


@dataclass(frozen=True)
class ValidationReport:
    """Every precision tried for a region, in order, and the one chosen."""

    metric: str
    budget: float
    trials: tuple[PrecisionTrial, ...]
    chosen: str
    num_samples: int
    data_fingerprint: str
    #: ``{output: {"metric": name, "why": reason}}``: which metric judged each output.
    output_metrics: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "metric": self.metric,
            "budget": self.budget,
            "chosen": self.chosen,
            "num_samples": self.num_samples,
            "data_fingerprint": self.data_fingerprint,
            "trials": [t.to_dict() for t in self.trials],
        }
        if self.output_metrics:
            d["output_metrics"] = {k: dict(v) for k, v in self.output_metrics.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ValidationReport:
        """Inverse of :meth:`to_dict` (``engine.metadata["validation"]``); tolerant of gaps."""
        trials = tuple(
            PrecisionTrial.from_dict(t) for t in d.get("trials") or () if isinstance(t, Mapping)
        )
        return cls(
            metric=str(d.get("metric")),
            budget=float(d.get("budget") or 0.0),
            trials=trials,
            chosen=str(d.get("chosen")),
            num_samples=int(d.get("num_samples") or 0),
            data_fingerprint=str(d.get("data_fingerprint") or ""),
            output_metrics=_output_metrics(d.get("output_metrics")),
        )

    @property
    def chosen_trial(self) -> PrecisionTrial | None:
        """The accepted trial of the chosen precision (``None`` if none was accepted)."""
        return next((t for t in self.trials if t.accepted and t.precision == self.chosen), None)

    @property
    def loss(self) -> float | None:
        """The chosen precision's measured loss."""
        trial = self.chosen_trial
        return None if trial is None else trial.loss

    def __repr__(self) -> str:
        return validation_text(self.to_dict())

    def _repr_html_(self) -> str | None:
        return _display.html(self)


def format_value(value: Any) -> str:
    """A short text form of a metadata value: floats to 4 significant digits, lists joined."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v) for v in value) or "–"
    return str(value)


def trial_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per precision tried, from a validation report's dict (tolerant of gaps)."""
    rows = []
    for t in report.get("trials") or []:
        if not isinstance(t, Mapping):
            continue
        loss, budget = t.get("loss"), t.get("budget", report.get("budget"))
        rows.append({
            "precision": t.get("precision"),
            "loss": loss,
            "budget": budget,
            "accepted": t.get("accepted"),
            "measured on": t.get("measured_on"),
            "layers kept": len(t.get("kept_high_precision") or []),
            "note": t.get("note") or "",
        })
    return rows


def validation_text(report: Mapping[str, Any]) -> str:
    """A few readable lines: the chosen precision, then each trial's loss against the budget."""
    head = (
        f"ValidationReport(chosen={report.get('chosen')!r}, metric={report.get('metric')!r}, "
        f"budget={format_value(report.get('budget'))}, samples={report.get('num_samples')})"
    )
    lines = [head]
    for row in trial_rows(report):
        verdict = "accepted" if row["accepted"] else "rejected"
        kept = f", {row['layers kept']} layers kept" if row["layers kept"] else ""
        note = f"  ({row['note']})" if row["note"] else ""
        lines.append(
            f"  {row['precision']}: loss {format_value(row['loss'])} / "
            f"{format_value(row['budget'])} {verdict} on {row['measured on']}{kept}{note}"
        )
    return "\n".join(lines)
