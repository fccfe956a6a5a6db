"""What this machine can build and run: local GPU, TensorRT, TensorRT-RTX (never raises)."""

from __future__ import annotations

from regiontrt.backends import Backend, get_backend
from regiontrt.errors import RegionTRTError


def local_gpu() -> str | None:
    """This machine's first GPU as ``"sm89"``, or None without a usable CUDA GPU."""
    try:
        from regiontrt.backends import cuda

        if not cuda.cuda_available():
            return None
        major, minor = cuda.device_compute_capability(0)
    except Exception:  # no cuda-python, no driver: both mean "no GPU" here
        return None
    return f"sm{major}{minor}"


def backend_or_reason(name: str) -> tuple[Backend | None, str]:
    """``(backend, "")`` if ``name``'s package imports here, else ``(None, why not)``."""
    try:
        return get_backend(name), ""
    except (RegionTRTError, ImportError, ValueError) as exc:
        return None, str(exc)


def tensorrt_build_blocker(compute_capabilities: tuple[str, ...] = ()) -> str | None:
    """Why a full-TensorRT plan cannot be built here (None when it can).

    TensorRT builds on and for the GPU it runs on, so it needs the package, a GPU, and (when the
    target names compute capabilities) a GPU among them.
    """
    backend, _ = backend_or_reason("tensorrt")
    if backend is None:
        return "TensorRT is not installed here"
    if getattr(backend, "lean_only", lambda: False)():
        return ("only TensorRT's lean runtime is installed here: it runs version-compatible "
                "plans and cannot build")
    gpu = local_gpu()
    if gpu is None:
        return "no NVIDIA GPU here"
    if compute_capabilities and gpu not in compute_capabilities:
        return f"this GPU is {gpu}, the target wants {', '.join(compute_capabilities)}"
    return None
