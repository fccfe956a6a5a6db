"""The output allocator: device memory for outputs whose shapes only the engine knows.

TensorRT calls ``reallocate_output_async`` (or ``reallocate_output``) while it runs an engine
with data-dependent output shapes (NonZero, for instance), with a size of at least one byte even
for an empty tensor, and treats a null address as a failed allocation; then it reports the shape
through ``notify_shape``. :func:`make_allocator` derives the class from the engine module's
``IOutputAllocator``, since TensorRT only accepts its own subclasses.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from regiontrt.backends import cuda
from regiontrt.errors import CudaError

#: ``IExecutionContext.set_tensor_address`` needs this alignment (NVIDIA's documented minimum).
TENSOR_ALIGNMENT = 256


class OutputAllocator:
    """``IOutputAllocator`` protocol: device memory for outputs whose shapes the engine learns
    while running. Errors are kept and re-raised by the runner (TensorRT only sees a null)."""

    def __init__(self) -> None:
        super().__init__()  # pybind11 trampolines (trt.IOutputAllocator) need their __init__
        self.buffers: dict[str, cuda.DeviceBuffer] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.error: BaseException | None = None

    def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
        """Device memory of at least ``size`` bytes for ``tensor_name`` (0 on failure).

        TensorRT asks for at least one byte even for an empty tensor and treats a null address
        as a failed allocation, so a request of 0 still gets a real (1-byte) buffer.
        """
        try:
            if alignment > TENSOR_ALIGNMENT:  # cudaMalloc guarantees 256 bytes
                raise CudaError(f"{tensor_name}: alignment {alignment} > 256 is not supported")
            size = max(int(size), 1)
            buf = self.buffers.get(tensor_name)
            if buf is None:
                buf = self.buffers[tensor_name] = cuda.DeviceBuffer(size)
            else:
                buf.ensure(size)
            self.shapes.pop(tensor_name, None)
            return buf.ptr
        except BaseException as exc:
            self.error = exc
            return 0

    def reallocate_output_async(self, tensor_name: str, memory: int, size: int, alignment: int,
                                stream: int) -> int:
        """:meth:`reallocate_output`; cudaMalloc is synchronous, so the stream is not needed."""
        return self.reallocate_output(tensor_name, memory, size, alignment)

    def notify_shape(self, tensor_name: str, shape: Sequence[int]) -> None:
        self.shapes[tensor_name] = tuple(int(d) for d in shape)

    def close(self) -> None:
        for buf in self.buffers.values():
            buf.close()


_ALLOCATOR_CLASSES: dict[type, type] = {}


def make_allocator(engine: Any) -> Any:
    """An :class:`OutputAllocator` that also derives from the engine module's
    ``IOutputAllocator`` when it has one (TensorRT only accepts its own subclasses)."""
    base = getattr(sys.modules.get(type(engine).__module__), "IOutputAllocator", None)
    base = base if isinstance(base, type) else object
    cls = _ALLOCATOR_CLASSES.get(base)
    if cls is None:
        bases = (OutputAllocator,) if base is object else (OutputAllocator, base)
        cls = _ALLOCATOR_CLASSES[base] = type("RegionTRTOutputAllocator", bases, {})
    return cls()
