"""Finding the dense device array behind a foreign object: DLPack and CUDA Array Interface.

:func:`device_view` is how :class:`~regiontrt.backends.trt_runner.TensorRTRunner` tells a device
input (used in place, zero-copy) from a host one. DLPack capsules are parsed with ``ctypes``
straight from the ``DLTensor`` layout, so no CUDA library is needed to read them.

Only the standard library, numpy and :mod:`regiontrt.errors` are imported here; the names are
re-exported by :mod:`regiontrt.backends.cuda`, where callers usually find them.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from regiontrt.errors import InputError

__all__ = ["DeviceView", "device_pointer", "device_view", "dlpack_info"]


class DeviceView(NamedTuple):
    """A dense device array found on a foreign object.

    Attributes:
        ptr: device address of the first element.
        shape: its shape.
        dtype: its numpy dtype.
        stream: a stream handle the consumer must order after (``None``: nothing to wait for,
            1: the legacy default stream, 2: the per-thread default stream).
        keepalive: what must stay referenced while the memory is used (a DLPack capsule).
    """

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    stream: int | None
    keepalive: Any


def _is_c_contiguous(shape: tuple[int, ...], strides: Sequence[int], itemsize: int) -> bool:
    expected = itemsize
    for dim, stride in zip(reversed(shape), reversed(strides)):
        if dim > 1 and stride != expected:
            return False
        expected *= dim
    return True


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


_DL_CUDA, _DL_CUDA_MANAGED = 2, 13
_DL_KINDS = {0: "i", 1: "u", 2: "f", 6: "b"}  # kDLInt, kDLUInt, kDLFloat, kDLBool
_CAPSULE_GET = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi)
)


def dlpack_info(capsule: Any) -> tuple[int, int, int, tuple[int, ...], np.dtype]:
    """``(device_type, ptr, device_id, shape, dtype)`` of a legacy ``"dltensor"`` capsule.

    The capsule is only read, never consumed: dropping it lets the producer free its tensor.

    Raises:
        InputError: not a DLPack capsule, a dtype numpy lacks, or a non-contiguous layout.
    """
    try:
        addr = _CAPSULE_GET(capsule, b"dltensor")
    except (ValueError, TypeError):
        raise InputError("not an unconsumed DLPack 'dltensor' capsule") from None
    t = _DLTensor.from_address(addr)  # DLTensor is the first member of DLManagedTensor
    shape = tuple(int(t.shape[i]) for i in range(t.ndim))
    kind = _DL_KINDS.get(t.dtype.code)
    if kind is None or t.dtype.lanes != 1:
        raise InputError(f"DLPack dtype code {t.dtype.code} ({t.dtype.bits} bits, "
                         f"{t.dtype.lanes} lanes) has no numpy equivalent")
    dtype = np.dtype("?" if kind == "b" else f"{kind}{t.dtype.bits // 8}")
    if t.strides:
        strides = [int(t.strides[i]) * dtype.itemsize for i in range(t.ndim)]
        if not _is_c_contiguous(shape, strides, dtype.itemsize):
            raise InputError(f"DLPack tensor of shape {shape} is not C-contiguous")
    ptr = (t.data or 0) + int(t.byte_offset)
    return int(t.device.device_type), ptr, int(t.device.device_id), shape, dtype


def device_view(obj: Any) -> DeviceView | None:
    """The dense device array behind ``obj``, or ``None`` for host objects.

    DLPack comes first when ``__dlpack_device__`` says CUDA: the capsule is asked for with
    ``stream=1`` (the legacy default stream), so the producer orders that stream after its own
    work, and the runner's streams, which are blocking, follow it. Otherwise
    ``__cuda_array_interface__`` is read; its ``stream`` (version 3) is returned for the consumer
    to wait on. Objects with neither are host objects.

    Raises:
        InputError: a device array that is masked, strided or of a dtype numpy lacks.
    """
    dev = getattr(obj, "__dlpack_device__", None)
    if callable(dev) and int(dev()[0]) in (_DL_CUDA, _DL_CUDA_MANAGED):
        try:
            capsule = obj.__dlpack__(stream=1)
        except TypeError:  # producers that predate the stream argument
            capsule = obj.__dlpack__()
        _, ptr, _, shape, dtype = dlpack_info(capsule)
        return DeviceView(ptr, shape, dtype, None, (obj, capsule))
    cai = getattr(obj, "__cuda_array_interface__", None)
    if not isinstance(cai, dict):
        return None
    if cai.get("mask") is not None:
        raise InputError("masked __cuda_array_interface__ arrays are not supported")
    shape = tuple(int(d) for d in cai["shape"])
    dtype = np.dtype(cai["typestr"])
    strides = cai.get("strides")
    if strides is not None and not _is_c_contiguous(shape, strides, dtype.itemsize):
        raise InputError(f"device array of shape {shape} with strides {tuple(strides)} is "
                         "not C-contiguous; make a contiguous copy first")
    stream = cai.get("stream")
    return DeviceView(int(cai["data"][0] or 0), shape, dtype,
                      None if stream is None else int(stream), obj)


def device_pointer(obj: Any) -> tuple[int, tuple[int, ...], np.dtype] | None:
    """``(ptr, shape, dtype)`` of a dense CUDA array (``__cuda_array_interface__`` or DLPack).

    Returns ``None`` for host objects (numpy arrays, lists...). See :func:`device_view`.
    """
    view = device_view(obj)
    return None if view is None else (view.ptr, view.shape, view.dtype)
