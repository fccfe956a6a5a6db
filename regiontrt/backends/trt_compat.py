"""Version-compatible TensorRT plans, the lean runtime, and the trust they need.

NVIDIA (TensorRT "Version Compatibility", 8.6 and later): a plan built with
``BuilderFlag.VERSION_COMPATIBLE`` carries a copy of TensorRT's *lean runtime* and loads in the
release that built it or any later one (never an older one); both must be 8.6 or later. Loading
it means TensorRT runs host code from the plan inside this process, which it does only after
``Runtime.engine_host_code_allowed = True`` ("you should only deserialize trusted plans this
way"). ``EXCLUDE_LEAN_RUNTIME`` leaves the copy out: such a plan has no host code, and needs the
lean runtime of the release that built it, so it loads only in that release here (regiontrt never
calls ``Runtime.load_runtime`` with a path of its own).

The trust decision (:func:`allow_host_code`): host code is allowed only for a plan whose
engine has a provenance, which regiontrt gives only to engines it built itself (in this process,
its fleet run, or the node's rebuild cache) or whose bytes it verified against a trusted
signature (a signed bundle, whose files are re-hashed against the signed manifest on every read,
or ``load_engine(trust=...)``). An unverified file is refused with a typed error *before*
deserialization rather than left to TensorRT, so a plan nobody vouches for never gets to run code.
A header that lies ("not version-compatible") gains nothing: TensorRT then refuses the plan itself,
since host code stays disallowed.

A site may have only the lean runtime (the ``tensorrt-lean`` wheels: ``tensorrt_lean``, a
``Runtime`` and no ``Builder``). It loads and runs version-compatible plans and builds nothing;
:func:`lean_only` tells such a module apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from regiontrt.backends.tactics import TacticSelector
from regiontrt.errors import BuildError, IncompatibleEngineError

if TYPE_CHECKING:
    import tensorrt

#: The first release whose plans can be version-compatible, and that can load them.
FIRST_VERSION_COMPATIBLE = (8, 6)


def lean_only(module: Any) -> bool:
    """Whether ``module`` is a TensorRT runtime without a builder (the lean runtime)."""
    return module is not None and not hasattr(module, "Builder")


def apply_build_flags(trt: Any, config: tensorrt.IBuilderConfig, tactics: TacticSelector,
                      applied: dict[str, Any], *, rtx: bool) -> None:
    """Set the builder flags for version compatibility and CUDA-graph capture; record them in
    ``applied`` (the engine metadata's ``builder_config``)."""
    module = trt.__name__
    if tactics.version_compatible:
        if rtx:
            raise BuildError("TensorRT-RTX plans load only in the release that built them; "
                             "version_compatible applies to the 'tensorrt' backend")
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        applied["version_compatible"] = True
        if tactics.exclude_lean_runtime:
            config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
            applied["exclude_lean_runtime"] = True
    if tactics.cuda_graph and rtx:
        # TensorRT-RTX 1.2+: without it an engine may allocate while it runs, which a CUDA-graph
        # capture cannot record (is_stream_capturable() then says False)
        flag = getattr(trt.BuilderFlag, "REQUIRE_USER_ALLOCATION", None)
        if flag is None:
            raise BuildError(f"{module} {trt.__version__} has no BuilderFlag."
                             "REQUIRE_USER_ALLOCATION, which CUDA-graph capture needs")
        config.set_flag(flag)
        applied["require_user_allocation"] = True
    if tactics.cuda_graph:
        applied["cuda_graph"] = True


def _flags(metadata: Mapping[str, Any]) -> Mapping[str, Any]:
    for section in (metadata, *(metadata.get(k) for k in ("backend_info", "info", "build"))):
        if isinstance(section, Mapping) and isinstance(section.get("builder_config"), Mapping):
            return section["builder_config"]  # type: ignore[no-any-return]
    return {}


def version_compatible(metadata: Mapping[str, Any]) -> bool:
    """Whether the engine's build records say ``VERSION_COMPATIBLE``."""
    return _flags(metadata).get("version_compatible") is True


def carries_lean_runtime(metadata: Mapping[str, Any]) -> bool:
    """Whether the plan embeds the lean runtime (version-compatible, not excluding it)."""
    return version_compatible(metadata) and _flags(metadata).get("exclude_lean_runtime") is not True


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def release_problem(built: str, installed: str, metadata: Mapping[str, Any]) -> str | None:
    """Why a plan of release ``built`` cannot load in ``installed``; ``None`` when it can.

    The caller has established that the two releases differ.
    """
    if not version_compatible(metadata):
        return "plans only load in the release that built them"
    if not carries_lean_runtime(metadata):
        return ("it is version-compatible but was built without its lean runtime "
                "(exclude_lean_runtime), so only the release that built it runs it here")
    b, i = _release(built), _release(installed)
    if b[:2] < FIRST_VERSION_COMPATIBLE or i[:2] < FIRST_VERSION_COMPATIBLE:
        return "version compatibility needs TensorRT 8.6 or later on both sides"
    if i < b:
        return ("a version-compatible plan loads in the release that built it or a later one, "
                "never an older one")
    return None


def allow_host_code(runtime: tensorrt.Runtime, metadata: Mapping[str, Any], label: str,
                    provenance: str | None) -> bool:
    """Allow the plan's embedded lean runtime to run, if it has one and is vouched for.

    Returns whether host code was allowed.

    Raises:
        IncompatibleEngineError: the plan embeds host code and has no provenance.
    """
    if not carries_lean_runtime(metadata):
        return False
    if provenance is None:
        raise IncompatibleEngineError(
            f"this {label} plan is version-compatible: it carries TensorRT's lean runtime, host "
            "code that would run in this process, so regiontrt loads it only when it was built "
            "here or its signature was verified (a signed bundle, or load_engine(path, "
            "trust=...)); this engine has neither")
    runtime.engine_host_code_allowed = True
    return True


def lean_problem(metadata: Mapping[str, Any], module: Any) -> str | None:
    """Why the lean runtime ``module`` cannot load the plan; ``None`` when it can (or when
    ``module`` has a builder)."""
    if not lean_only(module) or version_compatible(metadata):
        return None
    return (f"only TensorRT's lean runtime ({module.__name__} {module.__version__}) is installed "
            "here, and it runs version-compatible plans only: rebuild the engine with "
            "TacticSelector(version_compatible=True), or install the full tensorrt package")
