"""Reading a TensorRT / TensorRT-RTX plan's header without deserializing it.

A serialized engine ("plan") starts with a small fixed header. Reading it needs neither a GPU nor
TensorRT, so an engine can be checked against the installed runtime and the local GPU before any
CUDA work, and its provenance recorded in the metadata.

Layout, all integers little-endian. What each field means, and how sure we are:

=========  ======  ==========================================================================
offset     size    field
=========  ======  ==========================================================================
0          4       magic. ``b"vtrt"`` in every TensorRT-RTX 1.7 plan (verified).
16         8       total plan size in bytes (TensorRT-RTX: verified equal to ``len(plan)``).
24         1       major version  \\
25         1       minor version   | TensorRT-RTX 1.7: verified (``1.7.1.116`` on 1.7.1.116).
26         1       patch version   | TensorRT: NVIDIA publishes no layout; the offset comes from a
27         1       build number   /  comment on NVIDIA/TensorRT#3073 (8.6 era), unverified here.
32         8       TensorRT-RTX only: bit mask of compute-capability targets (verified, below).
56         8       TensorRT-RTX only: size of the ``WGHT`` section (verified).
64         24*n    TensorRT-RTX only: section table, ``tag[4] pad[4] offset u64 size u64``, with
                   ``n`` at offset 8 (u32); tags ``ENGN`` and ``WGHT`` (verified on 1.7 plans).
=========  ======  ==========================================================================

The TensorRT-RTX compute-capability bits were found by building the same network for one target at
a time with TensorRT-RTX 1.7.1 on the CPU (``IBuilderConfig.set_compute_capability``): bit 0 is
sm75, 1 sm80, 2 sm86, 3 sm89, 4 sm120, 5 sm121; a build for ``sm89+sm120`` sets bits 3 and 4.
A build that names no target sets bits 1-6; bit 6 matches no ``ComputeCapability`` member of 1.7
(plausibly "and later" GPUs): it is kept and listed as ``"cc-bit6"``, and a GPU is never refused
on such bits (``Runtime.get_engine_validity`` decides).
TensorRT-RTX's own runtime reads the same 64 bytes
(``Runtime.engine_header_size`` is 64 on 1.7). Plans of other TensorRT-RTX releases are read the
same way but marked unverified, and their compute-capability bits are not interpreted.

For full TensorRT nothing here is authoritative (:func:`advisory_plan_header`): the version bytes
are kept as unverified metadata, a build never fails on them and a load never refuses on them;
``deserialize_cuda_engine`` decides. TensorRT-RTX versions are 1.x and TensorRT versions 8 and up,
so the major version byte tells the two formats apart even if they share a magic.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from regiontrt.errors import ArtifactError

RTX_MAGIC = b"vtrt"
#: Magics seen (RTX, verified) or reported (TensorRT, not verified here) at offset 0.
KNOWN_MAGICS = (b"vtrt", b"ftrt", b"ptrt")
HEADER_BYTES = 64
#: TensorRT-RTX 1.7 compute-capability bit -> target name (verified, see the module docstring).
RTX_CC_BITS: dict[int, str] = {0: "sm75", 1: "sm80", 2: "sm86", 3: "sm89", 4: "sm120", 5: "sm121"}
#: How a compute-capability bit outside :data:`RTX_CC_BITS` is listed (``"cc-bit6"``).
UNKNOWN_CC_PREFIX = "cc-bit"
_MIN_TRT_MAJOR = 8  # TensorRT plans with this header layout start at 8.x; RTX is 1.x.
#: TensorRT-RTX releases whose header fields were checked on real plans (major, minor).
RTX_VERIFIED = ((1, 7),)


@dataclass(frozen=True)
class PlanHeader:
    """What a plan's header says about where it runs.

    Attributes:
        format: ``"tensorrt"`` or ``"tensorrt-rtx"``.
        trt_version: version of the library that built the plan: ``"major.minor.patch.build"`` for
            TensorRT-RTX, ``"major.minor.patch"`` for TensorRT (unverified, advisory only),
            ``None`` if unreadable.
        compute_capabilities: TensorRT-RTX targets, e.g. ``("sm89", "sm120")``; empty for TensorRT
            (a TensorRT plan records its GPU elsewhere, read it from the metadata's target) and
            for TensorRT-RTX releases whose bits were not verified.
        raw: every field read, for the metadata: magic, version bytes, sizes, masks, sections.
        verified: whether this layout was checked on real plans of this release (TensorRT-RTX
            1.7 only); an unverified header is metadata, never a reason to refuse a plan.
    """

    format: str
    trt_version: str | None
    compute_capabilities: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict)
    verified: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the engine metadata."""
        return {
            "format": self.format,
            "trt_version": self.trt_version,
            "compute_capabilities": list(self.compute_capabilities),
            "verified": self.verified,
            "raw": dict(self.raw),
        }


def read_plan_header(payload: bytes) -> PlanHeader:
    """Read the header of a TensorRT or TensorRT-RTX plan without deserializing it.

    Args:
        payload: the plan bytes (at least the first 64 bytes; a TensorRT-RTX plan must be whole,
            since its declared size is checked).

    Raises:
        ArtifactError: the bytes are not a plan, or a TensorRT-RTX plan is truncated.
    """
    data = bytes(payload[:HEADER_BYTES])
    if len(data) < 32:
        raise ArtifactError(f"not a TensorRT plan: {len(payload)} bytes is shorter than its header")
    magic = data[:4]
    major, minor, patch, build = data[24:28]
    raw: dict[str, Any] = {
        "magic": magic.decode("latin-1"),
        "version_bytes": [major, minor, patch, build],
        "declared_size": struct.unpack_from("<Q", data, 16)[0],
    }
    if magic == RTX_MAGIC and 1 <= major < _MIN_TRT_MAJOR:
        return _read_rtx(payload, data, raw)
    if _MIN_TRT_MAJOR <= major < 64 and minor < 100:
        raw["verified"] = False  # layout from an issue comment, never checked on real bytes
        raw["magic_known"] = magic in KNOWN_MAGICS
        return PlanHeader("tensorrt", f"{major}.{minor}.{patch}", (), raw)
    raise ArtifactError(
        f"not a TensorRT or TensorRT-RTX plan: magic {magic!r}, version bytes "
        f"{major}.{minor}.{patch}.{build} are not plausible"
    )


def advisory_plan_header(payload: bytes) -> PlanHeader:
    """:func:`read_plan_header` for full TensorRT plans, which never raises.

    The result is metadata only: ``verified`` is false for TensorRT, and bytes that do not parse
    give a header with ``trt_version=None`` and the reason in ``raw["error"]``, so neither a build
    nor a load depends on a layout NVIDIA does not publish.
    """
    try:
        return read_plan_header(payload)
    except ArtifactError as exc:
        return PlanHeader("tensorrt", None, (), {"error": str(exc), "verified": False})


def _read_rtx(payload: bytes, data: bytes, raw: dict[str, Any]) -> PlanHeader:
    if len(data) < HEADER_BYTES:
        raise ArtifactError(f"truncated TensorRT-RTX plan: {len(payload)} bytes")
    if raw["declared_size"] != len(payload):
        raise ArtifactError(
            f"truncated or padded TensorRT-RTX plan: the header declares {raw['declared_size']} "
            f"bytes, the payload has {len(payload)}"
        )
    major, minor, patch, build = raw["version_bytes"]
    verified = (major, minor) in RTX_VERIFIED
    mask = struct.unpack_from("<Q", data, 32)[0]
    unknown = [bit for bit in range(64) if mask >> bit & 1 and bit not in RTX_CC_BITS]
    # an unknown bit is kept, as "cc-bit6": a target newer than the table ("and later"?); it is
    # reported, never guessed at, and never a reason to refuse a GPU (the runtime decides)
    ccs = tuple(name for bit, name in sorted(RTX_CC_BITS.items()) if mask >> bit & 1) + tuple(
        f"{UNKNOWN_CC_PREFIX}{bit}" for bit in unknown)
    if not verified:  # another release may number its targets differently: do not guess
        ccs = ()
    raw.update(
        verified=verified,
        cc_mask=mask,
        unknown_cc_bits=unknown,
        weights_bytes=struct.unpack_from("<Q", data, 56)[0],
        sections=_rtx_sections(payload),
    )
    return PlanHeader("tensorrt-rtx", f"{major}.{minor}.{patch}.{build}", ccs, raw, verified)


def _rtx_sections(payload: bytes) -> list[dict[str, Any]]:
    """The section table after the header; empty when it does not look like one."""
    count = struct.unpack_from("<I", payload, 8)[0]
    end = HEADER_BYTES + 24 * count
    if not 0 < count <= 16 or len(payload) < end:
        return []
    out = []
    for i in range(count):
        tag, offset, size = struct.unpack_from("<4s4xQQ", payload, HEADER_BYTES + 24 * i)
        if offset + size > len(payload):
            return []
        out.append({"tag": tag[::-1].decode("latin-1"), "offset": offset, "size": size})
    return out


def same_release(a: str | None, b: str | None) -> bool:
    """Whether two version strings name the same major.minor.patch release.

    Plans are tied to the exact release that built them; the build number is not compared since
    a TensorRT plan's header is only thought to carry three version bytes.
    """
    if not a or not b:
        return False
    return a.split(".")[:3] == b.split(".")[:3]


def sm_name(major: int, minor: int) -> str:
    """``(8, 9)`` -> ``"sm89"``."""
    return f"sm{major}{minor}"
