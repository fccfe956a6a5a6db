"""Exporting an engine's bare payload (for trtexec, Triton...) with a JSON sidecar."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from regiontrt._fs import atomic_write_all
from regiontrt.errors import ArtifactError, InvalidArgumentError

PAYLOAD_SUFFIX = {"onnx": ".onnx", "tensorrt-plan": ".plan", "tensorrt-rtx-plan": ".plan"}


def export_payload(path: str | Path, metadata: Mapping[str, Any],
                   payload: bytes) -> tuple[Path, Path]:
    """Write a bare payload and its metadata as a JSON sidecar (``<payload>.json``), both or
    neither; a path without a suffix gets the payload format's."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(f"a payload path must be a str or os.PathLike: {path!r:.60}")
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(PAYLOAD_SUFFIX.get(metadata["payload_format"], ".bin"))
    sidecar = path.with_name(path.name + ".json")
    meta = copy.deepcopy(dict(metadata))
    meta["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    meta["payload_size"] = len(payload)
    text = json.dumps(meta, indent=2, sort_keys=True).encode("utf-8")
    try:
        atomic_write_all({path: payload, sidecar: text})
    except OSError as exc:
        raise ArtifactError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path, sidecar
