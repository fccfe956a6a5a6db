"""Reading an ``.engine`` file's header without any runtime: :func:`inspect` and the CLI's summary.

Nothing here loads a payload into a runtime, so it needs neither a GPU nor TensorRT; running an
engine is :func:`regiontrt.engine.load_engine`'s job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import artifact
from .compliance import check_artifact
from .schema import check_payload, validate_header

if TYPE_CHECKING:
    from .report import EngineInfo


def inspect(path: str | Path, *, verify_payload: bool = True) -> EngineInfo:
    """The engine's metadata, read without a GPU, TensorRT or any runtime.

    The header is checked against the schema; the result is the header plus a computed
    ``compliance_check`` (``compliant``, ``checked``, ``reasons``...): on the ONNX payload itself
    when it is read, on the header alone otherwise.

    The result is a ``dict`` with accessors: ``info.region_name``, ``info.report`` (the
    validation report), ``info.region_rules`` (same as ``info["region"]``: the region's whole
    rule set, not only its name) and an HTML view for notebooks.

    Args:
        path: the container file.
        verify_payload: also check the payload digest and scan an ONNX payload (reads the file).

    Raises:
        ArtifactError: the file is refused (see :func:`load_engine`).
    """
    model = None
    if not verify_payload:
        metadata = artifact.read_header(path)
        validate_header(metadata)
    elif artifact.read_header(path).get("payload_format") == "onnx":
        metadata, payload = artifact.read(path)
        validate_header(metadata)
        model = check_payload(metadata, payload)
    else:
        metadata = artifact.verify(path)
        validate_header(metadata)
    from .report import EngineInfo

    out = EngineInfo(metadata)
    out["compliance_check"] = check_artifact(metadata, model).to_dict()
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
