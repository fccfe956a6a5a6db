"""Mixed precision: keep the layers int8 hurts most in higher precision until the budget holds.

The search is independent of how a candidate is built and measured: it takes the quantizable
layers and an ``evaluate(keep) -> loss`` callable (the loss of the model with the layers in
``keep`` left out of int8, measured on the region's validation data).

1. Sensitivity: the loss with only one layer quantized, for each layer (one evaluation each).
2. Keep the ``k`` most sensitive layers, with ``k`` found by doubling then bisection, so about
   ``2 log2(n)`` more evaluations find the smallest ``k`` that meets the budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._progress import track

log = logging.getLogger("regiontrt.mixed")


@dataclass(frozen=True)
class MixedPrecisionResult:
    """Outcome of :func:`search_mixed_precision`.

    Attributes:
        kept: layers kept in higher precision, most sensitive first.
        loss: loss with those layers kept (``inf`` when nothing was evaluated).
        fits: whether ``loss`` meets the budget.
        sensitivity: loss with only that layer quantized, per layer.
        evaluations: how many candidate models were measured.
    """

    kept: tuple[str, ...]
    loss: float
    fits: bool
    sensitivity: dict[str, float] = field(default_factory=dict)
    evaluations: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept": list(self.kept),
            "loss": self.loss,
            "fits": self.fits,
            "evaluations": self.evaluations,
            "sensitivity": dict(sorted(self.sensitivity.items(), key=lambda kv: -kv[1])),
        }


def search_mixed_precision(
    layers: Sequence[str],
    evaluate: Callable[[frozenset[str]], float],
    budget: float,
    *,
    max_kept: int | None = None,
) -> MixedPrecisionResult:
    """Find a small set of layers to keep out of int8 so the loss meets ``budget``.

    Args:
        layers: the quantized layers (node names).
        evaluate: loss of the model with the given layers kept in higher precision.
        budget: the largest accepted loss.
        max_kept: at most this many layers may be kept (default: all).

    Returns:
        The smallest prefix of the layers sorted by sensitivity that fits, or, when none
        within ``max_kept`` does, the largest one tried with ``fits=False``.
    """
    layers = list(dict.fromkeys(layers))
    limit = len(layers) if max_kept is None else max(0, min(max_kept, len(layers)))
    if not layers or limit == 0:
        return MixedPrecisionResult((), float("inf"), False)
    everything = frozenset(layers)
    sensitivity = {name: float(evaluate(everything - {name}))
                   for name in track(layers, "mixed precision: layer sensitivity")}
    order = sorted(layers, key=lambda n: (-sensitivity[n], layers.index(n)))
    log.info("mixed precision: most sensitive layers: %s", ", ".join(
        f"{n} ({sensitivity[n]:.4g})" for n in order[:5]))
    evaluations = len(layers)
    measured: dict[int, float] = {}

    def loss_at(k: int) -> float:
        nonlocal evaluations
        if k not in measured:
            measured[k] = float(evaluate(frozenset(order[:k])))
            evaluations += 1
            log.debug("mixed precision: keeping %d layers gives loss %.4g (budget %.4g)", k,
                      measured[k], budget)
        return measured[k]

    lo, hi, k = 0, None, 1
    while k <= limit:
        if loss_at(k) <= budget:
            hi = k
            break
        lo, k = k, k * 2
    if hi is None:
        if limit not in measured and lo < limit and loss_at(limit) <= budget:
            hi = limit
        else:
            worst = max(measured)
            return MixedPrecisionResult(
                tuple(order[:worst]), measured[worst], False, sensitivity, evaluations
            )
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if loss_at(mid) <= budget:
            hi = mid
        else:
            lo = mid
    return MixedPrecisionResult(tuple(order[:hi]), measured[hi], True, sensitivity, evaluations)
