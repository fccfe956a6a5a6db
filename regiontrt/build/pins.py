"""Which inputs a build pins, and why.

An input is pinned because the caller said so (:meth:`RegionalEngineBuilder.with_pinned_inputs`)
or, where int8 is tried, because it decides an ``If`` and holds one value in every calibration
and validation batch (a sample rate fixed in the deployment): the ``If`` is then folded so the
layers of the branch taken are calibrated and quantized like any other. Either way the pins and
their origin go into the engine's metadata (``pinned_inputs``, ``pinned_from``), the build logs
them, and the engine refuses any other value of a pinned input with
:class:`~regiontrt.errors.PinnedInputMismatch` (the pinned value itself is accepted and dropped).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from regiontrt.data.pinned import constant_inputs, one_shot, without_pinned
from regiontrt.graph.control_flow import condition_inputs
from regiontrt.graph.io import input_specs
from regiontrt.precision.types import Precision

log = logging.getLogger("regiontrt.build.pipeline")

#: ``pinned_from`` of an input the caller pinned.
GIVEN = "with_pinned_inputs"


@dataclass(frozen=True)
class Pins:
    """The inputs a build pins: value and origin of each (empty: none)."""

    values: Mapping[str, np.ndarray] = field(default_factory=dict)
    origin: Mapping[str, str] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, Any]:
        """``pinned_inputs`` (values as JSON) and ``pinned_from`` for the engine's metadata."""
        if not self.values:
            return {}
        return {"pinned_inputs": {k: v.tolist() for k, v in self.values.items()},
                "pinned_from": dict(self.origin)}


def choose_pins(model: onnx.ModelProto, state: Any, candidates: tuple[Precision, ...],
                region: str) -> Pins:
    """The caller's pins, plus (where int8 is tried and ``auto`` pinning is on) every input that
    decides an ``If`` and holds one value in all of the region's data.

    Args:
        model: the model as given.
        state: the builder's :class:`~regiontrt.build.state.State` (``pinned_inputs``,
            ``auto_pin``, ``calibration_data``, ``validation_data``).
        candidates: the precisions the build tries.
        region: the region's name, for the log.
    """
    values = {k: np.asarray(v) for k, v in state.pinned_inputs.items()}
    origin = dict.fromkeys(values, GIVEN)
    if not state.auto_pin or Precision.INT8 not in candidates:
        return Pins(values, origin)
    deciding = {k: v for k, v in condition_inputs(model).items() if k not in values}
    sources = [state.calibration_data, state.validation_data]
    if not deciding or all(s is None for s in sources):
        return Pins(values, origin)
    if any(one_shot(s) for s in sources):
        log.info("region %s: inputs %s decide If nodes, but one-shot data cannot be scanned for "
                 "a constant value: pin them with with_pinned_inputs to quantize the branches",
                 region, sorted(deciding))
        return Pins(values, origin)
    # the data may already leave out what the caller pinned: scan it as the caller gave it
    model_inputs = [s for s in input_specs(model) if s.name not in values]
    found = constant_inputs([without_pinned(s, values, "data") for s in sources],
                            model_inputs, deciding)
    for name, value in found.items():
        values[name] = value
        ifs = ", ".join(repr(n) for n in deciding[name][:3]) + (
            "..." if len(deciding[name]) > 3 else "")
        origin[name] = (f"data: one value in every calibration and validation batch; it "
                        f"decides If {ifs}")
        log.warning("region %s: input %r holds %r in every batch of the region's data and "
                    "decides If %s: pinned to it, so the branch taken is folded into the graph "
                    "and quantized; the engine refuses other values (with_pinned_inputs({}, "
                    "auto=False) keeps the If)", region, name, value.tolist(), ifs)
    return Pins(values, origin)
