"""The registry's TUF metadata, publisher side: what is current, signed, versioned and expiring.

Per model, beside its bundles (``<registry>/<name>/``)::

    tuf/root.json, tuf/<N>.root.json     the keys of every role (root rotation: N.root.json)
    tuf/<N>.targets.json                 every bundle file "<version>/<region>/<file>" with its
                                         length and SHA-256, and ``channels.json`` whose signed
                                         ``custom`` field lists the versions, regions and files
    tuf/<N>.snapshot.json                the version (length, hash) of targets
    tuf/timestamp.json                   the version (length, hash) of snapshot; written last

Consistent snapshots: versioned snapshot and targets files are new files, and the one mutable
file, ``timestamp.json``, is replaced with one rename after everything it names is written, so a
reader always sees one consistent state. Every role is signed with the publisher's ECDSA P-256
key (the same PEM key that signs the bundles, read with securesystemslib's ``CryptoSigner``);
sites verify the root against the public key(s) they trust (:mod:`.tuf_client`).

:func:`refresh` re-signs the timestamp (and, if asked, the snapshot) with a new expiry and a
higher version without publishing anything, so a registry that publishes rarely stays fresh.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from regiontrt.errors import RegionTRTError, RegistryError, SignatureError

METADATA = "tuf"
CHANNELS = "channels.json"
ROLES = ("root", "targets", "snapshot", "timestamp")
#: How long each role's signature stays valid, unless ``expiry=`` says otherwise. The timestamp
#: is short so a frozen registry is detected within a day; re-sign it with :func:`refresh`.
DEFAULT_EXPIRY = {
    "root": _dt.timedelta(days=365),
    "targets": _dt.timedelta(days=90),
    "snapshot": _dt.timedelta(days=7),
    "timestamp": _dt.timedelta(days=1),
}
MAX_METADATA = 16 << 20

ExpiryLike = Mapping[str, "_dt.timedelta | float"] | None


def _tuf() -> Any:
    try:
        import tuf.api.metadata as md
    except ImportError as exc:
        raise RegistryError("registries need python-tuf: pip install 'regiontrt[fleet]'") from exc
    return md


def load_signer(key: str | Path) -> Any:
    """A securesystemslib ``CryptoSigner`` for a PEM private key (as ``regiontrt keygen`` writes).

    Raises:
        SignatureError: missing, unreadable or unsupported key.
    """
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner

    try:
        private = load_pem_private_key(Path(key).read_bytes(), password=None)
        return CryptoSigner(private)  # type: ignore[arg-type]
    except (OSError, ValueError, TypeError) as exc:
        raise SignatureError(f"cannot sign registry metadata with {key}: {exc}") from exc


def expiries(expiry: ExpiryLike) -> dict[str, _dt.timedelta]:
    """The expiry of each role: :data:`DEFAULT_EXPIRY` updated with ``expiry`` (seconds or deltas).

    Raises:
        RegistryError: an unknown role or a value that is not a duration.
    """
    out = dict(DEFAULT_EXPIRY)
    for role, value in (expiry or {}).items():
        if role not in ROLES:
            raise RegistryError(f"expiry: unknown role {role!r} (one of {ROLES})")
        if isinstance(value, _dt.timedelta):
            out[role] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[role] = _dt.timedelta(seconds=float(value))
        else:
            raise RegistryError(f"expiry[{role!r}]: {value!r} is not a duration")
    return out


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0)


class Repository:
    """One model's metadata as the publisher holds it (load with :meth:`open`)."""

    def __init__(self, fs: Any, base: str, signer: Any, roles: dict[str, Any],
                 expiry: Mapping[str, _dt.timedelta]) -> None:
        self.fs, self.base, self.signer, self.roles = fs, base, signer, roles
        self.expiry = dict(expiry)
        self._dirty: set[str] = set()
        self._channels_bytes: bytes | None = None

    @classmethod
    def open(cls, fs: Any, base: str, key: str | Path, expiry: ExpiryLike = None) -> Repository:
        """Load the model's metadata from ``base`` (``<registry>/<name>``), or start it.

        Raises:
            RegistryError: existing metadata that does not verify, or is signed by another key.
        """
        md, signer, exp = _tuf(), load_signer(key), expiries(expiry)
        meta_dir = f"{base}/{METADATA}"
        if not fs.exists(f"{meta_dir}/root.json"):
            return cls._start(fs, base, signer, exp)
        try:
            root = md.Metadata.from_bytes(_cat(fs, f"{meta_dir}/root.json"))
            timestamp = md.Metadata.from_bytes(_cat(fs, f"{meta_dir}/timestamp.json"))
            snap_v = timestamp.signed.snapshot_meta.version
            snapshot = md.Metadata.from_bytes(_cat(fs, f"{meta_dir}/{snap_v}.snapshot.json"))
            targets_v = snapshot.signed.meta["targets.json"].version
            targets = md.Metadata.from_bytes(_cat(fs, f"{meta_dir}/{targets_v}.targets.json"))
            roles = {"root": root, "targets": targets, "snapshot": snapshot,
                     "timestamp": timestamp}
            for role, meta in roles.items():
                root.signed.verify_delegate(role, meta.signed_bytes, meta.signatures)
        except RegionTRTError:
            raise
        except Exception as exc:  # tuf raises its own errors, KeyError, ValueError...
            raise RegistryError(f"{meta_dir}: the registry's metadata does not verify: "
                                f"{type(exc).__name__}: {exc}") from exc
        keyid = signer.public_key.keyid
        for role in ROLES:
            if keyid not in root.signed.roles[role].keyids:
                raise RegistryError(f"{meta_dir}: the registry's {role} role is not signed by "
                                    f"this key ({Path(key).name}); use the registry's key")
        return cls(fs, base, signer, roles, exp)

    @classmethod
    def _start(cls, fs: Any, base: str, signer: Any,
               exp: Mapping[str, _dt.timedelta]) -> Repository:
        md = _tuf()
        now = _now()
        root = md.Root(expires=now + exp["root"], consistent_snapshot=True)
        for role in ROLES:
            root.add_key(signer.public_key, role)
        roles = {
            "root": md.Metadata(root),
            "targets": md.Metadata(md.Targets(expires=now + exp["targets"])),
            "snapshot": md.Metadata(md.Snapshot(expires=now + exp["snapshot"])),
            "timestamp": md.Metadata(md.Timestamp(expires=now + exp["timestamp"])),
        }
        repo = cls(fs, base, signer, roles, exp)
        repo._dirty = {"root", "targets"}
        return repo

    # -- what is published --------------------------------------------------------------------

    def channels(self) -> dict[str, dict[str, list[str]]]:
        """``{version: {region: [files]}}`` as the signed targets say."""
        info = self.roles["targets"].signed.targets.get(CHANNELS)
        custom = info.custom.get("regiontrt", {}) if info is not None else {}
        versions = custom.get("versions", {}) if isinstance(custom, dict) else {}
        return {str(v): {str(r): list(f) for r, f in regions.items()}
                for v, regions in versions.items()}

    def add_bundle(self, name: str, version: str, region: str, files: Mapping[str, Path]) -> None:
        """Record a bundle's files (lengths, hashes) as targets ``<version>/<region>/<file>``."""
        md = _tuf()
        targets = self.roles["targets"].signed.targets
        for file, local in files.items():
            path = f"{version}/{region}/{file}"
            targets[path] = md.TargetFile.from_file(path, str(local), ["sha256"])
        channels = self.channels()
        channels.setdefault(version, {})[region] = sorted(files)
        self._set_channels(name, channels)

    def _set_channels(self, name: str, channels: Mapping[str, Any]) -> None:
        md = _tuf()
        doc = {"name": name, "versions": dict(sorted(channels.items()))}
        data = json.dumps(doc, sort_keys=True).encode()
        info = md.TargetFile.from_data(CHANNELS, data, ["sha256"])
        info.unrecognized_fields["custom"] = {"regiontrt": doc}
        self.roles["targets"].signed.targets[CHANNELS] = info
        self._channels_bytes = data
        self._dirty.add("targets")

    # -- signing and writing --------------------------------------------------------------------

    def commit(self, refresh: Iterable[str] = ()) -> None:
        """Sign what changed (and the roles in ``refresh``), then write it, timestamp last.

        Raises:
            RegistryError: a write failed (the previous timestamp, hence state, stays current).
        """
        md = _tuf()
        dirty = self._dirty | set(refresh)
        if "targets" in dirty:
            dirty.add("snapshot")
        dirty.add("timestamp")
        now, meta_dir = _now(), f"{self.base}/{METADATA}"
        blobs: dict[str, bytes] = {}
        for role in ("root", "targets", "snapshot", "timestamp"):
            if role not in dirty:
                continue
            meta = self.roles[role]
            if role == "snapshot" and "targets" in blobs:  # else it names the same targets
                meta.signed.meta["targets.json"] = self._meta_file(md, blobs["targets"],
                                                                   "targets")
            if role == "timestamp" and "snapshot" in blobs:  # else it names the same snapshot
                meta.signed.snapshot_meta = self._meta_file(md, blobs["snapshot"], "snapshot")
            if meta.signatures:  # a role loaded from the registry; a new one starts at 1
                meta.signed.version += 1
            meta.signed.expires = now + self.expiry[role]
            meta.signatures.clear()
            meta.sign(self.signer, append=True)
            blobs[role] = meta.to_bytes()
        try:
            self.fs.makedirs(meta_dir, exist_ok=True)
            if self._channels_bytes is not None:
                self.fs.pipe_file(f"{self.base}/{CHANNELS}", self._channels_bytes)
            for role in ("root", "targets", "snapshot"):
                if role in blobs:
                    version = self.roles[role].signed.version
                    self.fs.pipe_file(f"{meta_dir}/{version}.{role}.json", blobs[role])
            if "root" in blobs:
                _replace(self.fs, f"{meta_dir}/root.json", blobs["root"])
            _replace(self.fs, f"{meta_dir}/timestamp.json", blobs["timestamp"])
        except Exception as exc:  # back-end write errors
            raise RegistryError(f"writing the registry's metadata to {meta_dir} failed: "
                                f"{exc}") from exc
        self._dirty.clear()

    def _meta_file(self, md: Any, blob: bytes, role: str) -> Any:
        return md.MetaFile(version=self.roles[role].signed.version, length=len(blob),
                           hashes={"sha256": hashlib.sha256(blob).hexdigest()})


def _cat(fs: Any, path: str) -> bytes:
    with fs.open(path, "rb") as fh:
        data: bytes = fh.read(MAX_METADATA + 1)
    if len(data) > MAX_METADATA:
        raise RegistryError(f"{path}: larger than {MAX_METADATA} bytes")
    return data


def _replace(fs: Any, path: str, data: bytes) -> None:
    """Write under a temporary name, then move over ``path`` (one rename on a folder)."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    fs.pipe_file(tmp, data)
    try:
        fs.mv(tmp, path)
    except Exception:
        fs.rm(tmp)
        raise
