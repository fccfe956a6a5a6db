"""Contexts, profiles, devices and null addresses: TensorRT's rules, enforced by the test double.

:class:`FakeCudaEngine` (the TensorRT boundary's test double) refuses what TensorRT refuses: a
second context on a held optimization profile, a null output address at enqueue. The runner runs
end to end on the real CUDA runtime (tests marked ``gpu``: they skip without an NVIDIA GPU); the
double's own refusals are checked without one.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from regiontrt.backends import cuda
from regiontrt.backends.cuda_calls import _MODULES
from regiontrt.backends.trt_runner import TensorRTRunner
from regiontrt.errors import CudaError
from regiontrt.testing import FakeCudaEngine

TWO_PROFILES = [{"x": ((0, 1), (4, 8), (8, 16))}, {"x": ((9, 1), (32, 64), (64, 256))}]


@pytest.fixture
def host_cuda(monkeypatch):
    """The real CUDA runtime, with every ``cudaSetDevice`` recorded as ``(call, device, thread)``
    (the name is historical: these tests run on the GPU)."""
    calls: list = []
    real = cuda._rt()

    class Recording:
        def __getattr__(self, name):
            return getattr(real, name)

        def cudaSetDevice(self, device):
            calls.append(("set_device", int(device), threading.get_ident()))
            return real.cudaSetDevice(device)

    monkeypatch.setitem(_MODULES, "runtime", Recording())
    return calls


def empty(rows=0, cols=4):
    return {"x": np.zeros((rows, cols), np.float32), "k": np.zeros((rows,), np.int32)}


# -- 1. one optimization profile per concurrent context --------------------------------------
def test_the_double_refuses_a_second_context_on_a_held_profile():
    engine = FakeCudaEngine(profiles=TWO_PROFILES)
    first, second = engine.create_execution_context(), engine.create_execution_context()
    assert first.active_optimization_profile == 0
    assert second.active_optimization_profile == -1  # must select an unused profile first
    assert not second.set_input_shape("x", (2, 2))
    assert not second.execute_async_v3(7)
    with pytest.raises(RuntimeError, match="Profile 0 has been chosen by another"):
        second.set_optimization_profile_async(0, 7)
    assert second.set_optimization_profile_async(1, 7)
    with pytest.raises(RuntimeError, match="Profile 1 has been chosen"):
        first.set_optimization_profile_async(1, 7)
    del second  # a destroyed context frees its profile
    assert first.set_optimization_profile_async(1, 7)


@pytest.mark.gpu
def test_several_contexts_each_get_their_own_profile(host_cuda):
    engine = FakeCudaEngine(profiles=TWO_PROFILES)
    runner = TensorRTRunner(engine, [], max_contexts=4)
    pool = runner._pool
    assert pool.per_profile
    a, b = pool.acquire(0), pool.acquire(1)  # two calls at once, in different profiles
    assert a is not b
    assert a.context.active_optimization_profile == 0
    assert b.context.active_optimization_profile == 1
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(0)))
    waiter.start()  # a second call in profile 0 waits for the first: same context, later
    time.sleep(0.2)
    assert not got
    pool.release(a, 0)
    waiter.join(5)
    assert got == [a]
    pool.release(a, 0)
    pool.release(b, 1)
    assert engine.contexts_created == 2  # never more contexts than profiles
    runner.close()


@pytest.mark.gpu
def test_a_single_profile_engine_serialises_on_one_context(host_cuda, monkeypatch):
    from regiontrt.testing.fake_trt import FakeExecutionContext

    slow = FakeExecutionContext.execute_async_v3

    def execute(self, stream_handle):  # long enough for the threads' calls to overlap
        time.sleep(0.005)
        return slow(self, stream_handle)

    monkeypatch.setattr(FakeExecutionContext, "execute_async_v3", execute)
    engine = FakeCudaEngine(profiles=[{"x": ((0, 1), (4, 8), (8, 16))}])
    with TensorRTRunner(engine, [], max_contexts=3) as runner:
        errors = []

        def work():
            try:
                for _ in range(20):
                    out = runner.run(empty())
                    assert out["y"].shape == (0, 4) and out["s"].shape == (0,)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        assert engine.contexts_created == 1 and runner.stats.runs == 80


# -- 2. no null output address, even for empty outputs --------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("outputs", ["host", "device"])
def test_empty_outputs_are_bound_to_real_memory(host_cuda, outputs):
    engine = FakeCudaEngine(profiles=[{"x": ((0, 4), (0, 4), (0, 4))}])  # every output empty
    with TensorRTRunner(engine, []) as runner:
        out = runner.run(empty(), outputs=outputs)
        ctx = runner._slots[0].context
        assert ctx.execute_calls == 1 and ctx.errors == []
        assert ctx.last_addresses["y"] and ctx.last_addresses["s"]
        assert out["y"].shape == (0, 4) and out["s"].shape == (0,)
        if outputs == "device":
            for arr in out.values():
                arr.close()


def test_the_double_refuses_a_null_output_address_like_tensorrt():
    ctx = FakeCudaEngine(profiles=[{"x": ((0, 4), (0, 4), (0, 4))}]).create_execution_context()
    assert ctx.set_input_shape("x", (0, 4)) and ctx.set_input_shape("k", (0,))
    for name in ("x", "k", "s"):
        assert ctx.set_tensor_address(name, 0 if name != "s" else 256)
    assert ctx.set_tensor_address("y", 0)  # accepted here; enqueue refuses it
    assert not ctx.execute_async_v3(7)
    assert "Tensor y is bound to nullptr" in ctx.errors[-1]
    assert ctx.set_tensor_address("y", 512)
    assert ctx.execute_async_v3(7)  # empty inputs may be null


@pytest.mark.gpu
def test_a_runner_bound_to_null_fails_typed(host_cuda, monkeypatch):
    engine = FakeCudaEngine(profiles=[{"x": ((0, 4), (0, 4), (0, 4))}])
    real = cuda.DeviceArray.ptr

    with TensorRTRunner(engine, []) as runner:
        runner.run(empty(), outputs="host")
        slot = runner._slots[0]
        monkeypatch.setattr(slot.device["y"], "ptr", 0)  # what the old sizing produced
        slot.addresses.clear()
        slot.replay = None  # a moved buffer drops the steady-state replay along with the addresses
        with pytest.raises(CudaError, match="execute_async_v3 failed"):
            runner.run(empty(), outputs="host")
    assert real is cuda.DeviceArray.ptr


# -- 4. the device is made current in every thread that runs the engine ----------------------
@pytest.mark.gpu
def test_every_thread_that_runs_the_engine_sets_its_device(host_cuda):
    engine = FakeCudaEngine(profiles=[{"x": ((0, 1), (4, 8), (8, 16))}])
    with TensorRTRunner(engine, [], device=0) as runner:
        idents = []

        def work():
            idents.append(threading.get_ident())
            runner.run(empty())

        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    by_thread = {(ident, dev) for _, dev, ident in host_cuda}
    assert {dev for _, dev in by_thread} == {0}  # the runner's device, in every thread
    assert set(idents) <= {ident for ident, _ in by_thread}
