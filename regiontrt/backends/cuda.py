"""The cuda-python layer: checked calls, streams, events, pinned and device memory.

Every runtime call of ``cuda.bindings`` returns ``(err, *values)``; :func:`cuda_call` checks the
error and turns it into :class:`~regiontrt.errors.CudaError` with the error's name and text, so
no raw tuple ever escapes. Resources (:class:`Stream`, :class:`Event`, :class:`PinnedBuffer`,
:class:`DeviceBuffer`, :class:`DeviceArray`, :class:`CudaGraph`) are freed by ``close()``
(idempotent) or a ``with`` block; ``__del__`` is only a safety net.

Device arrays on foreign objects (:func:`device_view`, :func:`device_pointer`, :func:`dlpack_info`)
are found by :mod:`.cuda_interop`, checked calls live in :mod:`.cuda_calls`; both are re-exported
here. Only the standard library, numpy, :mod:`regiontrt.errors` and those siblings (which import
no more) are imported here;
``cuda.bindings`` is imported on first use, so this module imports on machines without CUDA.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from regiontrt.backends.cuda_calls import _MODULES, _module, cuda_call, native_handle
from regiontrt.backends.cuda_interop import (
    DeviceView,
    device_pointer,
    device_view,
    dlpack_info,
    to_dlpack,
)
from regiontrt.errors import CudaError, InputError

__all__ = [
    "CudaGraph", "DeviceArray", "DeviceBuffer", "DeviceView", "Event", "PinnedBuffer", "Stream",
    "cuda_available", "cuda_call", "device_compute_capability", "device_pointer", "device_view",
    "dlpack_info", "live_allocations", "mem_get_info", "memcpy_async", "native_handle",
    "set_device",
]

_LIVE = {"device": 0, "pinned": 0, "stream": 0, "event": 0, "graph": 0}
_LIVE_LOCK = threading.Lock()
_H2D, _D2H, _D2D = 1, 2, 3  # cudaMemcpyKind values, fixed by the CUDA ABI


def _rt() -> Any:
    return _MODULES.get("runtime") or _module("runtime")


def cuda_available() -> bool:
    """Whether a usable CUDA device is present; never raises."""
    try:
        return int(cuda_call(_rt().cudaGetDeviceCount(), what="cudaGetDeviceCount")) > 0
    except Exception:
        return False


def set_device(device: int) -> None:
    """Make ``device`` current on the calling thread (initializes its primary context)."""
    result = _rt().cudaSetDevice(device)
    if result[0]:  # the message is only formatted on failure: this runs on every inference
        cuda_call(result, what=f"cudaSetDevice({device})")


def device_compute_capability(device: int = 0) -> tuple[int, int]:
    """``(major, minor)`` compute capability of ``device``."""
    rt = _rt()
    attr = rt.cudaDeviceAttr
    major = cuda_call(rt.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device),
                      what="cudaDeviceGetAttribute(major)")
    minor = cuda_call(rt.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device),
                      what="cudaDeviceGetAttribute(minor)")
    return int(major), int(minor)


def mem_get_info() -> tuple[int, int]:
    """``(free, total)`` bytes of the current device."""
    free, total = cuda_call(_rt().cudaMemGetInfo(), what="cudaMemGetInfo")
    return int(free), int(total)


def live_allocations() -> dict[str, int]:
    """How many resources of each kind this module holds now (for leak checks)."""
    with _LIVE_LOCK:
        return dict(_LIVE)


def _count(kind: str, delta: int) -> None:
    with _LIVE_LOCK:
        _LIVE[kind] += delta


def memcpy_async(dst: int, src: int, nbytes: int, kind: int, stream: Stream | int | None) -> None:
    """``cudaMemcpyAsync``; ``kind`` is 1 (host to device), 2 (device to host) or 3."""
    if nbytes:
        handle = stream.raw if isinstance(stream, Stream) else (stream or 0)
        result = _rt().cudaMemcpyAsync(dst, src, nbytes, kind, handle)
        if result[0]:
            cuda_call(result, what=f"cudaMemcpyAsync({nbytes} bytes, kind {kind})")


class _Resource:
    """close() once, context manager, and a __del__ safety net."""

    _closed = True

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the resource; idempotent."""
        if not self._closed:
            self._closed = True
            self._release()

    def _release(self) -> None:
        raise NotImplementedError

    def _check(self) -> None:
        if self._closed:
            raise CudaError(f"this {type(self).__name__} was closed")

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # shutdown may have torn down cuda-python
            self.close()


class Stream(_Resource):
    """A CUDA stream.

    Args:
        non_blocking: ``False`` (default) makes the stream wait for prior work on the legacy
            default stream, which is how a DLPack hand-over on that stream is honoured.
    """

    def __init__(self, non_blocking: bool = False) -> None:
        rt = _rt()
        flags = rt.cudaStreamNonBlocking if non_blocking else rt.cudaStreamDefault
        self.raw = cuda_call(rt.cudaStreamCreateWithFlags(flags), what="cudaStreamCreate")
        self.handle = native_handle(self.raw)
        self._closed = False
        _count("stream", 1)

    def synchronize(self) -> None:
        cuda_call(_rt().cudaStreamSynchronize(self.raw), what="cudaStreamSynchronize")

    def wait(self, event: Event) -> None:
        """Make later work on this stream wait for ``event``."""
        cuda_call(_rt().cudaStreamWaitEvent(self.raw, event.raw, 0), what="cudaStreamWaitEvent")

    def _release(self) -> None:
        _count("stream", -1)
        cuda_call(_rt().cudaStreamDestroy(self.raw), what="cudaStreamDestroy")


class Event(_Resource):
    """A CUDA event with timing enabled."""

    def __init__(self) -> None:
        self.raw = cuda_call(_rt().cudaEventCreate(), what="cudaEventCreate")
        self._closed = False
        _count("event", 1)

    def record(self, stream: Stream | int | None = None) -> None:
        handle = stream.raw if isinstance(stream, Stream) else (stream or 0)
        cuda_call(_rt().cudaEventRecord(self.raw, handle), what="cudaEventRecord")

    def synchronize(self) -> None:
        cuda_call(_rt().cudaEventSynchronize(self.raw), what="cudaEventSynchronize")

    @staticmethod
    def elapsed_ms(start: Event, end: Event) -> float:
        """Milliseconds between two recorded, completed events."""
        return float(cuda_call(_rt().cudaEventElapsedTime(start.raw, end.raw),
                               what="cudaEventElapsedTime"))

    def _release(self) -> None:
        _count("event", -1)
        cuda_call(_rt().cudaEventDestroy(self.raw), what="cudaEventDestroy")


class _GrowableBuffer(_Resource):
    """Memory that grows on demand and never shrinks; zero bytes hold none (``ptr`` is 0).

    Subclasses name their :func:`live_allocations` counter in ``_kind`` and implement
    :meth:`_allocate` and :meth:`_deallocate`.

    Attributes:
        ptr: the address (stable until :meth:`ensure` reallocates).
        nbytes: bytes in use; ``capacity`` is what is allocated.
    """

    _kind = ""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = self.capacity = 0
        self.ptr = 0
        self._closed = False
        self.ensure(nbytes)

    def ensure(self, nbytes: int) -> bool:
        """Grow to at least ``nbytes`` (contents are not kept); True when reallocated."""
        self._check()
        if nbytes < 0:
            raise InputError(f"negative buffer size {nbytes}")
        if nbytes <= self.capacity:
            self.nbytes = nbytes
            return False
        self._free()
        self.ptr = self._allocate(nbytes)  # nbytes > capacity >= 0: never a 0-byte request
        _count(self._kind, 1)
        self.capacity = self.nbytes = nbytes
        return True

    def _allocate(self, nbytes: int) -> int:
        """Allocate ``nbytes`` and return the address; raise :class:`CudaError` on failure."""
        raise NotImplementedError

    def _deallocate(self, ptr: int) -> None:
        raise NotImplementedError

    def _free(self) -> None:
        if self.ptr:
            # forget the pointer and uncount it first: a failed free must not be retried
            ptr, self.ptr, self.capacity = self.ptr, 0, 0
            _count(self._kind, -1)
            self._deallocate(ptr)

    def _release(self) -> None:
        self._free()


class PinnedBuffer(_GrowableBuffer):
    """Page-locked host memory (``cudaMallocHost``), the staging area of async copies.

    Views from :meth:`array` point into this memory: do not use them after :meth:`close`.
    """

    _kind = "pinned"

    def __init__(self, nbytes: int) -> None:
        self._bytes = np.empty(0, np.uint8)
        super().__init__(nbytes)

    def array(self, dtype: Any, shape: Sequence[int]) -> np.ndarray:
        """A numpy view of the first ``prod(shape) * itemsize`` bytes."""
        self._check()
        dt = np.dtype(dtype)
        nbytes = math.prod(shape) * dt.itemsize
        if nbytes > self.capacity:
            raise InputError(f"{nbytes} bytes do not fit a {self.capacity}-byte pinned buffer")
        return self._bytes[:nbytes].view(dt).reshape(shape)

    def _allocate(self, nbytes: int) -> int:
        ptr = int(cuda_call(_rt().cudaMallocHost(nbytes), what=f"cudaMallocHost({nbytes} bytes)"))
        raw = memoryview((ctypes.c_char * nbytes).from_address(ptr)).cast("B")
        self._bytes = np.frombuffer(raw, dtype=np.uint8)
        return ptr

    def _deallocate(self, ptr: int) -> None:
        self._bytes = np.empty(0, np.uint8)
        cuda_call(_rt().cudaFreeHost(ptr), what="cudaFreeHost")


class DeviceBuffer(_GrowableBuffer):
    """Device memory (``cudaMalloc``) that can grow (see :class:`_GrowableBuffer`)."""

    _kind = "device"

    def _allocate(self, nbytes: int) -> int:
        return int(cuda_call(_rt().cudaMalloc(nbytes), what=f"cudaMalloc({nbytes} bytes)"))

    def _deallocate(self, ptr: int) -> None:
        cuda_call(_rt().cudaFree(ptr), what="cudaFree")

    def _span(self, host: PinnedBuffer, nbytes: int | None) -> int:
        self._check()
        n = min(self.nbytes, host.nbytes) if nbytes is None else nbytes
        if n > self.capacity or n > host.capacity:
            raise InputError(f"copy of {n} bytes exceeds a buffer ({self.capacity} device, "
                             f"{host.capacity} host)")
        return n

    def copy_from_host_async(self, pinned: PinnedBuffer, stream: Stream,
                             nbytes: int | None = None) -> None:
        """Enqueue a host-to-device copy from ``pinned`` on ``stream``."""
        memcpy_async(self.ptr, pinned.ptr, self._span(pinned, nbytes), _H2D, stream)

    def copy_to_host_async(self, pinned: PinnedBuffer, stream: Stream,
                           nbytes: int | None = None) -> None:
        """Enqueue a device-to-host copy into ``pinned`` on ``stream``."""
        memcpy_async(pinned.ptr, self.ptr, self._span(pinned, nbytes), _D2H, stream)

class DeviceArray(_Resource):
    """A C-contiguous array in device memory that this object owns.

    It exposes ``__cuda_array_interface__`` (version 3), so CuPy, PyTorch or Numba can wrap it
    without a copy; its work is complete whenever it is handed out (stream ``None``).
    """

    def __init__(self, shape: Sequence[int], dtype: Any) -> None:
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.size = math.prod(self.shape)
        self.nbytes = self.size * self.dtype.itemsize
        self._buffer = DeviceBuffer(self.nbytes)
        self._closed = False

    @classmethod
    def from_host(cls, array: Any, stream: Stream | None = None) -> DeviceArray:
        """Copy a host array to a new device array (synchronously)."""
        host = np.ascontiguousarray(array)
        out = cls(host.shape, host.dtype)
        try:
            cuda_call(_rt().cudaMemcpy(out.ptr, host.ctypes.data, host.nbytes, _H2D),
                      what="cudaMemcpy(host to device)")
        except BaseException:
            out.close()
            raise
        return out

    @property
    def ptr(self) -> int:
        self._check()
        return self._buffer.ptr

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False),
                "version": 3, "strides": None, "stream": None}

    def __dlpack__(self, stream: Any = None, **kwargs: Any) -> Any:
        """A DLPack capsule of this array (its work is complete: ``stream`` needs no wait).

        Unlike the CUDA Array Interface, whose typestr cannot name bfloat16 or float8 (``<V2``),
        DLPack carries their type codes, so ``torch.from_dlpack`` or ``cupy.from_dlpack`` wrap
        such outputs as what they are.
        """
        return to_dlpack(self.ptr, self.shape, self.dtype, self.__dlpack_device__(), self)

    def __dlpack_device__(self) -> tuple[int, int]:
        """``(kDLCUDA, device ordinal)`` of the memory."""
        if not self.nbytes:
            return 2, int(cuda_call(_rt().cudaGetDevice(), what="cudaGetDevice"))
        attrs = cuda_call(_rt().cudaPointerGetAttributes(self.ptr),
                          what="cudaPointerGetAttributes")
        return 2, int(attrs.device)

    def to_host(self) -> np.ndarray:
        """Copy to a new numpy array (synchronously)."""
        out = np.empty(self.shape, self.dtype)
        cuda_call(_rt().cudaMemcpy(out.ctypes.data, self.ptr, self.nbytes, _D2H),
                  what="cudaMemcpy(device to host)")
        return out

    def __repr__(self) -> str:
        state = "closed" if self._closed else hex(self._buffer.ptr)
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, {state})"

    def _release(self) -> None:
        self._buffer.close()


class CudaGraph(_Resource):
    """An instantiated CUDA graph captured from the work ``fn`` enqueues on ``stream``."""

    def __init__(self, stream: Stream, fn: Callable[[], None]) -> None:
        rt = _rt()
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda_call(rt.cudaStreamBeginCapture(stream.raw, mode), what="cudaStreamBeginCapture")
        try:
            fn()
        except BaseException:  # end the capture anyway, or the stream stays unusable
            err, graph = rt.cudaStreamEndCapture(stream.raw)
            if not err and graph is not None:
                rt.cudaGraphDestroy(graph)
            raise
        graph = cuda_call(rt.cudaStreamEndCapture(stream.raw), what="cudaStreamEndCapture")
        try:
            self.raw = cuda_call(rt.cudaGraphInstantiate(graph, 0), what="cudaGraphInstantiate")
        finally:
            cuda_call(rt.cudaGraphDestroy(graph), what="cudaGraphDestroy")
        self._closed = False
        _count("graph", 1)

    def launch(self, stream: Stream) -> None:
        cuda_call(_rt().cudaGraphLaunch(self.raw, stream.raw), what="cudaGraphLaunch")

    def _release(self) -> None:
        _count("graph", -1)
        cuda_call(_rt().cudaGraphExecDestroy(self.raw), what="cudaGraphExecDestroy")
