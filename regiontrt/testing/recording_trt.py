"""A recording fake of the ``tensorrt`` module for the builder side (no GPU, no TensorRT).

:func:`make_recording_trt` returns a namespace with the classes, functions and enums the TensorRT
backend calls while building and loading, named as TensorRT names them (``Builder``,
``IBuilderConfig``, ``OnnxParser``, ``Runtime``...), with TensorRT's parameter names. Every call
that matters is appended to ``trt.calls``. Enum members and values follow the release's major
version exactly (:data:`ENUMS`): TensorRT 11 has no ``EXPLICIT_BATCH`` and no CUBLAS, CUBLAS_LT or
CUDNN tactic sources, and renumbers the ones left. ``tests/test_tensorrt_conformance.py`` checks
all of this, names, signatures and values, against the compiled bindings of 10.x and 11.x.

It fails the way TensorRT fails: ``set_timing_cache`` returns ``False`` (``refuse_timing_cache``),
``OnnxParser.parse`` returns ``False`` with per-node errors (``parse_errors``),
``IOptimizationProfile.set_shape`` raises ``RuntimeError`` on inconsistent shapes,
``build_serialized_network`` returns ``None`` after logging an error (``build_error``), and
``deserialize_cuda_engine`` returns ``None`` after logging one (``deserialize_error``).
"""

from __future__ import annotations

import enum
import json
import types
from collections.abc import Sequence
from typing import Any

import onnx

from regiontrt.testing.recording_runtime import BUILDER_FLAGS, LEAN_MARK, runtime_fakes

#: Enum members by TensorRT major version, as the compiled bindings define them (10.16, 11.4).
ENUMS: dict[int, dict[str, dict[str, int]]] = {
    10: {
        "NetworkDefinitionCreationFlag": {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1,
                                          "PREFER_JIT_PYTHON_PLUGINS": 2,
                                          "PREFER_AOT_PYTHON_PLUGINS": 3},
        "TacticSource": {"CUBLAS": 0, "CUBLAS_LT": 1, "CUDNN": 2, "EDGE_MASK_CONVOLUTIONS": 3,
                         "JIT_CONVOLUTIONS": 4},
    },
    11: {
        "NetworkDefinitionCreationFlag": {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1,
                                          "PREFER_AOT_PYTHON_PLUGINS": 2},
        "TacticSource": {"EDGE_MASK_CONVOLUTIONS": 0, "JIT_CONVOLUTIONS": 1},
    },
}
_COMMON = {
    "MemoryPoolType": {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1, "DLA_LOCAL_DRAM": 2,
                       "DLA_GLOBAL_DRAM": 3, "TACTIC_DRAM": 4, "TACTIC_SHARED_MEMORY": 5},
    "HardwareCompatibilityLevel": {"NONE": 0, "AMPERE_PLUS": 1, "SAME_COMPUTE_CAPABILITY": 2},
    "ProfilingVerbosity": {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2},
    "LayerInformationFormat": {"ONELINE": 0, "JSON": 1},
    "TensorIOMode": {"NONE": 0, "INPUT": 1, "OUTPUT": 2},
    "DataType": {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "FP8": 6,
                 "BF16": 7, "INT64": 8, "INT4": 9, "FP4": 10, "E8M0": 11},
}
for _table in ENUMS.values():
    _table.update(_COMMON)


def _enums(major: int) -> dict[str, Any]:
    table = ENUMS[11 if major >= 11 else 10]
    flags = {"BuilderFlag": BUILDER_FLAGS[11 if major >= 11 else 10]}  # the ones the fake knows
    return {name: enum.IntEnum(name, members) for name, members in {**table, **flags}.items()}


def make_recording_trt(version: str = "10.8.0.43", *, max_num_tactics: bool = True,
                       refuse_timing_cache: int = 0,
                       parse_errors: Sequence[tuple[int, str, str, str]] = (),
                       build_error: str | None = None, deserialize_error: str | None = None,
                       profile_error: str | None = None, plan: bytes | None = None,
                       plugins: bool = True, shape_outputs: Sequence[str] = ()
                       ) -> types.SimpleNamespace:
    """A fake ``tensorrt`` module of ``version`` that records calls in ``.calls``.

    Args:
        version: ``__version__``; its major version picks the enum tables.
        max_num_tactics: whether ``IBuilderConfig`` has it (added during 10.x).
        refuse_timing_cache: how many ``set_timing_cache`` calls return ``False`` first (as
            TensorRT does for a cache from another device of the same compute capability).
        parse_errors: ``(node index, node name, operator, description)`` per parser error;
            non-empty makes ``parse`` return ``False``.
        build_error: logged as an error, then ``build_serialized_network`` returns ``None``.
        deserialize_error: logged, then ``deserialize_cuda_engine`` returns ``None``.
        profile_error: ``IOptimizationProfile.set_shape`` raises ``RuntimeError`` with it (as
            TensorRT does for shapes it cannot accept, beyond the inconsistent ones it always
            refuses).
        plan: the bytes a build returns (default: a 64-byte header as reported for TensorRT,
            with this version, then ``b"engine"``).
        plugins: whether the module has ``init_libnvinfer_plugins``.
        shape_outputs: ONNX outputs the parsed network marks as shape tensors
            (``mark_output_for_shapes``), whose ``is_shape_tensor`` is then ``True``.
    """
    calls: list[tuple[Any, ...]] = []
    major, minor, patch, build = (int(v) for v in (version.split(".") + ["0"] * 4)[:4])
    enums = _enums(major)
    net = _network_fakes(enums["DataType"])
    net.update(_parser_fakes(calls, net, parse_errors, shape_outputs))
    cfg = _config_fakes(calls, {"refusals": refuse_timing_cache}, max_num_tactics, profile_error)
    head = bytearray(64)
    head[:4] = b"ftrt"
    head[24:28] = bytes([major, minor, patch, build % 256])
    built = plan if plan is not None else bytes(head) + b"engine"
    fakes = {**net, **cfg, **_builder_fakes(calls, net, cfg, build_error, built),
             **runtime_fakes(calls, deserialize_error)}
    namespace = types.SimpleNamespace(
        __name__="tensorrt", __version__=version, calls=calls, plan_bytes=lambda: built,
        **fakes, **enums)
    if plugins:
        def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
            calls.append(("init_plugins", namespace))
            return True

        namespace.init_libnvinfer_plugins = init_libnvinfer_plugins
    return namespace


def _network_fakes(data_type: Any) -> dict[str, Any]:
    """ILogger, Dims, ITensor, ILayer, INetworkDefinition."""
    class ILogger:
        def __init__(self) -> None:
            pass

        def log(self, severity: Any, msg: str) -> None:
            raise NotImplementedError

    class Dims(tuple):  # type: ignore[type-arg]
        pass

    class ITensor:
        name: str
        shape: Dims
        is_shape_tensor: bool
        dtype: Any

        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape, self.is_shape_tensor = name, Dims(shape), False
            self.dtype = data_type.FLOAT

    class ILayer:
        num_outputs = 1

        def get_output(self, index: int) -> ITensor:
            return ITensor(f"out{index}", ())

    class INetworkDefinition:
        def __init__(self, flags: int) -> None:
            self.flags, self._layers = flags, 0
            self.inputs: list[ITensor] = []
            self.outputs: list[ITensor] = []

        @property
        def num_outputs(self) -> int:
            return len(self.outputs)

        def get_output(self, index: int) -> ITensor:
            return self.outputs[index]

        def mark_output_for_shapes(self, tensor: ITensor) -> bool:
            tensor.is_shape_tensor = True  # as TensorRT: a host-side shape-tensor output
            self.outputs.append(tensor)
            return True

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        @property
        def num_layers(self) -> int:
            return self._layers

        def get_input(self, index: int) -> ITensor:
            return self.inputs[index]

        def get_layer(self, index: int) -> ILayer:
            return ILayer()

    return {"ILogger": ILogger, "Dims": Dims, "ITensor": ITensor, "ILayer": ILayer,
            "INetworkDefinition": INetworkDefinition}


def _parser_fakes(calls: list[tuple[Any, ...]], net: dict[str, Any],
                  parse_errors: Sequence[tuple[int, str, str, str]],
                  shape_outputs: Sequence[str] = ()) -> dict[str, Any]:
    """ParserError and OnnxParser, which fills the network's inputs from the ONNX graph."""
    ITensor = net["ITensor"]

    class ParserError:
        def __init__(self, node: int, name: str, op: str, desc: str) -> None:
            self._node, self._name, self._op, self._desc = node, name, op, desc

        def code(self) -> str:
            return "UNSUPPORTED_NODE"

        def desc(self) -> str:
            return self._desc

        def node(self) -> int:
            return self._node

        def node_name(self) -> str:
            return self._name

        def node_operator(self) -> str:
            return self._op

    class OnnxParser:
        def __init__(self, network: Any, logger: Any) -> None:
            self.network = network
            self.errors: list[ParserError] = []

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> ParserError:
            return self.errors[index]

        def parse(self, model: bytes, path: str | None = None) -> bool:
            proto = onnx.load_from_string(model)
            calls.append(("parse", len(proto.graph.node)))
            if parse_errors:
                self.errors = [ParserError(*e) for e in parse_errors]
                return False
            for vi in proto.graph.input:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1
                             for d in vi.type.tensor_type.shape.dim)
                self.network.inputs.append(ITensor(vi.name, dims))
            for vi in proto.graph.output:
                out = ITensor(vi.name, tuple(d.dim_value if d.HasField("dim_value") else -1
                                             for d in vi.type.tensor_type.shape.dim))
                if vi.name in shape_outputs:  # as if the network marked it for shapes
                    self.network.mark_output_for_shapes(out)
                else:
                    self.network.outputs.append(out)
            self.network._layers = len(proto.graph.node)
            return True

    return {"ParserError": ParserError, "OnnxParser": OnnxParser}


def _config_fakes(calls: list[tuple[Any, ...]], state: dict[str, int], max_num_tactics: bool,
                  profile_error: str | None) -> dict[str, Any]:
    """ITimingCache, IOptimizationProfile and IBuilderConfig (which records every setting)."""
    class ITimingCache:
        def __init__(self, entries: dict[str, float]) -> None:
            self.entries = dict(entries)

        def combine(self, input_cache: ITimingCache, ignore_mismatch: bool) -> bool:
            calls.append(("combine", ignore_mismatch))
            for k, v in input_cache.entries.items():
                self.entries.setdefault(k, v)
            return True

        def serialize(self) -> bytes:
            return json.dumps(self.entries, sort_keys=True).encode()

    class IOptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[Any, Any, Any]] = {}

        def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
            # TensorRT 10+ raises (it no longer just logs) when the three shapes disagree
            if profile_error is not None:
                raise RuntimeError(profile_error)
            if not len(min) == len(opt) == len(max) or any(
                    not 0 <= a <= b <= c for a, b, c in zip(min, opt, max)):
                raise RuntimeError(f"Invalid dimensions for input {input}: min {list(min)}, "
                                   f"opt {list(opt)}, max {list(max)}")
            self.shapes[input] = (min, opt, max)

    class IBuilderConfig:
        builder_optimization_level: int
        hardware_compatibility_level: Any
        profiling_verbosity: Any
        _profiles: list[IOptimizationProfile]  # what was added, for the tests to read
        _cache: ITimingCache | None

        def __init__(self) -> None:
            object.__setattr__(self, "_profiles", [])
            object.__setattr__(self, "_cache", None)
            if max_num_tactics:
                object.__setattr__(self, "max_num_tactics", -1)

        def __setattr__(self, name: str, value: Any) -> None:
            calls.append(("set", name, value))
            object.__setattr__(self, name, value)

        def set_flag(self, flag: Any) -> None:
            calls.append(("set_flag", getattr(flag, "name", flag)))

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            self._profiles.append(profile)
            return len(self._profiles) - 1

        def set_tactic_sources(self, tactic_sources: int) -> bool:
            calls.append(("set_tactic_sources", tactic_sources))
            return True

        def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
            calls.append(("set_memory_pool_limit", pool, pool_size))

        def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
            data = bytes(serialized_timing_cache)
            return ITimingCache(json.loads(data) if data else {})

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            calls.append(("set_timing_cache", dict(cache.entries), ignore_mismatch))
            if state["refusals"] > 0 and not ignore_mismatch:
                state["refusals"] -= 1
                return False
            object.__setattr__(self, "_cache", cache)
            return True

        def get_timing_cache(self) -> ITimingCache | None:
            return self._cache

    return {"ITimingCache": ITimingCache, "IOptimizationProfile": IOptimizationProfile,
            "IBuilderConfig": IBuilderConfig}


def _builder_fakes(calls: list[tuple[Any, ...]], net: dict[str, Any], cfg: dict[str, Any],
                   build_error: str | None, built: bytes) -> dict[str, Any]:
    """Builder, whose build returns ``built`` (or logs ``build_error`` and returns None)."""
    INetworkDefinition = net["INetworkDefinition"]
    IBuilderConfig, IOptimizationProfile = cfg["IBuilderConfig"], cfg["IOptimizationProfile"]

    class Builder:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> Any:
            calls.append(("create_network", flags))
            return INetworkDefinition(flags)

        def create_builder_config(self) -> Any:
            return IBuilderConfig()

        def create_optimization_profile(self) -> Any:
            return IOptimizationProfile()

        def build_serialized_network(self, network: Any,
                                     config: Any) -> bytes | None:
            calls.append(("build", network, config))
            if build_error is not None:
                self.logger.log(1, build_error)  # 1: Any.Severity.ERROR
                return None
            if config._cache is not None:  # the build "times" one more tactic
                config._cache.entries[f"layer{len(config._cache.entries)}"] = 1.0
            flags = {c[1] for c in calls if c[0] == "set_flag"}  # this fake's builds: one config
            embeds = "VERSION_COMPATIBLE" in flags and "EXCLUDE_LEAN_RUNTIME" not in flags
            return built + LEAN_MARK if embeds else built

    return {"Builder": Builder}


#: The fake classes, by TensorRT name, that the conformance test compares with the bindings.
FAKE_CLASSES = ("ILogger", "ITensor", "ILayer", "INetworkDefinition", "ParserError", "OnnxParser",
                "ITimingCache", "IOptimizationProfile", "IBuilderConfig", "Builder",
                "EngineInspector", "IExecutionContext", "ICudaEngine", "Runtime")
