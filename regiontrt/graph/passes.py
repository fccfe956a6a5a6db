"""The graph passes as one small chainable API.

>>> from regiontrt.graph import Passes
>>> fp16 = Passes(model).clean().pin({"sr": 16000}).fp16().model        # doctest: +SKIP
>>> Passes(model).clean().check(batches).precision                     # doctest: +SKIP

Each step returns a new :class:`Passes` holding the rewritten model; the model given is never
changed. :meth:`Passes.check` runs the current model against the one the chain started from on
the same inputs (ONNX Runtime) and refuses a pass that changed what the model computes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import onnx

from regiontrt.graph import clean as _clean
from regiontrt.graph.check import check_pass, run_onnx
from regiontrt.graph.control_flow import control_flow_report
from regiontrt.graph.fp16 import DEFAULT_FP32_OPS, to_fp16
from regiontrt.graph.label import graph_precision
from regiontrt.graph.pin import fold_pinned_inputs
from regiontrt.graph.qdq_options import QuantizeOptions
from regiontrt.graph.quantize import quantize_model


class Passes:
    """A model and the passes applied to it so far (see the module docstring).

    Args:
        model: the ONNX model the chain starts from.
    """

    def __init__(self, model: onnx.ModelProto, *, _origin: onnx.ModelProto | None = None,
                 _applied: tuple[str, ...] = ()) -> None:
        self.model = model
        self.origin = _origin if _origin is not None else model
        self.applied = _applied

    def _then(self, name: str, model: onnx.ModelProto) -> Passes:
        return Passes(model, _origin=self.origin, _applied=(*self.applied, name))

    def clean(self, *, fold_batchnorm: bool = True) -> Passes:
        """Inference clean-up: constant folding, dead nodes, BatchNormalization folding."""
        return self._then("clean", _clean.clean(self.model, fold_batchnorm=fold_batchnorm))

    def pin(self, values: Mapping[str, Any]) -> Passes:
        """Make inputs constants and inline the ``If`` nodes they decide."""
        return self._then("pin", fold_pinned_inputs(self.model, values))

    def fp16(self, *, fp32_ops: Iterable[str] = DEFAULT_FP32_OPS,
             fp32_nodes: Iterable[str] = ()) -> Passes:
        """Float16 outside the blocks that must stay float32 (inside control flow too)."""
        return self._then("fp16", to_fp16(self.model, fp32_ops=fp32_ops, fp32_nodes=fp32_nodes))

    def quantize(self, amax: Mapping[str, float],
                 options: QuantizeOptions | None = None) -> Passes:
        """INT8 Q/DQ pairs with these activation ranges (TensorRT's explicit quantization)."""
        return self._then("quantize", quantize_model(self.model, amax,
                                                     options or QuantizeOptions()))

    def check(self, batches: Sequence[Mapping[str, Any]], *, rtol: float = 1e-3) -> Passes:
        """Refuse the chain if the model no longer computes what the first one did.

        Raises:
            GraphPassError: an output differs beyond ``rtol`` of its scale.
        """
        reference = run_onnx(self.origin, batches)
        check_pass("+".join(self.applied) or "none", reference, self.model, batches, rtol=rtol)
        return self

    @property
    def precision(self) -> str:
        """The narrowest arithmetic the model holds: ``int8``, ``fp16`` or ``fp32``."""
        return graph_precision(self.model)

    def control_flow(self) -> list[str]:
        """Control-flow nodes whose layers stay float32 under int8, and why."""
        return control_flow_report(self.model)
