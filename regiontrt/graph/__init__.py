"""The graph layer: ONNX in, ONNX out, and the checks that a pass kept the model's meaning.

:class:`Passes` chains the passes on one model (``Passes(m).clean().fp16().model``); the
passes themselves are :mod:`~regiontrt.graph.clean` (inference clean-up),
:func:`to_fp16`, :func:`quantize_model` / :func:`plan_quantization` (INT8 Q/DQ placement the way
TensorRT executes it), :func:`fold_pinned_inputs` (constants for inputs fixed in a deployment),
with :func:`check_pass` / :func:`run_onnx` (ONNX Runtime, in the int8 arithmetic named by
:class:`Int8Arithmetic`), :func:`graph_precision` and :func:`control_flow_report`.

May import: ``regiontrt.errors`` and the other foundation modules only.
"""

from regiontrt.graph.arithmetic import Int8Arithmetic
from regiontrt.graph.check import check_pass, run_onnx
from regiontrt.graph.control_flow import control_flow_report, trt_control_flow_problems
from regiontrt.graph.fp16 import to_fp16
from regiontrt.graph.io import TensorSpec, input_specs, load_model, output_specs
from regiontrt.graph.label import graph_precision
from regiontrt.graph.passes import Passes
from regiontrt.graph.pin import fold_pinned_inputs
from regiontrt.graph.qdq_options import QuantizeOptions
from regiontrt.graph.quantize import plan_quantization, quantize_model

__all__ = [
    "Int8Arithmetic", "Passes", "QuantizeOptions", "TensorSpec", "check_pass",
    "control_flow_report", "fold_pinned_inputs", "graph_precision", "input_specs", "load_model",
    "output_specs", "plan_quantization", "quantize_model", "run_onnx", "to_fp16",
    "trt_control_flow_problems",
]
