"""Reading an ``.engine`` file's header without any runtime: :func:`inspect` and the CLI's summary.

Nothing here loads a payload into a runtime, so it needs neither a GPU nor TensorRT; running an
engine is :func:`regiontrt.runtime.engine.load_engine`'s job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from regiontrt import _display
from regiontrt.precision.compliance import check_artifact
from regiontrt.precision.validation import ValidationReport, format_value
from regiontrt.runtime import artifact
from regiontrt.runtime.schema import check_payload, validate_header
from regiontrt.runtime.trust import TrustLike, read_verified


def region_of(metadata: Mapping[str, Any]) -> Mapping[str, Any]:
    """The region entry of an engine's metadata (an empty mapping when absent)."""
    region = metadata.get("region")
    return region if isinstance(region, Mapping) else {}


def compliance(metadata: Mapping[str, Any]) -> tuple[bool | None, str]:
    """Whether the engine obeys its region's rules, and why.

    The checker's verdict (``compliance_check``, added by :func:`regiontrt.inspect` from the
    payload itself, see
    :mod:`regiontrt.precision.compliance`) comes first; then the rules recorded in the
    engine: the precision must not be forbidden, must be one the region allows, and the accepted
    trial's loss must be within the budget.
    """
    region, precision = region_of(metadata), metadata.get("precision")
    check = metadata.get("compliance_check")
    check = check if isinstance(check, Mapping) else {}
    if check.get("compliant") is False:
        return False, "; ".join(map(str, check.get("reasons") or ())) or "not compliant"
    if not region or precision is None:
        return None, "no region or precision recorded"
    if precision in (region.get("forbidden") or []):
        return False, f"{precision} is forbidden in {region.get('name')}"
    allowed = region.get("precisions") or []
    if allowed and precision not in allowed:
        return False, f"{precision} is not among {', '.join(map(str, allowed))}"
    trials = (metadata.get("validation") or {}).get("trials") or []
    chosen = [t for t in trials if isinstance(t, Mapping) and t.get("precision") == precision]
    if chosen and chosen[-1].get("loss") is not None:
        loss, budget = chosen[-1]["loss"], chosen[-1].get("budget", region.get("budget"))
        if budget is not None and loss > budget:
            return False, f"loss {loss:.4g} over budget {budget:.4g}"
        why = f"loss {loss:.4g} within budget {format_value(budget)}"
    else:
        why = "precision allowed (loss not measured)"
    if check.get("checked"):
        why += f"; checked on the {check['checked']}"
    if region.get("override_compliance"):
        why += f"; preset compliance overridden: {region['override_compliance']}"
    return True, why


class EngineInfo(dict):  # type: ignore[type-arg]
    """The metadata of an ``.engine`` file (what :func:`regiontrt.inspect` returns).

    A plain ``dict`` of the header, so ``info["region"]``, ``json.dumps(info)`` and every
    existing caller keep working, with accessors for what people look for first. Note that
    ``info["region"]`` is the region's whole rule set (name, precisions, forbidden, budget,
    metric, SLA), not only its name: use :attr:`region_name` for that.
    """

    @property
    def region_name(self) -> str:
        """The region's name, e.g. ``"EU"``."""
        return str(region_of(self).get("name"))

    @property
    def region_rules(self) -> dict[str, Any]:
        """The region's rules as recorded at build time (``info["region"]``)."""
        return dict(region_of(self))

    @property
    def precision(self) -> str:
        """The precision built (``fp32``, ``fp16`` or ``int8``)."""
        return str(self.get("precision"))

    @property
    def report(self) -> ValidationReport:
        """The validation report (a :class:`~regiontrt.precision.validation.ValidationReport`)."""
        return ValidationReport.from_dict(self.get("validation") or {})

    @property
    def compliant(self) -> bool | None:
        """Whether the precision obeys the recorded region rules (``None`` if unknown)."""
        return compliance(self)[0]

    def _repr_html_(self) -> str | None:
        return _display.html(self)

    def __repr__(self) -> str:
        # One line: the whole header (tensors, trials, provenance) as a dict repr fills a
        # notebook screen. The dict itself is unchanged: info["region"], dict(info), json.
        raw_val, raw_backend = self.get("validation"), self.get("backend")
        val: Mapping[str, Any] = raw_val if isinstance(raw_val, Mapping) else {}
        backend: Mapping[str, Any] = raw_backend if isinstance(raw_backend, Mapping) else {}
        loss = self.report.loss if val else None
        return (f"EngineInfo(region={self.region_name!r}, precision={self.precision!r}, "
                f"backend={backend.get('name')!r}, target={self.get('target')!r}, "
                f"loss={loss if loss is None else float(f'{loss:.4g}')!r}, "
                f"budget={val.get('budget')!r}, metric={val.get('metric')!r}, "
                f"compliant={self.compliant!r})")


def inspect(path: str | Path, *, verify_payload: bool = True,
            trust: TrustLike | None = None) -> EngineInfo:
    """The engine's metadata, read without a GPU, TensorRT or any runtime.

    The header is checked against the schema; the result is the header plus a computed
    ``compliance_check`` (``compliant``, ``checked``, ``reasons``...): on the ONNX payload itself
    when it is read, on the header alone otherwise. A TensorRT plan for a region that forbids a
    precision is judged compliant only with ``trust`` (its records are header fields anyone can
    edit unless a signature covers them).

    The result is a ``dict`` with accessors: ``info.region_name``, ``info.report`` (the
    validation report), ``info.region_rules`` (same as ``info["region"]``: the region's whole
    rule set, not only its name) and an HTML view for notebooks.

    Args:
        path: the container file.
        verify_payload: also check the payload digest and scan an ONNX payload (reads the file).
        trust: public key(s); the detached signature ``<path>.sig`` must verify with one of them,
            over the very bytes inspected.

    Raises:
        ArtifactError: the file is refused (see :func:`load_engine`).
        SignatureError: with ``trust``: unsigned, untrusted key, or changed file.
    """
    model, provenance = None, None
    if trust is not None:
        blob, key = read_verified(path, trust)
        metadata, payload = artifact.decode(blob, str(path))
        del blob
        validate_header(metadata)
        model = check_payload(metadata, payload)
        provenance = f"signature verified with {key.name}"
    elif not verify_payload:
        metadata = artifact.read_header(path)
        validate_header(metadata)
    elif artifact.read_header(path).get("payload_format") == "onnx":
        metadata, payload = artifact.read(path)
        validate_header(metadata)
        model = check_payload(metadata, payload)
    else:
        metadata = artifact.verify(path)
        validate_header(metadata)
    out = EngineInfo(metadata)
    out["compliance_check"] = check_artifact(metadata, model, provenance=provenance).to_dict()
    return out


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        data = data.get(key) if isinstance(data, Mapping) else None
    return data


#: Most inputs (and outputs) listed one per row by :func:`summarize`.
_MAX_TENSOR_ROWS = 16


def _tensor_rows(metadata: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``("input NAME", "dtype [dims]")`` rows; a long symbolic dim shows its expression."""
    rows = []
    for kind in ("inputs", "outputs"):
        tensors = _dig(metadata, kind)
        tensors = tensors if isinstance(tensors, list) else []
        for t in tensors[:_MAX_TENSOR_ROWS]:
            shape = _dig(t, "shape")
            exprs = _dig(t, "symbolic_dims")
            exprs = exprs if isinstance(exprs, Mapping) else {}
            dims = [str(exprs.get(str(i), "?") if d is None else d)
                    for i, d in enumerate(shape if isinstance(shape, list) else [])]
            rows.append((f"{kind[:-1]} {_dig(t, 'name')}",
                         f"{_dig(t, 'dtype')} [{', '.join(dims)}]"))
        if len(tensors) > _MAX_TENSOR_ROWS:
            rows.append((f"  more {kind}", str(len(tensors) - _MAX_TENSOR_ROWS)))
    return rows


def _judged_rows(metadata: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Which metric judged each output and why; what the int8 check ran on."""
    rows = []
    judged = _dig(metadata, "validation", "output_metrics")
    for name, item in list(judged.items())[:_MAX_TENSOR_ROWS] if isinstance(judged, Mapping) \
            else []:
        rows.append((f"  judged {name}", f"{_dig(item, 'metric')}: {_dig(item, 'why')}"))
    evaluation = _dig(metadata, "evaluation")
    if isinstance(evaluation, Mapping):
        flags = _dig(evaluation, "cpu", "flags")
        cpu = ", ".join(str(f) for f in flags) if isinstance(flags, list) else "-"
        rows.append(("int8 checked in", f"{_dig(evaluation, 'int8_arithmetic')} arithmetic "
                                        f"(CPU int8 flags: {cpu or 'none'})"))
    return rows


def summarize(metadata: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Human-readable ``(field, value)`` rows of an engine's metadata (for ``inspect``).

    Tolerates any shape of input (a missing or mistyped field prints as ``-``/its ``repr``).
    """
    val = _dig(metadata, "validation")
    kept = _dig(metadata, "kept_high_precision")
    kept_text = ", ".join(str(k) for k in kept) if isinstance(kept, list) else str(kept or "")
    rows = [
        ("region", str(_dig(metadata, "region", "name"))),
        ("precision", str(_dig(metadata, "precision"))),
        ("kept high precision", kept_text or "-"),
        ("backend", f"{_dig(metadata, 'backend', 'name')} {_dig(metadata, 'backend', 'version')}"),
        ("target", str(_dig(metadata, "target"))),
        ("metric / budget", f"{_dig(val, 'metric')} <= {_dig(val, 'budget')}"),
    ]
    rows += _tensor_rows(metadata)
    rows += _judged_rows(metadata)
    trials = _dig(val, "trials")
    for t in trials if isinstance(trials, list) else []:
        loss = _dig(t, "loss")
        loss_text = f"{loss:.4g}" if isinstance(loss, (int, float)) else "-"
        verdict = "accepted" if _dig(t, "accepted") is True else "rejected"
        rows.append((f"  tried {_dig(t, 'precision')}",
                     f"loss {loss_text} ({verdict}, {_dig(t, 'measured_on')})"))
    check = _dig(metadata, "compliance_check")
    if isinstance(check, Mapping):
        reasons = check.get("reasons")
        why = "; ".join(str(r) for r in reasons) if isinstance(reasons, list) else ""
        rows.append(("compliant", f"{'yes' if check.get('compliant') is True else 'no'}: {why}"))
    override = _dig(metadata, "region", "override_compliance")
    if override:
        rows.append(("compliance override", str(override)))
    rows += [
        ("model sha256", str(_dig(metadata, "model", "sha256"))),
        ("validation data", str(_dig(val, "data_fingerprint"))),
        ("calibration data", str(_dig(metadata, "calibration", "fingerprint") or "-")),
        ("calibration method", str(_dig(metadata, "calibration", "method") or "-")),
        ("shape profiles", json.dumps(_dig(metadata, "shape_profiles"), default=repr)),
        ("  profiles from", str(_dig(metadata, "shape_profile_origin", "source") or "-")),
        ("regiontrt", str(_dig(metadata, "regiontrt_version"))),
        ("created", str(_dig(metadata, "created_at"))),
        ("gpu", str(_dig(metadata, "gpu") or "-")),
    ]
    return rows
