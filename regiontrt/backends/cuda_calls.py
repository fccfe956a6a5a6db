"""Checked cuda-python calls: every ``(err, *values)`` result becomes a value or a CudaError.

The TensorRT samples' ``cuda_call`` idea: one function checks the error of any runtime, driver or
NVRTC call and names it. ``cuda.bindings`` is imported on first use (standard library, numpy
and :mod:`regiontrt.errors` only at import), so this imports on machines without CUDA.
"""

from __future__ import annotations

import importlib
from typing import Any

from regiontrt.errors import BackendUnavailable, CudaError

_MODULES: dict[str, Any] = {}


def _module(name: str) -> Any:
    mod = _MODULES.get(name)
    if mod is None:
        try:
            mod = importlib.import_module(f"cuda.bindings.{name}")  # "runtime" or "driver"
        except ImportError:
            raise BackendUnavailable(
                "cuda-python is not installed; install it with pip install 'regiontrt[cuda]'"
            ) from None
        _MODULES[name] = mod
    return mod


def _error_text(err: Any) -> str:
    kind = type(err).__name__
    code = int(err)
    try:
        if kind == "cudaError_t":
            name = _module("runtime").cudaGetErrorName(err)[1].decode()
            text = _module("runtime").cudaGetErrorString(err)[1].decode()
        elif kind == "CUresult":
            name = _module("driver").cuGetErrorName(err)[1].decode()
            text = _module("driver").cuGetErrorString(err)[1].decode()
        elif kind == "nvrtcResult":
            from cuda.bindings import nvrtc

            name = text = nvrtc.nvrtcGetErrorString(err)[1].decode()
        else:
            name = text = getattr(err, "name", str(err))
    except Exception:  # the driver library itself may be missing
        name = text = getattr(err, "name", str(err))
    hint = ""
    if name in ("cudaErrorInsufficientDriver", "cudaErrorNoDevice", "CUDA_ERROR_NO_DEVICE"):
        hint = " (no usable NVIDIA GPU and driver on this machine)"
        if name == "cudaErrorInsufficientDriver":
            from regiontrt.backends.trt_env import (
                gpu_problem,  # stdlib only: tells an old driver from none
            )

            hint = f" (no usable NVIDIA GPU and driver on this machine: {gpu_problem()})"
    return f"{name} ({code}): {text}{hint}"


def cuda_call(result: tuple[Any, ...], *, what: str = "CUDA call") -> Any:
    """Check a cuda-python result ``(err, *values)`` and return the value(s).

    Args:
        result: what a ``cuda.bindings`` runtime, driver or NVRTC call returned.
        what: the operation, for the error message.

    Returns:
        ``None`` for no value, the value for one, else a tuple of them.

    Raises:
        CudaError: the error code is not success; the message names it and explains it.
    """
    err = result[0]
    if err:  # success is 0 in every cuda-python error enum
        raise CudaError(f"{what} failed: {_error_text(err)}")
    if len(result) == 1:
        return None
    return result[1] if len(result) == 2 else result[1:]


def native_handle(obj: Any) -> int:
    """The address behind a cuda-python handle object (a stream for TensorRT's ``int``).

    ``int(obj)`` is deprecated from cuda-bindings 12.9.1 in favour of
    ``cuda.bindings.utils.get_cuda_native_handle``; older releases only have ``int``.
    """
    getter: Any = _MODULES.get("native_handle")
    if getter is None:
        try:
            getter = importlib.import_module("cuda.bindings.utils").get_cuda_native_handle
        except (ImportError, AttributeError):
            getter = int
        _MODULES["native_handle"] = getter
    return int(getter(obj))
