"""Run a deserialized TensorRT (or TensorRT-RTX) engine through cuda-python buffers.

:class:`TensorRTRunner` owns, per execution context, one stream, four timing events, device
buffers and pinned host staging buffers sized from the selected profile's maximum shapes
(allocated on a profile's first use, grown never shrunk, reused), and an output allocator for
data-dependent output shapes. One call:

1. checks names, dtypes, ranks and the shape guard (``ShapeOutOfProfile``) with no CUDA call;
2. switches the profile and sets input shapes only when they changed;
3. copies host inputs through pinned memory (device inputs, anything with
   ``__cuda_array_interface__`` or DLPack, are used in place, zero-copy);
4. ``execute_async_v3`` (or replays a captured CUDA graph), copies out, synchronizes.

Thread safety: a runner holds up to ``max_contexts`` execution contexts (default 1), each with
its own stream and buffers; a call takes a free one or waits for one, so the default is a lock
per runner and more contexts let threads run concurrently. TensorRT enums are compared by
``.name``, so real ``tensorrt``/``tensorrt_rtx`` objects and the test doubles of
:mod:`regiontrt.testing.fake_trt` both work.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..errors import ArtifactError, CudaError, InputError, ShapeOutOfProfile
from ..graph.io import TensorSpec
from ..shapes import Profile, Range, select_profile
from . import cuda
from .base import Runner, Timing

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


class _OutputAllocator:
    """``IOutputAllocator`` protocol: device memory for outputs whose shapes the engine learns
    while running. Errors are kept and re-raised by the runner (TensorRT only sees a null)."""

    def __init__(self) -> None:
        super().__init__()  # pybind11 trampolines (trt.IOutputAllocator) need their __init__
        self.buffers: dict[str, cuda.DeviceBuffer] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.error: BaseException | None = None

    def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
        try:
            if alignment > 256:  # cudaMalloc guarantees 256 bytes
                raise CudaError(f"{tensor_name}: alignment {alignment} > 256 is not supported")
            buf = self.buffers.get(tensor_name)
            if buf is None:
                buf = self.buffers[tensor_name] = cuda.DeviceBuffer(int(size))
            else:
                buf.ensure(int(size))
            self.shapes.pop(tensor_name, None)
            return buf.ptr
        except BaseException as exc:
            self.error = exc
            return 0

    def reallocate_output_async(self, tensor_name: str, memory: int, size: int, alignment: int,
                                stream: int) -> int:
        return self.reallocate_output(tensor_name, memory, size, alignment)

    def notify_shape(self, tensor_name: str, shape: Sequence[int]) -> None:
        self.shapes[tensor_name] = tuple(int(d) for d in shape)

    def close(self) -> None:
        for buf in self.buffers.values():
            buf.close()


_ALLOCATOR_CLASSES: dict[type, type] = {}


def _make_allocator(engine: Any) -> Any:
    base = getattr(sys.modules.get(type(engine).__module__), "IOutputAllocator", None)
    base = base if isinstance(base, type) else object
    cls = _ALLOCATOR_CLASSES.get(base)
    if cls is None:
        bases = (_OutputAllocator,) if base is object else (_OutputAllocator, base)
        cls = _ALLOCATOR_CLASSES[base] = type("RegionTRTOutputAllocator", bases, {})
    return cls()


@dataclass
class RunnerStats:
    """What a runner did (for tests and benchmarks)."""

    runs: int = 0
    h2d_copies: int = 0
    h2d_bytes: int = 0
    d2h_copies: int = 0
    d2h_bytes: int = 0
    zero_copy_inputs: int = 0
    graph_captures: int = 0
    graph_launches: int = 0
    contexts: int = 0

    def add(self, other: RunnerStats) -> None:
        for name in _STAT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


_STAT_FIELDS = tuple(f.name for f in fields(RunnerStats))


class _Slot:
    """One execution context with its stream, events, buffers and caches."""

    def __init__(self, runner: TensorRTRunner) -> None:
        self.context: Any = None
        self.stream: cuda.Stream | None = None
        self.events: list[cuda.Event] = []
        self.device: dict[str, cuda.DeviceBuffer] = {}
        self.host: dict[str, cuda.PinnedBuffer] = {}
        self.allocator: Any = None
        self.graph: cuda.CudaGraph | None = None
        self.graph_key: Any = None
        self.wait_event: cuda.Event | None = None
        self.stats = RunnerStats()  # only the thread holding the slot writes it
        self.profile = -1
        self.sized: set[int] = set()
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.out_shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.views: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
        try:
            self.context = runner._create_context(runner._engine)
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

    def reset(self) -> None:
        """Forget what was set on the context, so the next call sets everything again."""
        self.profile = -1
        self.shapes, self.out_shapes, self.addresses = {}, {}, {}
        self.drop_graph()

    def drop_graph(self) -> None:
        if self.graph is not None:
            self.graph.close()
        self.graph, self.graph_key = None, None

    def close(self) -> None:
        errors: list[BaseException] = []
        if self.stream is not None:
            try:
                self.stream.synchronize()
            except BaseException as exc:
                errors.append(exc)
        self.context = None  # TensorRT frees a context when its last reference goes
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


@dataclass
class _Plan:
    profile: int
    shapes: dict[str, tuple[int, ...]]
    host: dict[str, np.ndarray]
    views: dict[str, cuda.DeviceView]


def _engine_profile(engine: Any, inputs: Sequence[TensorSpec], k: int) -> Profile:
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


class TensorRTRunner(Runner):
    """Runs a TensorRT engine (``ICudaEngine`` or a test double) on one GPU.

    Args:
        engine: the deserialized engine.
        profiles: the resolved profiles it was built with (the shape guard); empty to read them
            from the engine.
        create_context: makes an execution context from the engine (default
            ``engine.create_execution_context()``).
        owner: kept alive as long as the runner (the ``trt.Runtime`` that made the engine); if it
            has ``close()``, :meth:`close` calls it once, after the contexts are gone and before
            the engine is dropped.
        device: CUDA device ordinal.
        max_contexts: how many threads may run at once (one context, stream and buffer set each).
        use_cuda_graph: capture ``execute_async_v3`` once per static shape and replay it; inputs
            and outputs then always go through the runner's own buffers (stable addresses).
    """

    def __init__(self, engine: Any, profiles: Sequence[Profile], *,
                 create_context: Callable[[Any], Any] | None = None, owner: Any = None,
                 device: int = 0, max_contexts: int = 1, use_cuda_graph: bool = False) -> None:
        if max_contexts < 1:
            raise InputError(f"max_contexts must be >= 1, got {max_contexts}")
        self._engine: Any = engine
        self._owner = owner
        self._create_context = create_context or (lambda e: e.create_execution_context())
        self._device = int(device)
        self._max_contexts = int(max_contexts)
        self._use_graph = bool(use_cuda_graph)
        self.inputs, self.outputs = [], []
        self._io: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        for i in range(int(engine.num_io_tensors)):
            name = engine.get_tensor_name(i)
            mode = str(getattr(engine.get_tensor_mode(name), "name", "")).upper()
            if getattr(engine, "is_shape_inference_io", lambda n: False)(name):
                raise InputError(f"engine tensor {name!r} is a shape tensor; not supported")
            dtype = trt_dtype_to_numpy(engine.get_tensor_dtype(name))
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            spec = TensorSpec(name, dtype, tuple(d if d >= 0 else None for d in shape))
            if mode in ("INPUT", "OUTPUT"):
                (self.inputs if mode == "INPUT" else self.outputs).append(spec)
                self._io[name] = (dtype, shape)
        self._input_names = [s.name for s in self.inputs]
        self._static = {n: [(a, d) for a, d in enumerate(shape) if d >= 0]
                        for n, (_, shape) in self._io.items()}
        self._engine_profiles = [
            _engine_profile(engine, self.inputs, k)
            for k in range(int(getattr(engine, "num_optimization_profiles", 0)))
        ]
        self._profiles = list(profiles) or self._engine_profiles
        if self._engine_profiles and len(self._profiles) != len(self._engine_profiles):
            raise ArtifactError(f"the metadata lists {len(self._profiles)} optimization "
                                f"profiles, the engine has {len(self._engine_profiles)}")
        self._max_bytes: dict[int, dict[str, int]] = {}
        self._dds: set[str] = set()
        self._guard_cache: dict[tuple[tuple[int, ...], ...], int] = {}
        self._cond = threading.Condition()
        self._slots: list[_Slot] = []
        self._free: list[_Slot] = []
        self._nslots = 0
        self._closed = False
        self._retired = RunnerStats()

    @property
    def stats(self) -> RunnerStats:
        """Totals over this runner's contexts: runs, copies, zero-copy inputs, graphs."""
        with self._cond:
            total = RunnerStats(contexts=len(self._slots) + self._retired.contexts)
            for slot in self._slots:
                total.add(slot.stats)
        total.add(RunnerStats(**{**vars(self._retired), "contexts": 0}))
        return total

    @property
    def data_dependent_outputs(self) -> frozenset[str]:
        """Outputs whose shapes only the engine knows (known after the first call)."""
        return frozenset(self._dds)

    # -- the guard: no CUDA call before it has passed ------------------------------------------
    def _plan(self, feeds: Mapping[str, Any]) -> _Plan:
        if self._closed:
            raise InputError("this engine was closed")
        names = self._input_names
        if len(feeds) != len(names) or not all(n in feeds for n in names):
            missing, unknown = set(names) - set(feeds), set(feeds) - set(names)
            raise InputError(f"inputs must be exactly {names}; missing {sorted(missing)}, "
                             f"unknown {sorted(unknown)}")
        plan = _Plan(0, {}, {}, {})
        for name in names:
            dtype, eshape = self._io[name]
            value = feeds[name]
            view = None if type(value) is np.ndarray else cuda.device_view(value)
            if view is None:
                arr = np.ascontiguousarray(np.asarray(value), dtype=dtype)
                shape = tuple(arr.shape)
                plan.host[name] = arr
            else:
                if view.dtype != dtype:
                    raise InputError(f"device input {name!r} has dtype {view.dtype}, the engine "
                                     f"wants {dtype}; device inputs are used in place, uncast")
                shape = view.shape
                plan.views[name] = view
            if len(shape) != len(eshape):
                raise InputError(f"input {name!r} has rank {len(shape)} (shape {shape}), the "
                                 f"engine wants rank {len(eshape)} ({eshape})")
            if self._static[name] and any(shape[a] != d for a, d in self._static[name]):
                raise ShapeOutOfProfile(f"input {name!r} shape {shape} contradicts the engine's "
                                        f"static shape {eshape}")
            plan.shapes[name] = shape
        key = tuple(plan.shapes.values())
        k = self._guard_cache.get(key)
        if k is None:
            k = select_profile(self._profiles, plan.shapes)
            if self._engine_profiles:
                why = self._engine_profiles[k].find_violation(plan.shapes)
                if why:
                    raise ShapeOutOfProfile(f"engine profile {k}: {why}")
            if len(self._guard_cache) > 4096:  # shapes seen before skip the profile scan
                self._guard_cache.clear()
            self._guard_cache[key] = k
        plan.profile = k
        return plan

    # -- slots ---------------------------------------------------------------------------------
    def _acquire(self) -> _Slot:
        with self._cond:
            while True:
                if self._closed:
                    raise InputError("this engine was closed")
                if self._free:
                    return self._free.pop()
                if self._nslots < self._max_contexts:
                    self._nslots += 1
                    break
                self._cond.wait()
        try:
            cuda.set_device(self._device)
            slot = _Slot(self)
        except BaseException:
            with self._cond:
                self._nslots -= 1
                self._cond.notify_all()
            raise
        with self._cond:
            self._slots.append(slot)
        return slot

    def _release(self, slot: _Slot) -> None:
        with self._cond:
            self._free.append(slot)
            self._cond.notify_all()

    def _sized(self, slot: _Slot, k: int) -> None:
        """Grow the slot's buffers to profile ``k``'s maximum shapes (computed once)."""
        if k in slot.sized:
            return
        ctx = slot.context
        sizes = self._max_bytes.get(k)
        if sizes is None:
            sizes = {}
            for spec in self.inputs:
                # the engine's own profile maxima form one consistent set of shapes
                found = [p[k].ranges[spec.name] for p in (self._engine_profiles, self._profiles)
                         if p and spec.name in p[k].ranges]
                shape = found[0].max if found else self._io[spec.name][1]
                if min(shape, default=0) < 0 or not ctx.set_input_shape(spec.name, shape):
                    raise InputError(f"cannot size input {spec.name!r} from shape {shape}")
                sizes[spec.name] = math.prod(shape) * spec.dtype.itemsize
            try:
                self._infer(ctx)
            except InputError as exc:
                raise InputError(f"cannot size outputs at profile {k}'s maximum input shapes: "
                                 f"{exc}") from None
            for spec in self.outputs:
                shape = tuple(int(d) for d in ctx.get_tensor_shape(spec.name))
                if min(shape, default=0) < 0:
                    self._dds.add(spec.name)
                    continue
                bound = getattr(ctx, "get_max_output_size", lambda n: -1)(spec.name)
                sizes[spec.name] = max(math.prod(shape) * spec.dtype.itemsize, int(bound))
            self._max_bytes[k] = sizes
            slot.shapes.clear()
        grew = False
        for name, nbytes in sizes.items():
            if name in slot.device:
                grew = slot.device[name].ensure(nbytes) or grew
            else:
                slot.device[name], grew = cuda.DeviceBuffer(nbytes), True
            if name in slot.host:
                if slot.host[name].ensure(nbytes):
                    slot.views.clear()
            else:
                slot.host[name] = cuda.PinnedBuffer(nbytes)
        if grew:
            slot.addresses.clear()
            slot.drop_graph()
        if self._dds and slot.allocator is None:
            slot.allocator = _make_allocator(self._engine)
            for name in sorted(self._dds):
                if not ctx.set_output_allocator(name, slot.allocator):
                    raise CudaError(f"TensorRT refused an output allocator for {name!r}")
        slot.sized.add(k)

    @staticmethod
    def _infer(ctx: Any) -> None:
        infer = getattr(ctx, "infer_shapes", None)
        try:
            missing = infer() if infer else ([] if ctx.all_binding_shapes_specified else ["?"])
        except RuntimeError as exc:  # TensorRT raises on inconsistent input shapes
            raise InputError(f"TensorRT rejects these input shapes: {exc}") from None
        if missing:
            raise InputError(f"TensorRT cannot infer shapes; not specified: {list(missing)}")

    # -- one call ------------------------------------------------------------------------------
    def run(self, feeds: Mapping[str, Any], *, outputs: str = "host") -> dict[str, Any]:
        """Run one inference.

        Args:
            feeds: input name to a host array or a CUDA array (``__cuda_array_interface__`` or
                DLPack; used in place, it must have the engine's dtype and be C-contiguous).
            outputs: ``"host"`` for numpy arrays, ``"device"`` for :class:`DeviceArray` objects
                that the caller owns and closes.

        Raises:
            InputError: wrong names, ranks or device dtypes, or a closed runner.
            ShapeOutOfProfile: shapes outside every profile (raised before any CUDA call).
            CudaError: a CUDA or TensorRT call failed.
        """
        if outputs not in ("host", "device"):
            raise InputError(f"outputs must be 'host' or 'device', got {outputs!r}")
        plan = self._plan(feeds)
        return self._call(plan, outputs, timed=False)[0]

    def time_once(self, feeds: Mapping[str, Any]) -> Timing:
        """Run once, timed with CUDA events around the copies in, the compute, the copies out."""
        timing = self._call(self._plan(feeds), "host", timed=True)[1]
        assert timing is not None
        return timing

    def capture_graph(self, feeds: Mapping[str, Any]) -> None:
        """Turn on CUDA-graph replay and capture for the shapes of ``feeds`` (runs it once).

        Engines with data-dependent output shapes are never captured (the allocator runs on the
        host during execution); they keep running normally.
        """
        self._use_graph = True
        self.run(feeds)

    def _call(self, plan: _Plan, outputs: str, timed: bool) -> tuple[dict[str, Any], Timing | None]:
        slot = self._acquire()
        stats = slot.stats
        stats.runs += 1
        try:
            return self._execute(slot, plan, outputs, timed, stats)
        except BaseException:
            try:
                if slot.stream is not None:
                    slot.stream.synchronize()  # no copy may still target a reused buffer
            except CudaError:
                pass
            slot.reset()
            raise
        finally:
            self._release(slot)

    def _execute(self, slot: _Slot, plan: _Plan, outputs: str, timed: bool,
                 stats: RunnerStats) -> tuple[dict[str, Any], Timing | None]:
        cuda.set_device(self._device)
        ctx, stream, k = slot.context, slot.stream, plan.profile
        assert stream is not None
        if slot.profile != k:
            if not ctx.set_optimization_profile_async(k, stream.handle):
                raise CudaError(f"TensorRT refused optimization profile {k}")
            slot.profile = k
            slot.shapes.clear()
            slot.drop_graph()
        self._sized(slot, k)
        changed = False
        for name, shape in plan.shapes.items():
            if slot.shapes.get(name) != shape:
                if not ctx.set_input_shape(name, shape):
                    raise ShapeOutOfProfile(f"TensorRT refused shape {shape} for {name!r} in "
                                            f"profile {k}")
                slot.shapes[name] = shape
                changed = True
        if changed:
            self._infer(ctx)
            slot.out_shapes = {}
            for spec in self.outputs:
                if spec.name in self._dds:
                    continue
                shape = tuple(int(d) for d in ctx.get_tensor_shape(spec.name))
                if math.prod(shape) * spec.dtype.itemsize > slot.device[spec.name].capacity:
                    raise ShapeOutOfProfile(f"output {spec.name!r} of shape {shape} exceeds the "
                                            f"buffer sized from profile {k}'s maximum shapes")
                slot.out_shapes[spec.name] = shape
        graph = self._use_graph and not self._dds
        device_out: dict[str, cuda.DeviceArray] = {}
        try:
            return self._enqueue(slot, plan, outputs, timed, stats, graph, device_out)
        except BaseException:
            for arr in device_out.values():
                arr.close()
            raise

    def _enqueue(self, slot: _Slot, plan: _Plan, outputs: str, timed: bool, stats: RunnerStats,
                 graph: bool, device_out: dict[str, cuda.DeviceArray]
                 ) -> tuple[dict[str, Any], Timing | None]:
        ctx, stream, ev = slot.context, slot.stream, slot.events
        assert stream is not None
        if timed:
            ev[0].record(stream)
        bindings: dict[str, int] = {}
        for name, view in plan.views.items():
            if view.stream not in (None, 0, 1):  # 1: legacy default, which our stream follows
                slot.wait_event = slot.wait_event or cuda.Event()
                slot.wait_event.record(view.stream)
                stream.wait(slot.wait_event)
            nbytes = math.prod(view.shape) * view.dtype.itemsize
            if graph or not view.ptr:
                cuda.memcpy_async(slot.device[name].ptr, view.ptr, nbytes, 3, stream)
                bindings[name] = slot.device[name].ptr
            else:
                bindings[name] = view.ptr
                stats.zero_copy_inputs += 1
        for name, host_arr in plan.host.items():
            host, dev = slot.host[name], slot.device[name]
            np.copyto(slot.view(name, host_arr.dtype, host_arr.shape), host_arr)
            cuda.memcpy_async(dev.ptr, host.ptr, host_arr.nbytes, 1, stream)
            bindings[name] = dev.ptr
            stats.h2d_copies += 1
            stats.h2d_bytes += host_arr.nbytes
        for spec in self.outputs:
            if spec.name in self._dds:
                continue
            if outputs == "device" and not graph:
                arr = device_out[spec.name] = cuda.DeviceArray(slot.out_shapes[spec.name],
                                                               spec.dtype)
                bindings[spec.name] = arr.ptr
            else:
                bindings[spec.name] = slot.device[spec.name].ptr
        for name, ptr in bindings.items():
            if slot.addresses.get(name) != ptr:
                if not ctx.set_tensor_address(name, ptr):
                    raise CudaError(f"TensorRT refused the address of {name!r}")
                slot.addresses[name] = ptr
        if timed:
            ev[1].record(stream)
        self._compute(slot, plan, graph, stats)
        if timed:
            ev[2].record(stream)
        results = self._outputs(slot, outputs, graph, stats, device_out)
        if timed:
            ev[3].record(stream)
        stream.synchronize()
        if outputs == "host":
            results = {n: slot.view(n, *results[n]).copy() for n in results}
        else:
            results = dict(device_out)
        timing = None
        if timed:
            ms = cuda.Event.elapsed_ms
            timing = Timing(total_ms=ms(ev[0], ev[3]), h2d_ms=ms(ev[0], ev[1]),
                            compute_ms=ms(ev[1], ev[2]), d2h_ms=ms(ev[2], ev[3]))
        return results, timing

    def _compute(self, slot: _Slot, plan: _Plan, graph: bool, stats: RunnerStats) -> None:
        ctx, stream = slot.context, slot.stream
        assert stream is not None
        key = (plan.profile, tuple(plan.shapes.items()), tuple(slot.addresses.items())) \
            if graph else None
        if graph and slot.graph is not None and slot.graph_key == key:
            slot.graph.launch(stream)
            stats.graph_launches += 1
            return
        if slot.allocator is not None:
            slot.allocator.error = None
        if not ctx.execute_async_v3(stream.handle):
            raise CudaError("execute_async_v3 failed (TensorRT logged the reason)")
        if slot.allocator is not None and slot.allocator.error is not None:
            raise slot.allocator.error
        if graph:  # TensorRT wants one plain enqueue after a shape change before a capture
            slot.drop_graph()

            def enqueue() -> None:
                if not ctx.execute_async_v3(stream.handle):
                    raise CudaError("execute_async_v3 failed during CUDA-graph capture")
            try:
                slot.graph = cuda.CudaGraph(stream, enqueue)
                slot.graph_key = key
                stats.graph_captures += 1
            except CudaError as exc:
                self._use_graph = False
                warnings.warn(f"CUDA-graph capture failed, running without graphs: {exc}",
                              RuntimeWarning, stacklevel=4)

    def _outputs(self, slot: _Slot, outputs: str, graph: bool, stats: RunnerStats,
                 device_out: dict[str, cuda.DeviceArray]) -> dict[str, Any]:
        stream = slot.stream
        results: dict[str, Any] = {}
        for spec in self.outputs:
            name = spec.name
            if name in self._dds:
                alloc = slot.allocator
                if name not in alloc.shapes:
                    assert stream is not None
                    stream.synchronize()
                if name not in alloc.shapes:
                    raise CudaError(f"the engine never reported the shape of output {name!r}")
                shape, src = alloc.shapes[name], alloc.buffers[name].ptr
            else:
                shape, src = slot.out_shapes[name], slot.device[name].ptr
            nbytes = math.prod(shape) * spec.dtype.itemsize
            if outputs == "host":
                if name in slot.host:
                    if slot.host[name].ensure(nbytes):
                        slot.views.clear()
                else:
                    slot.host[name] = cuda.PinnedBuffer(nbytes)
                cuda.memcpy_async(slot.host[name].ptr, src, nbytes, 2, stream)
                stats.d2h_copies += 1
                stats.d2h_bytes += nbytes
                results[name] = (spec.dtype, shape)
            elif name not in device_out:
                arr = device_out[name] = cuda.DeviceArray(shape, spec.dtype)
                cuda.memcpy_async(arr.ptr, src, nbytes, 3, stream)
        return results

    # -- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        """Wait for running calls, then free contexts, streams, events and buffers; idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            while len(self._free) < self._nslots:
                self._cond.wait()
            slots, self._slots, self._free = self._slots, [], []
            for slot in slots:
                self._retired.add(slot.stats)
                self._retired.contexts += 1
        errors = []
        for slot in slots:
            try:
                slot.close()
            except BaseException as exc:
                errors.append(exc)
        # contexts first, then the owner's close() (TensorRT-RTX saves its runtime cache there),
        # then the engine, then the owner itself (its trt.Runtime)
        closer = getattr(self._owner, "close", None)
        if callable(closer):
            try:
                closer()
            except BaseException as exc:
                errors.append(exc)
        self._engine = self._owner = None
        if errors:
            raise errors[0]

    def __enter__(self) -> TensorRTRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
