"""regiontrt's side of the zoo benchmark: the default builder forced to INT8, and the
coverage/accuracy frontier its mixed-precision search walks.

Both go through :class:`regiontrt.RegionalEngineBuilder` with the ONNX Runtime backend, whose
payload is the compiled Q/DQ ONNX model: what is scored is what the builder ships. The search's
loss is the zoo model's own task metric against FP32 on the calibration inputs (never the
evaluation ones). The frontier is recorded through two public extension points: a
:class:`~regiontrt.PrecisionPolicy` subclass that keeps every int8 variant it compiles, and a
``search`` stage that records every candidate the search measures.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import regiontrt as rt
from benchmarks.zoo.base import Feeds, Outputs, ZooModel
from regiontrt.graph.quantize import QuantizeOptions
from regiontrt.precision.mixed import MixedPrecisionResult, search_mixed_precision

NEVER_MISSED = 1e9  # a budget any int8 build meets: the builder ships whole-model int8


def per_sample(outputs: dict[str, Any], names: Sequence[str], sizes: Sequence[int]
               ) -> list[Outputs]:
    """The builder's collated outputs (``{name: array or per-batch list}``) back per sample."""
    cut = np.cumsum(sizes)[:-1]
    columns = []
    for name in names:
        value = outputs[name]
        columns.append(list(value) if isinstance(value, list) else np.split(value, cut))
    return [list(row) for row in zip(*columns, strict=True)]


def task_loss(zoo: ZooModel, names: Sequence[str], feeds: Sequence[Feeds]) -> Any:
    """The zoo metric as a builder loss: how far a candidate's metric falls from FP32's."""
    sizes = [int(next(iter(f.values())).shape[0]) for f in feeds]
    sign = 1.0 if zoo.higher_is_better else -1.0

    def loss(reference: dict[str, Any], candidate: dict[str, Any]) -> float:
        ref = per_sample(reference, names, sizes)
        perfect = zoo.aggregate(zoo.score(ref, ref))
        got = zoo.aggregate(zoo.score(ref, per_sample(candidate, names, sizes)))
        return sign * (perfect - got)

    loss.__name__ = f"{zoo.name}_{zoo.metric}_loss".replace(" ", "_")
    return loss


class RecordingPolicy(rt.PrecisionPolicy):
    """A precision policy that keeps every int8 variant it compiles, by kept-layer set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.variants: dict[frozenset[str], bytes] = {}

    def compile(self, model: onnx.ModelProto, precision: rt.Precision, *,
                amax: Any = None, keep: Iterable[str] = ()) -> onnx.ModelProto:
        out = super().compile(model, precision, amax=amax, keep=keep)
        if rt.Precision.parse(precision) is rt.Precision.INT8:
            self.variants[frozenset(keep)] = out.SerializeToString()
        return out


class RecordingSearch:
    """The default search, recording each measured candidate: kept layers, loss, which data."""

    def __init__(self) -> None:
        self.points: list[dict[str, Any]] = []

    def __call__(self, layers: Sequence[str], evaluate: Any, budget: float, **kw: Any
                 ) -> MixedPrecisionResult:
        def wrap(fn: Any, data: str) -> Any:
            def measured(keep: frozenset[str]) -> float:
                loss = float(fn(keep))
                self.points.append({"kept": sorted(keep), "val_loss": loss, "data": data})
                return loss
            return measured

        if kw.get("screen") is not None:
            kw["screen"] = wrap(kw["screen"], "screen")
        return search_mixed_precision(layers, wrap(evaluate, "all"), budget, **kw)


def _builder(model_path: str, zoo: ZooModel, cal: list[Feeds], method: str,
             policy: rt.PrecisionPolicy, budget: float) -> Any:
    names = [o.name for o in onnx.load(model_path, load_external_data=False).graph.output]
    region = rt.Region("ZOOBENCH", (rt.Precision.INT8,), budget=budget)
    return (rt.RegionalEngineBuilder.from_onnx(model_path).for_region(region)
            .with_precision(policy).with_backend("onnxruntime")
            .with_calibrator(method, data=cal)
            .with_validation(cal, metric=task_loss(zoo, names, cal))
            .with_calibration_check(strict=False))


def ours_int8(model_path: str, zoo: ZooModel, cal: list[Feeds], out_path: str,
              method: str = "auto", *, all_layers: bool = False) -> dict[str, Any]:
    """The default builder with INT8 only and a budget it always meets: whole-model int8.

    ``all_layers`` also quantizes the first and last layers (ours keeps them in float by
    default), for a comparison at the coverage of peers that quantize everything.
    """
    options = QuantizeOptions(quantize_first_layer=True, quantize_last_layer=True) \
        if all_layers else None
    policy = rt.PrecisionPolicy("int8", quantize=options, search_mixed=False)
    start = time.perf_counter()  # regiontrt and onnx are imported at the top of this module
    engine = _builder(model_path, zoo, cal, method, policy, NEVER_MISSED).build()
    Path(out_path).write_bytes(engine.payload)
    meta = engine.metadata
    return {"seconds": time.perf_counter() - start, "method": method,
            "kept": list(meta.get("kept_high_precision", [])),
            "pinned_inputs": meta.get("pinned_inputs", {}),
            "pinned_from": meta.get("pinned_from", {}),
            "calibration_s": meta.get("calibration", {}).get("seconds")}


def ours_frontier(model_path: str, zoo: ZooModel, cal: list[Feeds], out_dir: str,
                  method: str = "auto", budget: float = 0.0) -> dict[str, Any]:
    """The mixed-precision search's walk: every candidate it measures, written to ``out_dir``.

    With ``budget`` 0 (the default) the search looks for the smallest kept set that matches
    FP32 exactly on the calibration inputs, so it walks the frontier from whole-model int8
    down (doubling, then bisection).
    """
    policy = RecordingPolicy("int8", search_mixed=True, max_kept_fraction=1.0)
    search = RecordingSearch()
    start = time.perf_counter()
    builder = _builder(model_path, zoo, cal, method, policy, budget).with_stages(search=search)
    try:
        engine = builder.build()
        chosen: list[str] | None = list(engine.metadata.get("kept_high_precision", []))
    except rt.errors.AccuracyBudgetExceeded:
        chosen = None  # nothing met the budget: the walk is still recorded
    seconds = time.perf_counter() - start
    whole = policy.variants.get(frozenset())
    points = [{"kept": [], "val_loss": None, "data": "whole model"}] if whole else []
    points += search.points
    seen: dict[frozenset[str], str] = {}
    for i, point in enumerate(points):
        key = frozenset(point["kept"])
        if key not in seen and key in policy.variants:
            seen[key] = str(Path(out_dir) / f"frontier_{method}_{i:03d}.onnx")
            Path(seen[key]).write_bytes(policy.variants[key])
        point["path"] = seen.get(key)
    return {"seconds": seconds, "method": method, "budget": budget, "chosen_kept": chosen,
            "points": points}
