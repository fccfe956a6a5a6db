"""Issue 19, compliance and readers: every way found to run int8 as EU, every payload file read.

Each test is one finding of the attacker probe, rebuilt here with real ONNX models and real ONNX
Runtime, and must end in a typed refusal (``RegionTRTError`` subclass).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from hostile import build_blob, forge, function_default_external, qdq_model, relu_model
from onnx import TensorProto, helper

import regiontrt as rt
from regiontrt.errors import ArtifactError, PolicyViolation, RegionConfigError
from regiontrt.precision.compliance import check_model
from regiontrt.precision.scan import scan_model
from regiontrt.runtime import artifact

EU = rt.get_region("EU").to_dict()
T = TensorProto


@pytest.fixture(scope="module")
def blob() -> bytes:
    return build_blob()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    pytest.importorskip("model_signing", reason="signing needs model-signing (the fleet extra)")
    from regiontrt.runtime.trust import keygen

    return keygen(tmp_path_factory.mktemp("keys"))


def _as_eu(meta: dict) -> None:
    meta["region"] = dict(EU)
    meta["precision"] = "fp32"
    meta.pop("compliance", None)


# -- payload format from the bytes ------------------------------------------------------------
@pytest.mark.parametrize(("fmt", "backend"), [
    ("tensorrt-plan", "onnxruntime"), ("tensorrt-rtx-plan", "onnxruntime"),
    ("tensorrt-plan", "tensorrt"), ("tensorrt-rtx-plan", "tensorrt-rtx"),
])
def test_an_onnx_payload_under_a_plan_label_is_refused(tmp_path, blob, fmt, backend):
    def relabel(meta: dict) -> None:
        _as_eu(meta)
        meta["payload_format"] = fmt
        meta["backend"]["name"] = backend
        meta["compliance"] = {"compliant": True, "checked": "made up", "reasons": ["trust me"]}

    path = tmp_path / "x.engine"
    path.write_bytes(forge(blob, relabel, payload=qdq_model().SerializeToString()))
    for read in (rt.load_engine, lambda p: rt.Engine(*artifact.decode(p.read_bytes()))):
        with pytest.raises(ArtifactError, match="payload_format"):
            read(path)
    # inspect never calls it compliant: the label does not fit the backend, or (a plan for EU)
    # nothing but a signature could vouch for it.
    try:
        assert rt.inspect(path)["compliance_check"]["compliant"] is False
    except ArtifactError as exc:
        assert "payload_format" in str(exc)


def test_onnxruntime_never_runs_a_payload_labelled_as_a_plan(blob):
    # Even for a region that forbids nothing and a payload that is not ONNX: the backend runs
    # one format, and the label must be it.
    meta, _ = artifact.decode(blob)
    meta["payload_format"] = "tensorrt-plan"
    with pytest.raises(ArtifactError, match="onnxruntime backend runs onnx payloads"):
        rt.Engine(meta, b"\xff\xfe not protobuf")


# -- local functions ----------------------------------------------------------------------------
def _function_model(body: list[onnx.NodeProto], call_attrs: dict, *, defaults=(),
                    inputs=(("x", T.FLOAT, [4]),), fn_inputs=("x",),
                    attributes=()) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    fn = helper.make_function("local", "F", list(fn_inputs), ["out"], body, opsets,
                              attributes=list(attributes))
    fn.attribute_proto.extend(defaults)
    call = helper.make_node("F", list(fn_inputs), ["y"], domain="local", **call_attrs)
    graph = helper.make_graph([call], "g", [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info("y", T.FLOAT, [4])])
    model = helper.make_model(graph, functions=[fn], opset_imports=[
        helper.make_opsetid("", 21), helper.make_opsetid("local", 1),
        helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model


def _ref(name: str, ref: str, kind: int) -> onnx.AttributeProto:
    attr = onnx.AttributeProto(name=name, ref_attr_name=ref, type=kind)
    return attr


def _cast_via_caller(to: int) -> onnx.ModelProto:
    cast = helper.make_node("Cast", ["x"], ["c"])
    cast.attribute.append(_ref("to", "t", onnx.AttributeProto.INT))
    back = helper.make_node("Cast", ["c"], ["out"], to=T.FLOAT)
    return _function_model([cast, back], {"t": to}, attributes=["t"])


@pytest.mark.parametrize("to", [T.INT8, T.UINT4, T.FLOAT8E4M3FN])
def test_a_cast_whose_type_comes_from_the_call_site_is_seen(to):
    model = _cast_via_caller(to)
    report = check_model(model, EU)
    assert not report.compliant and "int8" in report.summary()
    # ...and the builder refuses to make an EU engine of it.
    with pytest.raises(PolicyViolation):
        rt.RegionalEngineBuilder.from_onnx(model).for_region("EU").build()


def test_a_cast_to_float_from_the_call_site_is_not_int8():
    assert not [f for f in scan_model(_cast_via_caller(T.DOUBLE)) if f.precision.value == "int8"]


def test_a_type_attribute_that_cannot_be_resolved_counts():
    model = _cast_via_caller(T.FLOAT)
    model.graph.node[0].ClearField("attribute")  # the caller gives no "t" and there is no default
    assert any("could not be resolved" in str(f) or "int8" in str(f) for f in scan_model(model))


def test_narrow_tensors_stored_as_function_defaults_are_seen():
    weights = helper.make_tensor("w", T.INT8, [4], [1, 2, 3, 4])
    const = helper.make_node("Constant", [], ["c"])
    const.attribute.append(_ref("value", "w", onnx.AttributeProto.TENSOR))
    cast = helper.make_node("Cast", ["c"], ["cf"], to=T.FLOAT)
    add = helper.make_node("Add", ["x", "cf"], ["out"])
    model = _function_model([const, cast, add], {},
                            defaults=[helper.make_attribute("w", weights)], attributes=[])
    found = [str(f) for f in scan_model(model)]
    assert any("default w" in f and "INT8" in f for f in found), found
    assert not check_model(model, EU).compliant


def test_packed_4bit_matmulnbits_weights_in_a_function_default_are_seen():
    packed = helper.make_tensor("b", T.UINT8, [4, 1, 2], bytes(8), raw=True)
    const = helper.make_node("Constant", [], ["bw"])
    const.attribute.append(_ref("value", "b", onnx.AttributeProto.TENSOR))
    scales = helper.make_node("Constant", [], ["s"], value=helper.make_tensor(
        "s", T.FLOAT, [4], [1.0] * 4))
    mm = helper.make_node("MatMulNBits", ["x", "bw", "s"], ["out"], domain="com.microsoft",
                          K=4, N=4, bits=4, block_size=16)
    model = _function_model([const, scales, mm], {},
                            defaults=[helper.make_attribute("b", packed)],
                            inputs=(("x", T.FLOAT, [1, 4]),))
    report = check_model(model, EU)
    assert not report.compliant
    assert "MatMulNBits" in " ".join(report.findings)


def test_matmulnbits_fed_from_a_uint8_graph_input_is_seen():
    mm = helper.make_node("MatMulNBits", ["x", "w", "s"], ["y"], domain="com.microsoft",
                          K=4, N=4, bits=4, block_size=16)
    graph = helper.make_graph(
        [mm], "g",
        [helper.make_tensor_value_info("x", T.FLOAT, [1, 4]),
         helper.make_tensor_value_info("w", T.UINT8, [4, 1, 8]),
         helper.make_tensor_value_info("s", T.FLOAT, [4])],
        [helper.make_tensor_value_info("y", T.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    found = [str(f) for f in scan_model(model)]
    assert any("MatMulNBits" in f for f in found), found
    # The taint rule alone (an unknown op name) catches it too.
    model.graph.node[0].op_type = "MyMatMul"
    found = [str(f) for f in scan_model(model)]
    assert any("computes on the 8-bit value 'w'" in f for f in found), found


def test_a_uint8_image_cast_to_float_is_data_not_arithmetic():
    nodes = [helper.make_node("Transpose", ["img"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Cast", ["t"], ["f"], to=T.FLOAT),
             helper.make_node("Relu", ["f"], ["y"])]
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("img", T.UINT8, [1, 4, 4, 3])],
                              [helper.make_tensor_value_info("y", T.FLOAT, [1, 3, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert check_model(model, EU).compliant


# -- override reasons and region names ----------------------------------------------------------
INVISIBLE = ["\u200b", "\u2800", " ", "approved", "ok ok", "\u200bapproved by legal team\u200b",
             "legal\u202eapproved it today", "\x00signed off by legal"]


@pytest.mark.parametrize("reason", INVISIBLE)
def test_an_override_needs_a_few_visible_words(tmp_path, reason):
    with pytest.raises(RegionConfigError, match="override_compliance"):
        rt.Region("EU", precisions=["int8", "fp32"], override_compliance=reason)
    path = tmp_path / "r.toml"
    path.write_text('[regions.EU]\nprecisions = ["int8"]\noverride_compliance = '
                    + repr(reason).replace("'", '"') + "\n", encoding="utf-8")
    with pytest.raises(RegionConfigError):
        rt.load_regions(path)


def test_an_accepted_reason_is_normalised_and_recorded():
    region = rt.Region("EU", precisions=["int8", "fp32"],
                       override_compliance="  customer  contract 2026-17\tallows int8 ")
    assert region.override_compliance == "customer contract 2026-17 allows int8"


@pytest.mark.parametrize("reason", [" ", "\u200b", "approved", "\u2800\u2800\u2800"])
def test_a_forged_header_override_is_refused(tmp_path, blob, reason):
    def loosen(meta: dict) -> None:
        _as_eu(meta)
        meta["region"]["override_compliance"] = reason

    path = tmp_path / "x.engine"
    path.write_bytes(forge(blob, loosen, payload=qdq_model().SerializeToString()))
    for read in (rt.load_engine, rt.inspect):
        with pytest.raises(ArtifactError, match=r"region\.override_compliance"):
            read(path)


@pytest.mark.parametrize("name", ["EU.", "EU_", "EU\u200b", "EU\x00", "EU\u0301", "\u0395U",
                                  "E\u200dU", "E U", "", "E" * 65])
def test_look_alike_region_names_are_refused(name):
    with pytest.raises(RegionConfigError, match="region name"):
        rt.Region(name, precisions=["int8"])


@pytest.mark.parametrize("name", ["eu", " EU ", "EU\n", "e-u", "E.U", "E_u", "\uff25\uff35"])
def test_a_name_that_normalises_to_a_preset_is_that_preset(name):
    with pytest.raises(RegionConfigError, match="preset"):
        rt.Region(name, precisions=["int8"])
    assert rt.Region(name, precisions=["fp32"]).name == "EU"


@pytest.mark.parametrize("name", ["EU_", "EU\u200b", "EU\x00", "EU\u0301", "EU."])
def test_a_header_with_a_look_alike_region_is_refused(tmp_path, blob, name):
    def rename(meta: dict) -> None:
        meta["region"] = {**EU, "name": name, "forbidden": []}

    path = tmp_path / "x.engine"
    path.write_bytes(forge(blob, rename, payload=qdq_model().SerializeToString()))
    with pytest.raises(ArtifactError, match=r"region\.name"):
        rt.load_engine(path)


def test_a_header_spelling_a_preset_differently_gets_the_preset_rules(tmp_path, blob):
    def rename(meta: dict) -> None:
        meta["region"] = {**EU, "name": "e-u", "forbidden": []}

    path = tmp_path / "x.engine"
    path.write_bytes(forge(blob, rename, payload=qdq_model().SerializeToString()))
    with pytest.raises(PolicyViolation, match="int8"):
        rt.load_engine(path)


# -- Engine(...) and load_engine(trust=...) -----------------------------------------------------
def test_engine_construction_refuses_what_save_would(blob, tmp_path):
    meta, _ = artifact.decode(forge(blob, _as_eu))
    with pytest.raises(PolicyViolation):
        rt.Engine(meta, qdq_model().SerializeToString())
    # A plan for EU needs a provenance; one built here (or signed) has it.
    plan_meta = dict(meta, payload_format="tensorrt-rtx-plan",
                     backend={"name": "tensorrt-rtx", "version": "1"})
    with pytest.raises(PolicyViolation, match="signature verifies"):
        rt.Engine(plan_meta, b"\x00plan bytes")


def test_load_engine_with_trust_runs_the_bytes_it_verified(tmp_path, blob, keys):
    """A writer swaps the file between a signed fp32 EU engine and an unsigned int8 one while
    another thread loads it 200 times: no load may return the int8 engine."""
    from regiontrt.runtime.trust import sign_file

    private, public = keys
    good = tmp_path / "good.engine"
    (rt.RegionalEngineBuilder.from_onnx(relu_model()).for_region("EU").with_precision(["fp32"])
     .build().save(good))
    sign_file(good, private)
    good_bytes, good_sig = good.read_bytes(), Path(f"{good}.sig").read_bytes()
    bad_bytes = forge(good_bytes, None, payload=qdq_model().SerializeToString())
    target = tmp_path / "m.engine"
    Path(f"{target}.sig").write_bytes(good_sig)
    (tmp_path / "a").write_bytes(good_bytes)
    (tmp_path / "b").write_bytes(bad_bytes)
    stop = threading.Event()

    def swap() -> None:
        i = 0
        while not stop.is_set():
            src = tmp_path / ("a" if i % 2 else "b")
            tmp = tmp_path / f"t{i % 2}"
            tmp.write_bytes(src.read_bytes())
            os.replace(tmp, target)
            i += 1

    target.write_bytes(good_bytes)
    writer = threading.Thread(target=swap, daemon=True)
    writer.start()
    loaded = refused = 0
    try:
        for _ in range(200):
            try:
                engine = rt.load_engine(target, trust=public)
            except (rt.errors.SignatureError, ArtifactError, PolicyViolation):
                refused += 1
                continue
            loaded += 1
            assert engine.payload == artifact.decode(good_bytes)[1]
            assert engine.provenance and "public.pem" in engine.provenance
    finally:
        stop.set()
        writer.join()
    assert loaded + refused == 200 and loaded > 0


# -- payload file reads -------------------------------------------------------------------------
def test_external_data_in_a_function_default_is_refused(tmp_path, blob, monkeypatch):
    (tmp_path / "app.env").write_bytes(b"SECRET=hunter2!!")
    monkeypatch.chdir(tmp_path)
    payload = function_default_external("app.env").SerializeToString()

    def as_uint8_out(meta: dict) -> None:
        meta["inputs"] = [{"name": "unused", "dtype": "float32", "shape": [1]}]
        meta["outputs"] = [{"name": "y", "dtype": "uint8", "shape": [8]}]
        meta["shape_profiles"] = []

    path = tmp_path / "x.engine"
    path.write_bytes(forge(blob, as_uint8_out, payload=payload))
    for read in (rt.load_engine, rt.inspect):
        with pytest.raises(ArtifactError, match="external data"):
            read(path)
    with pytest.raises(rt.errors.InvalidModelError, match="external data"):
        rt.RegionalEngineBuilder.from_onnx(payload).for_region("NA").build()


def test_onnxruntime_sessions_never_read_the_working_directory(tmp_path, monkeypatch):
    """Defence in depth: even a payload that skipped every check cannot make a regiontrt
    session read a file (ONNX Runtime resolves such locations from the working directory)."""
    from regiontrt.graph.arithmetic import make_session

    (tmp_path / "app.env").write_bytes(b"SECRET=hunter2!!")
    monkeypatch.chdir(tmp_path)
    data = function_default_external("app.env").SerializeToString()
    with pytest.raises(Exception) as caught:
        out = make_session(data).run(None, {})
        raise AssertionError(f"read {bytes(out[0])!r}")
    assert "SECRET" not in str(caught.value)


# -- readers ------------------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("path", ["/proc/self/mem", "/proc/self/environ"])
def test_proc_files_are_typed_refusals(path):
    for read in (rt.inspect, rt.load_engine, artifact.read_header):
        with pytest.raises(ArtifactError):
            read(path)


def test_an_onnx_payload_beyond_2gib_is_refused_unread(tmp_path, blob):
    meta, _ = artifact.decode(blob)
    size = 2**31 + 16
    meta["payload_size"], meta["payload_sha256"] = size, "0" * 64
    import json

    from hostile import container

    path = tmp_path / "huge.engine"
    with open(path, "wb") as fh:  # sparse: no disk used
        fh.write(container(json.dumps(meta).encode(), b""))
        fh.truncate(fh.tell() + size)
    with pytest.raises(ArtifactError, match="2 GiB"):
        rt.load_engine(path)


def test_a_payload_that_does_not_fit_in_memory_is_a_typed_error(tmp_path, blob):
    """Under an address-space limit, reading a 1 GiB plan fails with ArtifactError, not an
    untyped MemoryError (run in a child process so the limit does not touch the suite)."""
    pytest.importorskip("resource", reason="needs POSIX resource limits")
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc to size the address-space limit")
    meta, _ = artifact.decode(blob)
    size = 1 << 30
    meta.update(payload_size=size, payload_sha256="0" * 64, payload_format="tensorrt-plan",
                backend={"name": "tensorrt", "version": "10"})
    import json

    from hostile import container

    path = tmp_path / "big.engine"
    with open(path, "wb") as fh:
        fh.write(container(json.dumps(meta).encode(), b""))
        fh.truncate(fh.tell() + size)
    code = (
        "import resource, sys\n"
        "import regiontrt as rt\n"
        "from regiontrt.runtime import artifact\n"
        "vm = next(int(line.split()[1]) for line in open('/proc/self/status')\n"
        "          if line.startswith('VmSize'))\n"
        "lim = vm * 1024 + 512 * 2**20  # what is mapped now, plus half the payload\n"
        "resource.setrlimit(resource.RLIMIT_AS, (lim, lim))\n"
        "try:\n"
        f"    artifact.read({str(path)!r})\n"
        "except rt.errors.ArtifactError as exc:\n"
        "    print('typed:', exc); sys.exit(0)\n"
        "except MemoryError:\n"
        "    print('untyped MemoryError'); sys.exit(3)\n"
        "print('read it whole'); sys.exit(4)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "do not fit in memory" in run.stdout


def test_a_lone_surrogate_in_the_header_is_refused_on_read(tmp_path, blob):
    def metric(meta: dict) -> None:
        meta.setdefault("validation", {})["metric"] = "\ud800"

    path = tmp_path / "x.engine"
    path.write_bytes(forge(blob, metric))  # json.dumps writes it as the escape "\\ud800"
    for read in (rt.inspect, rt.load_engine):
        with pytest.raises(ArtifactError, match="surrogate"):
            read(path)


def test_infer_refuses_nothing_it_should_run(blob):
    # The checks above must not refuse a plain fp32 engine.
    engine = rt.Engine(*artifact.decode(blob))
    out = engine.infer(np.ones((1, 4), np.float32))["y"]
    np.testing.assert_allclose(out, [[1, 2, 3, 4]])


def test_an_override_is_shown_wherever_the_engine_is(tmp_path):
    from regiontrt.runtime.inspection import compliance, summarize
    from regiontrt.serve.sources import from_engine

    reason = "pilot site contract 2026-17 allows it"
    region = rt.Region("EU", precisions=["fp32"], override_compliance=reason)
    engine = rt.RegionalEngineBuilder.from_onnx(relu_model()).for_region(region).build(
        tmp_path / "m.engine")
    info = rt.inspect(tmp_path / "m.engine")
    assert ("compliance override", reason) in summarize(info)
    assert reason in compliance(info)[1]
    assert reason in " ".join(engine.compliance().reasons)
    assert from_engine(engine).description()["compliance_override"] == reason
