"""Aliased input/output tensors and CUDA-graph capturability (issue 23, items 10 and 3).

The test double models both the way TensorRT does: an engine whose output ``y`` aliases input
``x`` (``get_aliased_input_tensor``, TensorRT 10.16+) fails to execute unless both are bound to
one address, and an RTX-like engine built without ``REQUIRE_USER_ALLOCATION`` answers
``is_stream_capturable() == False`` and fails to execute inside a capture. GPU tests are marked
``gpu``; the refusals before any CUDA call run on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cuda.bindings", reason="needs cuda-python (pip install 'regiontrt[cuda]')")

from test_trt_runner import _bare_slot, check, feeds

from regiontrt.backends import cuda
from regiontrt.backends.trt_features import capture_refusal
from regiontrt.backends.trt_runner import RunnerStats, TensorRTRunner
from regiontrt.errors import ArtifactError, CudaError
from regiontrt.testing import FakeCudaEngine


# -- CPU ---------------------------------------------------------------------------------------
def _bound(ctx, addresses):
    assert ctx.set_input_shape("x", (2, 4)) and ctx.set_input_shape("k", (2,))
    for name, ptr in addresses.items():
        assert ctx.set_tensor_address(name, ptr)


def test_the_double_refuses_an_aliased_output_on_its_own_buffer():
    ctx = FakeCudaEngine(aliased=True).create_execution_context()
    _bound(ctx, {"x": 0x7000_0000, "k": 0x7000_1000, "y": 0x7000_2000, "s": 0x7000_3000})
    assert ctx.execute_async_v3(7) is False  # before any kernel: no GPU needed
    assert "aliased with input tensor x" in ctx.errors[-1] and ctx.execute_calls == 0


def test_the_runner_reads_the_aliases_without_cuda():
    runner = TensorRTRunner(FakeCudaEngine(aliased=True), [])
    assert runner._aliases == {"y": "x"}
    assert TensorRTRunner(FakeCudaEngine(), [])._aliases == {}  # None: aliases nothing


@pytest.mark.parametrize(("source", "why"), [("s", "not an input"), ("k", "same dtype")])
def test_an_alias_the_runner_cannot_honour_is_refused_naming_the_tensor(source, why):
    class Engine(FakeCudaEngine):
        def get_aliased_input_tensor(self, name: str) -> str:
            return source if name == "y" else None  # type: ignore[return-value]

    with pytest.raises(ArtifactError, match=rf"output 'y' aliases '{source}'"):
        TensorRTRunner(Engine(), [])


def test_engines_without_the_query_have_no_aliases():
    class Engine(FakeCudaEngine):  # TensorRT 10.0: no get_aliased_input_tensor at all
        def __getattribute__(self, name: str):
            if name == "get_aliased_input_tensor":
                raise AttributeError(name)
            return super().__getattribute__(name)

    assert TensorRTRunner(Engine(), [])._aliases == {}


def test_capture_is_refused_when_the_context_says_it_cannot_be_captured():
    ctx = FakeCudaEngine(stream_capturable=False).create_execution_context()
    refusal = capture_refusal(ctx, 7)
    assert isinstance(refusal, CudaError) and "REQUIRE_USER_ALLOCATION" in str(refusal)
    assert capture_refusal(FakeCudaEngine().create_execution_context(), 7) is None
    assert capture_refusal(object(), 7) is None  # full TensorRT: no such query


def test_a_slot_does_not_capture_what_cannot_be_captured(monkeypatch):
    engine = FakeCudaEngine(stream_capturable=False)
    ctx = engine.create_execution_context()
    _bound(ctx, {"x": 0x7000_0000, "k": 0x7000_1000, "y": 0x7000_2000, "s": 0x7000_3000})
    monkeypatch.setattr(type(ctx), "execute_async_v3", lambda self, stream_handle: True)
    graphs = []
    monkeypatch.setattr(cuda, "CudaGraph", lambda *a: graphs.append(a))
    slot = _bare_slot(ctx)
    slot.allocator = None
    failed = slot.compute(("key",), RunnerStats())
    assert isinstance(failed, CudaError) and graphs == []  # the work ran, no capture tried


# -- GPU ---------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("outputs", ["host", "device"])
def test_an_aliased_output_shares_its_inputs_buffer(outputs):
    engine = FakeCudaEngine(32, 64, aliased=True)
    feed = feeds(9, 33)
    with TensorRTRunner(engine, []) as runner, cuda.DeviceArray.from_host(feed["x"]) as x:
        for value in (feed["x"], x):  # a host array, then a caller's CUDA array
            got = runner.run({"x": value, "k": feed["k"]}, outputs=outputs)
            if outputs == "device":
                arrays, got = got, {n: v.to_host() for n, v in got.items()}
                for array in arrays.values():
                    array.close()
            check(engine, got, feed)
            slot = runner._slots[0]
            assert slot.context.last_addresses["y"] == slot.context.last_addresses["x"]
            assert slot.device["y"] is slot.device["x"]
        # the engine wrote y over x in the runner's buffer, never over the caller's array
        np.testing.assert_array_equal(x.to_host(), feed["x"])
        assert runner.stats.zero_copy_inputs == 0


@pytest.mark.gpu
def test_an_aliased_output_survives_graph_replay_and_profile_growth():
    engine = FakeCudaEngine(aliased=True, profiles=[{"x": ((1, 1), (4, 4), (8, 8))},
                                                    {"x": ((9, 1), (16, 16), (32, 64))}])
    with TensorRTRunner(engine, [], use_cuda_graph=True) as runner:
        for rows, cols in [(4, 4), (4, 4), (20, 60), (20, 60), (3, 8)]:
            feed = feeds(rows, cols)
            check(engine, runner.run(feed), feed)
        assert runner.stats.graph_launches >= 2


@pytest.mark.gpu
def test_an_engine_that_cannot_be_captured_runs_without_a_graph():
    engine = FakeCudaEngine(16, 16, stream_capturable=False)
    feed = feeds(8, 16)
    with TensorRTRunner(engine, [], use_cuda_graph=True) as runner:
        with pytest.warns(RuntimeWarning, match="REQUIRE_USER_ALLOCATION"):
            check(engine, runner.run(feed), feed)
        check(engine, runner.run(feed), feed)
        assert runner.stats.graph_captures == 0 and runner.stats.graph_launches == 0


@pytest.mark.gpu
def test_the_double_fails_inside_a_capture_without_the_flag():
    """What the runner's check prevents: RTX would allocate during the capture."""
    engine = FakeCudaEngine(16, 16, stream_capturable=False)
    feed = feeds(8, 16)
    with TensorRTRunner(engine, []) as runner:
        runner.run(feed)  # sizes and binds everything
        slot = runner._slots[0]
        ctx, stream = slot.context, slot.stream

        def enqueue() -> None:
            if not ctx.execute_async_v3(stream.handle):
                raise CudaError("execute_async_v3 failed during CUDA-graph capture")

        with pytest.raises(CudaError, match="during CUDA-graph capture"):
            cuda.CudaGraph(stream, enqueue)
        assert "REQUIRE_USER_ALLOCATION" in ctx.errors[-1]
