"""Bad input gets a typed error that says what to do (issue 8, findings 5 and 6).

Each case from the issue: the error must be a :class:`RegionTRTError` (so one ``except`` catches
everything regiontrt raises on purpose), its cause chained where there is one.
"""

from __future__ import annotations

import errno

import numpy as np
import pytest
from hostile import relu_model
from onnx import TensorProto, helper

import regiontrt as rt
from regiontrt import _fs
from regiontrt.cli import main
from regiontrt.precision.regions import RegionRegistry, load_regions

X = {"x": np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)}


def base():
    return rt.RegionalEngineBuilder.from_onnx(relu_model())


# -- finding 5: the accuracy gate ---------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_validation_data_is_a_data_error(bad):
    data = X["x"].copy()
    data[3, 1] = bad
    with pytest.raises(rt.errors.DataError, match="NaN or Inf"):
        base().for_region("EU").with_validation({"x": data}).build()


def test_non_finite_reference_outputs_are_a_data_error():
    graph = helper.make_graph([helper.make_node("Log", ["x"], ["y"])], "log",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    negative = {"x": -np.ones((2, 4), np.float32)}  # log(-1) = NaN in the FP32 reference
    with pytest.raises(rt.errors.DataError, match="FP32 model's outputs"):
        rt.RegionalEngineBuilder.from_onnx(model).for_region("EU").with_validation(
            negative).build()


@pytest.mark.parametrize("result", [-1.0, float("nan"), float("inf"), "abc", None])
def test_metric_result_must_be_a_finite_loss(result):
    def my_metric(ref, cand):
        return result

    with pytest.raises(rt.errors.MetricError, match="my_metric") as info:
        base().for_region("EU").with_validation(X, metric=my_metric).build()
    assert isinstance(info.value, rt.RegionTRTError)


def test_a_raising_user_metric_is_wrapped_with_its_cause():
    def exploding(ref, cand):
        raise KeyError("logits")

    with pytest.raises(rt.errors.MetricError, match="exploding") as info:
        base().for_region("EU").with_validation(X, metric=exploding).build()
    assert isinstance(info.value.__cause__, KeyError)


# -- finding 6: untyped errors ------------------------------------------------------------------
@pytest.mark.parametrize("source", [123, None, 4.5, ["model.onnx"]])
def test_from_onnx_with_a_wrong_type(source):
    with pytest.raises(rt.errors.InvalidModelError, match=r"path, bytes or an onnx\.ModelProto"):
        rt.RegionalEngineBuilder.from_onnx(source)


def test_model_without_inputs_and_empty_validation_batch():
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["y"], value=helper.make_tensor(
            "c", TensorProto.FLOAT, [1], [1.0]))], "const", [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with pytest.raises(rt.errors.DataError, match="no inputs"):
        rt.RegionalEngineBuilder.from_onnx(model).for_region("EU").with_validation([{}]).build()


def test_custom_domain_op_with_validation_data():
    graph = helper.make_graph([helper.make_node("Mystery", ["x"], ["y"], domain="acme.ops")],
                              "custom",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("acme.ops", 1)])
    model.ir_version = 8
    with pytest.raises(rt.RegionTRTError) as info:
        rt.RegionalEngineBuilder.from_onnx(model).for_region("EU").with_validation(X).build()
    assert info.value.__cause__ is not None


@pytest.mark.parametrize(("call", "match"), [
    (lambda b: b.with_precision("int3"), "unknown precision"),
    (lambda b: b.with_precision(42), "with_precision"),
    (lambda b: b.with_backend("foo"), "unknown backend"),
    (lambda b: b.with_backend(3), "with_backend"),
    (lambda b: b.with_validation(X, metric="nope"), "unknown metric"),
    (lambda b: b.with_validation(X, metric=42), "metric must be"),
    (lambda b: b.for_region(5), "for_region"),
    (lambda b: b.with_shape_profile(7), "with_shape_profile"),
    (lambda b: b.with_shape_profile({"x": "abc"}), "shape profile"),
    (lambda b: b.with_tactics("fast"), "with_tactics"),
    (lambda b: b.with_calibration_check(threshold=2), "threshold"),
    (lambda b: b.with_calibrator(3.5), "with_calibrator"),
])
def test_builder_arguments_are_typed_errors(call, match):
    with pytest.raises(rt.RegionTRTError, match=match) as info:
        call(base())
    assert isinstance(info.value, (ValueError, TypeError))  # and still what stdlib code expects


@pytest.mark.parametrize(("body", "match"), [
    ("tags = 5", "tags"),
    ("tags = [1, 2]", "tags"),
    ('tags = "ab"', "tags"),
    ('tags = ["ab", "cd"]', "tags"),
    ("tags = { a = 1 }", "tags"),
    ("budget = true", "budget"),
    ("budget = inf", "budget"),
    ("budget = nan", "budget"),
    ('budget = "0.1"', "budget"),
    ('strict_calibration = "no"', "strict_calibration"),
    ("description = 5", "description"),
    ("precisions = [1]", "precisions"),
    ('precisions = ["int3"]', "unknown precision"),
    ("latency_p99_ms = true", "latency_p99_ms"),
    ('override_compliance = ""', "override_compliance"),
    ("colour = 1", "unknown keys"),
])
def test_region_toml_fields_are_validated(tmp_path, body, match):
    path = tmp_path / "r.toml"
    path.write_text(f'[regions.LAB]\nprecisions = ["fp32"]\n{body}\n'
                    if not body.startswith("precisions") else f"[regions.LAB]\n{body}\n")
    with pytest.raises(rt.errors.RegionConfigError, match=match):
        load_regions(path, into=RegionRegistry())


def test_region_file_that_is_not_text_or_not_a_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"[regions.LAB]\ndescription = \"\xff\xfe\"\n")
    for path, match in ((bad, "UTF-8"), (tmp_path, "not a regular file"),
                        (tmp_path / "missing.toml", "not found")):
        with pytest.raises(rt.errors.RegionConfigError, match=match):
            load_regions(path, into=RegionRegistry())


@pytest.mark.parametrize("kwargs", [
    {"name": 5}, {"name": ""}, {"name": "LAB", "budget": True},
    {"name": "LAB", "tags": ["ab", "cd"]}, {"name": "LAB", "precisions": 5},
])
def test_region_constructor_types(kwargs):
    with pytest.raises(rt.errors.RegionConfigError):
        rt.Region(**kwargs)


@pytest.fixture(scope="module")
def engine_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("e") / "e.engine"
    base().for_region("CERTIFIED").with_shape_profile(
        {"x": [(1, 4), (4, 4), (64, 4)]}).build(path)
    return path


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"iterations": 0}, rt.errors.InvalidArgumentError),
    ({"warmup": -1}, rt.errors.InvalidArgumentError),
    ({"iterations": 2.5}, rt.errors.InvalidArgumentError),
    ({"batch": -1}, rt.errors.InvalidArgumentError),
    ({"batch": 0}, rt.errors.InvalidArgumentError),
    ({"batch": 10**8}, rt.errors.ShapeOutOfProfile),  # refused before allocating anything
])
def test_benchmark_arguments(engine_path, kwargs, error):
    with rt.load_engine(engine_path) as engine, pytest.raises(error):
        engine.benchmark(**kwargs)


def test_sample_inputs_refuse_huge_shapes_without_a_profile(tmp_path):
    engine = base().for_region("CERTIFIED").build()
    with pytest.raises(rt.errors.InputError, match="bytes"):
        engine.sample_inputs(batch=10**9)


def test_load_engine_arguments(engine_path):
    with pytest.raises(rt.errors.ArtifactError):
        rt.load_engine(None)
    with pytest.raises(rt.errors.InvalidArgumentError, match="unknown backend"):
        rt.load_engine(engine_path, backend="foo")
    with pytest.raises(rt.errors.InvalidArgumentError):
        rt.load_engine(engine_path, backend=3)


def test_input_with_shape_and_dtype_but_no_data(engine_path):
    class Hollow:
        shape = (2, 4)
        dtype = np.float32

    with rt.load_engine(engine_path) as engine:
        with pytest.raises(rt.errors.InputError, match="no data"):
            engine.infer({"x": Hollow()})
        assert engine._runner is None


def test_cli_build_with_an_npy_validation_file(tmp_path, capsys):
    """A .npy file feeds a single-input model (issue 11, docs/data.md)."""
    import onnx

    model = tmp_path / "m.onnx"
    onnx.save(relu_model(), str(model))
    npy = tmp_path / "val.npy"
    np.save(npy, X["x"])
    code = main(["build", str(model), "--region", "EU", "--validation", str(npy),
                 "-o", str(tmp_path / "e.engine")])
    err = capsys.readouterr().err
    assert code == 0 and (tmp_path / "e.engine").is_file() and "Traceback" not in err


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EIO])
def test_save_os_errors_are_typed_and_leave_nothing(tmp_path, monkeypatch, engine_path, code):
    engine = rt.load_engine(engine_path)
    real_fsync = _fs.os.fsync

    def failing_fsync(fd):
        raise OSError(code, _fs.os.strerror(code))

    monkeypatch.setattr(_fs.os, "fsync", failing_fsync)
    with pytest.raises(rt.errors.ArtifactError, match=_fs.os.strerror(code)) as info:
        engine.save(tmp_path / "out.engine")
    assert isinstance(info.value.__cause__, OSError)
    monkeypatch.setattr(_fs.os, "fsync", real_fsync)
    assert list(tmp_path.iterdir()) == []


def test_save_to_a_folder_or_under_a_file(tmp_path, engine_path):
    engine = rt.load_engine(engine_path)
    (tmp_path / "dir.engine").mkdir()
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "dir.engine", tmp_path / "file" / "e.engine"):
        with pytest.raises(rt.errors.ArtifactError, match="cannot write"):
            engine.save(target)


def test_engine_constructor_refuses_what_is_not_an_engine():
    deep: object = 1
    for _ in range(5000):
        deep = [deep]
    meta = {"region": {"name": "X"}, "precision": "fp32", "backend": {"name": "onnxruntime"},
            "payload_format": "onnx", "inputs": [{"name": "x", "dtype": "float32", "shape": [1]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": [1]}], "shape_profiles": []}
    for metadata, payload in ((None, b""), ({}, b""), (meta, 5), ({**meta, "deep": deep}, b""),
                              ({**meta, "precision": None}, b"")):
        with pytest.raises(rt.errors.ArtifactError):
            rt.Engine(metadata, payload)


def test_bucketed_engine_checks_inputs_before_padding():
    class Hollow:
        shape = (2, 4)
        dtype = np.float32

    profile = rt.ShapeProfile({"x": [(1, 4), (4, 4), (8, 4)]}, buckets={"x": {0: [4, 8]}},
                              bucket_outputs={"y": 0})
    engine = base().for_region("CERTIFIED").with_shape_profile(profile).build()
    for bad, error in ((Hollow(), rt.errors.InputError),
                       (np.zeros(3, np.float32), rt.errors.InputError),
                       (np.zeros((2, 4), np.int64), rt.errors.InputError),
                       (np.zeros((9, 4), np.float32), rt.errors.ShapeOutOfProfile)):
        with pytest.raises(error):
            engine.infer({"x": bad})
    assert engine.infer(np.ones((3, 4), np.float32))["y"].shape == (3, 4)


def test_save_and_export_with_a_wrong_path_type(engine_path):
    engine = rt.load_engine(engine_path)
    for bad in (None, 5, ["a"]):
        with pytest.raises(rt.RegionTRTError):
            engine.save(bad)
        with pytest.raises(rt.RegionTRTError):
            engine.export_payload(bad)
