"""Plots of what a build decided, for notebooks and ``regiontrt report``.

Install with ``pip install 'regiontrt[plot]'`` (matplotlib).

Every function returns a :class:`matplotlib.figure.Figure` made without pyplot, so it neither
needs a display nor touches global state; show it in a notebook by leaving it last in a cell, or
save it with ``fig.savefig("x.png")``. matplotlib is imported on first use.

:func:`accuracy_figure` (loss against budget per region), :func:`latency_figure` (from
benchmark summaries or raw timings: :func:`latency_samples`), :func:`calibration_histograms` +
:func:`calibration_figure` (activation histograms with the chosen thresholds) and
:func:`sensitivity_figure` (per-layer sensitivity of the mixed-precision search).

Sources of metadata may be an :class:`~regiontrt.runtime.engine.Engine`, the dict of
:func:`regiontrt.inspect` (or any engine metadata dict) or the path of an ``.engine`` file.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from regiontrt.errors import DataError, RegionTRTError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from regiontrt.calibration import Calibrator
    from regiontrt.data.sources import DataLike
    from regiontrt.graph.io import ModelSource
    from regiontrt.runtime.engine import Engine

MetadataSource = Any  # an Engine, a metadata mapping or the path of an .engine file
ACCEPTED, REJECTED, NOT_RUN = "#2da44e", "#cf222e", "#8c959f"


class PlotUnavailable(RegionTRTError, ImportError):
    """matplotlib is not installed: ``pip install 'regiontrt[plot]'``."""


def _new_figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotUnavailable(
            "plots need matplotlib: pip install 'regiontrt[plot]'"
        ) from exc
    return Figure(figsize=(width, height), layout="constrained")


def _panel_grid(count: int, max_cols: int, width: float, height: float) -> tuple[Figure, Any]:
    """A figure of ``count`` panels of ``width`` x ``height`` inches, the unused ones hidden."""
    cols = min(count, max_cols)
    rows = math.ceil(count / cols)
    fig = _new_figure(width * cols, height * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes


def metadata_of(source: MetadataSource) -> dict[str, Any]:
    """The metadata dict of an engine, a metadata mapping or an ``.engine`` path."""
    if isinstance(source, (str, Path)):
        from regiontrt.runtime.inspection import inspect

        return dict(inspect(source, verify_payload=False))
    meta = getattr(source, "metadata", source)
    if not isinstance(meta, Mapping):
        raise TypeError(f"expected an Engine, a metadata dict or a path, got {type(source)!r}")
    return dict(meta)


def _region_name(meta: Mapping[str, Any]) -> str:
    region = meta.get("region")
    return str(region.get("name") if isinstance(region, Mapping) else region)


def accuracy_figure(sources: Iterable[MetadataSource]) -> Figure:
    """Loss against budget per region, one panel per engine, one bar per precision tried.

    Bars are green when accepted, red when rejected; a precision that could not be built
    (e.g. int8 with no layer fitting) or that the region forbids (never tried) is labelled at
    zero. The dashed line is the budget.
    Panels have their own scales, since budgets range from 1e-5 (relative L2) to a few percent.
    """
    metas = [metadata_of(s) for s in sources]
    if not metas:
        raise DataError("accuracy_figure: no engine given")
    fig, axes = _panel_grid(len(metas), 4, 3.0, 2.6)
    for ax, meta in zip(axes, metas):
        val = meta.get("validation") or {}
        trials = [t for t in val.get("trials") or [] if isinstance(t, Mapping)]
        # Forbidden precisions are never tried; show them so the panel tells the whole story.
        region = meta.get("region")
        region = region if isinstance(region, Mapping) else {}
        tried = {t.get("precision") for t in trials}
        trials += [{"precision": p, "loss": None, "forbidden": True}
                   for p in region.get("forbidden") or [] if p not in tried]
        budget = val.get("budget")
        names = [str(t.get("precision")) for t in trials]
        losses = [t.get("loss") for t in trials]
        heights = [0.0 if v is None else float(v) for v in losses]
        top = max([*heights, float(budget) if budget is not None else 0.0])
        # A 1e-6 budget beside a 1e-2 rejected loss vanishes on a linear axis: go logarithmic.
        limit = float(budget) if budget is not None else 0.0
        log = limit > 0 and top > 50 * limit
        floor = limit / 10
        if log:
            heights = [max(h, floor) for h in heights]
        colors = [NOT_RUN if v is None else ACCEPTED if t.get("accepted") else REJECTED
                  for t, v in zip(trials, losses)]
        ax.bar(names, heights, color=colors)
        for i, v in enumerate(losses):
            text = f"{float(v):.3g}" if v is not None else (
                "forbidden" if trials[i].get("forbidden") else "not built")
            ax.annotate(text, (i, heights[i]), ha="center", va="bottom", fontsize=8)
        if log:
            ax.set_yscale("log")
            ax.set_ylim(floor, 3 * top)
        else:
            ax.set_ylim(0, 1.25 * top if top > 0 else 1.0)
        if budget is not None:
            ax.axhline(float(budget), color="#0969da", linestyle="--", linewidth=1.2,
                       label=f"budget {float(budget):.3g}")
            ax.legend(fontsize=8, loc="upper right")
        ax.set_title(f"{_region_name(meta)} → {meta.get('precision')}", fontsize=10)
        ax.set_ylabel(f"loss ({val.get('metric')})", fontsize=9)
        ax.tick_params(labelsize=8)
    return fig


def latency_samples(
    engine: Engine,
    feeds: Mapping[str, np.ndarray] | None = None,
    *,
    iterations: int = 100,
    warmup: int = 10,
    batch: int | None = None,
) -> np.ndarray:
    """Raw wall-clock latencies of ``engine.infer`` in milliseconds, one per call.

    :meth:`Engine.benchmark` summarises into percentiles; this keeps every call, for a
    distribution plot. ``feeds`` default to :meth:`Engine.sample_inputs` (``batch``).
    """
    if iterations < 1 or warmup < 0:
        raise ValueError("iterations must be >= 1 and warmup >= 0")
    feeds = dict(feeds) if feeds is not None else engine.sample_inputs(batch)
    for _ in range(warmup):
        engine.infer(feeds)
    out = np.empty(iterations)
    for i in range(iterations):
        start = time.perf_counter_ns()
        engine.infer(feeds)
        out[i] = (time.perf_counter_ns() - start) / 1e6
    return out


def latency_figure(latencies: Mapping[str, Any], *, sla_ms: Mapping[str, float] | None = None
                   ) -> Figure:
    """Latency distributions, one row per ``"region / variant"`` label.

    Args:
        latencies: label -> raw timings in ms (a sequence or array: drawn as a box plot with
            every sample), or a
            :class:`~regiontrt.runtime.benchmarking.BenchmarkReport` / its ``to_dict()``
            (drawn as the p50-p99 range with the p90 marked).
        sla_ms: label -> p99 SLA in ms, drawn as a red tick.
    """
    if not latencies:
        raise DataError("latency_figure: no latencies given")
    labels = list(latencies)
    fig = _new_figure(7.0, 0.9 + 0.45 * len(labels))
    ax = fig.subplots()
    for y, label in enumerate(labels):
        value = latencies[label]
        stats = value.to_dict() if hasattr(value, "to_dict") else value
        if isinstance(stats, Mapping):
            p50, p90, p99 = (float(stats[k]) for k in ("p50_ms", "p90_ms", "p99_ms"))
            ax.plot([p50, p99], [y, y], color="#0969da", linewidth=6, solid_capstyle="butt",
                    alpha=0.6)
            ax.plot([p50], [y], "o", color="#0969da")
            ax.plot([p90], [y], "|", color="#1f2328", markersize=14)
            sla = stats.get("sla_p99_ms")
        else:
            samples = np.asarray(value, dtype=float).ravel()
            if samples.size == 0:
                raise DataError(f"latency_figure: no timings for {label!r}")
            ax.boxplot(samples, positions=[y], widths=0.5, showfliers=True,
                       flierprops={"markersize": 2}, **_horizontal())
            sla = None
        sla = (sla_ms or {}).get(label, sla)
        if sla is not None:
            ax.plot([float(sla)], [y], "|", color=REJECTED, markersize=18, markeredgewidth=2)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(-0.7, len(labels) - 0.3)
    ax.set_xlabel("latency (ms)")
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    return fig


def _horizontal() -> dict[str, Any]:
    import matplotlib

    # ``orientation`` replaced ``vert`` in matplotlib 3.10 (``vert`` warns from 3.11).
    major, minor = (int(x) for x in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


@dataclass(frozen=True)
class TensorHistogram:
    """Histogram of ``|x|`` of one activation over the calibration data, with its thresholds.

    Attributes:
        tensor: the tensor name.
        counts: counts per bin.
        edges: ``len(counts) + 1`` bin edges.
        amax: the range recomputed here by the calibrator.
        chosen_amax: the range the engine was built with (``None`` without an engine).
        max_abs: the largest ``|x|`` seen.
    """

    tensor: str
    counts: np.ndarray
    edges: np.ndarray
    amax: float
    chosen_amax: float | None
    max_abs: float


def calibration_histograms(
    model: ModelSource,
    data: DataLike,
    tensors: Sequence[str] | None = None,
    *,
    engine: MetadataSource | None = None,
    calibrator: Calibrator | str | None = None,
    num_bins: int = 2048,
    limit: int = 6,
) -> list[TensorHistogram]:
    """Recompute the activation histograms of selected tensors from the model and data.

    An engine stores only each tensor's range (``metadata["calibration"]["amax"]``), not its
    histogram, so this runs the calibration pass again, on the model cleaned the way the builder
    cleans it, over ``data`` (the region's calibration data).

    Args:
        model: the FP32 ONNX model the engine was built from (path, ModelProto or bytes).
        data: calibration batches (anything ``with_calibrator(data=...)`` takes).
        tensors: tensors to show; default: the engine's calibrated tensors (first ``limit``,
            widest range first), or every activation without an engine.
        engine: the built engine (or its metadata / path) whose chosen ranges are drawn.
        calibrator: the calibrator (or its name) to recompute ranges with; default: the
            engine's method, else entropy.
        num_bins: histogram bins.
        limit: at most this many tensors when ``tensors`` is not given.

    Raises:
        DataError: a named tensor is not an activation of the model, or the data is unusable.
    """
    from regiontrt.calibration import collect_statistics, get_calibrator
    from regiontrt.graph.clean import clean
    from regiontrt.graph.io import load_model

    chosen: Mapping[str, float] = {}
    method = "entropy"
    if engine is not None:
        calib = metadata_of(engine).get("calibration") or {}
        chosen = calib.get("amax") or {}
        method = str(calib.get("method") or method)
    if tensors is None and chosen:
        tensors = sorted(chosen, key=lambda t: -float(chosen[t]))[:limit]
    if isinstance(calibrator, str) or calibrator is None:
        calibrator = get_calibrator(calibrator or method)
    # Histograms are always collected here, whatever the calibrator needs for its own range.
    stats = collect_statistics(clean(load_model(model)), data, tensors, num_bins=num_bins)
    out = []
    for name in list(stats)[: len(stats) if tensors is not None else limit]:
        st = stats[name]
        out.append(TensorHistogram(
            tensor=name, counts=st.hist.copy(), edges=st.edges,
            amax=float(calibrator.compute_amax(st)),
            chosen_amax=float(chosen[name]) if name in chosen else None, max_abs=st.amax,
        ))
    return out


def calibration_figure(histograms: Sequence[TensorHistogram], *, bins: int = 128) -> Figure:
    """One panel per tensor: the ``|x|`` histogram (log counts) and the thresholds.

    The solid line is the range the engine was built with; the dashed one the range recomputed
    by the calibrator; the dotted one the largest value seen. Values beyond the chosen range
    saturate in int8.
    """
    if not histograms:
        raise DataError("calibration_figure: no histogram given")
    fig, axes = _panel_grid(len(histograms), 3, 3.6, 2.6)
    for ax, h in zip(axes, histograms):
        group = max(1, len(h.counts) // bins)
        n = len(h.counts) // group * group
        counts = h.counts[:n].reshape(-1, group).sum(axis=1)
        edges = h.edges[: n + 1 : group]
        ax.stairs(np.maximum(counts, 0.5), edges, fill=True, color="#8c959f", baseline=0.5)
        ax.set_yscale("log")
        if h.chosen_amax is not None:
            ax.axvline(h.chosen_amax, color=REJECTED, linewidth=1.5,
                       label=f"built {h.chosen_amax:.3g}")
        ax.axvline(h.amax, color="#0969da", linestyle="--", linewidth=1.2,
                   label=f"recomputed {h.amax:.3g}")
        ax.axvline(h.max_abs, color="#1f2328", linestyle=":", linewidth=1,
                   label=f"max {h.max_abs:.3g}")
        right = max(h.max_abs, h.amax, h.chosen_amax or 0.0)
        if right > 0:
            ax.set_xlim(0, 1.1 * right)
        ax.set_title(h.tensor, fontsize=9)
        ax.set_xlabel("|x|", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    return fig


def sensitivity(source: MetadataSource) -> tuple[list[tuple[str, float]], set[str], float | None]:
    """Per-layer sensitivity recorded by the mixed-precision search, most sensitive first.

    Returns ``(rows, kept, budget)``: ``(layer, loss with only that layer quantized)`` rows, the
    layers kept in higher precision and the region's budget. Empty rows when the engine has no
    search (it met the budget in whole-model int8, or is not int8). Reads
    ``metadata["calibration"]["mixed_precision"]`` tolerantly: ``sensitivity`` may be a
    ``{layer: loss}`` mapping or a list of ``{"layer"/"name", "loss"/"sensitivity"}`` records.
    """
    meta = metadata_of(source)
    search = (meta.get("calibration") or {}).get("mixed_precision") or {}
    if not isinstance(search, Mapping):
        search = {}
    raw = next((search[k] for k in ("sensitivity", "per_layer", "layers") if k in search), None)
    rows: list[tuple[str, float]] = []
    if isinstance(raw, Mapping):
        rows = [(str(k), float(v)) for k, v in raw.items() if _is_number(v)]
    elif isinstance(raw, list):
        for rec in raw:
            if not isinstance(rec, Mapping):
                continue
            name = rec.get("layer", rec.get("name"))
            value = rec.get("loss", rec.get("sensitivity"))
            if name is not None and _is_number(value):
                rows.append((str(name), float(value)))
    rows.sort(key=lambda r: -r[1])
    kept = set(map(str, search.get("kept") or meta.get("kept_high_precision") or []))
    budget = (meta.get("validation") or {}).get("budget")
    return rows, kept, None if budget is None else float(budget)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def sensitivity_figure(source: MetadataSource, *, top: int = 25) -> Figure:
    """Horizontal bars of the ``top`` most sensitive layers; kept layers in red.

    Sensitivity is usually the search's ranking proxy, not the region's metric: the budget is
    drawn only when the search records ``sensitivity_metric`` equal to the validation metric.

    Raises:
        DataError: the engine records no mixed-precision search.
    """
    rows, kept, budget = sensitivity(source)
    if not rows:
        raise DataError("this engine records no mixed-precision sensitivity (no search ran)")
    meta = metadata_of(source)
    metric, own = ((meta.get("validation") or {}).get("metric"),
                   ((meta.get("calibration") or {}).get("mixed_precision") or {})
                   .get("sensitivity_metric"))
    rows = rows[:top]
    fig = _new_figure(7.0, 1.0 + 0.28 * len(rows))
    ax = fig.subplots()
    names = [r[0] for r in rows]
    ax.barh(names, [r[1] for r in rows],
            color=[REJECTED if n in kept else "#0969da" for n in names])
    if budget is not None and own is not None and own == metric:
        ax.axvline(budget, color="#1f2328", linestyle="--", linewidth=1,
                   label=f"budget {budget:.3g} ({metric})")
        ax.legend(fontsize=8)
        what = f"loss ({metric}) with only this layer in int8"
    else:  # a proxy: comparing it with the region's budget would mislead
        what = "ranking proxy: the layer's own int8 output error, not the region's metric"
    ax.invert_yaxis()
    ax.tick_params(labelsize=7)
    ax.set_xlabel(f"{what}\n(red: kept in higher precision)", fontsize=8)
    return fig
