"""Engine features the TensorRT runner adapts to, read from the engine and context.

* **Aliased tensors** (TensorRT 10.16+, ``ICudaEngine.get_aliased_input_tensor``): an output that
  the engine writes in place over an input (a KV-cache update, for one). TensorRT needs both bound
  to the same address; the runner gives the output its input's device buffer and always copies
  that input into it, so a caller's CUDA array is never overwritten.
* **CUDA-graph capture** (TensorRT-RTX, ``IExecutionContext.is_stream_capturable``): asked before
  each capture, so an engine that would allocate while running is run without a graph.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import Any

import numpy as np

from regiontrt.errors import ArtifactError, CudaError

__all__ = ["aliased_outputs", "capture_refusal"]


def capture_refusal(ctx: Any, stream: int) -> CudaError | None:
    """Why ``ctx`` cannot be captured into a CUDA graph on ``stream``; ``None`` if it can or
    the library cannot say.

    TensorRT-RTX has ``IExecutionContext.is_stream_capturable``: an engine built without
    ``REQUIRE_USER_ALLOCATION`` may allocate while it runs, which a capture cannot record.
    """
    check = getattr(ctx, "is_stream_capturable", None)
    if check is None or check(stream):
        return None
    return CudaError("TensorRT reports this execution context cannot be captured on its stream "
                     "(TensorRT-RTX: build with TacticSelector(cuda_graph=True), which sets "
                     "REQUIRE_USER_ALLOCATION)")


def aliased_outputs(engine: Any, io: Mapping[str, tuple[np.dtype, tuple[int, ...]]],
                    inputs: Set[str]) -> dict[str, str]:
    """Output name to the input it aliases (``ICudaEngine.get_aliased_input_tensor``, TensorRT
    10.16+: the engine writes the output in place, so both must be bound to one buffer).

    Raises:
        ArtifactError: naming the output, when its input is not one of the engine's inputs or
            holds another dtype (a buffer the runner could not share).
    """
    get = getattr(engine, "get_aliased_input_tensor", None)
    if get is None:
        return {}
    out: dict[str, str] = {}
    for name in io:
        if name in inputs:
            continue
        source = get(name)
        if not source:  # the bindings give None for an output that aliases nothing
            continue
        if source not in inputs or io[source][0] != io[name][0]:
            raise ArtifactError(
                f"engine output {name!r} aliases {source!r}, which is not an input of the same "
                "dtype; the runner cannot bind both to one buffer")
        out[name] = source
    return out
