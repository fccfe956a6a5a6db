"""The runner's steady-state call (``regiontrt.backends.trt_replay``) on the GPU test double.

Each test compares the replayed calls with numpy's reference and with what the full path sets on
the context, so a replay that skipped something it needed, or ran with stale state, fails here.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cuda.bindings", reason="needs cuda-python (pip install 'regiontrt[cuda]')")

from regiontrt.backends.trt_runner import TensorRTRunner
from regiontrt.errors import CudaError, InputError
from regiontrt.testing import FakeCudaEngine

RNG = np.random.default_rng(7)
pytestmark = pytest.mark.gpu


def feeds(rows: int, cols: int) -> dict[str, np.ndarray]:
    return {"x": RNG.uniform(-1, 1, (rows, cols)).astype(np.float32),
            "k": RNG.integers(-5, 5, rows).astype(np.int32)}


def check(engine: FakeCudaEngine, got: dict[str, np.ndarray], feed: dict[str, np.ndarray]) -> None:
    ref = engine.reference(feed["x"], feed["k"])
    np.testing.assert_array_equal(got["y"], ref["y"])
    np.testing.assert_allclose(got["s"], ref["s"], rtol=1e-5, atol=1e-4)


def test_same_shapes_replay_new_data_and_set_nothing_again() -> None:
    engine = FakeCudaEngine(16, 32)
    with TensorRTRunner(engine, []) as runner:
        first = feeds(4, 16)
        out_first = runner.run(first)
        slot = runner._slots[0]
        assert slot.replay is not None
        ctx = slot.context
        shape_calls, addresses, executed = ctx.set_shape_calls, dict(ctx.addresses), \
            ctx.execute_calls
        results = []
        for _ in range(5):
            feed = feeds(4, 16)
            results.append((feed, runner.run(feed)))
        for feed, got in results:  # each result is its own array, not a view of the staging
            check(engine, got, feed)
        check(engine, out_first, first)
        assert ctx.set_shape_calls == shape_calls and ctx.addresses == addresses
        assert ctx.execute_calls == executed + 5
        stats = runner.stats
        assert (stats.runs, stats.h2d_copies, stats.d2h_copies) == (6, 12, 12)
        assert stats.h2d_bytes == 6 * (4 * 16 * 4 + 4 * 4)


def test_a_shape_or_profile_change_never_runs_a_stale_replay() -> None:
    engine = FakeCudaEngine(profiles=[{"x": ((1, 1), (4, 8), (8, 16))},
                                      {"x": ((9, 1), (32, 64), (64, 256))}])
    with TensorRTRunner(engine, []) as runner:
        ctx = None
        for rows, cols in [(3, 5), (3, 5), (4, 5), (3, 5), (40, 200), (40, 200), (3, 5), (3, 5)]:
            feed = feeds(rows, cols)
            check(engine, runner.run(feed), feed)
            ctx = runner._slots[0].context
            assert ctx.active_optimization_profile == (1 if rows > 8 else 0)
            assert ctx.shapes["x"] == (rows, cols)
        assert ctx is not None and runner.stats.runs == 8


def test_other_dtypes_and_strided_arrays_give_the_same_answers() -> None:
    engine = FakeCudaEngine(16, 32)
    with TensorRTRunner(engine, []) as runner:
        base = feeds(4, 16)
        check(engine, runner.run(base), base)
        wide = {"x": base["x"].astype(np.float64), "k": base["k"].astype(np.int64)}
        check(engine, runner.run(wide), base)  # cast on the full path
        big = RNG.uniform(-1, 1, (8, 32)).astype(np.float32)
        strided = {"x": big[::2, ::2], "k": base["k"]}
        assert not strided["x"].flags.c_contiguous
        check(engine, runner.run(strided), {"x": np.ascontiguousarray(big[::2, ::2]),
                                            "k": base["k"]})


def test_a_failed_replay_is_a_cuda_error_and_the_next_call_recovers() -> None:
    engine = FakeCudaEngine(16, 32)
    with TensorRTRunner(engine, []) as runner:
        feed = feeds(4, 16)
        runner.run(feed)
        slot = runner._slots[0]
        assert slot.replay is not None
        del slot.context.addresses["y"]  # TensorRT's execute fails on an unbound output
        with pytest.raises(CudaError, match="execute_async_v3 failed"):
            runner.run(feed)
        assert slot.replay is None and slot.addresses == {}
        check(engine, runner.run(feed), feed)  # the full path binds everything again
        assert slot.replay is not None


def test_a_closed_runner_refuses_a_call_that_would_replay() -> None:
    engine = FakeCudaEngine(16, 32)
    runner = TensorRTRunner(engine, [])
    feed = feeds(4, 16)
    runner.run(feed)
    runner.close()
    with pytest.raises(InputError, match="closed"):
        runner.run(feed)
