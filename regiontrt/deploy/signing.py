"""Signing and verifying bundle folders (the key handling lives in :mod:`regiontrt.runtime.trust`).

A bundle is signed as a whole folder with ``model_signing``'s elliptic-curve key signer: the
signature (``bundle.sig``, a Sigstore bundle holding a DSSE envelope over an in-toto statement)
lists the SHA-256 of every file of the folder, ``manifest.json`` included, and the manifest lists
every variant's SHA-256 again; one changed, added or removed byte anywhere fails verification.
The same signature verifies with the ``model_signing`` CLI::

    model_signing verify key BUNDLE --signature BUNDLE/bundle.sig --public_key public.pem
"""

from __future__ import annotations

from pathlib import Path

from regiontrt.errors import SignatureError
from regiontrt.runtime.trust import (
    TrustLike,
    keygen,
    sign_file,
    sign_path,
    signature_path,
    trusted_keys,
    verify_file,
    verify_path,
)

SIGNATURE_FILE = "bundle.sig"

__all__ = ["SIGNATURE_FILE", "TrustLike", "keygen", "sign_bundle", "sign_file", "signature_path",
           "trusted_keys", "verify_bundle", "verify_file"]


def sign_bundle(bundle: str | Path, key: str | Path) -> Path:
    """Sign a bundle folder; writes ``bundle/bundle.sig``."""
    folder = Path(bundle)
    if not (folder / "manifest.json").is_file():
        raise SignatureError(f"{folder} is not a bundle (no manifest.json)")
    return sign_path(folder, folder / SIGNATURE_FILE, key, [SIGNATURE_FILE])


def verify_bundle(bundle: str | Path, trust: TrustLike) -> Path:
    """Verify a bundle folder's signature with the trusted keys; returns the key that matched.

    Raises:
        SignatureError: unsigned, signed by an untrusted key, or any file changed.
    """
    folder = Path(bundle)
    return verify_path(folder, folder / SIGNATURE_FILE, trust)
