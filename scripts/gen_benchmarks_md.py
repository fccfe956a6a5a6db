"""Write every table and inline figure of ``docs/benchmarks.md`` from ``docs/results/*.json``.

Issue 20 (results you can trust): a figure in the benchmarks page is what a script wrote, never
typed. The page holds two kinds of markers, and everything between them is rewritten here:

* ``<!-- table:NAME source:docs/results/A.json[,docs/results/B.json] -->`` ... ``<!-- /table -->``:
  the table NAME (one of :data:`TABLES`) rendered from the listed result files;
* ``<!-- value:FMT source:docs/results/A.json key:a.b.0.c -->`` ... ``<!-- /value -->``: one
  number of one file, found by its dotted key (list items by index), written with format FMT
  (``.2f``; a ``%`` suffix multiplies by 100, as for a fraction shown as a percentage).

    python scripts/gen_benchmarks_md.py            # rewrite docs/benchmarks.md
    python scripts/gen_benchmarks_md.py --check    # exit 1 (with a diff) if it is out of date

Every number a renderer writes goes through :func:`fmt`, which records it in :data:`EMITTED`, so
``tests/test_benchmark_docs.py`` can tell a figure the generator derived (a ratio, a sum) from a
figure nobody derived.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
sys.path.insert(0, str(ROOT))

from scripts._serving_tables import (  # noqa: E402
    monitor_cost,
    serving_peers,
    serving_phases,
    serving_summary,
    serving_verdict,
)
from scripts._table_fmt import EMITTED, _rows, fmt, lookup  # noqa: E402

__all__ = ["EMITTED", "TABLES", "fmt", "lookup", "render"]

TABLE = re.compile(r"(<!-- table:(?P<name>[\w-]+) source:(?P<src>\S+) -->\n)(?P<body>.*?)"
                   r"(<!-- /table -->)", re.S)
VALUE = re.compile(r"(<!-- value:(?P<fmt>\S+) source:(?P<src>\S+) key:(?P<key>\S+) -->)"
                   r"(?P<body>.*?)(<!-- /value -->)", re.S)


# -- GPU ---------------------------------------------------------------------------------------
def gpu_transfer(data: list[dict[str, Any]]) -> list[str]:
    d = data[0]
    rows = [[f"{r['size_mib']} MiB", r["direction"].upper(), fmt(r["pinned_gbps"], ".2f"),
             fmt(r["pageable_gbps"], ".2f"), fmt(r["pinned_vs_peak"], ".2f"),
             fmt(r["pinned_vs_pageable"], ".2f")] for r in d["rows"]]
    peak = d["peak_gbps"]
    return [f"Peak (best of {2 * d['reps']} pinned copies of the largest size): "
            f"H2D {fmt(peak['h2d'], '.1f')} GB/s, D2H {fmt(peak['d2h'], '.1f')} GB/s; "
            f"median of {d['reps']}.", "",
            *_rows(["size", "direction", "our pinned buffers GB/s", "pageable numpy GB/s",
                    "ours / peak", "ours / pageable"], rows)]


def infer_overhead(data: list[dict[str, Any]]) -> list[str]:
    d = data[0]
    res, bare = d["results"], d["results"]["bare"]["median_us"]
    names = {"bare": "bare cuda-python sequence (set shapes/addresses, H2D, execute, D2H, sync)",
             "runner": "`TensorRTRunner.run` (shape guard, profile selection, buffer reuse)",
             "runner_graph": "`TensorRTRunner` with CUDA-graph replay"}
    rows = [[names[k], fmt(v["median_us"], ".1f"), fmt(v["min_us"], ".1f"),
             fmt(v["median_us"] / bare, ".2f")] for k, v in res.items()]
    t = d["device_timeline_ms"]
    return [*_rows(["path", "median µs per call", "min µs", "vs bare"], rows), "",
            f"Runner minus bare: {fmt(d['runner_minus_bare_us'], '.1f')} µs. GPU time per call "
            f"(CUDA events): H2D {fmt(t['h2d'], '.3f')} ms, compute {fmt(t['compute'], '.3f')} ms, "
            f"D2H {fmt(t['d2h'], '.3f')} ms."]


def infer_overhead_ort(data: list[dict[str, Any]]) -> list[str]:
    """``Engine.infer`` on ONNX Runtime against a raw session run, one row per result file."""
    rows = []
    for d in data:
        o, env = d["onnxruntime"], d["environment"]
        cpu, r = env["machine"]["cpu"], o["results"]
        rows.append([f"{cpu['model']}, {cpu['cores']} cores (`{d['_file']}`)",
                     fmt(r["bare"]["median_us"], ".1f"), fmt(r["engine"]["median_us"], ".1f"),
                     fmt(o["engine_over_bare"], ".2f"), fmt(env["load_before"][0], ".2f"),
                     env["started_at"][:10]])
    return _rows(["machine (result file)", "raw `InferenceSession.run` median µs",
                  "`Engine.infer` median µs", "Engine / raw", "load before", "date"], rows)


# -- INT8 quantization -------------------------------------------------------------------------
def _task(r: dict[str, Any]) -> str:
    if "cer" in r and r["cer"] is not None:
        return (f"CER {fmt(r['cer'], '.2f%')} % (Latin {fmt(r['cer_latin'], '.2f%')} %, "
                f"CJK {fmt(r['cer_cjk'], '.2f%')} %)")
    if r.get("box_f1") is not None:
        return f"box F1 {fmt(r['box_f1'], '.2f%')} %"
    if r.get("accuracy") is not None:
        return f"accuracy {fmt(r['accuracy'], '.2f%')} %"
    return ""


def _quantizer(name: str, r: dict[str, Any]) -> str:
    info = r.get("info") or {}
    if not info.get("kept"):
        return name
    kept = f"{name}: kept {len(info['kept'])} ({', '.join(info['kept'][:4])}" + (
        ", ...)" if len(info["kept"]) > 4 else ")")
    if "evaluations" in info:
        kept += f"; {info['evaluations']} full + {info.get('screen_evaluations', 0)} screened"
    return kept


def quant_rows(data: list[dict[str, Any]]) -> list[str]:
    rows = []
    for d in data:
        for model, m in d["models"].items():
            rows.append([model, "FP32", "", "", "", "", _task(m["fp32"])])
            for name, r in m["rows"].items():
                ok = r["status"] == "ok"
                rows.append([model, _quantizer(name, r), fmt(r["wall_s"], ".1f"),
                             fmt(r["peak_rss_mb"], ".0f"),
                             fmt(r.get("rel_l2"), ".4f") if ok else r["status"],
                             fmt(r.get("top1_agreement"), ".2f%") + " %"
                             if ok and r.get("top1_agreement") is not None else "",
                             _task(r) if ok else ""])
    return _rows(["model", "quantizer", "time s", "peak RSS MB", "rel L2 vs FP32",
                  "top-1 agreement", "task metric"], rows)


def quant_search(data: list[dict[str, Any]]) -> list[str]:
    rows = [[model, fmt(s["search_s"], ".1f"), fmt(s["whole_s"], ".1f"),
             fmt(s["ratio"], ".2f") + "×"]
            for d in data for model, m in d["models"].items()
            if (s := m.get("search_vs_whole"))]
    return _rows(["model", "mixed-precision build s", "whole-model INT8 build s", "ratio"], rows)


def quant_micro(data: list[dict[str, Any]]) -> list[str]:
    micro = data[0]["micro"]
    e = micro["entropy_search"]
    out = [f"Entropy search on {e['histograms']} histograms of {e['bins']} bins: ours "
           f"{fmt(e['ours_s'], '.3f')} s ({e['candidates_ours']} candidates each), ONNX "
           f"Runtime {fmt(e['onnxruntime_s'], '.1f')} s ({e['candidates_onnxruntime']}): "
           f"{fmt(e['speedup'], '.0f')}×.", ""]
    rows = [[model, name, fmt(r["seconds"], ".2f"), str(r["tensors"]), fmt(r["peak_rss_mb"], ".0f"),
             fmt(r.get("ratio_to_onnxruntime_minmax"), ".2f")]
            for model, m in micro["calibration_speed"].items()
            for name, r in m.items() if isinstance(r, dict)]
    out += _rows(["model", "calibration", "s", "tensors", "peak RSS MB", "vs ORT MinMax"], rows)
    rows = []
    for model, m in micro["memory_scaling"].items():
        for name, per in m.items():
            if name != "sizes":
                rows.append([model, name, *(fmt(per[str(n)].get("peak_rss_mb"), ".0f")
                                            if per.get(str(n), {}).get("status") == "ok"
                                            else per.get(str(n), {}).get("status", "-")
                                            for n in m["sizes"])])
    sizes = next(iter(micro["memory_scaling"].values()))["sizes"]
    head = ["model", "calibration", *(f"peak RSS MB, {n} samples" for n in sizes)]
    return [*out, "", *_rows(head, rows)]


def calibration(data: list[dict[str, Any]]) -> list[str]:
    rows = []
    for d in data:
        run = Path(d["argv"][d["argv"].index("--out") + 1]).stem if "--out" in d["argv"] else ""
        for name, r in d["micro"]["calibration_speed"]["ocr"].items():
            if not isinstance(r, dict):
                continue
            spread = ", ".join(fmt(x, ".2f") for x in r.get("all_seconds", []))
            ratios = r.get("ratios") or []
            rng = f" ({fmt(min(ratios), '.2f')}–{fmt(max(ratios), '.2f')})" if ratios else ""
            rows.append([d["_file"], run, name, str(r["tensors"]),
                         f"{fmt(r['seconds'], '.2f')} ({spread})",
                         fmt(r.get("ratio_to_onnxruntime_minmax"), ".2f") + rng,
                         fmt(r["peak_rss_mb"], ".0f")])
    return _rows(["file", "--out", "calibration", "tensors", "median s (rounds)",
                  "vs ORT MinMax, median (range)", "peak RSS MB"], rows)


def arithmetic(data: list[dict[str, Any]]) -> list[str]:
    from benchmarks.bench_arithmetic import table

    return table(data[0]).splitlines()


# -- fleet, serving ----------------------------------------------------------------------------
def _run_footer(d: dict[str, Any]) -> str:
    env = d["environment"]
    cores = d.get("cpus", {}).get("usable", env["machine"]["cpu"]["cores"])
    return (f"`{env['command']}`, {env['started_at']} to {env['finished_at']}, "
            f"{env['machine']['cpu']['model']} ({cores} cores), "
            f"load average {fmt(env['load_before'][0], '.2f')} before, "
            f"{fmt(env['load_after'][0], '.2f')} after; commit `{env['commit'][:12]}`.")


def _one_worker_s(d: dict[str, Any]) -> float | None:
    return next((r["wall_s"] for r in d["runs"].values() if r.get("workers") == 1), None)


def fleet(data: list[dict[str, Any]]) -> list[str]:
    d = data[0]
    peer = d["runs"].get("by hand, 1 process (peer)", {}).get("wall_s")
    one = _one_worker_s(d)
    rows, regions = [], ""
    for name, r in d["runs"].items():
        cells = r["cells"].values()
        regions = regions or ", ".join(k.split("/")[0] for k in r["cells"])
        precisions = ", ".join(c[1] if isinstance(c, list) else c for c in cells)
        rows.append([name, fmt(r["wall_s"], ".1f"),
                     fmt(one / r["wall_s"], ".2f") + "×" if one and "workers" in r else "-",
                     fmt(peer / r["wall_s"], ".2f") + "×" if peer else "-",
                     str(r.get("threads_per_worker") or "-"), fmt(r.get("bound_s"), ".1f"),
                     "yes" if r.get("ok", True) else "no", precisions])
    return [*_rows(["configuration", "wall s", "speed-up vs 1 worker", "speed-up vs peer",
                    "ONNX Runtime threads per worker", "bound s", "all cells built",
                    f"cell precisions ({regions})"], rows), "", _run_footer(d)]


def dist_calibration(data: list[dict[str, Any]]) -> list[str]:
    """Distributed calibration: worker and driver memory per sample count, equality, time."""
    d = data[0]
    rows = [[f"{r['samples']:,}", str(r["files"]), fmt(r["seconds"], ".1f"),
             " / ".join(fmt(m, ".1f") for m in r["worker_peak_mib"]),
             fmt(r["driver_peak_mib"], ".1f"),
             "yes" if r["equal_to_single_process"] else "**no**"] for r in d["runs"]]
    env = d["environment"]
    cpu = env["machine"]["cpu"]
    return [*_rows(["samples", "shard files", "seconds", "worker peak RSS MiB (each)",
                    "driver peak RSS MiB", "ranges and histograms equal to one process"], rows),
            "", f"{d['workers']} workers, model `{d['model']}` (input {d['input']}); worker peak "
            f"growth over the sample counts {fmt(d['worker_peak_growth_mib'], '.1f')} MiB. "
            f"`{env['command']}`, {env['started_at']}, {cpu['model']} ({cpu['cores']} cores), "
            f"load average {fmt(env['load_before'][0], '.2f')} before, "
            f"{fmt(env['load_after'][0], '.2f')} after; commit `{env['commit'][:12]}`."]


def fleet_scaling(data: list[dict[str, Any]]) -> list[str]:
    """Workers against wall time, with the bound ``max(work / workers, longest chain)``."""
    d = data[0]
    one = _one_worker_s(d)
    rows = [[str(r["workers"]), str(r["threads_per_worker"] or "-"), fmt(r["wall_s"], ".1f"),
             fmt(one / r["wall_s"], ".2f") + "×" if one else "-",
             fmt(one / r["wall_s"] / r["workers"], ".0f%") + " %" if one else "-",
             fmt(r["bound_s"], ".1f"), fmt(r["chain_s"], ".1f"), fmt(r["task_seconds"], ".1f"),
             f"{fmt(r['load_before'][0], '.2f')} → {fmt(r['load_after'][0], '.2f')}",
             "yes" if r["ok"] else "no"]
            for r in d["runs"].values() if "workers" in r]
    return [*_rows(["workers", "threads per worker", "wall s", "speed-up vs 1 worker",
                    "efficiency", "bound s", "longest chain s", "work in tasks s",
                    "load (1 min) before → after", "all cells built"], rows), "",
            f"{len(d['regions'])} regions × {d['targets']} targets; " + _run_footer(d)]


# -- the INT8 model zoo (benchmarks/bench_zoo.py) -----------------------------------------------
def _zoo_cell(row: dict[str, Any] | None, arithmetic: str = "tensorrt") -> str:
    if not row or row.get("status") != "ok":
        return "-" if not row else str(row.get("status"))
    cov = row.get("coverage") or {}
    share = cov.get("flop_share") if cov.get("flop_share") is not None else cov.get("layer_share")
    return (f"{fmt((row.get('metric') or {}).get(arithmetic), '.4g')} at "
            f"{fmt(share, '.1f%')} % int8")


def _best(rows: list[dict[str, Any]], tool: str, higher: bool) -> dict[str, Any] | None:
    ok = [r for r in rows if r["tool"] == tool and r.get("status") == "ok"
          and (r.get("metric") or {}).get("tensorrt") is not None]
    if not ok:
        return None
    return (max if higher else min)(ok, key=lambda r: r["metric"]["tensorrt"])


def zoo(data: list[dict[str, Any]]) -> list[str]:
    """Per zoo model: our default, ModelOpt's and ONNX Runtime's best (TensorRT arithmetic,
    metric at int8 FLOP coverage), and ours against ModelOpt's best at >= its coverage."""
    rows = []
    for d in data:
        for name, res in d["models"].items():
            z, cands = res["zoo"], res["rows"]
            ours = next((r for r in cands if r["tool"] == "regiontrt" and r["method"] == "auto"
                         and r["variant"] == "default"), None)
            mo = _best(cands, "modelopt", z["higher_is_better"])
            ort = _best(cands, "onnxruntime", z["higher_is_better"])
            verdict = "-"
            if mo is not None:
                want = f"{mo['tool']} {mo['method']} ({mo['variant']})"
                comp = next((c for c in res["comparisons"] if c["peer"] == want), None)
                t = ((comp or {}).get("bootstrap") or {}).get("tensorrt")
                if comp and t:
                    verdict = (f"{comp['verdict']}: {fmt(t['ours_minus_peer'], '+.3g')} "
                               f"[{fmt(t['low'], '+.3g')}, {fmt(t['high'], '+.3g')}], ours "
                               f"= {comp.get('ours')} at "
                               f"{fmt(comp.get('ours_coverage'), '.1f%')} %")
                elif comp:
                    verdict = str(comp["verdict"])
            better = "higher" if z["higher_is_better"] else "lower"
            rows.append([name, z["family"], f"{z['metric']} ({better} better)", _zoo_cell(ours),
                         _zoo_cell(mo) + (f" ({mo['method']}, {mo['variant']})" if mo else ""),
                         _zoo_cell(ort) + (f" ({ort['method']}, {ort['variant']})" if ort else ""),
                         verdict])
    return _rows(["model", "family", "metric vs FP32", "regiontrt default (auto)",
                  "ModelOpt best", "ONNX Runtime best",
                  "ours at >= its coverage - ModelOpt best [95 % CI]"], rows)


TABLES: dict[str, Callable[[list[dict[str, Any]]], list[str]]] = {
    f.__name__.replace("_", "-"): f for f in (
        gpu_transfer, infer_overhead, infer_overhead_ort, quant_rows, quant_search, quant_micro,
        calibration, arithmetic, dist_calibration, fleet, fleet_scaling, serving_phases,
        serving_summary, serving_peers, serving_verdict, monitor_cost, zoo)}


def load(sources: str) -> list[dict[str, Any]]:
    """The result files named in a marker (comma-separated), each tagged with its file name."""
    return [{**json.loads((ROOT / s).read_text()), "_file": Path(s).name}
            for s in sources.split(",")]


def render(text: str) -> str:
    """``text`` with every marked table and value rewritten from its result files."""
    def table(m: re.Match[str]) -> str:
        name = m["name"]
        if name not in TABLES:
            raise SystemExit(f"unknown table {name!r}; known: {sorted(TABLES)}")
        return m.group(1) + "\n".join(TABLES[name](load(m["src"]))) + "\n" + m.group(5)

    def value(m: re.Match[str]) -> str:
        return m.group(1) + fmt(lookup(load(m["src"])[0], m["key"]), m["fmt"]) + m.group(6)

    return VALUE.sub(value, TABLE.sub(table, text))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="fail if the page is out of date")
    p.add_argument("--doc", type=Path, default=DOC)
    args = p.parse_args(argv)
    text = args.doc.read_text()
    new = render(text)
    if args.check:
        if new != text:
            sys.stdout.writelines(difflib.unified_diff(
                text.splitlines(True), new.splitlines(True), str(args.doc), "generated"))
            print(f"{args.doc} differs from docs/results/*.json: run "
                  "python scripts/gen_benchmarks_md.py", file=sys.stderr)
            return 1
        return 0
    args.doc.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
