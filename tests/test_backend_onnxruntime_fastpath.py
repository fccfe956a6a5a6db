"""The per-call path of ``Engine.infer`` on ONNX Runtime: cheap when inputs repeat, never laxer."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from regiontrt.backends.onnxruntime import OnnxRuntimeRunner
from regiontrt.errors import InputError, ShapeOutOfProfile


def _model() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class _Recording:
    """Wraps the real session and records the feeds object ONNX Runtime received."""

    def __init__(self, session):
        self.session, self.feeds = session, []

    def run(self, names, feeds, run_options=None):
        self.feeds.append(feeds)
        return self.session.run(names, feeds, run_options)


def test_ready_arrays_reach_onnxruntime_uncopied_and_others_are_cast():
    runner = OnnxRuntimeRunner(_model())
    rec = runner._session = _Recording(runner._session)
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    feeds = {"x": x}
    out = runner.run(feeds)
    np.testing.assert_array_equal(out["y"], np.maximum(x, 0))
    assert rec.feeds[-1] is feeds and rec.feeds[-1]["x"] is x  # no dict, no array copy
    strided = np.asfortranarray(np.linspace(-1, 1, 8, dtype=np.float32).reshape(4, 2)).T
    wide = x.astype(np.float64)
    for value in (strided, wide, x.tolist()):
        out = runner.run({"x": value})
        sent = rec.feeds[-1]["x"]
        assert sent.dtype == np.float32 and sent.flags.c_contiguous
        np.testing.assert_array_equal(out["y"], np.maximum(np.asarray(value, np.float32), 0))


def test_engine_infer_cache_never_skips_a_check(tmp_path):
    rt = pytest.importorskip("regiontrt")
    from regiontrt import demo
    from regiontrt.data.sources import split_batches

    data = demo.region_data("CERTIFIED")
    path = tmp_path / "e.engine"
    (rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region("CERTIFIED")
     .with_shape_profile({"input": [(1, 1, 8, 8), (2, 1, 8, 8), (4, 1, 8, 8)]})
     .with_validation(split_batches({"input": data.validation[:8]}, 4)).build(path))
    with rt.load_engine(path) as engine:
        x = data.validation[:2].astype(np.float32)
        first = engine.infer({"input": x})
        again = engine.infer({"input": x})  # answered from the cache of passed checks
        np.testing.assert_array_equal(first[next(iter(first))], again[next(iter(again))])
        with pytest.raises(InputError, match="dtype"):
            engine.infer({"input": x.astype(np.float64)})
        with pytest.raises(InputError, match="names"):
            engine.infer({"other": x})
        with pytest.raises(ShapeOutOfProfile):
            engine.infer({"input": np.zeros((5, 1, 8, 8), np.float32)})
        with pytest.raises(InputError, match="rank"):
            engine.infer({"input": x[0]})
        with pytest.raises(ShapeOutOfProfile):  # outside the profile after a cached hit too
            engine.infer({"input": np.zeros((8, 1, 8, 8), np.float32)})
        engine.infer({"input": x})
