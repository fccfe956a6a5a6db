"""Signatures with OpenSSF ``model-signing`` keys: key pairs, detached file signatures, trust.

Engine-level, so :func:`regiontrt.load_engine` can check a detached signature
(``<file>.engine.sig``) without the deploy layer, which signs whole bundle folders with the same
functions (:mod:`regiontrt.deploy.signing`). Signatures are Sigstore bundles (a DSSE envelope
over an in-toto statement of file digests) made with ``model_signing``'s elliptic-curve key
signer, so ``model_signing verify key FILE --signature FILE.sig --public_key public.pem`` checks
them too. ``model-signing`` comes with the ``fleet`` extra and is imported only when used.

A single ``.engine`` gets a detached ``<file>.sig`` the same way. Keys are ECDSA P-256 PEM files
(``model-signing`` accepts P-256/384/521); the private key never enters a bundle or a registry.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from regiontrt._fs import TMP_MARK, atomic_write_bytes, new_file_mode
from regiontrt.errors import ArtifactError, SignatureError
from regiontrt.runtime.artifact import read_file

PRIVATE_KEY = "private.pem"
#: Largest detached signature read (a Sigstore bundle is a few KiB).
MAX_SIGNATURE = 1 << 20
PUBLIC_KEY = "public.pem"

#: A public key file, a folder of ``*.pem`` public keys, or a list of either.
TrustLike = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def _model_signing() -> Any:
    try:
        import model_signing.hashing
        import model_signing.signing
        import model_signing.verifying
    except ImportError as exc:
        raise SignatureError(
            f"signing needs the fleet extra: pip install 'regiontrt[fleet]' ({exc})"
        ) from exc
    return model_signing


def keygen(folder: str | Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new ECDSA P-256 key pair: ``folder/private.pem`` (mode 0600) and ``public.pem``.

    Raises:
        SignatureError: a private key is already there (and ``overwrite`` is False).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = Path(folder)
    private, public = folder / PRIVATE_KEY, folder / PUBLIC_KEY
    if private.exists() and not overwrite:
        raise SignatureError(f"{private} exists; refusing to overwrite a private key")
    key = ec.generate_private_key(ec.SECP256R1())
    folder.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    atomic_write_bytes(private, pem, mode=0o600)  # written 0600 from the start
    atomic_write_bytes(public, key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def trusted_keys(trust: TrustLike) -> list[Path]:
    """The public key files named by ``trust`` (files, folders of ``*.pem``, or a list).

    Raises:
        SignatureError: no key found.
    """
    items: Iterable[Any] = [trust] if isinstance(trust, (str, os.PathLike)) else trust
    keys: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            keys.extend(sorted(p for p in path.glob("*.pem") if p.name != PRIVATE_KEY))
        elif path.is_file():
            keys.append(path)
        else:
            raise SignatureError(f"trusted key not found: {path}")
    if not keys:
        raise SignatureError(f"no public key found in {trust!r}")
    return keys


def sign_path(target: Path, signature: Path, key: str | Path, ignore: Sequence[str]) -> Path:
    """Sign a file or a folder (all its files but ``ignore``) into ``signature``."""
    ms = _model_signing()
    if not Path(key).is_file():
        raise SignatureError(f"private key not found: {key}")
    hashing = ms.hashing.Config().set_ignored_paths(paths=list(ignore), ignore_git_paths=False)
    # Written outside the signed folder first, so the signer never hashes a half-written file.
    # Named like every temporary file of ours, so a killed signer's debris is swept by the next
    # write into that folder (regiontrt._fs.sweep_stale).
    fd, tmp = tempfile.mkstemp(prefix=f".{TMP_MARK}sig-",
                               dir=target.parent if target.is_dir() else None)
    os.close(fd)
    os.chmod(tmp, new_file_mode())  # mkstemp's 0600 would hide the signature from other users
    try:
        config = ms.signing.Config().set_hashing_config(hashing)
        try:
            config.use_elliptic_key_signer(private_key=Path(key)).sign(target, Path(tmp))
        except (ValueError, TypeError, OSError) as exc:
            raise SignatureError(f"cannot sign {target} with {key}: {exc}") from exc
        shutil.move(tmp, signature)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return signature


def verify_path(target: Path, signature: Path, trust: TrustLike) -> Path:
    """Verify ``signature`` over a file or folder with any trusted key; returns that key.

    Raises:
        SignatureError: no signature, no trusted key verifies it, or a file changed.
    """
    ms = _model_signing()
    if not signature.is_file():
        raise SignatureError(f"{target} is not signed: {signature.name} is missing")
    failures = []
    for key in trusted_keys(trust):
        try:
            ms.verifying.Config().use_elliptic_key_verifier(public_key=key).verify(
                target, signature)
            return key
        except Exception as exc:  # model_signing raises ValueError, crypto and parse errors
            failures.append(f"{key.name}: {str(exc).splitlines()[0] if str(exc) else exc!r}")
    raise SignatureError(
        f"{target}: the signature does not verify with any trusted key ({'; '.join(failures)})"
    )


def signature_path(path: str | Path) -> Path:
    """Where the detached signature of a single file lives: ``<file>.sig``."""
    path = Path(path)
    return path.with_name(path.name + ".sig")


def sign_file(path: str | Path, key: str | Path) -> Path:
    """Write a detached signature ``<file>.sig`` for one file (an ``.engine``)."""
    path = Path(path)
    if not path.is_file():
        raise SignatureError(f"{path} is not a file")
    return sign_path(path, signature_path(path), key, [])


def verify_file(path: str | Path, trust: TrustLike) -> Path:
    """Check a file's detached signature; returns the key that matched.

    Raises:
        SignatureError: no signature, an untrusted key, or the file changed.
    """
    path = Path(path)
    return verify_path(path, signature_path(path), trust)


def read_verified(path: str | Path, trust: TrustLike,
                  limit: int = sys.maxsize) -> tuple[bytes, Path]:
    """Read a file once and verify its detached signature over *those bytes*.

    Verifying a path and then reopening it lets a writer swap the file in between; here the
    bytes returned are the bytes verified (checked through a private copy, as ``model_signing``
    reads paths). Returns ``(bytes, the trusted key that matched)``.

    Raises:
        SignatureError: no signature, an untrusted key, or bytes that do not match it.
        ArtifactError: the file is not a regular file, is larger than ``limit`` or unreadable.
    """
    path = Path(path)
    try:
        signature = read_file(signature_path(path), MAX_SIGNATURE)
    except ArtifactError as exc:
        raise SignatureError(f"{path} is not signed: {exc}") from exc
    data = read_file(path, limit)
    with tempfile.TemporaryDirectory(prefix="regiontrt-verify-") as tmp:
        copy = Path(tmp) / path.name
        copy.write_bytes(data)
        sig = signature_path(copy)
        sig.write_bytes(signature)
        key = verify_path(copy, sig, trust)
    return data, key
