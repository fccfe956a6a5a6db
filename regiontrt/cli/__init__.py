"""The ``regiontrt`` command line.

Each module of this package (other than this one and ``_``-prefixed helpers) adds its commands
through a ``register(sub)`` function, so a layer's commands live beside each other and stay thin
over the Python API. Nothing in the library imports this package.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import traceback
import warnings
from collections.abc import Sequence

from regiontrt._version import __version__
from regiontrt.cli._common import cli_message
from regiontrt.errors import RegionTRTError

DESCRIPTION = "One ONNX model, per-region TensorRT engines under each region's rules."

EPILOG = """\
examples:
  regiontrt demo                                   build every preset region of the demo model
  regiontrt regions                                list the regions and their rules
  regiontrt build model.onnx --region EU --validation val.npz \\
      --shape x:1x3x48x32,8x3x48x320,16x3x48x1280  build EU's engine into ./model.EU.engine
  regiontrt inspect model.EU.engine                what was built, why, and from what
  regiontrt bench model.EU.engine --shape x:8x3x48x320

Run 'regiontrt COMMAND --help' for a command's options. Data files: see docs/data.md."""


def _add_verbosity(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # On the subcommands the defaults are SUPPRESS so a flag given before the command is kept.
    default: object = 0 if top else argparse.SUPPRESS
    if "-v" not in parser._option_string_actions:
        parser.add_argument("-v", "--verbose", action="count", default=default,
                            help="more log lines: -v shows every stage's decisions in detail "
                                 "(DEBUG), and tracebacks of errors")
    if "-q" not in parser._option_string_actions:
        parser.add_argument("-q", "--quiet", action="count", default=default,
                            help="only warnings and errors, no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    p = argparse.ArgumentParser(
        prog="regiontrt", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"regiontrt {__version__}")
    _add_verbosity(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: (m.name != "core", m.name)):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}").register(sub)
    _verbosity_everywhere(sub)
    return p


def _verbosity_everywhere(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``-v``/``-q`` on every command, nested ones too (``regiontrt fleet build ... -q``)."""
    for command in sub.choices.values():
        _add_verbosity(command, top=False)
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _verbosity_everywhere(action)


def _stdout_gone() -> None:
    # The reader of our output went away (`regiontrt regions | head -1`): point stdout at
    # /dev/null so the interpreter's final flush does not raise a second time.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                      lineno: int, file: object = None, line: str | None = None) -> None:
    """Python warnings as the CLI says them: ``warning: ...``, no source path or code line."""
    text = " ".join(str(message).split())
    print(f"warning: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status.

    0 on success, 2 for regiontrt errors and bad arguments (one line, no traceback unless
    ``-v``), 130 when interrupted, 141 when the reader of standard output went away.
    """
    args = build_parser().parse_args(argv)
    verbosity = args.verbose - args.quiet
    from regiontrt._progress import configure_logging, reset_logging

    configure_logging(verbosity)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            status = int(args.func(args))
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        _stdout_gone()
        return 141
    except KeyboardInterrupt:
        print("regiontrt: interrupted", file=sys.stderr)
        return 130
    except (RegionTRTError, ValueError, OSError) as exc:
        if verbosity > 0:
            traceback.print_exc()
        print(f"regiontrt: error: {cli_message(exc)}", file=sys.stderr)
        return 2
    finally:
        reset_logging()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
