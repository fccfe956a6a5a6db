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

__all__ = ["DL_EXOTIC", "DeviceView", "device_pointer", "device_view", "dlpack_code", "dlpack_info",
           "to_dlpack"]


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
#: DLDataTypeCode of the types numpy lacks (dlpack.h 1.x: kDLBfloat = 4, kDLFloat8_e4m3fn = 10,
#: kDLFloat8_e5m2 = 12, kDLFloat8_e8m0fnu = 14), with their ml_dtypes name and bits.
DL_EXOTIC = {4: ("bfloat16", 16), 10: ("float8_e4m3fn", 8), 12: ("float8_e5m2", 8),
             14: ("float8_e8m0fnu", 8)}
_DL_CODE_OF = {name: (code, bits) for code, (name, bits) in DL_EXOTIC.items()}


def _exotic_dtype(code: int, bits: int) -> np.dtype | None:
    """The numpy dtype of DLPack's bfloat16/float8 codes (ml_dtypes; raw bytes without it)."""
    entry = DL_EXOTIC.get(code)
    if entry is None or entry[1] != bits:
        return None
    try:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, entry[0]))
    except (ImportError, AttributeError):
        return np.dtype(f"V{bits // 8}")


def dlpack_code(dtype: np.dtype) -> tuple[int, int]:
    """``(DLDataTypeCode, bits)`` of a numpy (or ml_dtypes) dtype.

    Raises:
        InputError: a dtype DLPack has no code for (raw bytes ``V2`` included: name it).
    """
    dtype = np.dtype(dtype)
    if dtype.name in _DL_CODE_OF:
        return _DL_CODE_OF[dtype.name]
    kinds = {"i": 0, "u": 1, "f": 2, "b": 6}
    if dtype.kind in kinds:
        return kinds[dtype.kind], dtype.itemsize * 8
    raise InputError(f"dtype {dtype} has no DLPack type code")
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
    exotic = _exotic_dtype(t.dtype.code, t.dtype.bits) if kind is None else None
    if (kind is None and exotic is None) or t.dtype.lanes != 1:
        raise InputError(f"DLPack dtype code {t.dtype.code} ({t.dtype.bits} bits, "
                         f"{t.dtype.lanes} lanes) has no numpy equivalent")
    dtype = exotic if exotic is not None else np.dtype(
        "?" if kind == "b" else f"{kind}{t.dtype.bits // 8}")
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


# -- producing DLPack capsules (legacy "dltensor"), for dtypes the CUDA Array Interface cannot name
_DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", _DELETER)]


_LIVE: dict[int, Any] = {}  # address of each exported DLManagedTensor -> what keeps it valid


def _delete(addr: int) -> None:
    _LIVE.pop(int(addr), None)


_DELETE = _DELETER(_delete)
_NAME = ctypes.create_string_buffer(b"dltensor")
_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype, _capsule_new.argtypes = ctypes.py_object, [ctypes.c_void_p] * 3
_capsule_valid = ctypes.pythonapi.PyCapsule_IsValid
_capsule_valid.restype, _capsule_valid.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]
_capsule_ptr = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_ptr.restype, _capsule_ptr.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _destroy_capsule(capsule: int) -> None:
    # a consumer renames the capsule "used_dltensor" and calls the deleter itself; an unconsumed
    # capsule frees its tensor here
    if _capsule_valid(capsule, b"dltensor"):
        _delete(_capsule_ptr(capsule, b"dltensor"))


def to_dlpack(ptr: int, shape: tuple[int, ...], dtype: np.dtype, device: tuple[int, int],
              owner: Any) -> Any:
    """A legacy DLPack ``"dltensor"`` capsule of the dense C-order array at ``ptr``.

    ``owner`` stays referenced until the consumer calls the deleter (or the unconsumed capsule is
    dropped). bfloat16 and float8 get their DLPack codes (:data:`DL_EXOTIC`), so PyTorch, CuPy
    or JAX wrap them as what they are.

    Raises:
        InputError: a dtype DLPack has no code for.
    """
    code, bits = dlpack_code(dtype)
    dims = (ctypes.c_int64 * max(len(shape), 1))(*shape)
    managed = _DLManagedTensor()
    t = managed.dl_tensor
    t.data, t.ndim, t.byte_offset = ptr or None, len(shape), 0
    t.device = _DLDevice(int(device[0]), int(device[1]))
    t.dtype = _DLDataType(code, bits, 1)
    t.shape = ctypes.cast(dims, ctypes.POINTER(ctypes.c_int64))
    t.strides = None  # C order
    managed.deleter = _DELETE
    addr = ctypes.addressof(managed)
    _LIVE[addr] = (managed, dims, owner)
    return _capsule_new(addr, ctypes.addressof(_NAME),
                        ctypes.cast(_destroy_capsule, ctypes.c_void_p).value)
