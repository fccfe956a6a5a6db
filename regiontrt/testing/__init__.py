"""Test doubles for code that normally needs TensorRT.

:mod:`regiontrt.testing.fake_trt` holds :class:`FakeCudaEngine` and :class:`FakeExecutionContext`,
test doubles of ``trt.ICudaEngine`` and ``trt.IExecutionContext`` whose ``execute_async_v3``
launches a real NVRTC-compiled kernel, plus the enum shims :class:`TensorIOMode` and
:class:`DataType`. :func:`~regiontrt.testing.recording_trt.make_recording_trt` fakes the
builder side of the ``tensorrt`` module and records every call. Importing this package needs no
GPU.
"""

from __future__ import annotations

from regiontrt.testing.fake_trt import (
    DataType,
    FakeCudaEngine,
    FakeExecutionContext,
    IOutputAllocator,
    TensorIOMode,
)
from regiontrt.testing.recording_trt import make_recording_trt

__all__ = [
    "DataType",
    "FakeCudaEngine",
    "FakeExecutionContext",
    "IOutputAllocator",
    "TensorIOMode",
    "make_recording_trt",
]
