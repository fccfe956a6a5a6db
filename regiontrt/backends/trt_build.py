"""Build steps shared by the TensorRT and TensorRT-RTX backends.

The two libraries expose the same Python API for everything here (``Builder``, ``OnnxParser``,
``IBuilderConfig``, optimization profiles, ``Runtime``, the engine inspector), so every function
takes the imported module as ``trt``. Objects are annotated with the ``tensorrt`` stub types, so
mypy checks the API names against ``tensorrt-stubs``; attributes that only one library or version
has are reached through ``getattr`` checks, as Polygraphy does.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections import deque
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import onnx

from regiontrt.backends.fusion import fusion_report
from regiontrt.backends.tactics import TacticSelector
from regiontrt.backends.trt_compat import apply_build_flags
from regiontrt.backends.trt_env import device_name, device_sm, gpu_count, gpu_problem, init_plugins
from regiontrt.errors import BuildError, ShapeProfileError
from regiontrt.graph.io import model_bytes
from regiontrt.shapes.profiles import Profile, Range

__all__ = [  # the GPU helpers live in .trt_env; they are re-exported for existing callers
    "add_profiles", "apply_tactics", "build_plan", "check_network_outputs", "complete_profiles",
    "device_name",
    "device_sm", "engine_profiles", "error_mark", "errors_since", "gpu_count", "gpu_problem",
    "import_first", "init_plugins", "inspect_plan", "network_dtypes", "network_flags",
    "network_inputs", "parse_onnx", "trt_logger",
]

if TYPE_CHECKING:
    import tensorrt

log = logging.getLogger("regiontrt.tensorrt")

_LOGGERS: dict[str, Any] = {}
_LOGGERS_LOCK = threading.Lock()
# TensorRT severities: 0 internal error, 1 error, 2 warning, 3 info, 4 verbose.
_LEVELS = {0: logging.ERROR, 1: logging.ERROR, 2: logging.WARNING, 3: logging.DEBUG,
           4: logging.DEBUG}


def import_first(names: Sequence[str]) -> ModuleType | None:
    """The first of ``names`` that imports as a real TensorRT module, or ``None``.

    A wheel whose native libraries are missing raises ``OSError`` or ``RuntimeError`` rather than
    ``ImportError``; and a stubs-only install (``tensorrt-stubs``) leaves a ``tensorrt`` folder
    that imports as an empty namespace package. Either way the backend is unavailable. A module
    with a ``Runtime`` but no ``Builder`` (the lean runtime, ``tensorrt_lean``) counts: it loads
    and runs plans; building checks for ``Builder`` itself (:func:`.trt_compat.lean_only`).
    """
    for name in names:
        try:
            module = importlib.import_module(name)
        except (ImportError, OSError, RuntimeError):
            continue
        if hasattr(module, "Runtime") and hasattr(module, "__version__"):
            return module
    return None


def trt_logger(trt: Any) -> tensorrt.ILogger:
    """The process-wide logger for ``trt``, forwarding to :mod:`logging` (``regiontrt.tensorrt``).

    TensorRT keeps the first logger it is given and ignores later ones (with a warning), so there
    is exactly one per library; it also remembers recent errors for :class:`BuildError` messages.
    """
    key = trt.__name__
    with _LOGGERS_LOCK:
        if key not in _LOGGERS:

            class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)
                    self.count = 0  # errors seen so far, so callers can ask "since when"
                    self.errors: deque[tuple[int, str]] = deque(maxlen=50)

                def log(self, severity: Any, msg: str) -> None:
                    level = _LEVELS.get(int(severity), logging.DEBUG)
                    if level >= logging.ERROR:
                        self.errors.append((self.count, msg))
                        self.count += 1
                    log.log(level, "[%s] %s", key, msg)

            _LOGGERS[key] = _Logger()
        return _LOGGERS[key]  # type: ignore[no-any-return]


def error_mark(trt: Any) -> int:
    """A mark for :func:`errors_since`: the number of TensorRT errors logged so far."""
    return int(getattr(trt_logger(trt), "count", 0))


def errors_since(trt: Any, mark: int) -> list[str]:
    """TensorRT errors logged after ``mark`` (the last 50 at most)."""
    return [msg for i, msg in getattr(trt_logger(trt), "errors", ()) if i >= mark]


def network_flags(trt: Any, major: int, *, rtx: bool) -> int:
    """Creation flags for a strongly typed network.

    ``STRONGLY_TYPED`` exists in TensorRT 10 (value 1) and TensorRT-RTX (value 0); TensorRT 11
    keeps it deprecated and ignored (networks are always strongly typed), so it is not set there.
    The flag's value always comes from the module, never a literal.
    """
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None or (not rtx and major >= 11):
        return 0
    return 1 << int(flag)


def parse_onnx(trt: Any, network: tensorrt.INetworkDefinition, model: onnx.ModelProto,
               name: str = "") -> tensorrt.OnnxParser:
    """Parse ``model`` into ``network``; keep the returned parser (and network) alive together.

    Raises:
        BuildError: listing every parser error with its node index, name and operator.
    """
    init_plugins(trt, trt_logger(trt))  # ops the parser maps to plugins need the registry
    parser: tensorrt.OnnxParser = trt.OnnxParser(network, trt_logger(trt))
    mark = error_mark(trt)
    try:
        if parser.parse(model_bytes(model)):
            return parser
    except RuntimeError as exc:  # some releases raise instead of returning False
        raise BuildError(f"the ONNX parser of {trt.__name__} failed: {exc}; "
                         + "; ".join(errors_since(trt, mark))) from exc
    lines = []
    for i in range(parser.num_errors):
        err: tensorrt.ParserError = parser.get_error(i)
        code = getattr(err.code(), "name", str(err.code()))
        if err.node() >= 0:
            where = f"node #{err.node()} {err.node_name()!r} (op {err.node_operator()})"
        else:
            where = "model"
        lines.append(f"  - {where}: {err.desc()} [{code}]")
    label = f" {name!r}" if name else ""
    raise BuildError(
        f"the ONNX parser of {trt.__name__} rejected the model{label} "
        f"({parser.num_errors} error(s)):\n" + "\n".join(lines or ["  - (no details reported)"])
    )


def network_inputs(network: tensorrt.INetworkDefinition) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, shape)`` of each network input; ``-1`` marks a dynamic dimension.

    Raises:
        ShapeProfileError: an input is a shape tensor (its values would need a profile too,
            which :class:`~regiontrt.shapes.Profile` does not describe).
    """
    out: list[tuple[str, tuple[int, ...]]] = []
    for i in range(network.num_inputs):
        tensor: tensorrt.ITensor = network.get_input(i)
        if tensor.is_shape_tensor:
            raise ShapeProfileError(
                f"input {tensor.name!r} is a shape tensor; regiontrt profiles describe shapes only"
            )
        out.append((tensor.name, dims_tuple(tensor.shape)))
    return out


def check_network_outputs(network: tensorrt.INetworkDefinition) -> None:
    """Refuse a network with a shape-tensor output (``mark_output_for_shapes``): its values live
    on the host and come back through shape inference, which the runner does not read, so such
    an engine would build and then never load.

    Raises:
        BuildError: naming each shape-tensor output.
    """
    shaped = [t.name for t in (network.get_output(i) for i in range(network.num_outputs))
              if t.is_shape_tensor]
    if shaped:
        raise BuildError(f"network outputs {shaped} are shape tensors (host-side shape values); "
                         "regiontrt runs execution tensors only: output them as ordinary int64 "
                         "tensors instead of marking them for shapes")


def dims_tuple(dims: tensorrt.Dims) -> tuple[int, ...]:
    """A ``Dims`` as a tuple (by index: the stubs give ``Dims`` no ``__iter__``)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


def network_dtypes(network: tensorrt.INetworkDefinition) -> dict[str, int]:
    """How many layer outputs of each data type the parsed, strongly typed network has.

    Precision comes from the graph, so this shows it before any GPU is involved: an FP16 variant
    has ``HALF`` layers, an INT8 Q/DQ variant ``INT8`` ones.
    """
    counts: dict[str, int] = {}
    for i in range(network.num_layers):
        layer: tensorrt.ILayer = network.get_layer(i)
        for j in range(layer.num_outputs):
            dtype = layer.get_output(j).dtype
            name = str(getattr(dtype, "name", dtype))
            counts[name] = counts.get(name, 0) + 1
    return counts


def complete_profiles(profiles: Sequence[Profile],
                      inputs: Sequence[tuple[str, tuple[int, ...]]]) -> list[Profile]:
    """Check ``profiles`` against the network's inputs and fill in static inputs.

    Profiles normally arrive resolved by :meth:`ShapeProfile.resolve`; this checks again against
    what TensorRT's parser actually produced.

    Raises:
        ShapeProfileError: an unknown input, a wrong rank, a static dimension the profile
            contradicts, or a dynamic input with no range (the message names it).
    """
    names = [n for n, _ in inputs]
    out = []
    for i, profile in enumerate(list(profiles) or [Profile({})]):
        unknown = sorted(set(profile.ranges) - set(names))
        if unknown:
            raise ShapeProfileError(f"profile {i} names unknown inputs {unknown}; inputs: {names}")
        ranges: dict[str, Range] = {}
        for name, shape in inputs:
            rng = profile.ranges.get(name)
            dynamic = [axis for axis, d in enumerate(shape) if d < 0]
            if rng is None:
                if dynamic:
                    raise ShapeProfileError(
                        f"input {name!r} has dynamic axes {dynamic} (shape {list(shape)}) but "
                        f"profile {i} gives no range for it; add its range ({{setting}})",
                        setting="shape_profile",
                    )
                ranges[name] = Range(shape, shape, shape)
                continue
            if len(rng.min) != len(shape):
                raise ShapeProfileError(
                    f"profile {i}: input {name!r} has rank {len(shape)} (shape {list(shape)}), "
                    f"the profile gives rank {len(rng.min)}"
                )
            for axis, d in enumerate(shape):
                if d >= 0 and not rng.min[axis] == rng.opt[axis] == rng.max[axis] == d:
                    raise ShapeProfileError(
                        f"profile {i}: input {name!r} axis {axis} is static ({d}) in the model but "
                        f"the profile asks {rng.min[axis]}..{rng.max[axis]}"
                    )
            ranges[name] = rng
        out.append(Profile(ranges))
    return out


def add_profiles(trt: Any, builder: tensorrt.Builder, config: tensorrt.IBuilderConfig,
                 profiles: Sequence[Profile]) -> None:
    """Add one optimization profile per :class:`Profile` to ``config``.

    Raises:
        ShapeProfileError: TensorRT rejected a profile.
    """
    for i, profile in enumerate(profiles):
        opt: tensorrt.IOptimizationProfile = builder.create_optimization_profile()
        for name, rng in profile.ranges.items():
            try:
                opt.set_shape(name, trt.Dims(list(rng.min)), trt.Dims(list(rng.opt)),
                              trt.Dims(list(rng.max)))
            except RuntimeError as exc:  # TensorRT 10+ raises on inconsistent min/opt/max
                raise ShapeProfileError(
                    f"TensorRT rejected profile {i} for input {name!r} (min {list(rng.min)}, "
                    f"opt {list(rng.opt)}, max {list(rng.max)}): {exc}") from exc
        if config.add_optimization_profile(opt) < 0:
            raise ShapeProfileError(
                f"TensorRT rejected optimization profile {i}: {profile.to_dict()}")


def _enum(trt_enum: Any, name: str, what: str, module: str) -> Any:
    member = getattr(trt_enum, name.upper(), None)
    if member is None:
        known = ", ".join(sorted(getattr(trt_enum, "__members__", {})))
        raise BuildError(f"{module} has no {what} {name!r}; it knows: {known}")
    return member


def apply_tactics(trt: Any, config: tensorrt.IBuilderConfig, tactics: TacticSelector,
                  *, rtx: bool) -> dict[str, Any]:
    """Apply the builder settings both libraries share; returns what was applied.

    Settings a library lacks are recorded as ``"unsupported: ..."`` rather than failing the build,
    so one :class:`TacticSelector` serves several TensorRT versions.
    """
    module = trt.__name__
    applied: dict[str, Any] = {"strongly_typed": True}
    config.builder_optimization_level = tactics.optimization_level
    applied["optimization_level"] = tactics.optimization_level
    if tactics.tactic_sources is not None:
        bits = 0
        for source in tactics.tactic_sources:
            bits |= 1 << int(_enum(trt.TacticSource, source, "tactic source", module))
        if not config.set_tactic_sources(bits):
            raise BuildError(f"{module} refused tactic sources {list(tactics.tactic_sources)}")
        applied["tactic_sources"] = [s.upper() for s in tactics.tactic_sources]
    if tactics.max_tactics is not None:
        if hasattr(config, "max_num_tactics"):  # added in TensorRT 10.x, absent before
            config.max_num_tactics = tactics.max_tactics
            applied["max_tactics"] = tactics.max_tactics
        else:
            applied["max_tactics"] = f"unsupported by {module} {trt.__version__}"
            log.warning("max_tactics ignored: %s %s has no max_num_tactics",
                        module, trt.__version__)
    if tactics.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, tactics.workspace_bytes)
        applied["workspace_bytes"] = tactics.workspace_bytes
    if tactics.hardware_compatibility != "none":
        if rtx:  # TensorRT-RTX ignores it with a warning; its portability is the CC targets
            applied["hardware_compatibility"] = "unsupported by TensorRT-RTX (use targets)"
        else:
            config.hardware_compatibility_level = _enum(
                trt.HardwareCompatibilityLevel, tactics.hardware_compatibility,
                "hardware compatibility level", module)
            applied["hardware_compatibility"] = tactics.hardware_compatibility
    config.profiling_verbosity = _enum(
        trt.ProfilingVerbosity, tactics.profiling_verbosity, "profiling verbosity", module)
    applied["profiling_verbosity"] = tactics.profiling_verbosity
    apply_build_flags(trt, config, tactics, applied, rtx=rtx)
    return applied


def build_plan(trt: Any, builder: tensorrt.Builder, network: tensorrt.INetworkDefinition,
               config: tensorrt.IBuilderConfig, name: str = "") -> bytes:
    """``build_serialized_network``, turning a failure into :class:`BuildError`."""
    mark = error_mark(trt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        errors = errors_since(trt, mark) or ["no error reported; see the regiontrt.tensorrt log"]
        label = f" {name!r}" if name else ""
        raise BuildError(f"{trt.__name__} failed to build{label}:\n  - " + "\n  - ".join(errors))
    return bytes(serialized)


def inspect_plan(trt: Any, payload: bytes, profiles: Sequence[Profile],
                 model: onnx.ModelProto) -> dict[str, Any]:
    """Deserialize ``payload`` on the local GPU and return its :func:`fusion_report`.

    An execution context at the first profile's opt shapes is attached to the inspector, since
    without one dynamic-shape layers print no datatype.
    """
    init_plugins(trt, trt_logger(trt))  # plans with plugins only deserialize with the registry
    runtime: tensorrt.Runtime = trt.Runtime(trt_logger(trt))
    runtime.engine_host_code_allowed = True  # built by this very process: a trusted plan
    engine: tensorrt.ICudaEngine = runtime.deserialize_cuda_engine(payload)
    if engine is None:
        raise BuildError(f"{trt.__name__} could not deserialize the plan it just built")
    inspector: tensorrt.EngineInspector = engine.create_engine_inspector()
    context = None
    try:
        context = engine.create_execution_context()
        if profiles and context is not None:
            for tensor, rng in profiles[0].ranges.items():
                context.set_input_shape(tensor, rng.opt)
            inspector.execution_context = context
    except Exception as exc:  # the report is still useful without concrete shapes
        log.debug("inspector without execution context: %s", exc)
    text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    del inspector, context, engine, runtime  # context before engine before runtime
    return fusion_report(text, model)


def engine_profiles(trt: Any, engine: tensorrt.ICudaEngine) -> list[Profile]:
    """The engine's optimization profiles, read back from the engine itself."""
    try:
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        out = []
        for k in range(engine.num_optimization_profiles):
            ranges = {}
            for name in inputs:
                lo, opt, hi = (dims_tuple(s) for s in engine.get_tensor_profile_shape(name, k))
                ranges[name] = Range(lo, opt, hi)
            out.append(Profile(ranges))
        return out
    except Exception as exc:  # fall back to the metadata's profiles
        log.debug("could not read profiles from the engine: %s", exc)
        return []
