"""Tactic selection: how hard the builder searches, and with what resources.

TensorRT 11 removed the algorithm selector, so tactic choice is expressed through builder
configuration: optimization level, tactic sources, a tactic budget, workspace, hardware
compatibility, and a timing cache shared between builds. :class:`TacticSelector` holds those
settings and applies them; override :meth:`TacticSelector.configure` to set anything else on the
``IBuilderConfig`` (or :meth:`TacticSelector.configure_onnxruntime` for the CPU runtime).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from regiontrt.graph.arithmetic import no_spinning

HARDWARE_COMPATIBILITY = ("none", "ampere_plus", "same_compute_capability")
PROFILING_VERBOSITY = ("none", "layer_names_only", "detailed")


@dataclass(frozen=True)
class TacticSelector:
    """Builder settings that decide which kernels (tactics) an engine uses.

    Args:
        optimization_level: TensorRT builder optimization level, 0 (fast build) .. 5.
        tactic_sources: names of ``trt.TacticSource`` members to enable (``None``: TensorRT's
            default set), e.g. ``("EDGE_MASK_CONVOLUTIONS", "JIT_CONVOLUTIONS")``. TensorRT 11
            removed ``CUBLAS``, ``CUBLAS_LT`` and ``CUDNN`` (and renumbered the rest): naming
            one there is a :class:`~regiontrt.errors.BuildError` that lists the known sources.
        max_tactics: cap on tactics timed per layer (``IBuilderConfig.max_num_tactics``).
        workspace_bytes: workspace memory-pool limit.
        hardware_compatibility: ``"none"``, ``"ampere_plus"`` or ``"same_compute_capability"``.
        profiling_verbosity: ``"none"``, ``"layer_names_only"`` or ``"detailed"`` (needed for
            the fusion report's per-layer detail).
        timing_cache: path of a timing cache loaded, merged and saved around each build.
        compute_capabilities: TensorRT-RTX targets, e.g. ``("sm89", "sm120")``; empty builds for
            the GPU present (or, with no GPU, for every supported one).
        runtime_cache: TensorRT-RTX runtime cache file, reused across runs.
        cpu_threads: intra-op threads of the ONNX Runtime backend (0: its default), at build
            and when the engine is loaded.
        cpu_spinning: let ONNX Runtime's intra-op threads spin between runs (its default).
            Off by default: a loaded engine shares its process with other work (a server's
            event loop and batcher, its clients, an application), and spinning threads keep
            every core busy between requests (measured in docs/benchmarks.md, "Serving").
        version_compatible: TensorRT only: build a version-compatible plan
            (``BuilderFlag.VERSION_COMPATIBLE``), which loads in this release or any later one,
            including a site with only the lean runtime; it embeds the lean runtime (host code),
            so it loads only with a verified provenance (see :mod:`.trt_compat`), and it may run
            slower than a plan for one release.
        exclude_lean_runtime: with ``version_compatible``: leave the lean runtime out of the
            plan (``EXCLUDE_LEAN_RUNTIME``; smaller, no host code, but it then loads only in the
            release that built it).
        cuda_graph: build for CUDA-graph capture: TensorRT-RTX sets
            ``BuilderFlag.REQUIRE_USER_ALLOCATION`` (without it RTX engines may allocate while
            running and cannot be captured); networks with data-dependent shapes then fail to
            build, as TensorRT-RTX documents.
    """

    optimization_level: int = 3
    tactic_sources: tuple[str, ...] | None = None
    max_tactics: int | None = None
    workspace_bytes: int | None = None
    hardware_compatibility: str = "none"
    profiling_verbosity: str = "detailed"
    timing_cache: str | None = None
    compute_capabilities: tuple[str, ...] = field(default_factory=tuple)
    runtime_cache: str | None = None
    cpu_threads: int = 0
    cpu_spinning: bool = False
    version_compatible: bool = False
    exclude_lean_runtime: bool = False
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.optimization_level <= 5:
            raise ValueError("optimization_level must be within 0..5")
        if self.hardware_compatibility not in HARDWARE_COMPATIBILITY:
            raise ValueError(f"hardware_compatibility must be one of {HARDWARE_COMPATIBILITY}")
        if self.profiling_verbosity not in PROFILING_VERBOSITY:
            raise ValueError(f"profiling_verbosity must be one of {PROFILING_VERBOSITY}")
        if self.max_tactics is not None and self.max_tactics < 1:
            raise ValueError("max_tactics must be >= 1")
        if self.workspace_bytes is not None and self.workspace_bytes <= 0:
            raise ValueError("workspace_bytes must be > 0")
        for key in ("version_compatible", "exclude_lean_runtime", "cuda_graph", "cpu_spinning"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false")
        if self.exclude_lean_runtime and not self.version_compatible:
            raise ValueError("exclude_lean_runtime applies to version_compatible builds only")
        if self.tactic_sources is not None:
            object.__setattr__(self, "tactic_sources", tuple(self.tactic_sources))
        object.__setattr__(self, "compute_capabilities", _normalise_sm(self.compute_capabilities))
        for key in ("timing_cache", "runtime_cache"):
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, str(Path(value)))

    def configure(self, config: Any, trt: Any) -> None:
        """Apply extra settings to a TensorRT ``IBuilderConfig``.

        The backend has already applied every field above; the default does nothing more.
        Override this in a subclass for settings regiontrt does not model.

        Args:
            config: the ``IBuilderConfig`` being built.
            trt: the imported TensorRT (or TensorRT-RTX) module.
        """

    def configure_onnxruntime(self, options: Any) -> None:
        """Apply settings to ``onnxruntime.SessionOptions`` for the CPU backend."""
        if self.cpu_threads:
            options.intra_op_num_threads = int(self.cpu_threads)
        if not self.cpu_spinning:
            no_spinning(options)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        return d


def _normalise_sm(values: Sequence[str | int]) -> tuple[str, ...]:
    out = []
    for v in values:
        s = str(v).lower().removeprefix("sm").replace(".", "").replace("_", "")
        if not s.isdigit():
            raise ValueError(f"compute capability {v!r}: expected e.g. 'sm89' or '8.9'")
        out.append(f"sm{s}")
    return tuple(out)
