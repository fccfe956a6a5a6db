"""Precision policies: which precisions to try, and how each is compiled into the ONNX graph.

TensorRT 11 builds only strongly typed networks, so precision lives in the graph itself:

* ``fp32``: the cleaned graph (constants folded, BatchNorm folded into Conv, dead nodes gone);
* ``fp16``: the cleaned graph in float16 with Cast nodes, the model's input and output types kept,
  numerically sensitive ops kept in float32 (:data:`regiontrt.graph.fp16.DEFAULT_FP32_OPS`);
* ``int8``: Quantize/DequantizeLinear pairs placed the way TensorRT fuses them, with scales from
  the region's own calibration data; layers listed in ``keep`` stay in float32.

Extension points (a subclass needs a few lines): :meth:`PrecisionPolicy.candidates` decides the
order of precisions to try for a region; :meth:`PrecisionPolicy.compile` produces the graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import onnx

from regiontrt.errors import DataError, InvalidArgumentError, PolicyViolation
from regiontrt.precision.regions import Region
from regiontrt.precision.types import Precision

if TYPE_CHECKING:
    from regiontrt.graph.quantize import QuantizationPlan, QuantizeOptions


class PrecisionPolicy:
    """Which precisions to try for a region, and how to compile each one.

    Args:
        precisions: precisions to try, most preferred first; ``None`` uses the region's list.
            Asking for a precision the region forbids raises :class:`PolicyViolation` at build.
        fp32_ops: op types kept in float32 under fp16 (``None``: the documented default list).
        fp32_nodes: node names kept in float32 under fp16.
        quantize: Q/DQ placement options for int8 (``None``: the defaults).
        search_mixed: when whole-model int8 misses the budget, keep the most sensitive layers in
            higher precision until it fits, before falling back to the next precision.
        max_kept_fraction: at most this share of the quantizable layers may be kept out of int8
            by that search.
    """

    def __init__(
        self,
        precisions: Sequence[Precision | str] | Precision | str | None = None,
        *,
        fp32_ops: Iterable[str] | None = None,
        fp32_nodes: Iterable[str] = (),
        quantize: QuantizeOptions | None = None,
        search_mixed: bool = True,
        max_kept_fraction: float = 0.5,
    ) -> None:
        if isinstance(precisions, (str, Precision)):
            precisions = [precisions]
        try:
            self.precisions = (
                None if precisions is None else tuple(Precision.parse(p) for p in precisions)
            )
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"precisions: {exc}") from exc
        if self.precisions is not None and not self.precisions:
            raise InvalidArgumentError("precisions must name at least one precision")
        self.fp32_ops = None if fp32_ops is None else frozenset(fp32_ops)
        self.fp32_nodes = frozenset(fp32_nodes)
        self.quantize = quantize
        self.search_mixed = search_mixed
        if not isinstance(max_kept_fraction, (int, float)) or not 0 <= max_kept_fraction <= 1:
            raise InvalidArgumentError("max_kept_fraction must be a number within 0..1")
        self.max_kept_fraction = max_kept_fraction

    def candidates(self, region: Region) -> tuple[Precision, ...]:
        """Precisions to try for ``region``, in order.

        Raises:
            PolicyViolation: one of them is forbidden in the region.
        """
        chosen = self.precisions if self.precisions is not None else region.precisions
        forbidden = [p.value for p in chosen if not region.allows(p)]
        if forbidden:
            raise PolicyViolation(
                f"region {region.name!r} forbids {', '.join(forbidden)} "
                f"(forbidden: {', '.join(sorted(p.value for p in region.forbidden))}); "
                "it is never built, even when asked for explicitly"
            )
        return tuple(chosen)

    def quantize_options(self, keep: Iterable[str] = ()) -> QuantizeOptions:
        """The Q/DQ options, with ``keep`` added to the excluded nodes."""
        from dataclasses import replace

        from regiontrt.graph.quantize import QuantizeOptions

        base = self.quantize or QuantizeOptions()
        return replace(base, exclude_nodes=frozenset(base.exclude_nodes) | frozenset(keep))

    def quantization_plan(
        self, model: onnx.ModelProto, keep: Iterable[str] = ()
    ) -> QuantizationPlan:
        """Which layers int8 quantizes and which activations need calibrated ranges."""
        from regiontrt.graph.quantize import plan_quantization

        return plan_quantization(model, self.quantize_options(keep))

    def compile(
        self,
        model: onnx.ModelProto,
        precision: Precision,
        *,
        amax: Mapping[str, float] | None = None,
        keep: Iterable[str] = (),
    ) -> onnx.ModelProto:
        """Compile ``precision`` into a copy of the cleaned FP32 ``model``.

        Args:
            model: the cleaned FP32 model.
            precision: the precision to compile.
            amax: calibrated absolute maxima per activation tensor (int8 only).
            keep: weighted layers kept out of int8 (found by the mixed-precision search).
        """
        precision = Precision.parse(precision)
        if precision is Precision.FP32:
            out = onnx.ModelProto()
            out.CopyFrom(model)
            return out
        if precision is Precision.FP16:
            from regiontrt.graph.fp16 import DEFAULT_FP32_OPS, to_fp16

            ops = DEFAULT_FP32_OPS if self.fp32_ops is None else self.fp32_ops
            return to_fp16(model, fp32_ops=ops, fp32_nodes=self.fp32_nodes)
        if amax is None:
            raise DataError("int8 needs calibrated ranges (amax) from the region's data")
        from regiontrt.graph.quantize import quantize_model

        return quantize_model(model, amax, self.quantize_options(keep))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description for engine metadata."""
        q = self.quantize
        return {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "precisions": None if self.precisions is None else [p.value for p in self.precisions],
            "fp32_ops": None if self.fp32_ops is None else sorted(self.fp32_ops),
            "fp32_nodes": sorted(self.fp32_nodes),
            "quantize": None if q is None else {
                k: (sorted(v) if isinstance(v, frozenset) else v) for k, v in vars(q).items()
            },
            "search_mixed": self.search_mixed,
            "max_kept_fraction": self.max_kept_fraction,
        }


def enforce_compliance(model: onnx.ModelProto, region: Region) -> None:
    """Refuse a graph that holds what ``region`` forbids, anywhere in it.

    A custom policy could compile anything; this looks at the graph itself (subgraphs and local
    functions included) with
    :func:`regiontrt.precision.compliance.enforce`, so an EU engine can never carry
    quantization, and a region forbidding fp16 never a float16 tensor or cast.

    Raises:
        PolicyViolation: the graph holds a forbidden precision.
    """
    from regiontrt.precision.compliance import enforce

    enforce(model, region.to_dict())
