"""Bundles: one folder per (model, version, region) with a manifest, its ONNX and its variants.

Layout (see docs/fleet.md)::

    manifest.json    name, version, region and policy, precision and validation report, the
                     precision-compiled ONNX's SHA-256, every variant (target, backend, compute
                     capabilities, toolchain, file, size, SHA-256) and the deferred targets
    model.onnx       the precision-compiled ONNX: the single source of every variant
    <target>.engine  one ``.engine`` container per built variant
    bundle.sig       the signature (see :mod:`.signing`)

:func:`load_bundle` refuses a whole bundle, with a typed error, when any file disagrees with the
manifest, a variant belongs to another region or derives from another graph, or anything holds a
precision the region forbids.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from regiontrt import _display
from regiontrt._fs import atomic_write_text
from regiontrt._version import __version__
from regiontrt.build.retarget import check_onnx_compliance, source_onnx
from regiontrt.deploy._util import load_json, safe_name, sha256_bytes, sha256_file, share_tree
from regiontrt.deploy.layout import POINTER, current_dir
from regiontrt.deploy.select import Selection, select
from regiontrt.deploy.signing import sign_bundle, verify_bundle
from regiontrt.deploy.variant import Variant
from regiontrt.errors import BundleError, PolicyViolation
from regiontrt.precision.regions import Region
from regiontrt.precision.types import Precision
from regiontrt.runtime import artifact
from regiontrt.runtime.engine import Engine
from regiontrt.runtime.schema import check_payload, validate_header

if TYPE_CHECKING:
    from regiontrt.deploy.signing import TrustLike

FORMAT = "regiontrt-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ONNX_FILE = "model.onnx"
MAX_MANIFEST = 16 << 20
_PAYLOAD_KEYS = ("payload_sha256", "payload_size")
_MANIFEST_SCHEMA: dict[str, type] = {
    "name": str, "version": str, "region": dict, "precision": str, "onnx": dict,
    "variants": list, "engine_metadata": dict}
# Our temporary and set-aside bundle folders, beside the bundle: ".<region>.rtrt-new-XXXX".
_NEW_MARK = ".rtrt-new-"
_OLD_MARK = ".rtrt-old-"


class Bundle:
    """A verified bundle (create it with :func:`load_bundle`)."""

    def __init__(self, path: Path, manifest: Mapping[str, Any], install: Path | None,
                 verified_by: str | None = None) -> None:
        self.path = path
        #: The trusted key the bundle's signature verified with (``None``: not verified).
        self.verified_by = verified_by
        self.manifest = dict(manifest)
        self.install = install
        self.name: str = manifest["name"]
        self.version: str = manifest["version"]
        self.region: str = manifest["region"]["name"]
        self.precision: str = manifest["precision"]
        self.variants = tuple(Variant.from_dict(v) for v in manifest["variants"])
        self.deferred: tuple[dict[str, Any], ...] = tuple(manifest.get("deferred") or ())
        self.onnx_sha256: str = manifest["onnx"]["sha256"]

    def __repr__(self) -> str:
        return (f"Bundle(name={self.name!r}, version={self.version!r}, region={self.region!r}, "
                f"precision={self.precision!r}, variants={[v.target for v in self.variants]}"
                + (f", deferred={[str(d.get('name')) for d in self.deferred]}"
                   if self.deferred else "") + ")")

    def _repr_html_(self) -> str | None:
        return _display.html(self)

    def _read(self, file: str, sha256: str) -> bytes:
        data = (self.path / file).read_bytes()
        if sha256_bytes(data) != sha256:  # re-checked on use: the folder may change after load
            raise BundleError(f"{self.path / file}: SHA-256 differs from the manifest")
        return data

    def load_variant(self, variant: Variant) -> Engine:
        """The variant's engine (its file re-checked against the manifest)."""
        metadata, payload = artifact.decode(self._read(variant.file, variant.sha256),
                                            str(self.path / variant.file))
        return Engine(metadata, payload, provenance=self._provenance)

    def onnx_engine(self) -> Engine:
        """An ONNX Runtime engine of the bundled precision-compiled ONNX."""
        meta = dict(self.manifest["engine_metadata"])
        meta.update({"backend": {"name": "onnxruntime", "version": ""}, "payload_format": "onnx",
                     "target": "cpu"})
        return Engine(meta, self._read(ONNX_FILE, self.onnx_sha256), provenance=self._provenance)

    @property
    def _provenance(self) -> str | None:
        # Files are re-hashed against the manifest on every read, so the signature covers them.
        if self.verified_by is not None:
            return f"signed bundle ({self.verified_by})"
        # pull() verified the signature before installing; the install folder is this node's
        # own, trusted like its rebuild cache (docs/security.md, "Limits").
        return None if self.install is None else f"installed by a verified pull ({self.install})"

    def select(self, *, role: str | None = None, rebuild: bool = True) -> Selection:
        """Pick and load the variant for this machine; see :func:`regiontrt.deploy.select`."""
        return select(self, role=role, rebuild=rebuild)


def write_bundle(
    folder: str | Path, *, name: str, version: str, region_engine: Engine,
    variants: Sequence[tuple[Mapping[str, Any], Engine]],
    deferred: Sequence[Mapping[str, Any]] = (), sign_key: str | Path | None = None,
) -> Path:
    """Write (and sign) a bundle folder atomically: built in a sibling folder, then swapped in.

    The bundle is written and signed in ``.<folder>.rtrt-new-*`` beside ``folder``, given the
    modes the umask gives, and swapped with the previous bundle in one ``renameat2`` exchange
    (Linux; elsewhere: the old one renamed aside, the new one renamed in, the old one removed).
    A writer killed at any moment leaves the previous complete bundle or the new complete one,
    never an unsigned one; the next write removes our leftovers (and restores a bundle set aside
    by a writer killed between its two renames).

    Args:
        folder: the bundle folder to create (replaced if it exists).
        name: the model's name.
        version: the model's version.
        region_engine: the region's ONNX Runtime engine (its payload is the compiled ONNX).
        variants: ``(target dict, engine)`` per built target (see ``TargetSpec.to_dict``).
        deferred: target dicts with a ``reason``, for targets the node must rebuild.
        sign_key: a private key to sign the bundle with before it appears under ``folder``.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _bundle_lock(folder):
        _clear_leftovers(folder)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}{_NEW_MARK}", dir=folder.parent))
        try:
            _write_contents(tmp, name=name, version=version, region_engine=region_engine,
                            variants=variants, deferred=deferred)
            if sign_key is not None:
                sign_bundle(tmp, sign_key)
            share_tree(tmp)  # mkdtemp made it 0700, the signer's file is 0600
            _swap_in(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder


def _write_contents(tmp: Path, *, name: str, version: str, region_engine: Engine,
                    variants: Sequence[tuple[Mapping[str, Any], Engine]],
                    deferred: Sequence[Mapping[str, Any]]) -> None:
    onnx_bytes = source_onnx(region_engine)
    meta = region_engine.metadata
    (tmp / ONNX_FILE).write_bytes(onnx_bytes)
    entries = []
    for target, engine in variants:
        file = f"{safe_name(target['name'], 'target name')}.engine"
        blob = engine.to_bytes()
        (tmp / file).write_bytes(blob)
        vmeta = engine.metadata
        entries.append(Variant(
            target=target["name"], backend=engine.backend_name, file=file,
            sha256=sha256_bytes(blob), size=len(blob), role=target.get("role"),
            compute_capabilities=tuple(target.get("compute_capabilities") or ()),
            payload_format=vmeta["payload_format"], precision=engine.precision,
            toolchain=vmeta.get("toolchain", {})).to_dict()
            | {"source_onnx_sha256": vmeta.get("source_onnx_sha256"),
               "built_target": vmeta.get("target")})
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "name": safe_name(name, "name"), "version": safe_name(version, "version"),
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "regiontrt_version": __version__,
        "region": meta["region"], "policy": meta.get("policy"),
        "precision": meta["precision"],
        "kept_high_precision": meta.get("kept_high_precision", []),
        "validation": meta.get("validation"),
        "model": meta.get("model"),
        "onnx": {"file": ONNX_FILE, "sha256": sha256_bytes(onnx_bytes),
                 "size": len(onnx_bytes)},
        "engine_metadata": {k: v for k, v in meta.items() if k not in _PAYLOAD_KEYS},
        "variants": entries,
        "deferred": [dict(d) for d in deferred],
    }
    atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))


@contextlib.contextmanager
def _bundle_lock(folder: Path) -> Iterator[None]:
    """One writer per bundle folder, so clearing leftovers never removes a live writer's."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with (folder.parent / f".{folder.name}.rtrt-lock").open("a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _clear_leftovers(folder: Path) -> None:
    """Remove our temporary folders beside ``folder``; restore one set aside by a killed swap."""
    aside = sorted(folder.parent.glob(f".{folder.name}{_OLD_MARK}*"),
                   key=lambda p: p.stat().st_mtime)
    if aside and not folder.exists():
        os.rename(aside.pop(), folder)  # killed between "old aside" and "new in"
    for path in [*aside, *folder.parent.glob(f".{folder.name}{_NEW_MARK}*")]:
        shutil.rmtree(path, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this file system or kernel can't
        return False
    raise OSError(errno, os.strerror(errno), str(b))


def _swap_in(new: Path, folder: Path) -> None:
    if not folder.exists():
        os.rename(new, folder)
    elif _exchange(new, folder):
        shutil.rmtree(new)  # it now holds the previous bundle
    else:
        aside = folder.with_name(f".{folder.name}{_OLD_MARK}{uuid.uuid4().hex[:8]}")
        os.rename(folder, aside)
        os.rename(new, folder)
        shutil.rmtree(aside)


def read_manifest(folder: Path) -> dict[str, Any]:
    """Parse and schema-check ``folder/manifest.json`` (never trusting its content).

    Raises:
        BundleError: missing, too large, too deep, not JSON, of another format, or a field of
            the wrong type.
    """
    path = folder / MANIFEST
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_MANIFEST + 1)
    except OSError as exc:
        raise BundleError(f"{folder} is not a bundle: {exc}") from None
    manifest = load_json(raw, str(path), MAX_MANIFEST, BundleError)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not a regiontrt bundle manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format {manifest.get('format_version')!r} "
                          f"is not supported (this regiontrt reads {FORMAT_VERSION})")
    for key, kind in _MANIFEST_SCHEMA.items():
        if not isinstance(manifest.get(key), kind):
            raise BundleError(f"{path}: {key!r} is missing or not a {kind.__name__}")
    safe_name(manifest["name"], "name")
    safe_name(manifest["version"], "version")
    onnx = manifest["onnx"]
    if (not isinstance(onnx.get("file"), str) or not isinstance(onnx.get("sha256"), str)
            or type(onnx.get("size")) is not int or onnx["size"] < 0):
        raise BundleError(f"{path}: 'onnx' needs a file name, a sha256 and a size")
    if not isinstance(manifest["region"].get("name"), str):
        raise BundleError(f"{path}: the region has no name")
    if not isinstance(manifest.get("deferred") or [], list):
        raise BundleError(f"{path}: 'deferred' must be a list")
    for key in ("variants", "deferred"):
        if not all(isinstance(v, dict) for v in manifest.get(key) or []):
            raise BundleError(f"{path}: every {key!r} entry must be a table")
    return manifest


def _check_file(folder: Path, file: str, sha256: Any, size: Any) -> None:
    path = folder / safe_name(file, "file")
    if not path.is_file() or path.is_symlink():
        raise BundleError(f"{path}: missing (or not a regular file)")
    if path.stat().st_size != size or sha256_file(path) != sha256:
        raise BundleError(f"{path}: size or SHA-256 differs from the manifest")


def _precision(value: Any, where: str) -> Precision:
    try:
        return Precision.parse(value)
    except ValueError:
        raise BundleError(f"{where}: unknown precision {value!r}") from None


def verify_contents(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Every file against the manifest, every variant against the region and its graph.

    Raises:
        BundleError: a file missing or changed; a variant of another region or graph.
        PolicyViolation: the ONNX or a variant holds a precision the region forbids.
    """
    region_dict = manifest["region"]
    try:
        region = Region.from_dict(str(region_dict["name"]), region_dict)
    except Exception as exc:
        raise BundleError(f"manifest: unreadable region policy: {exc}") from None
    if not region.allows(_precision(manifest["precision"], "the bundle")):
        raise PolicyViolation(f"bundle precision {manifest['precision']} is forbidden in "
                              f"region {region.name}")
    onnx = manifest["onnx"]
    _check_file(folder, onnx.get("file", ""), onnx.get("sha256"), onnx.get("size"))
    check_onnx_compliance((folder / onnx["file"]).read_bytes(), region_dict)
    for entry in manifest["variants"]:
        v = Variant.from_dict(entry)
        _check_file(folder, v.file, v.sha256, v.size)
        meta, payload = artifact.read(folder / v.file)
        where = f"variant {v.target!r} ({v.file})"
        if meta.get("region", {}).get("name") != region.name:
            raise BundleError(f"{where} was built for region {meta.get('region', {}).get('name')!r}"
                              f", not this bundle's {region.name!r}")
        precision = str(meta.get("precision"))
        if not region.allows(_precision(precision, where)):
            raise PolicyViolation(f"{where} holds {precision}, which region {region.name} forbids")
        if precision != manifest["precision"]:
            raise BundleError(f"{where} holds {precision}; the region's decision was "
                              f"{manifest['precision']}")
        if meta.get("source_onnx_sha256") != onnx["sha256"]:
            raise BundleError(f"{where} was not built from this bundle's ONNX")
        validate_header(meta)
        # The format comes from the bytes: an ONNX payload labelled as a plan is refused here.
        if check_payload(meta, payload) is not None:
            check_onnx_compliance(payload, region_dict)


def _resolve_install(path: Path) -> tuple[Path, Path | None]:
    """``(bundle folder, install folder or None)``; an install folder has a ``current`` pointer."""
    pointer = path / POINTER
    if not pointer.is_file():
        return path, None
    return current_dir(path), path


def load_bundle(path: str | Path, trust: TrustLike | None = None) -> Bundle:
    """Open and verify a bundle folder, or an install folder (following its ``current``).

    Args:
        path: the bundle folder, or an install folder written by :func:`pull`.
        trust: public key(s) the signature must verify with; ``None`` skips the signature check
            (for bundles you built yourself), never the hash and compliance checks.

    Raises:
        SignatureError: unsigned, untrusted, or changed (with ``trust``).
        BundleError: malformed, a file missing or changed, a variant of another region.
        PolicyViolation: a precision the region forbids.
    """
    folder, install = _resolve_install(Path(path))
    key = None
    if trust is not None:
        key = verify_bundle(folder, trust).name
    manifest = read_manifest(folder)
    verify_contents(folder, manifest)
    return Bundle(folder, manifest, install, verified_by=key)


def remove_tree(path: Path) -> None:
    """Remove a folder if present (debris of an interrupted write)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
