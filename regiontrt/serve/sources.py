"""What a server serves: an :class:`Engine`, an ``.engine`` file, or a fleet bundle.

Every source becomes one or more :class:`ServedModel`: a name (``<name>_<region>``, as in the
Triton export), a version, a region and the engines (variants) that run it, each with a role
(``"latency"``, ``"throughput"`` or ``None``).

Versions: the KServe v2 / Triton protocol numbers a model's versions ``1, 2, ...``
(``/v2/models/NAME/versions/1``). :attr:`ServedModel.version` is the source's own label (a
bundle's version, an engine's metadata ``version``, else a short payload digest);
:attr:`ServedModel.protocol_version` is what the protocol answers: the label itself when it is a
positive integer, else ``"1"`` (one version is served per model), with the label kept in the
metadata parameters (``source_version``). Bundles and install directories are read through
:func:`regiontrt.deploy.load_bundle`, imported only when such a source is given.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regiontrt.errors import ArtifactError
from regiontrt.runtime.engine import Engine, load_engine

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(text: str) -> str:
    """``text`` reduced to characters safe in a URL path segment (``[A-Za-z0-9_.-]``)."""
    cleaned = _UNSAFE.sub("_", str(text)).strip("._")
    return cleaned or "model"


@dataclass(frozen=True)
class Variant:
    """One engine of a served model and the load it is built for."""

    engine: Engine
    role: str | None = None
    label: str = "default"


@dataclass(frozen=True)
class ServedModel:
    """A model as the server exposes it."""

    name: str
    version: str
    region: str
    variants: tuple[Variant, ...]
    protocol_version: str = "1"

    def answers_to(self, version: str | None) -> bool:
        """Whether a request for ``version`` (``None``/empty: any) reaches this model."""
        return version in (None, "", self.protocol_version, self.version)

    @property
    def engine(self) -> Engine:
        """The default variant's engine (the first one)."""
        return self.variants[0].engine

    def variant_for(self, role: str) -> Variant:
        """The variant built for ``role``, else the default."""
        for v in self.variants:
            if v.role == role:
                return v
        return self.variants[0]

    def description(self) -> dict[str, Any]:
        """Region, precision, version and provenance, for the model metadata endpoint."""
        meta = self.engine.metadata
        validation = meta.get("validation") or {}
        return {
            "region": self.region,
            "precision": self.engine.precision,
            "version": self.protocol_version,
            "source_version": self.version,
            "backend": meta.get("backend"),
            "target": meta.get("target"),
            "variants": [{"label": v.label, "role": v.role,
                          "precision": v.engine.precision} for v in self.variants],
            # Shown wherever the engine is: a loosened preset must never be silent.
            "compliance_override": (meta.get("region") or {}).get("override_compliance"),
            "loaded_from": self.engine.provenance,
            "provenance": {
                "model_sha256": (meta.get("model") or {}).get("sha256"),
                "variant_sha256": meta.get("variant_sha256"),
                "validation_data": validation.get("data_fingerprint"),
                "calibration_data": (meta.get("calibration") or {}).get("fingerprint"),
                "regiontrt_version": meta.get("regiontrt_version"),
                "created_at": meta.get("created_at"),
            },
        }


def protocol_version(label: str) -> str:
    """The protocol's version for a source's version label (see the module docstring)."""
    text = str(label)
    return text if text.isascii() and text.isdigit() and not text.startswith("0") else "1"


def engine_version(engine: Engine) -> str:
    """A version for a bare engine: its metadata's ``version``, else a short payload digest."""
    meta = engine.metadata
    if meta.get("version"):
        return str(meta["version"])
    digest = meta.get("variant_sha256") or (meta.get("model") or {}).get("sha256") or ""
    return str(digest)[:12] or "1"


def _stem_name(path: Path, region: str) -> str:
    """``digits.EU.engine`` -> ``digits``: the file stem without a trailing region part."""
    stem = path.name[: -len(".engine")] if path.name.endswith(".engine") else path.stem
    suffix = "." + region
    if stem.upper().endswith(suffix.upper()) and len(stem) > len(suffix):
        stem = stem[: -len(suffix)]
    return stem


def from_engine(engine: Engine, name: str | None = None, version: str | None = None) -> ServedModel:
    """Serve one engine as ``<name>_<region>``."""
    base = name or str((engine.metadata.get("model") or {}).get("graph_name") or "model")
    label = version or engine_version(engine)
    # A digest is no version number even when its hex happens to be all digits.
    number = protocol_version(label) if (version or engine.metadata.get("version")) else "1"
    return ServedModel(safe_name(f"{base}_{engine.region}"), label, engine.region,
                       (Variant(engine),), number)


def _is_bundle(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("variants", "select", "load_variant"))


def from_bundle(bundle: Any, name: str | None = None) -> ServedModel:
    """Serve a fleet bundle: its selected engine, plus role variants for the same target.

    Variants are those whose backend and target match the engine :meth:`Bundle.select` picks
    for this machine, so a ``latency`` and a ``throughput`` variant run where the default does.
    """
    selected: Engine = bundle.select().engine
    target = selected.metadata.get("target")
    variants = [Variant(selected, None, "default")]
    for v in bundle.variants:
        role = getattr(v, "role", None)
        if role not in ("latency", "throughput"):
            continue
        if v.backend != selected.backend_name or v.target != target:
            continue
        variants.append(Variant(bundle.load_variant(v), role, f"{role}:{v.target}"))
    region = str(getattr(bundle, "region", None) or selected.region)
    base = name or str(bundle.name)
    return ServedModel(safe_name(f"{base}_{region}"), str(bundle.version), region,
                       tuple(variants), protocol_version(str(bundle.version)))


def resolve(source: Any, name: str | None = None) -> list[ServedModel]:
    """The models ``source`` serves.

    Args:
        source: an :class:`Engine`, a path to an ``.engine`` file, a bundle (file or install
            directory), a loaded bundle object, or a sequence of these.
        name: the ``<name>`` part of the model name (default: the bundle's name, the file's stem,
            or the engine's graph name).

    Raises:
        ArtifactError: an unreadable engine, or a bundle without ``regiontrt.deploy``.
    """
    if isinstance(source, Engine):
        return [from_engine(source, name)]
    if _is_bundle(source):
        return [from_bundle(source, name)]
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_file() and path.name.endswith(".engine"):
            engine = load_engine(path)
            return [from_engine(engine, name or _stem_name(path, engine.region))]
        if not path.exists():
            raise ArtifactError(f"nothing to serve at {path}: no such file or directory")
        try:
            from regiontrt.deploy import load_bundle  # type: ignore[attr-defined]
        except ImportError as exc:
            raise ArtifactError(
                f"{path} is not an .engine file; serving bundles and install directories "
                "needs regiontrt.deploy"
            ) from exc
        return [from_bundle(load_bundle(path), name)]
    if isinstance(source, Sequence):
        models = [m for s in source for m in resolve(s, name)]
        # Compared case-insensitively: URLs and people do not tell "m_lab" from "m_LAB".
        names = [m.name.casefold() for m in models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ArtifactError(f"two sources serve the same model name: {dupes}")
        return models
    raise TypeError(f"cannot serve {type(source).__name__}: give an Engine, a path or a bundle")
