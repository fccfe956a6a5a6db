"""One compliance checker over the whole model, at build, save, load and inspect (issue 8, #4).

Every EU bypass the issue lists is built here and must be refused: quantization hidden in an
``If`` branch or a model-local function, float->int8->float casts in the source model or added by
a ``compile()`` subclass, region files and ``Region`` objects that loosen the EU preset, and an EU
artifact whose payload was swapped for an int8 one with its hashes recomputed.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from hostile import build_blob, forge, qdq_model, relu_model
from onnx import TensorProto, helper

import regiontrt as rt
from regiontrt.cli import main
from regiontrt.precision.compliance import check_model, scan_model
from regiontrt.precision.regions import RegionRegistry, default_regions, load_regions
from regiontrt.precision.types import Precision
from regiontrt.runtime import artifact
from regiontrt.runtime.trust import keygen, sign_file

EU = rt.get_region("EU").to_dict()


def _model(nodes, inits=(), *, functions=(), opsets=(("", 17),)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], list(inits))
    model = helper.make_model(graph, functions=list(functions),
                              opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 8
    return model


def qdq_in_if_branch() -> onnx.ModelProto:
    """Q/DQ only in the ``then`` branch of an ``If`` whose condition depends on the data."""
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.05])
    zero = helper.make_tensor("z", TensorProto.INT8, [], [0])
    then = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["t"])],
        "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 4])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 4])])
    return _model([
        helper.make_node("ReduceSum", ["x"], ["sum"], keepdims=0),
        helper.make_node("Greater", ["sum", "zero_f"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
    ], [scale, zero, helper.make_tensor("zero_f", TensorProto.FLOAT, [], [0.0])])


def qdq_in_local_function() -> onnx.ModelProto:
    fn = helper.make_function(
        "custom", "FakeQuant", ["a"], ["b"],
        [helper.make_node("Constant", [], ["s"], value_float=0.05),
         helper.make_node("QuantizeLinear", ["a", "s"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s"], ["b"])],
        [helper.make_opsetid("", 17)])
    return _model([helper.make_node("FakeQuant", ["x"], ["y"], domain="custom")],
                  functions=[fn], opsets=(("", 17), ("custom", 1)))


def cast_chain() -> onnx.ModelProto:
    return _model([helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT8),
                   helper.make_node("Cast", ["i"], ["y"], to=TensorProto.FLOAT)])


def _single(op, domain="", **attrs):
    return _model([helper.make_node(op, ["x"], ["y"], domain=domain, **attrs)],
                  opsets=(("", 21), (domain, 1)) if domain else (("", 21),))


SITES = {
    "qdq-in-if-branch": qdq_in_if_branch,
    "qdq-in-local-function": qdq_in_local_function,
    "cast-chain": cast_chain,
    "com.microsoft-quantize": lambda: _single("QuantizeLinear", "com.microsoft"),
    "dynamic-quantize": lambda: _single("DynamicQuantizeLinear"),
    "qlinear-conv": lambda: _single("QLinearConv"),
    "matmul-integer": lambda: _single("MatMulInteger"),
    "conv-integer": lambda: _single("ConvInteger"),
    "matmul-integer-to-float": lambda: _single("MatMulIntegerToFloat", "com.microsoft"),
    "cast-to-float8": lambda: _single("Cast", to=TensorProto.FLOAT8E4M3FN),
    "cast-to-uint4": lambda: _single("Cast", to=TensorProto.UINT4),
    "castlike-int8": lambda: _model(
        [helper.make_node("CastLike", ["x", "like"], ["y"])],
        [helper.make_tensor("like", TensorProto.INT8, [], [0])]),
}


@pytest.mark.parametrize("case", sorted(SITES))
def test_scan_finds_int8_wherever_it_hides(case):
    model = SITES[case]()
    found = [f for f in scan_model(model) if f.precision is Precision.INT8]
    assert found, case
    report = check_model(model, EU)
    assert not report.compliant and "int8" in report.summary()
    assert report.summary().startswith("no:")


def test_a_plain_fp32_model_is_compliant_and_says_why():
    report = check_model(relu_model(), EU)
    assert report.compliant and report.summary().startswith("yes (")
    assert "int8" in report.summary()


def test_fp16_is_found_for_a_region_that_forbids_it():
    model = _single("Cast", to=TensorProto.FLOAT16)
    assert not check_model(model, rt.get_region("CERTIFIED").to_dict()).compliant
    assert check_model(model, EU).compliant  # EU allows fp16


@pytest.mark.parametrize("case", ["qdq-in-if-branch", "qdq-in-local-function", "cast-chain"])
def test_eu_build_refuses_source_models_that_hide_int8(case):
    model = SITES[case]()
    builder = rt.RegionalEngineBuilder.from_onnx(model).for_region("eu")  # case-insensitive
    with pytest.raises(rt.errors.PolicyViolation, match="int8"):
        builder.build()


def test_eu_build_refuses_a_compile_subclass_that_adds_int8_casts():
    class Sneaky(rt.PrecisionPolicy):
        def compile(self, model, precision, **kwargs):
            out = super().compile(model, precision, **kwargs)
            first = out.graph.node[0]
            first.input[0] = "x_back"
            out.graph.node.insert(0, helper.make_node("Cast", ["x_i8"], ["x_back"],
                                                      to=TensorProto.FLOAT))
            out.graph.node.insert(0, helper.make_node("Cast", ["x"], ["x_i8"],
                                                      to=TensorProto.INT8))
            return out

    builder = (rt.RegionalEngineBuilder.from_onnx(relu_model()).for_region("EU")
               .with_precision(Sneaky("fp32")))
    with pytest.raises(rt.errors.PolicyViolation, match="int8"):
        builder.build()


# -- regions: a preset's forbidden precisions are loosened only with a recorded reason -----------
def test_region_named_like_a_preset_inherits_its_forbidden_precisions():
    with pytest.raises(rt.errors.RegionConfigError, match="override_compliance"):
        rt.Region("EU", precisions=["int8"])
    with pytest.raises(rt.errors.RegionConfigError, match="override_compliance"):
        rt.Region("eu", precisions=["int8", "fp32"])
    assert Precision.INT8 in rt.Region("Eu").forbidden  # inherited, though not given


@pytest.mark.parametrize("name", ["EU", "eu"])
def test_region_file_cannot_loosen_the_eu_preset(tmp_path, name):
    path = tmp_path / "r.toml"
    path.write_text(f'[regions.{name}]\nprecisions = ["int8", "fp32"]\nforbidden = []\n')
    with pytest.raises(rt.errors.RegionConfigError, match="override_compliance"):
        load_regions(path, into=RegionRegistry())
    path.write_text(f'[regions.{name}]\nprecisions = ["fp32"]\nforbidden = []\n')
    region = load_regions(path, into=RegionRegistry())[name.upper()]
    assert Precision.INT8 in region.forbidden  # replacing the preset keeps its compliance


def test_override_is_recorded_in_metadata_and_shown_by_inspect(tmp_path, capsys):
    region = rt.Region("EU", precisions=["int8", "fp32"],
                       override_compliance="legal sign-off 2026-11 for the pilot site")
    assert Precision.INT8 not in region.forbidden
    engine = rt.RegionalEngineBuilder.from_onnx(relu_model()).for_region(region) \
        .with_precision("fp32").build(tmp_path / "e.engine")
    assert engine.metadata["region"]["override_compliance"].startswith("legal sign-off")
    meta = rt.inspect(tmp_path / "e.engine")
    assert meta["compliance_check"]["override"].startswith("legal sign-off")
    assert main(["inspect", str(tmp_path / "e.engine")]) == 0
    assert "legal sign-off" in capsys.readouterr().out


def test_load_regions_changes_the_global_registry_only_when_asked(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[regions.LAB]\nprecisions = ["fp32"]\n')
    before = set(default_regions())
    registry = load_regions(path)
    assert "LAB" in registry and set(default_regions()) == before
    with pytest.raises(rt.errors.UnknownRegionError):
        rt.get_region("LAB")
    registry = RegionRegistry()
    assert load_regions(path, into=registry) is registry and "lab" in {n.lower() for n in registry}


# -- at load, save and inspect: the artifact itself ---------------------------------------------
def _eu_with(blob: bytes, payload: bytes) -> bytes:
    def as_eu(meta):
        meta["region"] = dict(EU)
        meta["precision"] = "fp16"
        meta.pop("compliance", None)
    return forge(blob, as_eu, payload=payload)



@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    pytest.importorskip("model_signing", reason="signing needs model-signing (the fleet extra)")
    return keygen(tmp_path_factory.mktemp("keys"))

@pytest.fixture(scope="module")
def blob() -> bytes:
    return build_blob()


def test_eu_artifact_with_a_swapped_int8_payload_is_refused_at_load(tmp_path, blob, capsys):
    path = tmp_path / "eu.engine"
    path.write_bytes(_eu_with(blob, qdq_model().SerializeToString()))
    artifact.read(path)  # digests are consistent: only the compliance check can refuse it
    with pytest.raises(rt.errors.PolicyViolation, match="int8"):
        rt.load_engine(path)
    meta = rt.inspect(path)
    assert meta["compliance_check"]["compliant"] is False
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "compliant" in out and "no: onnx payload holds int8" in out
    assert main(["inspect", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["compliance_check"]["compliant"] is False


def test_eu_artifact_whose_region_was_loosened_is_still_checked_against_the_preset(
        tmp_path, blob):
    def loosen(meta):
        meta["region"] = {**EU, "forbidden": [], "precisions": ["int8", "fp16", "fp32"]}
        meta["precision"] = "int8"
    path = tmp_path / "eu.engine"
    path.write_bytes(forge(blob, loosen, payload=qdq_model().SerializeToString()))
    with pytest.raises(rt.errors.PolicyViolation, match="forbids"):
        rt.load_engine(path)


def test_a_non_compliant_engine_is_refused_on_construction_so_never_saved(tmp_path, blob):
    # Issue 19: Engine(eu_metadata, int8_payload) used to run infer, serve and export_payload;
    # only save() refused. Construction now checks like load_engine.
    meta, payload = artifact.decode(_eu_with(blob, qdq_model().SerializeToString()))
    with pytest.raises(rt.errors.PolicyViolation, match="refused: no: onnx payload holds int8"):
        rt.Engine(meta, payload)
    assert not list(tmp_path.iterdir())


def test_a_compliant_eu_artifact_loads_and_runs(tmp_path, blob):
    path = tmp_path / "ok.engine"
    path.write_bytes(_eu_with(blob, relu_model().SerializeToString()))
    with rt.load_engine(path) as engine:
        assert engine.compliance().compliant
        out = engine.infer(np.ones((1, 4), np.float32))["y"]
    np.testing.assert_allclose(out, [[1, 2, 3, 4]])


def test_plan_payload_needs_the_build_record_of_its_variant(tmp_path, blob, keys):
    def plan(record: bool):
        def edit(meta):
            meta["region"] = dict(EU)
            meta["payload_format"] = "tensorrt-rtx-plan"
            meta["backend"]["name"] = "tensorrt-rtx"
            if not record:
                meta.pop("compliance")
        return edit

    private, public = keys
    for record, compliant in ((True, True), (False, False)):
        path = tmp_path / f"plan-{record}.engine"
        path.write_bytes(forge(blob, plan(record), payload=b"opaque plan bytes"))
        # Unsigned, a plan's record is a header field anyone can edit: never enough for EU.
        unsigned = rt.inspect(path)["compliance_check"]
        assert unsigned["compliant"] is False
        assert "signature verifies" in " ".join(unsigned["reasons"])
        sign_file(path, private)
        check = rt.inspect(path, trust=public)["compliance_check"]
        assert check["compliant"] is compliant, check
        assert ("build record" in " ".join(check["reasons"])) is record
        assert "signature verified with public.pem" in check["checked"]


def test_preset_names_are_one_spelling_everywhere(tmp_path):
    assert rt.Region("eu").name == "EU" and rt.Region(" Eu ").name == "EU"
    path = tmp_path / "r.toml"
    path.write_text('[regions.eu]\nprecisions = ["fp32"]\n')
    registry = load_regions(path, into=RegionRegistry())
    assert registry["Eu"].name == "EU" and list(registry) == ["EU"]
    assert rt.RegionalEngineBuilder.from_onnx(relu_model()).for_region("eU").region.name == "EU"


def test_cli_build_uses_the_regions_file_without_touching_the_global_registry(tmp_path, capsys):
    onnx.save(relu_model(), str(tmp_path / "m.onnx"))
    regions = tmp_path / "r.toml"
    regions.write_text('[regions.LAB2]\nprecisions = ["fp32"]\n')
    out = tmp_path / "m.engine"
    assert main(["build", str(tmp_path / "m.onnx"), "--region", "lab2", "--regions-file",
                 str(regions), "-o", str(out)]) == 0
    assert rt.inspect(out)["region"]["name"] == "LAB2"
    assert "LAB2" not in default_regions()
    regions.write_text('[regions.eu]\nprecisions = ["int8"]\n')
    assert main(["build", str(tmp_path / "m.onnx"), "--region", "EU", "--regions-file",
                 str(regions), "-o", str(out)]) == 2
    assert "override_compliance" in capsys.readouterr().err


@pytest.mark.parametrize(("build", "compliant"), [
    ({"network_dtypes": {"FLOAT": 9, "HALF": 4}}, True),
    ({"network_dtypes": {"FLOAT": 9, "INT8": 2}}, False),
    ({"network_dtypes": {"FLOAT": 9, "FP8": 1}}, False),
    ({"fusion_report": {"layers": [{"name": "conv", "outputs": ["fp16"]},
                                   {"name": "cast", "inputs": ["uint8"], "outputs": ["fp32"]}]}},
     True),
    ({"fusion_report": {"layers": [{"name": "q", "outputs": ["int8"]}]}}, False),
    ({"fusion_report": {"layers": "junk"}, "network_dtypes": [1]}, True),
])
def test_plan_layer_precisions_from_the_build_report(tmp_path, blob, keys, build, compliant):
    def as_plan(meta):
        meta["region"] = dict(EU)
        meta["payload_format"] = "tensorrt-rtx-plan"
        meta["backend"]["name"] = "tensorrt-rtx"
        meta["build"] = build

    path = tmp_path / "plan.engine"
    path.write_bytes(forge(blob, as_plan, payload=b"opaque plan bytes"))
    private, public = keys
    sign_file(path, private)  # a plan's records count for EU only under a valid signature
    check = rt.inspect(path, trust=public)["compliance_check"]
    assert check["compliant"] is compliant, check
    if not compliant:
        assert "int8" in " ".join(check["reasons"])


def _castlike_in_function(target: int) -> onnx.ModelProto:
    """``y = FnCast(x)`` where the local function casts ``x`` like a constant of ``target``."""
    fn = helper.make_function(
        "lib", "FnCast", ["a"], ["b"],
        [helper.make_node("Constant", [], ["like"],
                          value=helper.make_tensor("c", target, [], [0])),
         helper.make_node("Identity", ["like"], ["like2"]),
         helper.make_node("CastLike", ["a", "like2"], ["i"]),
         helper.make_node("CastLike", ["i", "a"], ["b"])],
        [helper.make_opsetid("", 17)])
    return _model([helper.make_node("FnCast", ["x"], ["y"], domain="lib")], functions=[fn],
                  opsets=(("", 17), ("lib", 1)))


def test_castlike_in_a_function_is_judged_by_the_inferred_type():
    """Exporters put float CastLike in functions, where no type is declared: inference decides."""
    assert check_model(_castlike_in_function(TensorProto.FLOAT), EU).compliant
    report = check_model(_castlike_in_function(TensorProto.INT8), EU)
    assert not report.compliant and "INT8" in report.summary()
