"""The two kinds of build task, run on any ``concurrent.futures.Executor`` (process pool, Dask).

Tasks take and return plain data (bytes, strings, dicts): they rely on no state of the process
that submitted them, so they run the same in a local process pool and on a Dask worker on another
machine. They never raise: an error comes back as a string, because exception objects of the
library do not all survive pickling, and one failed cell must not stop the others.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping
from typing import Any

from regiontrt.deploy._threads import limit_onnxruntime_threads
from regiontrt.errors import RegionTRTError
from regiontrt.runtime import artifact
from regiontrt.runtime.engine import FLEET_BUILT, Engine


def _error(exc: BaseException) -> str:
    """One line for a fleet cell: the setting an error names, spelled as the fleet file's key."""
    text = exc.render("fleet") if isinstance(exc, RegionTRTError) else str(exc)
    lines = text.strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _share_cores(job: Mapping[str, Any]) -> None:
    """Give this process's ONNX Runtime sessions the job's thread count (see :mod:`._threads`)."""
    if job.get("threads"):
        limit_onnxruntime_threads(int(job["threads"]))


def decide_region(job: Mapping[str, Any]) -> dict[str, Any]:
    """Decide a region's precision once: build its ONNX Runtime engine under its policy.

    Args:
        job: ``model`` (ONNX bytes), ``region`` (:meth:`RegionSpec.to_job`), ``shape_profile``;
            optional ``threads``: ONNX Runtime intra-op threads for this process's sessions.

    Returns:
        ``{"ok": True, "engine": container bytes, "seconds": ...}`` or
        ``{"ok": False, "error": "...", "detail": traceback, "seconds": ...}``.
    """
    from regiontrt.build.builder import RegionalEngineBuilder
    from regiontrt.deploy.fleet import read_npz_batches
    from regiontrt.precision.policy import PrecisionPolicy
    from regiontrt.precision.regions import Region

    started = time.perf_counter()
    spec = job["region"]
    try:
        _share_cores(job)
        builder = (RegionalEngineBuilder.from_onnx(job["model"])
                   .for_region(Region.from_dict(spec["name"], spec["region"]))
                   .with_backend("onnxruntime"))
        if job.get("shape_profile"):
            builder = builder.with_shape_profile(job["shape_profile"])
        if spec.get("precisions") or not spec.get("search_mixed", True):
            builder = builder.with_precision(PrecisionPolicy(
                list(spec["precisions"]) if spec.get("precisions") else None,
                search_mixed=bool(spec.get("search_mixed", True))))
        if spec.get("validation"):
            builder = builder.with_validation(read_npz_batches(spec["validation"]),
                                              metric=spec.get("metric"))
        if spec.get("calibration"):
            builder = builder.with_calibrator(spec.get("calibrator") or "entropy",
                                              data=read_npz_batches(spec["calibration"]))
        engine = builder.build()
        return {"ok": True, "engine": engine.to_bytes(),
                "seconds": time.perf_counter() - started}
    except Exception as exc:  # reported in the cell table; see the module docstring
        return {"ok": False, "error": _error(exc), "detail": traceback.format_exc(),
                "seconds": time.perf_counter() - started}


def build_cell(job: Mapping[str, Any]) -> dict[str, Any]:
    """Build one (region, target) variant from the region's precision-compiled ONNX.

    Args:
        job: ``engine`` (the region's ONNX Runtime engine, container bytes) and ``target``
            (:meth:`TargetSpec.to_dict`); optional ``threads`` as for :func:`decide_region`.

    Returns:
        ``{"status": "built", "engine": bytes, ...}``, ``{"status": "deferred", "reason": ...}``
        (a TensorRT target this machine cannot build: the node rebuilds it from the bundled
        ONNX), or ``{"status": "failed", "error": ...}``.
    """
    from regiontrt.build.retarget import retarget
    from regiontrt.deploy.fleet import TargetSpec
    from regiontrt.deploy.hardware import tensorrt_build_blocker

    started = time.perf_counter()
    try:
        _share_cores(job)
        target = TargetSpec.from_dict(job["target"])
        metadata, payload = artifact.decode(job["engine"], "region engine")
        engine = Engine(metadata, payload, provenance=FLEET_BUILT)
        if target.backend == "tensorrt":
            blocker = tensorrt_build_blocker(target.compute_capabilities)
            if blocker is not None:
                return {"status": "deferred", "reason": f"rebuild on node: {blocker}",
                        "seconds": time.perf_counter() - started}
        variant = retarget(engine, target.backend, target.tactics(),
                           label=f"{engine.region}-{target.name}")
        return {"status": "built", "engine": variant.to_bytes(),
                "seconds": time.perf_counter() - started}
    except Exception as exc:  # reported in the cell table; see the module docstring
        return {"status": "failed", "error": _error(exc), "detail": traceback.format_exc(),
                "seconds": time.perf_counter() - started}
