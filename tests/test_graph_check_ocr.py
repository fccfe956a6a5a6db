"""The build's graph check on a real deep model: PP-OCRv4 rec's cleaned graph is accepted.

Folding BatchNormalization into convolutions legitimately moves a deep network's float32 outputs
by ~1e-4 of their scale; the check must accept that and still refuse a wrong fold.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import regiontrt as rt
from regiontrt.errors import GraphPassError
from regiontrt.graph.check import check_pass, run_onnx
from regiontrt.graph.clean import clean

ocr = pytest.importorskip("benchmarks.ocr", reason="run from the repository root")


@pytest.fixture(scope="module")
def rec_and_lines() -> tuple[onnx.ModelProto, list[dict[str, np.ndarray]]]:
    try:
        model = onnx.load(str(ocr.rec_model_path()))
        lines = ocr.render_lines("latin", 8, seed=3) + ocr.render_lines("cjk", 8, seed=3)
    except Exception as exc:  # OCRAssetMissing and friends
        pytest.skip(f"needs the rapidocr-onnxruntime wheel, PIL and fonts: {exc}")
    batches = [{"x": ocr.preprocess(img, 320)} for img, _ in lines]
    return model, batches


def test_cleaned_rec_passes_the_build_check(rec_and_lines) -> None:
    model, batches = rec_and_lines
    cleaned = clean(model)
    reference = run_onnx(model, batches)
    result = check_pass("clean", reference, cleaned, batches)
    assert result.to_dict()


def test_a_certified_fp32_build_of_rec_is_accepted(rec_and_lines) -> None:
    model, batches = rec_and_lines
    engine = (rt.RegionalEngineBuilder.from_onnx(model).for_region("CERTIFIED")
              .with_validation(batches[:4]).build())
    assert engine.precision == "fp32"
    assert engine.metadata["graph_check"]["checked"] is True


def test_a_wrong_output_is_still_refused(rec_and_lines) -> None:
    model, batches = rec_and_lines
    reference = run_onnx(model, batches[:2])
    broken = [{k: v * 1.01 for k, v in out.items()} for out in reference]
    with pytest.raises(GraphPassError, match="clean"):
        check_pass("clean", broken, model, batches[:2])
