"""Control flow through whole builds: layers in both branches of an ``If``, per region."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from test_control_flow import speech, speech_data  # the model builders beside this file

import regiontrt as rt
from regiontrt.backends import get_backend
from regiontrt.graph.io import load_model
from regiontrt.graph.label import graph_precision

_data = speech_data


def test_unpinned_branches_stay_float_and_the_build_says_why(caplog) -> None:
    """All compute sits in the branches: with pinning off (else sr, constant in the data, would
    be pinned: tests/test_pinned_inputs.py) int8 has nothing to quantize, and the log, the
    metadata and the trial say why; EU's fp16 converts inside the branches and is labelled so."""
    model = speech(outer=False)
    with caplog.at_level(logging.WARNING, logger="regiontrt.build.pipeline"):
        na = (rt.RegionalEngineBuilder.from_onnx(model).for_region("NA")
              .with_pinned_inputs({}, auto=False)
              .with_calibrator(data=_data(4, 1)).with_validation(_data(4, 2)).build())
    assert "If node 'sr_if'" in caplog.text and "pin it" in caplog.text
    assert any("5 layers" in line for line in na.metadata["control_flow"])
    int8 = na.report.trials[0]
    assert int8.precision == "int8" and not int8.accepted
    assert "no quantizable layer" in int8.note
    assert na.precision == "fp16" == graph_precision(load_model(na.payload, check=False))
    eu = (rt.RegionalEngineBuilder.from_onnx(model).for_region("EU")
          .with_validation(_data(4, 2)).build())
    assert eu.precision == "fp16"
    assert graph_precision(load_model(eu.payload, check=False)) == "fp16"


def test_pinning_the_condition_quantizes_the_branch_taken(tmp_path) -> None:
    model = speech(outer=True)
    engine = (rt.RegionalEngineBuilder.from_onnx(model).for_region("NA")
              .with_pinned_inputs({"sr": 16000})
              .with_calibrator(data=_data(8, 1, sr=None))
              .with_validation(_data(8, 2, sr=None))
              .build(tmp_path / "na.engine"))
    assert [i.name for i in engine.inputs] == ["x"]  # the pinned input is gone
    assert engine.metadata["pinned_inputs"] == {"sr": 16000}
    assert "control_flow" not in engine.metadata  # nothing is left in a branch
    payload = load_model(engine.payload, check=False)
    assert engine.precision == graph_precision(payload)
    if engine.precision == "int8":
        quantized = {n.input[0] for n in payload.graph.node if n.op_type == "DequantizeLinear"}
        assert quantized  # the branch's convolutions read int8 inputs
    x = _data(1, 9, sr=None)[0]["x"]
    out = rt.load_engine(tmp_path / "na.engine").infer({"x": x})
    assert np.isfinite(next(iter(out.values()))).all()


def test_a_condition_tensorrt_cannot_build_is_refused_before_work() -> None:
    if not get_backend("tensorrt-rtx").is_available():
        pytest.skip("needs tensorrt-rtx (pip install 'regiontrt[rtx]')")
    model = speech(outer=True, lstm=True)
    builder = (rt.RegionalEngineBuilder.from_onnx(model).for_region("CERTIFIED")
               .with_backend("tensorrt-rtx"))
    with pytest.raises(rt.errors.BuildError, match=r"refused before any build work.*pin"):
        builder.build()
    engine = builder.with_pinned_inputs({"sr": 16000}).build()
    assert engine.backend_name == "tensorrt-rtx" and engine.precision == "fp32"
