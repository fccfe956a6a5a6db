"""The chainable graph-pass API: each step a new model, checks against the first one."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper as nh

from regiontrt import demo
from regiontrt.errors import GraphPassError
from regiontrt.graph import Passes, QuantizeOptions, plan_quantization


def test_chain_clean_fp16_and_quantize() -> None:
    model = demo.load_model()
    batches = [{"input": demo.region_data("EU").validation[:16]}]
    cleaned = Passes(model).clean().check(batches)
    assert cleaned.applied == ("clean",) and cleaned.precision == "fp32"
    half = cleaned.fp16()
    assert half.applied == ("clean", "fp16") and half.precision == "fp16"
    assert half.check(batches, rtol=5e-2) is half
    plan = plan_quantization(cleaned.model, QuantizeOptions())
    int8 = cleaned.quantize({t: 8.0 for t in plan.activations})
    assert int8.precision == "int8" and model is int8.origin  # the model given is unchanged
    assert all(n.op_type not in ("QuantizeLinear",) for n in model.graph.node)


def test_check_refuses_a_pass_that_changes_the_model() -> None:
    model = demo.load_model()
    broken = Passes(model).clean()
    init = broken.model.graph.initializer[0]
    init.CopyFrom(nh.from_array(-nh.to_array(init), init.name))
    batches = [{"input": np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)}]
    with pytest.raises(GraphPassError, match="'clean'"):
        broken.check(batches)
