"""The typed error hierarchy of regiontrt.

Every error the library raises on purpose derives from :class:`RegionTRTError`, so a pipeline can
catch one type. Sub-classes also derive from the closest built-in (``ValueError``, ``KeyError``,
``ImportError``...) so code written against the standard library keeps working.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

Front = Literal["api", "cli", "fleet"]


class Setting(NamedTuple):
    """One setting a user can change, as each front door spells it."""

    api: str
    cli: str
    fleet: str


#: The settings an error can name (``RegionTRTError.setting``), by id.
SETTINGS: dict[str, Setting] = {
    "calibration": Setting(".with_calibrator(data=...)", "--calibration FILE_OR_FOLDER",
                           "calibration = FOLDER_OR_URL in its [regions.NAME]"),
    "validation": Setting(".with_validation(data)", "--validation FILE_OR_FOLDER",
                          "validation = FOLDER_OR_URL in its [regions.NAME]"),
    "precisions": Setting(".with_precision([...])", "--precision LIST, e.g. --precision fp16,fp32",
                          'precisions = ["fp16", "fp32"]'),
    "region": Setting(".for_region(name) before .build()", "--region NAME", "[regions.NAME]"),
    "shape_profile": Setting("a ShapeProfile (.with_shape_profile(...))",
                             "--shape NAME:MIN,OPT,MAX", "[shape_profile] in the fleet file"),
    "int8_arithmetic": Setting(".with_int8_arithmetic(...)", "--int8-arithmetic", "-"),
    "sample_shapes": Setting("sample_inputs(shapes={NAME: SHAPE})",
                             "--shape NAME:SHAPE (e.g. --shape x:1x3x48x320)", "-"),
    "sample_batch": Setting("sample_inputs(batch=...)", "--batch N", "-"),
}
#: Where a message names the setting it points at.
SETTING = "{setting}"


def _restore(cls: type[Exception], args: tuple[Any, ...], state: dict[str, Any]) -> Exception:
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class RegionTRTError(Exception):
    """Base class of every error raised by regiontrt.

    Besides its message, an error carries the data a caller needs, so no caller parses prose:

    Attributes:
        setting: the id (a key of :data:`SETTINGS`) of the setting to change, if any. The
            message names it where it holds :data:`SETTING`; ``str(exc)`` spells it as the
            Python API does, :meth:`render` as the CLI or a fleet file does.
        also: further settings that would do, each named where the message holds ``{id}``.
        region: the region concerned, if any.
        path: the file concerned, if any.
    """

    setting: str | None = None
    also: tuple[str, ...] = ()
    region: str | None = None
    path: str | None = None

    def __init__(self, *args: Any, setting: str | None = None, also: Sequence[str] = (),
                 region: str | None = None, path: str | None = None) -> None:
        super().__init__(*args)
        unknown = [s for s in (setting, *also) if s is not None and s not in SETTINGS]
        if unknown:
            raise ValueError(f"unknown settings {unknown}")
        if also:
            self.also = tuple(also)
        # set only what is given: a subclass may have set its own fields before calling this
        for name, value in (("setting", setting), ("region", region), ("path", path)):
            if value is not None:
                setattr(self, name, value)

    def render(self, front: Front = "api") -> str:
        """The message, with the setting spelled for ``front`` (``api``, ``cli`` or ``fleet``)."""
        text = super().__str__()
        if self.setting is not None:
            text = text.replace(SETTING, getattr(SETTINGS[self.setting], front))
        for other in self.also:
            text = text.replace("{" + other + "}", getattr(SETTINGS[other], front))
        return text

    def __str__(self) -> str:
        return self.render("api")

    def __reduce__(self) -> Any:  # keyword fields survive pickling (Dask workers' errors)
        return _restore, (type(self), self.args, dict(self.__dict__))


class InvalidModelError(RegionTRTError, ValueError):
    """The ONNX model is unreadable, malformed or fails the ONNX checker."""


class UnknownRegionError(RegionTRTError, KeyError):
    """A region name that is neither a preset nor registered by the user."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable.
        return str(self.args[0]) if self.args else ""


class RegionConfigError(RegionTRTError, ValueError):
    """A region TOML file or a :class:`~regiontrt.Region` is inconsistent."""


class PolicyViolation(RegionTRTError):
    """A precision that the region forbids (compliance) was requested or produced."""


@dataclass(frozen=True)
class Attempt:
    """One precision tried during a build: its measured loss against the budget."""

    precision: str
    loss: float | None
    budget: float
    detail: str = ""

    def __str__(self) -> str:
        loss = "not measured" if self.loss is None else f"{self.loss:.4g}"
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.precision}: loss {loss} vs budget {self.budget:.4g}{extra}"


class AccuracyBudgetExceeded(RegionTRTError):
    """No allowed precision met the region's accuracy budget.

    Attributes:
        attempts: every precision tried, with its measured loss and the budget.
    """

    def __init__(self, region: str, metric: str, attempts: Sequence[Attempt]) -> None:
        self.region = region
        self.metric = metric
        self.attempts = tuple(attempts)
        lines = "\n".join(f"  - {a}" for a in self.attempts)
        super().__init__(
            f"region {region!r}: no allowed precision meets the accuracy budget "
            f"(metric {metric}):\n{lines}"
        )


class DataError(RegionTRTError, ValueError):
    """Validation or calibration data is empty, mis-shaped or does not match the model."""


class CalibrationMismatch(RegionTRTError):
    """Validation data lies outside the calibrated ranges and the region's policy is strict."""


class InputError(RegionTRTError, ValueError):
    """Inputs given to :meth:`Engine.infer` have wrong names, dtypes or ranks."""


class ShapeOutOfProfile(InputError):
    """An input shape lies outside every optimization profile of the engine."""


class PinnedInputMismatch(InputError):
    """An input the engine was specialised for (pinned at build: its ``If`` branches folded)
    is given a value other than the pinned one.

    Attributes:
        input: the input's name.
        pinned: the value the engine was built for (a Python scalar or nested list).
    """

    def __init__(self, message: str, *, input: str, pinned: Any) -> None:
        self.input = input
        self.pinned = pinned
        super().__init__(message)


class ShapeProfileError(RegionTRTError, ValueError):
    """A shape profile contradicts the model's declared dimensions or misses a dynamic one."""


class ArtifactError(RegionTRTError, ValueError):
    """A ``.engine`` file is truncated, corrupted, tampered with or of an unknown format.

    Attributes:
        field: the header field refused by the schema (``"inputs[1].dtype"``), if one was.
    """

    field: str | None = None


class IncompatibleEngineError(ArtifactError):
    """An engine was built for another TensorRT version or GPU, or checked on a CPU whose int8
    arithmetic differs where its region refuses that."""


class BackendUnavailable(RegionTRTError, ImportError):
    """A backend's package is not installed; the message names the extra to install."""


class BuildError(RegionTRTError, RuntimeError):
    """A backend failed to build an engine (parser errors, builder failures)."""


class CudaError(RegionTRTError, RuntimeError):
    """A CUDA call returned an error code."""


class SignatureError(RegionTRTError):
    """A bundle's signature or a file's digest does not verify."""


class InvalidArgumentError(RegionTRTError, ValueError, TypeError):
    """A Python API argument has the wrong type or an unknown value (precision, backend, metric...).

    It is both a ``ValueError`` and a ``TypeError``, so code catching either keeps working.
    """


class MetricError(RegionTRTError, ValueError):
    """A metric raised, or returned something other than a finite loss >= 0; names the metric."""


class EngineRuntimeError(RegionTRTError, RuntimeError):
    """The runtime failed to load or run an engine's payload (the cause is chained)."""


class FleetError(RegionTRTError, ValueError):
    """A fleet file is malformed, or names an unknown region, backend or data file."""


class BundleError(ArtifactError):
    """A bundle's manifest or files are missing, malformed, or disagree with each other."""


class RegistryError(RegionTRTError, OSError):
    """A registry cannot be read or written, or a pull was interrupted or refused."""


class DowngradeError(RegistryError):
    """A pull would install an older version than the installed one (rollback protection)."""


class StaleMetadataError(RegistryError):
    """The registry's signed metadata has expired: it may replay an old state (freeze attack)."""


class RegistryTimeout(RegistryError, TimeoutError):
    """A registry was too slow: a file or the whole pull exceeded its time limit."""


class Overloaded(RegionTRTError, RuntimeError):
    """The server's request queue is full; retry later (HTTP 503)."""


class LoadShed(Overloaded):
    """Refused because its answer could not arrive within the region's latency SLA at the
    current load (HTTP 503): failing it at once leaves the server's time to requests that can
    still be answered in time, so a backlog never outlives the surge that built it."""


class DeadlineExceeded(RegionTRTError, TimeoutError):
    """A request's deadline passed before it ran; it was failed, not run (HTTP 504)."""


class ServerClosed(RegionTRTError, RuntimeError):
    """A request reached a server that is shutting down or closed."""


class GraphPassError(RegionTRTError, RuntimeError):
    """A graph pass changed what the model computes (or produced a graph that cannot run).

    Attributes:
        pass_name: the pass whose output differs from the original model (``"clean"``...).
    """

    def __init__(self, pass_name: str, detail: str) -> None:
        self.pass_name = pass_name
        super().__init__(f"graph pass {pass_name!r} changed the model: {detail}")
