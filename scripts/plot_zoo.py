"""The INT8 zoo's coverage/accuracy frontier plots, drawn from the zoo runner's result JSON.

One panel per model: x is the share of the weighted layers' FLOPs that run in int8, y the task
metric against FP32 in TensorRT's arithmetic (Q/DQ as float fake-quant, the headline). Drawn:
every point of our mixed-precision search (the frontier, joined), our default (star), our other
calibrators, ModelOpt's and ONNX Runtime's methods (filled: their defaults; hollow: with exactly
our float layers excluded). Errors and skips are not drawn. Nothing here is typed by hand::

    python scripts/plot_zoo.py docs/results/bench_zoo.json --out docs/img/zoo_frontier.png

Needs matplotlib (the ``plot`` extra).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

COLOR = {"regiontrt": "tab:blue", "modelopt": "tab:green", "onnxruntime": "tab:red"}
MARKER = {"auto": "*", "entropy": "o", "percentile": "h", "max": "v", "MinMax": "s",
          "Entropy": "D", "Percentile": "P"}


def _points(model: dict[str, Any], arithmetic: str) -> list[dict[str, Any]]:
    """The rows that measured a metric, with their int8 FLOP share (in %)."""
    out = []
    for row in model["rows"]:
        metric = (row.get("metric") or {}).get(arithmetic)
        share = (row.get("coverage") or {}).get("flop_share")
        if row.get("status") == "ok" and metric is not None and share is not None:
            out.append({**row, "x": 100.0 * share, "y": float(metric)})
    return out


def _panel(ax: Any, name: str, model: dict[str, Any], arithmetic: str) -> None:
    points = _points(model, arithmetic)
    frontier = sorted((p for p in points if p["tool"] == "regiontrt"
                       and str(p["variant"]).startswith("frontier")), key=lambda p: p["x"])
    if frontier:
        ax.plot([p["x"] for p in frontier], [p["y"] for p in frontier], "-o", color="tab:blue",
                alpha=0.45, markersize=3, label="regiontrt search frontier")
    for p in points:
        if str(p["variant"]).startswith("frontier"):
            continue
        color, marker = COLOR.get(p["tool"], "gray"), MARKER.get(p["method"], "x")
        default_ours = p["tool"] == "regiontrt" and p["method"] == "auto" \
            and p["variant"] == "default"
        hollow = p["variant"] == "our exclusions"
        ax.scatter([p["x"]], [p["y"]], marker=marker, s=160 if default_ours else 36, zorder=3,
                   facecolors="none" if hollow else color, edgecolors=color,
                   label=f"{p['tool']} {p['method']} ({p['variant']})")
    zoo = model["zoo"]
    ax.set_title(f"{name}: {zoo['metric']}", fontsize=8)
    ax.set_xlabel("int8 share of FLOPs (%)", fontsize=7)
    ax.tick_params(labelsize=7)
    if not points:
        ax.text(0.5, 0.5, "no int8 result", ha="center", va="center", transform=ax.transAxes)


def plot(results: list[dict[str, Any]], out: Path, arithmetic: str = "tensorrt") -> int:
    """Draw every model of ``results`` (later files win for a model listed twice) into ``out``.

    Returns:
        The number of panels drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models: dict[str, dict[str, Any]] = {}
    for res in results:
        models.update(res["models"])
    cols = min(4, len(models))
    rows = math.ceil(len(models) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, (name, model) in zip(axes.flat, models.items(), strict=False):
        _panel(ax, name, model, arithmetic)
    for ax in list(axes.flat)[len(models):]:
        ax.set_visible(False)
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            key = label.split(" (")[0] if "frontier" not in label else label
            handles.setdefault(key, h)
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center",
               ncol=min(6, len(handles)), fontsize=7, frameon=False,
               title="filled: each tool's defaults; hollow: with exactly our float layers "
                     "excluded; large star: our default", title_fontsize=7)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return len(models)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", type=Path, help="zoo result JSON files")
    ap.add_argument("--out", type=Path, default=Path("docs/img/zoo_frontier.png"))
    ap.add_argument("--arithmetic", choices=("tensorrt", "fused"), default="tensorrt")
    args = ap.parse_args(argv)
    n = plot([json.loads(p.read_text()) for p in args.results], args.out, args.arithmetic)
    print(f"{args.out}: {n} models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
