"""The zoo benchmark: regiontrt's INT8 against ONNX Runtime's and ModelOpt's, per zoo model.

For each model of :mod:`benchmarks.zoo`: the FP32 outputs on the evaluation samples; ours (the
default builder with the ``auto`` calibrator forced to INT8, also with ``entropy`` and
``percentile``, and with the first and last layers quantized too) and the coverage/accuracy
frontier its mixed-precision search walks; peers (ONNX Runtime ``quantize_static`` MinMax,
Percentile, Entropy; ModelOpt ONNX PTQ entropy and max), each with its documented defaults and
with exactly the layers ours keeps in float excluded. Every candidate is scored in both ONNX
Runtime arithmetics (``tensorrt``: Q/DQ as float fake-quant, what TensorRT computes; the
headline; ``fused``: ONNX Runtime's int8 kernels on this CPU), with its int8 coverage (layers,
FLOPs, quantized tensors). Ours is compared with each peer at equal or higher coverage, with
paired bootstrap intervals. See docs/zoo-bench.md. ::

    python -m benchmarks.bench_zoo --quick --models ppocr-rec
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from benchmarks import _env, _measure, peers
from benchmarks.zoo.base import Feeds, Outputs, ZooAssetError, ZooModel
from benchmarks.zoo_coverage import int8_coverage
from benchmarks.zoo_report import compare_all, markdown

ARITHMETICS = ("tensorrt", "fused")
HEADLINE = "tensorrt"
OURS_METHODS = ("auto", "entropy", "percentile")
PEER_VARIANTS = ("default", "our exclusions")
MODELOPT_SKIP = "ModelOpt not installed here (see benchmarks/peers.py: REGIONTRT_MODELOPT_PYTHON)"
Log = Callable[[str], None]


def run_onnx(path: str, feeds: Sequence[Feeds], arithmetic: str = HEADLINE) -> list[Outputs]:
    """Each sample's outputs, evaluated in ``arithmetic`` (regiontrt's session options)."""
    import onnxruntime as ort

    from regiontrt.graph.arithmetic import session_options

    sess = ort.InferenceSession(path, session_options(arithmetic),
                                providers=["CPUExecutionProvider"])
    # A model with a pinned input folded in (ours, or a peer given ours' pinned model) no
    # longer takes it; the feeds hold it at the pinned value, which the data is constant at.
    names = {i.name for i in sess.get_inputs()}
    return [[np.asarray(o) for o in sess.run(None, {k: v for k, v in f.items() if k in names})]
            for f in feeds]


def named_copy(model_path: Path, out: Path) -> str:
    """The model with every node named and its ``Constant`` weights as initializers: the one
    input all quantizers get, so node names (and so exclusions and placements) mean the same
    thing in every tool's output, and no tool loses per-channel weights to the exporter's
    ``Constant`` nodes (:func:`benchmarks.peers.weights_as_initializers`)."""
    from regiontrt.graph.quantize import name_nodes

    model = peers.weights_as_initializers(name_nodes(onnx.load(str(model_path))))
    onnx.save(model, str(out))
    return str(out)


def _peer_specs(model: str, npz: str, workdir: Path, exclude: list[str], modelopt: Path | None,
                name: str, pinned: str = "", ort_methods: Sequence[str] = peers.ORT_METHODS,
                variants: Sequence[str] = PEER_VARIANTS) -> list[dict[str, Any]]:
    """Every peer quantizer on ``model``: defaults, and with our float layers excluded (those of
    ``variants``); ``pinned`` (a variant prefix) says ``model`` is ours' pinned model."""
    specs = []
    for base, excl in (("default", ()), ("our exclusions", tuple(exclude))):
        if base not in variants:
            continue
        variant = pinned + base
        tag = ("pin_" if pinned else "") + ("excl" if excl else "default")
        for meth in ort_methods:
            out = str(workdir / f"{name}_ort_{meth}_{tag}.onnx")
            specs.append({"tool": "onnxruntime", "method": meth, "variant": variant, "path": out,
                          "fn": peers.ort_quantize, "args": (model, npz, out, meth),
                          "kwargs": {"exclude": excl}})
        for meth in peers.MODELOPT_METHODS:
            out = str(workdir / f"{name}_modelopt_{meth}_{tag}.onnx")
            argv = None if modelopt is None else peers.modelopt_command(
                modelopt, model, npz, out, meth, exclude=excl)
            specs.append({"tool": "modelopt", "method": meth, "variant": variant, "path": out,
                          "argv": argv})
    return specs


def _pinned_peer_specs(ours: dict[str, Any] | None, model: str, cal: list[Feeds],
                       workdir: Path, exclude: list[str], modelopt: Path | None,
                       name: str, **choice: Any) -> list[dict[str, Any]]:
    """Where ours pinned inputs (folding the If they decide), the peers on that same folded
    model and data, so they can reach the branch's layers too: set up as well as ours."""
    pinned = ((ours or {}).get("info") or {}).get("pinned_inputs") or {}
    if not pinned:
        return []
    from regiontrt.graph.pin import fold_pinned_inputs

    folded = str(workdir / f"{name}_fp32_pinned.onnx")
    onnx.save(fold_pinned_inputs(onnx.load(model), pinned), folded)
    data = [{k: v for k, v in f.items() if k not in pinned} for f in cal]
    npz = str(peers.save_batches(data, workdir / f"{name}_cal_pinned.npz"))
    label = "pinned as ours (" + ", ".join(f"{k}={v}" for k, v in pinned.items()) + "), "
    return _peer_specs(folded, npz, workdir, exclude, modelopt, name, pinned=label, **choice)


def run_peer(spec: dict[str, Any], timeout_s: float, mem_mb: float,
             skipped: str | None = None) -> dict[str, Any]:
    """One peer quantizer in its own process; its row (status, seconds after imports, info)."""
    row = {k: spec[k] for k in ("tool", "method", "variant")}
    if spec["tool"] == "modelopt" and spec.get("argv") is None:
        return {**row, "status": "skipped", "error": skipped or MODELOPT_SKIP}
    if "argv" in spec:
        m = _measure.run_command_measured(spec["argv"], timeout_s=timeout_s, mem_limit_mb=mem_mb)
    else:
        m = _measure.run_measured(spec["fn"], *spec["args"], timeout_s=timeout_s,
                                  mem_limit_mb=mem_mb, **spec["kwargs"])
    info = dict(m.value or {})
    return {**row, "status": m.status, "seconds": info.pop("seconds", None),
            "peak_rss_mb": m.peak_rss_mb, "info": info, "error": m.error,
            "path": spec["path"] if m.ok else None}


def _ours_rows(zoo: ZooModel, model: str, cal: list[Feeds], workdir: Path, args: Any,
               log: Log) -> list[dict[str, Any]]:
    from benchmarks.zoo_ours import ours_frontier, ours_int8

    rows = []
    wanted = getattr(args, "ours", None) or [*OURS_METHODS, "all"]
    variants = [(m, False) for m in OURS_METHODS if m in wanted]
    variants += [("auto", True)] if "all" in wanted else []
    for meth, all_layers in variants:
        row: dict[str, Any] = {"tool": "regiontrt", "method": meth,
                               "variant": "first+last layers too" if all_layers else "default"}
        out = str(workdir / f"{zoo.name}_ours_{meth}{'_all' if all_layers else ''}.onnx")
        try:
            info = ours_int8(model, zoo, cal, out, meth, all_layers=all_layers)
            rows.append({**row, "status": "ok", "seconds": info.pop("seconds"), "info": info,
                         "path": out})
        except Exception as exc:  # recorded, the run goes on
            rows.append({**row, "status": "error", "error": repr(exc)[:1000]})
        log(f"[{zoo.name}] regiontrt {meth} {row['variant']}: {rows[-1]['status']}")
    if args.no_frontier:
        return rows
    try:
        walk = ours_frontier(model, zoo, cal, str(workdir), "auto", args.frontier_budget)
    except Exception as exc:
        return [*rows, {"tool": "regiontrt", "method": "auto", "variant": "frontier",
                        "status": "error", "error": repr(exc)[:1000]}]
    for i, point in enumerate(walk["points"]):
        rows.append({"tool": "regiontrt", "method": "auto",
                     "variant": f"frontier #{i} ({len(point['kept'])} kept, {point['data']})",
                     "status": "ok" if point["path"] else "error", "seconds": None,
                     "path": point["path"], "info": {k: v for k, v in point.items()
                                                     if k != "path"}, "frontier": True})
    log(f"[{zoo.name}] frontier: {len(walk['points'])} points in {walk['seconds']:.1f} s")
    return rows


def score_row(zoo: ZooModel, row: dict[str, Any], feeds: list[Feeds],
              refs: dict[str, list[Outputs]]) -> dict[str, np.ndarray]:
    """Coverage and metric of one candidate in both arithmetics; its per-sample stats."""
    stats: dict[str, np.ndarray] = {}
    if row.get("status") != "ok" or not row.get("path"):
        return stats
    try:
        row["coverage"] = int8_coverage(onnx.load(row["path"]), feeds[0]).to_dict()
        row["metric"] = {}
        for arith in ARITHMETICS:
            stats[arith] = zoo.score(refs[arith], run_onnx(row["path"], feeds, arith))
            row["metric"][arith] = zoo.aggregate(stats[arith])
    except Exception as exc:  # a model ONNX Runtime cannot run
        row.update(status="error", error=f"scoring failed: {exc!r}"[:1000])
    return stats


def bench_model(zoo: ZooModel, workdir: Path, args: Any, modelopt: Path | None,
                log: Log) -> dict[str, Any]:
    """Every candidate of one zoo model, scored; comparisons included."""
    n_cal, n_eval = (8, 16) if args.quick else (args.calibration, args.evaluation)
    split = zoo.data(n_cal, n_eval, seed=args.seed)
    model = named_copy(zoo.model_path(), workdir / f"{zoo.name}_fp32.onnx")
    npz = str(peers.save_batches(split.calibration, workdir / f"{zoo.name}_cal.npz"))
    fp32 = run_onnx(model, split.evaluation, HEADLINE)  # no Q/DQ: both arithmetics agree
    refs = dict.fromkeys(ARITHMETICS, fp32)
    rows = _ours_rows(zoo, model, split.calibration, workdir, args, log)
    ours_default = next((r for r in rows if r["variant"] == "default" and r["status"] == "ok"
                         and r["method"] == "auto"), None)
    stats: dict[int, dict[str, np.ndarray]] = {}
    exclude: list[str] = []
    if ours_default is not None:  # scored first: the peers' exclusions are its float layers
        stats[id(ours_default)] = score_row(zoo, ours_default, split.evaluation, refs)
        exclude = list(ours_default.get("coverage", {}).get("float_layer_names", []))
    ort_methods = getattr(args, "ort_methods", None) or peers.ORT_METHODS
    variants = getattr(args, "peer_variants", None) or PEER_VARIANTS
    specs = _peer_specs(model, npz, workdir, exclude, modelopt, zoo.name,
                        ort_methods=ort_methods, variants=variants)
    specs += _pinned_peer_specs(ours_default, model, split.calibration, workdir, exclude,
                                modelopt, zoo.name, ort_methods=ort_methods, variants=variants)
    for spec in specs:
        rows.append(run_peer(spec, args.timeout, args.mem_cap_mb,
                             "--no-modelopt" if args.no_modelopt else None))
        log(f"[{zoo.name}] {spec['tool']} {spec['method']} {spec['variant']}: "
            f"{rows[-1]['status']}")
    for row in rows:
        if id(row) not in stats:
            stats[id(row)] = score_row(zoo, row, split.evaluation, refs)
    return {
        "zoo": {"name": zoo.name, "family": zoo.family, "metric": zoo.metric,
                "higher_is_better": zoo.higher_is_better, "model": str(zoo.model_path())},
        "samples": {"calibration": len(split.calibration), "evaluation": len(split.evaluation)},
        "fp32_metric": zoo.aggregate(zoo.score(fp32, fp32)),
        "our_exclusions": exclude,
        "rows": rows,
        "comparisons": compare_all(zoo, rows, [stats[id(r)] for r in rows], HEADLINE),
    }


def run(zoos: Sequence[ZooModel], args: Any, log: Log = print,
        checkpoint: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The whole benchmark over ``zoos``: the result dict (environment embedded).

    A model whose assets are missing here (:class:`ZooAssetError`) is listed under
    ``skipped_models`` and the run goes on; ``checkpoint`` gets the result after each model, so
    a run cut short keeps what it measured."""
    env = _env.environment(getattr(args, "argv", None))
    modelopt = None if args.no_modelopt else peers.modelopt_python()
    result: dict[str, Any] = {
        "headline_arithmetic": HEADLINE,
        "arithmetics": {"tensorrt": "Q/DQ unfused (session.disable_quant_qdq=1): float "
                                    "fake-quant, the arithmetic TensorRT performs",
                        "fused": "ONNX Runtime's int8 kernels on this CPU"},
        "modelopt": str(modelopt) if modelopt else None,
        "modelopt_version": _modelopt_version(modelopt),
        "modelopt_skipped": None if modelopt else ("--no-modelopt" if args.no_modelopt
                                                    else MODELOPT_SKIP),
        "models": {},
        "skipped_models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for zoo in zoos:
            started = time.perf_counter()
            try:
                result["models"][zoo.name] = bench_model(zoo, workdir, args, modelopt, log)
            except ZooAssetError as exc:
                log(f"[{zoo.name}] skipped: {exc}")
                result["skipped_models"][zoo.name] = str(exc)
                continue
            result["models"][zoo.name]["seconds"] = time.perf_counter() - started
            if checkpoint is not None:
                checkpoint(result)
    result["environment"] = _env.finish(env)
    return result


def _modelopt_version(python: Path | None) -> str | None:
    """ModelOpt's version in its own environment (``_env`` sees only this interpreter's)."""
    import subprocess

    if python is None:
        return None
    run = subprocess.run([str(python), "-c", "import modelopt; print(modelopt.__version__)"],
                         capture_output=True, text=True, timeout=300, check=False)
    return run.stdout.strip() or None


def _choices(known: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated subset of ``known``."""
    def parse(text: str) -> list[str]:
        picked = [t.strip() for t in text.split(",") if t.strip()]
        unknown = sorted(set(picked) - set(known))
        if unknown or not picked:
            raise argparse.ArgumentTypeError(f"pick from {list(known)}, got {text!r}")
        return picked
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="",
                   help="comma-separated zoo names, or 'fast' (default: all)")
    p.add_argument("--quick", action="store_true", help="8 calibration, 16 evaluation samples")
    p.add_argument("--calibration", type=int, default=64, help="calibration samples")
    p.add_argument("--evaluation", type=int, default=200, help="evaluation samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("docs/results/bench_zoo.json"))
    p.add_argument("--workdir", type=Path, default=None, help="keep the quantized models here")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per peer quantizer")
    p.add_argument("--mem-cap-mb", type=float, default=16000.0)
    p.add_argument("--no-modelopt", action="store_true")
    p.add_argument("--ours", type=_choices((*OURS_METHODS, "all")), default=None,
                   help="comma-separated regiontrt rows: auto, entropy, percentile, all (auto "
                        "with first and last layers quantized); default: every one")
    p.add_argument("--ort-methods", type=_choices(peers.ORT_METHODS), default=None,
                   help="comma-separated ONNX Runtime calibrators (default: all three)")
    p.add_argument("--peer-variants", type=_choices(PEER_VARIANTS), default=None,
                   help="comma-separated peer variants: 'default', 'our exclusions' "
                        "(default: both)")
    p.add_argument("--no-frontier", action="store_true", help="skip the search's frontier")
    p.add_argument("--frontier-budget", type=float, default=0.0,
                   help="the search's budget, in the task metric's loss (0: match FP32)")
    return p


def main(argv: list[str] | None = None) -> int:
    from benchmarks.zoo import FAST, zoo

    args = parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    every = zoo()
    names = list(FAST) if args.models == "fast" else (
        [m.strip() for m in args.models.split(",") if m.strip()] or list(every))
    unknown = sorted(set(names) - set(every))
    if unknown:
        raise SystemExit(f"unknown zoo models {unknown}; known: {sorted(every)}")
    zoos = [every[n] for n in names]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    progress = args.out.with_name(args.out.stem + ".progress")

    def write(path: Path, data: dict[str, Any]) -> None:
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(json.dumps(data, indent=1, default=_env.jsonable))
        tmp.replace(path)

    result = run(zoos, args, lambda m: print(m, flush=True), lambda r: write(progress, r))
    print("\n" + markdown(result))
    write(args.out, result)
    progress.unlink(missing_ok=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
