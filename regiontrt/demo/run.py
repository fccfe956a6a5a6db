"""``regiontrt demo``: one engine per preset region from the shipped model and region data."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from regiontrt._text import format_table
from regiontrt.build.builder import RegionalEngineBuilder
from regiontrt.data.sources import split_batches
from regiontrt.demo import REGIONS, _region_name, model_path, region_data
from regiontrt.precision.regions import get_region
from regiontrt.precision.types import Precision

log = logging.getLogger("regiontrt.demo")

PROFILE = {"input": [(1, 1, 8, 8), (32, 1, 8, 8), (64, 1, 8, 8)]}
BATCH = 64


@dataclass(frozen=True)
class DemoRow:
    """One region's outcome."""

    region: str
    precision: str
    loss: float | None
    budget: float
    metric: str
    kept: int
    accuracy: float
    p50_ms: float
    p99_ms: float
    seconds: float
    path: Path


def build_region(base: RegionalEngineBuilder, region: str, out: Path) -> DemoRow:
    """Build, save, score and benchmark one region's engine."""
    started = time.perf_counter()
    region = _region_name(region)
    log.info("building region %s", region)
    data = region_data(region)
    builder = (
        base.for_region(region)
        .with_shape_profile(PROFILE)
        .with_validation(split_batches({"input": data.validation}, BATCH))
    )
    if Precision.INT8 in get_region(region).precisions:
        builder = builder.with_calibrator(
            "entropy", data=split_batches({"input": data.calibration}, BATCH)
        )
    path = out / f"digits_cnn.{region}.engine"
    with builder.build(path) as engine:
        logits = np.concatenate([
            engine.infer(b["input"])["logits"]
            for b in split_batches({"input": data.validation}, BATCH)
        ])
        accuracy = float(np.mean(logits.argmax(axis=1) == data.labels))
        bench = engine.benchmark(iterations=200, warmup=20, batch=1)
        meta = engine.metadata
    chosen = next(t for t in meta["validation"]["trials"] if t["accepted"])
    return DemoRow(
        region=region,
        precision=engine.precision,
        loss=chosen["loss"],
        budget=meta["validation"]["budget"],
        metric=meta["validation"]["metric"],
        kept=len(meta["kept_high_precision"]),
        accuracy=accuracy,
        p50_ms=bench.p50_ms,
        p99_ms=bench.p99_ms,
        seconds=time.perf_counter() - started,
        path=path,
    )


def demo_regions(regions: Sequence[str] | None = None) -> list[str]:
    """The demo's regions, upper-cased as the registry names them.

    Raises:
        UnknownRegionError: a name the demo ships no data for.
    """
    return [_region_name(r.strip()) for r in (regions or REGIONS)]


def iter_demo(out: Path, regions: Sequence[str] | None = None) -> Iterator[DemoRow]:
    """Build every (or the given) preset region into ``out``, yielding each row when done.

    Region names are checked before ``out`` is created, so a typo leaves nothing on disk.
    """
    names = demo_regions(regions)
    out.mkdir(parents=True, exist_ok=True)
    base = RegionalEngineBuilder.from_onnx(model_path())
    for region in names:
        yield build_region(base, region, out)


def run_demo(out: Path, regions: Sequence[str] | None = None) -> list[DemoRow]:
    """Build every (or the given) preset region into ``out``."""
    return list(iter_demo(out, regions))


HEADER = ("region", "precision", "loss / budget (metric)", "layers kept", "accuracy",
          "p50 ms", "p99 ms", "build s", "artifact")


def row_cells(r: DemoRow) -> tuple[str, ...]:
    """One row's cells, in the order of :data:`HEADER`."""
    loss = "-" if r.loss is None else f"{r.loss:.4f}"
    return (r.region, r.precision, f"{loss} / {r.budget:g} ({r.metric})", str(r.kept),
            f"{r.accuracy:.1%}", f"{r.p50_ms:.3f}", f"{r.p99_ms:.3f}", f"{r.seconds:.1f}",
            str(r.path))


def format_rows(rows: Sequence[DemoRow]) -> str:
    """The demo's table as plain text."""
    return format_table([row_cells(r) for r in rows], HEADER)
