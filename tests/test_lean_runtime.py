"""Version-compatible plans and the lean runtime (issue 23, item 5), on the recording fake.

The fake fails where TensorRT fails (:mod:`regiontrt.testing.recording_runtime`): a plan built
with ``VERSION_COMPATIBLE`` carries the lean runtime, and deserializing it returns ``None``
unless ``Runtime.engine_host_code_allowed`` was set first. A lean-runtime-only site is the fake
module without ``Builder`` (the real ``tensorrt_lean`` has none: see
``test_tensorrt_conformance_lean.py``).
"""

from __future__ import annotations

import sys
import types

import pytest
from test_backend_tensorrt_config import PROFILE, _install, build, make_fake_trt

from regiontrt.backends import load_payload, trt_build
from regiontrt.backends.tactics import TacticSelector
from regiontrt.backends.tensorrt import TensorRTBackend
from regiontrt.backends.tensorrt_rtx import TensorRTRTXBackend
from regiontrt.deploy import hardware
from regiontrt.errors import BuildError, IncompatibleEngineError
from regiontrt.testing.recording_runtime import LEAN_MARK

VC = {"version_compatible": True}


def _meta(version: str, flags: dict[str, object] | None = None) -> dict[str, object]:
    return {"target": "sm90", "payload_format": "tensorrt-plan", "backend_version": version,
            "backend_info": {"builder_config": dict(flags or {}),
                             "profiles": [PROFILE.to_dict()]}}


def _flags(trt) -> list[str]:
    return [c[1] for c in trt.calls if c[0] == "set_flag"]


def test_version_compatible_is_an_opt_in_flag_recorded_in_the_metadata(monkeypatch):
    trt = make_fake_trt("10.8.0.43")
    _install(monkeypatch, trt, sm="sm90")
    plain = build(TacticSelector())
    assert _flags(trt) == [] and "version_compatible" not in plain.info["builder_config"]
    result = build(TacticSelector(version_compatible=True))
    assert _flags(trt) == ["VERSION_COMPATIBLE"]
    assert result.info["builder_config"]["version_compatible"] is True
    assert result.payload.endswith(LEAN_MARK)  # the fake's plan carries the lean runtime
    # the fusion report deserialized the plan we had just built: host code was allowed there
    assert ("engine_host_code_allowed", True) in trt.calls
    assert "error" not in result.info["fusion_report"]


def test_exclude_lean_runtime_needs_version_compatible(monkeypatch):
    with pytest.raises(ValueError, match="version_compatible"):
        TacticSelector(exclude_lean_runtime=True)
    trt = make_fake_trt("11.4.0.106")
    _install(monkeypatch, trt, sm="sm90")
    result = build(TacticSelector(version_compatible=True, exclude_lean_runtime=True))
    assert _flags(trt) == ["VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"]
    assert result.info["builder_config"]["exclude_lean_runtime"] is True
    assert not result.payload.endswith(LEAN_MARK)


@pytest.mark.parametrize(("built", "flags", "why"), [
    ("10.8.0.43", {}, "only load in the release that built them"),
    ("10.9.0.1", VC, "never an older one"),
    ("10.4.0.1", {**VC, "exclude_lean_runtime": True}, "without its lean runtime"),
    ("8.5.3", VC, "8.6 or later"),
])
def test_release_mismatch_is_refused_unless_the_plan_loads_here(monkeypatch, built, flags, why):
    trt = make_fake_trt("10.8.0.43")
    _install(monkeypatch, trt, sm="sm90")
    if built == "10.8.0.43":  # a normal plan: any other release is refused
        built = "10.7.0.23"
    with pytest.raises(IncompatibleEngineError, match=why):
        TensorRTBackend().check_compatible(_meta(built, flags))


@pytest.mark.parametrize("built", ["10.0.1.6", "10.7.0.23", "9.3.0.1", "8.6.1.6"])
def test_version_compatible_plans_of_older_releases_are_accepted(monkeypatch, built):
    trt = make_fake_trt("10.8.0.43")
    _install(monkeypatch, trt, sm="sm90")
    TensorRTBackend().check_compatible(_meta(built, VC))  # NVIDIA: forward from 8.6


def test_rtx_refuses_version_compatible_builds_and_release_mismatches():
    pytest.importorskip("tensorrt_rtx", reason="needs the tensorrt-rtx package")
    from test_backend_tensorrt import cnn, request

    with pytest.raises(BuildError, match="release that built them"):
        TensorRTRTXBackend().build(request(cnn(), version_compatible=True,
                                           compute_capabilities=("sm89",)))
    with pytest.raises(IncompatibleEngineError, match="only load in the release"):
        TensorRTRTXBackend()._check_version("1.6.0.1", _meta("1.6.0.1", VC))


def test_a_trusted_version_compatible_plan_may_run_its_host_code(monkeypatch):
    trt = make_fake_trt("10.8.0.43")
    _install(monkeypatch, trt, sm="sm90")
    plan = build(TacticSelector(version_compatible=True)).payload
    trt.calls.clear()
    runner = load_payload(TensorRTBackend(), plan, _meta("10.8.0.43", VC),
                          "signature verified with site.pub")
    runner.close()
    calls = [c[0] for c in trt.calls]
    assert calls.index("engine_host_code_allowed") < calls.index("deserialize")


def test_an_unverified_version_compatible_plan_is_refused_before_tensorrt_sees_it(monkeypatch):
    trt = make_fake_trt("10.8.0.43")
    _install(monkeypatch, trt, sm="sm90")
    plan = build(TacticSelector(version_compatible=True)).payload
    trt.calls.clear()
    with pytest.raises(IncompatibleEngineError, match="carries TensorRT's lean runtime"):
        load_payload(TensorRTBackend(), plan, _meta("10.8.0.43", VC), None)
    assert not [c for c in trt.calls if c[0] in ("deserialize", "engine_host_code_allowed")]


def test_a_header_hiding_the_lean_runtime_gains_nothing(monkeypatch):
    """Metadata that says "not version-compatible" leaves host code disallowed, and TensorRT
    itself then refuses the plan."""
    trt = make_fake_trt("10.8.0.43")
    _install(monkeypatch, trt, sm="sm90")
    plan = build(TacticSelector(version_compatible=True)).payload
    with pytest.raises(IncompatibleEngineError, match="host code is not allowed"):
        load_payload(TensorRTBackend(), plan, _meta("10.8.0.43"), "signed bundle (site)")


def _lean(version: str = "10.8.0.43") -> types.SimpleNamespace:
    trt = make_fake_trt(version)
    for name in ("Builder", "OnnxParser", "IBuilderConfig", "init_libnvinfer_plugins"):
        delattr(trt, name)
    trt.__name__ = "tensorrt_lean"
    return trt


def test_import_first_takes_a_runtime_without_a_builder(monkeypatch):
    lean = _lean()
    monkeypatch.setitem(sys.modules, "tensorrt_lean", lean)
    stubs_only = types.ModuleType("stubs_only")  # a stubs-only install: no Runtime at all
    monkeypatch.setitem(sys.modules, "stubs_only", stubs_only)
    assert trt_build.import_first(["stubs_only", "tensorrt_lean"]) is lean
    assert "tensorrt_lean" in TensorRTBackend._modules


def test_a_lean_only_site_loads_version_compatible_plans_and_builds_nothing(monkeypatch):
    full = make_fake_trt("10.8.0.43")
    _install(monkeypatch, full, sm="sm90")
    plan = build(TacticSelector(version_compatible=True)).payload  # built elsewhere
    lean = _lean("10.9.0.2")  # the site runs a later lean runtime
    _install(monkeypatch, lean, sm="sm90")
    assert TensorRTBackend.lean_only() and TensorRTBackend.is_available()
    with pytest.raises(BuildError, match=r"lean runtime .* cannot build"):
        build(TacticSelector())
    with pytest.raises(IncompatibleEngineError, match="runs version-compatible plans only"):
        TensorRTBackend().check_compatible(_meta("10.9.0.2"))  # same release, not VC
    backend = TensorRTBackend()
    backend.check_compatible(_meta("10.8.0.43", VC))
    load_payload(backend, plan, _meta("10.8.0.43", VC), "signed bundle (site)").close()
    assert ("engine_host_code_allowed", True) in lean.calls
    monkeypatch.setattr(hardware, "local_gpu", lambda: "sm90")
    assert "lean runtime" in (hardware.tensorrt_build_blocker() or "")


class _Bundle:
    """What :func:`regiontrt.deploy.select.select` reads of a bundle, over real engine files."""

    def __init__(self, folder, variants) -> None:
        from regiontrt.deploy.variant import Variant
        from regiontrt.runtime import artifact

        self.path, self.install, self.deferred = folder, None, ()
        self.version, self.region, self.onnx_sha256 = "1.0.0", "EU", "0" * 64
        self.manifest = {"onnx": {"file": "model.onnx"}}
        self.loaded: list[str] = []
        rows = []
        for target, metadata in variants:
            artifact.write(folder / f"{target}.engine", metadata, b"plan")
            rows.append(Variant(target, "tensorrt", f"{target}.engine", "", 4))
        self.variants = tuple(rows)

    def load_variant(self, variant):
        self.loaded.append(variant.target)
        return types.SimpleNamespace(backend_name="tensorrt", region="EU", precision="fp16")

    def onnx_engine(self):
        raise AssertionError("a loadable plan must win before the ONNX fallback")


def test_selection_prefers_a_version_compatible_variant_over_a_rebuild(monkeypatch, tmp_path):
    from regiontrt.deploy.select import select

    _install(monkeypatch, _lean("10.9.0.2"), sm="sm90")
    monkeypatch.setattr(hardware, "local_gpu", lambda: "sm90")
    bundle = _Bundle(tmp_path, [("sm90", _meta("10.8.0.43")), ("sm90-vc", _meta("10.8.0.43", VC))])
    selection = select(bundle)  # type: ignore[arg-type]
    assert bundle.loaded == ["sm90-vc"] and not selection.rebuilt
    assert selection.variant is not None and selection.variant.target == "sm90-vc"
    first, chosen = selection.reasons
    assert not first.chosen and "only load in the release" in first.reason
    assert chosen.chosen and "version-compatible" in chosen.reason


def test_a_fleet_target_opts_in_to_version_compatible_builds():
    from regiontrt.deploy.fleet import TargetSpec
    from regiontrt.errors import FleetError

    spec = TargetSpec.from_dict({"name": "dc-h100", "backend": "tensorrt",
                                 "compute_capabilities": ["sm90"], "version_compatible": True})
    assert spec.tactics().version_compatible and not spec.tactics().exclude_lean_runtime
    assert spec.to_dict()["version_compatible"] is True
    with pytest.raises(FleetError, match="version_compatible must be true or false"):
        TargetSpec.from_dict({"name": "x", "backend": "tensorrt", "version_compatible": "yes"})
    with pytest.raises(FleetError, match="exclude_lean_runtime applies"):
        TargetSpec.from_dict({"name": "x", "backend": "tensorrt", "exclude_lean_runtime": True})


def test_auto_does_not_pick_a_lean_runtime_that_cannot_build(monkeypatch):
    from regiontrt.backends import get_backend

    _install(monkeypatch, make_fake_trt("10.8.0.43"), sm="sm90")
    assert get_backend("auto").name == "tensorrt"
    _install(monkeypatch, _lean(), sm="sm90")
    assert get_backend("auto").name == "onnxruntime"
    assert get_backend("tensorrt").lean_only()  # asked for by name, it still loads plans
