"""Model preparation shared by the peer quantizers of :mod:`benchmarks.peers`: ONNX-only helpers.

Like :mod:`benchmarks.peers`, this imports nothing from ``regiontrt`` or ``benchmarks``: the
ModelOpt child runs ``peers.py`` as a script in ModelOpt's own environment and imports this
module as its sibling.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def private_copy(model_path: str, folder: str) -> str:
    """A copy of the model in ``folder``, so no tool can rewrite the caller's file."""
    dest = Path(folder) / ("input_" + Path(model_path).name)
    shutil.copyfile(model_path, dest)
    return str(dest)


def weights_as_initializers(model: Any) -> Any:
    """``model`` (an ``onnx.ModelProto``, changed in place) with its main graph's ``Constant``
    tensors turned into initializers of the same name.

    Exporters such as paddle2onnx write every weight as a ``Constant`` node. ONNX Runtime's
    quantizer, which ModelOpt's ONNX PTQ runs underneath, quantizes a weight per channel only when
    it is an initializer: on ``Constant`` weights ModelOpt falls back to one scale per tensor for
    every Conv and its output is garbage (PP-OCRv4 rec: CER 1.0). ``quant_pre_process`` does this
    folding for ONNX Runtime's own runs; doing it on the input every tool gets keeps them equal.
    """
    import onnx

    kept = []
    lifted = []
    for node in model.graph.node:
        attrs = list(node.attribute)
        if node.op_type == "Constant" and len(attrs) == 1 and attrs[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attrs[0].t)
            tensor.name = node.output[0]
            lifted.append(tensor)
        else:
            kept.append(node)
    if lifted:
        model.graph.initializer.extend(lifted)
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return model


@contextlib.contextmanager
def scratch_cwd(folder: str | Path) -> Iterator[None]:
    """Run the block with ``folder`` as the working directory.

    ONNX Runtime's symbolic shape inference, which ``quant_pre_process`` runs, saves a failed
    inference as ``sym_shape_infer_temp.onnx`` with a ``<uuid1>.data`` external-data file in the
    working directory, one per call, and never removes them; a peer's scratch folder takes them.
    Paths given to the tools must be absolute.
    """
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)



def upgrade_opset(model_path: str, out_path: str, opset: int) -> str:
    """``model_path`` converted to ``opset`` (the path itself if already there)."""
    import onnx

    model = onnx.load(model_path)
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    if current >= opset:
        return model_path
    onnx.save(onnx.version_converter.convert_version(model, opset), out_path)
    return out_path


# ONNX Runtime fusions that would leave com.microsoft ops, which ModelOpt takes for TensorRT
# plugins; with them off, the extended level still fuses LayerNormalization (opset >= 17).
_CONTRIB_FUSIONS = [
    "ConvActivationFusion",
    "ConvAddActivationFusion",
    "QuickGeluFusion",
    "GeluFusion",
    "BiasGeluFusion",
    "FastGeluFusion",
    "MatMulScaleFusion",
    "MatmulTransposeFusion",
]


def fuse_layernorm(model_path: str, out_path: str) -> str:
    """Opset 17 and ONNX Runtime's extended graph optimizations, ONNX-domain fusions only.

    Decomposed LayerNorms (ReduceMean, Sub, Pow, Sqrt, Div) become ``LayerNormalization``
    nodes, which quantizers that put Q/DQ on element-wise ops then leave alone.
    """
    import onnxruntime as ort

    src = upgrade_opset(model_path, out_path + ".opset17.onnx", 17)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = out_path
    so.log_severity_level = 3
    ort.InferenceSession(
        src, so, providers=["CPUExecutionProvider"], disabled_optimizers=_CONTRIB_FUSIONS
    )
    return out_path


def has_conv(model_path: str) -> bool:
    """Whether the model holds a Conv (ONNX Runtime's docs recommend per-channel for CNNs)."""
    import onnx

    return any(n.op_type in ("Conv", "ConvTranspose") for n in onnx.load(model_path).graph.node)


def resolve_exclusions(model_path: str, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """``names`` as nodes of the model a peer actually quantizes: ``(found, missing)``.

    Pre-processing may fuse a layer into a new node named after it (ONNX Runtime's
    ``MatMulAddFusion`` writes ``<matmul>/MatMulAddFusion``), so a node whose name starts with
    ``<name>/`` counts as that layer.
    """
    import onnx

    nodes = [n.name for n in onnx.load(model_path).graph.node]
    found, missing = [], []
    for name in names:
        hits = [n for n in nodes if n == name or n.startswith(name + "/")]
        found += hits
        if not hits:
            missing.append(name)
    return found, missing
