"""One built engine of a bundle, as its manifest lists it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from regiontrt.deploy._util import safe_name
from regiontrt.errors import BundleError


@dataclass(frozen=True)
class Variant:
    """One built engine of a bundle, as the manifest lists it."""

    target: str
    backend: str
    file: str
    sha256: str
    size: int
    role: str | None = None
    compute_capabilities: tuple[str, ...] = ()
    payload_format: str = ""
    precision: str = ""
    toolchain: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Variant:
        try:
            return cls(
                target=safe_name(d["target"], "variant target"),
                backend=str(d["backend"]), file=safe_name(d["file"], "variant file"),
                sha256=str(d["sha256"]), size=int(d["size"]), role=d.get("role"),
                compute_capabilities=tuple(d.get("compute_capabilities") or ()),
                payload_format=str(d.get("payload_format", "")),
                precision=str(d.get("precision", "")), toolchain=dict(d.get("toolchain") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"manifest: malformed variant entry: {exc!r}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "backend": self.backend, "file": self.file,
                "sha256": self.sha256, "size": self.size, "role": self.role,
                "compute_capabilities": list(self.compute_capabilities),
                "payload_format": self.payload_format, "precision": self.precision,
                "toolchain": dict(self.toolchain)}
