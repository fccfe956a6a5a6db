"""The ONNX Runtime backend: the CPU reference executor and the runtime where TensorRT is absent.

Its payload is the precision-compiled ONNX model itself, so an engine built here carries exactly
the graph a TensorRT build would parse.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from ..errors import BuildError, InputError
from ..graph.io import input_specs, load_model, model_bytes, output_specs
from .base import Backend, BuildRequest, BuildResult, Runner, cast_feeds


def make_session(model: onnx.ModelProto | bytes, options: Any = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU for ``model``."""
    import onnxruntime as ort

    data = model if isinstance(model, bytes) else model_bytes(model)
    so = options if options is not None else ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX payload with ONNX Runtime on the CPU."""

    def __init__(self, payload: bytes, options: Any = None) -> None:
        model = load_model(payload, check=False)
        self.inputs = input_specs(model)
        self.outputs = output_specs(model)
        self._session: Any = make_session(payload, options)

    def run(self, feeds: Mapping[str, Any], *, outputs: str = "host") -> dict[str, Any]:
        if outputs != "host":
            raise InputError("the onnxruntime backend returns host arrays only (outputs='host')")
        if self._session is None:
            raise InputError("this engine was closed")
        names = [o.name for o in self.outputs]
        values = self._session.run(names, cast_feeds(feeds, self.inputs))
        return {n: np.asarray(v) for n, v in zip(names, values)}

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
        import onnxruntime as ort

        payload = model_bytes(request.model)
        so = ort.SessionOptions()
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

    def load(self, payload: bytes, metadata: Mapping[str, Any]) -> Runner:
        return OnnxRuntimeRunner(payload)
