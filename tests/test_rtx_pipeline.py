"""Real TensorRT-RTX builds through the builder, on the CPU (RTX's builder needs no GPU).

The plans cannot run here (RTX needs a GPU of CC 8.0/8.6/8.9/12.x), so accuracy is validated on
the precision-compiled ONNX with ONNX Runtime, and the report says so.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest

import regiontrt as rt
from regiontrt import demo
from regiontrt.backends.plan import read_plan_header
from regiontrt.data.sources import split_batches
from regiontrt.runtime.trust import sign_file

pytestmark = pytest.mark.rtx
DEMO_PROFILE = {"input": [(1, 1, 8, 8), (32, 1, 8, 8), (64, 1, 8, 8)]}
TARGETS = ("sm89", "sm120")


def _b(array):
    return split_batches({"input": array}, 64)


@pytest.fixture(scope="module")
def demo_base():
    return (rt.RegionalEngineBuilder.from_onnx(demo.model_path()).with_backend("tensorrt-rtx")
            .with_shape_profile(DEMO_PROFILE)
            .with_tactics(rt.TacticSelector(optimization_level=0, compute_capabilities=TARGETS)))


@pytest.mark.parametrize(
    ("region", "precision", "dtype"),
    [("CERTIFIED", "fp32", None), ("EU", "fp16", "HALF"), ("NA", "int8", "INT8")],
)
def test_demo_model_rtx_plans(demo_base, region, precision, dtype, tmp_path, signing_keys):
    data = demo.region_data(region)
    b = demo_base.for_region(region).with_precision(precision).with_validation(_b(data.validation))
    if precision == "int8":
        b = b.with_calibrator("entropy", data=_b(data.calibration))
    engine = b.build(tmp_path / "e.engine")
    meta = engine.metadata
    assert engine.precision == precision and meta["payload_format"] == "tensorrt-rtx-plan"
    header = read_plan_header(engine.payload)
    assert set(header.compute_capabilities) == set(TARGETS)
    assert header.trt_version == meta["backend"]["version"]
    assert meta["build"]["plan_header"]["compute_capabilities"] == list(header.compute_capabilities)
    # the plan cannot run on this machine: validation ran on the compiled ONNX, and says so
    assert meta["validation"]["trials"][-1]["measured_on"] == "onnxruntime"
    if dtype:
        assert dtype in str(meta["build"]["network_dtypes"])
    # round trip: the container holds the exact plan, and inspect reads it without a GPU
    # (a plan for a region that forbids a precision loads only from a signed file)
    private, public = signing_keys
    sign_file(tmp_path / "e.engine", private)
    again = rt.load_engine(tmp_path / "e.engine", trust=public)
    assert again.payload == engine.payload
    assert rt.inspect(tmp_path / "e.engine", trust=public)["target"]
    assert again.provenance == "signature verified with public.pem"


def test_rtx_engine_refuses_to_run_without_a_supported_gpu(demo_base):
    data = demo.region_data("EU")
    engine = demo_base.for_region("EU").with_validation(_b(data.validation)).build()
    with pytest.raises(rt.errors.IncompatibleEngineError):
        engine.infer(data.validation[:4])


def test_parser_errors_name_the_node():
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["r"], name="ok_relu"),
         onnx.helper.make_node("StringNormalizer", ["s"], ["y"], name="strings_here")],
        "broken",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4]),
         onnx.helper.make_tensor_value_info("s", onnx.TensorProto.STRING, [2])],
        [onnx.helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, [1, 4]),
         onnx.helper.make_tensor_value_info("y", onnx.TensorProto.STRING, [2])]),
        opset_imports=[onnx.helper.make_opsetid("", 17)])
    with pytest.raises(rt.errors.BuildError, match="strings_here"):
        (rt.RegionalEngineBuilder.from_onnx(model).for_region("CERTIFIED")
         .with_backend("tensorrt-rtx").build())


def _ocr_model() -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        pytest.skip("needs the PP-OCRv4 models: pip install --no-deps rapidocr-onnxruntime")
    return next(Path(spec.origin).parent.rglob("ch_PP-OCRv4_rec_infer.onnx"))


def _lines(rng, n, width):
    return [{"x": (rng.random((2, 3, 48, width)) * 2 - 1).astype(np.float32)} for _ in range(n)]


OCR_PROFILE = {"x": [(1, 3, 48, 32), (2, 3, 48, 320), (4, 3, 48, 1280)]}
OCR_REGION = rt.Region("OCR-TEST", precisions=("int8", "fp16", "fp32"), budget=10.0,
                       metric="relative_l2")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_ppocr_recogniser_dynamic_width_rtx(precision, tmp_path):
    rng = np.random.default_rng(0)
    b = (rt.RegionalEngineBuilder.from_onnx(_ocr_model()).for_region(OCR_REGION)
         .with_backend("tensorrt-rtx").with_precision(precision)
         .with_shape_profile(OCR_PROFILE)
         .with_tactics(rt.TacticSelector(optimization_level=0, compute_capabilities=("sm89",)))
         .with_validation(_lines(rng, 1, 160) + _lines(rng, 1, 320)))
    if precision == "int8":
        b = b.with_calibrator("minmax", data=_lines(rng, 2, 320))
    engine = b.build(tmp_path / "ocr.engine")
    meta = rt.inspect(tmp_path / "ocr.engine")
    assert meta["precision"] == precision
    assert meta["shape_profiles"] == [{"x": [[1, 3, 48, 32], [2, 3, 48, 320], [4, 3, 48, 1280]]}]
    assert read_plan_header(engine.payload).compute_capabilities == ("sm89",)
    assert meta["build"]["profiles"]  # the profile the plan was built with
    with pytest.raises(rt.errors.ShapeOutOfProfile):
        engine.infer(np.zeros((1, 3, 48, 2000), np.float32))


def test_ppocr_width_buckets_pad_and_unpad_on_onnxruntime():
    rng = np.random.default_rng(1)
    model = _ocr_model()
    output = onnx.load(str(model), load_external_data=False).graph.output[0].name
    sp = rt.ShapeProfile({"x": [(1, 3, 48, 64), (1, 3, 48, 256), (1, 3, 48, 512)]},
                         buckets={"x": {3: [64, 128, 256, 512]}}, bucket_outputs={output: 1})
    engine = (rt.RegionalEngineBuilder.from_onnx(model).for_region("CERTIFIED")
              .with_shape_profile(sp).with_validation(_lines(rng, 1, 128)[0]["x"][:1]).build())
    line = (rng.random((1, 3, 48, 100)) * 2 - 1).astype(np.float32)
    out = engine.infer({"x": line})[output]
    import onnxruntime as ort

    ref = ort.InferenceSession(str(model)).run(None, {"x": line})[0]
    assert out.shape == ref.shape  # 100 px padded to 128, 16 steps cut back to floor(100 / 8)
    agree = np.mean(out.argmax(-1) == ref.argmax(-1))
    assert agree >= 0.75  # right padding changes the last steps a little, not the line
    assert engine.metadata["shape_buckets"]["buckets"] == {"x": {"3": [64, 128, 256, 512]}}
