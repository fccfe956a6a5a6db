"""A loaded engine's ONNX Runtime session: its selector's threads, and no spinning by default
(spinning pool threads keep every core busy between a server's requests)."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import regiontrt as rt
from regiontrt.backends.onnxruntime import runtime_options

SPIN = "session.intra_op.allow_spinning"


def _model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _build(tmp_path, tactics: rt.TacticSelector | None) -> rt.Engine:
    builder = rt.RegionalEngineBuilder.from_onnx(_model()).for_region("CERTIFIED")
    if tactics is not None:
        builder = builder.with_tactics(tactics)
    path = tmp_path / "relu.engine"
    builder.build().save(path)
    return rt.load_engine(path)  # a loaded file: what a server runs


def _session_options(engine: rt.Engine):
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(engine.infer({"x": x})["y"], x)
    return engine._runner._session.get_session_options()


def test_a_loaded_engine_does_not_spin_by_default(tmp_path):
    so = _session_options(_build(tmp_path, None))
    assert so.get_session_config_entry(SPIN) == "0"


def test_the_selectors_threads_and_spinning_reach_the_loaded_session(tmp_path):
    engine = _build(tmp_path, rt.TacticSelector(cpu_threads=1, cpu_spinning=True))
    assert engine.metadata["tactics"]["cpu_spinning"] is True
    so = _session_options(engine)
    assert so.intra_op_num_threads == 1
    try:
        spin = so.get_session_config_entry(SPIN)
    except Exception:  # never set: ONNX Runtime's default, spinning
        spin = "1"
    assert spin == "1"


@pytest.mark.parametrize("threads", [10**9, -3, "8", 2.5, True])
def test_metadata_cannot_size_the_thread_pool_beyond_this_host(threads):
    so = runtime_options({"tactics": {"cpu_threads": threads, "cpu_spinning": "yes"}})
    assert so.get_session_config_entry(SPIN) == "0"  # only a real true turns spinning on
    if threads == 10**9:
        assert so.intra_op_num_threads == (os.cpu_count() or 1)
    else:
        assert so.intra_op_num_threads == 0


def test_cpu_spinning_must_be_a_bool():
    with pytest.raises(ValueError, match="cpu_spinning"):
        rt.TacticSelector(cpu_spinning="no")
