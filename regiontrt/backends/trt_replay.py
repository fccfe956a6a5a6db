"""The steady-state call of :class:`~.trt_runner.TensorRTRunner`: the same shapes as last time.

Serving calls one engine with the same input shapes over and over. After a call has switched the
profile, set the shapes, grown the buffers and bound the addresses, everything but the data is
known, so :class:`Replay` records it once (pinned views, device and host addresses, byte counts,
the raw stream) and each later call with the same shapes only copies the data in, enqueues,
copies out and synchronizes: the bare cuda-python sequence, with every CUDA error still checked
(:func:`~.cuda_calls.cuda_call`) and the runner's statistics still counted.

A :class:`~.trt_slots.Slot` drops its replay whenever it changes what the replay recorded
(profile, shapes, addresses, buffers), so a stale replay is never run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from regiontrt.backends import cuda
from regiontrt.backends.cuda_calls import cuda_call
from regiontrt.errors import CudaError
from regiontrt.graph.io import TensorSpec

if TYPE_CHECKING:
    from regiontrt.backends.trt_slots import RunnerStats, Slot

__all__ = ["Replay", "host_shapes"]

_H2D, _D2H = 1, 2  # cudaMemcpyKind values, fixed by the CUDA ABI


class Replay:
    """A slot's recorded call for profile ``key[0]`` and input shapes ``key[1]``.

    Args:
        slot: the slot, right after a plain call with host inputs and host outputs at these
            shapes (its profile, shapes, buffers and addresses are those of that call).
        key: ``(profile, input shapes in the engine's input order)``.
        inputs: the engine's inputs (all fed from host arrays of their dtype).
        outputs: the engine's outputs (none data-dependent).
    """

    __slots__ = ("_d2h", "_d2h_bytes", "_h2d", "_h2d_bytes", "_handle", "_outs", "_raw", "_rt",
                 "context", "key")

    def __init__(self, slot: Slot, key: tuple[int, tuple[tuple[int, ...], ...]],
                 inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
        assert slot.stream is not None
        self.key = key
        self.context = slot.context
        self._rt = cuda._rt()
        self._raw, self._handle = slot.stream.raw, slot.stream.handle
        self._h2d: list[tuple[str, np.ndarray, int, int, int]] = []
        for spec, shape in zip(inputs, key[1], strict=True):
            view = slot.view(spec.name, spec.dtype, shape)
            self._h2d.append((spec.name, view, slot.device[spec.name].ptr,
                              slot.host[spec.name].ptr, view.nbytes))
        self._outs: list[tuple[str, np.ndarray]] = []
        self._d2h: list[tuple[int, int, int]] = []
        for spec in outputs:
            view = slot.view(spec.name, spec.dtype, slot.out_shapes[spec.name])
            self._outs.append((spec.name, view))
            if view.nbytes:  # an empty output copies nothing (cudaMemcpyAsync of 0 bytes)
                self._d2h.append((slot.host[spec.name].ptr, slot.device[spec.name].ptr,
                                  view.nbytes))
        self._h2d_bytes = sum(n for *_, n in self._h2d)
        self._d2h_bytes = sum(n for *_, n in self._d2h)

    def __call__(self, feeds: Mapping[str, np.ndarray], stats: RunnerStats) -> dict[str, Any]:
        """Copy ``feeds`` in, execute, copy out, synchronize; fresh host arrays out.

        Raises:
            CudaError: a CUDA call or the enqueue failed (the caller resets the slot).
        """
        rt, raw = self._rt, self._raw
        copy = rt.cudaMemcpyAsync
        for name, view, dst, src, nbytes in self._h2d:
            np.copyto(view, feeds[name])
            if nbytes:
                result = copy(dst, src, nbytes, _H2D, raw)
                if result[0]:
                    cuda_call(result, what=f"cudaMemcpyAsync({nbytes} bytes, kind {_H2D})")
        if not self.context.execute_async_v3(self._handle):
            raise CudaError("execute_async_v3 failed (TensorRT logged the reason)")
        for dst, src, nbytes in self._d2h:
            result = copy(dst, src, nbytes, _D2H, raw)
            if result[0]:
                cuda_call(result, what=f"cudaMemcpyAsync({nbytes} bytes, kind {_D2H})")
        cuda_call(rt.cudaStreamSynchronize(raw), what="cudaStreamSynchronize")
        stats.h2d_copies += len(self._h2d)
        stats.h2d_bytes += self._h2d_bytes
        stats.d2h_copies += len(self._outs)
        stats.d2h_bytes += self._d2h_bytes
        return {name: view.copy() for name, view in self._outs}


def host_shapes(feeds: Mapping[str, Any], specs: Sequence[tuple[str, np.dtype]]
                ) -> tuple[tuple[int, ...], ...] | None:
    """The shapes of ``feeds`` in ``specs``' order when they are exactly numpy arrays of the
    ``(name, dtype)`` pairs of ``specs``, else ``None`` (the caller takes the full path)."""
    if len(feeds) != len(specs):
        return None
    shapes = []
    for name, dtype in specs:
        value = feeds.get(name)
        if type(value) is not np.ndarray or value.dtype is not dtype:
            return None
        shapes.append(value.shape)
    return tuple(shapes)
