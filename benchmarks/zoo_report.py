"""The zoo benchmark's comparisons (ours vs each peer at equal or higher int8 coverage, paired
bootstrap intervals) and its markdown table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.zoo.base import ZooModel, paired_bootstrap

EPS = 1e-9


def coverage_of(row: dict[str, Any]) -> float | None:
    """The share of FLOPs in int8 (the share of weighted layers where FLOPs are unknown)."""
    cov = row.get("coverage")
    if not cov:
        return None
    return cov["flop_share"] if cov.get("flop_share") is not None else cov["layer_share"]


def label(row: dict[str, Any]) -> str:
    return f"{row['tool']} {row['method']} ({row['variant']})"


def _pick_ours(ours: list[tuple[int, dict[str, Any]]], needed: float
               ) -> tuple[int, dict[str, Any]] | None:
    """Ours at equal or higher coverage: the default build when it qualifies, else the
    qualifying candidate closest in coverage (first in row order on ties). Fixed in advance,
    never the best-scoring one, so the pick does not favour ours."""
    eligible = [(i, r) for i, r in ours if (coverage_of(r) or 0.0) >= needed - EPS]
    for i, r in eligible:
        if r["method"] == "auto" and r["variant"] == "default":
            return i, r
    if not eligible:
        return None
    return min(eligible, key=lambda ir: ((coverage_of(ir[1]) or 0.0), ir[0]))


def verdict(zoo: ZooModel, diff: float, lo: float, hi: float) -> str:
    """"tie" when the interval holds 0, else which side the metric favours."""
    if lo <= 0.0 <= hi:
        return "tie"
    return "regiontrt better" if (diff > 0) == zoo.higher_is_better else "peer better"


def placement_diff(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, list[str]]:
    """Set differences of quantized activation tensors and int8 layers, tensor by tensor."""
    a, b = set(ours["quantized_tensors"]), set(peer["quantized_tensors"])
    la, lb = set(ours["int8_layer_names"]), set(peer["int8_layer_names"])
    return {"tensors_only_ours": sorted(a - b), "tensors_only_peer": sorted(b - a),
            "layers_only_ours": sorted(la - lb), "layers_only_peer": sorted(lb - la)}


def compare_all(zoo: ZooModel, rows: Sequence[dict[str, Any]],
                stats: Sequence[dict[str, np.ndarray]], headline: str) -> list[dict[str, Any]]:
    """One comparison per scored peer row: ours at equal or higher coverage vs the peer."""
    ours = [(i, r) for i, r in enumerate(rows) if r["tool"] == "regiontrt" and r.get("metric")]
    out = []
    for j, peer in enumerate(rows):
        if peer["tool"] == "regiontrt" or not peer.get("metric"):
            continue
        needed = coverage_of(peer) or 0.0
        entry: dict[str, Any] = {"peer": label(peer), "peer_coverage": needed}
        pick = _pick_ours(ours, needed)
        if pick is None:
            best = max((coverage_of(r) or 0.0 for _, r in ours), default=None)
            entry.update(verdict="no regiontrt candidate at equal or higher coverage",
                         best_ours_coverage=best)
            out.append(entry)
            continue
        i, mine = pick
        entry.update(ours=label(mine), ours_coverage=coverage_of(mine), bootstrap={})
        for arith in stats[j]:
            diff, lo, hi = paired_bootstrap(zoo, stats[i][arith], stats[j][arith])
            entry["bootstrap"][arith] = {"ours_minus_peer": diff, "low": lo, "high": hi,
                                         "verdict": verdict(zoo, diff, lo, hi)}
        entry["verdict"] = entry["bootstrap"][headline]["verdict"]
        entry["placement"] = placement_diff(mine["coverage"], peer["coverage"])
        out.append(entry)
    return out


def _f(v: Any, pct: bool = False) -> str:
    if v is None:
        return ""
    return f"{100 * v:.1f} %" if pct else f"{v:.4g}"


def markdown(result: dict[str, Any]) -> str:
    """Per model: every candidate's coverage and metric, then the comparisons."""
    lines = [f"Headline arithmetic: {result['headline_arithmetic']} (Q/DQ as float fake-quant, "
             "what TensorRT computes). ModelOpt: "
             f"{result['modelopt'] or 'skipped: ' + str(result['modelopt_skipped'])}.", ""]
    for name, res in result["models"].items():
        z = res["zoo"]
        lines += [f"### {name} ({z['family']}; {z['metric']}, "
                  f"{'higher' if z['higher_is_better'] else 'lower'} is better)", "",
                  f"FP32 {z['metric']} against itself: {_f(res['fp32_metric'])}; "
                  f"{res['samples']['calibration']} calibration, "
                  f"{res['samples']['evaluation']} evaluation samples; layers ours keeps in "
                  f"float: {', '.join(res['our_exclusions']) or '-'}.", "",
                  "| quantizer | variant | status | seconds | int8 layers | int8 FLOPs "
                  f"| {z['metric']} (TensorRT arithmetic) | {z['metric']} (ORT fused) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in res["rows"]:
            cov, met = r.get("coverage") or {}, r.get("metric") or {}
            layers = f"{cov['int8_layers']}/{cov['layers']}" if cov else ""
            lines.append(f"| {r['tool']} {r['method']} | {r['variant']} | {r['status']} "
                         f"| {_f(r.get('seconds'))} | {layers} | {_f(cov.get('flop_share'), True)} "
                         f"| {_f(met.get('tensorrt'))} | {_f(met.get('fused'))} |")
        lines += ["", "| peer | peer int8 FLOPs | regiontrt at >= coverage | its int8 FLOPs "
                  "| ours - peer [95 % CI], TensorRT arithmetic | verdict | fused: verdict "
                  "| tensors only ours / only peer |", "|---|---|---|---|---|---|---|---|"]
        for c in res["comparisons"]:
            b = c.get("bootstrap", {})
            t, fu = b.get("tensorrt"), b.get("fused")
            ci = f"{t['ours_minus_peer']:+.4g} [{t['low']:+.4g}, {t['high']:+.4g}]" if t else ""
            pl = c.get("placement")
            diff = f"{len(pl['tensors_only_ours'])} / {len(pl['tensors_only_peer'])}" if pl else ""
            lines.append(f"| {c['peer']} | {_f(c['peer_coverage'], True)} | {c.get('ours', '')} "
                         f"| {_f(c.get('ours_coverage'), True)} | {ci} | {c['verdict']} "
                         f"| {fu['verdict'] if fu else ''} | {diff} |")
        lines.append("")
    return "\n".join(lines)
