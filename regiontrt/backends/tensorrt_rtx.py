"""The TensorRT-RTX backend: builds on the CPU for compute-capability targets.

It shares the build and load path of :mod:`.tensorrt` (:class:`~.tensorrt._TensorRTFamily`) and
differs in the hooks: targets instead of the local GPU, a runtime cache instead of a timing cache,
``Runtime.get_engine_validity`` consulted before any header bits, and a plan header whose layout
was verified on TensorRT-RTX 1.7 (:mod:`.plan`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from regiontrt.backends.plan import (
    UNKNOWN_CC_PREFIX,
    PlanHeader,
    advisory_plan_header,
    read_plan_header,
)
from regiontrt.backends.tactics import TacticSelector
from regiontrt.backends.tensorrt import _meta, _sm_number, _TensorRTFamily
from regiontrt.backends.timing_cache import (
    RuntimeCacheContexts,
    RuntimeCacheFile,
    RuntimeCacheOwner,
)
from regiontrt.backends.trt_build import device_sm, gpu_problem, trt_logger
from regiontrt.errors import (
    ArtifactError,
    BuildError,
    IncompatibleEngineError,
    InvalidArgumentError,
)

if TYPE_CHECKING:
    import tensorrt

log = logging.getLogger("regiontrt.tensorrt")


class TensorRTRTXBackend(_TensorRTFamily):
    """TensorRT for RTX: builds on the CPU for compute-capability targets.

    Args:
        runtime_cache: runtime-cache file used at load (overrides the one in the metadata).
        device: the CUDA device plans are loaded on and run on.
        cuda_graph_strategy: a ``CudaGraphStrategy`` member name (``"whole_graph_capture"``)
            set on each context's ``IRuntimeConfig.cuda_graph_strategy``, where the bindings
            have it: TensorRT-RTX then captures and replays CUDA graphs inside
            ``execute_async_v3`` itself (do not also ask the runner for ``use_cuda_graph``).
            The runner's own capture instead needs an engine built with
            ``TacticSelector(cuda_graph=True)`` (``REQUIRE_USER_ALLOCATION``).
    """

    name = "tensorrt-rtx"
    extra = "rtx"
    payload_format = "tensorrt-rtx-plan"
    _modules = ("tensorrt_rtx", "tensorrt_rtx_bindings")
    _rtx = True
    _label = "TensorRT-RTX"
    _metadata_only = False  # set while check_compatible runs: the GPU verdict waits for load

    def __init__(self, *, runtime_cache: str | None = None, device: int = 0,
                 cuda_graph_strategy: str | None = None) -> None:
        super().__init__(runtime_cache=runtime_cache, device=device)
        self.cuda_graph_strategy = cuda_graph_strategy

    def _configure(self, trt: Any, config: tensorrt.IBuilderConfig, tactics: TacticSelector,
                   applied: dict[str, Any]) -> dict[str, Any]:
        cfg: Any = config  # compute-capability targets are RTX-only API, absent from the stubs
        supported = _rtx_targets(trt)
        if tactics.compute_capabilities:
            missing = [c for c in tactics.compute_capabilities if c not in supported]
            if missing:
                raise BuildError(
                    f"{self._label} {trt.__version__} cannot target {missing}; it supports "
                    f"{sorted(supported, key=_sm_number)}"
                )
            cfg.num_compute_capabilities = len(tactics.compute_capabilities)
            for i, sm in enumerate(tactics.compute_capabilities):
                if not cfg.set_compute_capability(supported[sm], i):
                    raise BuildError(f"{self._label} refused compute capability {sm}")
            applied["compute_capabilities"] = list(tactics.compute_capabilities)
        else:
            local = device_sm()
            if local in supported:
                cfg.num_compute_capabilities = 1
                cfg.set_compute_capability(trt.ComputeCapability.CURRENT, 0)
                applied["compute_capabilities"] = f"current ({local})"
            else:  # no (supported) GPU: the library's default set of targets
                applied["compute_capabilities"] = "default (every supported target)"
        if tactics.timing_cache:  # RTX 1.2+ makes timing-cache calls no-ops
            applied["timing_cache"] = "unsupported by TensorRT-RTX (see runtime_cache)"
        if tactics.runtime_cache:
            applied["runtime_cache"] = tactics.runtime_cache
        return {}

    def _target(self, header: PlanHeader, tactics: TacticSelector, state: dict[str, Any]) -> str:
        return "+".join(header.compute_capabilities) or "+".join(tactics.compute_capabilities)

    def _runnable(self, header: PlanHeader, target: str) -> bool:
        local = device_sm()
        targets = header.compute_capabilities or tuple(t for t in target.split("+") if t)
        return local is not None and (local in targets or not header.verified)

    def _preflight(self, trt: Any, payload: bytes, metadata: Mapping[str, Any]) -> PlanHeader:
        if device_sm(self.device) is None:  # the library's check below needs a GPU
            raise IncompatibleEngineError(
                f"this TensorRT-RTX engine needs an NVIDIA GPU; none is usable ({gpu_problem()})")
        # the library's own verdict comes first, before any header bits of ours; when it says
        # VALID (or SUBOPTIMAL) our reading of the header cannot overrule it
        valid = self._check_validity(trt, trt.Runtime(trt_logger(trt)), payload)
        try:
            header = read_plan_header(payload)
        except ArtifactError:
            if not valid:
                raise
            return advisory_plan_header(payload)
        if header.format != "tensorrt-rtx" and not valid:
            raise IncompatibleEngineError(
                f"the payload is a {header.format} plan; the {self.name} backend loads "
                "tensorrt-rtx")
        if valid:
            fmt = _meta(metadata, "payload_format")
            if fmt is not None and fmt != self.payload_format:
                raise IncompatibleEngineError(
                    f"this engine holds a {fmt!r} payload; the {self.name} backend loads "
                    f"{self.payload_format!r}")
            return header
        super().check_compatible(metadata)  # the runtime could not say: our checks, GPU too
        self._check_version(header.trt_version)  # the bytes outrank the metadata
        self._check_gpu(_meta(metadata, "target"), header.compute_capabilities)
        return header

    def check_compatible(self, metadata: Mapping[str, Any]) -> None:
        """Format, release and a usable GPU from the metadata; whether the plan runs on this GPU
        is left to :meth:`load`, where ``Runtime.get_engine_validity`` speaks first."""
        self._metadata_only = True
        try:
            super().check_compatible(metadata)
        finally:
            self._metadata_only = False

    def _check_gpu(self, target: str | None, ccs: tuple[str, ...]) -> None:
        if getattr(self, "_metadata_only", False):
            if device_sm(self.device) is None:
                raise IncompatibleEngineError(f"this TensorRT-RTX engine needs an NVIDIA GPU; "
                                              f"none is usable ({gpu_problem()})")
            return
        targets = ccs or tuple(t for t in (target or "").split("+") if t)
        local = device_sm(self.device)
        if local is None:
            raise IncompatibleEngineError(
                f"this TensorRT-RTX engine needs an NVIDIA GPU; none is usable ({gpu_problem()})")
        if not targets or local in targets or any(t.startswith(UNKNOWN_CC_PREFIX)
                                                  for t in targets):
            return  # an unknown target bit may well be this GPU: never refuse on a guess
        module = self._module()
        supported = _rtx_targets(module) if module is not None else {}
        if module is not None and supported and local not in supported:
            advice = (f"TensorRT-RTX {module.__version__} cannot target {local} (it supports "
                      f"{', '.join(sorted(supported, key=_sm_number))}): use the 'tensorrt' "
                      "backend on this GPU")
        else:
            advice = f"rebuild it with compute_capabilities including {local!r}"
        raise IncompatibleEngineError(
            f"this TensorRT-RTX engine targets {', '.join(targets)} and this GPU is {local}; "
            + advice
        )

    def _check_validity(self, trt: Any, runtime: Any, payload: bytes) -> bool:
        """Whether the library vouches for the plan here (VALID or SUBOPTIMAL); ``False`` when
        it cannot say (no ``get_engine_validity``); raises on INVALID."""
        check = getattr(runtime, "get_engine_validity", None)  # RTX: reads the header only
        if check is None:
            return False
        validity, diagnostics = check(payload)
        if int(validity) != int(trt.EngineValidity.INVALID):
            return True
        reasons = [name.lower().replace("_", " ")
                   for name, flag in trt.EngineInvalidityDiagnostics.__members__.items()
                   if int(diagnostics) & int(flag)]
        raise IncompatibleEngineError(
            f"{self._label} {trt.__version__} reports this plan invalid here: "
            f"{', '.join(reasons) or 'no reason given'}"
        )

    def _context_factory(self, runtime: Any, metadata: Mapping[str, Any]) -> tuple[Any, Any]:
        path = self.runtime_cache or _runtime_cache_from(metadata)
        contexts = RuntimeCacheContexts(RuntimeCacheFile(path) if path else None,
                                        self._graph_strategy(runtime))
        return contexts, RuntimeCacheOwner(runtime, contexts)


    def _graph_strategy(self, runtime: Any) -> Any:
        """The ``CudaGraphStrategy`` member asked for, from the runtime's own module."""
        if self.cuda_graph_strategy is None:
            return None
        trt = self._trt()
        strategies = getattr(trt, "CudaGraphStrategy", None)
        if strategies is None:  # an RTX release before the setting: run without it
            log.warning("%s %s has no CudaGraphStrategy; cuda_graph_strategy=%r is ignored",
                        self._label, trt.__version__, self.cuda_graph_strategy)
            return None
        member = getattr(strategies, self.cuda_graph_strategy.upper(), None)
        if member is None:
            raise InvalidArgumentError(
                f"{self._label} {trt.__version__} has no CUDA-graph strategy "
                f"{self.cuda_graph_strategy!r}; it knows {sorted(strategies.__members__)}")
        return member


def _rtx_targets(trt: Any) -> dict[str, Any]:
    """``{"sm89": ComputeCapability.SM89, ...}``: the targets this TensorRT-RTX can build for."""
    members = getattr(getattr(trt, "ComputeCapability", None), "__members__", {})
    return {name.lower(): m for name, m in members.items() if name.startswith("SM")}


def _runtime_cache_from(metadata: Mapping[str, Any]) -> str | None:
    applied = _meta(metadata, "builder_config")
    value = applied.get("runtime_cache") if isinstance(applied, Mapping) else None
    return value if isinstance(value, str) and not value.startswith("unsupported") else None


__all__ = ["TensorRTRTXBackend"]
