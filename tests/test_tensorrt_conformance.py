"""Our TensorRT code and its fakes against the compiled bindings of TensorRT 10.x and 11.x.

The ``tensorrt-cu12/cu13-bindings`` wheels hold the real pybind11 module; ``trt_bindings_api.py``
imports it with stand-in libraries and lists its API (TensorRT-RTX, installed here, is read the
same way). Then, per release:

* every ``trt.<Name>[.<MEMBER>]`` and every method or property our backend calls on a TensorRT
  object (found in the source, by the variables' roles) exists, except where the code checks
  with ``getattr``/``hasattr`` first (those are listed, and the ones the issue relies on are
  required anyway);
* each fake's methods have the bindings' parameter names, order and defaults, and the same
  primitive return type (``bool``, ``int``, ``None``...); its properties are properties there;
* the enum values the code and the fakes depend on are the bindings' values;
* the points where the fakes fail are where TensorRT can fail (a ``bool`` result, or a ``None``
  result that leaves raising as the only way to fail).
"""

from __future__ import annotations

import ast
import inspect
import re
import types
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import trt_bindings_api as tb

from regiontrt.backends import tactics, trt_alloc, trt_build, trt_slots
from regiontrt.testing import fake_trt
from regiontrt.testing.recording_trt import ENUMS, FAKE_CLASSES, make_recording_trt

ROOT = Path(__file__).resolve().parents[1] / "regiontrt" / "backends"
RELEASES = [version for _, version in tb.RELEASES]
FILES = ["tensorrt.py", "tensorrt_rtx.py", "trt_build.py", "trt_env.py", "trt_runner.py",
         "trt_slots.py", "trt_alloc.py", "timing_cache.py", "trt_compat.py", "trt_features.py"]
#: How the backend names its TensorRT objects (local variables and ``self.`` attributes).
ROLES = {"engine": "ICudaEngine", "_engine": "ICudaEngine", "ctx": "IExecutionContext",
         "context": "IExecutionContext", "config": "IBuilderConfig", "cfg": "IBuilderConfig",
         "network": "INetworkDefinition", "parser": "OnnxParser", "builder": "Builder",
         "runtime": "Runtime", "opt": "IOptimizationProfile", "inspector": "EngineInspector",
         "err": "ParserError", "tensor": "ITensor", "layer": "ILayer", "into": "ITimingCache",
         "runtime_config": "IRuntimeConfig"}
#: Code that only runs with TensorRT-RTX (file, or file and enclosing function/class).
RTX_ONLY = {("tensorrt_rtx.py", None), ("timing_cache.py", "load_runtime_cache"),
            ("timing_cache.py", "RuntimeCacheContexts"), ("timing_cache.py", "RuntimeCacheOwner")}
#: Reached through getattr/hasattr, yet relied on in every release the extras allow.
REQUIRED_OPTIONAL = {("init_libnvinfer_plugins", None), ("IOutputAllocator", None),
                     ("IExecutionContext", "get_max_output_size"),
                     ("IExecutionContext", "infer_shapes"),
                     ("ICudaEngine", "num_optimization_profiles")}
PRIMITIVES = {"bool", "int", "None", "str", "float"}
#: Methods of the GPU double that only some bindings have (the code reaches them with getattr):
#: name -> the first release that has it ("rtx": TensorRT-RTX only).
NEWER = {"get_aliased_input_tensor": "10.16", "is_stream_capturable": "rtx"}


def _api(release: str) -> dict[str, Any]:
    if release == "rtx":
        pytest.importorskip("tensorrt_rtx", reason="needs the tensorrt-rtx package")
        return _installed("tensorrt_rtx")
    reason = tb.missing_reason(release)
    if reason:
        pytest.skip(reason)
    return _bindings(release)


@cache
def _bindings(release: str) -> dict[str, Any]:
    return tb.bindings_api(release)


@cache
def _installed(module: str) -> dict[str, Any]:
    return tb.installed_api(module)


@pytest.fixture(params=RELEASES)
def api(request) -> dict[str, Any]:
    return _api(request.param)


@pytest.fixture(params=[*RELEASES, "rtx"])
def any_api(request) -> dict[str, Any]:
    return _api(request.param)


# -- what the code uses, read from the source ----------------------------------------------
class _Uses(ast.NodeVisitor):
    def __init__(self, file: str) -> None:
        self.file, self.scope = file, [None]
        self.found: set[tuple[str, str | None, bool, bool]] = set()  # cls/name, attr, opt, rtx

    def _rtx(self) -> bool:
        return (self.file, None) in RTX_ONLY or any((self.file, s) in RTX_ONLY for s in self.scope)

    def _add(self, owner: str, attr: str | None, optional: bool) -> None:
        dunder = [n for n in (owner, attr) if n and n.startswith("__") and n != "__init__"]
        if not dunder:
            self.found.add((owner, attr, optional, self._rtx()))

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_ClassDef = visit_FunctionDef  # type: ignore[assignment]

    @staticmethod
    def _role(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return ROLES.get(node.id)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in ("self", "slot"):
            return ROLES.get(node.attr)
        return None

    def visit_Attribute(self, node: ast.Attribute) -> None:
        value = node.value
        if isinstance(value, ast.Name) and value.id == "trt":
            self._add(node.attr, None, False)
        elif isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name) \
                and value.value.id == "trt":
            self._add(value.attr, node.attr, False)
        elif (role := self._role(value)) is not None:
            self._add(role, node.attr, False)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        fn = node.func
        if isinstance(fn, ast.Name) and fn.id in ("getattr", "hasattr") and len(node.args) >= 2 \
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            target, name = node.args[0], node.args[1].value
            if isinstance(target, ast.Name) and target.id == "trt":
                self._add(name, None, True)
            elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                    and target.value.id == "trt":
                self._add(target.attr, name, True)
            elif (role := self._role(target)) is not None:
                self._add(role, name, True)
            for arg in node.args[2:]:
                self.visit(arg)
            return
        self.generic_visit(node)


@cache
def code_uses() -> frozenset[tuple[str, str | None, bool, bool]]:
    """``(class or module name, attribute, optional, TensorRT-RTX only)`` for each use; a use is
    optional when the same name is also checked with getattr/hasattr (``max_num_tactics``)."""
    found: set[tuple[str, str | None, bool, bool]] = set()
    for file in FILES:
        visitor = _Uses(file)
        visitor.visit(ast.parse((ROOT / file).read_text()))
        found |= visitor.found
    guarded = {(o, a) for o, a, optional, _ in found if optional}
    return frozenset((o, a, opt or (o, a) in guarded, rtx) for o, a, opt, rtx in found)


def _has(api: dict[str, Any], owner: str, attr: str | None) -> bool:
    classes, enums, functions = api["classes"], api["enums"], api["functions"]
    if attr is None:
        return owner in classes or owner in enums or owner in functions
    return (attr in classes.get(owner, {}) or attr in enums.get(owner, {})
            or f"{owner}.{attr}" in enums)


def test_the_source_scan_sees_what_the_backend_calls():
    uses = {(o, a) for o, a, _, _ in code_uses()}
    for expected in [("Builder", None), ("IBuilderConfig", "set_timing_cache"),
                     ("IExecutionContext", "set_optimization_profile_async"),
                     ("IOptimizationProfile", "set_shape"), ("OnnxParser", "parse"),
                     ("init_libnvinfer_plugins", None), ("ICudaEngine", "get_tensor_name"),
                     ("IExecutionContext", "get_max_output_size"), ("TacticSource", None),
                     ("EngineValidity", "INVALID"), ("ITimingCache", "combine")]:
        assert expected in uses, expected


def test_every_tensorrt_name_the_code_uses_exists(api):
    missing = sorted(f"{o}.{a}" if a else o for o, a, optional, rtx in code_uses()
                     if not rtx and not optional and not _has(api, o, a))
    assert missing == [], f"TensorRT {api['version']} lacks {missing}"


def test_names_reached_through_getattr_that_we_rely_on_exist(api):
    optional = {(o, a) for o, a, opt, rtx in code_uses() if opt and not rtx}
    assert REQUIRED_OPTIONAL - {("IOutputAllocator", None)} <= optional  # the list is current
    missing = sorted(f"{o}.{a}" if a else o for o, a in REQUIRED_OPTIONAL if not _has(api, o, a))
    assert missing == [], f"TensorRT {api['version']} lacks {missing}"


def test_every_tensorrt_rtx_name_the_code_uses_exists():
    api = _api("rtx")
    missing = sorted(f"{o}.{a}" if a else o for o, a, optional, _ in code_uses()
                     if not optional and not _has(api, o, a))
    assert missing == [], f"TensorRT-RTX {api['version']} lacks {missing}"


# -- the fakes' signatures -------------------------------------------------------------------
def _fake_members(cls: type) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for klass in reversed(cls.__mro__[:-1]):
        if klass.__module__ == "builtins":
            continue
        members.update({name: "property" for name in getattr(klass, "__annotations__", {})})
        members.update(vars(klass))
    return {n: v for n, v in members.items()
            if not n.startswith("_") or n == "__init__"}


def _params(fn: Any, method: bool = True) -> tuple[list[tuple[str, bool]], str]:
    sig = inspect.signature(fn)
    params = [(p.name, p.default is not p.empty)
              for p in list(sig.parameters.values())[1 if method else 0:]]
    ret = sig.return_annotation
    return params, ret if isinstance(ret, str) else getattr(ret, "__name__", str(ret))


def _matches(fake: tuple[list[tuple[str, bool]], str], sigs: list[dict[str, Any]]) -> bool:
    params, ret = fake
    for sig in sigs:
        real = [tuple(p) for p in sig["params"]]
        names = [n for n, _ in params]
        if names != [n for n, _ in real[:len(params)]] or not all(d for _, d in real[len(params):]):
            continue
        returns = sig["returns"].replace("tensorrt.", "")
        if returns in PRIMITIVES and ret != returns:
            continue
        return True
    return False


def _check_class(api: dict[str, Any], fake: type, name: str, skip: set[str]) -> list[str]:
    real = api["classes"].get(name)
    if real is None:
        return [f"{name} is not in TensorRT {api['version']}"]
    problems = []
    for attr, value in _fake_members(fake).items():
        if attr in skip or (attr == "__init__" and name not in ("Builder", "OnnxParser",
                                                                "Runtime", "ILogger")):
            continue
        if attr not in real:
            problems.append(f"{name}.{attr} does not exist")
        elif not callable(value) or isinstance(value, type):
            if real[attr]["kind"] != "property":
                problems.append(f"{name}.{attr} is a {real[attr]['kind']}, the fake's is data")
        elif real[attr]["kind"] != "method":
            problems.append(f"{name}.{attr} is a {real[attr]['kind']}, the fake's a method")
        elif not _matches(_params(value), real[attr]["sigs"]):
            problems.append(f"{name}.{attr}{_params(value)} != {real[attr]['sigs']}")
    return problems


def test_recording_fake_matches_the_bindings(api):
    fake = make_recording_trt(api["version"])
    problems = [p for name in FAKE_CLASSES for p in _check_class(api, getattr(fake, name), name,
                                                                  set())]
    fn = _params(fake.init_libnvinfer_plugins, method=False)
    if not _matches(fn, api["functions"]["init_libnvinfer_plugins"]):
        problems.append(f"init_libnvinfer_plugins{fn}")
    assert problems == [], "\n".join(problems)


def _newer_than(api: dict[str, Any], cls: str) -> set[str]:
    """The double's methods of :data:`NEWER` that this release's ``cls`` lacks."""
    return {name for name in NEWER if name not in api["classes"][cls]}


def test_gpu_double_matches_the_bindings(any_api):
    api = any_api
    problems = _check_class(api, fake_trt.FakeCudaEngine, "ICudaEngine",
                            {"reference"} | _newer_than(api, "ICudaEngine"))
    problems += _check_class(api, fake_trt.FakeExecutionContext, "IExecutionContext",
                             _newer_than(api, "IExecutionContext"))
    assert problems == [], "\n".join(problems)


def test_the_doubles_newer_methods_exist_from_their_release_on(any_api):
    api, version = any_api, any_api["version"]
    rtx = version.startswith("1.")  # TensorRT-RTX 1.x
    release = tuple(int(v) for v in version.split(".")[:2])
    for name, since in NEWER.items():
        cls = "ICudaEngine" if hasattr(fake_trt.FakeCudaEngine, name) else "IExecutionContext"
        expected = rtx or (since != "rtx" and release >= tuple(map(int, since.split("."))))
        assert (name in api["classes"][cls]) == expected, (version, name)


def test_our_output_allocator_and_logger_implement_the_documented_methods(any_api):
    api = any_api
    doc = api["docs"]["IOutputAllocator"]
    documented = dict(re.findall(r"def (\w+)\(self, ([^)]*)\)", doc))
    assert set(documented) == {"reallocate_output", "reallocate_output_async", "notify_shape"}
    for name, params in documented.items():
        ours = [n for n, _ in _params(getattr(trt_alloc.OutputAllocator, name))[0]]
        assert ours == [p.strip() for p in params.split(",")], name
    logger = trt_build.trt_logger(types.SimpleNamespace(__name__="conformance", ILogger=object))
    assert _matches(_params(type(logger).log), api["classes"]["ILogger"]["log"]["sigs"])


# -- enum values ------------------------------------------------------------------------------
def test_the_recording_fakes_enums_are_the_bindings(api):
    major = int(api["version"].split(".")[0])
    newest = max((v for v in RELEASES if v.startswith(f"{major}.")),
                 key=lambda v: tuple(map(int, v.split("."))))
    for name, members in ENUMS[major].items():
        real = api["enums"][name]
        if api["version"].startswith(newest):  # the tables are the newest release's, exactly
            assert real == members, name
        else:  # older releases of the major: a subset, with the same values
            assert {k: members.get(k) for k in real} == real, name


def test_the_gpu_doubles_enum_shims_are_the_bindings(any_api):
    api = any_api
    for shim in (fake_trt.DataType, fake_trt.TensorIOMode):
        real = api["enums"][shim.__name__]
        assert {m.name: m.value for m in shim if m.name in real} == real


def test_values_the_code_depends_on(api):
    enums, major = api["enums"], int(api["version"].split(".")[0])
    assert set(trt_build._LEVELS) == set(enums["ILogger.Severity"].values())
    assert enums["ILogger.Severity"]["ERROR"] == 1 and enums["ILogger.Severity"]["WARNING"] == 2
    handled = set(trt_slots._NUMPY) | set(trt_slots._EXOTIC) | {"INT4", "FP4"}  # refused
    assert set(enums["DataType"]) <= handled
    # SAME_COMPUTE_CAPABILITY came after 10.0: asking an older release gives a BuildError
    # naming the levels it knows (test_backend_tensorrt_config.py covers that message)
    assert {"NONE", "AMPERE_PLUS"} <= set(enums["HardwareCompatibilityLevel"])
    assert set(enums["HardwareCompatibilityLevel"]) <= {
        level.upper() for level in tactics.HARDWARE_COMPATIBILITY}
    for verbosity in tactics.PROFILING_VERBOSITY:
        assert verbosity.upper() in enums["ProfilingVerbosity"]
    assert "JSON" in enums["LayerInformationFormat"] and "WORKSPACE" in enums["MemoryPoolType"]
    flags, sources = enums["NetworkDefinitionCreationFlag"], enums["TacticSource"]
    if major == 10:
        assert flags["STRONGLY_TYPED"] == 1 and "CUBLAS" in sources
    else:  # TensorRT 11: strongly typed only, cuBLAS/cuDNN tactics and EXPLICIT_BATCH gone
        assert "EXPLICIT_BATCH" not in flags
        assert not {"CUBLAS", "CUBLAS_LT", "CUDNN"} & set(sources)


# -- where TensorRT fails, the fakes fail -----------------------------------------------------
def _returns(api: dict[str, Any], cls: str, method: str) -> set[str]:
    return {s["returns"].replace("tensorrt.", "") for s in api["classes"][cls][method]["sigs"]}


def test_failure_points_are_where_the_bindings_can_fail(any_api):
    api = any_api
    # a bool: the fakes return False (set_timing_cache for another GPU's cache, parse errors)
    assert _returns(api, "IBuilderConfig", "set_timing_cache") == {"bool"}
    assert _returns(api, "OnnxParser", "parse") == {"bool"}
    assert _returns(api, "IExecutionContext", "set_tensor_address") == {"bool"}
    assert _returns(api, "IExecutionContext", "execute_async_v3") == {"bool"}
    # None: failing is raising, which is what the recording fake's set_shape does
    assert _returns(api, "IOptimizationProfile", "set_shape") == {"None"}
    # documented to raise since TensorRT 10 although typed bool: the GPU double raises
    assert _returns(api, "IExecutionContext", "set_optimization_profile_async") == {"bool"}
    assert _returns(api, "IExecutionContext", "get_max_output_size") == {"int"}
