"""The NVRTC-compiled kernels behind :class:`~regiontrt.testing.fake_trt.FakeExecutionContext`.

Compiled once per device and kept loaded for the process; see :mod:`.fake_trt` for the network
they compute.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from regiontrt.backends.cuda import cuda_call, device_compute_capability
from regiontrt.errors import CudaError

__all__ = ["BLOCK", "kernels", "launch", "ptr"]

_SOURCE = r"""
extern "C" __global__ void affine_relu(const float* x, const int* k, float* y, float* s,
                                       int rows, int cols, float w, float b, int* count) {
    __shared__ float red[128];
    int r = blockIdx.x;
    float acc = 0.f;
    int pos = 0;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = fmaxf(x[r * cols + c] * w + b, 0.f);
        y[r * cols + c] = v;
        acc += v;
        pos += v > 0.f;
    }
    if (count && pos) atomicAdd(count, pos);
    red[threadIdx.x] = acc;
    __syncthreads();
    for (int st = blockDim.x / 2; st > 0; st >>= 1) {
        if (threadIdx.x < st) red[threadIdx.x] += red[threadIdx.x + st];
        __syncthreads();
    }
    if (threadIdx.x == 0) s[r] = red[0] + (float)k[r];
}

extern "C" __global__ void compact_positive(const float* y, long long n, long long* out) {
    long long m = 0;  // one thread keeps the indices in ascending order
    for (long long i = 0; i < n; ++i) if (y[i] > 0.f) out[m++] = i;
}
"""
BLOCK = 128
_KERNELS: dict[int, dict[str, Any]] = {}
_KERNELS_LOCK = threading.Lock()


def kernels() -> dict[str, Any]:
    """Compile (once per device) and load the kernels; they stay loaded for the process."""
    from cuda.bindings import driver, nvrtc
    from cuda.bindings import runtime as cudart

    device = int(cuda_call(cudart.cudaGetDevice(), what="cudaGetDevice"))
    with _KERNELS_LOCK:
        if device in _KERNELS:
            return _KERNELS[device]
        major, minor = device_compute_capability(device)
        prog = cuda_call(nvrtc.nvrtcCreateProgram(_SOURCE.encode(), b"fake_trt.cu", 0, [], []),
                         what="nvrtcCreateProgram")
        try:
            opts = [f"--gpu-architecture=sm_{major}{minor}".encode(), b"--fmad=false"]
            err, = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
            if err:
                size = cuda_call(nvrtc.nvrtcGetProgramLogSize(prog), what="nvrtcGetProgramLogSize")
                log = b" " * size
                cuda_call(nvrtc.nvrtcGetProgramLog(prog, log), what="nvrtcGetProgramLog")
                raise CudaError(f"NVRTC failed to compile the fake engine's kernels: "
                                f"{log.decode(errors='replace')}")
            size = cuda_call(nvrtc.nvrtcGetCUBINSize(prog), what="nvrtcGetCUBINSize")
            cubin = b" " * size
            cuda_call(nvrtc.nvrtcGetCUBIN(prog, cubin), what="nvrtcGetCUBIN")
        finally:
            cuda_call(nvrtc.nvrtcDestroyProgram(prog), what="nvrtcDestroyProgram")
        cuda_call(driver.cuInit(0), what="cuInit")
        image = np.frombuffer(cubin, dtype=np.uint8).copy()  # passed by address, kept alive
        module = cuda_call(driver.cuModuleLoadData(image.ctypes.data), what="cuModuleLoadData")
        _KERNELS[device] = {
            name: cuda_call(driver.cuModuleGetFunction(module, name.encode()),
                            what=f"cuModuleGetFunction({name})")
            for name in ("affine_relu", "compact_positive")
        } | {"module": module}
        return _KERNELS[device]


def launch(fn: Any, grid: int, block: int, stream: int, args: Sequence[np.ndarray]) -> None:
    from cuda.bindings import driver

    params = np.array([a.ctypes.data for a in args], dtype=np.uint64)
    cuda_call(driver.cuLaunchKernel(fn, grid, 1, 1, block, 1, 1, 0, driver.CUstream(stream),
                                    params.ctypes.data, 0), what="cuLaunchKernel")


def ptr(value: int) -> np.ndarray:
    return np.array([value], dtype=np.uint64)
