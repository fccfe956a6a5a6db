"""What the GPU benchmarks share: the command line, the GPU check and the JSON hand-off.

Each GPU benchmark prints a human table, then its results as one JSON line (what
``scripts/gpu_check.sh`` keeps), and with ``--json PATH`` also writes that JSON to a file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from regiontrt._fs import atomic_write_text
from regiontrt.backends import cuda

Results = dict[str, Any]


def make_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the first line of ``doc``, with the shared ``--json PATH``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    ap.add_argument("--json", type=Path, help="also write the results here")
    return ap


def run_gpu_benchmark(name: str, json_path: Path | None, measure: Callable[[], Results],
                      report: Callable[[Results], None]) -> int:
    """Measure, print the table and the JSON line, and write the JSON to ``json_path`` if given.

    Args:
        name: the benchmark, for the message when there is no GPU.
        json_path: where to write the JSON too (``None``: nowhere).
        measure: runs the benchmark and returns its JSON-serializable results.
        report: prints the human-readable table of the results.

    Returns:
        The exit status: 0, or 2 when no usable CUDA GPU is here (nothing is measured).
    """
    if not cuda.cuda_available():
        print(f"{name}: no usable CUDA GPU here", file=sys.stderr)
        return 2
    res = measure()
    report(res)
    text = json.dumps(res)
    print(text)
    if json_path:
        atomic_write_text(json_path, text + "\n")
    return 0
