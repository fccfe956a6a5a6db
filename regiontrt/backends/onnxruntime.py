"""The ONNX Runtime backend: the CPU reference executor and the runtime where TensorRT is absent.

Its payload is the precision-compiled ONNX model itself, so an engine built here carries exactly
the graph a TensorRT build would parse.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from regiontrt.backends.base import Backend, BuildRequest, BuildResult, Runner
from regiontrt.errors import BuildError, IncompatibleEngineError, InputError
from regiontrt.graph.arithmetic import (
    Int8Arithmetic,
    cast_feeds,
    cpu_differences,
    make_session,
    no_spinning,
    session_options,
)
from regiontrt.graph.io import input_specs, load_model, model_bytes, output_specs

log = logging.getLogger("regiontrt.runtime.engine")


def runtime_arithmetic(metadata: Mapping[str, Any]) -> tuple[Int8Arithmetic, str]:
    """The int8 arithmetic an engine runs in on this machine, and a note for the operator.

    An engine checked in TensorRT's arithmetic runs in it everywhere. One checked on ONNX
    Runtime's fused kernels runs them; where this CPU's int8 features differ from those it was
    checked on, its region's ``cpu_mismatch`` decides: ``warn`` (run fused, say so),
    ``refuse``, or ``portable`` (run TensorRT's arithmetic, whose loss the build recorded).
    Engines from before the record existed were checked fused and run fused.

    Raises:
        IncompatibleEngineError: the region refuses a CPU that differs, or asks for the
            portable arithmetic where the build recorded no portable loss within budget.
    """
    evaluation = metadata.get("evaluation")
    if not isinstance(evaluation, Mapping):
        return Int8Arithmetic.FUSED, ""
    try:
        mode = Int8Arithmetic.parse(evaluation.get("int8_arithmetic", "fused"))
    except ValueError as exc:
        raise IncompatibleEngineError(f"engine metadata: {exc}") from None
    if mode is Int8Arithmetic.TENSORRT or metadata.get("precision") != "int8":
        return mode, ""
    differs = cpu_differences(evaluation.get("cpu"))
    if not differs:
        return mode, ""
    found = metadata.get("region")
    region: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    policy = region.get("cpu_mismatch", "warn")
    what = (f"int8 was checked on ONNX Runtime's fused kernels of a CPU that differs from this "
            f"one ({'; '.join(differs)}), and fused int8 results depend on those features")
    if policy == "refuse":
        raise IncompatibleEngineError(
            f"{what}: region {region.get('name')!r} refuses it (cpu_mismatch = refuse); "
            "rebuild on a CPU like this one, or in the tensorrt arithmetic"
        )
    if policy == "portable":
        loss, budget = evaluation.get("portable_loss"), region.get("budget")
        if not isinstance(loss, (int, float)) or not isinstance(budget, (int, float)) \
                or not loss <= budget:
            raise IncompatibleEngineError(
                f"{what}: region {region.get('name')!r} asks for the portable arithmetic, but "
                f"the build recorded no loss within budget in it (loss {loss!r}, budget "
                f"{budget!r}); rebuild in the tensorrt arithmetic"
            )
        return Int8Arithmetic.TENSORRT, (f"{what}: running TensorRT's arithmetic instead (loss "
                                         f"{loss:.4g} at build, budget {budget:.4g})")
    return mode, (f"{what}: running them anyway (cpu_mismatch = warn); re-check on this site's "
                  "data with Engine.validate(data, reference_model)")


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX payload with ONNX Runtime on the CPU."""

    def __init__(self, payload: bytes, options: Any = None,
                 arithmetic: Int8Arithmetic = Int8Arithmetic.FUSED) -> None:
        model = load_model(payload, check=False)
        self.inputs = input_specs(model)
        self.outputs = output_specs(model)
        self.arithmetic = arithmetic
        self._session: Any = make_session(payload, session_options(arithmetic, options=options))
        # resolved once: the per-call path builds no name lists and copies no ready arrays
        self._output_names = [o.name for o in self.outputs]
        self._dtypes = {s.name: s.dtype for s in self.inputs}

    def run(self, feeds: Mapping[str, Any], *, outputs: str = "host") -> dict[str, Any]:
        if outputs != "host":
            raise InputError("the onnxruntime backend returns host arrays only (outputs='host')")
        session = self._session
        if session is None:
            raise InputError("this engine was closed")
        dtypes = self._dtypes
        for name, value in feeds.items():  # arrays in the declared dtype and C order go as is
            if type(value) is not np.ndarray or value.dtype != dtypes.get(name) \
                    or not value.flags.c_contiguous:
                feeds = cast_feeds(feeds, self.inputs)
                break
        values = session.run(self._output_names, feeds)
        return {n: v if type(v) is np.ndarray else np.asarray(v)
                for n, v in zip(self._output_names, values)}

    def close(self) -> None:
        self._session = None


class OnnxRuntimeBackend(Backend):
    """Builds an ONNX payload (the compiled graph, checked by creating a session)."""

    name = "onnxruntime"
    extra = None
    payload_format = "onnx"

    @classmethod
    def is_available(cls) -> bool:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False
        return True

    def version(self) -> str:
        import onnxruntime

        return str(onnxruntime.__version__)

    def build(self, request: BuildRequest) -> BuildResult:

        payload = model_bytes(request.model)
        so = session_options()
        request.tactics.configure_onnxruntime(so)
        try:
            make_session(payload, so)
        except Exception as exc:
            raise BuildError(f"onnxruntime cannot load the compiled model: {exc}") from None
        return BuildResult(
            payload=payload,
            payload_format=self.payload_format,
            backend_version=self.version(),
            target="cpu",
            runnable_here=True,
            info={"nodes": len(request.model.graph.node)},
        )

    def check_compatible(self, metadata: Mapping[str, Any]) -> None:
        runtime_arithmetic(metadata)

    def load(self, payload: bytes, metadata: Mapping[str, Any]) -> Runner:
        mode, note = runtime_arithmetic(metadata)
        if note:
            log.warning("region %s: %s", (metadata.get("region") or {}).get("name"), note)
        return OnnxRuntimeRunner(payload, options=runtime_options(metadata), arithmetic=mode)


def runtime_options(metadata: Mapping[str, Any]) -> Any:
    """Session options of a loaded engine, from its tactics: ``cpu_threads`` (within this host's
    CPUs: a file's metadata is not trusted to size a thread pool) and spinning off unless
    ``cpu_spinning`` is true."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    found = metadata.get("tactics")
    tactics: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    threads = tactics.get("cpu_threads")
    if type(threads) is int and threads > 0:
        so.intra_op_num_threads = min(threads, os.cpu_count() or 1)
    return so if tactics.get("cpu_spinning") is True else no_spinning(so)
