"""TensorRTRunner against the NVRTC-backed test double; GPU tests are marked ``gpu``."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("cuda.bindings", reason="needs cuda-python (pip install 'regiontrt[cuda]')")

from regiontrt.backends import cuda
from regiontrt.backends.trt_runner import RunnerStats, TensorRTRunner, trt_dtype_to_numpy
from regiontrt.backends.trt_slots import make_allocator
from regiontrt.errors import (
    ArtifactError,
    CudaError,
    InputError,
    ShapeOutOfProfile,
)
from regiontrt.shapes.profiles import Profile, Range
from regiontrt.testing import DataType, FakeCudaEngine, IOutputAllocator

RNG = np.random.default_rng(1234)


def feeds(rows, cols, *, low=-1.0, high=1.0):
    return {"x": RNG.uniform(low, high, (rows, cols)).astype(np.float32),
            "k": RNG.integers(-5, 5, rows).astype(np.int32)}


def check(engine, got, feed, exact_y=True):
    ref = engine.reference(feed["x"], feed["k"])
    assert set(got) == set(ref)
    if exact_y:  # the kernel is compiled without FMA contraction: same IEEE ops as numpy
        np.testing.assert_array_equal(got["y"], ref["y"])
    np.testing.assert_allclose(got["s"], ref["s"], rtol=1e-5, atol=1e-4)
    if "pos" in ref:
        np.testing.assert_array_equal(got["pos"], ref["pos"])


@pytest.fixture
def no_cuda(monkeypatch):
    """Make any CUDA runtime call fail the test."""
    def forbidden():
        raise AssertionError("a CUDA call happened before the shape guard")
    monkeypatch.setattr(cuda, "_rt", forbidden)


# -- CPU ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "expected"), [
    ("FLOAT", np.float32), ("HALF", np.float16), ("INT8", np.int8), ("INT32", np.int32),
    ("INT64", np.int64), ("BOOL", np.bool_), ("UINT8", np.uint8)])
def test_dtype_mapping_by_name(name, expected):
    assert trt_dtype_to_numpy(DataType[name]) == np.dtype(expected)
    assert trt_dtype_to_numpy(f"DataType.{name}") == np.dtype(expected)  # str() of real enums


def test_dtype_mapping_of_real_tensorrt_rtx_enums():
    trt = pytest.importorskip("tensorrt_rtx", reason="needs the tensorrt-rtx package")
    assert trt_dtype_to_numpy(trt.DataType.HALF) == np.float16
    assert trt_dtype_to_numpy(trt.DataType.INT64) == np.int64
    assert trt_dtype_to_numpy(trt.DataType.BF16).itemsize == 2
    assert trt_dtype_to_numpy(trt.DataType.FP8).itemsize == 1


def test_dtype_mapping_refuses_sub_byte_types():
    for name in ("INT4", "FP4"):
        with pytest.raises(InputError, match=name):
            trt_dtype_to_numpy(DataType[name])


def test_runner_reads_io_from_the_engine_without_cuda(no_cuda):
    engine = FakeCudaEngine(data_dependent=True)
    runner = TensorRTRunner(engine, [])
    assert [(s.name, s.dtype, s.shape) for s in runner.inputs] == [
        ("x", np.float32, (None, None)), ("k", np.int32, (None,))]
    assert [s.name for s in runner.outputs] == ["y", "s", "pos"]
    assert engine.contexts_created == 0


@pytest.mark.parametrize(("feed", "error", "match"), [
    (feeds(65, 4), ShapeOutOfProfile, r"x \(65, 4\) not within"),
    (feeds(4, 300), ShapeOutOfProfile, "outside every optimization profile"),
    ({"x": np.zeros((2, 3, 4), np.float32), "k": np.zeros(2, np.int32)}, InputError, "rank"),
    ({"x": np.zeros((2, 3), np.float32)}, InputError, r"missing \['k'\]"),
    ({**feeds(2, 3), "extra": np.zeros(1)}, InputError, r"unknown \['extra'\]"),
])
def test_guard_runs_before_any_cuda_call(no_cuda, feed, error, match):
    engine = FakeCudaEngine(64, 256)
    runner = TensorRTRunner(engine, [])
    with pytest.raises(error, match=match):
        runner.run(feed)
    assert engine.contexts_created == 0 and runner.stats.runs == 0


def test_static_dimensions_are_guarded(no_cuda):
    engine = FakeCudaEngine(8, 8)
    engine._io[0] = ("x", engine._io[0][1], engine._io[0][2], (-1, 4))  # x: (N, 4)
    engine._by_name["x"] = engine._io[0]
    runner = TensorRTRunner(engine, [])
    assert runner.inputs[0].shape == (None, 4)
    with pytest.raises(ShapeOutOfProfile, match=r"contradicts the engine's static shape \(-1, 4\)"):
        runner.run(feeds(2, 5))


def test_guard_on_device_inputs_runs_before_any_cuda_call(no_cuda):
    class Dev:
        def __init__(self, shape, typestr="<f4"):
            self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr,
                                             "data": (0x7000_0000, False), "version": 3}
    runner = TensorRTRunner(FakeCudaEngine(8, 8), [])
    k = np.zeros(4, np.int32)
    with pytest.raises(ShapeOutOfProfile):
        runner.run({"x": Dev((4, 9)), "k": k})
    with pytest.raises(InputError, match="used in place, uncast"):
        runner.run({"x": Dev((4, 4), "<f8"), "k": k})


def test_metadata_profiles_and_engine_profiles_both_guard(no_cuda):
    engine = FakeCudaEngine(profiles=[{"x": ((1, 1), (4, 8), (8, 16))},
                                      {"x": ((9, 1), (32, 64), (64, 256))}])
    narrow = [Profile({"x": Range((1, 1), (2, 2), (4, 4))}),
              Profile({"x": Range((9, 1), (9, 1), (64, 256))})]
    runner = TensorRTRunner(engine, narrow)
    assert runner._plan(feeds(3, 3)).profile == 0
    assert runner._plan(feeds(40, 200)).profile == 1
    with pytest.raises(ShapeOutOfProfile, match=r"profile 0:.*\n.*profile 1:"):
        runner._plan(feeds(6, 6))  # fits engine profile 0, not the metadata's
    wide = [Profile({"x": Range((1, 1), (2, 2), (64, 64))}),
            Profile({"x": Range((9, 1), (9, 1), (64, 256))})]
    with pytest.raises(ShapeOutOfProfile, match="engine profile 0"):
        TensorRTRunner(engine, wide)._plan(feeds(6, 60))  # metadata allows it, the engine not
    with pytest.raises(ArtifactError, match="lists 1 optimization profiles, the engine has 2"):
        TensorRTRunner(engine, narrow[:1])


@pytest.mark.skipif(cuda.cuda_available(), reason="checks behaviour without a GPU")
def test_in_profile_call_without_gpu_raises_a_clear_cuda_error():
    runner = TensorRTRunner(FakeCudaEngine(), [])
    with pytest.raises(CudaError, match="cudaErrorInsufficientDriver"):
        runner.run(feeds(2, 2))
    runner.close()
    runner.close()
    with pytest.raises(InputError, match="closed"):
        runner.run(feeds(2, 2))


def test_close_calls_the_owner_once_then_drops_engine_and_owner():
    calls = []

    class Owner:
        def close(self):
            calls.append(runner._engine is not None)  # the engine is still held

    engine = FakeCudaEngine()
    runner = TensorRTRunner(engine, [], owner=Owner())
    with runner:
        pass
    runner.close()
    assert calls == [True] and runner._engine is None and runner._owner is None


def test_moved_names_are_still_importable_from_trt_runner():
    from regiontrt.backends import trt_slots

    assert trt_dtype_to_numpy is trt_slots.trt_dtype_to_numpy
    assert RunnerStats is trt_slots.RunnerStats
    stats = TensorRTRunner(FakeCudaEngine(), []).stats
    assert isinstance(stats, RunnerStats) and stats.runs == stats.contexts == 0


def test_bad_outputs_argument():
    with pytest.raises(InputError, match="'host' or 'device'"):
        TensorRTRunner(FakeCudaEngine(), []).run(feeds(2, 2), outputs="cpu")


def test_output_allocator_derives_from_the_engine_module_base():
    alloc = make_allocator(FakeCudaEngine())
    assert isinstance(alloc, IOutputAllocator)
    alloc.notify_shape("pos", [3])
    assert alloc.shapes == {"pos": (3,)}


def test_output_allocator_derives_from_real_tensorrt_rtx_base():
    trt = pytest.importorskip("tensorrt_rtx", reason="needs the tensorrt-rtx package")
    fake_engine = type("E", (), {"__module__": trt.IOutputAllocator.__module__})()
    alloc = make_allocator(fake_engine)  # pybind11 needs the base __init__ to have run
    assert isinstance(alloc, trt.IOutputAllocator)
    if not cuda.cuda_available():  # the failure is kept, TensorRT only sees a null pointer
        assert alloc.reallocate_output_async("pos", 0, 64, 256, 0) == 0
        assert isinstance(alloc.error, CudaError)


# -- GPU ---------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_infer_choreography_matches_numpy():
    engine = FakeCudaEngine(64, 256)
    with TensorRTRunner(engine, []) as runner:
        for rows, cols in [(3, 5), (64, 256), (1, 1), (17, 130), (64, 256), (2, 255)]:
            feed = feeds(rows, cols)
            check(engine, runner.run(feed), feed)
        ctx = runner._slots[0].context
        assert ctx.last_stream == runner._slots[0].stream.handle != 0
        assert ctx.last_addresses["y"] == runner._slots[0].device["y"].ptr
        assert runner.stats.runs == 6 and runner.stats.h2d_copies == 12
        assert runner.stats.d2h_copies == 12 and runner.stats.zero_copy_inputs == 0
        shape_calls = ctx.set_shape_calls
        runner.run(feeds(2, 255))  # same shapes: nothing set again
        assert ctx.set_shape_calls == shape_calls


@pytest.mark.gpu
def test_shape_guard_on_gpu_stops_before_any_work():
    engine = FakeCudaEngine(8, 8)
    with TensorRTRunner(engine, []) as runner:
        runner.run(feeds(8, 8))
        ctx = runner._slots[0].context
        before = (ctx.execute_calls, ctx.set_shape_calls, ctx.set_address_calls, runner.stats.runs)
        with pytest.raises(ShapeOutOfProfile):
            runner.run(feeds(9, 8))
        assert (ctx.execute_calls, ctx.set_shape_calls, ctx.set_address_calls,
                runner.stats.runs) == before


@pytest.mark.gpu
def test_device_inputs_are_used_in_place():
    engine = FakeCudaEngine(32, 64)
    feed = feeds(16, 64)
    with TensorRTRunner(engine, []) as runner, cuda.DeviceArray.from_host(feed["x"]) as x:
        got = runner.run({"x": x, "k": feed["k"]})
        check(engine, got, feed)
        assert runner._slots[0].context.last_addresses["x"] == x.ptr
        assert runner.stats.zero_copy_inputs == 1
        assert runner.stats.h2d_copies == 1 and runner.stats.h2d_bytes == feed["k"].nbytes


@pytest.mark.gpu
def test_device_outputs_chain_without_host_round_trip():
    engine = FakeCudaEngine(32, 64)
    feed = feeds(5, 7)
    with TensorRTRunner(engine, []) as runner:
        out = runner.run(feed, outputs="device")
        assert all(isinstance(v, cuda.DeviceArray) for v in out.values())
        assert out["y"].shape == (5, 7) and out["s"].shape == (5,)
        check(engine, {n: v.to_host() for n, v in out.items()}, feed)
        again = runner.run({"x": out["y"], "k": feed["k"]}, outputs="device")
        ref2 = engine.reference(engine.reference(feed["x"], feed["k"])["y"], feed["k"])
        np.testing.assert_array_equal(again["y"].to_host(), ref2["y"])
        assert runner.stats.d2h_copies == 0
        for v in (*out.values(), *again.values()):
            v.close()


@pytest.mark.gpu
def test_time_once_separates_copies_and_compute():
    with TensorRTRunner(FakeCudaEngine(64, 256), []) as runner:
        t = runner.time_once(feeds(64, 256))
    assert t.h2d_ms > 0 and t.compute_ms > 0 and t.d2h_ms > 0
    assert t.total_ms == pytest.approx(t.h2d_ms + t.compute_ms + t.d2h_ms, rel=1e-3, abs=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("contexts", [1, 3])
def test_threads_share_a_runner(contexts):
    engine = FakeCudaEngine(64, 128)
    errors = []
    with TensorRTRunner(engine, [], max_contexts=contexts) as runner:
        def work(seed):
            rng = np.random.default_rng(seed)
            try:
                for _ in range(20):
                    rows, cols = int(rng.integers(1, 65)), int(rng.integers(1, 129))
                    feed = {"x": rng.standard_normal((rows, cols)).astype(np.float32),
                            "k": rng.integers(-3, 3, rows).astype(np.int32)}
                    check(engine, runner.run(feed), feed)
            except BaseException as exc:
                errors.append(exc)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        assert runner.stats.runs == 120
        assert 1 <= runner.stats.contexts == engine.contexts_created <= contexts


@pytest.mark.gpu
def test_profiles_switch_per_call():
    engine = FakeCudaEngine(profiles=[{"x": ((1, 1), (4, 8), (8, 16))},
                                      {"x": ((9, 1), (32, 64), (64, 256))}])
    with TensorRTRunner(engine, []) as runner:
        for rows, cols in [(3, 3), (40, 200), (8, 16), (64, 256), (1, 1)]:
            feed = feeds(rows, cols)
            check(engine, runner.run(feed), feed)
        assert runner._slots[0].context.active_optimization_profile == 0
    narrow = [Profile({"x": Range((1, 1), (2, 2), (4, 32))}),
              Profile({"x": Range((9, 1), (9, 1), (64, 256))})]
    with TensorRTRunner(engine, narrow) as runner:
        feed = feeds(3, 12)
        check(engine, runner.run(feed), feed)
        assert runner._slots[0].device["x"].capacity == 8 * 16 * 4  # the engine's maxima
        with pytest.raises(ShapeOutOfProfile):
            runner.run(feeds(6, 6))  # the engine takes it, the metadata does not


@pytest.mark.gpu
def test_data_dependent_output_through_the_allocator():
    engine = FakeCudaEngine(16, 32, data_dependent=True)
    with TensorRTRunner(engine, []) as runner:
        for rows, cols, low in [(4, 4, -1.0), (16, 32, -0.5), (2, 3, -1.0), (3, 3, -9.0)]:
            feed = feeds(rows, cols, low=low, high=1.0 if low > -9 else -1.0)
            got = runner.run(feed)
            check(engine, got, feed)
        assert got["pos"].shape == (0,)  # the last one has no positive element
        assert runner.data_dependent_outputs == {"pos"}
        feed = feeds(16, 32)
        dev = runner.run(feed, outputs="device")
        check(engine, {n: v.to_host() for n, v in dev.items()}, feed)
        for v in dev.values():
            v.close()


@pytest.mark.gpu
def test_cuda_graph_replay_equals_plain_runs():
    engine = FakeCudaEngine(64, 256)
    # Its own engine for the plain runner: two live contexts may not share an engine's only
    # optimization profile (TensorRT refuses it, and so does the double since issue 23).
    with TensorRTRunner(engine, [], use_cuda_graph=True) as graph_runner, \
            TensorRTRunner(FakeCudaEngine(64, 256), []) as plain:
        batches = [feeds(32, 100) for _ in range(4)] + [feeds(8, 8) for _ in range(3)]
        for feed in batches:
            got = graph_runner.run(feed)
            np.testing.assert_array_equal(got["y"], plain.run(feed)["y"])
            np.testing.assert_array_equal(got["s"], plain.run(feed)["s"])
            check(engine, got, feed)
        ctx = graph_runner._slots[0].context
        # per shape: one plain enqueue + one captured enqueue, then replays only
        assert graph_runner.stats.graph_captures == 2 and ctx.execute_calls == 4
        assert graph_runner.stats.graph_launches == 5
        # one graph per context, for the last shapes (TensorRT state is shape-dependent)
        feed = feeds(32, 100)
        with cuda.DeviceArray.from_host(feed["x"]) as x:  # copied into the graph's buffers
            check(engine, graph_runner.run({"x": x, "k": feed["k"]}), feed)
            assert graph_runner.stats.graph_captures == 3
            check(engine, graph_runner.run({"x": x, "k": feed["k"]}), feed)
        assert graph_runner.stats.graph_launches == 6 and ctx.execute_calls == 6
        assert graph_runner.stats.zero_copy_inputs == 0


@pytest.mark.gpu
def test_capture_graph_api():
    engine = FakeCudaEngine(16, 16)
    with TensorRTRunner(engine, []) as runner:
        feed = feeds(4, 4)
        runner.capture_graph(feed)
        check(engine, runner.run(feed), feed)
        out = runner.run(feed, outputs="device")
        check(engine, {n: v.to_host() for n, v in out.items()}, feed)
        for v in out.values():
            v.close()
        assert runner.stats.graph_captures == 1 and runner.stats.graph_launches == 2


@pytest.mark.gpu
def test_no_device_memory_leak_over_1000_create_close_cycles():
    engine = FakeCudaEngine(64, 256)  # 64 KiB buffers: a leak would show in cudaMemGetInfo
    feed = feeds(64, 256)
    with TensorRTRunner(engine, []) as runner:
        runner.run(feed)  # compile the kernels and warm the allocator
    live, (free0, _) = cuda.live_allocations(), cuda.mem_get_info()
    for i in range(1000):
        runner = TensorRTRunner(engine, [])
        if i % 100 == 0:
            check(engine, runner.run(feed), feed)
        else:
            runner.run(feed)
        runner.close()
    free1, _ = cuda.mem_get_info()
    assert cuda.live_allocations() == live
    assert free1 >= free0 - (4 << 20), (free0 - free1) / 2**20


@pytest.mark.gpu
def test_torch_inputs_zero_copy():
    torch = pytest.importorskip("torch", reason="needs PyTorch with CUDA for the zero-copy check")
    engine = FakeCudaEngine(16, 16)
    feed = feeds(8, 16)
    x = torch.from_numpy(feed["x"]).cuda()
    with TensorRTRunner(engine, []) as runner:
        check(engine, runner.run({"x": x, "k": feed["k"]}), feed)
        assert runner._slots[0].context.last_addresses["x"] == x.data_ptr()
        side = torch.cuda.Stream()  # a producer on another stream: the runner orders after it
        with torch.cuda.stream(side):
            torch.cuda._sleep(10_000_000)  # keep the producer busy for a while
            x2 = x * 2
            got = runner.run({"x": x2, "k": feed["k"]})  # DLPack hands over the stream
        check(engine, got, {"x": feed["x"] * 2, "k": feed["k"]})


# -- where real TensorRT differs: alignment, profile switches, the allocator contract ---------
def _bare_slot(context, device_ptrs=None):
    """A Slot around ``context`` with stand-in stream and buffers (no CUDA call)."""
    import types

    from regiontrt.backends.trt_slots import Slot

    slot = Slot.__new__(Slot)
    slot.context, slot.stream, slot.profile = context, types.SimpleNamespace(handle=7), -1
    slot.shapes, slot.graph, slot.graph_key, slot.wait_event = {}, None, None, None
    slot.device = {n: types.SimpleNamespace(ptr=p) for n, p in (device_ptrs or {}).items()}
    slot.host = {}
    return slot


def test_a_profile_switch_that_raises_becomes_a_cuda_error_without_a_gpu():
    engine = FakeCudaEngine(profiles=[{"x": ((1, 1), (4, 4), (8, 8))},
                                      {"x": ((9, 1), (9, 9), (16, 16))}], failing_profiles=[1])
    slot = _bare_slot(engine.create_execution_context())
    slot.set_profile(0)
    with pytest.raises(CudaError, match="optimization profile 1: Error Code 1") as info:
        slot.set_profile(1)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert slot.profile == -1  # unknown now: the next call switches again
    with pytest.raises(CudaError, match="out of range"):
        slot.set_profile(5)


def test_misaligned_device_views_are_staged_not_bound(monkeypatch):
    from regiontrt.backends.cuda_interop import DeviceView
    from regiontrt.backends.trt_slots import Plan

    copies = []
    monkeypatch.setattr(cuda, "memcpy_async", lambda *a: copies.append(a[:4]))
    slot = _bare_slot(None, {"x": 0x7000_0000, "k": 0x7000_1000})
    f32, i32 = np.dtype(np.float32), np.dtype(np.int32)
    plan = Plan(0, {}, {}, {"x": DeviceView(0x9000_0040, (2, 4), f32, None, None),  # +64 bytes
                            "k": DeviceView(0x9000_0100, (2,), i32, None, None)})  # aligned
    stats = RunnerStats()
    bindings = slot.stage_inputs(plan, False, stats)
    assert bindings == {"x": 0x7000_0000, "k": 0x9000_0100}
    assert copies == [(0x7000_0000, 0x9000_0040, 32, 3)]  # device to device, into our buffer
    assert stats.staged_misaligned == 1 and stats.zero_copy_inputs == 1


def test_output_allocator_never_hands_out_null_for_an_empty_tensor(monkeypatch):
    from regiontrt.backends import trt_alloc

    sizes = []

    class Buffer:
        def __init__(self, nbytes):
            sizes.append(nbytes)
            self.ptr = 0x7000_0000 if nbytes else 0

        def ensure(self, nbytes):
            sizes.append(nbytes)

    monkeypatch.setattr(trt_alloc.cuda, "DeviceBuffer", Buffer)
    alloc = make_allocator(FakeCudaEngine())
    assert alloc.reallocate_output("pos", 0, 0, 256) == 0x7000_0000  # TensorRT: >= 1 byte
    assert alloc.reallocate_output_async("pos", 0, 1, 256, 7) == 0x7000_0000
    assert sizes == [1, 1] and alloc.error is None
    assert alloc.reallocate_output("pos", 0, 64, 512) == 0  # failure: null, error kept
    assert isinstance(alloc.error, CudaError)


def test_max_output_size_is_minus_one_until_shapes_are_set():
    ctx = FakeCudaEngine(16, 32, data_dependent=True).create_execution_context()
    assert ctx.get_max_output_size("pos") == -1
    ctx.set_input_shape("x", (4, 4))
    ctx.set_input_shape("k", (4,))
    assert ctx.get_max_output_size("pos") == 16 * 32 * 8  # the profile's bound, not the call's
    assert ctx.get_max_output_size("x") == -1  # not an output


@pytest.mark.gpu
@pytest.mark.parametrize("library", ["torch", "cupy"])
def test_misaligned_views_from_torch_and_cupy_are_staged(library):
    lib = pytest.importorskip(library, reason=f"needs {library} with CUDA for device views")
    engine = FakeCudaEngine(32, 16)
    feed = feeds(9, 16)
    padded = np.vstack([np.zeros((1, 16), np.float32), feed["x"]])
    if library == "torch":
        whole = lib.from_numpy(padded).cuda()
        aligned, sliced = lib.from_numpy(feed["x"]).cuda(), whole[1:]
    else:
        whole = lib.asarray(padded)
        aligned, sliced = lib.asarray(feed["x"]), whole[1:]
    ptr = cuda.device_view(sliced).ptr
    assert ptr % 256 == 64  # one 16-float row into a 256-aligned allocation
    with TensorRTRunner(engine, []) as runner:
        check(engine, runner.run({"x": sliced, "k": feed["k"]}), feed)
        slot = runner._slots[0]
        assert slot.context.last_addresses["x"] == slot.device["x"].ptr != ptr
        assert slot.context.refused_addresses == []
        assert runner.stats.staged_misaligned == 1 and runner.stats.zero_copy_inputs == 0
        check(engine, runner.run({"x": aligned, "k": feed["k"]}), feed)
        assert runner.stats.zero_copy_inputs == 1  # an aligned view is still used in place


@pytest.mark.gpu
def test_a_failing_profile_switch_is_typed_and_the_runner_recovers():
    engine = FakeCudaEngine(profiles=[{"x": ((1, 1), (4, 8), (8, 16))},
                                      {"x": ((9, 1), (32, 64), (64, 256))}], failing_profiles=[1])
    with TensorRTRunner(engine, []) as runner:
        small, large = feeds(3, 5), feeds(40, 200)
        check(engine, runner.run(small), small)
        with pytest.raises(CudaError, match="optimization profile 1") as info:
            runner.run(large)
        assert isinstance(info.value.__cause__, RuntimeError)
        check(engine, runner.run(small), small)  # the context is still usable
        engine.failing_profiles.clear()
        check(engine, runner.run(large), large)
        assert runner._slots[0].context.active_optimization_profile == 1


@pytest.mark.gpu
def test_the_allocator_contract_of_data_dependent_outputs():
    engine = FakeCudaEngine(16, 32, data_dependent=True)
    with TensorRTRunner(engine, []) as runner:
        none_positive = feeds(3, 3, low=-9.0, high=-1.0)
        got = runner.run(none_positive)
        assert got["pos"].shape == (0,) and got["pos"].dtype == np.int64
        ctx = runner._slots[0].context
        assert ctx.reallocations[-1] == ("pos", 1, 256)  # asked for one byte, got a real one
        feed = feeds(16, 32)
        check(engine, runner.run(feed), feed)
        assert all(size >= 1 and align == 256 for _, size, align in ctx.reallocations)
        assert ctx.max_output_size_calls > 0  # buffers sized from TensorRT's bound
        alloc = runner._slots[0].allocator

        def fail(*args):
            alloc.error = CudaError("out of device memory (injected)")
            return 0

        alloc.reallocate_output_async = fail
        with pytest.raises(CudaError, match="injected"):
            runner.run(feed)  # TensorRT saw a null address: the run fails with our cause
        del alloc.reallocate_output_async
        check(engine, runner.run(feed), feed)
