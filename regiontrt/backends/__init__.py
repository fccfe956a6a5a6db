"""Backends: build payloads from precision-compiled ONNX and run them.

``onnxruntime`` (CPU, always present), ``tensorrt`` (TensorRT 10/11, extra ``tensorrt``) and
``tensorrt-rtx`` (TensorRT for RTX, extra ``rtx``). Each is imported only when asked for.
"""

from __future__ import annotations

import importlib

from ..errors import BackendUnavailable
from .base import Backend, BuildRequest, BuildResult, Runner, Timing

__all__ = [
    "BACKENDS",
    "Backend",
    "BuildRequest",
    "BuildResult",
    "Runner",
    "Timing",
    "available_backends",
    "get_backend",
]

# name -> (module, class); modules import their heavy packages lazily.
BACKENDS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("regiontrt.backends.onnxruntime", "OnnxRuntimeBackend"),
    "tensorrt": ("regiontrt.backends.tensorrt", "TensorRTBackend"),
    "tensorrt-rtx": ("regiontrt.backends.tensorrt_rtx", "TensorRTRTXBackend"),
}


def _backend_class(name: str) -> type[Backend]:
    try:
        module, cls = BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown backend {name!r}; known: auto, {', '.join(BACKENDS)}"
        ) from None
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def available_backends() -> list[str]:
    """Backends whose packages import here."""
    out = []
    for name in BACKENDS:
        try:
            if _backend_class(name).is_available():
                out.append(name)
        except ImportError:
            continue
    return out


def get_backend(name: str = "auto") -> Backend:
    """Instantiate a backend by name.

    ``"auto"`` picks TensorRT when it and a CUDA GPU are present, else ONNX Runtime.

    Raises:
        BackendUnavailable: the backend's package is missing (the message names the extra).
        ValueError: the name is unknown.
    """
    if name == "auto":
        try:
            trt = _backend_class("tensorrt")
            if trt.is_available() and getattr(trt, "gpu_present", lambda: False)():
                return trt()
        except ImportError:
            pass
        name = "onnxruntime"
    cls = _backend_class(name)
    if not cls.is_available():
        extra = f"pip install 'regiontrt[{cls.extra}]'" if cls.extra else "its package"
        raise BackendUnavailable(f"backend {name!r} is not installed here; install it with {extra}")
    return cls()
