"""Backends: build payloads from precision-compiled ONNX and run them.

``onnxruntime`` (CPU, always present), ``tensorrt`` (TensorRT 10/11, extra ``tensorrt``) and
``tensorrt-rtx`` (TensorRT for RTX, extra ``rtx``). Each is imported only when asked for.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import warnings

from regiontrt.backends.base import (
    Backend,
    BuildRequest,
    BuildResult,
    Runner,
    Timing,
    load_payload,
)
from regiontrt.errors import BackendUnavailable

__all__ = [
    "BACKENDS",
    "Backend",
    "BuildRequest",
    "BuildResult",
    "Runner",
    "Timing",
    "available_backends",
    "backend_names",
    "get_backend",
    "load_payload",
    "payload_formats",
    "register_backend",
]

# name -> (module, class); modules import their heavy packages lazily.
BACKENDS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("regiontrt.backends.onnxruntime", "OnnxRuntimeBackend"),
    "tensorrt": ("regiontrt.backends.tensorrt", "TensorRTBackend"),
    "tensorrt-rtx": ("regiontrt.backends.tensorrt_rtx", "TensorRTRTXBackend"),
}
#: The entry-point group a package names its backends in (``name = "module:Class"``).
ENTRY_POINTS = "regiontrt.backends"
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")


def register_backend(name: str, target: str) -> None:
    """Make a backend known by ``name``: builds, engines, bundles and the CLI then take it.

    A new backend is one module with a :class:`Backend` subclass (``build``, ``load``,
    ``is_available``, ``version``); registering it touches neither the builder, the build
    stages nor the CLI. Packages register theirs without code through the entry-point group
    :data:`ENTRY_POINTS` (``[project.entry-points."regiontrt.backends"]``), read on the first
    lookup of a backend.

    Args:
        name: the backend's name (lowercase letters, digits, ``-`` and ``_``).
        target: ``"module:Class"``, imported when the backend is first used.

    Raises:
        ValueError: a malformed name or target, or a name that is already taken.
    """
    module, sep, cls = target.partition(":")
    if not _NAME.fullmatch(name) or not sep or not module or not cls.isidentifier():
        raise ValueError(f"backend {name!r} -> {target!r}: expected a lowercase name and "
                         "'module:Class'")
    if BACKENDS.get(name, (module, cls)) != (module, cls):
        raise ValueError(f"backend name {name!r} is taken by {':'.join(BACKENDS[name])}")
    BACKENDS[name] = (module, cls)


_ENTRY_POINTS_READ: list[bool] = []


def backend_names() -> tuple[str, ...]:
    """Every known backend: the built-in ones, registered ones and packages' entry points.

    Entry points are read on the first call, not at import (scanning the installed packages
    costs several milliseconds that ``import regiontrt`` should not pay).
    """
    if not _ENTRY_POINTS_READ:
        _ENTRY_POINTS_READ.append(True)
        for entry in importlib.metadata.entry_points(group=ENTRY_POINTS):
            try:
                register_backend(entry.name, entry.value)
            except ValueError as exc:  # one broken package must not break every lookup
                warnings.warn(f"backend entry point {entry.name!r} ignored: {exc}",
                              stacklevel=2)
    return tuple(BACKENDS)


def _backend_class(name: str) -> type[Backend]:
    if name not in backend_names():
        raise ValueError(f"unknown backend {name!r}; known: auto, {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def payload_formats(name: str) -> tuple[str, ...]:
    """The payload formats backend ``name`` runs (``()`` when it cannot be imported here).

    An ONNX payload labelled as a plan must never reach ONNX Runtime, nor a plan a runtime of
    another kind: readers compare the header's ``payload_format`` with this.
    """
    try:
        fmt = getattr(_backend_class(name), "payload_format", None)
    except (ImportError, ValueError, AttributeError):
        return ()
    return (fmt,) if isinstance(fmt, str) else ()


def available_backends() -> list[str]:
    """Backends whose packages import here."""
    out = []
    for name in backend_names():
        try:
            if _backend_class(name).is_available():
                out.append(name)
        except ImportError:
            continue
    return out


def get_backend(name: str = "auto") -> Backend:
    """Instantiate a backend by name.

    ``"auto"`` picks TensorRT when it (with its builder, not the lean runtime alone) and a CUDA
    GPU are present, else ONNX Runtime.

    Raises:
        BackendUnavailable: the backend's package is missing (the message names the extra).
        ValueError: the name is unknown.
    """
    if name == "auto":
        try:
            trt = _backend_class("tensorrt")
            if trt.is_available() and getattr(trt, "gpu_present", lambda: False)() \
                    and not getattr(trt, "lean_only", lambda: False)():
                return trt()
        except ImportError:
            pass
        name = "onnxruntime"
    cls = _backend_class(name)
    if not cls.is_available():
        extra = f"pip install 'regiontrt[{cls.extra}]'" if cls.extra else "its package"
        raise BackendUnavailable(f"backend {name!r} is not installed here; install it with {extra}")
    return cls()
