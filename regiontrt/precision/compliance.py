"""One compliance checker: which precisions a model really holds, and whether a region allows them.

A region that forbids int8 (the EU preset) must never ship a quantized graph, whoever compiled it
and wherever the quantization hides. The evidence comes from :func:`~regiontrt.precision.scan.
scan_model` (the whole model: subgraphs, functions, their defaults, resolved call sites, ops that
compute on 8-bit values); this module judges it against a region.

The same checker runs at build (the source model and each compiled variant), on construction of
every :class:`~regiontrt.runtime.engine.Engine` (so at load, before any runtime sees a payload)
and in :func:`~regiontrt.runtime.inspection.inspect`. A TensorRT plan cannot be opened without
TensorRT: there the check is on the header (the chosen precision, the build-time record of the
variant the plan was built from, and TensorRT's layer report), and for a region that forbids a
precision those records count only with a *provenance*: built in this process, or read from a
file whose signature verified.

Forbidden precisions come from the header's region and, for a region whose name is a preset's
(see :func:`regiontrt._names.region_key`), from the preset itself: loosening a preset needs
``override_compliance`` with a reason of a few visible words, which is reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import onnx

from regiontrt.errors import PolicyViolation
from regiontrt.precision.scan import NARROW_TYPES, Finding, scan_model
from regiontrt.precision.types import Precision

__all__ = ["NARROW_TYPES", "ComplianceReport", "Finding", "check_artifact", "check_model",
           "enforce", "forbidden_for", "plan_layer_findings", "scan_model"]


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


def check_artifact(metadata: Mapping[str, Any], model: onnx.ModelProto | None, *,
                   provenance: str | None = None) -> ComplianceReport:
    """Check an engine: its header, and its ONNX payload when given (``None``: header only).

    Args:
        metadata: the header, already valid (:func:`regiontrt.runtime.schema.validate_header`).
        model: the parsed ONNX payload, or ``None`` (a plan, or the header alone).
        provenance: who vouches for a plan's build records (``None``: nobody; a plan is then
            refused for a region that forbids a precision).
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
        if forbidden and provenance is None:
            extra.append("a TensorRT plan's compliance record is a header field anyone can "
                         "edit; for a region that forbids a precision a plan is accepted only "
                         "from a file whose signature verifies (trust=...) or from a build here")
        elif forbidden:
            if (record.get("compliant") is True and isinstance(variant, str)
                    and record.get("variant_sha256") == variant):
                checked = f"build record of the plan's ONNX variant {variant[:16]}"
            else:
                extra.append("no build-time compliance record for the ONNX variant this plan was "
                             "built from (a TensorRT plan cannot be opened without TensorRT)")
            checked += f" ({provenance})"
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
