"""Plan headers: TensorRT-RTX fields checked on real plans built here; TensorRT's are advisory."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

from regiontrt.backends.plan import (
    RTX_CC_BITS,
    advisory_plan_header,
    read_plan_header,
    same_release,
    sm_name,
)
from regiontrt.backends.trt_build import device_sm
from regiontrt.errors import ArtifactError


def conv_relu() -> bytes:
    w = nh.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32),
                      "w")
    nodes = [oh.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1] * 4),
             oh.make_node("Relu", ["c"], ["y"], name="relu")]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TP.FLOAT, ["N", 3, 8, 8])],
                          [oh.make_tensor_value_info("y", TP.FLOAT, ["N", 4, 8, 8])], [w])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def rtx_plan(targets: tuple[str, ...]) -> bytes:
    """A plan built with the bare tensorrt_rtx API (independent of the backend under test)."""
    trt = pytest.importorskip("tensorrt_rtx", reason="needs the tensorrt-rtx package")
    from regiontrt.backends.trt_build import trt_logger

    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(conv_relu())
    config = builder.create_builder_config()
    config.builder_optimization_level = 0
    if targets:
        config.num_compute_capabilities = len(targets)
        for i, sm in enumerate(targets):
            assert config.set_compute_capability(getattr(trt.ComputeCapability, sm.upper()), i)
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    return bytes(plan)


TARGET_SETS = [(sm,) for sm in RTX_CC_BITS.values()] + [
    ("sm89", "sm120"), ("sm80", "sm86", "sm89", "sm120", "sm121")]


@pytest.mark.rtx
@pytest.mark.parametrize("targets", TARGET_SETS, ids="+".join)
def test_rtx_header_reports_the_requested_targets_and_version(targets):
    trt = pytest.importorskip("tensorrt_rtx", reason="needs the tensorrt-rtx package")
    plan = rtx_plan(targets)
    header = read_plan_header(plan)
    assert header.format == "tensorrt-rtx"
    assert header.trt_version == trt.__version__
    assert set(header.compute_capabilities) == set(targets)
    assert header.raw["unknown_cc_bits"] == []
    assert header.raw["declared_size"] == len(plan)
    tags = [s["tag"] for s in header.raw["sections"]]
    assert tags == ["ENGN", "WGHT"]
    assert header.raw["weights_bytes"] == header.raw["sections"][1]["size"]
    json.dumps(header.to_dict())  # goes into the metadata as is


@pytest.mark.rtx
def test_rtx_header_of_a_default_build_lists_the_default_targets():
    if device_sm() is not None:
        pytest.skip("needs a machine without a GPU (with one, RTX may target it alone)")
    header = read_plan_header(rtx_plan(()))
    assert {"sm80", "sm86", "sm89", "sm120"} <= set(header.compute_capabilities)


@pytest.mark.rtx
def test_rtx_header_refuses_truncated_and_padded_plans():
    plan = rtx_plan(("sm89",))
    with pytest.raises(ArtifactError, match="truncated"):
        read_plan_header(plan[:-1])
    with pytest.raises(ArtifactError, match="declares"):
        read_plan_header(plan + b"\0")
    with pytest.raises(ArtifactError, match="shorter than its header"):
        read_plan_header(plan[:20])


def tensorrt_like(magic: bytes, version: tuple[int, int, int, int]) -> bytes:
    """Bytes laid out as one issue comment reports a TensorRT 8.6 plan header (not a real plan)."""
    head = bytearray(64)
    head[:4] = magic
    head[24:28] = bytes(version)
    return bytes(head) + b"x" * 100


def test_tensorrt_version_bytes_are_read_but_marked_unverified():
    header = read_plan_header(tensorrt_like(b"ftrt", (10, 8, 0, 43)))
    assert (header.format, header.trt_version, header.compute_capabilities) == (
        "tensorrt", "10.8.0", ())
    assert header.raw["verified"] is False and header.raw["magic_known"] is True
    assert header.verified is False and header.to_dict()["verified"] is False


def test_advisory_header_never_raises():
    header = advisory_plan_header(b"\x01" * 10)
    assert (header.format, header.trt_version, header.verified) == ("tensorrt", None, False)
    assert "shorter than its header" in header.raw["error"]
    assert advisory_plan_header(tensorrt_like(b"ftrt", (10, 8, 0, 43))).trt_version == "10.8.0"


@pytest.mark.rtx
def test_rtx_header_of_another_release_is_read_but_not_trusted():
    plan = bytearray(rtx_plan(("sm89",)))
    assert read_plan_header(bytes(plan)).verified is True  # 1.7: the verified layout
    plan[25] = 8  # the same bytes claiming TensorRT-RTX 1.8
    header = read_plan_header(bytes(plan))
    assert header.format == "tensorrt-rtx" and header.trt_version.startswith("1.8.")
    assert header.verified is False and header.compute_capabilities == ()
    assert header.raw["cc_mask"] == 1 << 3  # kept raw, not interpreted


def test_unknown_magic_with_a_plausible_version_is_kept_but_flagged():
    header = read_plan_header(tensorrt_like(b"abcd", (11, 1, 0, 106)))
    assert header.trt_version == "11.1.0"
    assert header.raw["magic_known"] is False


def test_non_plans_are_refused():
    with pytest.raises(ArtifactError, match="not a TensorRT"):
        read_plan_header(conv_relu())  # an ONNX model
    with pytest.raises(ArtifactError, match="not a TensorRT"):
        read_plan_header(tensorrt_like(b"vtrt", (0, 0, 0, 0)))


def test_same_release_ignores_the_build_number_only():
    assert same_release("10.8.0.43", "10.8.0")
    assert same_release("1.7.1.116", "1.7.1.200")
    assert not same_release("10.8.0.43", "10.9.0.43")
    assert not same_release("1.7.1", None)
    assert sm_name(8, 9) == "sm89"
