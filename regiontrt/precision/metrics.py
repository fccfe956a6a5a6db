"""Which metric judges each output of a model, and why.

A region's budget is one number; what it bounds depends on the output. ``top1`` disagreement
means something only for class scores: on a ``[N, 1]`` probability it can never change (argmax
over one column), on a detector's probability map it compares the argmax over the image width,
on a recurrent model's state it compares meaningless indices. So the metric is chosen per
output, before any build work:

* ``"auto"`` (the presets' default): ``top1`` for outputs that are class scores, a 2-D
  ``[batch, classes]`` float output with at least two classes; ``relative_l2`` (a scale-aware
  error, ``||cand - ref|| / ||ref||``) for every other float output (maps, boxes, sequences,
  embeddings, states). The budget bounds each output's own loss; the engine's loss is the
  largest of them.
* a metric name: that metric for every float output; one that cannot apply to an output (``top1``
  on a single column, a scalar or a 1-D output) is a :class:`~regiontrt.errors.MetricError`.
  Naming ``top1`` explicitly treats the last axis of every output as its class axis.
* a mapping ``{output: name or callable}``: per output; outputs left out are chosen as ``auto``.
* a callable ``(reference, candidate) -> loss``: the user's own metric over every output at once.

Integer, boolean and string outputs are never scored by a metric: they must match exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from regiontrt.errors import InvalidArgumentError, MetricError
from regiontrt.graph.io import TensorSpec
from regiontrt.precision.validation import METRICS, MetricFn, Outputs, checked_loss

#: The metric name that chooses per output.
AUTO = "auto"
#: Every name a region or a build may give.
METRIC_NAMES = (AUTO, *METRICS)

MetricSpec = str | MetricFn | Mapping[str, str | MetricFn] | None

@dataclass(frozen=True)
class OutputMetric:
    """The metric that judges one output, and why it was chosen."""

    output: str
    metric: str
    why: str

    def to_dict(self) -> dict[str, str]:
        return {"metric": self.metric, "why": self.why}


def _last_dim(spec: TensorSpec) -> int | None:
    last = spec.shape[-1] if spec.shape else None
    return last if isinstance(last, int) and last > 0 else None


#: Ops whose outputs are states or sequences, never class scores.
RECURRENT = frozenset(("LSTM", "GRU", "RNN", "Loop", "Scan"))
#: Ops that pass a value on without computing a new one.
_PASS = frozenset(("Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Transpose",
                   "Slice", "Gather", "Cast"))


def recurrent_outputs(model: Any) -> dict[str, str]:
    """``{output: op}`` for graph outputs that come (through reshapes and selections) from a
    recurrent op: a ``[batch, hidden]`` LSTM state looks like class scores but is not."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found = {}
    for out in model.graph.output:
        node, seen = producer.get(out.name), 0
        while node is not None and node.op_type in _PASS and node.input and seen < 64:
            node, seen = producer.get(node.input[0]), seen + 1
        if node is not None and node.op_type in RECURRENT:
            found[out.name] = node.op_type
    return found


def _auto(spec: TensorSpec, states: Mapping[str, str] | None = None) -> OutputMetric:
    shape = list(spec.shape)
    classes = _last_dim(spec)
    if states and spec.name in states:
        return OutputMetric(spec.name, "relative_l2", f"output {shape} is the state of a "
                            f"{states[spec.name]} op, not class scores: a scale-aware error")
    if spec.rank == 2 and classes is not None and classes >= 2:
        return OutputMetric(spec.name, "top1",
                            f"2-D output {shape}: class scores over {classes} classes")
    if spec.rank == 2 and classes == 1:
        why = f"output {shape} has one column, so its argmax cannot change: a scale-aware error"
    elif spec.rank <= 1:
        why = f"output {shape} has no class axis: a scale-aware error"
    else:
        why = (f"dense {spec.rank}-D output {shape} (a map, sequence, box set or state): "
               "a scale-aware error")
    return OutputMetric(spec.name, "relative_l2", why)


def _named(spec: TensorSpec, name: str, source: str,
           states: Mapping[str, str] | None = None) -> OutputMetric:
    if name == AUTO:
        return _auto(spec, states)
    if name not in METRICS:
        raise InvalidArgumentError(
            f"unknown metric {name!r} for output {spec.name!r}; built in: "
            f"{', '.join(METRIC_NAMES)}, or pass a callable"
        )
    if name == "top1":
        classes = _last_dim(spec)
        if spec.rank < 2 or classes == 1:
            raise MetricError(
                f"metric 'top1' cannot judge output {spec.name!r} of shape {list(spec.shape)}: "
                "it needs a class axis (the last) with at least two classes; use 'auto' or "
                f"'relative_l2' for it, e.g. a metric mapping {{{spec.name!r}: 'relative_l2'}}"
            )
        return OutputMetric(spec.name, name, f"{source}: last axis of {list(spec.shape)} "
                                             "taken as the class axis")
    return OutputMetric(spec.name, name, source)


def _callable_name(fn: Any) -> str:
    return str(getattr(fn, "__name__", type(fn).__name__))


class MetricPlan:
    """The metric of every float output of a model; callable as one metric (the largest loss).

    Build it with :func:`plan_metrics`.
    """

    def __init__(self, per_output: Sequence[OutputMetric], functions: Mapping[str, MetricFn],
                 whole: tuple[str, MetricFn] | None = None, spec_name: str = AUTO) -> None:
        self.per_output = tuple(per_output)
        self._functions = dict(functions)
        self.whole = whole
        self.name = whole[0] if whole is not None else spec_name

    def losses(self, ref: Outputs, cand: Outputs) -> dict[str, float]:
        """Each float output's loss (empty for the caller's whole-model metric)."""
        if self.whole is not None:
            return {}
        return {
            item.output: checked_loss(f"{item.metric} on {item.output!r}",
                                      self._functions[item.output], {item.output: ref[item.output]},
                                      {item.output: cand[item.output]})
            for item in self.per_output
            if item.output in ref  # not a float output: compared exactly elsewhere
        }

    def __call__(self, ref: Outputs, cand: Outputs) -> float:
        """The loss: the user's whole-model metric, or the largest per-output loss."""
        if self.whole is not None:
            return checked_loss(self.whole[0], self.whole[1], ref, cand)
        return max(self.losses(ref, cand).values(), default=0.0)

    def describe(self) -> str:
        """One line: which metric judges which output."""
        if self.whole is not None:
            return f"{self.name} (the caller's metric, over every output)"
        return ", ".join(f"{m.output}: {m.metric}" for m in self.per_output) or "no float output"

    def to_dict(self) -> dict[str, Any]:
        if self.whole is not None:
            return {"_all": {"metric": self.name, "why": "the caller's metric, every output"}}
        return {m.output: m.to_dict() for m in self.per_output}


def plan_metrics(spec: MetricSpec, outputs: Sequence[TensorSpec], *,
                 default: str = AUTO, model: Any = None) -> MetricPlan:
    """Choose the metric of each output (see the module docstring) before any build work.

    Args:
        spec: what the caller asked for; ``None`` takes ``default`` (the region's metric).
        outputs: the model's outputs.
        default: the region's metric name.
        model: the ONNX model, so that ``auto`` can tell a recurrent state from class scores.

    Raises:
        MetricError: a named metric cannot apply to an output.
        InvalidArgumentError: an unknown metric name or output name, or a spec of another type.
    """
    if spec is None:
        spec, source = default, "the region's metric"
    else:
        source = "the metric asked for"
    if callable(spec) and not isinstance(spec, Mapping):
        return MetricPlan((), {}, whole=(_callable_name(spec), spec))
    floats = [o for o in outputs if o.dtype.kind in "fc"]
    states = recurrent_outputs(model) if model is not None else {}
    if isinstance(spec, str):
        chosen = [_named(o, spec, source, states) for o in floats]
        return MetricPlan(chosen, {c.output: METRICS[c.metric] for c in chosen}, spec_name=spec)
    if not isinstance(spec, Mapping):
        raise InvalidArgumentError(
            "metric must be a name, a callable (reference, candidate) -> loss, or a mapping "
            f"{{output: metric}}, got {type(spec).__name__}"
        )
    unknown = sorted(set(map(str, spec)) - {o.name for o in outputs})
    if unknown:
        raise InvalidArgumentError(
            f"metric mapping names outputs the model does not have: {unknown}; outputs: "
            f"{[o.name for o in outputs]}"
        )
    chosen, functions = [], {}
    for out in floats:
        value = spec.get(out.name, AUTO)
        if callable(value):
            chosen.append(OutputMetric(out.name, _callable_name(value), "the caller's metric"))
            functions[out.name] = value
            continue
        if not isinstance(value, str):
            raise InvalidArgumentError(f"metric for output {out.name!r} must be a name or a "
                                       f"callable, got {type(value).__name__}")
        item = _named(out, value, "asked for this output", states)
        chosen.append(item)
        functions[out.name] = METRICS[item.metric]
    return MetricPlan(chosen, functions, spec_name="per-output")


def check_metric_spec(spec: MetricSpec) -> None:
    """Refuse a metric spec of the wrong type or with an unknown name (no model needed)."""
    if spec is None or (callable(spec) and not isinstance(spec, Mapping)):
        return
    if not isinstance(spec, (str, Mapping)):
        raise InvalidArgumentError(
            "metric must be a name, a callable (reference, candidate) -> loss, or a mapping "
            f"{{output: metric}}, got {type(spec).__name__} {spec!r:.40}"
        )
    items = list(spec.items()) if isinstance(spec, Mapping) else [("", spec)]
    for output, value in items:
        if callable(value):
            continue
        if not isinstance(value, str):
            raise InvalidArgumentError(f"metric for output {output!r} must be a name or a "
                                       f"callable, got {type(value).__name__}")
        if value not in METRIC_NAMES:
            raise InvalidArgumentError(
                f"unknown metric {value!r}; built in: {', '.join(METRIC_NAMES)}, or pass a "
                "callable (reference, candidate) -> loss, or a mapping {output: metric}"
            )
