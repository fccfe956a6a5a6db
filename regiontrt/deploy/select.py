"""Selection: which of a bundle's variants this machine runs, and why, candidate by candidate.

Order: a TensorRT plan for this GPU and the installed TensorRT (a version-compatible plan of an
older release, 8.6 or later, counts, and is what a site with only TensorRT's lean runtime runs:
any plan that loads beats a rebuild); else a TensorRT-RTX plan this GPU and package support;
else a TensorRT plan rebuilt here from the bundled precision-compiled ONNX (saved atomically under
the install's ``local/`` folder and reused on the next start); else ONNX Runtime. A rebuild
never re-quantizes: the precision is in the graph, so the region's compliance and accuracy
decisions carry over. Compatibility is asked of each backend through the public
:meth:`Backend.check_compatible`, never decided here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, Protocol

from regiontrt.backends.onnxruntime import runtime_arithmetic
from regiontrt.backends.trt_compat import version_compatible
from regiontrt.deploy.hardware import backend_or_reason, tensorrt_build_blocker
from regiontrt.deploy.variant import Variant
from regiontrt.errors import RegionTRTError
from regiontrt.runtime import artifact
from regiontrt.runtime.engine import Engine


class Bundle(Protocol):
    """What selection reads of a :class:`~regiontrt.deploy.bundle.Bundle` (which calls it)."""

    path: Path
    install: Path | None
    manifest: dict[str, Any]
    variants: tuple[Variant, ...]
    deferred: tuple[dict[str, Any], ...]
    version: str
    region: str
    onnx_sha256: str

    def load_variant(self, variant: Variant) -> Engine: ...

    def onnx_engine(self) -> Engine: ...

_ORDER = ("tensorrt", "tensorrt-rtx")


@dataclass(frozen=True)
class Candidate:
    """One option considered: what it is, whether it was taken, and why."""

    option: str  # "variant", "rebuild" or "onnx"
    target: str
    backend: str
    chosen: bool
    reason: str

    def __str__(self) -> str:
        verdict = "chosen" if self.chosen else "skipped"
        return f"{self.target} ({self.backend}, {self.option}): {verdict}: {self.reason}"


@dataclass
class Selection:
    """The engine picked for this machine, the variant it came from, and every reason."""

    engine: Engine
    variant: Variant | None
    reasons: list[Candidate] = field(default_factory=list)
    rebuilt: bool = False

    def explain(self) -> str:
        """One line per candidate."""
        return "\n".join(str(c) for c in self.reasons)

    def __repr__(self) -> str:
        variant = self.variant.target if self.variant is not None else None
        return (f"Selection(variant={variant!r}, backend={self.engine.backend_name!r}, "
                f"region={self.engine.region!r}, precision={self.engine.precision!r}, "
                f"rebuilt={self.rebuilt!r}, candidates={len(self.reasons)})")

    def _repr_html_(self) -> str:
        """The choice and every candidate's reason, as a small table (notebooks)."""
        rows = "".join(f"<tr><td>{escape(str(c.target))}</td><td>{escape(str(c))}</td></tr>"
                       for c in self.reasons)
        variant = self.variant.target if self.variant is not None else "the bundle's ONNX"
        rebuilt = " (rebuilt here)" if self.rebuilt else ""
        return (f"<div><p><b>selected {escape(variant)}</b>: {escape(self.engine.backend_name)}"
                f", {escape(self.engine.region)} {escape(self.engine.precision)}{rebuilt}</p>"
                f"<table><thead><tr><th>candidate</th><th>why</th></tr></thead>"
                f"<tbody>{rows}</tbody></table></div>")


def _try_variant(bundle: Bundle, variant: Variant) -> tuple[Engine | None, str]:
    backend, why = backend_or_reason(variant.backend)
    if backend is None:
        return None, why
    try:
        metadata = artifact.read_header(bundle.path / variant.file)
        backend.check_compatible(metadata)
        engine = bundle.load_variant(variant)
    except RegionTRTError as exc:
        return None, str(exc)
    note = ""
    if backend.name == "onnxruntime":  # fused int8 checked on another CPU: say so here too
        note = runtime_arithmetic(metadata)[1]
    elif version_compatible(metadata):
        note = "a version-compatible plan: no rebuild needed after a TensorRT upgrade"
    return engine, f"runs here ({backend.name} {backend.version()})" + (f"; {note}" if note else "")


def _rebuild(bundle: Bundle) -> tuple[Engine | None, str, bool]:
    """A TensorRT plan for this GPU from the bundled ONNX, cached under ``install/local``."""
    blocker = tensorrt_build_blocker()
    if blocker is not None:
        return None, blocker, False
    backend, why = backend_or_reason("tensorrt")
    if backend is None:
        return None, why, False
    cache = None
    if bundle.install is not None:
        cache = (bundle.install / "local" / f"{bundle.version}_{bundle.region}"
                 / f"tensorrt-{backend.version()}-{bundle.onnx_sha256[:16]}.engine")
    if cache is not None and cache.is_file():
        try:
            metadata, payload = artifact.read(cache)
            if metadata.get("source_onnx_sha256") == bundle.onnx_sha256:
                backend.check_compatible(metadata)
                return (Engine(metadata, payload, provenance=f"rebuilt on this node ({cache})"),
                        f"reused the plan rebuilt earlier ({cache})", True)
        except RegionTRTError:
            pass  # stale or damaged cache (another GPU, a crash): rebuild below
    from regiontrt.build.retarget import retarget

    try:
        engine = retarget(bundle.onnx_engine(), backend, label=f"{bundle.region}-node")
    except RegionTRTError as exc:
        return None, f"rebuild failed: {exc}", False
    note = "rebuilt here from the bundled precision-compiled ONNX"
    if cache is not None:
        try:
            engine.save(cache)  # atomic: a crash mid-write leaves the previous file or none
        except OSError as exc:  # a read-only install still runs the plan, it is just not kept
            note += f" (not cached: {exc})"
    return engine, note, True


def select(bundle: Bundle, *, role: str | None = None, rebuild: bool = True) -> Selection:
    """Pick and load the engine of ``bundle`` for this machine.

    Args:
        bundle: a verified bundle (:func:`load_bundle`).
        role: prefer variants of this role (``latency``/``throughput``) within each tier.
        rebuild: allow a TensorRT rebuild on this node when no plan fits.

    The last resort, the bundled ONNX on ONNX Runtime, always exists, so a verified bundle
    always yields an engine (a file changed since :func:`load_bundle` raises ``BundleError``).
    """
    reasons: list[Candidate] = []
    for backend in _ORDER:
        tier = [v for v in bundle.variants if v.backend == backend]
        tier.sort(key=lambda v: role is not None and v.role != role)
        for variant in tier:
            engine, reason = _try_variant(bundle, variant)
            reasons.append(Candidate("variant", variant.target, backend, engine is not None,
                                     reason))
            if engine is not None:
                return Selection(engine, variant, reasons)
    for d in bundle.deferred:
        reasons.append(Candidate("variant", str(d.get("name")), str(d.get("backend")), False,
                                 f"deferred at build ({d.get('reason', '')})"))
    if rebuild:
        engine, reason, ok = _rebuild(bundle)
        reasons.append(Candidate("rebuild", "local-gpu", "tensorrt", ok, reason))
        if engine is not None:
            return Selection(engine, None, reasons, rebuilt=True)
    else:
        reasons.append(Candidate("rebuild", "local-gpu", "tensorrt", False, "disabled"))
    ort = sorted((v for v in bundle.variants if v.backend == "onnxruntime"),
                 key=lambda v: role is not None and v.role != role)
    if ort:
        engine, reason = _try_variant(bundle, ort[0])
        reasons.append(Candidate("variant", ort[0].target, "onnxruntime", engine is not None,
                                 reason))
        if engine is not None:
            return Selection(engine, ort[0], reasons)
    engine = bundle.onnx_engine()
    reasons.append(Candidate("onnx", Path(bundle.manifest["onnx"]["file"]).stem, "onnxruntime",
                             True, "the bundled precision-compiled ONNX on ONNX Runtime"))
    return Selection(engine, None, reasons)
