"""Layers inside an ``If`` quantized: the input deciding it pinned (given, or constant in the
region's data), the branch folded into the graph, the pin recorded, other values refused."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_control_flow import speech, speech_data  # the model builders beside this file

import regiontrt as rt
from regiontrt.errors import DataError, InputError, PinnedInputMismatch
from regiontrt.graph.io import load_model

BRANCH_CONVS = {"then_conv0", "then_conv1"}  # the layers of If(sr == 16000)'s then branch


_data = speech_data


def _fp32(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, feeds)[0])


def _int8_layers(payload: bytes) -> set[str]:
    """Conv nodes whose activation and weight both come through a DequantizeLinear."""
    graph = load_model(payload, check=False).graph
    dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in graph.node
            if n.op_type == "Conv" and n.input[0] in dq and n.input[1] in dq}


def _builder(model: onnx.ModelProto, cal: object, val: list, *, fallback: bool = False
             ) -> rt.RegionalEngineBuilder:
    """Int8 whatever its loss; ``fallback``: fp32 when int8 has nothing to quantize."""
    precisions = (rt.Precision.INT8, rt.Precision.FP32) if fallback else (rt.Precision.INT8,)
    region = rt.Region("PIN", precisions, budget=1e9)
    return (rt.RegionalEngineBuilder.from_onnx(model).for_region(region)
            .with_precision(rt.PrecisionPolicy(precisions, search_mixed=False))
            .with_calibrator(data=cal).with_validation(val))


def test_an_input_constant_in_the_data_is_pinned_and_the_branch_quantized(tmp_path, caplog
                                                                           ) -> None:
    model = speech(outer=True)
    with caplog.at_level(logging.WARNING, logger="regiontrt.build.pipeline"):
        engine = _builder(model, _data(16, 1), _data(8, 2)).build(tmp_path / "pin.engine")
    assert "input 'sr' holds 16000" in caplog.text and "pinned" in caplog.text
    meta = engine.metadata
    assert meta["pinned_inputs"] == {"sr": 16000}
    assert meta["pinned_from"]["sr"].startswith("data: one value in every")
    assert "sr_if" in meta["pinned_from"]["sr"]
    assert "control_flow" not in meta  # no layer is left inside a branch
    assert engine.precision == "int8"
    assert _int8_layers(engine.payload) >= BRANCH_CONVS
    payload = load_model(engine.payload, check=False)
    assert "If" not in {n.op_type for n in payload.graph.node}
    # accuracy against the FP32 model as given (with its If), on data it was not built on
    loaded = rt.load_engine(tmp_path / "pin.engine")
    for feeds in _data(8, 3):
        ref = _fp32(model, feeds)
        got = next(iter(loaded.infer(feeds).values()))  # sr given at its pinned value
        rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        assert rel < 0.05, rel
        np.testing.assert_array_equal(got, next(iter(loaded.infer({"x": feeds["x"]}).values())))


def test_an_engine_refuses_another_value_of_a_pinned_input() -> None:
    model = speech(outer=True)
    engine = _builder(model, _data(8, 1), _data(4, 2)).build()
    trial = engine.validate(_data(4, 3), model)  # a site's data, sr included, vs FP32 as given
    assert trial.loss is not None and trial.loss < 0.05
    x = _data(1, 4)[0]["x"]
    with pytest.raises(PinnedInputMismatch, match=r"'sr' is pinned to 16000.*8000") as info:
        engine.infer({"x": x, "sr": np.array(8000, np.int64)})
    assert isinstance(info.value, InputError)
    assert info.value.input == "sr" and info.value.pinned == 16000
    with pytest.raises(PinnedInputMismatch):  # a batch of rates is not the pinned scalar
        engine.infer({"x": x, "sr": np.array([16000], np.int64)})
    with pytest.raises(InputError, match="unknown"):  # other names are still refused
        engine.infer({"x": x, "rate": np.array(16000, np.int64)})


def test_two_rates_in_the_data_pin_nothing_and_the_if_stays() -> None:
    mixed = _data(4, 1) + _data(4, 5, sr=8000)
    engine = _builder(speech(outer=True), mixed, mixed, fallback=True).build()
    assert "pinned_inputs" not in engine.metadata
    assert "no quantizable layer" in engine.report.trials[0].note
    assert [i.name for i in engine.inputs] == ["x", "sr"]
    assert any("sr_if" in line for line in engine.metadata["control_flow"])
    assert engine.precision == "fp32"  # the branch stays float


def test_auto_pinning_can_be_turned_off() -> None:
    engine = (_builder(speech(outer=True), _data(4, 1), _data(4, 2), fallback=True)
              .with_pinned_inputs({}, auto=False).build())
    assert "pinned_inputs" not in engine.metadata
    assert engine.precision == "fp32" and [i.name for i in engine.inputs] == ["x", "sr"]


def test_a_given_pin_takes_data_with_or_without_the_input_and_refuses_another_value() -> None:
    builder = _builder(speech(outer=True), _data(8, 1), _data(4, 2, sr=None))
    engine = builder.with_pinned_inputs({"sr": 16000}).build()
    assert engine.metadata["pinned_from"] == {"sr": "with_pinned_inputs"}
    assert _int8_layers(engine.payload) >= BRANCH_CONVS
    with pytest.raises(DataError, match=r"'sr' is pinned to 16000.*8000"):
        builder.with_pinned_inputs({"sr": 16000}).with_calibrator(
            data=_data(2, 1, sr=8000)).build()


def test_one_shot_data_is_not_scanned_for_pins(caplog) -> None:
    def once():  # a generator object: reading it to look for a constant would use it up
        yield from _data(4, 1)

    with caplog.at_level(logging.INFO, logger="regiontrt.build.pipeline"):
        engine = _builder(speech(outer=True), once(), _data(4, 2), fallback=True).build()
    assert "one-shot data cannot be scanned" in caplog.text
    assert "pinned_inputs" not in engine.metadata


@pytest.mark.slow
def test_silero_vad_quantizes_the_layers_inside_its_sample_rate_if() -> None:
    """The real model: all its arithmetic sits in ``If(sr == 16000)``; with sr constant in the
    data its encoder convolutions run in int8 and the speech decisions match FP32's."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("the silero-vad data needs espeak-ng (apt-get install espeak-ng)")
    from benchmarks.zoo.base import ZooAssetError
    from benchmarks.zoo.vad import SileroVAD

    zoo = SileroVAD()
    try:
        path = zoo.model_path()
    except ZooAssetError as exc:
        pytest.skip(f"needs the silero-vad model from its pinned wheel ({exc})")
    split = zoo.data(8, 6, seed=7)
    engine = _builder(onnx.load(str(path)), split.calibration, split.calibration).build()
    assert engine.metadata["pinned_inputs"] == {"sr": 16000}
    quantized = _int8_layers(engine.payload)
    assert len([n for n in quantized if "/encoder/" in n]) == 4, quantized
    reference = onnx.load(str(path))
    stats = []
    for feeds in split.evaluation:
        ref = [_fp32(reference, feeds)]
        stats.append(zoo.sample_stats(ref, [engine.infer(feeds)["output"]]))
    assert zoo.aggregate(np.stack(stats)) >= 0.97


def test_the_cli_pins_an_input_and_can_turn_auto_pinning_off(tmp_path, capsys) -> None:
    from regiontrt.cli import main

    onnx.save(speech(outer=True), tmp_path / "speech.onnx")
    for name, seed in (("cal", 1), ("val", 2)):
        folder = tmp_path / name
        folder.mkdir()
        for i, batch in enumerate(_data(4, seed)):
            np.savez(folder / f"{i}.npz", **batch)
    common = ["build", str(tmp_path / "speech.onnx"), "--region", "NA", "--calibration",
              str(tmp_path / "cal"), "--validation", str(tmp_path / "val")]
    assert main([*common, "--pin", "sr=16000", "-o", str(tmp_path / "a.engine")]) == 0
    pinned = rt.load_engine(tmp_path / "a.engine")
    assert pinned.metadata["pinned_from"] == {"sr": "with_pinned_inputs"}
    assert main([*common, "--no-auto-pin", "-o", str(tmp_path / "b.engine")]) == 0
    assert "pinned_inputs" not in rt.load_engine(tmp_path / "b.engine").metadata
    with pytest.raises(SystemExit):
        main([*common, "--pin", "sr=fast"])
    assert "NAME=VALUE" in capsys.readouterr().err
