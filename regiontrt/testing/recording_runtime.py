"""The runtime side of :func:`~regiontrt.testing.recording_trt.make_recording_trt`.

``Runtime.deserialize_cuda_engine`` fails the way TensorRT does, returning ``None`` after logging
an error: for ``deserialize_error``, and for a version-compatible plan that embeds the lean
runtime (a build with ``BuilderFlag.VERSION_COMPATIBLE``, marked by :data:`LEAN_MARK` at its end)
while ``engine_host_code_allowed`` is false ("you should only deserialize trusted plans this
way"). The release in a plan's header is never checked: TensorRT decides that, and this fake
accepts any.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

#: Appended by the fake builder to a plan that embeds the lean runtime (host code).
LEAN_MARK = b"+lean-runtime"
#: The ``BuilderFlag`` members the fakes know, by major version, with the bindings' values.
BUILDER_FLAGS: dict[int, dict[str, int]] = {
    10: {"VERSION_COMPATIBLE": 13, "EXCLUDE_LEAN_RUNTIME": 14},
    11: {"VERSION_COMPATIBLE": 12, "EXCLUDE_LEAN_RUNTIME": 13},
}


def runtime_fakes(calls: list[tuple[Any, ...]], deserialize_error: str | None
                  ) -> dict[str, Any]:
    """EngineInspector, IExecutionContext, ICudaEngine and Runtime."""

    class EngineInspector:
        execution_context: Any = None

        def get_engine_information(self, format: Any) -> str:
            calls.append(("inspect", format, self.execution_context))
            return json.dumps({"Layers": [
                {"Name": "conv1 + bn1 + relu1", "LayerType": "CaskConvolution",
                 "Inputs": [{"Format/Datatype": "Row major linear FP32 format"}],
                 "Outputs": [{"Format/Datatype": "Row major linear FP32 format"}]},
                {"Name": "add", "LayerType": "PointWise",
                 "Inputs": [{"Format/Datatype": "Float"}], "Outputs": []}],
                "Bindings": ["x", "y"]})

    class IExecutionContext:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[int, ...]] = {}

        def set_input_shape(self, name: str, shape: Sequence[int]) -> bool:
            self.shapes[name] = tuple(shape)
            return True

    class ICudaEngine:
        num_io_tensors = 0
        num_optimization_profiles = 0

        def create_engine_inspector(self) -> EngineInspector:
            return EngineInspector()

        def create_execution_context(self) -> IExecutionContext:
            return IExecutionContext()

    class Runtime:
        engine_host_code_allowed: bool

        def __init__(self, logger: Any) -> None:
            self.logger = logger
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
            plan = bytes(serialized_engine)
            if self.engine_host_code_allowed:
                calls.append(("engine_host_code_allowed", True))
            calls.append(("deserialize", len(plan)))
            error = deserialize_error
            if error is not None:  # what the test asked for comes first
                pass
            elif plan.endswith(LEAN_MARK) and not self.engine_host_code_allowed:
                error = ("IRuntime::deserializeCudaEngine: the plan contains host code (a lean "
                         "runtime) and engine host code is not allowed")
            if error is not None:
                self.logger.log(1, error)
                return None
            return ICudaEngine()

    return {"EngineInspector": EngineInspector, "IExecutionContext": IExecutionContext,
            "ICudaEngine": ICudaEngine, "Runtime": Runtime}
