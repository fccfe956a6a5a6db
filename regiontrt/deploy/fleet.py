"""The fleet file: which model, which regions, which GPU targets (TOML; see docs/fleet.md).

Paths in the file are relative to the file itself, or fsspec URLs (``s3://``, ``https://``...).
They are resolved here, on the machine that reads the fleet file, into absolute paths or URLs,
so a build task on another machine receives only bytes and URLs.
"""

from __future__ import annotations

import io
import posixpath
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from regiontrt.backends import backend_names
from regiontrt.backends.tactics import TacticSelector
from regiontrt.deploy._util import safe_name
from regiontrt.errors import FleetError, RegionTRTError
from regiontrt.precision.regions import Region, default_regions, get_region, load_regions

ROLES = ("latency", "throughput")
_TOP_KEYS = {"name", "version", "model", "shape_profile", "regions", "targets", "regions_file"}
_REGION_KEYS = {"calibration", "validation", "calibrator", "metric", "precisions", "search_mixed"}
#: The TacticSelector settings a target may set besides its compute capabilities.
_BUILDER_KEYS = ("optimization_level", "hardware_compatibility", "max_tactics", "workspace_bytes",
                 "version_compatible", "exclude_lean_runtime", "cuda_graph")
_TARGET_KEYS = {"name", "backend", "compute_capabilities", "role", *_BUILDER_KEYS}


def _is_url(value: str) -> bool:
    return "://" in value


def resolve(value: str, base: str) -> str:
    """``value`` as an absolute path or URL, relative to the folder (or URL) ``base``."""
    if _is_url(value):
        return value
    if _is_url(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, value))}"
    return str((Path(base) / value).resolve())


@dataclass(frozen=True)
class TargetSpec:
    """One GPU (or CPU) target every region is built for.

    Attributes:
        name: the variant's name in bundles (``cpu``, ``rtx-edge``...).
        backend: ``onnxruntime``, ``tensorrt`` or ``tensorrt-rtx``.
        compute_capabilities: GPU targets (``sm89``...); TensorRT builds only where one matches.
        role: ``latency``, ``throughput`` or None: a hint for servers choosing among variants.
        builder: other :class:`TacticSelector` settings (optimization level...).
    """

    name: str
    backend: str
    compute_capabilities: tuple[str, ...] = ()
    role: str | None = None
    builder: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, table: Mapping[str, Any]) -> TargetSpec:
        """Parse one ``[[targets]]`` table.

        Raises:
            FleetError: unknown keys, backend or role, or an unsafe name.
        """
        if not isinstance(table, Mapping):
            raise FleetError("each [[targets]] entry must be a table")
        unknown = set(table) - _TARGET_KEYS
        if unknown:
            raise FleetError(f"target {table.get('name')!r}: unknown keys {sorted(unknown)}")
        try:
            name = safe_name(table.get("name"), "target name")
        except RegionTRTError as exc:
            raise FleetError(str(exc)) from None
        backend = table.get("backend")
        if backend not in backend_names():
            raise FleetError(f"target {name!r}: backend {backend!r} is not one of "
                             f"{backend_names()}")
        role = table.get("role")
        if role is not None and role not in ROLES:
            raise FleetError(f"target {name!r}: role {role!r} is not one of {ROLES}")
        builder = {k: table[k] for k in _BUILDER_KEYS if k in table}
        spec = cls(name, str(backend), tuple(str(c) for c in table.get("compute_capabilities", ())),
                   role, builder)
        try:
            spec.tactics()
        except (TypeError, ValueError) as exc:
            raise FleetError(f"target {name!r}: {exc}") from None
        return spec

    def tactics(self) -> TacticSelector:
        """The builder settings of this target."""
        return TacticSelector(compute_capabilities=self.compute_capabilities, **self.builder)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "backend": self.backend,
                               "compute_capabilities": list(self.compute_capabilities),
                               "role": self.role}
        return {**out, **self.builder}


@dataclass(frozen=True)
class RegionSpec:
    """One region of the fleet: its policy (as a dict, so it travels) and its data URLs."""

    name: str
    region: Mapping[str, Any]
    calibration: str | None = None
    validation: str | None = None
    calibrator: str = "entropy"
    metric: str | None = None
    precisions: tuple[str, ...] | None = None
    search_mixed: bool = True

    def to_job(self) -> dict[str, Any]:
        """What a build task needs about the region (plain data only)."""
        return {"name": self.name, "region": dict(self.region), "calibration": self.calibration,
                "validation": self.validation, "calibrator": self.calibrator,
                "metric": self.metric, "precisions": self.precisions,
                "search_mixed": self.search_mixed}


@dataclass(frozen=True)
class FleetSpec:
    """A parsed fleet file."""

    name: str
    version: str
    model: str
    regions: tuple[RegionSpec, ...]
    targets: tuple[TargetSpec, ...]
    shape_profile: Mapping[str, Any] | None = None
    source: str = ""

    @classmethod
    def load(cls, path: str | Path) -> FleetSpec:
        """Read a fleet TOML file (a path or an fsspec URL).

        Raises:
            FleetError: unreadable or invalid.
        """
        text = read_bytes(str(path), what="fleet file")
        try:
            doc = tomllib.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise FleetError(f"{path}: not valid TOML: {exc}") from None
        base = posixpath.dirname(str(path)) if _is_url(str(path)) else str(Path(path).parent)
        return cls.from_dict(doc, base=base, source=str(path))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, base: str = ".", source: str = "") -> FleetSpec:
        """Build from a parsed document; relative paths resolve against ``base``."""
        unknown = set(doc) - _TOP_KEYS
        if unknown:
            raise FleetError(f"fleet: unknown keys {sorted(unknown)}")
        try:
            name = safe_name(doc.get("name"), "fleet name")
            version = safe_name(str(doc.get("version", "")), "fleet version")
        except RegionTRTError as exc:
            raise FleetError(str(exc)) from None
        if not isinstance(doc.get("model"), str):
            raise FleetError("fleet: 'model' (a path or URL of the ONNX model) is required")
        registry = None
        if "regions_file" in doc:
            try:
                # A copy: a fleet's regions must not leak into the process-wide registry.
                registry = load_regions(resolve(str(doc["regions_file"]), base),
                                        into=default_regions().copy())
            except RegionTRTError as exc:
                raise FleetError(f"fleet: regions_file: {exc}") from None
        tables = doc.get("regions")
        if not isinstance(tables, Mapping) or not tables:
            raise FleetError("fleet: at least one [regions.NAME] table is required")
        regions = tuple(_region(n, t, base, registry) for n, t in tables.items())
        if len({r.name for r in regions}) != len(regions):
            raise FleetError(f"fleet: regions repeat: {[r.name for r in regions]}")
        targets_doc = doc.get("targets")
        if not isinstance(targets_doc, Sequence) or not targets_doc:
            raise FleetError("fleet: at least one [[targets]] table is required")
        targets = tuple(TargetSpec.from_dict(t) for t in targets_doc)
        names = [t.name for t in targets]
        if len(set(names)) != len(names):
            raise FleetError(f"fleet: target names repeat: {names}")
        profile = doc.get("shape_profile")
        if profile is not None and not isinstance(profile, Mapping):
            raise FleetError("fleet: [shape_profile] must be a table of input -> [min, opt, max]")
        return cls(name, version, resolve(doc["model"], base), regions, targets,
                   dict(profile) if profile else None, source)

    def model_bytes(self) -> bytes:
        """The ONNX model's bytes (read once, on the machine that submits the build)."""
        return read_bytes(self.model, what="model")


def _region(name: str, table: Any, base: str, registry: Any) -> RegionSpec:
    if not isinstance(table, Mapping):
        raise FleetError(f"[regions.{name}] must be a table")
    unknown = set(table) - _REGION_KEYS
    if unknown:
        raise FleetError(f"[regions.{name}]: unknown keys {sorted(unknown)}")
    try:
        region: Region = registry[name] if registry is not None else get_region(name)
    except RegionTRTError as exc:
        raise FleetError(f"[regions.{name}]: {exc}") from None
    precisions = table.get("precisions")
    if precisions is not None:
        precisions = tuple(str(p) for p in precisions)

    def data(key: str) -> str | None:
        value = table.get(key)
        return None if value is None else resolve(str(value), base)

    search_mixed = table.get("search_mixed", True)
    if not isinstance(search_mixed, bool):
        raise FleetError(f"[regions.{name}]: search_mixed must be true or false")
    return RegionSpec(region.name, region.to_dict(), data("calibration"), data("validation"),
                      str(table.get("calibrator", "entropy")), table.get("metric"), precisions,
                      search_mixed)


def read_bytes(url: str, *, what: str = "file", limit: int = 4 << 30) -> bytes:
    """A whole file from a local path or an fsspec URL.

    Raises:
        FleetError: missing or unreadable.
    """
    try:
        if not _is_url(url):
            return Path(url).read_bytes()
        import fsspec

        with fsspec.open(url, "rb") as fh:
            data: bytes = fh.read(limit + 1)
    except Exception as exc:  # fsspec back-ends raise many types (OSError, aiohttp, botocore...)
        raise FleetError(f"{what} {url}: cannot be read: {exc}") from exc
    if len(data) > limit:
        raise FleetError(f"{what} {url}: larger than {limit} bytes")
    return data


def read_npz_batches(url: str) -> list[dict[str, np.ndarray]]:
    """Batches from an ``.npz`` file or a folder of them (one file = one batch), path or URL.

    Raises:
        FleetError: missing, empty or unreadable data.
    """
    try:
        import fsspec

        fs, root = fsspec.core.url_to_fs(url)
        if fs.isdir(root):
            files = sorted(p for p in fs.ls(root, detail=False) if str(p).endswith(".npz"))
            if not files:
                raise FleetError(f"no .npz files in {url}")
        elif fs.isfile(root):
            files = [root]
        else:
            raise FleetError(f"data not found: {url}")
        batches = []
        for file in files:
            with np.load(io.BytesIO(fs.cat_file(file)), allow_pickle=False) as npz:
                batches.append({k: npz[k] for k in npz.files})
        return batches
    except FleetError:
        raise
    except Exception as exc:  # fsspec back-ends and numpy raise many types
        raise FleetError(f"data {url}: cannot be read: {exc}") from exc
