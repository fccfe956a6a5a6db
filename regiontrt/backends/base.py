"""The backend contract: build a payload from a precision-compiled ONNX model, and run it.

A :class:`Backend` turns a :class:`BuildRequest` into a :class:`BuildResult` (the payload bytes
stored in the ``.engine`` container) and loads a payload back into a :class:`Runner`. Heavy
packages are imported inside methods, never at module import.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import onnx

from regiontrt.backends.tactics import TacticSelector
from regiontrt.graph.arithmetic import cast_feeds  # noqa: F401 - runners import it here
from regiontrt.graph.io import TensorSpec
from regiontrt.precision.types import Precision
from regiontrt.shapes.profiles import Profile


@dataclass(frozen=True)
class BuildRequest:
    """What a backend is asked to build.

    Attributes:
        model: the precision-compiled ONNX model (casts and Q/DQ already in the graph).
        precision: the precision it was compiled for (informational; the graph decides).
        profiles: resolved optimization profiles.
        tactics: builder settings.
        name: a label for logs (region and precision).
    """

    model: onnx.ModelProto
    precision: Precision
    profiles: Sequence[Profile]
    tactics: TacticSelector = field(default_factory=TacticSelector)
    name: str = ""


@dataclass
class BuildResult:
    """A built payload and what the backend knows about it.

    Attributes:
        payload: bytes stored in the engine container.
        payload_format: ``"onnx"``, ``"tensorrt-plan"`` or ``"tensorrt-rtx-plan"``.
        backend_version: version string of the package that built it.
        target: where it runs, e.g. ``"cpu"``, ``"sm90"`` or ``"sm89+sm120"``.
        runnable_here: whether this machine can run the payload (decides where validation runs).
        info: backend-specific metadata (plan header, fusion report, build time...).
    """

    payload: bytes
    payload_format: str
    backend_version: str
    target: str
    runnable_here: bool
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Timing:
    """One timed inference, in milliseconds; copies are separated where the backend can."""

    total_ms: float
    h2d_ms: float = 0.0
    compute_ms: float = 0.0
    d2h_ms: float = 0.0


class Runner(ABC):
    """A loaded payload that runs inference."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @abstractmethod
    def run(self, feeds: Mapping[str, Any], *, outputs: str = "host") -> dict[str, Any]:
        """Run one inference on validated ``feeds``.

        Args:
            feeds: input name to array (host arrays, or device arrays where supported).
            outputs: ``"host"`` for numpy arrays, ``"device"`` for device arrays (GPU only).
        """

    def time_once(self, feeds: Mapping[str, Any]) -> Timing:
        """Run once and time it; the CPU default uses ``perf_counter_ns`` around :meth:`run`."""
        t0 = time.perf_counter_ns()
        self.run(feeds)
        ms = (time.perf_counter_ns() - t0) / 1e6
        return Timing(total_ms=ms, compute_ms=ms)

    def close(self) -> None:
        """Free what the runner holds; idempotent."""


class Backend(ABC):
    """Builds and loads one kind of payload."""

    name: ClassVar[str]
    extra: ClassVar[str | None] = None
    payload_format: ClassVar[str]
    #: Whether :meth:`load` takes ``provenance=`` (who vouches for the payload; see
    #: :func:`load_payload`). Plans that carry host code need it (TensorRT's lean runtime).
    accepts_provenance: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def is_available(cls) -> bool:
        """Whether the backend's packages import on this machine."""

    @abstractmethod
    def version(self) -> str:
        """The version of the package that builds and runs payloads."""

    @abstractmethod
    def build(self, request: BuildRequest) -> BuildResult:
        """Build a payload.

        Raises:
            BuildError: parsing or building failed.
        """

    @abstractmethod
    def load(self, payload: bytes, metadata: Mapping[str, Any]) -> Runner:
        """Load ``payload`` (with the engine's metadata) into a runner.

        Raises:
            IncompatibleEngineError: the payload was built for another version or GPU.
        """

    def check_compatible(self, metadata: Mapping[str, Any]) -> None:
        """Raise :class:`IncompatibleEngineError` if this machine cannot run the engine."""


def load_payload(backend: Backend, payload: bytes, metadata: Mapping[str, Any],
                 provenance: str | None) -> Runner:
    """``backend.load``, passing ``provenance`` to backends that take it
    (:attr:`Backend.accepts_provenance`); other backends never see it."""
    if backend.accepts_provenance:
        return backend.load(payload, metadata, provenance=provenance)  # type: ignore[call-arg]
    return backend.load(payload, metadata)
