"""``regiontrt report``: engines, bundles or a fleet output, as text or one HTML page."""

from __future__ import annotations

import argparse
from pathlib import Path

from regiontrt._text import format_table


def _cmd_report(args: argparse.Namespace) -> int:
    from regiontrt.report.page import build_page, text_summary
    from regiontrt.report.source import collect, measure

    if args.bench < 0:
        raise ValueError("--bench must be >= 0 (0 skips the latency measurement)")
    source = collect(args.path)
    if args.bench:
        measure(source, args.bench)
    if args.html:
        from regiontrt._fs import atomic_write_text

        atomic_write_text(args.html, build_page(source, figures=not args.no_plots))
        print(f"wrote {args.html}: {len(source.engines)} engine(s), "
              f"{len(source.manifests)} manifest(s), {len(source.problems)} problem(s)")
    else:
        print(format_table(text_summary(source),
                           ("region", "target", "precision", "loss / budget", "compliance",
                            "p99 ms")))
    return 1 if source.problems else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``report`` to the ``regiontrt`` parser."""
    r = sub.add_parser(
        "report",
        help="summarise engines, a bundle or a fleet output (text, or one HTML page)",
        description="Read an .engine file or every .engine and manifest.json under a folder; "
                    "print one line per engine, or write a self-contained HTML page with the "
                    "region x target matrix, compliance, accuracy against budget, latencies "
                    "and provenance. Example: regiontrt report dist/ --html report.html",
    )
    r.add_argument("path", type=Path,
                   help="an .engine file, or a folder of engines, bundles or a fleet output, "
                        "e.g. dist/")
    r.add_argument("--html", type=Path, metavar="OUT.html",
                   help="write the page here (images embedded), e.g. --html report.html")
    r.add_argument("--bench", type=int, default=20, metavar="N",
                   help="time N infer() calls of every engine that runs here, with a progress "
                        "bar (default 20: seconds, not minutes; 0 skips), e.g. --bench 0")
    r.add_argument("--no-plots", action="store_true",
                   help="tables only (no matplotlib needed)")
    r.set_defaults(func=_cmd_report)
