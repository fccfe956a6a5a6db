"""The fusion report: which ONNX nodes TensorRT fused into each engine layer, at what precision.

Input is the engine inspector's JSON (``IEngineInspector.get_engine_information(
LayerInformationFormat.JSON)``) of an engine built with ``ProfilingVerbosity.DETAILED``. Its shape,
per NVIDIA's "Engine Inspector" documentation and the 10.x -> 11.x migration notes::

    {"Layers": [{"Name": "conv1 + bn1 + relu1", "LayerType": "CaskConvolution",
                 "Inputs":  [{"Name": "x", "Dimensions": [..], "Format/Datatype": ".. Int8 .."}],
                 "Outputs": [{"Name": "r1", "Dimensions": [..], "Format/Datatype": ".. Half .."}],
                 "Metadata": "[ONNX Layer: conv1]\\x1f[ONNX Layer: bn1]\\x1f[ONNX Layer: relu1]",
                 "TacticName": "...", ...}, ...],
     "Bindings": ["x", "y"]}            # TensorRT 11: "I/O Tensors": [{...}] instead

With ``LAYER_NAMES_ONLY`` the layers are bare name strings. ONNX nodes are found from the layer's
``Metadata`` (one ``[ONNX Layer: <node>]`` per fused node, separated by ``\\x1f`` or ``\\x1e``) when
present, else from its name, whose parts TensorRT joins with ``" + "``. Without an execution
context, dynamic-shape engines print ``"N/A due to dynamic shapes"`` as the datatype; the backend
therefore attaches a context at the profile's opt shapes before asking.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import onnx

_ONNX_TAG = re.compile(r"\[ONNX Layer: (.*?)\](?=\s*(?:\[ONNX Layer: |$))")
_NAME_SPLIT = re.compile(r"\s\+\s|[()\[\],]")
# Order matters: the longest or most specific spelling first ("uint8" before "int8", "bf16"
# before "float"...).
_DTYPES = (
    ("uint8", "uint8"), ("int8", "int8"), ("int4", "int4"), ("int32", "int32"),
    ("int64", "int64"), ("bfloat16", "bf16"), ("bf16", "bf16"), ("fp8", "fp8"), ("fp4", "fp4"),
    ("fp16", "fp16"), ("half", "fp16"), ("fp32", "fp32"), ("float", "fp32"), ("bool", "bool"),
)
_DTYPE_RE = re.compile(r"(?<![a-z0-9])(" + "|".join(k for k, _ in _DTYPES) + r")(?![a-z0-9])")


def datatype_of(text: str) -> str | None:
    """Normalise an inspector ``Format/Datatype`` string, e.g. ``"Row major linear FP16 format"``
    -> ``"fp16"``, ``"Float"`` -> ``"fp32"``; ``None`` when it names none (``"N/A ..."``)."""
    match = _DTYPE_RE.search(text.lower())
    return dict(_DTYPES)[match.group(1)] if match else None


def _tensor_dtype(tensor: Any) -> str | None:
    if not isinstance(tensor, Mapping):
        return None
    for key in ("Format/Datatype", "DataType", "Datatype", "Format"):
        if key in tensor:
            dtype = datatype_of(str(tensor[key]))
            if dtype:
                return dtype
    return None


def nodes_from_metadata(metadata: str) -> list[str]:
    """ONNX node names in a layer's ``Metadata`` field, in order."""
    out = []
    for part in re.split(r"[\x1e\x1f]", metadata):
        out.extend(_ONNX_TAG.findall(part.strip()))
    return out


def nodes_from_name(name: str, known: Iterable[str]) -> list[str]:
    """ONNX node names among ``known`` that appear as parts of a fused layer's name."""
    known_set = set(known)
    out: list[str] = []
    if name in known_set:
        return [name]
    for part in _NAME_SPLIT.split(name):
        token = part.strip()
        if token in known_set and token not in out:
            out.append(token)
    return out


def _load(engine_info: str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(engine_info, Mapping):
        return engine_info
    try:
        data = json.loads(engine_info)
    except json.JSONDecodeError as exc:
        raise ValueError(f"engine inspector output is not JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise ValueError("engine inspector JSON is not an object")
    return data


def layer_entry(layer: Any, onnx_names: Sequence[str]) -> dict[str, Any]:
    """One report row for one inspector layer (a dict, or a bare name string)."""
    if not isinstance(layer, Mapping):
        name = str(layer)
        return {"name": name, "type": None, "onnx_nodes": nodes_from_name(name, onnx_names),
                "precision": None, "inputs": [], "outputs": []}
    name = str(layer.get("Name", ""))
    nodes = nodes_from_metadata(str(layer.get("Metadata", "") or ""))
    if not nodes:
        nodes = nodes_from_name(name, onnx_names)
    inputs = [_tensor_dtype(t) for t in layer.get("Inputs", ()) or ()]
    outputs = [_tensor_dtype(t) for t in layer.get("Outputs", ()) or ()]
    # The compute precision of a layer is that of what it reads (an INT8 convolution may write
    # FP32 when a DequantizeLinear is fused into it); outputs decide for input-less layers.
    known = [d for d in inputs if d] or [d for d in outputs if d]
    entry: dict[str, Any] = {
        "name": name,
        "type": layer.get("LayerType"),
        "onnx_nodes": nodes,
        "precision": known[0] if known else None,
        "inputs": inputs,
        "outputs": outputs,
    }
    if "TacticName" in layer:
        entry["tactic"] = layer["TacticName"]
    return entry


def fusion_report(engine_info: str | Mapping[str, Any], model: onnx.ModelProto) -> dict[str, Any]:
    """Summarise how the ONNX graph became engine layers.

    Args:
        engine_info: the inspector's JSON string (or the parsed object).
        model: the ONNX model that was parsed (the precision-compiled variant).

    Returns:
        ``onnx_nodes`` and ``engine_layers`` (counts before and after), ``layers`` (per layer:
        name, type, ONNX nodes fused into it, precision, input/output datatypes), ``fused_layers``
        (layers holding more than one ONNX node), ``precisions`` (layer count per precision),
        ``unmapped_onnx_nodes`` (nodes found in no layer: folded, removed, or renamed by
        TensorRT) and ``detail`` (``"detailed"``, ``"names_only"`` or ``"none"``).

    Raises:
        ValueError: ``engine_info`` is not inspector JSON.
    """
    data = _load(engine_info)
    layers_raw = data.get("Layers", [])
    if not isinstance(layers_raw, list):
        raise ValueError("engine inspector JSON has no 'Layers' list")
    onnx_names = [n.name for n in model.graph.node if n.name]
    layers = [layer_entry(layer, onnx_names) for layer in layers_raw]
    covered = {node for row in layers for node in row["onnx_nodes"]}
    if not layers_raw:
        detail = "none"
    elif all(isinstance(layer, Mapping) for layer in layers_raw):
        detail = "detailed"
    else:
        detail = "names_only"
    return {
        "onnx_nodes": len(model.graph.node),
        "engine_layers": len(layers),
        "fused_layers": sum(1 for row in layers if len(row["onnx_nodes"]) > 1),
        "precisions": dict(Counter(row["precision"] or "unknown" for row in layers)),
        "unmapped_onnx_nodes": [n for n in onnx_names if n not in covered],
        "detail": detail,
        "layers": layers,
    }
