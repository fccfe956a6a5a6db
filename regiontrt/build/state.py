"""What a builder holds: the model every derived builder shares, and one region's settings.

:class:`Shared` is made once per :meth:`RegionalEngineBuilder.from_onnx` and shared by every
builder derived from it (the model and its cleaned form, computed once); :class:`State` is the
immutable settings one builder carries. The build stages read both.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import onnx

from regiontrt.backends import Backend
from regiontrt.backends.tactics import TacticSelector
from regiontrt.build.stages import Stages
from regiontrt.calibration import Calibrator
from regiontrt.graph import clean as graph_clean
from regiontrt.graph.arithmetic import Int8Arithmetic
from regiontrt.graph.io import model_sha256, without_unsized_dims
from regiontrt.precision.metrics import MetricSpec
from regiontrt.precision.policy import PrecisionPolicy
from regiontrt.precision.regions import Region
from regiontrt.shapes.profiles import ShapeProfile


class Shared:
    """What every builder derived from one ``from_onnx`` shares: the model and its cleaned form."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.sha256 = model_sha256(model)  # of the model as given
        # Where the model came from, added to the metadata's "model" (from_torch: the export).
        self.origin: dict[str, Any] = {}
        # A declared -1 or 0 is "any size" wherever the model runs.
        self.model = without_unsized_dims(model)
        self._cleaned: onnx.ModelProto | None = None
        self._lock = threading.Lock()

    def cleaned(self) -> onnx.ModelProto:
        with self._lock:
            if self._cleaned is None:
                self._cleaned = graph_clean.clean(self.model)
            return self._cleaned


@dataclass(frozen=True)
class State:
    """One builder's settings (see the ``with_*`` methods of the builder)."""

    region: Region | None = None
    policy: PrecisionPolicy | None = None
    calibrator: Calibrator | None = None
    calibration_data: Any = None
    shape_profile: ShapeProfile | None = None
    tactics: TacticSelector = field(default_factory=TacticSelector)
    backend: str | Backend = "onnxruntime"
    validation_data: Any = None
    metric: MetricSpec = None
    int8_arithmetic: Int8Arithmetic | None = None
    pinned_inputs: Mapping[str, Any] = field(default_factory=dict)
    auto_pin: bool = True  # pin inputs that decide an If and are constant in the data
    stages: Stages = field(default_factory=Stages)
    strict_calibration: bool | None = None
    mismatch_threshold: float = 0.01
