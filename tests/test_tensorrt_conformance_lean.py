"""The lean runtime, version compatibility, CUDA-graph capture and aliasing against the bindings.

Same machinery as ``test_tensorrt_conformance.py`` (compiled modules imported with stand-in
libraries, ``trt_bindings_api.py``), for what issue 23 added:

* the lean runtime's module (``tensorrt-lean-cu13-bindings``: ``tensorrt_lean``) has no
  ``Builder`` and has every name our *load and run* path calls, found in the source by the
  variables' roles, restricted to the functions that run when a plan is loaded and executed;
  the GPU double's methods have its signatures;
* ``BuilderFlag.VERSION_COMPATIBLE``/``EXCLUDE_LEAN_RUNTIME`` carry the values the recording fake
  uses, in every release, and ``Runtime.engine_host_code_allowed`` is a property everywhere;
* TensorRT-RTX has ``REQUIRE_USER_ALLOCATION``, ``IExecutionContext.is_stream_capturable(stream)
  -> bool``, ``IRuntimeConfig.cuda_graph_strategy`` and ``CudaGraphStrategy``, which full
  TensorRT lacks (so the code reaches them with ``getattr``);
* ``ICudaEngine.get_aliased_input_tensor(name) -> str`` from TensorRT 10.16 on.
"""

from __future__ import annotations

import ast
from functools import cache
from typing import Any

import pytest
import trt_bindings_api as tb
from test_tensorrt_conformance import ROOT, _api, _check_class, _has, _Uses

from regiontrt.testing import fake_trt
from regiontrt.testing.recording_runtime import BUILDER_FLAGS

LEAN_RELEASES = [version for _, version in tb.LEAN_RELEASES]
#: The load-and-run path, by file: whole files, or the functions in them that run at load.
LEAN_PATH: dict[str, set[str] | None] = {
    "trt_runner.py": None, "trt_slots.py": None, "trt_alloc.py": None, "trt_features.py": None,
    "trt_pool.py": None,
    "tensorrt.py": {"load", "_preflight", "check_compatible", "_check_version", "_module",
                    "_trt", "version", "_check_gpu", "_context_factory", "lean_only"},
    "trt_build.py": {"import_first", "trt_logger", "error_mark", "errors_since",
                     "engine_profiles"},
    "trt_env.py": {"init_plugins"},
    "trt_compat.py": {"lean_only", "allow_host_code", "lean_problem", "release_problem"},
}


class _PathUses(_Uses):
    """:class:`_Uses`, keeping only uses inside the named functions (all, for ``None``)."""

    def __init__(self, file: str, scopes: set[str] | None) -> None:
        super().__init__(file)
        self.scopes = scopes

    def _add(self, owner: str, attr: str | None, optional: bool) -> None:
        if self.scopes is None or self.scopes & set(self.scope):
            super()._add(owner, attr, optional)


@cache
def lean_path_uses() -> frozenset[tuple[str, str | None, bool]]:
    """``(class or module name, attribute, optional)`` for each use on the load-and-run path."""
    found: set[tuple[str, str | None, bool, bool]] = set()
    for file, scopes in LEAN_PATH.items():
        visitor = _PathUses(file, scopes)
        visitor.visit(ast.parse((ROOT / file).read_text()))
        found |= visitor.found
    guarded = {(o, a) for o, a, optional, _ in found if optional}
    return frozenset((o, a, opt or (o, a) in guarded) for o, a, opt, rtx in found if not rtx)


@pytest.fixture(params=LEAN_RELEASES)
def lean_api(request) -> dict[str, Any]:
    return _api(request.param)


def test_the_path_scan_sees_the_load_and_run_calls():
    uses = {(o, a) for o, a, _ in lean_path_uses()}
    for expected in [("Runtime", None), ("Runtime", "engine_host_code_allowed"),
                     ("ICudaEngine", "get_tensor_name"), ("TensorIOMode", "INPUT"),
                     ("IExecutionContext", "execute_async_v3"),
                     ("IExecutionContext", "set_tensor_address")]:
        assert expected in uses, expected
    assert ("Builder", None) not in uses and ("OnnxParser", None) not in uses


def test_the_lean_module_runs_plans_and_cannot_build(lean_api):
    api = lean_api
    assert "Builder" not in api["classes"] and "OnnxParser" not in api["classes"]
    assert "Runtime" in api["classes"] and api["version"]  # what import_first looks for
    missing = sorted(f"{o}.{a}" if a else o for o, a, optional in lean_path_uses()
                     if not optional and not _has(api, o, a))
    assert missing == [], f"tensorrt_lean {api['version']} lacks {missing}"


def test_the_lean_module_has_what_the_load_path_reaches_through_getattr(lean_api):
    api = lean_api
    for owner, attr in [("IOutputAllocator", None), ("IExecutionContext", "infer_shapes"),
                        ("IExecutionContext", "get_max_output_size"),
                        ("ICudaEngine", "num_optimization_profiles"),
                        ("ICudaEngine", "get_aliased_input_tensor")]:
        assert _has(api, owner, attr), (owner, attr)
    runtime = api["classes"]["Runtime"]
    assert runtime["engine_host_code_allowed"]["kind"] == "property"
    # the lean runtime registers no plugin library: init_plugins must cope without it
    assert not _has(api, "init_libnvinfer_plugins", None)


def test_the_gpu_double_matches_the_lean_bindings(lean_api):
    api = lean_api
    problems = _check_class(api, fake_trt.FakeCudaEngine, "ICudaEngine", {"reference"})
    problems += _check_class(api, fake_trt.FakeExecutionContext, "IExecutionContext",
                             {"is_stream_capturable"})  # TensorRT-RTX only
    assert problems == [], "\n".join(problems)


def test_version_compatibility_flags_have_the_fakes_values(any_api):
    api = any_api
    major = int(api["version"].split(".")[0])
    flags = api["enums"]["BuilderFlag"]
    if major >= 10:  # TensorRT; the RTX module keeps the flags too, and we refuse them there
        table = BUILDER_FLAGS[min(major, 11)]
        assert {k: flags[k] for k in table} == table
    assert api["classes"]["Runtime"]["engine_host_code_allowed"]["kind"] == "property"
    sigs = api["classes"]["IBuilderConfig"]["set_flag"]["sigs"]
    assert [([tuple(p) for p in s["params"]], s["returns"]) for s in sigs] == \
        [([("flag", False)], "None")]


def test_rtx_capture_api_exists_there_and_only_there(any_api):
    api = any_api
    rtx = api["version"].startswith("1.")
    ctx = api["classes"]["IExecutionContext"]
    assert ("REQUIRE_USER_ALLOCATION" in api["enums"]["BuilderFlag"]) == rtx
    assert ("is_stream_capturable" in ctx) == rtx
    if rtx:
        assert [s["returns"] for s in ctx["is_stream_capturable"]["sigs"]] == ["bool"]
        assert [[p[0] for p in s["params"]] for s in ctx["is_stream_capturable"]["sigs"]] == \
            [["stream"]]
        assert api["classes"]["IRuntimeConfig"]["cuda_graph_strategy"]["kind"] == "property"
        assert "WHOLE_GRAPH_CAPTURE" in api["enums"]["CudaGraphStrategy"]


def test_aliasing_query_returns_a_name(any_api):
    api = any_api
    sigs = api["classes"]["ICudaEngine"].get("get_aliased_input_tensor")
    if sigs is None:  # 10.0: no aliasing; the runner checks with getattr
        assert api["version"].startswith("10.0")
        return
    assert [([tuple(p) for p in s["params"]], s["returns"]) for s in sigs["sigs"]] == \
        [([("name", False)], "str")]


@pytest.fixture(params=[*[v for _, v in tb.RELEASES], "rtx"])
def any_api(request) -> dict[str, Any]:
    return _api(request.param)
