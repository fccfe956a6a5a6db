"""Helpers shared by the CLI's command modules: shape arguments and errors in the CLI's words."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from regiontrt.errors import RegionTRTError


class UsageError(RegionTRTError, ValueError):
    """A command-line argument is malformed (reported without a traceback, exit status 2)."""


def _dims(text: str, flag: str, spec: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise UsageError(
            f"{flag} {spec!r}: dimensions must be integers joined by x, e.g. 1x3x48x320"
        ) from None
    if any(d < 1 for d in dims):
        raise UsageError(f"{flag} {spec!r}: dimensions must be >= 1")
    return dims


def parse_metric(text: str) -> str | dict[str, str]:
    """``--metric``: one metric name, or ``OUTPUT=METRIC`` pairs joined by commas."""
    if "=" not in text:
        return text.strip()
    out: dict[str, str] = {}
    for part in text.split(","):
        name, sep, metric = part.partition("=")
        if not sep or not name.strip() or not metric.strip():
            raise argparse.ArgumentTypeError(
                f"expected OUTPUT=METRIC pairs joined by commas, e.g. logits=top1,boxes="
                f"relative_l2, got {part!r}")
        out[name.strip()] = metric.strip()
    return out


def parse_pin(text: str) -> tuple[str, int | float | bool]:
    """``build --pin``: ``NAME=VALUE``, a number or ``true``/``false`` (e.g. ``sr=16000``)."""
    name, sep, raw = text.partition("=")
    value: int | float | bool
    if raw.strip().lower() in ("true", "false"):
        value = raw.strip().lower() == "true"
    else:
        try:
            value = int(raw)
        except ValueError:
            try:
                value = float(raw)
            except ValueError:
                value = float("nan")
    if not sep or not name.strip() or value != value:  # NaN: not a number
        raise argparse.ArgumentTypeError(
            f"expected NAME=VALUE with a number or true/false, e.g. sr=16000, got {text!r}")
    return name.strip(), value


def parse_profile_shapes(specs: Sequence[str]) -> dict[str, list[tuple[int, ...]]]:
    """``build --shape``: ``NAME:MIN,OPT,MAX`` (or ``NAME:SHAPE`` for a fixed shape).

    Example: ``input:1x1x8x8,32x1x8x8,64x1x8x8`` -> ``{"input": [min, opt, max]}``.
    """
    out: dict[str, list[tuple[int, ...]]] = {}
    for spec in specs:
        name, sep, shapes = spec.rpartition(":")
        if not sep or not name:
            raise UsageError(
                f"--shape {spec!r}: expected NAME:MIN,OPT,MAX with dims joined by x, "
                "e.g. --shape x:1x3x48x32,8x3x48x320,16x3x48x1280"
            )
        parts = [_dims(s, "--shape", spec) for s in shapes.split(",")]
        if len(parts) not in (1, 3):
            raise UsageError(f"--shape {spec!r}: give one shape or three (MIN,OPT,MAX)")
        out[name] = parts * 3 if len(parts) == 1 else parts
    return out


def parse_input_shapes(specs: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """``bench --shape``: ``NAME:SHAPE``, e.g. ``x:1x3x48x320``."""
    out: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition(":")
        if not sep or not name or "," in dims:
            raise UsageError(
                f"--shape {spec!r}: expected NAME:SHAPE with dims joined by x, "
                "e.g. --shape x:1x3x48x320"
            )
        out[name] = _dims(dims, "--shape", spec)
    return out


def _number(kind: Callable[[str], float], test: Callable[[float], bool], words: str
            ) -> Callable[[str], Any]:
    """An argparse ``type=``: ``kind(text)`` that passes ``test`` (argparse names the flag)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value != value or not test(value):  # value != value: NaN
            raise argparse.ArgumentTypeError(f"must be {words}, got {text}")
        return value

    return parse


#: ``type=`` of integer flags that must be >= 1 (the error names the flag: argparse adds it).
positive_int = _number(int, lambda v: v >= 1, ">= 1")
#: ``type=`` of integer flags that must be >= 0.
non_negative_int = _number(int, lambda v: v >= 0, ">= 0")
#: ``type=`` of float flags that must be > 0.
positive_float = _number(float, lambda v: 0 < v < float("inf"), "> 0 and finite")
#: ``type=`` of float flags that must be >= 0.
non_negative_float = _number(float, lambda v: 0 <= v < float("inf"), ">= 0 and finite")
#: ``type=`` of a share of requests, within [0, 1].
share = _number(float, lambda v: 0 <= v <= 1, "within [0, 1]")


def cli_message(exc: BaseException) -> str:
    """An error as the CLI says it: the setting it names spelled as the flag that sets it."""
    if isinstance(exc, RegionTRTError):
        return exc.render("cli")
    return str(exc)
