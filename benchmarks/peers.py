"""Peer INT8 quantizers: ONNX Runtime's ``quantize_static`` and NVIDIA ModelOpt's ONNX quantizer.

Each peer reads the same calibration batches (an NPZ file, one batch at a time) and writes a Q/DQ
model to a file; :func:`benchmarks._measure.run_measured` runs it in a child process so its wall
time and peak memory are its own.

ModelOpt's install is several GB (PyTorch, CUDA wheels), so it lives in its own virtual
environment (default ``/work/venvs/modelopt``, override with ``REGIONTRT_MODELOPT_PYTHON``) and is
run through that interpreter with this file as the script (``python peers.py modelopt ...``). This
module therefore imports nothing from ``regiontrt`` at the top level.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    from benchmarks._peer_models import (
        fuse_layernorm,
        has_conv,
        private_copy,
        resolve_exclusions,
        scratch_cwd,
        upgrade_opset,
        weights_as_initializers,
    )
except ModuleNotFoundError:  # run as a script in ModelOpt's environment: the sibling module
    from _peer_models import (  # type: ignore[no-redef]
        fuse_layernorm,
        has_conv,
        private_copy,
        resolve_exclusions,
        scratch_cwd,
        upgrade_opset,
        weights_as_initializers,
    )

__all__ = ["MODELOPT_METHODS", "ORT_METHODS", "NpzBatches", "fuse_layernorm", "has_conv",
           "modelopt_command", "modelopt_python", "ort_quantize", "private_copy",
           "resolve_exclusions", "save_batches", "scratch_cwd", "upgrade_opset",
           "weights_as_initializers"]

ORT_METHODS = ("MinMax", "Entropy", "Percentile")
MODELOPT_METHODS = ("entropy", "max")
MODELOPT_VENV_PYTHON = Path("/work/venvs/modelopt/bin/python")
MODELOPT_VENV_FALLBACKS = (Path("/work/modelopt-venv/bin/python"),)
_SEP = "__"


# --- calibration batches on disk -------------------------------------------------------------


def save_batches(batches: Sequence[Mapping[str, np.ndarray]], path: str | Path) -> Path:
    """Write ``{input: array}`` batches to one NPZ (keys ``b<index>__<input>``)."""
    path = Path(path)
    arrays = {
        f"b{i:06d}{_SEP}{name}": np.asarray(arr)
        for i, batch in enumerate(batches)
        for name, arr in batch.items()
    }
    tmp = path.with_name(path.name + ".part.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stub types allow_pickle only
    os.replace(tmp, path)
    return path


class NpzBatches:
    """Re-iterable batches read lazily, one at a time, from a :func:`save_batches` file.

    Args:
        path: the NPZ file.
        limit: read at most this many batches.
    """

    def __init__(self, path: str | Path, limit: int | None = None) -> None:
        self.path = Path(path)
        with np.load(self.path) as z:
            keys = sorted(z.files)
        self._index: dict[str, list[tuple[str, str]]] = {}
        for key in keys:
            batch, name = key.split(_SEP, 1)
            self._index.setdefault(batch, []).append((key, name))
        self._order = sorted(self._index)[:limit]

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        with np.load(self.path) as z:
            for batch in self._order:
                yield {name: z[key] for key, name in self._index[batch]}

    def __call__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self)

    def num_samples(self) -> int:
        return sum(int(next(iter(b.values())).shape[0]) for b in self)


def _ort_reader(batches: NpzBatches) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(batches)

        def get_first(self) -> dict[str, np.ndarray]:
            # ModelOpt runs one batch ahead of calibration to learn the output shapes.
            return next(iter(batches))

    return Reader()


# --- ONNX Runtime ------------------------------------------------------------------------------


def ort_preprocess(model_path: str, out_path: str) -> str:
    """ONNX Runtime's recommended ``quant_pre_process``; the input path itself if it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(model_path, out_path, skip_symbolic_shape=False)
        return out_path
    except Exception:
        try:  # symbolic shape inference fails on some dynamic graphs; ONNX's is enough here
            quant_pre_process(model_path, out_path, skip_symbolic_shape=True)
            return out_path
        except Exception:
            return model_path


def ort_quantize(
    model_path: str,
    data_path: str,
    out_path: str,
    method: str,
    preprocess: bool = True,
    max_batches: int | None = None,
    exclude: Sequence[str] = (),
    per_channel: bool | None = None,
) -> dict[str, Any]:
    """ONNX Runtime ``quantize_static`` as its documentation recommends for a TensorRT target.

    QDQ format, signed INT8, symmetric activations and weights (TensorRT takes zero points of 0
    only), ``quant_pre_process`` first, per-channel weights for CNNs (``per_channel=None``: on
    when the model holds a Conv). The timer starts after the imports: ``seconds`` covers load,
    opset upgrade, pre-processing, calibration and writing the Q/DQ model, as for ours.

    Args:
        model_path: FP32 model.
        data_path: calibration batches (:func:`save_batches`).
        out_path: where the Q/DQ model goes.
        method: "MinMax", "Entropy" or "Percentile" (ONNX Runtime's defaults otherwise).
        preprocess: run ``quant_pre_process`` first, as ONNX Runtime recommends.
        max_batches: calibrate on the first batches only.
        exclude: node names kept in float (``nodes_to_exclude``), e.g. the layers ours keeps.
        per_channel: per-channel weight scales (``None``: ONNX Runtime's CNN guidance).

    Returns:
        notes: timing, the options, the exclusions found and missed, calibration samples.
    """
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from benchmarks._measure import proc_status_mb

    if method not in ORT_METHODS:
        raise ValueError(f"method must be one of {ORT_METHODS}, got {method!r}")
    rss = proc_status_mb("self", "VmRSS")
    start = time.perf_counter()
    model_path, out_path = str(Path(model_path).resolve()), str(Path(out_path).resolve())
    batches = NpzBatches(Path(data_path).resolve(), max_batches)
    per_channel = has_conv(model_path) if per_channel is None else per_channel
    with tempfile.TemporaryDirectory() as tmp, scratch_cwd(tmp):
        # Per-channel Q/DQ needs opset 13; ONNX Runtime's own upgrade misses models that
        # quant_pre_process rewrote (it then writes an invalid opset-12 model), so do it first.
        src = upgrade_opset(private_copy(model_path, tmp), str(Path(tmp) / "opset13.onnx"), 13)
        if preprocess:
            src = ort_preprocess(src, str(Path(tmp) / "pre.onnx"))
        found, missing = resolve_exclusions(src, exclude)
        quantize_static(
            src,
            out_path,
            _ort_reader(batches),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, method),
            nodes_to_exclude=found or None,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    return {
        "seconds": time.perf_counter() - start,
        "rss_after_imports_mb": rss,
        "onnxruntime": ort.__version__,
        "preprocessed": preprocess,
        "per_channel": per_channel,
        "excluded": found,
        "exclusions_not_found": missing,
        "batches": len(batches),
        "samples": batches.num_samples(),
    }


def ort_entropy_search(histogram: tuple[np.ndarray, np.ndarray, Any, Any]) -> Any:
    """ONNX Runtime's entropy threshold search alone (``HistogramCollector``'s, 128 levels)."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    collector = HistogramCollector("entropy", True, histogram[0].size, 128, 99.999, "same")
    return collector.get_entropy_threshold(histogram, 128)


# --- NVIDIA ModelOpt (in its own virtual environment) ------------------------------------------


def modelopt_python() -> Path | None:
    """The interpreter of the ModelOpt environment if it exists and imports ModelOpt's ONNX part."""
    import subprocess

    path = Path(os.environ.get("REGIONTRT_MODELOPT_PYTHON", MODELOPT_VENV_PYTHON))
    if "REGIONTRT_MODELOPT_PYTHON" not in os.environ and not path.is_file():
        path = next((p for p in MODELOPT_VENV_FALLBACKS if p.is_file()), path)
    if not path.is_file():
        return None
    probe = subprocess.run(
        [str(path), "-c", "import modelopt.onnx.quantization"], capture_output=True, timeout=300
    )
    return path if probe.returncode == 0 else None


def modelopt_command(
    python: Path,
    model_path: str,
    data_path: str,
    out_path: str,
    method: str,
    *,
    prepare: bool = False,
    max_batches: int | None = None,
    exclude: Sequence[str] = (),
) -> list[str]:
    """Command line running :func:`_modelopt_main` in the ModelOpt environment.

    ``exclude``: node names kept in float (ModelOpt's ``nodes_to_exclude``, given as anchored,
    escaped patterns since ModelOpt reads them as regular expressions).
    """
    argv = [str(python), str(Path(__file__).resolve()), "modelopt", model_path, data_path,
            out_path, method]
    if prepare:
        argv.append("--prepare")
    if max_batches is not None:
        argv += ["--max-batches", str(max_batches)]
    for name in exclude:
        argv += ["--exclude", name]
    return argv


def _modelopt_main(args: argparse.Namespace) -> None:
    """Child side: quantize with ModelOpt on the CPU and print the measured result line.

    The timer starts after ``import modelopt`` (as ONNX Runtime's after ``import onnxruntime``).
    """
    import importlib.util
    import re

    # The sibling module by path: this environment has neither regiontrt nor benchmarks.
    spec = importlib.util.spec_from_file_location(
        "_regiontrt_bench_measure", Path(__file__).resolve().parent / "_measure.py"
    )
    assert spec is not None and spec.loader is not None
    _measure: Any = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = _measure  # its dataclasses look the module up while being built
    spec.loader.exec_module(_measure)
    from modelopt.onnx.quantization import quantize

    base = _measure.proc_status_mb("self", "VmRSS")
    start = time.perf_counter()
    try:
        out = str(Path(args.out).resolve())
        batches = NpzBatches(Path(args.data).resolve(), args.max_batches)
        with tempfile.TemporaryDirectory() as tmp, scratch_cwd(tmp):
            # ModelOpt saves its shape-inferred model over the input file: give it a copy.
            src = private_copy(str(Path(args.model).resolve()), tmp)
            if args.prepare:
                # What rescues ModelOpt on PP-OCR: opset 17 and LayerNorm fusion first (else it
                # puts Q/DQ inside the decomposed LayerNorms and the model outputs blanks).
                src = fuse_layernorm(src, str(Path(tmp) / "fused.onnx"))
            found, missing = resolve_exclusions(src, args.exclude)
            quantize(
                src,
                quantize_mode="int8",
                calibration_method=args.method,
                calibration_data_reader=_ort_reader(batches),
                calibration_eps=["cpu"],
                high_precision_dtype="fp32",
                nodes_to_exclude=[re.escape(n) + "$" for n in found] or None,
                output_path=out,
                log_level="WARNING",
            )
        seconds = time.perf_counter() - start
        _measure.report("ok", seconds, base, {
            "seconds": seconds, "rss_after_imports_mb": base, "batches": len(batches),
            "prepared": args.prepare, "excluded": found, "exclusions_not_found": missing})
    except Exception as exc:
        _measure.report("error", time.perf_counter() - start, base, None, repr(exc)[:2000])


def main(argv: Sequence[str] | None = None) -> None:
    """``python peers.py modelopt MODEL DATA OUT METHOD [--prepare] [--max-batches N]``."""
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="peer", required=True)
    mo = sub.add_parser("modelopt")
    mo.add_argument("model")
    mo.add_argument("data")
    mo.add_argument("out")
    mo.add_argument("method", choices=MODELOPT_METHODS)
    mo.add_argument("--prepare", action="store_true")
    mo.add_argument("--max-batches", type=int, default=None)
    mo.add_argument("--exclude", action="append", default=[], help="node kept in float")
    args = parser.parse_args(argv)
    handlers: dict[str, Callable[[argparse.Namespace], None]] = {"modelopt": _modelopt_main}
    handlers[args.peer](args)


if __name__ == "__main__":
    main()
