"""The ``regiontrt`` command line.

Each module of this package (other than this one) adds its commands through a ``register(sub)``
function, so a layer's commands live beside each other and stay thin over the Python API. Nothing
in the library imports this package.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from ..errors import RegionTRTError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    p = argparse.ArgumentParser(
        prog="regiontrt",
        description="One ONNX model, per-region TensorRT engines under each region's rules.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: (m.name != "core", m.name)):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}").register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for regiontrt errors and bad arguments)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (RegionTRTError, ValueError) as exc:
        print(f"regiontrt: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
