"""Regions: who may use which precision, under which accuracy budget.

The presets live in ``regiontrt/precision/regions.toml``;
:func:`load_regions` adds or overrides them
from a user's TOML file of the same shape. A :class:`Region` is an immutable value.
"""

from __future__ import annotations

import functools
import math
import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from regiontrt._names import normalize_reason, normalize_region_name, reason_problem, region_key
from regiontrt.errors import RegionConfigError, UnknownRegionError
from regiontrt.precision.types import Precision

METRICS = ("auto", "top1", "relative_l2", "max_abs", "cosine")
#: What a site does when its CPU's int8 features differ from those an ONNX Runtime engine's
#: fused int8 kernels were checked on (see :mod:`regiontrt.graph.arithmetic`).
CPU_MISMATCH = ("warn", "refuse", "portable")
_MAX_TOML = 4 * 1024 * 1024


@dataclass(frozen=True)
class Region:
    """A deployment region and its precision policy.

    Args:
        name: short identifier, e.g. ``"EU"``.
        precisions: allowed precisions, most preferred first.
        forbidden: precisions that compliance forbids; never built, even when asked for.
        budget: largest accepted accuracy loss against the FP32 model, in the metric's unit
            (``0.005`` is 0.5 % for ``top1``).
        metric: built-in metric name used to measure the loss; ``"auto"`` (the default)
            chooses per output: ``top1`` for class scores, ``relative_l2`` for dense outputs
            (:mod:`regiontrt.precision.metrics`).
        latency_p99_ms: optional latency SLA at the 99th percentile.
        strict_calibration: fail the build, rather than warn, when validation data lies outside
            the calibrated ranges.
        description: free text.
        tags: free key/value strings carried into engine metadata.
        override_compliance: the reason for loosening a preset region's forbidden precisions.
            A region named like a preset (case-insensitively) inherits the preset's forbidden
            precisions unless this is given; the reason is recorded in engine metadata and shown
            by ``inspect``.
        cpu_mismatch: for an ONNX Runtime engine whose int8 was checked on ONNX Runtime's fused
            kernels: what a site whose CPU int8 features differ does at load. ``"warn"`` runs
            it and says so, ``"refuse"`` refuses it, ``"portable"`` runs it in TensorRT's
            CPU-independent arithmetic (its loss was measured at build time too).
    """

    name: str
    precisions: tuple[Precision, ...] = (Precision.FP16, Precision.FP32)
    forbidden: frozenset[Precision] = frozenset()
    budget: float = 0.01
    metric: str = "auto"
    latency_p99_ms: float | None = None
    strict_calibration: bool = False
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    override_compliance: str | None = None
    cpu_mismatch: str = "warn"

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "name", normalize_region_name(self.name))
        except ValueError as exc:
            raise RegionConfigError(str(exc)) from exc
        _check_types(self)
        try:
            precisions = tuple(Precision.parse(p) for p in _strings(self, "precisions"))
            forbidden = frozenset(Precision.parse(p) for p in _strings(self, "forbidden"))
        except ValueError as exc:
            raise RegionConfigError(f"region {self.name!r}: {exc}") from exc
        preset = preset_forbidden(self.name)
        if preset is not None and not self.override_compliance:
            loosened = preset.intersection(precisions)
            if loosened:
                names = ", ".join(sorted(p.value for p in loosened))
                raise RegionConfigError(
                    f"region {self.name!r} is a preset whose compliance forbids {names}; "
                    "allowing it needs override_compliance=\"<reason>\" (recorded in every "
                    "engine's metadata and shown by inspect)"
                )
            forbidden = forbidden | preset
        if preset is not None:  # one spelling of a preset's name everywhere ("eu" -> "EU")
            object.__setattr__(self, "name", _preset_tables()[region_key(self.name)][0])
        if not precisions:
            raise RegionConfigError(f"region {self.name!r}: at least one precision is required")
        if len(set(precisions)) != len(precisions):
            raise RegionConfigError(f"region {self.name!r}: precisions repeat: {precisions}")
        clash = forbidden.intersection(precisions)
        if clash:
            names = ", ".join(sorted(p.value for p in clash))
            raise RegionConfigError(f"region {self.name!r}: {names} both allowed and forbidden")
        if self.metric not in METRICS:
            raise RegionConfigError(
                f"region {self.name!r}: unknown metric {self.metric!r}; known: {', '.join(METRICS)}"
            )
        if self.cpu_mismatch not in CPU_MISMATCH:
            raise RegionConfigError(
                f"region {self.name!r}: cpu_mismatch must be one of {', '.join(CPU_MISMATCH)}, "
                f"got {self.cpu_mismatch!r:.60}"
            )
        if not self.budget >= 0:
            raise RegionConfigError(f"region {self.name!r}: budget must be >= 0")
        if self.latency_p99_ms is not None and not self.latency_p99_ms > 0:
            raise RegionConfigError(f"region {self.name!r}: latency_p99_ms must be > 0")
        object.__setattr__(self, "precisions", precisions)
        object.__setattr__(self, "forbidden", forbidden)
        object.__setattr__(self, "budget", float(self.budget))
        object.__setattr__(self, "tags", dict(self.tags))

    def allows(self, precision: Precision | str) -> bool:
        """Whether compliance allows ``precision`` (it is not forbidden)."""
        return Precision.parse(precision) not in self.forbidden

    def evolve(self, **changes: Any) -> Region:
        """Return a copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description, as stored in engine metadata."""
        return {
            "name": self.name,
            "precisions": [p.value for p in self.precisions],
            "forbidden": sorted(p.value for p in self.forbidden),
            "budget": self.budget,
            "metric": self.metric,
            "latency_p99_ms": self.latency_p99_ms,
            "strict_calibration": self.strict_calibration,
            "description": self.description,
            "tags": dict(self.tags),
            "override_compliance": self.override_compliance,
            "cpu_mismatch": self.cpu_mismatch,
        }

    @classmethod
    def from_dict(cls, name: str, table: Mapping[str, Any]) -> Region:
        """Build a region from one TOML table (or :meth:`to_dict` output)."""
        known = {
            "name", "precisions", "forbidden", "budget", "metric", "latency_p99_ms",
            "strict_calibration", "description", "tags", "override_compliance", "cpu_mismatch",
        }
        unknown = set(table) - known
        if unknown:
            raise RegionConfigError(f"region {name!r}: unknown keys {sorted(unknown)}")
        kwargs = {k: v for k, v in table.items() if k != "name"}
        for key in ("precisions", "forbidden"):
            if key in kwargs and isinstance(kwargs[key], str):
                kwargs[key] = [kwargs[key]]
        try:
            return cls(name=name, **kwargs)
        except TypeError as exc:
            raise RegionConfigError(f"region {name!r}: {exc}") from exc


class RegionRegistry(Mapping[str, Region]):
    """An ordered, case-insensitive mapping from region names to regions."""

    def __init__(self, regions: Mapping[str, Region] | None = None) -> None:
        self._regions: dict[str, Region] = {}
        for region in (regions or {}).values():
            self.register(region)

    def register(self, region: Region) -> None:
        """Add ``region``, replacing one of the same name."""
        self._regions[region_key(region.name)] = region

    def update_from_toml(self, path: str | Path) -> None:
        """Add or override regions from a TOML file with ``[regions.NAME]`` tables."""
        if not isinstance(path, (str, os.PathLike)):
            raise RegionConfigError(f"a region file path must be a str or path, not {path!r:.60}")
        path = Path(path)
        try:
            if not path.is_file():
                raise RegionConfigError(f"region file not found (or not a regular file): {path}")
            with path.open("rb") as fh:
                raw = fh.read(_MAX_TOML + 1)
            if len(raw) > _MAX_TOML:
                raise RegionConfigError(f"{path}: larger than {_MAX_TOML} bytes")
            doc = tomllib.loads(raw.decode("utf-8"))
        except RegionConfigError:
            raise
        except FileNotFoundError as exc:
            raise RegionConfigError(f"region file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise RegionConfigError(f"{path}: invalid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise RegionConfigError(f"{path}: not UTF-8 text: {exc}") from exc
        except (OSError, RecursionError) as exc:
            raise RegionConfigError(f"{path}: cannot read the region file: {exc}") from exc
        self._update(doc, str(path))

    def _update(self, doc: Mapping[str, Any], source: str) -> None:
        tables = doc.get("regions")
        if not isinstance(tables, Mapping) or not tables:
            raise RegionConfigError(f"{source}: expected one or more [regions.NAME] tables")
        for name, table in tables.items():
            if not isinstance(table, Mapping):
                raise RegionConfigError(f"{source}: regions.{name} must be a table")
            self.register(Region.from_dict(str(name), table))

    def __getitem__(self, name: str) -> Region:
        try:
            return self._regions[region_key(str(name))]
        except (KeyError, ValueError):
            known = ", ".join(r.name for r in self._regions.values())
            raise UnknownRegionError(f"unknown region {name!r}; known regions: {known}") from None

    def __iter__(self) -> Iterator[str]:
        return (r.name for r in self._regions.values())

    def __len__(self) -> int:
        return len(self._regions)

    def copy(self) -> RegionRegistry:
        """A shallow copy, so a caller can extend it without touching the default."""
        return RegionRegistry({r.name: r for r in self._regions.values()})


_PRESET_FILE = "precision/regions.toml"


@functools.lru_cache(maxsize=1)
def _preset_tables() -> dict[str, tuple[str, frozenset[Precision]]]:
    """``{NAME: (name as spelled in the presets, forbidden precisions)}``."""
    text = resources.files("regiontrt").joinpath(_PRESET_FILE).read_text("utf-8")
    tables = tomllib.loads(text)["regions"]
    return {
        region_key(str(name)): (
            str(name), frozenset(Precision.parse(p) for p in table.get("forbidden", ()))
        )
        for name, table in tables.items()
    }


def preset_forbidden(name: str) -> frozenset[Precision] | None:
    """What the shipped preset of that name (case-insensitive) forbids; ``None``: no preset."""
    try:
        key = region_key(str(name))
    except ValueError:  # not a region name at all: no preset
        return None
    entry = _preset_tables().get(key)
    return None if entry is None else entry[1]


def _strings(region: Region, key: str) -> tuple[Any, ...]:
    value = getattr(region, key)
    if isinstance(value, (str, Precision)):
        value = (value,)
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise RegionConfigError(
            f"region {region.name!r}: {key} must be a list of precision names, got {value!r:.60}"
        )
    for item in value:
        if not isinstance(item, (str, Precision)):
            raise RegionConfigError(
                f"region {region.name!r}: {key} must hold precision names, got {item!r:.60}"
            )
    return tuple(value)


def _check_types(region: Region) -> None:
    """Field types, so a TOML typo (``budget = true``, ``tags = ["a"]``) is refused, not coerced."""
    def bad(key: str, want: str) -> RegionConfigError:
        got = getattr(region, key)
        return RegionConfigError(f"region {region.name!r}: {key} must be {want}, got {got!r:.60}")

    def finite(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not finite(region.budget):
        raise bad("budget", "a finite number >= 0")
    if region.latency_p99_ms is not None and not finite(region.latency_p99_ms):
        raise bad("latency_p99_ms", "a finite number > 0")
    if not isinstance(region.strict_calibration, bool):
        raise bad("strict_calibration", "true or false")
    if not isinstance(region.metric, str):
        raise bad("metric", "a metric name")
    if not isinstance(region.description, str):
        raise bad("description", "a string")
    tags = region.tags
    if not isinstance(tags, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise bad("tags", "a table of string keys and string values")
    override = region.override_compliance
    if override is not None:
        problem = reason_problem(override)
        if problem is not None:
            raise RegionConfigError(f"region {region.name!r}: override_compliance {problem}")
        object.__setattr__(region, "override_compliance", normalize_reason(override))


def _presets() -> RegionRegistry:
    registry = RegionRegistry()
    text = resources.files("regiontrt").joinpath(_PRESET_FILE).read_text("utf-8")
    registry._update(tomllib.loads(text), f"regiontrt/{_PRESET_FILE}")
    return registry


_DEFAULT: RegionRegistry | None = None


def default_regions() -> RegionRegistry:
    """The process-wide registry: the presets plus whatever :func:`load_regions` added."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = _presets()
    return _DEFAULT


def load_regions(
    path: str | Path, *, into: RegionRegistry | None = None, register: bool = False
) -> RegionRegistry:
    """Add or override regions from a user TOML file.

    The process-wide registry changes only when asked (``register=True``); otherwise the file is
    applied to ``into`` or, without it, to a copy of the process-wide registry.

    Args:
        path: TOML file with ``[regions.NAME]`` tables (see the shipped presets).
        into: registry to update.
        register: update the process-wide registry (what :func:`get_region` resolves names in).

    Returns:
        The updated registry.
    """
    if into is not None and register:
        raise RegionConfigError("give either into= or register=True, not both")
    registry = into if into is not None else (
        default_regions() if register else default_regions().copy()
    )
    registry.update_from_toml(path)
    return registry


def get_region(region: str | Region) -> Region:
    """Resolve a preset or registered name, or pass a :class:`Region` through."""
    if isinstance(region, Region):
        return region
    return default_regions()[region]
