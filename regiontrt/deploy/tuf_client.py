"""The registry's TUF metadata, site side: python-tuf's ``ngclient`` over any fsspec URL.

:class:`Session` refreshes the model's metadata (root -> timestamp -> snapshot -> targets, every
check of the TUF client workflow: signatures, thresholds, versions never going back, expiry,
lengths and hashes of metadata) into a folder the install keeps, so a later pull refuses an
older state (rollback) and every pull refuses expired metadata (freeze). Bundle files are then
downloaded with the length and hashes of the verified targets metadata: streamed to disk in
chunks, cut at the signed length, hashed before anything uses them.

Trusted root: on the first pull into an install, the registry's ``root.json`` is accepted only if
its root role lists a key the site trusts (``trust=``, the same public keys that verify bundle
signatures) and that key's signature over it verifies; it is then stored in the install and
later roots are accepted only through TUF's chain (each signed by the previous root's keys).

:class:`FsspecFetcher` is the ngclient fetcher: a folder, ``file://``, ``memory://``, ``s3://``
or ``http(s)://`` (fsspec's HTTP filesystem), with a time limit per file and per pull.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_errors
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from regiontrt.deploy._util import safe_name
from regiontrt.deploy.tuf_repo import CHANNELS, MAX_METADATA, METADATA
from regiontrt.errors import (
    DowngradeError,
    RegionTRTError,
    RegistryError,
    RegistryTimeout,
    SignatureError,
    StaleMetadataError,
)
from regiontrt.runtime.trust import TrustLike, trusted_keys

CHUNK = 64 << 10
MAX_ROOT = 512_000
MAX_TIMESTAMP = 64 << 10


class FsspecFetcher(FetcherInterface):
    """Streams any fsspec URL in chunks, with a time limit per file and an overall deadline."""

    def __init__(self, *, file_timeout_s: float, deadline: float) -> None:
        self.file_timeout_s = float(file_timeout_s)
        self.deadline = deadline  # time.monotonic() value

    def _limit(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise tuf_errors.SlowRetrievalError("the pull's overall time limit was reached")
        return min(self.file_timeout_s, left)

    def _open(self, url: str, limit: float) -> Any:
        import fsspec

        if url.startswith(("http://", "https://")):
            import aiohttp

            # sock_read bounds a server that sends nothing; the loop below bounds a trickle.
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=limit, sock_read=limit)
            fs = fsspec.filesystem("http", client_kwargs={"timeout": timeout},
                                   skip_instance_cache=True)
            # Stream the body (no Range requests: plain web servers do not all serve them).
            return fs.open(url, "rb", block_size=0)
        fs, path = fsspec.core.url_to_fs(url)
        return fs.open(path, "rb")

    def _fetch(self, url: str) -> Iterator[bytes]:
        start_limit = self._limit()
        file_deadline = time.monotonic() + start_limit
        try:
            fh = self._open(url, start_limit)
        except FileNotFoundError as exc:  # ngclient reads 404 as "no newer root"
            raise tuf_errors.DownloadHTTPError(f"{url}: not found", 404) from exc
        except Exception as exc:  # fsspec back-ends raise OSError, aiohttp, botocore errors...
            if _is_timeout(exc):
                raise tuf_errors.SlowRetrievalError(f"{url}: {type(exc).__name__}") from exc
            raise tuf_errors.DownloadError(f"{url}: {type(exc).__name__}: {exc}") from exc
        return self._chunks(url, fh, file_deadline)

    def _chunks(self, url: str, fh: Any, file_deadline: float) -> Iterator[bytes]:
        with fh:
            while True:
                if time.monotonic() > min(file_deadline, self.deadline):
                    raise tuf_errors.SlowRetrievalError(
                        f"{url}: not received within the time limit "
                        f"({self.file_timeout_s:g} s per file)")
                try:
                    chunk = fh.read(CHUNK)
                except Exception as exc:
                    if _is_timeout(exc):
                        raise tuf_errors.SlowRetrievalError(
                            f"{url}: no data within the time limit") from exc
                    raise tuf_errors.DownloadError(
                        f"{url}: transfer failed: {type(exc).__name__}: {exc}") from exc
                if not chunk:
                    return
                yield chunk


def _is_timeout(exc: BaseException) -> bool:
    import asyncio

    return isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or "Timeout" in type(exc).__name__


def translate(exc: BaseException, where: str) -> RegionTRTError:
    """The typed regiontrt error for an ngclient or fetcher failure."""
    message = f"{where}: {exc}"
    if isinstance(exc, tuf_errors.ExpiredMetadataError):
        return StaleMetadataError(f"{message} (a frozen or replayed registry: the publisher must "
                                  "refresh its metadata, `regiontrt refresh`)")
    if isinstance(exc, tuf_errors.EqualVersionNumberError):
        return RegistryError(message)
    if isinstance(exc, tuf_errors.BadVersionNumberError):
        return DowngradeError(f"{message} (the registry's metadata went back to an older "
                              "state than this site has seen: a rollback attack)")
    if isinstance(exc, tuf_errors.UnsignedMetadataError):
        return SignatureError(f"{message} (not signed by the registry's trusted keys)")
    if isinstance(exc, tuf_errors.LengthOrHashMismatchError):
        return SignatureError(f"{message} (not what any trusted key signed for this file)")
    if isinstance(exc, tuf_errors.SlowRetrievalError):
        return RegistryTimeout(message)
    if isinstance(exc, tuf_errors.DownloadLengthMismatchError):
        return RegistryError(f"{message} (longer than its signed length: refused)")
    return RegistryError(f"{where}: {type(exc).__name__}: {exc}")


def _trusted_sslib_keys(trust: TrustLike) -> list[Any]:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from securesystemslib.signer import SSlibKey

    keys = []
    for path in trusted_keys(trust):
        try:
            keys.append(SSlibKey.from_crypto(load_pem_public_key(path.read_bytes())))
        except (OSError, ValueError, TypeError) as exc:
            raise SignatureError(f"trusted key {path}: unreadable public key: {exc}") from exc
    return keys


def verify_root(data: bytes, trust: TrustLike, where: str) -> None:
    """Accept a root metadata only if a trusted key is a root key and signed it.

    Raises:
        SignatureError: no trusted key among the root keys, or its signature does not verify.
        RegistryError: not root metadata.
    """
    from tuf.api.metadata import Metadata, Root

    try:
        root = Metadata[Root].from_bytes(data)
        if not isinstance(root.signed, Root):
            raise RegistryError(f"{where}: not root metadata")
        root.signed.verify_delegate(Root.type, root.signed_bytes, root.signatures)
    except RegionTRTError:
        raise
    except Exception as exc:  # tuf's DeserializationError, UnsignedMetadataError...
        raise translate(exc, where) from exc
    root_keys = set(root.signed.roles[Root.type].keyids)
    for key in _trusted_sslib_keys(trust):
        signature = root.signatures.get(key.keyid)
        if key.keyid in root_keys and signature is not None:
            try:
                key.verify_signature(signature, root.signed_bytes)
                return
            except Exception:  # securesystemslib's VerificationError, UnverifiedSignatureError
                continue
    raise SignatureError(f"{where}: the registry's root metadata is not signed by any trusted "
                         "key (trust-on-the-key: the site's public keys anchor the registry)")


class Session:
    """One pull's view of a model in a registry, through verified TUF metadata."""

    def __init__(self, registry: str, name: str, metadata_dir: Path, trust: TrustLike, *,
                 timeout_s: float, file_timeout_s: float) -> None:
        self.name = safe_name(name, "model name")
        self.base = f"{str(registry).rstrip('/')}/{self.name}/"
        self.fetcher = FsspecFetcher(file_timeout_s=file_timeout_s,
                                     deadline=time.monotonic() + float(timeout_s))
        metadata_dir.mkdir(parents=True, exist_ok=True)
        config = UpdaterConfig(root_max_length=MAX_ROOT, timestamp_max_length=MAX_TIMESTAMP,
                               snapshot_max_length=MAX_METADATA, targets_max_length=MAX_METADATA,
                               prefix_targets_with_hash=False)
        meta_url = f"{self.base}{METADATA}/"
        bootstrap = None
        if not (metadata_dir / "root.json").exists():
            bootstrap = self._call(self.fetcher.download_bytes, f"{meta_url}root.json", MAX_ROOT)
            verify_root(bootstrap, trust, f"{meta_url}root.json")
        self.updater: Updater = self._call(
            Updater, str(metadata_dir), meta_url, None, self.base, self.fetcher, config,
            bootstrap=bootstrap)

    def _call(self, func: Any, *args: Any, where: str = "", **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RegionTRTError:
            raise
        except Exception as exc:  # ngclient's RepositoryError/DownloadError, OSError, ValueError
            raise translate(exc, where or f"{self.name} in {self.base}") from exc

    def refresh(self) -> dict[str, dict[str, list[str]]]:
        """Update the metadata; returns the signed ``{version: {region: [files]}}``.

        Raises:
            StaleMetadataError, DowngradeError, SignatureError, RegistryTimeout, RegistryError.
        """
        self._call(self.updater.refresh)
        info = self._call(self.updater.get_targetinfo, CHANNELS)
        if info is None:
            return {}
        return parse_channels(info.custom.get("regiontrt"), f"{self.base}{METADATA}")

    def download(self, version: str, region: str, file: str, dest: Path) -> None:
        """Stream one bundle file to ``dest``, cut at its signed length, then check its hashes.

        Raises:
            SignatureError: the bytes are not what the targets metadata signed.
            RegistryError, RegistryTimeout: missing, too long, too slow, or interrupted.
        """
        path = f"{version}/{region}/{file}"
        info = self._call(self.updater.get_targetinfo, path)
        if info is None:
            raise RegistryError(f"{path} is not in the registry's signed targets")
        url = f"{self.base}{path}"
        self._call(self._stream, url, info.length, dest, where=url)
        with dest.open("rb") as fh:
            self._call(info.verify_length_and_hashes, fh, where=url)

    def _stream(self, url: str, length: int, dest: Path) -> None:
        received = 0
        with dest.open("xb") as out:
            for chunk in self.fetcher.fetch(url):  # chunks of at most CHUNK bytes
                received += len(chunk)
                if received > length:  # endless data: stop at the signed length
                    raise tuf_errors.LengthOrHashMismatchError(
                        f"longer than its signed length {length}: cut there")
                out.write(chunk)


def parse_channels(doc: object, where: str) -> dict[str, dict[str, list[str]]]:
    """Schema-check the signed channels (``{"versions": {version: {region: [files]}}}``).

    Raises:
        RegistryError: any other shape; BundleError: an unsafe name.
    """
    if not isinstance(doc, Mapping) or not isinstance(doc.get("versions"), Mapping):
        raise RegistryError(f"{where}: no signed channel description")
    out: dict[str, dict[str, list[str]]] = {}
    for version, regions in doc["versions"].items():
        if not isinstance(regions, Mapping):
            raise RegistryError(f"{where}: version {version!r} is not a table of regions")
        out[safe_name(version, "version")] = {}
        for region, files in regions.items():
            if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
                raise RegistryError(f"{where}: {version} {region}: files are not a list of names")
            out[version][safe_name(region, "region")] = [safe_name(f, "file") for f in files]
    return out
