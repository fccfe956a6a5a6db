"""What ``regiontrt report`` reads: the engines and manifests under a path, and their timings.

Every ``.engine`` below a folder (depth-bounded, links not followed out of the tree) and every
``manifest.json`` (read tolerantly, size-capped: unknown keys are kept, missing ones skipped).
Unreadable or tampered files are recorded as problems, never fatal.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from regiontrt.errors import DataError, RegionTRTError
from regiontrt.runtime.inspection import EngineInfo

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20
MAX_DEPTH = 6


@dataclass
class EngineEntry:
    """One engine found: its file, header and (when in a bundle) the manifest's target name."""

    path: Path
    info: EngineInfo
    target: str
    latencies_ms: np.ndarray | None = None
    latency_note: str = ""
    #: the bundle version (from the manifest beside the engine), "" outside a bundle
    version: str = ""

    @property
    def region(self) -> str:
        return self.info.region_name


@dataclass
class ReportSource:
    """What :func:`collect` found under a path."""

    root: Path
    engines: list[EngineEntry] = field(default_factory=list)
    manifests: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)
    #: ``(region, target, precision, status)`` of manifest variants with no engine file here
    #: (e.g. a TensorRT cell deferred to the node).
    pending: list[tuple[str, str, str, str]] = field(default_factory=list)
    #: the bundle version of each ``pending`` entry (same order), "" when unknown
    pending_versions: list[str] = field(default_factory=list)


def _walk(root: Path) -> list[Path]:
    """Files below ``root``, depth-bounded, without following links out of the tree."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if depth < MAX_DEPTH and not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames)]
    return found


def _read_manifest(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise DataError(f"larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError("not a JSON object")
    return data


def manifest_variants(manifest: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A manifest's variants, given as a list or as a ``{target: variant}`` mapping."""
    variants = manifest.get("variants")
    if isinstance(variants, Mapping):
        variants = [dict(v, target=v.get("target", k)) for k, v in variants.items()
                    if isinstance(v, Mapping)]
    return [v for v in variants if isinstance(v, Mapping)] if isinstance(variants, list) else []


def _file_of(variant: Mapping[str, Any]) -> str | None:
    name = variant.get("file") or variant.get("path") or variant.get("file_name")
    return Path(name).name if isinstance(name, str) else None


def _add_pending(source: ReportSource, folder: Path, manifest: Mapping[str, Any]) -> None:
    region = manifest.get("region")
    region_name = str(region.get("name") if isinstance(region, Mapping) else region)
    present = {e.path.name for e in source.engines if e.path.parent == folder}
    version = str(manifest.get("version") or "")
    before = len(source.pending)
    for v in manifest_variants(manifest):
        if v.get("target") is not None and _file_of(v) not in present:
            status = v.get("status") or ("no engine file here" if _file_of(v) else "no file")
            source.pending.append((region_name, str(v["target"]),
                                   str(manifest.get("precision", "?")), str(status)))
    deferred = manifest.get("deferred")
    for d in deferred if isinstance(deferred, list) else []:
        target = (d.get("name") or d.get("target")) if isinstance(d, Mapping) else (
            d if isinstance(d, str) else None)
        if target is not None:
            reason = d.get("reason") if isinstance(d, Mapping) else None
            source.pending.append((region_name, str(target), str(manifest.get("precision", "?")),
                                   f"deferred: {reason}" if reason else "deferred"))
    source.pending_versions += [version] * (len(source.pending) - before)


def collect(path: str | Path) -> ReportSource:
    """Find the engines and manifests under ``path`` (a file or a folder).

    Raises:
        DataError: ``path`` does not exist, or holds no engine and no manifest.
    """
    from regiontrt.runtime.inspection import inspect

    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    files = [root] if root.is_file() else _walk(root)
    source = ReportSource(root=root)
    targets: dict[Path, dict[str, str]] = {}
    versions: dict[Path, str] = {}
    for f in files:
        if f.name == MANIFEST:
            try:
                manifest = _read_manifest(f)
            except (OSError, DataError) as exc:
                source.problems.append((f, f"manifest unreadable: {exc}"))
                continue
            source.manifests.append((f, manifest))
            versions[f.parent] = str(manifest.get("version") or "")
            targets[f.parent] = {
                name: str(v["target"]) for v in manifest_variants(manifest)
                if (name := _file_of(v)) and v.get("target") is not None}
    for f in files:
        if f.suffix != ".engine":
            continue
        try:
            info = inspect(f)
        except (OSError, RegionTRTError) as exc:
            source.problems.append((f, f"{type(exc).__name__}: {exc}"))
            continue
        target = targets.get(f.parent, {}).get(f.name) or str(info.get("target"))
        source.engines.append(EngineEntry(f, info, target, version=versions.get(f.parent, "")))
    for f, manifest in source.manifests:
        _add_pending(source, f.parent, manifest)
    if not source.engines and not source.manifests and not source.problems:
        raise DataError(f"{root}: no .engine file and no {MANIFEST} found")
    return source


def measure(source: ReportSource, iterations: int, batch: int | None = 1) -> None:
    """Time every engine that can run on this machine (``iterations`` calls each, at ``batch``
    rows: 1 by default, the per-request latency an SLA is about, and seconds rather than minutes
    for a large model whose profile's ``opt`` batch is 32; ``None``: the profile's ``opt``)."""
    from regiontrt._progress import track
    from regiontrt.report.plots import latency_samples
    from regiontrt.runtime.engine import load_engine

    at = "the profile's opt shape" if batch is None else f"batch {batch}"
    for entry in track(source.engines, f"timing {iterations} calls per engine at {at}"):
        try:
            with load_engine(entry.path) as engine:
                entry.latencies_ms = latency_samples(
                    engine, iterations=iterations, warmup=max(1, iterations // 10), batch=batch)
        except (RegionTRTError, ValueError, OSError) as exc:
            entry.latency_note = f"not run here: {exc}"
