"""Checks a build runs on the model before and around its precision attempts.

Every check that can refuse a model runs before calibration and payload builds (a model that
cannot be built is refused in seconds); the cleaned graph is checked against the original; the
engine's precision label is computed from what its graph holds.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import warnings
from collections.abc import Sequence
from typing import Any

import onnx

from regiontrt.backends import Backend
from regiontrt.errors import ArtifactError, BuildError
from regiontrt.graph.check import check_pass, generated_inputs, reference_outputs
from regiontrt.graph.io import input_specs
from regiontrt.graph.label import graph_precision
from regiontrt.precision.types import Precision
from regiontrt.precision.validation import PrecisionTrial
from regiontrt.precision.validator import Validator
from regiontrt.runtime.schema import validate_header
from regiontrt.shapes.profiles import Profile

log = logging.getLogger("regiontrt.build.pipeline")


def check_clean(original: onnx.ModelProto, cleaned: onnx.ModelProto,
                 validator: Validator | None, profiles: Sequence[Profile],
                 threads: int) -> dict[str, Any]:
    """Check the cleaned graph against the original on the validation data or generated inputs.

    Raises:
        GraphPassError: the cleaned graph computes something else.
    """
    if validator is not None:
        result = check_pass("clean", validator.reference_batches,
                            lambda: validator.model_outputs(cleaned), validator.batches,
                            skip_values=validator.nondeterministic)
        return {**result.to_dict(), "inputs": "validation data", "checked": True}
    opt = {n: r.opt for n, r in profiles[0].ranges.items()} if profiles else {}
    batches, source = [generated_inputs(input_specs(original), opt)], "generated inputs"
    try:
        reference, skip = reference_outputs(original, batches, threads=threads)
    except Exception as exc:
        warnings.warn(f"graph check not run: the original model rejects generated inputs "
                      f"({exc}); pass validation data to check the cleaned graph", stacklevel=3)
        return {"pass": "clean", "inputs": source, "checked": False, "reason": str(exc)[:300]}
    result = check_pass("clean", reference, cleaned, batches, skip_values=skip)
    return {**result.to_dict(), "inputs": source, "checked": True}


def check_header(metadata: dict[str, Any], backend: Backend, model: onnx.ModelProto) -> None:
    """Check the header fields known before any build work against the engine schema.

    Raises:
        BuildError: the engine header cannot describe this model (a string input, say); the
            message names the tensor and the nodes that use it.
    """
    try:
        validate_header({**metadata, "precision": "fp32", "backend": {"name": backend.name},
                         "payload_format": backend.payload_format, "compliance": {}},
                        known_backend=False, payload=False)
    except ArtifactError as exc:
        where = re.match(r"(inputs|outputs)\[(\d+)\]", exc.field or "")
        tensor = ""
        if where is not None:
            index = int(where.group(2))
            specs = metadata.get(where.group(1)) or []
            name = specs[index]["name"] if index < len(specs) else ""
            users = [f"{n.name or '?'} ({n.op_type})" for n in model.graph.node
                     if name in n.input or name in n.output]
            tensor = (f"{where.group(1)[:-1]} {name!r}"
                      + (f", used by node {', '.join(users)}" if users else "") + ": ")
        raise BuildError(f"an engine cannot carry this model, refused before any build work: "
                         f"{tensor}{exc}") from exc


def precision_label(precision: Precision, variant: onnx.ModelProto, trial: PrecisionTrial
           ) -> tuple[str, PrecisionTrial]:
    """The engine's precision label, from what its graph holds (never fp16 without float16)."""
    label = graph_precision(variant)
    if label == precision.value:
        return label, trial
    note = (f"{precision.value} was asked for, but the graph holds no {precision.value} "
            f"arithmetic (nothing it could convert): labelled {label}")
    log.warning("%s", note)
    return label, dataclasses.replace(trial, note="; ".join(filter(None, [trial.note, note])))
