"""The shipped demo model and region data: structure, accuracy, data layout and camera shifts."""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

import numpy as np
import onnx
import pytest

from regiontrt import demo
from regiontrt.errors import DataError, UnknownRegionError

ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime, a required dependency")


@functools.lru_cache(maxsize=1)
def _session() -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(demo.model_path()), opts, providers=["CPUExecutionProvider"])


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_model_is_valid_with_named_io_and_metadata() -> None:
    path = demo.model_path()
    assert path.is_file() and path.suffix == ".onnx"
    assert path.stat().st_size < 200 * 1024
    model = demo.load_model()
    onnx.checker.check_model(model, full_check=True)
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "input" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert _dims(inp) == ["N", 1, 8, 8]
    assert out.name == "logits" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert _dims(out) == ["N", 10]
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 13)]
    assert model.producer_name == "regiontrt-demo"
    props = {p.key: p.value for p in model.metadata_props}
    assert "digits" in props["description"]


def test_model_keeps_batchnorm_and_residual_adds() -> None:
    model = demo.load_model()
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["BatchNormalization"] == ops["Conv"] >= 5
    producers = _producers(model)
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            assert producers[node.input[0]].op_type == "Conv", node.name
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    assert len(adds) >= 2
    for add in adds:
        # One operand is the block's last Conv-BN; the other is the skip: the block's input
        # (a ReLU output) or a 1x1 projection Conv-BN. Then the block's closing ReLU.
        kinds = sorted(producers[i].op_type for i in add.input)
        assert kinds in (
            ["BatchNormalization", "Relu"],
            ["BatchNormalization", "BatchNormalization"],
        )
        consumers = [n for n in model.graph.node if add.output[0] in n.input]
        assert [c.op_type for c in consumers] == ["Relu"]
    assert [n.op_type for n in model.graph.node[-3:]] == ["GlobalAveragePool", "Flatten", "Gemm"]


@pytest.mark.parametrize("region", demo.REGIONS)
def test_fp32_accuracy_per_region(region: str) -> None:
    data = demo.region_data(region)
    (logits,) = _session().run(["logits"], {"input": data.validation})
    assert logits.shape == (len(data.labels), 10)
    accuracy = float((logits.argmax(axis=1) == data.labels).mean())
    assert accuracy >= 0.9, f"{region}: FP32 top-1 {accuracy:.3f}"


@pytest.mark.parametrize("region", demo.REGIONS)
def test_region_data_layout(region: str) -> None:
    data = demo.region_data(region)
    for images in (data.calibration, data.validation):
        assert images.dtype == np.float32 and images.ndim == 4 and images.shape[1:] == (1, 8, 8)
        assert np.isfinite(images).all()
    assert len(data.calibration) >= 128 and len(data.validation) >= 256
    assert data.labels.dtype == np.int64 and data.labels.shape == (len(data.validation),)
    assert set(np.unique(data.labels)) == set(range(10))
    assert data.shift == demo.SHIFTS[region]
    # Callers get their own arrays: writing one never changes the next call's data.
    data.validation[...] = 0
    assert demo.region_data(region).validation.any()


def test_region_names() -> None:
    assert demo.REGIONS == ("NA", "EU", "SEA", "APAC", "CERTIFIED")
    assert set(demo.SHIFTS) == set(demo.REGIONS)
    np.testing.assert_array_equal(
        demo.region_data("eu").validation, demo.region_data("EU").validation
    )
    with pytest.raises(UnknownRegionError, match="LATAM"):
        demo.region_data("LATAM")
    with pytest.raises(UnknownRegionError):
        demo.describe_shift("MARS")


def test_calibration_and_validation_are_held_out_and_disjoint() -> None:
    digits = demo.digits()
    train = set(digits.train_index.tolist())
    assert len(train) + len(digits.calibration_index) + len(digits.validation_index) == len(
        digits.labels
    )
    for region in demo.REGIONS:
        data = demo.region_data(region)
        cal, val = set(data.calibration_index.tolist()), set(data.validation_index.tolist())
        assert len(cal) == len(data.calibration) and len(val) == len(data.validation)
        assert not cal & val
        assert not (cal | val) & train
        np.testing.assert_array_equal(data.labels, digits.labels[data.validation_index])


@pytest.mark.parametrize("region", demo.REGIONS)
def test_region_images_are_the_documented_shift_of_the_held_out_digits(region: str) -> None:
    digits, data, params = demo.digits(), demo.region_data(region), demo.SHIFTS[region]
    for images, index in (
        (data.calibration, data.calibration_index),
        (data.validation, data.validation_index),
    ):
        noiseless: dict[str, Any] = {**params, "noise_std": 0.0}
        clean = demo.apply_shift(digits.images[index], **noiseless)
        residual = images - clean
        if params["noise_std"] == 0:
            np.testing.assert_allclose(images, clean, rtol=0, atol=1e-6)
        else:
            assert abs(residual.mean()) < 0.01
            assert residual.std() == pytest.approx(params["noise_std"], rel=0.05)


def test_apply_shift_gain_offset_contrast() -> None:
    x = np.array([0.0, 0.25, 0.5, 1.0], np.float32)
    np.testing.assert_allclose(demo.apply_shift(x, gain=1.6), x * 1.6, rtol=1e-6)
    np.testing.assert_allclose(demo.apply_shift(x, offset=0.05), x + 0.05, rtol=1e-6)
    # Contrast pivots about mid-grey: 0.5 stays, the rest moves towards (or away from) it.
    np.testing.assert_allclose(demo.apply_shift(x, contrast=0.7), 0.5 + 0.7 * (x - 0.5), rtol=1e-6)
    # The documented order: contrast, then gain, then offset; and no clipping above 1 or below 0.
    y = demo.apply_shift(x, gain=2.0, contrast=1.5, offset=-0.1)
    np.testing.assert_allclose(y, 2.0 * (0.5 + 1.5 * (x - 0.5)) - 0.1, rtol=1e-6)
    assert y.max() > 1.0 and y.min() < 0.0 and y.dtype == np.float32
    np.testing.assert_array_equal(demo.apply_shift(x), x)


def test_apply_shift_noise_is_gaussian_with_the_given_std_and_seeded() -> None:
    x = np.full((200, 1, 8, 8), 0.3, np.float32)
    before = x.copy()
    noisy = demo.apply_shift(x, noise_std=0.12, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(x, before)  # the input is left alone
    residual = noisy - x
    assert residual.std() == pytest.approx(0.12, rel=0.03)
    assert abs(residual.mean()) < 0.005
    assert abs(float((np.abs(residual) < 0.12).mean()) - 0.6827) < 0.02  # one sigma: 68 %
    again = demo.apply_shift(x, noise_std=0.12, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(noisy, again)


@pytest.mark.parametrize(
    "params", [{"gain": 0.0}, {"contrast": -1.0}, {"noise_std": -0.1}, {"offset": float("nan")}]
)
def test_apply_shift_rejects_bad_parameters(params: dict[str, Any]) -> None:
    with pytest.raises(DataError):
        demo.apply_shift(np.zeros((2, 2), np.float32), **params)


def test_describe_shift() -> None:
    assert demo.describe_shift("CERTIFIED") == "clean (reference camera)"
    assert "gain x1.6" in demo.describe_shift("APAC")
    assert "noise std 0.12" in demo.describe_shift("sea")


def test_a_shifted_region_falls_outside_clean_calibration_ranges() -> None:
    # The calibration-mismatch check relies on this: the reference camera's calibrated input range
    # covers its own validation data but not APAC's brighter camera.
    amax = float(np.abs(demo.region_data("CERTIFIED").calibration).max())
    own = float((np.abs(demo.region_data("CERTIFIED").validation) > amax).mean())
    apac = float((np.abs(demo.region_data("APAC").validation) > amax).mean())
    assert own < 0.001 and apac > 0.05
