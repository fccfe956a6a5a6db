"""Fusion report from engine-inspector JSON (samples follow NVIDIA's documented format)."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import helper as oh

from regiontrt.backends.fusion import datatype_of, fusion_report, nodes_from_metadata

NODES = ["q1", "dq1", "dqw1", "conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "add", "out"]


def graph_with(names: list[str]) -> onnx.ModelProto:
    nodes = [oh.make_node("Identity", [f"t{i}"], [f"t{i + 1}"], name=n)
             for i, n in enumerate(names)]
    return oh.make_model(oh.make_graph(nodes, "g", [], []))


def io(dtype_text: str) -> list[dict[str, object]]:
    return [{"Name": "t", "Dimensions": [8, 8, 16, 16], "Format/Datatype": dtype_text}]


def detailed() -> dict[str, object]:
    return {"Layers": [
        {"Name": "q1", "LayerType": "Scale",
         "Inputs": io("Row major linear FP32 format"),
         "Outputs": io("Thirty-two wide channel vectorized row major Int8 format"),
         "Metadata": "[ONNX Layer: q1]"},
        {"Name": "conv1 + bn1 + relu1", "LayerType": "CaskConvolution",
         "Inputs": io("Thirty-two wide channel vectorized row major Int8 format"),
         "Outputs": io("Row major linear FP32 format"),
         "Metadata": "[ONNX Layer: dq1]\x1f[ONNX Layer: dqw1]\x1f[ONNX Layer: conv1]"
                     "\x1f[ONNX Layer: bn1]\x1f[ONNX Layer: relu1]",
         "TacticName": "sm89_xmma_fprop_implicit_gemm_i8f32"},
        {"Name": "conv2 + bn2 + relu2", "LayerType": "CaskConvolution",
         "Inputs": io("Row major linear FP16 format"),
         "Outputs": io("Row major linear FP16 format")},
        {"Name": "PWN(add)", "LayerType": "PointWiseV2",
         "Inputs": io("N/A due to dynamic shapes"), "Outputs": io("N/A due to dynamic shapes")},
        {"Name": "Reformatting CopyNode for Output Tensor 0 to add", "LayerType": "Reformat",
         "Inputs": io("Half"), "Outputs": io("Float")},
    ], "Bindings": ["x", "y"]}


def test_fused_nodes_come_from_metadata_then_from_names():
    report = fusion_report(json.dumps(detailed()), graph_with(NODES))
    layers = report["layers"]
    assert layers[1]["onnx_nodes"] == ["dq1", "dqw1", "conv1", "bn1", "relu1"]  # metadata
    assert layers[2]["onnx_nodes"] == ["conv2", "bn2", "relu2"]  # " + "-joined name
    assert layers[3]["onnx_nodes"] == ["add"]  # PWN(...) wrapper
    assert layers[4]["onnx_nodes"] == []  # a reformat TensorRT inserted
    assert report["onnx_nodes"] == len(NODES) and report["engine_layers"] == 5
    assert report["fused_layers"] == 2
    assert report["unmapped_onnx_nodes"] == ["out"]
    assert report["detail"] == "detailed"
    assert layers[1]["tactic"].startswith("sm89_")


def test_each_layer_gets_the_precision_it_computes_in():
    report = fusion_report(detailed(), graph_with(NODES))
    assert [row["precision"] for row in report["layers"]] == [
        "fp32", "int8", "fp16", None, "fp16"]
    assert report["layers"][1]["outputs"] == ["fp32"]
    assert report["precisions"] == {"fp32": 1, "int8": 1, "fp16": 2, "unknown": 1}


def test_layer_names_only_still_maps_fusions():
    data = {"Layers": ["conv1 + bn1 + relu1", "add"], "Bindings": ["x", "y"]}
    report = fusion_report(data, graph_with(NODES))
    assert report["detail"] == "names_only"
    assert report["layers"][0]["onnx_nodes"] == ["conv1", "bn1", "relu1"]
    assert report["layers"][0]["precision"] is None


def test_tensorrt_11_io_tensor_section_is_accepted():
    data = {"Layers": detailed()["Layers"],
            "I/O Tensors": [{"Name": "x", "IOMode": "Input", "DataType": "Float"}]}
    assert fusion_report(data, graph_with(NODES))["engine_layers"] == 5


def test_no_layer_information_is_reported_as_such():
    report = fusion_report({"Layers": []}, graph_with(NODES))
    assert report["detail"] == "none" and report["unmapped_onnx_nodes"] == NODES


def test_bad_json_is_a_value_error():
    with pytest.raises(ValueError, match="not JSON"):
        fusion_report("{nope", graph_with(NODES))
    with pytest.raises(ValueError, match="'Layers'"):
        fusion_report({"Layers": "x"}, graph_with(NODES))


@pytest.mark.parametrize(("text", "dtype"), [
    ("Row major linear FP32 format", "fp32"), ("Float", "fp32"), ("Half", "fp16"),
    ("Two wide channel vectorized row major FP16 format", "fp16"),
    ("Thirty-two wide channel vectorized row major Int8 format.", "int8"),
    ("UInt8", "uint8"), ("BFloat16", "bf16"), ("Int32", "int32"), ("Bool", "bool"),
    ("N/A due to dynamic shapes", None),
])
def test_datatype_strings(text, dtype):
    assert datatype_of(text) == dtype


def test_metadata_with_brackets_in_node_names():
    assert nodes_from_metadata("[ONNX Layer: a[0]]\x1e[ONNX Layer: /b/Conv]") == ["a[0]", "/b/Conv"]
