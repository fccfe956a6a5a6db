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

Thread safety: a runner holds execution contexts, each with its own stream and buffers; a call
takes a free one or waits for one, so the default (``max_contexts=1``) is a lock per runner. With
``max_contexts > 1`` an engine with dynamic shapes gets one context per optimization profile
(TensorRT requires a separate profile for each context in concurrent use), so calls run
concurrently only when their shapes fall in different profiles; build with several profiles to
serve several threads. An engine with static shapes runs up to ``max_contexts`` contexts at once
(:mod:`.trt_pool`). TensorRT enums are compared by ``.name``, so real ``tensorrt``/
``tensorrt_rtx`` objects and the test doubles of :mod:`regiontrt.testing.fake_trt` both work.
The per-context state (:class:`~.trt_slots.Slot`), the output allocator,
:class:`RunnerStats` and the dtype mapping live in :mod:`.trt_slots`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from regiontrt.backends import cuda
from regiontrt.backends.base import Runner, Timing
from regiontrt.backends.guard import check_names, check_tensor, static_axes
from regiontrt.backends.trt_features import aliased_outputs
from regiontrt.backends.trt_pool import ContextPool
from regiontrt.backends.trt_replay import Replay, host_shapes
from regiontrt.backends.trt_slots import (
    Plan,
    RunnerStats,
    Slot,
    dims,
    engine_profile,
    infer_shapes,
    make_allocator,
    trt_dtype_to_numpy,
)
from regiontrt.errors import ArtifactError, CudaError, InputError, ShapeOutOfProfile
from regiontrt.graph.io import TensorSpec
from regiontrt.shapes.profiles import Profile, select_profile

if TYPE_CHECKING:
    import tensorrt

__all__ = ["RunnerStats", "TensorRTRunner", "trt_dtype_to_numpy"]


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
        max_contexts: how many calls may run at once (one context, stream and buffer set each;
            with dynamic shapes at most one per optimization profile, see above).
        device: CUDA device ordinal; made current before every context is created and in every
            thread that runs or closes the runner.
        use_cuda_graph: capture ``execute_async_v3`` once per static shape and replay it; inputs
            and outputs then always go through the runner's own buffers (stable addresses).
    """

    def __init__(self, engine: Any, profiles: Sequence[Profile], *,
                 create_context: Callable[[Any], Any] | None = None, owner: Any = None,
                 device: int = 0, max_contexts: int = 1, use_cuda_graph: bool = False) -> None:
        if max_contexts < 1:
            raise InputError(f"max_contexts must be >= 1, got {max_contexts}")
        self._engine: tensorrt.ICudaEngine | Any = engine  # or a test double
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
        self._aliases = aliased_outputs(engine, self._io, {s.name for s in self.inputs})
        self._input_names = [s.name for s in self.inputs]
        self._host_specs = [(s.name, s.dtype) for s in self.inputs]
        self._static = {s.name: static_axes(s) for s in self.inputs}
        self._engine_profiles = [
            engine_profile(engine, self.inputs, k)
            for k in range(int(getattr(engine, "num_optimization_profiles", 0)))
        ]
        self._profiles = list(profiles) or self._engine_profiles
        if self._engine_profiles and len(self._profiles) != len(self._engine_profiles):
            raise ArtifactError(f"the metadata lists {len(self._profiles)} optimization "
                                f"profiles, the engine has {len(self._engine_profiles)}")
        self._max_bytes: dict[int, dict[str, int]] = {}
        self._dds: set[str] = set()
        self._guard_cache: dict[tuple[tuple[int, ...], ...], int] = {}
        self._pool = ContextPool(self._create_context, engine, self._device, self._max_contexts,
                                 self._max_contexts > 1 and any(x.is_dynamic for x in self.inputs))

    @property
    def stats(self) -> RunnerStats:
        """Totals over this runner's contexts: runs, copies, zero-copy inputs, graphs."""
        return self._pool.stats

    @property
    def _slots(self) -> list[Slot]:
        """The live contexts (for tests and benchmarks)."""
        return self._pool.slots

    @property
    def data_dependent_outputs(self) -> frozenset[str]:
        """Outputs whose shapes only the engine knows (known after the first call)."""
        return frozenset(self._dds)

    # -- the guard: no CUDA call before it has passed ------------------------------------------
    def _plan(self, feeds: Mapping[str, Any]) -> Plan:
        if self._pool.closed:
            raise InputError("this engine was closed")
        check_names(feeds, self.inputs)
        plan = Plan(0, {}, {}, {})
        for spec in self.inputs:
            name, value = spec.name, feeds[spec.name]
            view = None if type(value) is np.ndarray else cuda.device_view(value)
            if view is None:  # host arrays are cast to the engine's dtype on the way in
                arr = np.ascontiguousarray(np.asarray(value), dtype=spec.dtype)
                check_tensor(spec, arr.shape, None, static=self._static[name])
                plan.host[name] = arr
                plan.shapes[name] = tuple(arr.shape)
            else:
                check_tensor(spec, view.shape, view.dtype, device=True,
                             static=self._static[name])
                plan.views[name] = view
                plan.shapes[name] = tuple(view.shape)
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

    def _sized(self, slot: Slot, k: int) -> None:
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
                infer_shapes(ctx)
            except InputError as exc:
                raise InputError(f"cannot size outputs at profile {k}'s maximum input shapes: "
                                 f"{exc}") from None
            for spec in self.outputs:
                shape = dims(ctx.get_tensor_shape(spec.name))
                if min(shape, default=0) < 0:
                    self._dds.add(spec.name)
                    continue
                bound = getattr(ctx, "get_max_output_size", lambda n: -1)(spec.name)
                # >= 1 byte: TensorRT refuses a null output address even for an empty tensor
                sizes[spec.name] = max(math.prod(shape) * spec.dtype.itemsize, int(bound), 1)
            for out, inp in self._aliases.items():  # one buffer: the input's, big enough for both
                sizes[inp] = max(sizes[inp], sizes.pop(out, 0))
            self._max_bytes[k] = sizes
            slot.shapes.clear()
        slot.copied = frozenset(self._aliases.values())
        slot.grow(sizes, aliases=self._aliases)
        if self._dds and slot.allocator is None:
            slot.allocator = make_allocator(self._engine)
            for name in sorted(self._dds):
                if not ctx.set_output_allocator(name, slot.allocator):
                    raise CudaError(f"TensorRT refused an output allocator for {name!r}")
        slot.sized.add(k)

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
        if outputs == "host" and not self._use_graph:
            result = self._replay(feeds)
            if result is not None:
                return result
        elif outputs not in ("host", "device"):
            raise InputError(f"outputs must be 'host' or 'device', got {outputs!r}")
        plan = self._plan(feeds)
        return self._call(plan, outputs, timed=False)[0]

    def _replay(self, feeds: Mapping[str, Any]) -> dict[str, Any] | None:
        """The steady-state call (:mod:`.trt_replay`): host arrays of the engine's dtypes at
        shapes the guard has passed before, on a slot whose last call had the same shapes.
        ``None`` when anything differs: the full path then checks and sets everything."""
        key = host_shapes(feeds, self._host_specs)
        k = None if key is None else self._guard_cache.get(key)  # shapes the guard passed
        if k is None:
            return None
        slot = self._pool.acquire(k)
        try:
            replay = slot.replay
            if replay is None or replay.key != (k, key):
                return None
            cuda.set_device(self._device)
            slot.stats.runs += 1
            try:
                return replay(feeds, slot.stats)
            except BaseException:
                with contextlib.suppress(CudaError):
                    if slot.stream is not None:
                        slot.stream.synchronize()  # no copy may still target a reused buffer
                slot.reset()
                raise
        finally:
            self._pool.release(slot, k)

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

    def _call(self, plan: Plan, outputs: str, timed: bool) -> tuple[dict[str, Any], Timing | None]:
        slot = self._pool.acquire(plan.profile)
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
            self._pool.release(slot, plan.profile)

    def _execute(self, slot: Slot, plan: Plan, outputs: str, timed: bool,
                 stats: RunnerStats) -> tuple[dict[str, Any], Timing | None]:
        cuda.set_device(self._device)
        slot.set_profile(plan.profile)
        self._sized(slot, plan.profile)
        slot.set_shapes(plan.shapes, self.outputs, self._dds)
        graph = self._use_graph and not self._dds
        device_out: dict[str, cuda.DeviceArray] = {}
        try:
            return self._enqueue(slot, plan, outputs, timed, stats, graph, device_out)
        except BaseException:
            for arr in device_out.values():
                arr.close()
            raise

    def _enqueue(self, slot: Slot, plan: Plan, outputs: str, timed: bool, stats: RunnerStats,
                 graph: bool, device_out: dict[str, cuda.DeviceArray]
                 ) -> tuple[dict[str, Any], Timing | None]:
        stream, ev = slot.stream, slot.events
        assert stream is not None
        if timed:
            ev[0].record(stream)
        bindings = slot.stage_inputs(plan, graph, stats)
        for spec in self.outputs:
            if spec.name in self._dds:
                continue
            if outputs == "device" and not graph and spec.name not in self._aliases:
                arr = device_out[spec.name] = cuda.DeviceArray(slot.out_shapes[spec.name],
                                                               spec.dtype)
                # an empty array has no memory (address 0), which TensorRT refuses for an
                # output: the engine writes nothing there, so bind our own non-null buffer
                bindings[spec.name] = arr.ptr or slot.device[spec.name].ptr
            else:
                bindings[spec.name] = slot.device[spec.name].ptr
        slot.bind(bindings)
        if timed:
            ev[1].record(stream)
        key = (plan.profile, tuple(plan.shapes.items()), tuple(slot.addresses.items())) \
            if graph else None
        failed = slot.compute(key, stats)
        if failed is not None:
            self._use_graph = False
            warnings.warn(f"CUDA-graph capture failed, running without graphs: {failed}",
                          RuntimeWarning, stacklevel=3)
        if timed:
            ev[2].record(stream)
        results = slot.fetch_outputs(self.outputs, self._dds, outputs, stats, device_out)
        if timed:
            ev[3].record(stream)
        stream.synchronize()
        if outputs == "host":
            results = {n: slot.view(n, *results[n]).copy() for n in results}
            if not (timed or graph or plan.views or self._dds):  # the next such call replays
                slot.replay = Replay(slot, (plan.profile, tuple(plan.shapes.values())),
                                     self.inputs, self.outputs)
        else:
            results = dict(device_out)
        timing = None
        if timed:
            ms = cuda.Event.elapsed_ms
            timing = Timing(total_ms=ms(ev[0], ev[3]), h2d_ms=ms(ev[0], ev[1]),
                            compute_ms=ms(ev[1], ev[2]), d2h_ms=ms(ev[2], ev[3]))
        return results, timing

    # -- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        """Wait for running calls, then free contexts, streams, events and buffers; idempotent."""
        slots = self._pool.close()
        if slots is None:
            return
        with contextlib.suppress(CudaError):
            cuda.set_device(self._device)  # the contexts and buffers belong to this device
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
