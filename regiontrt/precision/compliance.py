"""One compliance checker: which precisions a model really holds, and whether a region allows them.

A region that forbids int8 (the EU preset) must never ship a quantized graph, whoever compiled it
and wherever the quantization hides. :func:`scan_model` walks the whole model (the main graph,
every ``If``/``Loop``/``Scan`` subgraph at any depth and every model-local function) and reports:

* **int8** (any lossy integer or 8-bit float arithmetic): Quantize/DequantizeLinear of any domain,
  ``QLinear*``, ``*Integer*`` ops (``MatMulInteger``, ``ConvInteger``, ``MatMulIntegerToFloat``),
  ``DynamicQuantize*``, onnxruntime's ``QGemm``/``QAttention``/``QOrdered*``, casts to an integer
  type of 8 bits or fewer or to a float8/float4 type, and stored tensors of those types;
* **fp16** (lossy 16-bit floats): float16/bfloat16 tensors, initializers and casts.

The same checker runs at build (the source model and each compiled variant), at save, at load
(on the ONNX payload, before any runtime sees it) and in
:func:`~regiontrt.runtime.inspection.inspect`. A TensorRT plan cannot be opened without
TensorRT: there the check is on the header (the chosen precision, and the build-time record of
the variant the plan was built from, by its hash).

Forbidden precisions come from the header's region and, for a preset region name, from the preset
itself: loosening a preset needs ``override_compliance`` in the region, which is reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import onnx

from regiontrt.errors import PolicyViolation
from regiontrt.graph.io import iter_graphs, iter_tensors
from regiontrt.graph.scope import elem_types
from regiontrt.precision.types import Precision

T = onnx.TensorProto
#: Element types of 8 bits or fewer: integer, float8 and float4 (names looked up, as older onnx
#: versions lack some).
NARROW_TYPES = frozenset(
    getattr(T, name) for name in (
        "INT8", "UINT8", "INT4", "UINT4", "INT2", "UINT2", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ",
        "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0", "FLOAT4E2M1",
    ) if hasattr(T, name)
)
HALF_TYPES = frozenset((T.FLOAT16, T.BFLOAT16))
QUANT_OPS = frozenset((
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QGemm", "QAttention",
    "QEmbedLayerNormalization", "QuantizeWithOrder", "DequantizeWithOrder", "QuantizeBFP",
    "DequantizeBFP", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul",
))
_QUANT_PREFIXES = ("QLinear", "DynamicQuantize", "QOrdered")


@dataclass(frozen=True)
class Finding:
    """Evidence of a precision in a model: what it is and where."""

    precision: Precision
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.precision.value}: {self.what} ({self.where})"


def _is_quant_op(op_type: str) -> bool:
    return op_type in QUANT_OPS or op_type.startswith(_QUANT_PREFIXES) or "Integer" in op_type


def _type_of(elem: int) -> Precision | None:
    if elem in NARROW_TYPES:
        return Precision.INT8
    if elem in HALF_TYPES:
        return Precision.FP16
    return None


def _castlike(model: onnx.ModelProto) -> tuple[list[Finding], int]:
    """Findings of ``CastLike`` nodes, and how many have a target type that is not declared."""
    found: list[Finding] = []
    unknown = 0
    for where, graph in iter_graphs(model):
        types = elem_types(graph)
        for node in graph.node:
            if node.op_type != "CastLike" or len(node.input) < 2:
                continue
            label = f"{where} > CastLike {node.name or '?'}"
            target = types.get(node.input[1])
            precision = None if target is None else _type_of(target)
            if target is None:
                unknown += 1
                found.append(Finding(Precision.INT8, label,
                                     "CastLike to a type that cannot be determined"))
            elif precision is not None:
                found.append(Finding(precision, label, f"cast to {T.DataType.Name(target)}"))
    return found, unknown


def _castlike_inferred(model: onnx.ModelProto) -> list[Finding] | None:
    """``CastLike`` findings after inlining local functions and inferring types (exporters such
    as torch's dynamo put float ``CastLike`` in functions, where no type is declared)."""
    try:
        from onnx import inliner, shape_inference

        inferred = shape_inference.infer_shapes(inliner.inline_local_functions(model))
    except Exception:  # inference is best effort: the undetermined casts then count
        return None
    return _castlike(inferred)[0]


def scan_model(model: onnx.ModelProto) -> list[Finding]:
    """Every piece of evidence of int8 or fp16 arithmetic anywhere in ``model``."""
    found: list[Finding] = []
    for where, graph in iter_graphs(model):
        if isinstance(graph, onnx.GraphProto):
            for v in (*graph.input, *graph.output, *graph.value_info):
                p = _type_of(v.type.tensor_type.elem_type)
                if p is Precision.FP16:  # 8-bit inputs (images) are data, not arithmetic
                    found.append(Finding(p, where, f"tensor {v.name!r} typed float16"))
        for node in graph.node:
            label = f"{where} > {node.op_type} {node.name or '?'}"
            if _is_quant_op(node.op_type):
                found.append(Finding(Precision.INT8, label, f"quantization op {node.op_type}"))
            elif node.op_type == "Cast":
                to = next((a.i for a in node.attribute if a.name == "to"), None)
                p = _type_of(to) if to is not None else None
                if p is not None:
                    found.append(Finding(p, label, f"cast to {T.DataType.Name(to or 0)}"))
    casts, unknown = _castlike(model)
    if unknown:
        inferred = _castlike_inferred(model)
        if inferred is not None:
            casts = inferred
    found += casts
    for where, tensor in iter_tensors(model):
        p = _type_of(tensor.data_type)
        if p is not None:
            found.append(Finding(p, where, f"stored {T.DataType.Name(tensor.data_type)} tensor"))
    return found


@dataclass(frozen=True)
class ComplianceReport:
    """Whether an engine (or model) respects its region: ``compliant``, and why."""

    region: str
    compliant: bool
    checked: str
    forbidden: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    override: str | None = None
    variant_sha256: str | None = None
    findings: tuple[str, ...] = field(default=(), repr=False)

    def summary(self) -> str:
        """``"yes (...)"`` or ``"no: ..."``, one line, as ``inspect`` prints it."""
        why = "; ".join(self.reasons)
        return f"yes ({why})" if self.compliant else f"no: {why}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "compliant": self.compliant,
            "checked": self.checked,
            "region": self.region,
            "forbidden": list(self.forbidden),
            "reasons": list(self.reasons),
            "override": self.override,
            "variant_sha256": self.variant_sha256,
        }


def forbidden_for(region: Mapping[str, Any]) -> tuple[frozenset[Precision], str | None]:
    """The precisions a region (as stored in a header) forbids, and its override reason.

    A preset's own forbidden precisions apply to any region of the same name (compared
    case-insensitively) unless the region records ``override_compliance``.
    """
    from regiontrt.precision.regions import preset_forbidden

    declared = frozenset(Precision.parse(p) for p in region.get("forbidden") or ())
    override = region.get("override_compliance") or None
    preset = preset_forbidden(str(region.get("name", "")))
    if override is None and preset is not None:
        declared |= preset
    return declared, override


def check_model(model: onnx.ModelProto, region: Mapping[str, Any], *,
                checked: str = "onnx graph") -> ComplianceReport:
    """Check an ONNX model against a region (``Region.to_dict()`` or a header's ``region``)."""
    forbidden, override = forbidden_for(region)
    bad = [f for f in scan_model(model) if f.precision in forbidden]
    return _report(region, forbidden, override, checked, bad, [])


def _report(region: Mapping[str, Any], forbidden: Iterable[Precision], override: str | None,
            checked: str, bad: list[Finding], extra: list[str]) -> ComplianceReport:
    names = tuple(sorted(p.value for p in forbidden))
    reasons = list(extra)
    if bad:
        what = {"int8": "int8 (quantization nodes, 8-bit casts or tensors)",
                "fp16": "fp16 (float16 tensors or casts)"}
        kinds = sorted({what[f.precision.value] for f in bad})
        reasons.insert(0, f"{checked} holds {' and '.join(kinds)}, which region "
                          f"{region.get('name')!r} forbids: {len(bad)} site(s), e.g. "
                          + "; ".join(str(f) for f in bad[:3]))
    compliant = not bad and not extra
    if compliant:
        reasons.append(f"{checked} checked: no {', '.join(names)} anywhere" if names
                       else "the region forbids no precision")
    if override:
        reasons.append(f"preset compliance overridden: {override}")
    return ComplianceReport(str(region.get("name")), compliant, checked, names, tuple(reasons),
                            override, findings=tuple(str(f) for f in bad))


def check_artifact(metadata: Mapping[str, Any],
                   model: onnx.ModelProto | None) -> ComplianceReport:
    """Check an engine: its header, and its ONNX payload when given (``None``: header only).

    The header must already be valid (:func:`regiontrt.runtime.schema.validate_header`).
    """
    region = metadata["region"]
    forbidden, override = forbidden_for(region)
    extra = []
    if Precision.parse(metadata["precision"]) in forbidden:
        extra.append(f"the header's precision {metadata['precision']} is forbidden in region "
                     f"{region['name']!r}")
    if model is not None:
        bad = [f for f in scan_model(model) if f.precision in forbidden]
        return _report(region, forbidden, override, "onnx payload", bad, extra)
    if metadata["payload_format"] == "onnx":
        checked = "header only (payload not read)"
    else:
        checked = "plan header"
        record = metadata.get("compliance") or {}
        variant = metadata.get("variant_sha256")
        if forbidden:
            if (record.get("compliant") is True and isinstance(variant, str)
                    and record.get("variant_sha256") == variant):
                checked = f"build record of the plan's ONNX variant {variant[:16]}"
            else:
                extra.append("no build-time compliance record for the ONNX variant this plan was "
                             "built from (a TensorRT plan cannot be opened without TensorRT)")
            layers, bad = plan_layer_findings(metadata)
            if layers:
                checked += f" and TensorRT's layer report ({layers})"
            if bad:
                return _report(region, forbidden, override, checked,
                               [f for f in bad if f.precision in forbidden], extra)
    return _report(region, forbidden, override, checked, [], extra)


# Data types of TensorRT's layer report (normalised by regiontrt.backends.fusion) and of the
# parsed network (TensorRT's DataType names), by the precision they are evidence of.
_PLAN_TYPES = {
    "int8": Precision.INT8, "uint8": Precision.INT8, "int4": Precision.INT8,
    "fp8": Precision.INT8, "fp4": Precision.INT8, "fp16": Precision.FP16, "bf16": Precision.FP16,
    "INT8": Precision.INT8, "UINT8": Precision.INT8, "INT4": Precision.INT8,
    "FP8": Precision.INT8, "FP4": Precision.INT8, "HALF": Precision.FP16, "BF16": Precision.FP16,
}


def plan_layer_findings(metadata: Mapping[str, Any]) -> tuple[str, list[Finding]]:
    """Evidence from the layer precisions TensorRT reported when the plan was built.

    Reads ``build.fusion_report.layers`` (the engine inspector's per-layer output datatypes, on a
    machine that could run the plan) and ``build.network_dtypes`` (the parsed network's layer
    output types, always recorded by the TensorRT backends). Outputs only: a layer that reads a
    ``uint8`` image input computes in float. Returns ``(what was read, findings)``.
    """
    build = metadata.get("build")
    build = build if isinstance(build, Mapping) else {}
    found: list[Finding] = []
    read = []
    report = build.get("fusion_report")
    layers = report.get("layers") if isinstance(report, Mapping) else None
    if isinstance(layers, list) and layers:
        read.append(f"{len(layers)} inspected layers")
        for layer in layers:
            if not isinstance(layer, Mapping):
                continue
            outputs = layer.get("outputs")
            for dtype in outputs if isinstance(outputs, list) else ():
                if isinstance(dtype, str) and dtype in _PLAN_TYPES:
                    found.append(Finding(_PLAN_TYPES[dtype], f"plan layer {layer.get('name')!r}",
                                         f"{dtype} output (engine inspector)"))
    dtypes = build.get("network_dtypes")
    if isinstance(dtypes, Mapping) and dtypes:
        read.append("network datatypes")
        for name, count in dtypes.items():
            if name in _PLAN_TYPES and isinstance(count, int) and count > 0:
                found.append(Finding(_PLAN_TYPES[name], "parsed network",
                                     f"{count} layer outputs of type {name}"))
    return ", ".join(read), found


def enforce(model: onnx.ModelProto, region: Mapping[str, Any], *, what: str = "graph") -> None:
    """Raise :class:`PolicyViolation` when ``model`` holds what ``region`` forbids."""
    report = check_model(model, region, checked=what)
    if not report.compliant:
        raise PolicyViolation("; ".join(report.reasons))
