"""A host-memory stand-in for ``cuda.bindings.runtime``, for runner tests on machines without a GPU.

It backs "device" and pinned allocations with 256-byte-aligned host memory and performs every
``cudaMemcpyAsync`` synchronously with ``ctypes.memmove``, so the runner's real buffer choreography
(allocation, staging, binding, copies out) runs end to end around the TensorRT test double; only
kernels cannot run (the double launches none for empty tensors). Records ``cudaSetDevice`` calls.
"""

from __future__ import annotations

import ctypes
import threading
import types

import numpy as np


def make_host_cudart(calls: list | None = None) -> types.SimpleNamespace:
    """A fake ``cudart`` module; ``calls`` (if given) receives ``("set_device", n)`` entries."""
    blocks: dict[int, np.ndarray] = {}
    state = threading.local()
    log = calls if calls is not None else []

    def alloc(nbytes):
        raw = np.zeros(int(nbytes) + 256, np.uint8)
        ptr = raw.ctypes.data
        ptr += -ptr % 256
        blocks[ptr] = raw
        return 0, ptr

    def free(ptr):
        return (0,) if blocks.pop(int(ptr), None) is not None else (1,)

    def set_device(n):
        state.device = int(n)
        log.append(("set_device", int(n), threading.get_ident()))
        return (0,)

    def memcpy_async(dst, src, nbytes, kind, stream):
        ctypes.memmove(int(dst), int(src), int(nbytes))
        return (0,)

    counter = iter(range(1, 1 << 30))
    ok = lambda *a: (0,)  # noqa: E731
    return types.SimpleNamespace(
        blocks=blocks, cudaStreamDefault=0, cudaStreamNonBlocking=1,
        cudaSetDevice=set_device, cudaGetDevice=lambda: (0, getattr(state, "device", 0)),
        cudaGetDeviceCount=lambda: (0, 1),
        cudaStreamCreateWithFlags=lambda flags: (0, next(counter) * 16),
        cudaStreamSynchronize=ok, cudaStreamDestroy=ok, cudaStreamWaitEvent=ok,
        cudaEventCreate=lambda: (0, next(counter)), cudaEventRecord=ok, cudaEventDestroy=ok,
        cudaEventSynchronize=ok, cudaEventElapsedTime=lambda a, b: (0, 0.0),
        cudaMalloc=alloc, cudaFree=free, cudaMallocHost=alloc, cudaFreeHost=free,
        cudaMemcpyAsync=memcpy_async,
    )
