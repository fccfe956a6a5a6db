"""Run as a script (natively, and under ``qemu-x86_64 -cpu Haswell`` by test_int8_arithmetic.py):
prints, as JSON, what int8 checks give on this CPU in both arithmetics.

* ``numerics``: relative L2 error against FP32 of a quantized MatMul model (the case whose fused
  u8 x s8 products saturate without VNNI) in TensorRT's arithmetic and in the fused kernels;
* ``build``: the NA decision (precision, loss, per-output losses) of the demo model, built
  twice: checked in TensorRT's arithmetic (the default) and on the fused kernels.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from test_quantize_models import (
    ALL_LAYERS,
    feeds_for,
    opset11_model,
    quantize_with_real_amax,
    rel_l2,
    run,
)

import regiontrt as rt
from regiontrt import demo
from regiontrt.data.sources import split_batches
from regiontrt.graph.arithmetic import int8_cpu_features


def numerics() -> dict[str, float]:
    model = opset11_model()
    _, quantized = quantize_with_real_amax(model, ALL_LAYERS)
    test = feeds_for(model, 200, 16)
    reference = run(model, test)
    out = {}
    for arithmetic in ("tensorrt", "fused"):
        got = run(quantized, test, arithmetic=arithmetic)
        out[arithmetic] = max(rel_l2(got[n], reference[n]) for n in reference)
    return out


def build(arithmetic: str) -> dict[str, object]:
    data = demo.region_data("NA")
    engine = (rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region("NA")
              .with_precision(["int8", "fp32"])
              .with_calibrator("entropy", data=split_batches({"input": data.calibration}, 64))
              .with_validation(split_batches({"input": data.validation[:256]}, 64))
              .with_int8_arithmetic(arithmetic)
              .build())
    trial = engine.report.trials[0]
    return {"precision": engine.precision, "int8_loss": trial.loss,
            "output_losses": dict(trial.output_losses),
            "kept": list(trial.kept_high_precision),
            "evaluation": engine.metadata["evaluation"]}


def main() -> None:
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    np.random.seed(0)
    print(json.dumps({
        "cpu": int8_cpu_features(),
        "numerics": numerics(),
        "build": {a: build(a) for a in ("tensorrt", "fused")},
    }))


if __name__ == "__main__":
    main()
