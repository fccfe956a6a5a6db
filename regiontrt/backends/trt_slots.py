"""The per-context and per-call state behind :class:`~regiontrt.backends.trt_runner.TensorRTRunner`.

:class:`Slot` (one execution context with its stream, events, buffers, bindings and CUDA graph),
:class:`OutputAllocator` (data-dependent outputs), :class:`Plan` (one call's checked inputs),
:class:`RunnerStats` and the dtype mapping. Internal to the TensorRT backend: :mod:`.trt_runner`
re-exports the public names (:func:`trt_dtype_to_numpy`, :class:`RunnerStats`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from regiontrt.backends import cuda
from regiontrt.backends.trt_alloc import TENSOR_ALIGNMENT, OutputAllocator, make_allocator
from regiontrt.backends.trt_features import capture_refusal
from regiontrt.errors import CudaError, InputError, ShapeOutOfProfile
from regiontrt.graph.io import TensorSpec
from regiontrt.shapes.profiles import Profile, Range

if TYPE_CHECKING:
    import tensorrt

__all__ = [  # OutputAllocator and make_allocator live in .trt_alloc
    "TENSOR_ALIGNMENT", "OutputAllocator", "Plan", "RunnerStats", "Slot", "dims", "engine_profile",
    "infer_shapes", "make_allocator", "trt_dtype_to_numpy",
]
_NUMPY = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32",
          "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "DOUBLE": "float64"}
# (ml_dtypes name, itemsize): without ml_dtypes these travel as raw bytes of the right size.
_EXOTIC = {"BF16": ("bfloat16", 2), "FP8": ("float8_e4m3fn", 1), "E8M0": ("float8_e8m0fnu", 1)}


def trt_dtype_to_numpy(dtype: Any) -> np.dtype:
    """The numpy dtype of a TensorRT ``DataType`` (real or shim), looked up by name.

    Raises:
        InputError: a sub-byte type (INT4, FP4) that cannot be an addressable I/O buffer.
    """
    name = str(getattr(dtype, "name", dtype)).rsplit(".", 1)[-1].upper()
    if name in _NUMPY:
        return np.dtype(_NUMPY[name])
    if name in _EXOTIC:
        ml_name, size = _EXOTIC[name]
        try:
            import ml_dtypes

            return np.dtype(getattr(ml_dtypes, ml_name))
        except (ImportError, AttributeError):
            return np.dtype(f"V{size}")
    raise InputError(f"TensorRT data type {name} has no byte-addressable numpy equivalent; "
                     "engines with such inputs or outputs cannot run here")


@dataclass
class RunnerStats:
    """What a runner did (for tests and benchmarks)."""

    runs: int = 0
    h2d_copies: int = 0
    h2d_bytes: int = 0
    d2h_copies: int = 0
    d2h_bytes: int = 0
    zero_copy_inputs: int = 0
    staged_misaligned: int = 0  # device inputs copied because TensorRT needs 256-byte alignment
    graph_captures: int = 0
    graph_launches: int = 0
    contexts: int = 0

    def add(self, other: RunnerStats) -> None:
        for name in _STAT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


_STAT_FIELDS = tuple(f.name for f in fields(RunnerStats))


@dataclass
class Plan:
    """One call's inputs after the guard: profile index, shapes, host arrays, device views."""

    profile: int
    shapes: dict[str, tuple[int, ...]]
    host: dict[str, np.ndarray]
    views: dict[str, cuda.DeviceView]


def dims(shape: Any) -> tuple[int, ...]:
    """A ``trt.Dims`` (or any sequence) as a tuple, by index (the stubs give ``Dims`` no
    ``__iter__``)."""
    return tuple(int(shape[i]) for i in range(len(shape)))


def engine_profile(engine: Any, inputs: Sequence[TensorSpec], k: int) -> Profile:
    """Profile ``k`` as the engine reports it (static inputs are checked elsewhere)."""
    ranges = {}
    for spec in inputs:
        if not spec.is_dynamic:
            continue
        shapes = [tuple(int(d) for d in x) for x in engine.get_tensor_profile_shape(spec.name, k)]
        if len(shapes) == 3 and all(len(x) == spec.rank and min(x, default=0) >= 0
                                    for x in shapes):
            ranges[spec.name] = Range(*shapes)
    return Profile(ranges)


def infer_shapes(ctx: Any) -> None:
    """Let the context infer every shape; :class:`InputError` if TensorRT rejects or cannot."""
    infer = getattr(ctx, "infer_shapes", None)
    try:
        missing = infer() if infer else ([] if ctx.all_binding_shapes_specified else ["?"])
    except RuntimeError as exc:  # TensorRT raises on inconsistent input shapes
        raise InputError(f"TensorRT rejects these input shapes: {exc}") from None
    if missing:
        raise InputError(f"TensorRT cannot infer shapes; not specified: {list(missing)}")


class Slot:
    """One execution context (``create_context(engine)``) with its stream, four timing events,
    buffers and caches. The runner hands a slot to one call at a time, so nothing here locks."""

    #: Inputs always copied into the slot's own buffer: an aliased output is written over them.
    copied: frozenset[str] = frozenset()

    def __init__(self, create_context: Callable[[Any], Any], engine: Any) -> None:
        self.context: tensorrt.IExecutionContext | Any = None
        self.stream: cuda.Stream | None = None
        self.events: list[cuda.Event] = []
        self.device: dict[str, cuda.DeviceBuffer] = {}
        self.host: dict[str, cuda.PinnedBuffer] = {}
        self.allocator: Any = None
        self.graph: cuda.CudaGraph | None = None
        self.graph_key: Any = None
        self.wait_event: cuda.Event | None = None
        self.stats = RunnerStats()
        self.profile = -1
        self.sized: set[int] = set()
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.out_shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.views: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
        self.replay: Any = None  # a .trt_replay.Replay of the state below; dropped when it changes
        try:
            self.context = create_context(engine)
            if self.context is None:
                raise CudaError("TensorRT could not create an execution context "
                                "(out of device memory?)")
            self.stream = cuda.Stream()
            self.events = [cuda.Event() for _ in range(4)]
        except BaseException:
            self.close()
            raise

    def view(self, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A cached numpy view of pinned buffer ``name`` (cleared when buffers reallocate)."""
        view = self.views.get((name, shape))
        if view is None:
            if len(self.views) > 1024:
                self.views.clear()
            view = self.views[(name, shape)] = self.host[name].array(dtype, shape)
        return view

    def pinned(self, name: str, nbytes: int) -> cuda.PinnedBuffer:
        """Pinned buffer ``name``, made or grown to ``nbytes`` (a reallocation drops the views)."""
        host = self.host.get(name)
        if host is None:
            host = self.host[name] = cuda.PinnedBuffer(nbytes)
        elif host.ensure(nbytes):
            self.views.clear()
            self.replay = None
        return host

    def grow(self, sizes: Mapping[str, int], aliases: Mapping[str, str] | None = None) -> None:
        """Make or grow the device and pinned buffers of ``sizes`` (name to bytes); a device
        buffer that moved invalidates the bound addresses and the captured graph. ``aliases``
        (output to input) gives each aliased output its input's device buffer."""
        grew = False
        for name, nbytes in sizes.items():
            if name in self.device:
                grew = self.device[name].ensure(nbytes) or grew
            else:
                self.device[name], grew = cuda.DeviceBuffer(nbytes), True
            self.pinned(name, nbytes)
        for out, inp in (aliases or {}).items():
            self.device[out] = self.device[inp]  # the same object: grows and closes with it
        if grew:
            self.addresses.clear()
            self.replay = None
            self.drop_graph()

    def set_profile(self, k: int) -> None:
        """Switch to optimization profile ``k`` if it is not the current one."""
        if self.profile == k:
            return
        assert self.stream is not None
        try:  # TensorRT 10+ raises RuntimeError on failure; older releases returned False
            ok = self.context.set_optimization_profile_async(k, self.stream.handle)
        except RuntimeError as exc:
            self.profile = -1  # the context's profile is unknown now: set it again next call
            raise CudaError(f"TensorRT refused to switch to optimization profile {k}: {exc}"
                            ) from exc
        if not ok:
            self.profile = -1
            raise CudaError(f"TensorRT refused to switch to optimization profile {k}")
        self.profile = k
        self.shapes.clear()
        self.replay = None
        self.drop_graph()

    def set_shapes(self, shapes: Mapping[str, tuple[int, ...]], outputs: Sequence[TensorSpec],
                   dds: Set[str]) -> None:
        """Set the input shapes that changed since the last call; if any did, infer the output
        shapes and check that each fits its buffer (``dds``, data-dependent ones, aside)."""
        changed = False
        for name, shape in shapes.items():
            if self.shapes.get(name) != shape:
                try:
                    ok = self.context.set_input_shape(name, shape)
                except RuntimeError as exc:  # a binding that raises instead of returning False
                    raise ShapeOutOfProfile(f"TensorRT refused shape {shape} for {name!r} in "
                                            f"profile {self.profile}: {exc}") from exc
                if not ok:
                    raise ShapeOutOfProfile(f"TensorRT refused shape {shape} for {name!r} in "
                                            f"profile {self.profile}")
                self.shapes[name] = shape
                changed = True
        if not changed:
            return
        self.replay = None
        infer_shapes(self.context)
        self.out_shapes = {}
        for spec in outputs:
            if spec.name in dds:
                continue
            shape = dims(self.context.get_tensor_shape(spec.name))
            if math.prod(shape) * spec.dtype.itemsize > self.device[spec.name].capacity:
                raise ShapeOutOfProfile(f"output {spec.name!r} of shape {shape} exceeds the buffer "
                                        f"sized from profile {self.profile}'s maximum shapes")
            self.out_shapes[spec.name] = shape

    def stage_inputs(self, plan: Plan, copy_views: bool, stats: RunnerStats) -> dict[str, int]:
        """Enqueue the input copies of ``plan`` and return each input's device address.

        Host arrays go through the pinned buffers; device views are used in place unless
        ``copy_views`` (CUDA graphs need stable addresses), their pointer is null, or it is not
        256-byte aligned (a sliced torch or CuPy view: TensorRT refuses such addresses).
        """
        stream = self.stream
        assert stream is not None
        bindings: dict[str, int] = {}
        for name, view in plan.views.items():
            if view.stream not in (None, 0, 1):  # 1: legacy default, which our stream follows
                self.wait_event = self.wait_event or cuda.Event()
                self.wait_event.record(view.stream)
                stream.wait(self.wait_event)
            nbytes = math.prod(view.shape) * view.dtype.itemsize
            misaligned = bool(view.ptr) and view.ptr % TENSOR_ALIGNMENT != 0
            if copy_views or name in self.copied or not view.ptr or misaligned:
                cuda.memcpy_async(self.device[name].ptr, view.ptr, nbytes, 3, stream)
                bindings[name] = self.device[name].ptr
                stats.staged_misaligned += misaligned
            else:
                bindings[name] = view.ptr
                stats.zero_copy_inputs += 1
        for name, host_arr in plan.host.items():
            host, dev = self.host[name], self.device[name]
            np.copyto(self.view(name, host_arr.dtype, host_arr.shape), host_arr)
            cuda.memcpy_async(dev.ptr, host.ptr, host_arr.nbytes, 1, stream)
            bindings[name] = dev.ptr
            stats.h2d_copies += 1
            stats.h2d_bytes += host_arr.nbytes
        return bindings

    def bind(self, bindings: Mapping[str, int]) -> None:
        """Set the tensor addresses that differ from the ones already set."""
        for name, ptr in bindings.items():
            if self.addresses.get(name) != ptr:
                self.replay = None
                if not self.context.set_tensor_address(name, ptr):
                    raise CudaError(f"TensorRT refused the address of {name!r}")
                self.addresses[name] = ptr

    def compute(self, key: Any, stats: RunnerStats) -> CudaError | None:
        """Enqueue the engine; return a failed CUDA-graph capture's error (the work is enqueued).

        ``key`` is ``None`` to execute plainly; else it names the bound shapes and addresses: the
        graph captured for the same key is replayed, or the work runs and is then captured.
        """
        ctx, stream = self.context, self.stream
        assert stream is not None
        if key is not None and self.graph is not None and self.graph_key == key:
            self.graph.launch(stream)
            stats.graph_launches += 1
            return None
        if self.allocator is not None:
            self.allocator.error = None
        ok = ctx.execute_async_v3(stream.handle)
        if self.allocator is not None and self.allocator.error is not None:
            raise self.allocator.error  # the cause TensorRT only saw as a null address
        if not ok:
            raise CudaError("execute_async_v3 failed (TensorRT logged the reason)")
        if key is None:
            return None
        # TensorRT wants one plain enqueue after a shape change before a capture (done above)
        self.drop_graph()
        refusal = capture_refusal(ctx, stream.handle)
        if refusal is not None:
            return refusal

        def enqueue() -> None:
            if not ctx.execute_async_v3(stream.handle):
                raise CudaError("execute_async_v3 failed during CUDA-graph capture")
        try:
            self.graph = cuda.CudaGraph(stream, enqueue)
        except CudaError as exc:
            return exc
        self.graph_key = key
        stats.graph_captures += 1
        return None

    def fetch_outputs(self, specs: Sequence[TensorSpec], dds: Set[str], outputs: str,
                      stats: RunnerStats, device_out: dict[str, cuda.DeviceArray]
                      ) -> dict[str, Any]:
        """Enqueue the output copies: into pinned buffers (``outputs="host"``; returns name to
        ``(dtype, shape)`` of each, valid once the stream is synchronized) or into new device
        arrays added to ``device_out`` (``"device"``; returns ``{}``). ``dds`` are the outputs
        whose shapes the output allocator reports."""
        stream = self.stream
        results: dict[str, Any] = {}
        for spec in specs:
            name = spec.name
            if name in dds:
                alloc = self.allocator
                if name not in alloc.shapes:
                    assert stream is not None
                    stream.synchronize()
                if name not in alloc.shapes:
                    raise CudaError(f"the engine never reported the shape of output {name!r}")
                shape, src = alloc.shapes[name], alloc.buffers[name].ptr
            else:
                shape, src = self.out_shapes[name], self.device[name].ptr
            nbytes = math.prod(shape) * spec.dtype.itemsize
            if outputs == "host":
                cuda.memcpy_async(self.pinned(name, nbytes).ptr, src, nbytes, 2, stream)
                stats.d2h_copies += 1
                stats.d2h_bytes += nbytes
                results[name] = (spec.dtype, shape)
            elif name not in device_out:
                arr = device_out[name] = cuda.DeviceArray(shape, spec.dtype)
                cuda.memcpy_async(arr.ptr, src, nbytes, 3, stream)
        return results

    def reset(self) -> None:
        """Forget what was set on the context, so the next call sets everything again."""
        self.profile = -1
        self.shapes, self.out_shapes, self.addresses = {}, {}, {}
        self.replay = None
        self.drop_graph()

    def drop_graph(self) -> None:
        if self.graph is not None:
            self.graph.close()
        self.graph, self.graph_key = None, None

    def close(self) -> None:
        """Synchronize, drop the context, free the rest; re-raise the first error once done."""
        errors: list[BaseException] = []
        if self.stream is not None:
            try:
                self.stream.synchronize()
            except BaseException as exc:
                errors.append(exc)
        self.context = self.replay = None  # TensorRT frees a context with its last reference
        res: list[Any] = [self.graph, self.allocator, self.wait_event, *self.device.values(),
                          *self.host.values(), *self.events, self.stream]
        self.graph = self.allocator = self.wait_event = self.stream = None
        self.device, self.host, self.events = {}, {}, []
        for r in res:
            try:
                if r is not None:
                    r.close()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
