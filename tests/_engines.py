"""Real engines for the report, plot and docs tests, built once per session from the demo model."""

from __future__ import annotations

from pathlib import Path

import regiontrt as rt
from regiontrt import demo
from regiontrt.data.sources import split_batches

PROFILE = {"input": [(1, 1, 8, 8), (32, 1, 8, 8), (64, 1, 8, 8)]}

#: int8, then fp16, are rejected under this budget; the int8 mixed-precision search runs first.
STRICT = rt.Region("STRICT", precisions=("int8", "fp16", "fp32"), budget=1e-6,
                   metric="relative_l2", latency_p99_ms=50.0, description="<b>strict</b> & co")


def batches(array):
    return split_batches({"input": array}, 64)


def build_engines(out: Path) -> list[Path]:
    """NA (int8 accepted), EU (fp16, int8 forbidden) and STRICT (fp32 after two rejections)."""
    out.mkdir(parents=True, exist_ok=True)
    base = rt.RegionalEngineBuilder.from_onnx(demo.model_path()).with_shape_profile(PROFILE)
    paths = []
    for name, region in (("NA", "NA"), ("EU", "EU"), ("STRICT", STRICT)):
        data = demo.region_data(name if name != "STRICT" else "SEA")
        builder = base.for_region(region).with_validation(batches(data.validation))
        if name != "EU":
            builder = builder.with_calibrator("entropy", data=batches(data.calibration))
        path = out / f"digits.{name}.engine"
        builder.build(path)
        paths.append(path)
    return paths
