"""What the TensorRT backends need to know about the process and the machine.

* :func:`init_plugins`: TensorRT's plugin library registered once per process and module, before
  any ONNX parse (ops such as RoiAlign or ScatterElements with a reduction map to plugins) and
  before any deserialization (plans that contain plugins do not load otherwise).
* :func:`gpu_count`, :func:`device_sm`, :func:`device_name`: the local GPU through cuda-python,
  never raising, so a CPU-only host simply has no GPU.
* :func:`gpu_problem`: why no GPU is usable, in words, including the one case a user can fix by
  installing something else: a CUDA 13 ``cuda-python`` on a driver older than r580.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

log = logging.getLogger("regiontrt.tensorrt")

_PLUGINS: dict[str, bool] = {}
_PLUGINS_LOCK = threading.Lock()

#: The advice given when the driver is older than the CUDA runtime cuda-python was built for.
OLD_DRIVER_ADVICE = (
    "the NVIDIA driver is older than this cuda-python needs (cuda-python/cuda-bindings 13 and "
    "TensorRT for CUDA 13 need a CUDA 13 driver, r580 or newer): upgrade the driver, or install "
    "the CUDA 12 pairing with pip install 'regiontrt[tensorrt-cu12]' (cuda-python 12 and "
    "tensorrt-cu12)"
)


def init_plugins(trt: Any, logger: Any) -> bool:
    """Register TensorRT's bundled plugins once per process for the module ``trt``.

    Returns whether the plugins are registered. A module without ``init_libnvinfer_plugins``
    (TensorRT-RTX builds without the plugin library) and a failed registration are logged, not
    raised: networks without plugin ops still build and load.
    """
    key = getattr(trt, "__name__", "tensorrt")
    with _PLUGINS_LOCK:
        if key in _PLUGINS:
            return _PLUGINS[key]
        init = getattr(trt, "init_libnvinfer_plugins", None)
        ok = False
        if init is None:
            log.debug("%s has no init_libnvinfer_plugins; plugin ops are unavailable", key)
        else:
            try:
                ok = bool(init(logger, ""))
            except Exception as exc:  # a missing libnvinfer_plugin must not break plugin-free use
                log.warning("%s could not register its plugins: %s", key, exc)
            if not ok:
                log.warning("%s did not register its plugins; ONNX ops that need them will "
                            "fail to build or load", key)
        _PLUGINS[key] = ok
        return ok


def _cudart() -> Any | None:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6.1
    except ImportError:
        return None
    return cudart


def _device_count() -> tuple[int, str | None]:
    """``(count, error name or None)``; never raises."""
    cudart = _cudart()
    if cudart is None:
        return 0, "no-cuda-python"
    try:
        code, count = cudart.cudaGetDeviceCount()
    except Exception as exc:
        return 0, type(exc).__name__
    if int(code) != 0:
        return 0, str(getattr(code, "name", code))
    return int(count or 0), None


def gpu_count() -> int:
    """Number of CUDA devices; 0 without cuda-python, a driver or a GPU (never raises)."""
    return _device_count()[0]


def gpu_problem() -> str | None:
    """Why no CUDA GPU is usable here, in words; ``None`` when one is."""
    count, err = _device_count()
    if count > 0:
        return None
    if err == "no-cuda-python":
        return "cuda-python is not installed (pip install 'regiontrt[cuda]')"
    if err == "cudaErrorInsufficientDriver":
        if _driver_loaded():
            return OLD_DRIVER_ADVICE
        return "no NVIDIA driver was found on this machine"
    if err in (None, "cudaErrorNoDevice"):
        return "no NVIDIA GPU was found"
    return f"CUDA reports {err}"


def _driver_loaded() -> bool:
    """Whether libcuda loads at all (an old driver loads; a CPU-only host has none)."""
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def device_sm(device: int = 0) -> str | None:
    """The compute capability of ``device`` as ``"sm90"``, or ``None`` if there is no GPU."""
    cudart = _cudart()
    if cudart is None or gpu_count() <= device:
        return None
    attr = cudart.cudaDeviceAttr
    try:
        err1, major = cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device)
        err2, minor = cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device)
    except Exception:
        return None
    if int(err1) or int(err2):
        return None
    return f"sm{int(major)}{int(minor)}"


def device_name(device: int = 0) -> str | None:
    """The GPU's marketing name as a file-name slug (``"nvidia-h200"``), or ``None``.

    Two GPUs of one compute capability (an H100 and an H200, or MIG slices) time tactics
    differently and TensorRT refuses each other's timing caches, so cache files carry this too.
    """
    cudart = _cudart()
    if cudart is None or gpu_count() <= device:
        return None
    try:
        err, props = cudart.cudaGetDeviceProperties(device)
    except Exception:
        return None
    if int(err):
        return None
    return slug(props.name)


def slug(name: bytes | str) -> str | None:
    """``b"NVIDIA H200\\x00..."`` -> ``"nvidia-h200"``; ``None`` when nothing is left."""
    text = name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(name, bytes) else name
    out = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return out[:64] or None
