"""Micro-benchmarks of the quantization benchmark: entropy search speed against ONNX Runtime's,
end-to-end quantization time against ONNX Runtime's (the same work on both sides: load, prepare,
calibrate, write the Q/DQ model, timers started after the imports; ONNX Runtime with its defaults
and with the layers ours keeps in float excluded), and peak memory as the calibration set grows.
Run through ``python -m benchmarks.bench_quantization`` (``--no-micro`` skips them,
``--micro-only all`` runs only them, ``--micro-only calibration`` only the calibration time)::

    python -m benchmarks.bench_quantization --models ocr --micro-only calibration
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _measure, peers
from benchmarks.bench_quantization import OCR_CAL_WIDTH, Case, _fmt, _split, ours_quantize


def random_histograms(n: int, bins: int = 2048, seed: int = 0) -> list[np.ndarray]:
    """|x| histograms of activation-like samples (ReLU-ish, Gaussian, heavy-tailed, spiky)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = i % 4
        x = [
            rng.standard_normal(200_000) * rng.uniform(0.5, 3),
            np.maximum(rng.standard_normal(200_000), 0) * rng.uniform(0.5, 5),
            rng.standard_t(3, 200_000),
            rng.laplace(0, 1, 200_000),
        ][kind]
        x = np.abs(x)
        x[: rng.integers(0, 50)] *= rng.uniform(5, 20)  # a few outliers set the histogram range
        out.append(np.histogram(x, bins=bins, range=(0.0, float(x.max())))[0].astype(np.int64))
    return out


def entropy_search_speed(n: int) -> dict[str, Any]:
    """Our vectorised search vs ONNX Runtime's loop on the same 2048-bin count arrays."""
    from regiontrt.calibration.entropy import entropy_threshold

    hists = random_histograms(n)
    t0 = time.perf_counter()
    ours = [entropy_threshold(h) for h in hists]
    t1 = time.perf_counter()
    edges = np.linspace(-1.0, 1.0, 2049, dtype=np.float32)
    ort = [peers.ort_entropy_search((h, edges, np.float32(-1), np.float32(1))) for h in hists]
    t2 = time.perf_counter()
    assert len(ours) == len(ort) == n
    return {
        "histograms": n,
        "bins": 2048,
        "ours_s": t1 - t0,
        "onnxruntime_s": t2 - t1,
        "speedup": (t2 - t1) / max(t1 - t0, 1e-9),
        # ORT reads the array as a signed histogram: it scans half as many candidates.
        "candidates_ours": 2048 - 128,
        "candidates_onnxruntime": 1024 - 64 + 1,
    }


#: (ours, the ONNX Runtime run it is compared with): the same calibration method on both sides.
PAIRS = (("ours_minmax", "onnxruntime_minmax_our_exclusions"),
         ("ours_entropy", "onnxruntime_entropy_our_exclusions"),
         ("ours_minmax", "onnxruntime_minmax"))


def _contenders(case: Case, workdir: Path) -> list[tuple[str, Callable[..., Any], tuple[Any, ...]]]:
    """Every contender does the same work end to end: load, prepare (clean and plan; ORT's
    opset upgrade and ``quant_pre_process``), calibrate, write the Q/DQ model; each one's timer
    starts after its imports."""
    from benchmarks.bench_quantization import our_exclusions

    m, d = case.model_path, case.calib_path
    excl = our_exclusions(m)

    def out(key: str) -> str:
        return str(workdir / f"micro_{case.name}_{key}.onnx")

    return [
        ("ours_minmax", ours_quantize, (m, d, out("ours_minmax"), "minmax")),
        ("ours_entropy", ours_quantize, (m, d, out("ours_entropy"), "entropy")),
        ("ours_auto", ours_quantize, (m, d, out("ours_auto"), "auto")),
        ("onnxruntime_minmax", peers.ort_quantize, (m, d, out("ort_minmax"), "MinMax")),
        ("onnxruntime_minmax_our_exclusions", peers.ort_quantize,
         (m, d, out("ort_minmax_excl"), "MinMax", True, None, excl)),
        ("onnxruntime_entropy_our_exclusions", peers.ort_quantize,
         (m, d, out("ort_entropy_excl"), "Entropy", True, None, excl)),
    ]


def _measure_once(fn: Callable[..., Any], fargs: tuple[Any, ...], args: argparse.Namespace
                  ) -> dict[str, Any]:
    m = _measure.run_measured(fn, *fargs, timeout_s=args.timeout, mem_limit_mb=args.mem_cap_mb)
    v = m.value or {}
    base = v.get("rss_after_imports_mb")
    return {
        "status": m.status,
        "seconds": v.get("seconds") if m.ok else None,  # after imports, end to end
        "peak_rss_mb": m.peak_rss_mb,
        # The work's own memory: the peak above the resident set once the imports were done.
        "work_rss_mb": None if base is None or m.peak_rss_mb is None else m.peak_rss_mb - base,
        "calibration_s": v.get("calibration_s"),
        "tensors": v.get("tensors"),
        "excluded": v.get("excluded"),
    }


def calibration_speed(case: Case, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """End-to-end quantization time and memory, ours against ONNX Runtime, same data and work.

    With ``--micro-repeat N`` every contender runs N times, rounds interleaved (so load from
    other jobs on a shared machine hits both alike); ``seconds`` is the median, and each ratio
    in ``ratios`` (ours over ONNX Runtime with the same calibration method) is the median of
    the per-round ratios, with every round's kept.
    """
    contenders = _contenders(case, workdir)
    rounds = [{key: _measure_once(fn, fargs, args) for key, fn, fargs in contenders}
              for _ in range(max(1, getattr(args, "micro_repeat", 1)))]
    res: dict[str, Any] = {"samples": case.samples, "rounds": len(rounds),
                           "scope": "load + prepare + calibrate + write Q/DQ, after imports"}
    for key, _, _ in contenders:
        runs = [r[key] for r in rounds]
        secs = [r["seconds"] for r in runs if r["seconds"] is not None]
        res[key] = {
            **runs[0],
            "status": runs[0]["status"] if len(secs) < len(runs) else "ok",
            "seconds": float(np.median(secs)) if secs else None,
            "all_seconds": [r["seconds"] for r in runs],
            "peak_rss_mb": max((r["peak_rss_mb"] or 0.0) for r in runs) or None,
            "work_rss_mb": max((r["work_rss_mb"] or 0.0) for r in runs) or None,
        }
    res["ratios"] = {}
    for ours, ort in PAIRS:
        ratios = [r[ours]["seconds"] / r[ort]["seconds"] for r in rounds
                  if r[ours]["seconds"] and r[ort]["seconds"]]
        if ratios:
            res["ratios"][f"{ours} / {ort}"] = {"median": float(np.median(ratios)),
                                                "all": ratios}
    return res


SCALING_KEYS = ("ours_entropy", "onnxruntime_minmax", "onnxruntime_percentile")
# Every run writes its Q/DQ model (ORT's whole quantize_static, ours end to end) into workdir.


def _scaling_data(model: str, n: int, workdir: Path) -> tuple[str, str]:
    """Model path and calibration NPZ of ``n`` samples for the memory-scaling runs."""
    if model == "ocr":
        from benchmarks import ocr

        sets = ocr.make_ocr_sets(0, n_calibration=n, n_held_out=0, calibration_width=OCR_CAL_WIDTH)
        path = peers.save_batches(sets.calibration, workdir / f"scale_ocr_{n}.npz")
        return str(ocr.rec_model_path()), str(path)
    from benchmarks.models import RESNET13_PATH, benchmark_data

    data = benchmark_data(model, n_calibration=n).calibration
    path = peers.save_batches(_split(data, 32, "input"), workdir / f"scale_{model}_{n}.npz")
    return str(RESNET13_PATH), str(path)


def memory_scaling(
    args: argparse.Namespace,
    workdir: Path,
    log: Callable[[str], None],
    model: str,
    sizes: tuple[int, ...],
) -> dict[str, Any]:
    """Peak RSS of our calibration and of ONNX Runtime's MinMax pass as the set grows.

    ONNX Runtime is not run again on a larger set once it ran out of the memory cap.
    """
    res: dict[str, Any] = {"sizes": list(sizes), **{key: {} for key in SCALING_KEYS}}
    for n in sizes:
        m, path = _scaling_data(model, n, workdir)
        for key, fn, fargs in (
            ("ours_entropy", ours_quantize, (m, path, str(workdir / "scale_ours.onnx"),
                                             "entropy")),
            ("onnxruntime_minmax", peers.ort_quantize, (m, path, str(workdir / "scale_mm.onnx"),
                                                        "MinMax")),
            ("onnxruntime_percentile", peers.ort_quantize,
             (m, path, str(workdir / "scale_pc.onnx"), "Percentile")),
        ):
            if any(r["status"] == "oom" for r in res[key].values()):
                res[key][str(n)] = {"status": "skipped (oom on a smaller set)"}
                continue
            r = _measure.run_measured(
                fn, *fargs, timeout_s=args.timeout, mem_limit_mb=args.mem_cap_mb
            )
            res[key][str(n)] = {
                "status": r.status,
                "peak_rss_mb": r.peak_rss_mb,
                "base_rss_mb": (r.value or {}).get("rss_after_imports_mb"),
                "seconds": (r.value or {}).get("seconds"),
            }
            log(f"[memory] {model} {key} n={n}: {r.status} peak {r.peak_rss_mb} MB")
        Path(path).unlink()
    return res


def run_micro(
    cases: list[Case], workdir: Path, args: argparse.Namespace, log: Callable[[str], None]
) -> dict[str, Any]:
    only_calibration = getattr(args, "micro_only", None) == "calibration"
    out: dict[str, Any] = {}
    if not only_calibration:
        out["entropy_search"] = entropy_search_speed(4 if args.quick else 40)
        log(f"[micro] entropy search {out['entropy_search']}")
    out["calibration_speed"] = {}
    for case in cases:
        if case.name in ("resnet13", "ocr"):
            out["calibration_speed"][case.name] = calibration_speed(case, args, workdir)
            log(f"[micro] calibration speed {case.name}: {out['calibration_speed'][case.name]}")
    out["memory_scaling"] = {}
    if only_calibration:
        return out
    for model in [c.name for c in cases if c.name in ("resnet13", "ocr")]:
        sizes = ((64, 128) if model == "resnet13" else (16, 32)) if args.quick else (64, 256, 1024)
        out["memory_scaling"][model] = memory_scaling(args, workdir, log, model, sizes)
    return out


def micro_markdown(micro: dict[str, Any]) -> str:
    lines = []
    e = micro.get("entropy_search")
    if e:
        lines += [
            f"Entropy search, {e['histograms']} histograms of {e['bins']} bins: regiontrt "
            f"{e['ours_s'] * 1e3:.1f} ms, ONNX Runtime {e['onnxruntime_s'] * 1e3:.0f} ms "
            f"({e['speedup']:.0f}x; ORT scans {e['candidates_onnxruntime']} candidates per "
            f"histogram, regiontrt {e['candidates_ours']}).",
            "",
        ]
    lines += [
        "End-to-end quantization (load, prepare, calibrate, write the Q/DQ model; timers after "
        "the imports):",
        "",
        "| model | contender | samples | tensors | layers excluded | seconds (median) "
        "| peak RSS (MB) | work RSS (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ratio_lines = []
    for name, res in micro["calibration_speed"].items():
        for key, r in res.items():
            if isinstance(r, dict) and "status" in r:
                sec = "" if r["seconds"] is None else f"{r['seconds']:.2f}"
                excl = "" if r.get("excluded") is None else str(len(r["excluded"]))
                lines.append(
                    f"| {name} | {key} | {res['samples']} | {r['tensors'] or ''} | {excl} "
                    f"| {sec} | {_fmt(r['peak_rss_mb'])} | {_fmt(r.get('work_rss_mb'))} |"
                )
        for pair, q in res.get("ratios", {}).items():
            spread = f" ({min(q['all']):.2f}-{max(q['all']):.2f})" if len(q["all"]) > 1 else ""
            ratio_lines.append(f"- {name}: {pair} = {q['median']:.2f}{spread}")
    lines += ["", "Time ratios (ours over ONNX Runtime, same method):", "", *ratio_lines]
    for model, ms in micro["memory_scaling"].items():
        lines += [
            "",
            f"Peak RSS (MB) of calibration on {model} vs calibration samples:",
            "",
            "| calibration | " + " | ".join(str(n) for n in ms["sizes"]) + " |",
            "|---|" + "---|" * len(ms["sizes"]),
        ]
        for key in SCALING_KEYS:
            cells = [ms[key].get(str(n), {}) for n in ms["sizes"]]
            lines.append(
                f"| {key} | "
                + " | ".join(
                    f"{c['peak_rss_mb']:.0f}"
                    if c.get("status") == "ok"
                    else str(c.get("status", ""))
                    for c in cells
                )
                + " |"
            )
    return "\n".join(lines)


# --- report -----------------------------------------------------------------------------------
