"""The mixed-precision search and the built-in metrics, on synthetic inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regiontrt.precision.mixed import search_mixed_precision
from regiontrt.precision.validation import collate, cosine, get_metric, max_abs, relative_l2, top1


@settings(max_examples=60, deadline=None)
@given(costs=st.lists(st.integers(0, 100), min_size=1, max_size=24),
       budget=st.integers(0, 500))
def test_search_finds_the_smallest_sensitive_prefix(costs, budget):
    layers = [f"l{i}" for i in range(len(costs))]
    cost = dict(zip(layers, costs))

    def evaluate(keep):  # additive loss: each quantized layer adds its cost
        return sum(c for n, c in cost.items() if n not in keep)

    result = search_mixed_precision(layers, evaluate, budget)
    total = sum(costs)
    ordered = sorted(costs, reverse=True)
    # the smallest k whose removal of the k largest costs fits the budget
    need = next((k for k in range(len(costs) + 1) if total - sum(ordered[:k]) <= budget),
                None)
    if need == 0:
        need = 1  # the search starts by keeping one layer (whole-model was measured before)
    assert result.fits == (need is not None)
    if result.fits:
        assert len(result.kept) == need
        assert result.loss <= budget
        assert sorted((cost[n] for n in result.kept), reverse=True) == pytest.approx(
            ordered[:need])
    assert result.evaluations <= len(costs) + 2 * max(1, len(costs)).bit_length() + 2


def test_search_respects_max_kept():
    layers = ["a", "b", "c", "d"]
    result = search_mixed_precision(layers, lambda keep: 4 - len(keep), budget=0.5, max_kept=2)
    assert not result.fits and len(result.kept) == 2


def test_metrics_on_known_values():
    ref = {"y": np.array([[1.0, 0.0], [0.0, 1.0]])}
    same = {"y": ref["y"].copy()}
    flip = {"y": np.array([[0.0, 1.0], [0.0, 1.0]])}
    assert relative_l2(ref, same) == 0 and top1(ref, same) == 0 and cosine(ref, same) == 0
    assert top1(ref, flip) == 0.5
    assert max_abs(ref, flip) == 1.0
    assert relative_l2(ref, flip) == pytest.approx(np.sqrt(2 / 2))
    seq = {"y": np.zeros((2, 5, 3))}
    seq_c = {"y": np.zeros((2, 5, 3))}
    seq_c["y"][0, 0, 1] = 1
    assert top1(seq, seq_c) == pytest.approx(1 / 10)  # per time step


def test_collate_keeps_ragged_batches_as_lists():
    out = collate([{"y": np.zeros((2, 5))}, {"y": np.zeros((3, 7))}])
    assert isinstance(out["y"], list) and len(out["y"]) == 2
    assert collate([{"y": np.zeros((2, 5))}, {"y": np.zeros((3, 5))}])["y"].shape == (5, 5)
    assert relative_l2(out, out) == 0


def test_user_metric_and_unknown_names():
    _, fn = get_metric(lambda r, c: 0.25)
    assert fn({}, {}) == 0.25
    with pytest.raises(ValueError, match="unknown metric"):
        get_metric("bleu")


@settings(max_examples=60, deadline=None)
@given(costs=st.lists(st.integers(0, 100), min_size=1, max_size=40),
       budget=st.integers(0, 500), optimism=st.floats(0.5, 1.0))
def test_ranked_search_with_an_optimistic_screen(costs, budget, optimism):
    layers = [f"l{i}" for i in range(len(costs))]
    cost = dict(zip(layers, costs))
    full_calls = []

    def evaluate(keep):
        full_calls.append(keep)
        return sum(c for n, c in cost.items() if n not in keep)

    def screen(keep):  # a subset's loss: proportional, and optimistic
        return optimism * sum(c for n, c in cost.items() if n not in keep)

    result = search_mixed_precision(layers, evaluate, budget, sensitivity=cost, screen=screen)
    total, ordered = sum(costs), sorted(costs, reverse=True)
    need = next((k for k in range(1, len(costs) + 1) if total - sum(ordered[:k]) <= budget), None)
    assert result.fits == (need is not None)
    if result.fits:
        assert len(result.kept) == need and result.loss <= budget
    # no evaluation spent on ranking; full ones only to confirm (and resume after an optimistic
    # screen), all counted
    assert result.evaluations == len(full_calls)
    assert result.evaluations <= 2 * len(costs).bit_length() + 2
    assert result.screen_evaluations <= 2 * len(costs).bit_length() + 2
