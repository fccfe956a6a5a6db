"""Test doubles of ``trt.ICudaEngine`` and ``trt.IExecutionContext`` that run real GPU kernels.

Full TensorRT cannot be installed on our machines, so :class:`FakeCudaEngine` and
:class:`FakeExecutionContext` implement the subset of the TensorRT 10/11 Python API that
:class:`~regiontrt.backends.trt_runner.TensorRTRunner` uses, with the bindings' method and
parameter names (``tests/test_tensorrt_conformance.py`` checks them against the compiled modules)
and TensorRT's failure modes: ``set_optimization_profile_async`` raises ``RuntimeError`` (as
TensorRT 10+ does), ``set_tensor_address`` refuses an address that is not 256-byte aligned, the
output allocator is asked for at least one byte even for an empty tensor and a null address fails
the execution, and ``get_max_output_size`` returns -1 until the input shapes are set.
``execute_async_v3`` launches a kernel compiled with NVRTC through cuda-python on exactly the
tensor addresses that were set and on the stream it is given, so addresses, shapes, streams and
synchronization are exercised on real hardware. The "network" is::

    y[i, j] = max(x[i, j] * w + b, 0)          # output "y", float32 (N, C)
    s[i]    = sum_j y[i, j] + k[i]             # output "s", float32 (N,)
    pos     = flat indices where y > 0         # output "pos", int64 (P,), data-dependent

with inputs ``x`` float32 ``(N, C)`` and ``k`` int32 ``(N,)``. ``pos`` exists only with
``data_dependent=True`` and goes through the output allocator, as TensorRT does for NonZero.
Building the engine and shape queries need no GPU; only ``execute_async_v3`` does.
"""

from __future__ import annotations

import contextlib
import enum
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from regiontrt.backends.cuda import DeviceBuffer, PinnedBuffer, cuda_call, memcpy_async
from regiontrt.testing.fake_kernels import BLOCK as _BLOCK
from regiontrt.testing.fake_kernels import kernels as _kernels
from regiontrt.testing.fake_kernels import launch as _launch
from regiontrt.testing.fake_kernels import ptr as _ptr

Shape3 = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


class TensorIOMode(enum.Enum):
    """Shim of ``trt.TensorIOMode``; the runner compares modes by ``.name``."""

    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(enum.Enum):
    """Shim of ``trt.DataType``; the runner maps dtypes by ``.name``."""

    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9
    FP4 = 10
    E8M0 = 11


class IOutputAllocator:
    """Shim of ``trt.IOutputAllocator``: the runner derives its allocator from the engine's
    module's ``IOutputAllocator``, which for this double is this class."""


class FakeCudaEngine:
    """Test double of ``trt.ICudaEngine`` (see the module docstring for its network).

    Args:
        max_rows: largest N of the default profile.
        max_cols: largest C of the default profile.
        profiles: optimization profiles as ``[{"x": (min, opt, max)}, ...]``; ``k`` follows
            ``x``'s first dimension.
        w: the scale of the affine map.
        b: its offset.
        data_dependent: add the output ``pos`` whose shape only the kernel knows.
        failing_profiles: profile indices whose switch fails (TensorRT raises ``RuntimeError``,
            e.g. when another context already uses the profile).
        aliased: output ``y`` aliases input ``x`` (``get_aliased_input_tensor("y") == "x"``,
            TensorRT 10.16+): the kernel writes ``y`` in place over ``x``, and execution fails
            unless both are bound to one address, as TensorRT's does.
        stream_capturable: what ``is_stream_capturable`` answers (TensorRT-RTX); ``False``
            models an RTX engine built without ``REQUIRE_USER_ALLOCATION``, whose execution then
            fails inside a CUDA-graph capture (it would allocate).
    """

    def __init__(self, max_rows: int = 64, max_cols: int = 256, *,
                 profiles: Sequence[Mapping[str, Sequence[Sequence[int]]]] | None = None,
                 w: float = 1.5, b: float = -0.25, data_dependent: bool = False,
                 failing_profiles: Sequence[int] = (), aliased: bool = False,
                 stream_capturable: bool = True) -> None:
        self.failing_profiles = set(failing_profiles)
        self.aliased, self.stream_capturable = aliased, stream_capturable
        specs = profiles or [{"x": ((1, 1), (max_rows, max_cols), (max_rows, max_cols))}]
        self.profiles: list[dict[str, Shape3]] = []
        for spec in specs:
            lo, opt, hi = (tuple(int(d) for d in s) for s in spec["x"])
            self.profiles.append({"x": (lo, opt, hi), "k": (lo[:1], opt[:1], hi[:1])})
        self.w, self.b = float(w), float(b)
        self.data_dependent = data_dependent
        self._io: list[tuple[str, TensorIOMode, DataType, tuple[int, ...]]] = [
            ("x", TensorIOMode.INPUT, DataType.FLOAT, (-1, -1)),
            ("k", TensorIOMode.INPUT, DataType.INT32, (-1,)),
            ("y", TensorIOMode.OUTPUT, DataType.FLOAT, (-1, -1)),
            ("s", TensorIOMode.OUTPUT, DataType.FLOAT, (-1,)),
        ]
        if data_dependent:
            self._io.append(("pos", TensorIOMode.OUTPUT, DataType.INT64, (-1,)))
        self._by_name = {io[0]: io for io in self._io}
        self.contexts_created = 0
        # profile index -> the live context that holds it ("each execution context in concurrent
        # use must use a separate optimization profile"; TensorRT refuses a held profile)
        self._holders: dict[int, weakref.ref[FakeExecutionContext]] = {}
        self._holders_lock = threading.Lock()

    def _claim_profile(self, context: FakeExecutionContext, k: int) -> None:
        """Give profile ``k`` to ``context``; ``RuntimeError`` if another live context holds it,
        with the words TensorRT logs."""
        with self._holders_lock:
            held = self._holders.get(k)
            other = held() if held is not None else None
            if other is not None and other is not context:
                raise RuntimeError(
                    f"Error Code 3: API Usage Error (Profile {k} has been chosen by another "
                    "IExecutionContext. Use another profileIndex or destroy the "
                    "IExecutionContext that use this profile.)")
            for j, ref in list(self._holders.items()):
                if ref() is context or ref() is None:
                    del self._holders[j]
            self._holders[k] = weakref.ref(context)

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.profiles)

    def get_tensor_name(self, index: int) -> str:
        return self._io[index][0]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        io = self._by_name.get(name)
        return io[1] if io else TensorIOMode.NONE

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._by_name[name][2]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._by_name[name][3]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        return list(self.profiles[profile_index][name])

    def is_shape_inference_io(self, name: str) -> bool:
        return False

    def get_aliased_input_tensor(self, name: str) -> str:
        # the bindings return None (a null name) for a tensor that aliases nothing
        return "x" if self.aliased and name == "y" else None  # type: ignore[return-value]

    def reference(self, x: np.ndarray, k: np.ndarray) -> dict[str, np.ndarray]:
        """What the kernels compute, in numpy (float32 throughout, no fused multiply-add)."""
        x32 = np.asarray(x, np.float32)
        y = np.maximum(x32 * np.float32(self.w) + np.float32(self.b), np.float32(0))
        out = {"y": y, "s": y.sum(axis=1, dtype=np.float32) + np.asarray(k, np.float32)}
        if self.data_dependent:
            out["pos"] = np.flatnonzero(y > 0).astype(np.int64)
        return out

    def create_execution_context(self) -> FakeExecutionContext:
        self.contexts_created += 1
        return FakeExecutionContext(self)


class FakeExecutionContext:
    """Test double of ``trt.IExecutionContext`` (TensorRT 10 name-based API).

    Methods return ``False`` where TensorRT would (bad profile, shape outside the profile,
    missing address or shape at execution). Counters record what the runner did.
    """

    def __init__(self, engine: FakeCudaEngine) -> None:
        self.engine = engine
        self.errors: list[str] = []  # what TensorRT would log when a call returns False
        # TensorRT: the first context gets profile 0 implicitly; the others must select an
        # unused profile before they can run (-1 until then)
        try:
            engine._claim_profile(self, 0)
            self.active_optimization_profile = 0
        except RuntimeError:
            self.active_optimization_profile = -1
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.allocators: dict[str, Any] = {}
        self.execute_calls = 0
        self.set_shape_calls = 0
        self.set_address_calls = 0
        self.last_stream: int | None = None
        self.last_addresses: dict[str, int] = {}
        self.refused_addresses: list[tuple[str, int]] = []
        self.reallocations: list[tuple[str, int, int]] = []  # (name, size, alignment) asked for
        self.max_output_size_calls = 0
        self._counter: DeviceBuffer | None = None
        self._count_host: PinnedBuffer | None = None

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        # TensorRT 10+ raises instead of returning False
        if not 0 <= profile_index < self.engine.num_optimization_profiles:
            raise RuntimeError(f"profile index {profile_index} is out of range")
        if profile_index in self.engine.failing_profiles:
            raise RuntimeError(f"Error Code 1: profile {profile_index} cannot be selected")
        self.engine._claim_profile(self, profile_index)
        self.active_optimization_profile = profile_index
        self.shapes.clear()  # TensorRT needs the input shapes again after a switch
        return True

    def set_input_shape(self, name: str, shape: Sequence[int]) -> bool:
        self.set_shape_calls += 1
        if self.engine.get_tensor_mode(name) is not TensorIOMode.INPUT or \
                self.active_optimization_profile < 0:
            return False
        lo, _, hi = self.engine.profiles[self.active_optimization_profile][name]
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(lo) or not all(a <= d <= c for a, d, c in zip(lo, shape, hi)):
            return False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in ("x", "k"):
            return self.shapes.get(name, self.engine.get_tensor_shape(name))
        x = self.shapes.get("x")
        if name == "y":
            return x if x else (-1, -1)
        if name == "s":
            return x[:1] if x else (-1,)
        return (-1,)  # "pos": data-dependent until the kernel has run

    def get_max_output_size(self, name: str) -> int:
        """Upper bound in bytes of an output at the current profile; -1 before input shapes."""
        self.max_output_size_calls += 1
        if self.engine.get_tensor_mode(name) is not TensorIOMode.OUTPUT or self.infer_shapes():
            return -1
        _, _, (rows, cols) = self.engine.profiles[self.active_optimization_profile]["x"]
        return {"y": rows * cols * 4, "s": rows * 4, "pos": rows * cols * 8}[name]

    def infer_shapes(self) -> list[str]:
        missing = [n for n in ("x", "k") if n not in self.shapes]
        if not missing and self.shapes["k"][0] != self.shapes["x"][0]:
            raise RuntimeError(f"inconsistent shapes: x {self.shapes['x']} k {self.shapes['k']}")
        return missing

    @property
    def all_binding_shapes_specified(self) -> bool:
        return not self.infer_shapes()

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.set_address_calls += 1
        if self.engine.get_tensor_mode(name) is TensorIOMode.NONE:
            return False
        if int(memory) % 256:  # TensorRT's documented minimum alignment for tensor addresses
            self.refused_addresses.append((name, int(memory)))
            return False
        self.addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self.addresses.get(name, 0)

    def set_output_allocator(self, name: str, output_allocator: Any) -> bool:
        if self.engine.get_tensor_mode(name) is not TensorIOMode.OUTPUT:
            return False
        if output_allocator is None:
            self.allocators.pop(name, None)
        else:
            self.allocators[name] = output_allocator
        return True

    def get_output_allocator(self, name: str) -> Any:
        return self.allocators.get(name)

    def is_stream_capturable(self, stream: int) -> bool:
        return self.engine.stream_capturable

    def execute_async_v3(self, stream_handle: int) -> bool:
        if self.active_optimization_profile < 0:
            self.errors.append("no optimization profile selected for this context")
            return False
        try:
            if self.infer_shapes():
                return False
        except RuntimeError:
            return False
        if any(n not in self.addresses for n in ("x", "k", "y", "s")):
            return False
        if not self._null_addresses_allowed() or not self._aliases_bound():
            return False
        if not self.engine.stream_capturable and _capturing(stream_handle):
            self.errors.append("the engine needs a runtime allocation, which a CUDA-graph "
                               "capture cannot record (build with REQUIRE_USER_ALLOCATION)")
            return False
        if self.engine.data_dependent and "pos" not in self.allocators:
            return False
        self.execute_calls += 1
        self.last_stream = int(stream_handle)
        self.last_addresses = dict(self.addresses)
        rows, cols = self.shapes["x"]
        kern = _kernels() if rows * cols or self.engine.data_dependent else {}
        counter = 0
        if self.engine.data_dependent:
            if self._counter is None:
                self._counter = DeviceBuffer(4)
                self._count_host = PinnedBuffer(4)
            counter = self._counter.ptr
            from cuda.bindings import runtime as cudart

            cuda_call(cudart.cudaMemsetAsync(counter, 0, 4, stream_handle), what="cudaMemsetAsync")
        if rows * cols:
            a = self.addresses
            args = [_ptr(a["x"]), _ptr(a["k"]), _ptr(a["y"]), _ptr(a["s"]),
                    np.array([rows], np.int32), np.array([cols], np.int32),
                    np.array([self.engine.w], np.float32), np.array([self.engine.b], np.float32),
                    _ptr(counter)]
            _launch(kern["affine_relu"], rows, _BLOCK, stream_handle, args)
        if self.engine.data_dependent:
            return self._run_data_dependent(kern, stream_handle, rows * cols)
        return True

    def _null_addresses_allowed(self) -> bool:
        """TensorRT's enqueue check: a null address only for an empty input (or an output with
        an output allocator, which replaces the address)."""
        for name, ptr in self.addresses.items():
            if ptr or name in self.allocators:
                continue
            if name in ("x", "k") and 0 in self.get_tensor_shape(name):
                continue
            self.errors.append(f"Tensor {name} is bound to nullptr, which is allowed only for an "
                               "empty input tensor, shape tensor, or an output tensor associated "
                               "with an IOuputAllocator.")
            return False
        return True

    def _aliases_bound(self) -> bool:
        """TensorRT: an aliased output must be bound to its input's address."""
        if self.engine.aliased and self.addresses["y"] != self.addresses["x"]:
            self.errors.append("Output tensor y is aliased with input tensor x and must be bound "
                               "to the same address")
            return False
        return True

    def _run_data_dependent(self, kern: dict[str, Any], stream: int, n: int) -> bool:
        # TensorRT syncs to learn a data-dependent size, then asks the allocator for memory.
        from cuda.bindings import runtime as cudart

        assert self._counter is not None and self._count_host is not None
        memcpy_async(self._count_host.ptr, self._counter.ptr, 4, 2, stream)
        cuda_call(cudart.cudaStreamSynchronize(stream), what="cudaStreamSynchronize")
        count = int(self._count_host.array(np.int32, (1,))[0])
        alloc = self.allocators["pos"]
        size = max(count * 8, 1)  # TensorRT never asks for 0 bytes, even for an empty tensor
        self.reallocations.append(("pos", size, 256))
        ptr = int(alloc.reallocate_output_async("pos", self.addresses.get("pos", 0), size,
                                                256, stream) or 0)
        if not ptr:  # TensorRT treats a null address as a failed allocation: enqueue fails
            return False
        self.addresses["pos"] = ptr
        if count:
            _launch(kern["compact_positive"], 1, 1, stream,
                    [_ptr(self.addresses["y"]), np.array([n], np.int64), _ptr(ptr)])
        alloc.notify_shape("pos", (count,))
        return True

    def __del__(self) -> None:
        for buf in (self._counter, self._count_host):
            if buf is not None:
                with contextlib.suppress(Exception):
                    buf.close()


def _capturing(stream: int) -> bool:
    """Whether ``stream`` is being captured into a CUDA graph."""
    from cuda.bindings import runtime as cudart

    status = cuda_call(cudart.cudaStreamIsCapturing(stream), what="cudaStreamIsCapturing")
    return int(status) != int(cudart.cudaStreamCaptureStatus.cudaStreamCaptureStatusNone)
