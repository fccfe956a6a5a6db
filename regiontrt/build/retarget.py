"""Build another backend's payload from an engine whose payload is the precision-compiled ONNX.

A region's precision is decided once (:meth:`RegionalEngineBuilder.build` with the
``onnxruntime`` backend, whose payload *is* the precision-compiled graph). Every other target of
the region is built from that graph through the public :class:`~regiontrt.backends.Backend`
contract, without compiling, calibrating or validating again: the precision is already in the
graph (casts, Q/DQ), so the region's compliance and accuracy decisions carry over. This is what
the fleet matrix runs for each (region, target) cell and what an edge node runs to rebuild a plan
for its own GPU.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

from regiontrt.backends import Backend, BuildRequest, get_backend
from regiontrt.backends.tactics import TacticSelector
from regiontrt.errors import ArtifactError, PolicyViolation
from regiontrt.graph.io import load_model
from regiontrt.precision.policy import enforce_compliance
from regiontrt.precision.regions import Region
from regiontrt.precision.types import Precision
from regiontrt.runtime.engine import BUILT_HERE, Engine
from regiontrt.shapes.profiles import Profile


def source_onnx(engine: Engine) -> bytes:
    """The precision-compiled ONNX of an engine built with the ``onnxruntime`` backend.

    Raises:
        ArtifactError: the engine's payload is not ONNX.
    """
    fmt = engine.metadata.get("payload_format")
    if fmt != "onnx":
        raise ArtifactError(
            f"retargeting needs the precision-compiled ONNX (an onnxruntime engine); this "
            f"engine holds a {fmt!r} payload"
        )
    return engine.payload


def check_onnx_compliance(onnx_bytes: bytes, region: Mapping[str, Any]) -> None:
    """Refuse a graph holding a precision that ``region`` (its metadata dict) forbids.

    Also refuses external-data references: a payload handed to ONNX Runtime must be
    self-contained, since the runtime would follow those paths on the local disk.

    Raises:
        PolicyViolation: a forbidden precision in the graph.
        ArtifactError: not ONNX, or it references external data.
    """
    import onnx

    model = load_model(onnx_bytes, check=False)
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise ArtifactError(f"the ONNX graph references external data ({tensor.name!r})")
    enforce_compliance(model, Region.from_dict(str(region["name"]), region))


def retarget(
    engine: Engine,
    backend: str | Backend,
    tactics: TacticSelector | None = None,
    *,
    label: str = "",
) -> Engine:
    """Build ``backend``'s payload from ``engine``'s precision-compiled ONNX.

    Args:
        engine: an ``onnxruntime`` engine (its payload is the precision-compiled graph).
        backend: the backend to build with, by name or instance.
        tactics: builder settings (compute capabilities, optimization level...).
        label: a name for the backend's logs.

    Returns:
        A new engine with the same region, policy, precision and validation report, the new
        backend's payload and provenance, and ``source_onnx_sha256`` naming the graph it came
        from.

    Raises:
        PolicyViolation: the graph holds a precision the region forbids.
        BackendUnavailable, BuildError: the backend is missing or failed.
    """
    onnx_bytes = source_onnx(engine)
    meta = engine.metadata
    check_onnx_compliance(onnx_bytes, meta["region"])
    chosen = get_backend(backend) if isinstance(backend, str) else backend
    precision = Precision.parse(meta["precision"])
    if not Region.from_dict(meta["region"]["name"], meta["region"]).allows(precision):
        raise PolicyViolation(f"region {engine.region!r} forbids {precision.value}")
    tactics = tactics or TacticSelector()
    # An ONNX Runtime engine built without a profile has none; its record holds the profile
    # derived from the validation data, which a TensorRT build needs.
    origin = meta.get("shape_profile_origin")
    derived = origin.get("derived") if isinstance(origin, dict) else None
    profiles = [Profile.from_dict(p) for p in meta["shape_profiles"] or derived or []]
    started = time.perf_counter()
    result = chosen.build(BuildRequest(load_model(onnx_bytes, check=False), precision, profiles,
                                       tactics, label or f"{engine.region}-{precision.value}"))
    meta.update({
        "shape_profiles": [p.to_dict() for p in profiles],
        "backend": {"name": chosen.name, "version": result.backend_version},
        "payload_format": result.payload_format,
        "target": result.target,
        "build": result.info,
        "gpu": result.info.get("gpu"),
        "tactics": tactics.to_dict(),
        "source_onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "retarget_seconds": round(time.perf_counter() - started, 3),
    })
    meta["toolchain"] = {**meta.get("toolchain", {}), chosen.name: result.backend_version}
    return Engine(meta, result.payload, backend=chosen, provenance=BUILT_HERE)


__all__ = ["check_onnx_compliance", "retarget", "source_onnx"]
