"""Mixed precision: keep the layers int8 hurts most in higher precision until the budget holds.

The search is independent of how a candidate is built and measured: it takes the quantizable
layers and an ``evaluate(keep) -> loss`` callable (the loss of the model with the layers in
``keep`` left out of int8, measured on the region's validation data).

1. Ranking. Given ``sensitivity`` (a cheap proxy per layer, e.g. each layer's own output error
   with int8 inputs from one FP32 pass: see
   :mod:`regiontrt.precision.int8`), layers are ranked by it and
   no evaluation is spent on ranking. Without it, each layer's sensitivity is measured as the
   loss with only that layer quantized (one full evaluation per layer).
2. Size. Keep the ``k`` highest-ranked layers, with ``k`` found by doubling then bisection:
   about ``2 log2(n)`` evaluations find the smallest ``k`` that meets the budget.
3. Screening. With ``screen`` (the loss on a subset of the validation data), the doubling and
   bisection run on the screen, and only the ``k`` it finds is confirmed with ``evaluate``; a
   screen that was optimistic resumes the search above ``k`` (with full evaluations counted).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from regiontrt._progress import track

log = logging.getLogger("regiontrt.precision.mixed")

Evaluate = Callable[[frozenset[str]], float]


@dataclass(frozen=True)
class MixedPrecisionResult:
    """Outcome of :func:`search_mixed_precision`.

    Attributes:
        kept: layers kept in higher precision, most sensitive first.
        loss: loss with those layers kept, on all the validation data (``inf`` when nothing was
            evaluated).
        fits: whether ``loss`` meets the budget.
        sensitivity: the ranking score per layer (higher: kept first).
        evaluations: full evaluations (candidate models measured on all the validation data).
        screen_evaluations: candidate models measured on the screening subset only.
    """

    kept: tuple[str, ...]
    loss: float
    fits: bool
    sensitivity: dict[str, float] = field(default_factory=dict)
    evaluations: int = 0
    screen_evaluations: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept": list(self.kept),
            "loss": self.loss,
            "fits": self.fits,
            "evaluations": self.evaluations,
            "screen_evaluations": self.screen_evaluations,
            "sensitivity": dict(sorted(self.sensitivity.items(), key=lambda kv: -kv[1])),
        }


class _Memo:
    """Losses of prefixes ``order[:k]``, each measured once."""

    def __init__(self, order: Sequence[str], fn: Evaluate) -> None:
        self.order, self.fn = order, fn
        self.values: dict[int, float] = {}

    def __call__(self, k: int) -> float:
        if k not in self.values:
            self.values[k] = float(self.fn(frozenset(self.order[:k])))
        return self.values[k]


def smallest_fitting(lo: int, limit: int, fits: Callable[[int], bool]) -> int | None:
    """The smallest ``k`` in ``(lo, limit]`` with ``fits(k)``, assuming ``fits`` is monotone.

    Doubling from ``lo`` (steps 1, 2, 4, ...) brackets it, then bisection: at most about
    ``2 log2(limit - lo) + 1`` calls. ``None`` when ``fits(limit)`` is false.
    """
    failed, step = lo, 1
    while True:
        k = min(lo + step, limit)
        if k <= failed:
            return None
        if fits(k):
            break
        failed = k
        if k >= limit:
            return None
        step *= 2
    hi = k
    while hi - failed > 1:
        mid = (failed + hi) // 2
        if fits(mid):
            hi = mid
        else:
            failed = mid
    return hi


def search_mixed_precision(
    layers: Sequence[str],
    evaluate: Evaluate,
    budget: float,
    *,
    max_kept: int | None = None,
    sensitivity: Mapping[str, float] | None = None,
    screen: Evaluate | None = None,
) -> MixedPrecisionResult:
    """Find a small set of layers to keep out of int8 so the loss meets ``budget``.

    Whole-model int8 is assumed measured (and over budget) before: the search starts at one
    kept layer.

    Args:
        layers: the quantized layers (node names).
        evaluate: loss of the model with the given layers kept in higher precision, on all the
            validation data.
        budget: the largest accepted loss.
        max_kept: at most this many layers may be kept (default: all).
        sensitivity: a ranking score per layer (higher: more sensitive); layers missing from it
            rank last. ``None``: measured with one evaluation per layer.
        screen: a cheaper estimate of ``evaluate`` (a subset of the validation data) used to
            size the kept set before ``evaluate`` confirms it.

    Returns:
        The smallest prefix of the ranked layers that fits, or, when none within ``max_kept``
        does, the largest one with ``fits=False``.
    """
    layers = list(dict.fromkeys(layers))
    limit = len(layers) if max_kept is None else max(0, min(max_kept, len(layers)))
    if not layers or limit == 0:
        return MixedPrecisionResult((), float("inf"), False)
    position = {name: i for i, name in enumerate(layers)}
    measured_ranking = 0
    if sensitivity is None:
        everything = frozenset(layers)
        scores = {name: float(evaluate(everything - {name}))
                  for name in track(layers, "mixed precision: layer sensitivity")}
        measured_ranking = len(layers)
    else:
        scores = {name: float(sensitivity.get(name, float("-inf"))) for name in layers}
    order = sorted(layers, key=lambda n: (-scores[n], position[n]))
    log.info("mixed precision: most sensitive layers: %s", ", ".join(
        f"{n} ({scores[n]:.4g})" for n in order[:5]))
    full = _Memo(order, evaluate)
    quick = _Memo(order, screen) if screen is not None else None
    lo, found = 0, None
    while lo < limit:
        if quick is not None:
            k = smallest_fitting(lo, limit, lambda k: quick(k) <= budget)
        else:
            k = smallest_fitting(lo, limit, lambda k: full(k) <= budget)
        if k is None:
            break
        if full(k) <= budget:
            found = k
            break
        lo = k  # the screen was optimistic at k: resume above it
    screened = 0 if quick is None else len(quick.values)
    if found is None:
        worst = limit if quick is not None or not full.values else max(full.values)
        return MixedPrecisionResult(
            tuple(order[:worst]), full(worst), False, scores,
            measured_ranking + len(full.values), screened,
        )
    return MixedPrecisionResult(
        tuple(order[:found]), full(found), True, scores,
        measured_ranking + len(full.values), screened,
    )
