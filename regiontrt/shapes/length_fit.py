"""Fit an output length formula to lengths measured at chosen widths.

Symbolic shape inference loses an output's length where it passes through a computed
``Reshape`` (a shape built from ``Shape``, casts, float arithmetic...). Guessing the length by
scaling the padded output (``floor(len * original / padded)``) is one step short at some widths,
so the length is measured instead (:mod:`regiontrt.shapes.length_measure` runs the model),
and the one
formula of the family

    ``L(w) = m * floor((p*w + q) / r) + b``    (``1 <= r <= 64``, ``1 <= p, m <= 8``, or constant)

that agrees with every measurement is kept. The family covers convolution and pooling arithmetic
of any depth: ``floor((floor((w + a1)/s1) + a2)/s2)`` is ``floor((w + a1 + a2*s1)/(s1*s2))``,
ceiling modes are floors with another offset, and upsampling is ``p`` or ``m``.

How the widths are chosen: the smallest width the model runs at, the largest bucket, both sides
of every bucket boundary and random widths first; then, while two formulas of the family that fit
every measurement so far still differ at some width of the range, the width that splits them most
evenly is measured (so the fit is unique over the whole range, not only at the sampled widths);
last, random widths not measured yet check the result. Where no formula fits from the smallest
width on, one that fits from a few widths above may, with the widths below measured one by one
and the departures written into the rule. Any other disagreement is a typed refusal naming a
measured counter-example.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from regiontrt.errors import ShapeProfileError

MAX_PERIOD = 64  # r: the product of the strides of a convolution/pooling chain
MAX_SLOPE = 8  # p: upsampling or a fractional resize inside the floor
MAX_SCALE = 8  # m: upsampling after the floor
RANDOM_SAMPLES = 12
RANDOM_CHECKS = 8
MAX_REFINE = 48  # each refinement halves the candidates or better; 48 is far beyond need
PREFIXES = (16, 64, 256)  # widths above the smallest that may depart from the formula
MAX_EXCEPTIONS = 64

Probe = Callable[[int], "int | None"]


@dataclass(frozen=True)
class LengthFit:
    """``m * floor((p*w + q) / r) + b`` and the widths it was measured at.

    ``exceptions`` holds ``(width, length)`` for the few smallest widths where the model departs
    from the formula (a pooling window wider than what is left of the input: ONNX Runtime then
    still gives one step); the rule spells them out, so it stays exact there too.
    """

    m: int
    p: int
    q: int
    r: int
    b: int
    widths: tuple[int, ...]
    exceptions: tuple[tuple[int, int], ...] = ()

    def base(self, w: int) -> int:
        """The formula without the exceptions."""
        return self.m * ((self.p * w + self.q) // self.r) + self.b

    def __call__(self, w: int) -> int:
        return dict(self.exceptions).get(w, self.base(w))

    def rule(self, symbol: str) -> str:
        """The formula in the syntax of :mod:`regiontrt.shapes.rules`."""
        if self.p == 0:
            text = str(self.b)
        else:
            core = f"{self.p}*{symbol}" if self.p != 1 else symbol
            if self.q:
                core = f"{core} + {self.q}"
            if self.r != 1:
                core = f"floor(({core})/{self.r})"
            text = f"{self.m}*{core}" if self.m != 1 else core
            if self.b:
                text = f"{text} {'+' if self.b > 0 else '-'} {abs(self.b)}"
        for w, length in self.exceptions:  # Max(0, 1 - |s - w|) is 1 at w, else 0
            d = length - self.base(w)
            scale = f"{abs(d)}*" if abs(d) != 1 else ""
            text += f" {'+' if d > 0 else '-'} {scale}Max(0, 1 - Abs({symbol} - {w}))"
        return text


@functools.lru_cache(maxsize=1)
def _family() -> tuple[np.ndarray, ...]:
    """``(m, p, q, r)`` of every formula, simplest first (the constant, then by ``r, p, m, q``)."""
    rows = [(1, 0, 0, 1)]
    for r in range(1, MAX_PERIOD + 1):
        for p in range(1, MAX_SLOPE + 1):
            if math.gcd(p, r) != 1:  # (2w + q)/(2r) floors like (w + q//2)/r: a duplicate
                continue
            for m in range(1, MAX_SCALE + 1 if r > 1 else 2):  # r == 1: m*p*w is p'*w
                rows.extend((m, p, q, r) for q in range(r))
    table = np.array(rows, dtype=np.int64)
    return tuple(np.ascontiguousarray(table[:, i]) for i in range(4))


class _Candidates:
    """The formulas of the family that fit every measurement so far."""

    def __init__(self, w0: int, length: int) -> None:
        self.m, self.p, self.q, self.r = _family()
        self.b = length - self._core(w0)

    def _core(self, w: Any) -> np.ndarray:
        w = np.asarray(w, dtype=np.int64)
        if w.ndim == 0:
            return self.m * ((self.p * w + self.q) // self.r)
        return self.m[:, None] * ((self.p[:, None] * w + self.q[:, None]) // self.r[:, None])

    def predict(self, w: Any) -> np.ndarray:
        core = self._core(w)
        return core + (self.b if core.ndim == 1 else self.b[:, None])

    def keep(self, mask: np.ndarray) -> None:
        self.m, self.p, self.q, self.r, self.b = (a[mask] for a in
                                                  (self.m, self.p, self.q, self.r, self.b))

    def first(self, widths: Sequence[int]) -> LengthFit:
        return LengthFit(int(self.m[0]), int(self.p[0]), int(self.q[0]), int(self.r[0]),
                         int(self.b[0]), tuple(sorted(widths)))

    def __len__(self) -> int:
        return len(self.m)


class LengthMismatch(ShapeProfileError):
    """No formula of the family fits the measured lengths; ``width`` is a counter-example."""

    def __init__(self, message: str, width: int, length: int) -> None:
        super().__init__(message)
        self.width = width
        self.length = length


def _measure(probe: Probe, w: int, low: int, high: int) -> int:
    length = probe(w)
    if length is None:
        raise ShapeProfileError(f"the model runs at widths {low} and {high} but fails at {w}")
    return length


def _refute(best: LengthFit, w: int, length: int, fitted: int) -> LengthMismatch:
    return LengthMismatch(
        f"no length formula m*floor((p*w + q)/r) + b fits: {best.rule('w')} fits the "
        f"{fitted} widths measured before, but at width {w} the model gives {length}, the "
        f"formula {best(w)}", w, length)


def _fit_range(probe: Probe, low: int, high: int, *, boundaries: Sequence[int] = (),
               seed: int = 0) -> LengthFit:
    """The one formula of the family that fits ``probe`` on ``low..high`` (see :func:`fit_length`).

    Raises:
        LengthMismatch: no formula fits, or a random check disagrees with the one that does.
    """
    rng = np.random.default_rng(seed)
    first = [low, high, *(b + d for b in boundaries for d in (-1, 0, 1))]
    first += [int(w) for w in rng.integers(low, high + 1, RANDOM_SAMPLES)]
    widths = list(dict.fromkeys(w for w in first if low <= w <= high))
    measured = {w: _measure(probe, w, low, high) for w in widths}
    cand = _Candidates(widths[0], measured[widths[0]])
    for i, w in enumerate(widths[1:], start=1):
        mask = cand.predict(w) == measured[w]
        if not mask.any():
            raise _refute(cand.first(widths[:i]), w, measured[w], i)
        cand.keep(mask)
    domain = np.arange(low, high + 1, dtype=np.int64)
    for _ in range(MAX_REFINE):
        preds = cand.predict(domain)
        agree = (preds == preds[0]).sum(axis=0)
        if agree.min() == len(cand):
            break
        j = int(np.argmin(np.abs(agree - len(cand) / 2)))  # the most even split
        w = int(domain[j])
        measured[w] = _measure(probe, w, low, high)
        mask = preds[:, j] == measured[w]
        if not mask.any():
            raise _refute(cand.first(list(measured)), w, measured[w], len(measured) - 1)
        cand.keep(mask)
    fit = cand.first(list(measured))
    unseen = np.setdiff1d(domain, np.fromiter(measured, np.int64))
    for w in rng.choice(unseen, min(RANDOM_CHECKS, len(unseen)), replace=False):
        w = int(w)
        measured[w] = _measure(probe, w, low, high)
        if fit(w) != measured[w]:
            raise _refute(fit, w, measured[w], len(measured) - 1)
    return LengthFit(fit.m, fit.p, fit.q, fit.r, fit.b, tuple(sorted(measured)))


def fit_length(probe: Probe, low: int, high: int, *, boundaries: Sequence[int] = (),
               seed: int = 0) -> LengthFit:
    """The formula that gives ``probe(w)`` at every width ``w`` in ``low..high``.

    The family's formula over the whole range if one fits; else one that fits from a few
    widths above ``low`` on, with every width below measured and the departures kept as
    exceptions (at most ``MAX_EXCEPTIONS``).

    Args:
        probe: the model's output length at a width (``None`` where the model fails).
        low, high: the widths the formula must hold at; the model must run at both.
        boundaries: widths where a mistake costs most (bucket sizes): measured with their
            neighbours.
        seed: seeds the random widths, so a build measures the same widths every time.

    Raises:
        LengthMismatch: no formula fits (the first attempt's counter-example), or one fits the
            measurements but a random check disagrees; the message names the width and both
            lengths.
        ShapeProfileError: the model fails at a width inside the range.
    """
    try:
        return _fit_range(probe, low, high, boundaries=boundaries, seed=seed)
    except LengthMismatch as exc:
        refusal = exc
    for prefix in PREFIXES:
        start = low + prefix
        if start >= high:
            break
        try:
            fit = _fit_range(probe, start, high, boundaries=boundaries, seed=seed)
        except LengthMismatch:
            continue
        dense = {w: _measure(probe, w, low, high) for w in range(low, start)}
        exceptions = tuple((w, v) for w, v in dense.items() if v != fit(w))
        if len(exceptions) > MAX_EXCEPTIONS:
            break
        return LengthFit(fit.m, fit.p, fit.q, fit.r, fit.b,
                         tuple(sorted({*fit.widths, *dense})), exceptions)
    raise refusal


def lowest_runnable(probe: Probe, high: int) -> int:
    """The smallest width the model runs at, by bisection (a model that runs at ``w`` is
    assumed to run at every larger width up to ``high``).

    Raises:
        ShapeProfileError: the model does not run even at ``high``.
    """
    if probe(1) is not None:
        return 1
    if probe(high) is None:
        raise ShapeProfileError(f"the model does not run at width {high}")
    lo, hi = 1, high  # fails at lo, runs at hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if probe(mid) is not None else (mid, hi)
    return hi
