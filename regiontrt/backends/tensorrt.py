"""The TensorRT and TensorRT-RTX backends: ONNX variant -> serialized plan -> runner.

Both share one code path (:class:`_TensorRTFamily`, steps in :mod:`.trt_build`; the TensorRT-RTX
class lives in :mod:`.tensorrt_rtx`); the differences are isolated in hooks:

* **TensorRT** (``tensorrt``, 10.x/11.x; extra ``tensorrt``): builds on and for the local GPU
  (target ``"sm90"``, or ``"sm80+"`` with ``hardware_compatibility="ampere_plus"``), and keeps a
  timing cache keyed by version and GPU (:mod:`.timing_cache`). Needs a GPU to build.
* **TensorRT-RTX** (``tensorrt_rtx``; extra ``rtx``): builds on the CPU for compute-capability
  targets (``TacticSelector.compute_capabilities``), and compiles kernels at run time into a
  runtime cache (``TacticSelector.runtime_cache``, or ``runtime_cache=`` here) used at load.

Networks are always strongly typed: precision comes from the graph (casts, Q/DQ), never from
builder flags. Engine metadata is read with :func:`_meta`, which accepts the build result's
fields at the top level or nested one level under ``"build"``/``"backend_info"``/``"info"``/
``"backend"``: ``payload_format``, ``backend_version`` (or ``backend.version``), ``target``, and
from ``BuildResult.info``: ``plan_header``, ``profiles``, ``builder_config``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

from regiontrt.backends import cuda
from regiontrt.backends.base import Backend, BuildRequest, BuildResult, Runner
from regiontrt.backends.plan import (
    PlanHeader,
    advisory_plan_header,
    read_plan_header,
    same_release,
)
from regiontrt.backends.tactics import TacticSelector
from regiontrt.backends.timing_cache import (
    TensorRTTimingCacheCodec,
    TimingCacheFile,
    timing_cache_path,
)
from regiontrt.backends.trt_build import (
    add_profiles,
    apply_tactics,
    build_plan,
    check_network_outputs,
    complete_profiles,
    device_name,
    device_sm,
    engine_profiles,
    error_mark,
    errors_since,
    gpu_count,
    gpu_problem,
    import_first,
    init_plugins,
    inspect_plan,
    network_dtypes,
    network_flags,
    network_inputs,
    parse_onnx,
    trt_logger,
)
from regiontrt.backends.trt_compat import (
    allow_host_code,
    lean_only,
    lean_problem,
    release_problem,
)
from regiontrt.errors import BackendUnavailable, BuildError, IncompatibleEngineError
from regiontrt.shapes.profiles import Profile

if TYPE_CHECKING:
    import tensorrt

log = logging.getLogger("regiontrt.tensorrt")
_NESTED = ("backend_info", "info", "backend", "build")


def _meta(metadata: Mapping[str, Any], key: str) -> Any:
    """``metadata[key]``, at the top level or one level down under a known section."""
    if key in metadata:
        return metadata[key]
    for section in _NESTED:
        sub = metadata.get(section)
        if isinstance(sub, Mapping) and key in sub:
            return sub[key]
    return None


def _sm_number(sm: str) -> int:
    return int(sm.removeprefix("sm").rstrip("+"))


class _TensorRTFamily(Backend):
    """What the TensorRT and TensorRT-RTX backends share; subclasses set the hooks."""

    _modules: ClassVar[tuple[str, ...]]
    _rtx: ClassVar[bool] = False
    _label: ClassVar[str]
    #: :meth:`load` takes the engine's ``provenance`` (whether anyone vouches for the plan).
    accepts_provenance: ClassVar[bool] = True

    def __init__(self, *, runtime_cache: str | None = None, device: int = 0) -> None:
        self.runtime_cache = runtime_cache
        self.device = int(device)  # plans are deserialized on, and run on, this CUDA device

    # -- availability --------------------------------------------------------------------
    @classmethod
    def _module(cls) -> ModuleType | None:
        return import_first(cls._modules)

    @classmethod
    def is_available(cls) -> bool:
        return cls._module() is not None

    @classmethod
    def lean_only(cls) -> bool:
        """Whether only a runtime without a builder (TensorRT's lean runtime) is installed."""
        return lean_only(cls._module())

    @classmethod
    def gpu_present(cls) -> bool:
        """Whether cuda-python sees a CUDA GPU (never raises)."""
        return gpu_count() > 0

    def _trt(self) -> Any:
        module = self._module()
        if module is None:
            raise BackendUnavailable(
                f"{self._label} is not installed; "
                f"install it with pip install 'regiontrt[{self.extra}]'"
            )
        return module

    def version(self) -> str:
        return str(self._trt().__version__)

    # -- build ---------------------------------------------------------------------------
    def build(self, request: BuildRequest) -> BuildResult:
        trt = self._trt()
        version = str(trt.__version__)
        if lean_only(trt):
            raise BuildError(
                f"only TensorRT's lean runtime ({trt.__name__} {version}) is installed here: it "
                f"runs version-compatible plans but cannot build; install {self.extra!r} "
                f"(pip install 'regiontrt[{self.extra}]') to build")
        self._check_can_build()
        t0 = time.perf_counter()
        builder: tensorrt.Builder = trt.Builder(trt_logger(trt))
        network: tensorrt.INetworkDefinition = builder.create_network(
            network_flags(trt, int(version.split(".")[0]), rtx=self._rtx))
        parser = parse_onnx(trt, network, request.model, request.name)
        profiles = complete_profiles(request.profiles, network_inputs(network))
        check_network_outputs(network)  # an engine that could never load is not built
        config: tensorrt.IBuilderConfig = builder.create_builder_config()
        add_profiles(trt, builder, config, profiles)
        applied = apply_tactics(trt, config, request.tactics, rtx=self._rtx)
        state = self._configure(trt, config, request.tactics, applied)
        request.tactics.configure(config, trt)  # the user's hook runs last, as documented
        payload = build_plan(trt, builder, network, config, request.name)
        seconds = time.perf_counter() - t0
        self._after_build(config, state, applied)
        layers, dtypes = network.num_layers, network_dtypes(network)
        del parser  # the parser owns the weights the network points to: free it only now
        header = self._read_header(payload)
        target = self._target(header, request.tactics, state)
        runnable = self._runnable(header, target)
        info: dict[str, Any] = {
            "plan_header": header.to_dict(),
            "build_seconds": round(seconds, 3),
            "builder_config": applied,
            "profiles": [p.to_dict() for p in profiles],
            "network_layers": layers,
            "network_dtypes": dtypes,
            "onnx_nodes": len(request.model.graph.node),
            "gpu": device_sm(),  # the building machine's GPU, None on a CPU-only host
        }
        if runnable:
            try:
                info["fusion_report"] = inspect_plan(trt, payload, profiles, request.model)
            except Exception as exc:  # a report must never fail a good build
                info["fusion_report"] = {"error": f"{type(exc).__name__}: {exc}"}
        else:
            info["fusion_report"] = {"skipped": "the plan cannot run on this machine"}
        return BuildResult(payload, self.payload_format, version, target, runnable, info)

    def _check_can_build(self) -> None:
        """Raise :class:`BuildError` if this machine cannot build (hook)."""

    def _read_header(self, payload: bytes) -> PlanHeader:
        """The plan header as metadata (hook: strict where the layout is verified)."""
        return read_plan_header(payload)

    def _configure(self, trt: Any, config: tensorrt.IBuilderConfig, tactics: TacticSelector,
                   applied: dict[str, Any]) -> dict[str, Any]:
        """Family-specific builder settings; returns state for :meth:`_after_build` (hook)."""
        return {}

    def _after_build(self, config: tensorrt.IBuilderConfig, state: dict[str, Any],
                     applied: dict[str, Any]) -> None:
        """Work after a successful build (hook)."""

    def _target(self, header: PlanHeader, tactics: TacticSelector, state: dict[str, Any]) -> str:
        raise NotImplementedError

    def _runnable(self, header: PlanHeader, target: str) -> bool:
        raise NotImplementedError

    # -- compatibility and loading ---------------------------------------------------------
    def check_compatible(self, metadata: Mapping[str, Any]) -> None:
        fmt = _meta(metadata, "payload_format")
        if fmt is not None and fmt != self.payload_format:
            raise IncompatibleEngineError(
                f"this engine holds a {fmt!r} payload; the {self.name} backend loads "
                f"{self.payload_format!r}"
            )
        header = _meta(metadata, "plan_header")
        header = header if isinstance(header, Mapping) else {}
        backend = metadata.get("backend")
        built = (_meta(metadata, "backend_version")
                 or (backend.get("version") if isinstance(backend, Mapping) else None)
                 # a TensorRT header's version is unverified: only TensorRT-RTX's counts
                 or (header.get("trt_version") if self._rtx else None))
        self._check_version(built, metadata)
        problem = lean_problem(metadata, self._module())
        if problem:
            raise IncompatibleEngineError(problem)
        ccs = tuple(header.get("compute_capabilities") or ())
        self._check_gpu(_meta(metadata, "target"), ccs)

    def _check_version(self, built: str | None, metadata: Mapping[str, Any] | None = None
                       ) -> None:
        """Refuse a plan of another release unless it is version-compatible and loads in this
        one (:func:`.trt_compat.release_problem`)."""
        installed = self.version()
        if not built or same_release(built, installed):
            return
        problem = release_problem(built, installed, {} if self._rtx else (metadata or {}))
        if problem:
            raise IncompatibleEngineError(
                f"this engine was built with {self._label} {built} but {installed} is installed; "
                f"{problem}: rebuild it"
            )

    def _check_gpu(self, target: str | None, ccs: tuple[str, ...]) -> None:
        raise NotImplementedError

    def load(self, payload: bytes, metadata: Mapping[str, Any], *,
             provenance: str | None = None) -> Runner:
        """Deserialize ``payload`` on this backend's device into a :class:`TensorRTRunner`;
        ``provenance`` (the :class:`~regiontrt.runtime.engine.Engine`'s) is who vouches for the
        plan: a version-compatible plan's lean runtime runs only with one
        (:func:`.trt_compat.allow_host_code`, :class:`IncompatibleEngineError` otherwise)."""
        trt = self._trt()
        # an engine belongs to the device current when it is deserialized: pin ours first (the
        # runner sets it again in every thread that creates contexts or runs the engine)
        cuda.set_device(self.device)
        header = self._preflight(trt, payload, metadata)
        init_plugins(trt, trt_logger(trt))  # plans that contain plugins need the registry
        runtime: tensorrt.Runtime = trt.Runtime(trt_logger(trt))
        if not self._rtx:  # TensorRT-RTX plans are never version-compatible
            allow_host_code(runtime, metadata, self._label, provenance)
        mark = error_mark(trt)
        try:
            engine: tensorrt.ICudaEngine = runtime.deserialize_cuda_engine(payload)
        except RuntimeError as exc:
            raise IncompatibleEngineError(
                f"{self._label} could not load the plan: {exc}{self._hint(header)}") from exc
        if engine is None:
            errors = "; ".join(errors_since(trt, mark)) or "no details reported"
            raise IncompatibleEngineError(
                f"{self._label} could not load the plan: {errors}{self._hint(header)}")
        profiles = engine_profiles(trt, engine) or [
            Profile.from_dict(p) for p in (_meta(metadata, "profiles") or ())
        ]
        from regiontrt.backends.trt_runner import (
            TensorRTRunner,  # the runtime side lives there (cuda-python)
        )

        create_context, owner = self._context_factory(runtime, metadata)
        return TensorRTRunner(engine, profiles, create_context=create_context, owner=owner,
                              device=self.device)

    def _preflight(self, trt: Any, payload: bytes, metadata: Mapping[str, Any]) -> PlanHeader:
        """Checks before any TensorRT call: payload kind, metadata, GPU (hook)."""
        raise NotImplementedError

    def _hint(self, header: PlanHeader) -> str:
        """What the (unverified) header suggests about a plan the library refused."""
        built, installed = header.trt_version, self.version()
        if built and not same_release(built, installed):
            return (f" (its header suggests {self._label} {built}, unverified; "
                    f"{installed} is installed: rebuild the engine with it)")
        return ""

    def _context_factory(self, runtime: Any, metadata: Mapping[str, Any]) -> tuple[Any, Any]:
        """``(create_context or None, owner)`` for :class:`TensorRTRunner` (hook)."""
        return None, runtime

    def _check_validity(self, trt: Any, runtime: Any, payload: bytes) -> bool:
        """Library-side check before deserializing: whether the library vouches for the plan
        (hook; TensorRT-RTX has one)."""
        return False


class TensorRTBackend(_TensorRTFamily):
    """TensorRT 10.x/11.x: builds on the local GPU, with a shared timing cache."""

    name = "tensorrt"
    extra = "tensorrt"
    payload_format = "tensorrt-plan"
    # the full library first; a site with only the lean runtime still loads and runs plans
    _modules = ("tensorrt", "tensorrt_bindings", "tensorrt_lean", "tensorrt_lean_bindings")
    _label = "TensorRT"

    def _check_can_build(self) -> None:
        if not self.gpu_present():
            raise BuildError(
                f"TensorRT builds need an NVIDIA GPU and none is usable ({gpu_problem()}); "
                "build on the target GPU, or use the 'tensorrt-rtx' backend, whose builder runs "
                "on the CPU"
            )
        cuda.set_device(self.device)  # TensorRT builds for, and times on, the current device

    def _read_header(self, payload: bytes) -> PlanHeader:
        return advisory_plan_header(payload)  # metadata only: never fails a build

    def _preflight(self, trt: Any, payload: bytes, metadata: Mapping[str, Any]) -> PlanHeader:
        header = advisory_plan_header(payload)
        if header.verified and header.format != "tensorrt":  # only a verified RTX layout counts
            raise IncompatibleEngineError(
                f"the payload is a {header.format} plan; the {self.name} backend loads tensorrt")
        self.check_compatible(metadata)  # what we recorded at build time, not the header bits
        if header.trt_version and not same_release(header.trt_version, self.version()):
            log.info("plan header suggests TensorRT %s (unverified), %s is installed; "
                     "TensorRT decides at deserialization", header.trt_version, self.version())
        return header

    def _configure(self, trt: Any, config: tensorrt.IBuilderConfig, tactics: TacticSelector,
                   applied: dict[str, Any]) -> dict[str, Any]:
        local = device_sm(self.device) or "sm-unknown"
        if tactics.compute_capabilities and local not in tactics.compute_capabilities:
            raise BuildError(
                f"TensorRT builds for the GPU it runs on ({local}), not "
                f"{list(tactics.compute_capabilities)}; use hardware_compatibility='ampere_plus' "
                "or the 'tensorrt-rtx' backend"
            )
        if tactics.runtime_cache:
            applied["runtime_cache"] = "unsupported by TensorRT (TensorRT-RTX only)"
        if not tactics.timing_cache:
            return {"sm": local}
        path = timing_cache_path(tactics.timing_cache, str(trt.__version__), local,
                                 device_name(self.device))
        cache_file = TimingCacheFile(path, TensorRTTimingCacheCodec(config))
        cache = cache_file.load()
        applied["timing_cache"] = str(path)
        if not config.set_timing_cache(cache, False):  # False: refuse another GPU's entries
            # e.g. a cache from another device of the same compute capability: time afresh
            log.warning("TensorRT refused the timing cache %s (another GPU or release?); "
                        "building with a fresh cache, which replaces it", path)
            cache = cache_file.codec.load(b"")
            if not config.set_timing_cache(cache, False):
                raise BuildError(f"TensorRT refused even an empty timing cache for {path}")
            applied["timing_cache_refused"] = True
            return {"sm": local, "timing_cache": cache_file, "merge": False}
        return {"sm": local, "timing_cache": cache_file}

    def _after_build(self, config: tensorrt.IBuilderConfig, state: dict[str, Any],
                     applied: dict[str, Any]) -> None:
        cache_file = state.get("timing_cache")
        if cache_file is not None:
            saved = cache_file.save(config.get_timing_cache(), merge=state.get("merge", True))
            applied["timing_cache_saved"] = {"bytes": saved.size, "merged": saved.merged}

    def _target(self, header: PlanHeader, tactics: TacticSelector, state: dict[str, Any]) -> str:
        sm = str(state.get("sm") or device_sm(self.device) or "sm-unknown")
        return "sm80+" if tactics.hardware_compatibility == "ampere_plus" else sm

    def _runnable(self, header: PlanHeader, target: str) -> bool:
        return self.gpu_present()

    def _check_gpu(self, target: str | None, ccs: tuple[str, ...]) -> None:
        local = device_sm(self.device)
        if local is None:
            raise IncompatibleEngineError(
                f"this TensorRT engine needs an NVIDIA GPU; none is usable ({gpu_problem()})")
        if not target or not target.startswith("sm") or target == "sm-unknown":
            return  # no record of the build GPU: TensorRT itself checks at deserialization
        ok = _sm_number(local) >= 80 if target.endswith("+") else local == target
        if not ok:
            raise IncompatibleEngineError(
                f"this TensorRT engine was built for {target} and this GPU is {local}; rebuild it "
                "on this GPU (or build with hardware_compatibility='ampere_plus')"
            )
