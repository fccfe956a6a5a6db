"""Triton export: config.pbtxt parses into tritonclient's ModelConfig with protobuf text_format."""

from __future__ import annotations

import concurrent.futures as cf
import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from fleet_support import write_fleet
from google.protobuf import text_format

from regiontrt import deploy
from regiontrt.errors import BundleError
from regiontrt.graph.arithmetic import make_session
from regiontrt.graph.io import TensorSpec

pytest.importorskip("tritonclient", reason="needs tritonclient[http] (the test extra)")


def _model_config_pb2():
    """tritonclient's model_config_pb2 (it lives under tritonclient.grpc, whose package
    __init__ needs grpcio; the generated module itself needs only protobuf)."""
    try:
        from tritonclient.grpc import model_config_pb2

        return model_config_pb2
    except (ImportError, RuntimeError):
        spec = importlib.util.find_spec("tritonclient")
        assert spec is not None and spec.submodule_search_locations
        path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
        if not path.is_file():
            pytest.skip("needs tritonclient's model_config_pb2 (tritonclient[http] >= 2.x)")
        module_spec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("triton")
    fleet = write_fleet(root / "src", regions=("EU", "CERTIFIED"), targets=("cpu",))
    with cf.ThreadPoolExecutor(2) as pool:
        result = deploy.build_fleet(fleet, root / "dist", executor=pool)
    assert result.ok
    return result.bundles


@pytest.mark.parametrize("region", ["EU", "CERTIFIED"])
def test_config_parses_into_model_config(bundles, region, tmp_path):
    pb2 = _model_config_pb2()
    folder = deploy.export_triton(bundles[region], tmp_path / "repo")
    assert folder == tmp_path / "repo" / f"digits_{region}"
    config = text_format.Parse((folder / "config.pbtxt").read_text(), pb2.ModelConfig())
    assert config.name == f"digits_{region}"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 0
    [inp], [out] = config.input, config.output
    assert (inp.name, list(inp.dims), inp.data_type) == ("input", [-1, 1, 8, 8], pb2.TYPE_FP32)
    assert (out.name, list(out.dims), out.data_type) == ("logits", [-1, 10], pb2.TYPE_FP32)
    params = deploy.triton.parse_parameters(config)
    bundle = deploy.load_bundle(bundles[region])
    assert params["regiontrt.region"] == region
    assert params["regiontrt.precision"] == bundle.precision
    assert params["regiontrt.onnx_sha256"] == bundle.onnx_sha256
    # The model file is the bundle's precision-compiled ONNX and runs.
    model_file = folder / "1" / "model.onnx"
    assert model_file.read_bytes() == (bundle.path / "model.onnx").read_bytes()
    onnx.checker.check_model(str(model_file))
    session = make_session(model_file.read_bytes())
    assert session.run(None, {"input": np.zeros((2, 1, 8, 8), np.float32)})[0].shape == (2, 10)


def test_unknown_variant_is_refused(bundles, tmp_path):
    with pytest.raises(BundleError, match="no variant"):
        deploy.export_triton(bundles["EU"], tmp_path, target="rtx")


def test_plan_config_with_half_and_int_tensors_parses():
    pb2 = _model_config_pb2()
    inputs = [TensorSpec("x", np.dtype("float16"), ("N", 3, None, 320)),
              TensorSpec("ids", np.dtype("int64"), (1,))]
    outputs = [TensorSpec("y", np.dtype("bool"), ("N",))]
    text = deploy.triton.config_text('m "quoted"', "tensorrt_plan", inputs, outputs,
                                     {"regiontrt.note": 'a "b"\nc é'})
    config = text_format.Parse(text, pb2.ModelConfig())
    assert config.name == 'm "quoted"' and config.platform == "tensorrt_plan"
    assert [list(t.dims) for t in config.input] == [[-1, 3, -1, 320], [1]]
    assert [t.data_type for t in config.input] == [pb2.TYPE_FP16, pb2.TYPE_INT64]
    assert config.output[0].data_type == pb2.TYPE_BOOL
    assert deploy.triton.parse_parameters(config) == {"regiontrt.note": 'a "b"\nc é'}
