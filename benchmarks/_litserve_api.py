"""LitServe's ``LitAPI`` for :mod:`benchmarks.serving_peers`, in a module of its own: LitServe
starts its inference worker by pickling the API object, which needs a module-level class (and
this module imports ``litserve`` at once, so only the LitServe child imports it)."""

from __future__ import annotations

from typing import Any

import litserve as ls
import numpy as np

from benchmarks.serving_peers import OrtModel, decode_arrays, encode_arrays


class LitOrt(ls.LitAPI):  # type: ignore[misc]
    """The ONNX model behind LitServe: JSON in and out, rows batched by ``batch``.

    Args:
        onnx: the ONNX file.
        threads: ONNX Runtime intra-op threads.
        unfused_qdq: evaluate Q/DQ unfused.
        **kwargs: ``LitAPI``'s own (``max_batch_size``, ``batch_timeout``, ``api_path``).
    """

    def __init__(self, onnx: str, threads: int, unfused_qdq: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.onnx, self.threads, self.unfused_qdq = onnx, threads, unfused_qdq

    def setup(self, device: str) -> None:
        self.model = OrtModel(self.onnx, self.threads, self.unfused_qdq)

    # Unannotated on purpose: LitServe reads the annotation as the body's type, and without
    # one it hands over the request's JSON.
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return decode_arrays(request["inputs"])

    def batch(self, inputs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return inputs  # run_batch concatenates the rows and splits the outputs back

    def predict(self, x: Any) -> Any:
        if isinstance(x, list):
            return self.model.run_batch(x)
        return self.model.run_batch([x])[0]

    def unbatch(self, output: Any) -> list[dict[str, np.ndarray]]:
        return list(output)

    def encode_response(self, output: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"outputs": encode_arrays(output)}
