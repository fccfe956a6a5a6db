"""INT8 quantization benchmark: regiontrt against ONNX Runtime and NVIDIA ModelOpt, in one run.

For each model, every quantizer gets the same calibration batches (one NPZ file) and every
result is scored on the same held-out inputs against the FP32 model as shipped. Each quantizer
runs in its own child process (wall time and peak RSS are its own); a run past the memory cap or
the timeout is recorded as ``oom``/``timeout``. Micro-benchmarks follow: entropy search speed,
whole calibration time against ONNX Runtime's MinMax pass, and peak memory as the calibration
set grows.

Run from the repository root::

    python -m benchmarks.bench_quantization --quick --out /tmp/bench_quick.json
    python -m benchmarks.bench_quantization --out docs/benchmarks.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _env, _measure, peers

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "regiontrt" / "demo" / "digits_cnn.onnx"
# "entropy-plain": TensorRT's KL search alone (EntropyCalibrator(floor_percentile=None)), to show
# in the same run what the default's 99.99th-percentile floor fixes on long-tailed tensors.
OURS_METHODS = ("auto", "entropy", "percentile", "minmax", "entropy-plain")
OCR_CAL_WIDTH = 640  # ONNX Runtime's histogram calibrators need one input shape
WHOLE_FITS_BUDGET = 1e9  # a budget any int8 build meets: the builder skips the search


@dataclass
class Case:
    """One model's benchmark inputs."""

    name: str
    model_path: str
    calib_path: str
    samples: int
    held_out: list[dict[str, np.ndarray]]
    labels: np.ndarray | None = None
    texts: list[str] = field(default_factory=list)
    scripts: list[str] = field(default_factory=list)
    charset: list[str] | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    # Validation inputs for the mixed-precision search (never the held-out ones).
    val_path: str = ""
    val_texts: list[str] | None = None
    kind: str = "classify"  # or "ocr" (CER), "det" (box F1 against FP32 boxes)


def _split(x: np.ndarray, size: int, name: str) -> list[dict[str, np.ndarray]]:
    return [{name: x[i : i + size]} for i in range(0, len(x), size)]


def make_case(name: str, workdir: Path, quick: bool, samples: int | None) -> Case:
    """Model file, calibration NPZ and held-out inputs of ``demo``, ``resnet13`` or ``ocr``."""
    if name in ("demo", "resnet13"):
        from benchmarks.models import (
            RESNET13_PATH,
            benchmark_data,
            resnet13,
        )

        n = samples or (64 if quick else 256)
        data = benchmark_data(name, n_calibration=n)
        if name == "resnet13":
            resnet13()  # trains and caches the model on first use
        path = str(DEMO_MODEL if name == "demo" else RESNET13_PATH)
        held = data.heldout[:120] if quick else data.heldout
        labels = data.labels[: len(held)]
        cal = peers.save_batches(_split(data.calibration, 32, "input"), workdir / f"{name}.npz")
        # No labels needed: the search's loss is disagreement with FP32 on calibration inputs.
        return Case(
            name, path, str(cal), n, _split(held, 120, "input"), labels=labels, val_path=str(cal)
        )
    if name == "ocr":
        from benchmarks import ocr

        n = samples or (8 if quick else 32)
        sets = ocr.make_ocr_sets(
            0, n_calibration=n, n_held_out=40 if quick else 200, calibration_width=OCR_CAL_WIDTH
        )
        rec = ocr.rec_model_path()
        cal = peers.save_batches(sets.calibration, workdir / "ocr.npz")
        val = ocr.make_ocr_sets(7, n_calibration=0, n_held_out=16 if quick else 40).held_out
        val_path = peers.save_batches([{sets.input_name: b.x} for b in val], workdir / "val.npz")
        return Case(
            name,
            str(rec),
            str(cal),
            n,
            [{sets.input_name: b.x} for b in sets.held_out],
            texts=[t for b in sets.held_out for t in b.texts],
            scripts=[b.script for b in sets.held_out for _ in b.texts],
            charset=ocr.charset(rec),
            notes={"ocr": sets.info},
            val_path=str(val_path),
            val_texts=[t for b in val for t in b.texts],
            kind="ocr",
        )
    if name in ("det", "cls"):
        return _det_cls_case(name, workdir, quick, samples)
    raise SystemExit(f"unknown model {name!r}: choose from demo, resnet13, ocr, det, cls")


def _det_cls_case(name: str, workdir: Path, quick: bool, samples: int | None) -> Case:
    """PP-OCRv4's detector (pages, box F1) or direction classifier (lines, top-1)."""
    from benchmarks import ocr_det_cls as dc

    if name == "det":
        n = samples or (4 if quick else 8)
        cal = dc.render_pages(n, seed=0)
        held = dc.render_pages(8 if quick else 24, seed=1)
        val = dc.render_pages(4 if quick else 8, seed=2)
        path = dc.model_path(dc.DET_MODEL_NAME)
        return Case(
            name, str(path), str(peers.save_batches([{"x": p} for p in cal], workdir / "det.npz")),
            n, [{"x": p} for p in held], kind="det", notes={"page": dc.DET_SHAPE},
            val_path=str(peers.save_batches([{"x": p} for p in val], workdir / "det_val.npz")),
        )
    n = samples or (32 if quick else 64)
    # The shipped classifier declares its batch axis as -1 ("any size": regiontrt reads it so,
    # see graph.io.input_specs); every quantizer, peers included, gets the same copy where the
    # axis is named "N", so that no tool has to guess.
    import onnx

    model = onnx.load(str(dc.model_path(dc.CLS_MODEL_NAME)))
    for dim in model.graph.input[0].type.tensor_type.shape.dim[:1]:
        dim.dim_param = "N"
    onnx.save(model, str(workdir / "cls_model.onnx"))
    x_cal, _ = dc.cls_lines(n, seed=0)
    x_held, labels = dc.cls_lines(40 if quick else 200, seed=1)
    x_val, _ = dc.cls_lines(32 if quick else 64, seed=2)
    return Case(
        name, str(workdir / "cls_model.onnx"),
        str(peers.save_batches(_split(x_cal, 32, "x"), workdir / "cls.npz")), n,
        _split(x_held, 50, "x"), labels=labels,
        val_path=str(peers.save_batches(_split(x_val, 32, "x"), workdir / "cls_val.npz")),
    )


# --- contenders (run in child processes) -------------------------------------------------------


def _calibrator(method: str) -> Any:
    try:
        from regiontrt.calibration import get_calibrator
    except ImportError:  # the package may not re-export it yet
        from regiontrt.calibration.base import get_calibrator
    if method == "entropy-plain":
        return get_calibrator("entropy", floor_percentile=None)
    return get_calibrator(method)


def ours_quantize(
    model_path: str,
    data_path: str,
    out_path: str,
    method: str,
    exclude: tuple[str, ...] = (),
    calibrate_all: bool = False,
) -> dict[str, Any]:
    """regiontrt: clean the FP32 graph, plan Q/DQ, calibrate the planned tensors, write Q/DQ.

    The timer starts after the imports (as for the peers): ``seconds`` covers load, clean, plan,
    calibration and writing the Q/DQ model; ``calibration_s`` is the calibration alone.
    """
    import onnx

    from regiontrt.graph.clean import clean
    from regiontrt.graph.io import load_model
    from regiontrt.graph.quantize import QuantizeOptions, plan_quantization, quantize_model

    calibrator = _calibrator(method)  # imports the calibration package: before the timer
    rss = _measure.proc_status_mb("self", "VmRSS")
    start = time.perf_counter()
    model = clean(load_model(model_path, check=False))
    options = QuantizeOptions(exclude_nodes=frozenset(exclude))
    plan = plan_quantization(model, options)
    tensors = None if calibrate_all else list(plan.activations)
    result = calibrator.calibrate(model, peers.NpzBatches(data_path), tensors)
    if out_path:
        onnx.save(quantize_model(model, result.amax, options), out_path)
    return {
        "seconds": time.perf_counter() - start,
        "rss_after_imports_mb": rss,
        "layers": list(plan.nodes),
        "activations": len(plan.activations),
        "tensors": len(result.amax),
        "skipped": dict(plan.skipped),
        "calibration_s": result.seconds,
        "samples": result.num_samples,
        "amax": result.amax,
    }


def ours_mixed(
    model_path: str,
    data_path: str,
    out_path: str,
    method: str,
    val_path: str,
    budget: float,
    val_texts: list[str] | None = None,
    kind: str = "classify",
) -> dict[str, Any]:
    """regiontrt's builder with int8 only: its mixed-precision search keeps the most sensitive
    layers out of INT8 when whole-model INT8 misses ``budget``.

    The loss is the CER increase over FP32 for OCR (``val_texts`` given, as a user metric), else
    the share of validation samples whose top-1 class differs from FP32.
    """
    import regiontrt as rt

    metric: Any = "top1"
    if val_texts is not None:
        from benchmarks import ocr

        chars = ocr.charset(model_path)

        def cer(outputs: Any) -> float:
            batches = next(iter(outputs.values()))
            batches = batches if isinstance(batches, list) else [batches]
            hyps = [ocr.ctc_decode(row[None], chars) for b in batches for row in b]
            return float(np.mean([ocr.cer(t, h) for t, h in zip(val_texts, hyps)]))

        def cer_increase(reference: Any, candidate: Any) -> float:
            return cer(candidate) - cer(reference)

        metric = cer_increase
    elif kind == "det":
        from benchmarks import ocr_det_cls as dc

        def f1_loss(reference: Any, candidate: Any) -> float:
            def pages(out: Any) -> list[np.ndarray]:
                value = next(iter(out.values()))
                return value if isinstance(value, list) else [value]

            ref, cand = dc.page_boxes(pages(reference)), dc.page_boxes(pages(candidate))
            return 1.0 - dc.box_f1(ref, cand)

        metric = f1_loss
    region = rt.Region("BENCH", (rt.Precision.INT8,), budget=budget, metric="top1")
    builder = (
        rt.RegionalEngineBuilder.from_onnx(model_path)
        .for_region(region)
        .with_precision(rt.PrecisionPolicy("int8", max_kept_fraction=1.0))
        .with_calibrator(_calibrator(method), data=peers.NpzBatches(data_path))
        .with_validation(list(peers.NpzBatches(val_path)), metric=metric)
        .with_calibration_check(strict=False)
    )
    try:
        engine = builder.build()
    except rt.errors.AccuracyBudgetExceeded as exc:
        return {"fits": False, "budget": budget, "error": str(exc)}
    Path(out_path).write_bytes(engine.payload)
    meta = engine.metadata
    search = meta["calibration"].get("mixed_precision", {})
    trial = meta["validation"]["trials"][-1]
    return {
        "kept": meta["kept_high_precision"],
        "fits": True,
        "val_loss": trial["loss"],
        "int8_val_loss": search.get("whole_model_loss", trial["loss"]),
        "budget": budget,
        "evaluations": search.get("evaluations", 1),
        "screen_evaluations": search.get("screen_evaluations", 0),
        "search_s": search.get("seconds"),
        "calibration_s": meta["calibration"].get("seconds"),
        "most_sensitive": list(search.get("sensitivity", {}).items())[:8],
    }


def contenders(
    case: Case, workdir: Path, modelopt: Path | None, args: argparse.Namespace
) -> list[tuple[str, Any]]:
    """``(label, (function or None, args or argv, output path))`` for every quantizer."""
    out: list[tuple[str, Any]] = []
    m, d = case.model_path, case.calib_path
    for meth in OURS_METHODS:
        path = str(workdir / f"{case.name}_ours_{meth}.onnx")
        out.append((f"regiontrt {meth}", (ours_quantize, (m, d, path, meth), path)))
    if args.mixed is not None:
        path = str(workdir / f"{case.name}_ours_mixed.onnx")
        budget = args.mixed / 100.0
        fargs = (m, d, path, args.mixed_method, case.val_path, budget, case.val_texts, case.kind)
        label = f"regiontrt {args.mixed_method} + mixed precision (budget {args.mixed:g} pt)"
        out.append((label, (ours_mixed, fargs, path)))
        # The same build with a budget whole-model int8 meets: the search's cost is the ratio.
        path = str(workdir / f"{case.name}_ours_whole.onnx")
        fargs = (m, d, path, args.mixed_method, case.val_path, WHOLE_FITS_BUDGET, case.val_texts,
                 case.kind)
        out.append((f"regiontrt {args.mixed_method} builder, whole-model fits", (ours_mixed, fargs,
                                                                                  path)))
    # Each peer twice: its documented defaults, and with the layers ours keeps in float excluded.
    excl = our_exclusions(m)
    for meth in peers.ORT_METHODS:
        for tag, ex in (("", ()), (" (our exclusions)", excl)):
            path = str(workdir / f"{case.name}_ort_{meth}{'_excl' if ex else ''}.onnx")
            out.append((f"onnxruntime {meth}{tag}",
                        (peers.ort_quantize, (m, d, path, meth, True, None, ex), path)))
    if modelopt is not None:
        variants = [(meth, False) for meth in peers.MODELOPT_METHODS]
        if case.name == "ocr":
            variants += [(meth, True) for meth in peers.MODELOPT_METHODS]
        for (meth, prep), (tag, ex) in itertools.product(variants, (("", ()),
                                                                    (" (our exclusions)", excl))):
            path = str(workdir / f"{case.name}_modelopt_{meth}{'_prep' if prep else ''}"
                                 f"{'_excl' if ex else ''}.onnx")
            argv = peers.modelopt_command(modelopt, m, d, path, meth, prepare=prep, exclude=ex)
            label = f"modelopt {meth}" + (" (opset17+LayerNorm fusion)" if prep else "") + tag
            out.append((label, (None, argv, path)))
    return out


def our_exclusions(model_path: str) -> tuple[str, ...]:
    """The weighted layers ours keeps in float by default (first and last layers...)."""
    from regiontrt.graph.clean import clean
    from regiontrt.graph.io import load_model
    from regiontrt.graph.quantize import plan_quantization

    return tuple(plan_quantization(clean(load_model(model_path, check=False))).skipped)


def run_contender(spec: Any, timeout_s: float, mem_mb: float) -> _measure.Measured:
    fn, args, _ = spec
    if fn is None:
        return _measure.run_command_measured(args, timeout_s=timeout_s, mem_limit_mb=mem_mb)
    return _measure.run_measured(fn, *args, timeout_s=timeout_s, mem_limit_mb=mem_mb)


# --- scoring ----------------------------------------------------------------------------------


def run_model(path: str, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return [np.asarray(sess.run(None, f)[0]) for f in feeds]


def score(case: Case, outs: list[np.ndarray], ref: list[np.ndarray]) -> dict[str, Any]:
    """Relative L2 and top-1 agreement against FP32, plus accuracy or character error rate."""
    num = sum(float(np.sum((o.astype(np.float64) - r) ** 2)) for o, r in zip(outs, ref))
    den = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in ref)
    agree = np.concatenate([(o.argmax(-1) == r.argmax(-1)).ravel() for o, r in zip(outs, ref)])
    s: dict[str, Any] = {"rel_l2": (num / den) ** 0.5, "top1_agreement": float(agree.mean())}
    if case.kind == "det":
        from benchmarks import ocr_det_cls as dc

        del s["top1_agreement"]  # argmax over a probability map's last axis means nothing
        s["box_f1"] = dc.box_f1(dc.page_boxes(ref), dc.page_boxes(outs))
    if case.labels is not None:
        pred = np.concatenate([o.argmax(-1) for o in outs])
        s["accuracy"] = float((pred == case.labels).mean())
    if case.charset is not None:
        from benchmarks import ocr

        hyps = [ocr.ctc_decode(row[None], case.charset) for o in outs for row in o]
        cers = np.array([ocr.cer(t, h) for t, h in zip(case.texts, hyps)])
        scripts = np.array(case.scripts)
        per = {sc: float(cers[scripts == sc].mean()) for sc in ocr.SCRIPTS}
        s.update(
            cer=float(np.mean(list(per.values()))),
            cer_latin=per["latin"],
            cer_cjk=per["cjk"],
            blank_lines=int(sum(not h.strip() for h in hyps)),
        )
    return s


def bench_model(
    case: Case,
    workdir: Path,
    modelopt: Path | None,
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> dict[str, Any]:
    ref = run_model(case.model_path, case.held_out)
    result: dict[str, Any] = {
        "model": case.model_path,
        "calibration_samples": case.samples,
        "fp32": score(case, ref, ref),
        "notes": case.notes,
        "rows": {},
    }
    log(f"[{case.name}] fp32 {result['fp32']}")
    for label, spec in contenders(case, workdir, modelopt, args):
        if args.only and not any(k in label for k in args.only.split(",")):
            continue
        measured = run_contender(spec, args.timeout, args.mem_cap_mb)
        row: dict[str, Any] = measured.summary()
        if measured.ok:
            try:
                row.update(score(case, run_model(spec[2], case.held_out), ref))
            except Exception as exc:  # a peer's model that ONNX Runtime cannot run
                row.update(status="error", error=f"inference failed: {exc!r}"[:500])
            info = dict(measured.value or {})
            row["info"] = {k: v for k, v in info.items() if k not in ("amax",)}
        result["rows"][label] = row
        log(f"[{case.name}] {label}: {_brief(row)}")
    _search_ratio(result, log, case.name)
    return result


def _search_ratio(result: dict[str, Any], log: Callable[[str], None], name: str) -> None:
    """Builder time with the search over builder time when whole-model int8 fits."""
    rows = result["rows"]
    mixed = next((r for k, r in rows.items() if "mixed precision" in k), None)
    whole = next((r for k, r in rows.items() if "whole-model fits" in k), None)
    if mixed and whole and mixed.get("wall_s") and whole.get("wall_s"):
        ratio = mixed["wall_s"] / whole["wall_s"]
        result["search_vs_whole"] = {
            "search_s": mixed["wall_s"], "whole_s": whole["wall_s"], "ratio": ratio,
        }
        log(f"[{name}] build with the search / build whose whole-model int8 fits: "
            f"{mixed['wall_s']:.1f} s / {whole['wall_s']:.1f} s = {ratio:.2f}x (goal <= 4x)")


def _brief(row: dict[str, Any]) -> str:
    keys = (
        "status",
        "wall_s",
        "peak_rss_mb",
        "rel_l2",
        "top1_agreement",
        "accuracy",
        "cer",
        "cer_latin",
        "cer_cjk",
        "box_f1",
        "error",
    )
    return ", ".join(f"{k}={_fmt(row[k])}" for k in keys if row.get(k) is not None)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).splitlines()[0][:160] if isinstance(v, str) else str(v)



def _pct(v: Any) -> str:
    return "" if v is None else f"{100 * v:.2f} %"


def task_metric(model: str, row: dict[str, Any]) -> str:
    """The model's task metric as issue 12 names it: CER for ocr, box F1 against FP32 for det,
    top-1 agreement with FP32 for cls (accuracy on the rotation label beside it), else accuracy.
    """
    if row.get("cer") is not None:
        return f"CER {_pct(row['cer'])}"
    if row.get("box_f1") is not None:
        return f"box F1 {_pct(row['box_f1'])}"
    if model == "cls" and row.get("top1_agreement") is not None:
        return (f"top-1 agreement {_pct(row['top1_agreement'])} "
                f"(accuracy {_pct(row.get('accuracy'))})")
    return "" if row.get("accuracy") is None else f"accuracy {_pct(row['accuracy'])}"


def markdown(results: dict[str, Any]) -> str:
    head = (
        "| model | quantizer | status | time (s) | peak RSS (MB) | rel L2 | task metric "
        "| top-1 agree | accuracy | box F1 | CER mean | CER Latin | CER CJK |"
    )
    lines = [head, "|" + "---|" * 13]
    pct = _pct

    for name, res in results["models"].items():
        rows = {"FP32": {**res["fp32"], "status": "reference"}, **res["rows"]}
        for label, r in rows.items():
            time_s = "" if r.get("wall_s") is None else f"{r['wall_s']:.1f}"
            rss = "" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:.0f}"
            l2 = "" if r.get("rel_l2") is None else f"{r['rel_l2']:.4f}"
            lines.append(
                f"| {name} | {label} | {r.get('status', '')} | {time_s} | {rss} | {l2} "
                f"| {task_metric(name, r)} "
                f"| {pct(r.get('top1_agreement'))} | {pct(r.get('accuracy'))} "
                f"| {pct(r.get('box_f1'))} "
                f"| {pct(r.get('cer'))} | {pct(r.get('cer_latin'))} | {pct(r.get('cer_cjk'))} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="demo,resnet13,ocr")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--samples", type=int, default=None, help="calibration samples per model")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON results here")
    parser.add_argument("--workdir", type=Path, default=None, help="keep quantized models here")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per quantizer")
    parser.add_argument("--mem-cap-mb", type=float, default=16000.0, help="RSS cap per quantizer")
    parser.add_argument("--no-modelopt", action="store_true")
    parser.add_argument("--no-micro", action="store_true", help="skip the micro-benchmarks")
    parser.add_argument(
        "--micro-only",
        choices=("all", "calibration"),
        default=None,
        help="run only the micro-benchmarks (all of them, or only the whole-calibration time "
        "against ONNX Runtime's MinMax pass), not the quantizer comparison",
    )
    parser.add_argument(
        "--micro-repeat",
        type=int,
        default=1,
        metavar="N",
        help="rounds of the calibration-time micro-benchmark (interleaved; medians reported)",
    )
    parser.add_argument("--only", default="", help="comma-separated substrings of quantizers")
    parser.add_argument(
        "--mixed",
        type=float,
        default=None,
        metavar="POINTS",
        help="also run the mixed-precision search with this budget, in "
        "percentage points of CER (OCR) or of top-1 disagreement",
    )
    parser.add_argument("--mixed-method", default="auto", choices=OURS_METHODS)
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, flush=True)

    started = time.perf_counter()
    modelopt = None if args.no_modelopt else peers.modelopt_python()
    log(f"modelopt: {modelopt or 'not available (see benchmarks/peers.py)'}")
    results: dict[str, Any] = {
        "argv": sys.argv[1:],
        "python": platform.python_version(),
        "machine": platform.machine(),
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        cases = []
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            case = make_case(name, workdir, args.quick, args.samples)
            cases.append(case)
            if args.micro_only is None:
                results["models"][name] = bench_model(case, workdir, modelopt, args, log)
        if not args.no_micro or args.micro_only:
            # imported here: the micro-benchmarks reuse this module's contenders
            from benchmarks._quant_micro import run_micro

            results["micro"] = run_micro(cases, workdir, args, log)
    results["total_s"] = time.perf_counter() - started
    if results["models"]:
        print("\n" + markdown(results))
    if "micro" in results:
        from benchmarks._quant_micro import micro_markdown

        print("\n" + micro_markdown(results["micro"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, default=_env.jsonable))
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
