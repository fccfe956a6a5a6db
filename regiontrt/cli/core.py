"""The core commands: build, inspect, bench, regions, demo."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from .._text import format_table


def _parse_shapes(specs: Sequence[str]) -> dict[str, list[tuple[int, ...]]]:
    """``input:1x3x32x32,8x3x32x32,32x3x32x32`` -> ``{input: [min, opt, max]}``."""
    out: dict[str, list[tuple[int, ...]]] = {}
    for spec in specs:
        name, sep, shapes = spec.rpartition(":")
        if not sep or not name:
            raise ValueError(f"--shape {spec!r}: expected NAME:MIN,OPT,MAX with dims joined by x")
        try:
            out[name] = [tuple(int(d) for d in s.split("x")) for s in shapes.split(",")]
        except ValueError:
            raise ValueError(f"--shape {spec!r}: dimensions must be integers") from None
    return out


def _cmd_build(args: argparse.Namespace) -> int:
    from ..builder import RegionalEngineBuilder
    from ..regions import load_regions

    region = load_regions(args.regions_file)[args.region] if args.regions_file else args.region
    builder = RegionalEngineBuilder.from_onnx(args.model).for_region(region)
    if args.precision:
        builder = builder.with_precision(args.precision.split(","))
    if args.calibration:
        builder = builder.with_calibrator(args.calibrator, data=args.calibration)
    if args.shape:
        builder = builder.with_shape_profile(_parse_shapes(args.shape))
    if args.validation:
        builder = builder.with_validation(args.validation, metric=args.metric)
    builder = builder.with_backend(args.backend)
    output = args.output or Path(args.model).with_suffix(f".{args.region}.engine")
    engine = builder.build(output)
    report = engine.metadata["validation"]
    print(f"built {output}: region {engine.region}, precision {engine.precision}, "
          f"backend {engine.backend_name}")
    for t in report["trials"]:
        loss = "-" if t["loss"] is None else f"{t['loss']:.4g}"
        print(f"  {t['precision']}: loss {loss} / budget {t['budget']:.4g} "
              f"{'accepted' if t['accepted'] else 'rejected'} {t['note']}".rstrip())
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ..engine import inspect, summarize

    meta = inspect(args.engine)
    if args.json:
        print(json.dumps(meta, indent=2, sort_keys=True))
    else:
        print(format_table(summarize(meta), ("field", "value")))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from ..engine import load_engine

    with load_engine(args.engine) as engine:
        report = engine.benchmark(iterations=args.iterations, warmup=args.warmup, batch=args.batch)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        rows = [(k, f"{v:.4g}" if isinstance(v, float) else v) for k, v in report.to_dict().items()]
        print(format_table(rows, ("metric", "value")))
    return 0


def _cmd_regions(args: argparse.Namespace) -> int:
    from ..regions import default_regions, load_regions

    registry = load_regions(args.regions_file) if args.regions_file else default_regions()
    if args.json:
        print(json.dumps([r.to_dict() for r in registry.values()], indent=2))
        return 0
    rows = [
        (r.name, " > ".join(p.value for p in r.precisions),
         ", ".join(sorted(p.value for p in r.forbidden)) or "-",
         f"{r.budget:g} ({r.metric})", r.latency_p99_ms or "-", r.description)
        for r in registry.values()
    ]
    print(format_table(rows, ("region", "precisions", "forbidden", "budget", "p99 SLA ms",
                        "description")))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..demo.run import format_rows, run_demo

    rows = run_demo(Path(args.out), regions=args.regions.split(",") if args.regions else None)
    print(format_rows(rows))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the core commands to the ``regiontrt`` parser."""

    b = sub.add_parser("build", help="build one region's engine from an ONNX model")
    b.add_argument("model")
    b.add_argument("--region", required=True)
    b.add_argument("--precision", help="comma-separated precisions to try, e.g. fp16,fp32")
    b.add_argument("--validation", help=".npz file or folder of the region's validation data")
    b.add_argument("--metric", help="top1, relative_l2, max_abs or cosine")
    b.add_argument("--calibration", help=".npz file or folder of the region's calibration data")
    b.add_argument("--calibrator", default="entropy", choices=("entropy", "percentile", "minmax"))
    b.add_argument("--shape", action="append", default=[],
                   help="NAME:MIN,OPT,MAX shapes, dims joined by x (repeatable)")
    b.add_argument("--backend", default="onnxruntime",
                   choices=("auto", "onnxruntime", "tensorrt", "tensorrt-rtx"))
    b.add_argument("--regions-file", help="TOML file adding or overriding regions")
    b.add_argument("-o", "--output", type=Path)
    b.set_defaults(func=_cmd_build)

    i = sub.add_parser("inspect", help="show an engine's metadata (no GPU needed)")
    i.add_argument("engine")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_cmd_inspect)

    be = sub.add_parser("bench", help="benchmark an engine")
    be.add_argument("engine")
    be.add_argument("--iterations", type=int, default=100)
    be.add_argument("--warmup", type=int, default=10)
    be.add_argument("--batch", type=int)
    be.add_argument("--json", action="store_true")
    be.set_defaults(func=_cmd_bench)

    r = sub.add_parser("regions", help="list the region registry")
    r.add_argument("--regions-file")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=_cmd_regions)

    d = sub.add_parser("demo", help="build every preset region from the bundled demo model")
    d.add_argument("--out", default="regiontrt-demo", help="folder for the engines")
    d.add_argument("--regions", help="comma-separated subset of regions")
    d.set_defaults(func=_cmd_demo)
