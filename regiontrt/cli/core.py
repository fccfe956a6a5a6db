"""The core commands: build, inspect, bench, regions, demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from regiontrt._text import print_table
from regiontrt.backends import backend_names
from regiontrt.cli._common import (
    UsageError,
    non_negative_int,
    parse_input_shapes,
    parse_metric,
    parse_pin,
    parse_profile_shapes,
    positive_int,
)

log = logging.getLogger("regiontrt.cli")

_FMT = argparse.RawDescriptionHelpFormatter
#: Fewest timed runs whose 99th percentile means something (below, p99 is about the maximum).
P99_SAMPLES = 100


def default_output(model: str | Path, region: str) -> Path:
    """Where ``build`` writes without ``-o``: ``MODEL_STEM.REGION.engine`` in the current folder.

    Never beside the model, which may sit in a read-only or shared place (site-packages).
    """
    return Path.cwd() / f"{Path(model).stem}.{region}.engine"


def warn(text: str) -> None:
    """One ``warning: ...`` line on standard error (also under -q: it changes the outcome)."""
    print(f"warning: {text}", file=sys.stderr)


def _build_warnings(args: argparse.Namespace, allowed: list[str]) -> None:
    """Say what the build will not do as asked, before it starts."""
    if args.calibration and "int8" not in allowed:
        warn(f"--calibration is ignored: region {args.region.upper()} tries "
             f"{', '.join(allowed)} and no int8, so nothing is calibrated")
    for spec in args.shape:
        if "," not in spec.rpartition(":")[2]:
            warn(f"--shape {spec}: one shape, so the engine gets a fixed profile "
                 "(MIN = OPT = MAX) and accepts only that shape; give NAME:MIN,OPT,MAX "
                 "for a range")


def _cmd_build(args: argparse.Namespace) -> int:
    from regiontrt.build.builder import RegionalEngineBuilder
    from regiontrt.precision.regions import default_regions, load_regions

    # A --regions-file applies to this build only (the process-wide registry stays as it was).
    registry = load_regions(args.regions_file) if args.regions_file else default_regions()
    region = registry[args.region]
    if not Path(args.model).is_file():
        raise UsageError(f"model file not found: {args.model}")
    allowed = ([p.strip().lower() for p in args.precision.split(",")] if args.precision
               else [p.value for p in region.precisions])
    _build_warnings(args, allowed)
    builder = RegionalEngineBuilder.from_onnx(args.model).for_region(region)
    if args.precision:
        builder = builder.with_precision([p.strip() for p in args.precision.split(",")])
    if args.calibration:
        builder = builder.with_calibrator(args.calibrator, data=args.calibration)
    if args.shape:
        builder = builder.with_shape_profile(parse_profile_shapes(args.shape))
    if args.validation:
        builder = builder.with_validation(args.validation, metric=args.metric)
    builder = builder.with_backend(args.backend)
    if args.int8_arithmetic:
        builder = builder.with_int8_arithmetic(args.int8_arithmetic)
    if args.pin or args.no_auto_pin:
        builder = builder.with_pinned_inputs(dict(args.pin), auto=not args.no_auto_pin)
    output = args.output or default_output(args.model, region.name)
    engine = builder.build(output)
    report = engine.metadata["validation"]
    rows = []
    for t in report["trials"]:
        loss = "-" if t["loss"] is None else f"{t['loss']:.4g}"
        rows.append((t["precision"], loss, f"{t['budget']:.4g}",
                     "accepted" if t["accepted"] else "rejected", t["note"] or "-"))
    print(f"built {output}: region {engine.region}, precision {engine.precision}, "
          f"backend {engine.backend_name}")
    print_table(rows, ("precision", f"loss ({report['metric']})", "budget", "verdict", "note"))
    return 0


def _inspect_onnx(path: str, as_json: bool) -> int:
    """An ONNX model: its inputs and outputs (the keys and shapes data files need)."""
    from regiontrt.graph.io import input_specs, load_model, output_specs

    model = load_model(path)
    specs = [("input", s) for s in input_specs(model)] + [("output", s) for s in
                                                          output_specs(model)]
    rows = [(kind, s.name, str(s.dtype),
             "[" + ", ".join("?" if d is None else str(d) for d in s.shape) + "]")
            for kind, s in specs]
    if as_json:
        print(json.dumps([dict(zip(("kind", "name", "dtype", "shape"), r)) for r in rows],
                         indent=2))
    else:
        print_table(rows, ("kind", "name", "dtype", "shape (names and ? are dynamic)"))
        print(f"an ONNX model, not an engine: data files are keyed by the input names; build "
              f"with: regiontrt build {path} --region REGION --validation val.npz --shape "
              "NAME:MIN,OPT,MAX")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from regiontrt.runtime.inspection import inspect, summarize

    if str(args.engine).lower().endswith(".onnx"):
        return _inspect_onnx(args.engine, args.json)
    meta = inspect(args.engine, trust=args.trust)
    if args.json:
        print(json.dumps(meta, indent=2, sort_keys=True))
    else:
        print_table(summarize(meta), ("field", "value"))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from regiontrt.errors import ShapeOutOfProfile
    from regiontrt.runtime.engine import load_engine

    shapes = parse_input_shapes(args.shape) if args.shape else None
    if args.iterations < P99_SAMPLES:
        warn(f"--iterations {args.iterations}: a p99 from {args.iterations} samples is not "
             f"meaningful (it is close to the maximum); use --iterations {P99_SAMPLES} or more "
             "for a p99 to compare with an SLA")
    with load_engine(args.engine) as engine:
        try:
            feeds = engine.sample_inputs(args.batch, shapes=shapes)
            engine.check_inputs(feeds)
        except ShapeOutOfProfile as exc:
            why = "; ".join(line.strip() for line in str(exc).splitlines()[1:])
            raise UsageError(f"--batch/--shape must fit the engine's shape profiles: {why}"
                             ) from exc
        log.info("benchmarking %s on %s", args.engine,
                 ", ".join(f"{k} {tuple(v.shape)}" for k, v in feeds.items()))
        report = engine.benchmark(iterations=args.iterations, warmup=args.warmup, feeds=feeds,
                                  max_seconds=None)  # the count was asked for
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        rows = [(k, f"{v:.4g}" if isinstance(v, float) else v) for k, v in report.to_dict().items()]
        print_table(rows, ("metric", "value"))
    return 0


def _cmd_regions(args: argparse.Namespace) -> int:
    from regiontrt.precision.regions import default_regions, load_regions

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
    print_table(rows, ("region", "precisions", "forbidden", "budget", "p99 SLA ms",
                       "description"))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from regiontrt._progress import live_table
    from regiontrt.demo.run import HEADER, demo_regions, iter_demo, row_cells
    from regiontrt.precision.regions import get_region

    regions = demo_regions(args.regions.split(",") if args.regions else None)
    p99 = HEADER.index("p99 ms")
    with live_table(HEADER, title="regiontrt demo") as table:
        for row in iter_demo(Path(args.out), regions):
            cells = list(row_cells(row))
            sla = get_region(row.region).latency_p99_ms
            if sla is not None and row.p99_ms > sla:  # in the table, not only on stderr
                cells[p99] = f"{cells[p99]} > SLA {sla:g}: MISS"
            table.add_row(*cells)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the core commands to the ``regiontrt`` parser."""
    _register_build(sub)
    _register_inspect_bench(sub)
    _register_regions_demo(sub)


def _register_build(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser(
        "build", help="build one region's engine from an ONNX model", formatter_class=_FMT,
        description="Build one region's engine: try the precisions the region allows, in order,\n"
                    "check each against the FP32 model on the region's validation data, and keep\n"
                    "the first within the region's accuracy budget.",
        epilog="example:\n  regiontrt build rec.onnx --region APAC --validation val/ "
               "--calibration calib.npz \\\n      --shape x:1x3x48x32,8x3x48x320,16x3x48x1280 "
               "-o rec.APAC.engine\n\ndata files: docs/data.md (keys are input names; one file "
               "is one batch, split to the\n--shape opt batch when it holds more samples).")
    b.add_argument("model", help="the ONNX model, e.g. rec.onnx")
    b.add_argument("--region", required=True,
                   help="region whose rules apply, case-insensitive, e.g. EU (list: regiontrt "
                        "regions)")
    b.add_argument("--precision",
                   help="precisions to try instead of the region's, in order, e.g. fp16,fp32")
    b.add_argument("--validation", metavar="FILE_OR_FOLDER",
                   help="the region's validation data: .npz/.npy file or folder of them, "
                        "e.g. val.npz (needed for any precision other than fp32)")
    b.add_argument("--metric", type=parse_metric, metavar="METRIC_OR_OUTPUT=METRIC,...",
                   help="loss metric instead of the region's: auto (top1 for [batch, classes] "
                        "outputs, relative_l2 for others), top1, relative_l2, max_abs or "
                        "cosine, for every output or per output, e.g. relative_l2 or "
                        "logits=top1,boxes=relative_l2")
    b.add_argument("--int8-arithmetic", choices=("tensorrt", "fused"),
                   help="onnxruntime backend: check and run int8 in TensorRT's arithmetic, the "
                        "same on any CPU (default), or in ONNX Runtime's fused kernels of this "
                        "CPU (faster, CPU-dependent), e.g. fused")
    b.add_argument("--calibration", metavar="FILE_OR_FOLDER",
                   help="the region's int8 calibration data, same format as --validation, "
                        "e.g. calib/ (needed when the region allows int8)")
    b.add_argument("--calibrator", default="auto",
                   choices=("auto", "entropy", "percentile", "minmax"),
                   help="how int8 ranges are chosen from the calibration data (default: auto, "
                        "the lowest-error of entropy, percentile and max per tensor), "
                        "e.g. entropy")
    b.add_argument("--shape", action="append", default=[], metavar="NAME:MIN,OPT,MAX",
                   help="input shapes the engine accepts, dims joined by x, repeatable, e.g. "
                        "x:1x3x48x32,8x3x48x320,16x3x48x1280 (needed for dynamic dims on "
                        "TensorRT)")
    b.add_argument("--pin", action="append", default=[], type=parse_pin, metavar="NAME=VALUE",
                   help="an input that is constant in this deployment, folded into the engine "
                        "(an If it decides is replaced by the branch taken, so its layers are "
                        "quantized; the engine refuses other values), repeatable, e.g. sr=16000")
    b.add_argument("--no-auto-pin", action="store_true",
                   help="do not pin an input that decides an If because it holds one value in "
                        "all the calibration and validation data (pinned by default where int8 "
                        "is tried; see docs/int8.md)")
    b.add_argument("--backend", default="onnxruntime",
                   choices=("auto", *backend_names()),
                   help="what runs the engine (default: onnxruntime on the CPU), e.g. "
                        "tensorrt-rtx")
    b.add_argument("--regions-file", metavar="TOML",
                   help="TOML file adding or overriding regions, e.g. mine.toml")
    b.add_argument("-o", "--output", type=Path, metavar="ENGINE",
                   help="where to write the engine (default: ./MODEL.REGION.engine in the "
                        "current folder), e.g. -o out/rec.EU.engine")
    b.set_defaults(func=_cmd_build)


def _register_inspect_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    i = sub.add_parser("inspect", help="show an engine's metadata (no GPU needed)",
                       description="Show what an engine is, how and from what it was built; "
                                   "reads only the file, needs no GPU. Given an .onnx model, "
                                   "list its inputs and outputs (the names data files use).")
    i.add_argument("engine", help="the .engine file (or an .onnx model), e.g. rec.EU.engine")
    i.add_argument("--json", action="store_true", help="print the full metadata as JSON")
    i.add_argument("--trust", metavar="PUBLIC.pem",
                   help="verify the detached signature ENGINE.sig with this public key (or a "
                        "folder of keys) over the bytes inspected, e.g. keys/public.pem")
    i.set_defaults(func=_cmd_inspect)

    be = sub.add_parser(
        "bench", help="benchmark an engine", formatter_class=_FMT,
        description="Time inferences on random inputs at the engine profile's opt shape (or\n"
                    "--shape). Refuses to guess a dynamic dimension that no profile covers.",
        epilog="example:\n  regiontrt bench rec.EU.engine --shape x:8x3x48x320 --iterations 200")
    be.add_argument("engine", help="the .engine file, e.g. rec.EU.engine")
    be.add_argument("--iterations", type=positive_int, default=100,
                    help="timed runs (default: 100; fewer make p99 meaningless), e.g. 200")
    be.add_argument("--warmup", type=non_negative_int, default=10,
                    help="untimed runs first (default: 10), e.g. 5")
    be.add_argument("--batch", type=int,
                    help="batch size instead of the profile's opt batch, e.g. 1")
    be.add_argument("--shape", action="append", default=[], metavar="NAME:SHAPE",
                    help="input shape to time, dims joined by x, repeatable, e.g. "
                         "x:8x3x48x320 (default: the profile's opt shape)")
    be.add_argument("--json", action="store_true", help="print the report as JSON")
    be.set_defaults(func=_cmd_bench)


def _register_regions_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser("regions", help="list the region registry",
                       description="List the regions: precisions tried, forbidden precisions, "
                                   "accuracy budget and latency SLA.")
    r.add_argument("--regions-file", metavar="TOML",
                   help="TOML file adding or overriding regions, e.g. mine.toml")
    r.add_argument("--json", action="store_true", help="print the regions as JSON")
    r.set_defaults(func=_cmd_regions)

    d = sub.add_parser("demo", help="build every preset region from the bundled demo model",
                       description="Build one engine per preset region from the small CNN and "
                                   "region data shipped in the package, and print the table.")
    d.add_argument("--out", default="regiontrt-demo",
                   help="folder for the engines (default: ./regiontrt-demo), e.g. /tmp/demo")
    d.add_argument("--regions",
                   help="comma-separated subset of regions, case-insensitive, e.g. eu,apac")
    d.set_defaults(func=_cmd_demo)
