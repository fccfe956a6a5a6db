"""The same INT8 graphs in both ONNX Runtime arithmetics, on this CPU and on an AVX2-only one.

For each model (PP-OCRv4 rec, det and cls from the ``rapidocr-onnxruntime`` wheel, and the demo
CNN), regiontrt compiles whole-model INT8 (default placement, ``auto`` ranges from the model's
calibration set) once; then the relative L2 error of its outputs against FP32 on held-out inputs
is measured with Q/DQ unfused (``tensorrt``: TensorRT's arithmetic) and with ONNX Runtime's
fused int8 kernels (``fused``). With ``--emulate``, the measurement is repeated on an emulated
AVX2-only CPU (``qemu-x86_64 -cpu Haswell``: no AVX-512, no VNNI), on the very same graphs.

Writes ``docs/results/bench_arithmetic.json`` (machine, CPU flags, load, versions, commit,
command) and regenerates the table in ``docs/int8.md`` and ``docs/benchmarks.md`` from it::

    python3 -m benchmarks.bench_arithmetic --emulate          # ~4 min on 2 cores
    python3 -m benchmarks.bench_arithmetic --table-only       # the table from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from benchmarks._env import environment, finish

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "docs" / "results" / "bench_arithmetic.json"
DOC = ROOT / "docs" / "int8.md"
#: The page that shows the table between these markers; docs/benchmarks.md shows the same table
#: through scripts/gen_benchmarks_md.py (its ``arithmetic`` table calls :func:`table`).
DOCS = (DOC,)
START, END = "<!-- arithmetic-table:start -->", "<!-- arithmetic-table:end -->"


def _inputs(name: str) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """(calibration batches, held-out batches) of one model."""
    from benchmarks import ocr
    from benchmarks import ocr_det_cls as dc
    from regiontrt import demo

    if name == "demo":
        data = demo.region_data("NA")
        return [{"input": data.calibration[:128]}], [{"input": data.validation[:128]}]
    if name == "det":
        pages = dc.render_pages(12, seed=5)
        return ([{"x": np.concatenate(pages[:6])}], [{"x": np.concatenate(pages[6:])}])
    if name == "cls":
        x, _ = dc.cls_lines(48, seed=5)
        return [{"x": x[:24]}], [{"x": x[24:]}]
    lines = ocr.render_lines("latin", 8, seed=5) + ocr.render_lines("cjk", 8, seed=6)
    batch = [ocr.preprocess(img, 480) for img, _ in lines]
    return [{"x": np.concatenate(batch[:8])}], [{"x": np.concatenate(batch[8:])}]


def _model_path(name: str) -> Path:
    from benchmarks import ocr
    from benchmarks import ocr_det_cls as dc
    from regiontrt import demo

    return {"demo": demo.model_path, "rec": ocr.rec_model_path,
            "det": lambda: dc.model_path(dc.DET_MODEL_NAME),
            "cls": lambda: dc.model_path(dc.CLS_MODEL_NAME)}[name]()


def compile_int8(name: str, out: Path) -> None:
    """Whole-model INT8 of one model, and its FP32 graph and held-out inputs, into ``out``."""
    from regiontrt.calibration import AutoCalibrator
    from regiontrt.data.sources import DataSource
    from regiontrt.graph.clean import clean
    from regiontrt.graph.io import input_specs, load_model, without_unsized_dims
    from regiontrt.graph.quantize import QDQ_MIN_OPSET, name_nodes, upgrade_opset
    from regiontrt.precision.policy import PrecisionPolicy
    from regiontrt.precision.types import Precision

    model = without_unsized_dims(load_model(_model_path(name)))
    base = upgrade_opset(name_nodes(clean(model)), QDQ_MIN_OPSET)
    policy = PrecisionPolicy()
    plan = policy.quantization_plan(base)
    calibration, held_out = _inputs(name)
    ranges = AutoCalibrator().calibrate(base, DataSource(calibration, input_specs(base)),
                                        plan.activations)
    int8 = policy.compile(base, Precision.INT8, amax=dict(ranges.amax))
    onnx.save(base, str(out / f"{name}.fp32.onnx"))
    onnx.save(int8, str(out / f"{name}.int8.onnx"))
    np.savez(out / f"{name}.npz", **held_out[0])


def measure(folder: Path, names: list[str]) -> dict[str, Any]:
    """Relative L2 of each int8 graph against FP32, in both arithmetics, on this CPU."""
    from regiontrt.graph.arithmetic import int8_cpu_features
    from regiontrt.graph.check import run_onnx

    rows = {}
    for name in names:
        feeds = dict(np.load(folder / f"{name}.npz"))
        ref = run_onnx((folder / f"{name}.fp32.onnx").read_bytes(), [feeds])[0]
        row = {}
        for arithmetic in ("tensorrt", "fused"):
            got = run_onnx((folder / f"{name}.int8.onnx").read_bytes(), [feeds],
                           arithmetic=arithmetic)[0]
            num = sum(float(np.sum((got[k].astype(np.float64) - ref[k]) ** 2)) for k in ref)
            den = sum(float(np.sum(ref[k].astype(np.float64) ** 2)) for k in ref)
            row[arithmetic] = float(np.sqrt(num / den))
        rows[name] = row
    return {"cpu": int8_cpu_features(), "rows": rows}


def _machine() -> dict[str, Any]:
    import onnxruntime

    from regiontrt.graph.arithmetic import int8_cpu_features

    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    return {"cpu_model": model, "cores": os.cpu_count(), "int8_cpu": int8_cpu_features(),
            "python": platform.python_version(), "numpy": np.__version__,
            "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "platform": platform.platform(), "commit": commit}


def table(result: dict[str, Any]) -> str:
    """The markdown table of a result (what ``docs/int8.md`` shows between its markers)."""
    runs = result["runs"]
    head = ["model"] + [f"{r['label']}: {a}" for r in runs for a in ("tensorrt", "fused")]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name in result["models"]:
        cells = [f"{r['rows'][name][a]:.4f}" for r in runs for a in ("tensorrt", "fused")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cpus = "; ".join(f"{r['label']}: {', '.join(r['cpu']['flags']) or 'none'}" for r in runs)
    machine = result["machine"]
    lines += ["", f"Relative L2 error against FP32; int8 CPU flags seen by ONNX Runtime: {cpus}. "
              f"From `{RESULT.relative_to(ROOT)}` ({result['date']}, {machine['cpu_model']}, "
              f"ONNX Runtime {machine['onnxruntime']})."]
    return "\n".join(lines)


def write_table(result: dict[str, Any]) -> None:
    for doc in DOCS:
        text = doc.read_text()
        a, b = text.index(START) + len(START), text.index(END)
        doc.write_text(text[:a] + "\n" + table(result) + "\n" + text[b:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="rec,det,cls,demo")
    parser.add_argument("--emulate", action="store_true",
                        help="also measure on qemu-x86_64 -cpu Haswell (AVX2 only)")
    parser.add_argument("--measure-only", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    names = args.models.split(",")
    if args.measure_only:  # the child process, on the (emulated) CPU
        print(json.dumps(measure(args.measure_only, names)))
        return
    if args.table_only:
        write_table(json.loads(RESULT.read_text()))
        return
    env = environment()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in names:
            compile_int8(name, folder)
        runs = [{"label": "native", **measure(folder, names)}]
        qemu = shutil.which("qemu-x86_64")
        if args.emulate and qemu:
            started = time.time()
            child = subprocess.run(
                [qemu, "-cpu", "Haswell", str(Path(sys.executable).resolve()), "-m",
                 "benchmarks.bench_arithmetic", "--models", args.models, "--measure-only",
                 str(folder)], cwd=ROOT, capture_output=True, text=True, check=True)
            measured = json.loads(child.stdout.splitlines()[-1])
            runs.append({"label": "Haswell (emulated)", **measured,
                         "seconds": round(time.time() - started, 1)})
    result = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
              "machine": _machine(), "load_before": load_before, "load_after": os.getloadavg(),
              "models": names, "runs": runs, "environment": finish(env)}
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    write_table(result)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_benchmarks_md.py")], check=True)
    print(table(result))


if __name__ == "__main__":
    main()
