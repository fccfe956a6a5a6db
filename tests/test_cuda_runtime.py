"""The cuda-python layer: error checking, buffers, device pointers; GPU tests marked ``gpu``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("cuda.bindings", reason="needs cuda-python (pip install 'regiontrt[cuda]')")

from cuda.bindings import driver as cuda_driver
from cuda.bindings import runtime as cudart

from regiontrt.backends import cuda
from regiontrt.errors import CudaError, InputError

no_gpu = pytest.mark.skipif(cuda.cuda_available(), reason="checks behaviour without a GPU")


class CAIObject:
    """A minimal producer of ``__cuda_array_interface__``."""

    def __init__(self, ptr, shape, typestr="<f4", strides=None, mask=None, stream=None):
        self.__cuda_array_interface__ = {
            "shape": shape, "typestr": typestr, "data": (ptr, False), "version": 3,
            "strides": strides, "mask": mask, "stream": stream,
        }


class FakeCudaDLPack:
    """Says it lives on CUDA device 0 and hands out a real capsule (numpy's, for parsing)."""

    def __init__(self, array):
        self.array = array
        self.streams = []

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, stream=None):
        self.streams.append(stream)
        return self.array.__dlpack__()


# -- CPU ---------------------------------------------------------------------------------------
def test_cuda_call_unpacks_values():
    ok = cudart.cudaError_t.cudaSuccess
    assert cuda.cuda_call((ok,)) is None
    assert cuda.cuda_call((ok, 7)) == 7
    assert cuda.cuda_call((ok, 1, "a")) == (1, "a")


def test_cuda_call_names_runtime_errors():
    err = cudart.cudaError_t.cudaErrorMemoryAllocation
    with pytest.raises(CudaError, match=r"cudaMalloc\(8\) failed: cudaErrorMemoryAllocation \(2\)"):
        cuda.cuda_call((err, None), what="cudaMalloc(8)")


def test_cuda_call_names_driver_errors_even_without_a_driver():
    with pytest.raises(CudaError, match="CUDA_ERROR_INVALID_VALUE"):
        cuda.cuda_call((cuda_driver.CUresult.CUDA_ERROR_INVALID_VALUE,), what="cuLaunchKernel")


def test_stream_handles_are_read_without_the_deprecated_int():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # int(handle) warns from cuda-bindings 12.9.1 on
        assert cuda.native_handle(cudart.cudaStream_t(1234)) == 1234
        assert cuda.native_handle(cuda_driver.CUstream(4321)) == 4321


def test_interop_names_are_re_exported_by_cuda():
    from regiontrt.backends import cuda_interop

    for name in ("DeviceView", "device_view", "device_pointer", "dlpack_info"):
        assert getattr(cuda, name) is getattr(cuda_interop, name)
        assert name in cuda.__all__


def test_cuda_module_imports_without_cuda_python():
    code = (
        "import sys\n"
        "sys.modules['cuda'] = None  # what a machine without cuda-python looks like\n"
        "from regiontrt.backends import cuda\n"
        "from regiontrt.errors import BackendUnavailable\n"
        "assert cuda.cuda_available() is False\n"
        "try:\n"
        "    cuda.DeviceBuffer(8)\n"
        "except BackendUnavailable as exc:\n"
        "    print('unavailable:', exc)\n"
        "assert cuda.device_pointer([1.0]) is None\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "unavailable: cuda-python is not installed" in out.stdout


class _CountedBuffer(cuda._GrowableBuffer):
    """The shared grow logic with the CUDA calls replaced by a log."""

    _kind = "device"

    def __init__(self, nbytes, log):
        self.log = log
        super().__init__(nbytes)

    def _allocate(self, nbytes):
        self.log.append(("alloc", nbytes))
        return 0x1000 * len(self.log)

    def _deallocate(self, ptr):
        self.log.append(("free", ptr))


def test_growable_buffer_grows_never_shrinks_and_counts():
    log: list = []
    before = cuda.live_allocations()["device"]
    buf = _CountedBuffer(0, log)
    assert (buf.ptr, buf.capacity, buf.nbytes, log) == (0, 0, 0, [])  # nothing for no bytes
    assert buf.ensure(1) is True and (buf.ptr, buf.capacity, buf.nbytes) == (0x1000, 1, 1)
    assert buf.ensure(0) is False and log == [("alloc", 1)]
    assert buf.ensure(100) is True and (buf.ptr, buf.capacity, buf.nbytes) == (0x3000, 100, 100)
    assert buf.ensure(10) is False and (buf.capacity, buf.nbytes) == (100, 10)
    assert cuda.live_allocations()["device"] == before + 1
    with pytest.raises(InputError, match="negative buffer size -1"):
        buf.ensure(-1)
    buf.close()
    buf.close()
    assert log == [("alloc", 1), ("free", 0x1000), ("alloc", 100), ("free", 0x3000)]
    assert buf.ptr == 0 and cuda.live_allocations()["device"] == before
    with pytest.raises(CudaError, match="closed"):
        buf.ensure(1)


@no_gpu
def test_without_driver_nothing_is_available():
    assert cuda.cuda_available() is False


@no_gpu
@pytest.mark.parametrize(
    "make",
    [lambda: cuda.DeviceBuffer(16), lambda: cuda.PinnedBuffer(16), cuda.Stream, cuda.Event,
     lambda: cuda.DeviceArray((2, 3), np.float32),
     lambda: cuda.DeviceArray.from_host(np.ones(3, np.float32)),
     lambda: cuda.device_compute_capability(0), cuda.mem_get_info],
)
def test_without_driver_buffers_raise_a_clear_cuda_error(make):
    before = cuda.live_allocations()
    with pytest.raises(CudaError) as info:
        make()
    msg = str(info.value)
    assert "failed" in msg and "cudaErrorInsufficientDriver" in msg and "no usable NVIDIA" in msg
    assert cuda.live_allocations() == before


def test_device_pointer_reads_cuda_array_interface():
    ptr, shape, dtype = cuda.device_pointer(CAIObject(0x7F0000001000, (4, 5)))
    assert (ptr, shape, dtype) == (0x7F0000001000, (4, 5), np.dtype(np.float32))
    # explicit C-contiguous strides, including a size-1 axis with an arbitrary stride
    obj = CAIObject(0x1000, (3, 1, 2), "<i8", strides=(16, 999, 8))
    assert cuda.device_pointer(obj) == (0x1000, (3, 1, 2), np.dtype(np.int64))
    view = cuda.device_view(CAIObject(0x2000, (2,), stream=12345))
    assert view is not None and view.stream == 12345


@pytest.mark.parametrize(
    ("obj", "match"),
    [(CAIObject(0x1000, (4, 5), strides=(4, 16)), "not C-contiguous"),
     (CAIObject(0x1000, (4,), mask=object()), "masked")],
)
def test_device_pointer_refuses_what_cannot_be_used_in_place(obj, match):
    with pytest.raises(InputError, match=match):
        cuda.device_pointer(obj)


def test_device_pointer_ignores_host_objects():
    assert cuda.device_pointer(np.zeros((2, 2), np.float32)) is None  # DLPack, but on the CPU
    assert cuda.device_pointer([1.0, 2.0]) is None
    assert cuda.device_pointer(3.0) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8, np.uint8, np.int64, np.bool_])
def test_dlpack_capsule_is_parsed_exactly(dtype):
    base = np.arange(24).reshape(4, 6).astype(dtype)
    part = base[1:]  # a data pointer past the allocation's start
    device_type, ptr, device_id, shape, got = cuda.dlpack_info(part.__dlpack__())
    assert (device_type, device_id) == (1, 0)
    assert ptr == part.ctypes.data and shape == (3, 6) and got == np.dtype(dtype)


def test_dlpack_strided_and_foreign_capsules_are_refused():
    with pytest.raises(InputError, match="not C-contiguous"):
        cuda.dlpack_info(np.zeros((3, 4), np.float32).T.__dlpack__())
    with pytest.raises(InputError, match="capsule"):
        cuda.dlpack_info(object())


def test_device_view_reads_cuda_dlpack_producers():
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    producer = FakeCudaDLPack(host)
    view = cuda.device_view(producer)
    assert view is not None
    assert (view.ptr, view.shape, view.dtype) == (host.ctypes.data, (2, 3), np.dtype(np.float32))
    assert producer.streams == [1]  # hand over on the legacy default stream
    assert view.keepalive[0] is producer


# -- GPU ---------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_is_visible():
    assert cuda.cuda_available()
    major, _ = cuda.device_compute_capability(0)
    assert major >= 5
    free, total = cuda.mem_get_info()
    assert 0 < free <= total


@pytest.mark.gpu
def test_async_round_trip_through_pinned_and_device_memory():
    rng = np.random.default_rng(1)
    data = rng.standard_normal(1 << 18).astype(np.float32)
    with cuda.Stream() as stream, cuda.PinnedBuffer(data.nbytes) as src, \
            cuda.PinnedBuffer(data.nbytes) as dst, cuda.DeviceBuffer(data.nbytes) as d1, \
            cuda.DeviceBuffer(data.nbytes) as d2:
        src.array(np.float32, data.shape)[:] = data
        dst.array(np.float32, data.shape)[:] = np.nan  # poison
        d1.copy_from_host_async(src, stream)
        cuda.memcpy_async(d2.ptr, d1.ptr, data.nbytes, 3, stream)
        d2.copy_to_host_async(dst, stream)
        stream.synchronize()
        np.testing.assert_array_equal(dst.array(np.float32, data.shape), data)


@pytest.mark.gpu
def test_device_buffer_grows_and_keeps_small_requests():
    with cuda.DeviceBuffer(1024) as buf:
        ptr = buf.ptr
        assert buf.ensure(512) is False and buf.ptr == ptr and buf.nbytes == 512
        assert buf.ensure(1 << 20) is True and buf.capacity == 1 << 20
    buf.close()  # idempotent
    with pytest.raises(CudaError, match="closed"):
        buf.ensure(1)


@pytest.mark.gpu
def test_events_time_a_copy():
    n = 64 << 20
    with cuda.Stream() as stream, cuda.PinnedBuffer(n) as host, cuda.DeviceBuffer(n) as dev, \
            cuda.Event() as start, cuda.Event() as end:
        start.record(stream)
        dev.copy_from_host_async(host, stream)
        end.record(stream)
        end.synchronize()
        ms = cuda.Event.elapsed_ms(start, end)
    assert 0 < ms < 10_000


@pytest.mark.gpu
def test_device_array_round_trip_and_interface():
    data = np.random.default_rng(2).integers(-100, 100, (7, 9)).astype(np.int32)
    with cuda.DeviceArray.from_host(data) as arr:
        np.testing.assert_array_equal(arr.to_host(), data)
        assert cuda.device_pointer(arr) == (arr.ptr, (7, 9), np.dtype(np.int32))
        cai = arr.__cuda_array_interface__
        assert cai["version"] == 3 and cai["data"] == (arr.ptr, False) and cai["typestr"] == "<i4"
    with pytest.raises(CudaError, match="closed"):
        _ = arr.ptr


@pytest.mark.gpu
def test_cuda_graph_replays_a_captured_copy():
    data = np.arange(4096, dtype=np.float32)
    with cuda.Stream() as stream, cuda.DeviceArray.from_host(data) as src, \
            cuda.DeviceArray.from_host(np.full(4096, -1, np.float32)) as dst:
        def work():
            cuda.memcpy_async(dst.ptr, src.ptr, data.nbytes, 3, stream)

        with cuda.CudaGraph(stream, work) as graph:
            stream.synchronize()
            assert (dst.to_host() == -1).all()  # capturing records the copy, runs nothing
            graph.launch(stream)
            stream.synchronize()
        np.testing.assert_array_equal(dst.to_host(), data)
        assert cuda.live_allocations()["graph"] == 0


@pytest.mark.gpu
def test_failed_capture_leaves_the_stream_usable():
    def broken():
        raise ValueError("enqueue failed")

    with cuda.Stream() as stream:
        with pytest.raises(ValueError, match="enqueue failed"):
            cuda.CudaGraph(stream, broken)
        data = np.arange(256, dtype=np.float32)
        with cuda.DeviceArray.from_host(data) as src, cuda.DeviceArray((256,), np.float32) as dst:
            cuda.memcpy_async(dst.ptr, src.ptr, data.nbytes, 3, stream)
            stream.synchronize()
            np.testing.assert_array_equal(dst.to_host(), data)
    assert cuda.live_allocations()["graph"] == 0


@pytest.mark.gpu
def test_buffers_do_not_leak_over_1000_cycles():
    cuda.DeviceBuffer(1 << 20).close()  # warm up the allocator
    live, (free0, _) = cuda.live_allocations(), cuda.mem_get_info()
    for _ in range(1000):
        with cuda.DeviceBuffer(1 << 20), cuda.PinnedBuffer(1 << 16), cuda.Stream(), cuda.Event():
            pass
    free1, _ = cuda.mem_get_info()
    assert cuda.live_allocations() == live
    assert free1 >= free0 - (8 << 20)  # 1000 leaked MiB buffers would be ~1 GiB


@pytest.mark.gpu
def test_torch_tensors_are_seen_through_dlpack_and_interface():
    torch = pytest.importorskip("torch", reason="needs PyTorch with CUDA for the interop check")
    t = torch.arange(12, dtype=torch.float32, device="cuda").reshape(3, 4)
    assert cuda.device_pointer(t) == (t.data_ptr(), (3, 4), np.dtype(np.float32))
    only_cai = type("C", (), {"__cuda_array_interface__": t.__cuda_array_interface__})()
    assert cuda.device_pointer(only_cai) == (t.data_ptr(), (3, 4), np.dtype(np.float32))
    with pytest.raises(InputError, match="not C-contiguous"):
        cuda.device_pointer(t.T)
    with cuda.DeviceArray.from_host(np.arange(5, dtype=np.float32)) as arr:
        back = torch.as_tensor(arr, device="cuda")
        assert back.data_ptr() == arr.ptr and back.cpu().tolist() == [0, 1, 2, 3, 4]


# -- bfloat16 and float8 through DLPack (their codes; the CUDA Array Interface cannot name them) --
@pytest.mark.parametrize(("name", "code", "bits"), [
    ("bfloat16", 4, 16), ("float8_e4m3fn", 10, 8), ("float8_e5m2", 12, 8),
    ("float8_e8m0fnu", 14, 8), ("float16", 2, 16), ("int64", 0, 64), ("bool", 6, 8)])
def test_dlpack_codes_round_trip(name, code, bits):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from regiontrt.backends.cuda_interop import dlpack_code, dlpack_info, to_dlpack

    dtype = np.dtype(getattr(ml_dtypes, name, None) or name)
    assert dlpack_code(dtype) == (code, bits)
    host = np.zeros((2, 3), dtype)
    capsule = to_dlpack(host.ctypes.data, host.shape, dtype, (1, 0), host)  # kDLCPU memory
    device_type, ptr, device_id, shape, got = dlpack_info(capsule)
    assert (device_type, ptr, device_id, shape, got) == (1, host.ctypes.data, 0, (2, 3), dtype)


def test_numpy_reads_our_capsules_of_host_memory():
    from regiontrt.backends.cuda_interop import to_dlpack

    host = np.arange(6, dtype=np.float32).reshape(2, 3)

    class Producer:  # what numpy.from_dlpack asks of an exporter
        def __dlpack__(self, stream=None, **kw):
            return to_dlpack(host.ctypes.data, host.shape, host.dtype, (1, 0), host)

        def __dlpack_device__(self):
            return (1, 0)

    np.testing.assert_array_equal(np.from_dlpack(Producer()), host)


def test_raw_bytes_have_no_dlpack_code():
    from regiontrt.backends.cuda_interop import dlpack_code

    with pytest.raises(InputError, match="no DLPack type code"):
        dlpack_code(np.dtype("V2"))
