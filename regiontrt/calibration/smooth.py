"""Per-channel activation statistics for the int8 techniques (SmoothQuant, bias correction).

:func:`channel_statistics` streams the calibration data once through ONNX Runtime (the same
collection as :func:`~regiontrt.calibration.collect.collect_statistics`) and keeps, per tensor and
per channel along one axis, the largest ``|x|`` and the mean. Memory is two vectors per tensor,
whatever the number of batches.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from regiontrt.calibration.collect import as_model, as_source, fold_batches, resolve_tensors
from regiontrt.data.sources import DataLike
from regiontrt.errors import DataError
from regiontrt.graph.io import ModelSource

__all__ = ["ChannelStats", "channel_statistics"]


@dataclass
class ChannelStats:
    """Running per-channel statistics of one tensor along ``axis``.

    Attributes:
        axis: the channel axis (negative values count from the end).
        amax: largest finite ``|x|`` per channel (empty before any batch).
        total: sum of the finite values per channel (float64).
        count: finite values per channel.
    """

    axis: int
    amax: np.ndarray = field(default_factory=lambda: np.zeros(0))
    total: np.ndarray = field(default_factory=lambda: np.zeros(0))
    count: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def mean(self) -> np.ndarray:
        """Mean per channel (0 where nothing was seen)."""
        return np.where(self.count > 0, self.total / np.maximum(self.count, 1), 0.0)

    def update(self, array: np.ndarray) -> None:
        """Fold one batch in.

        Raises:
            DataError: the batch has no ``axis`` or its channel count changed.
        """
        x = np.asarray(array)
        if x.ndim == 0 or not -x.ndim <= self.axis < x.ndim:
            raise DataError(f"a tensor of rank {x.ndim} has no channel axis {self.axis}")
        x = np.moveaxis(x, self.axis, -1).reshape(-1, x.shape[self.axis]).astype(np.float64)
        finite = np.isfinite(x)
        clean = np.where(finite, x, 0.0)
        amax, total, count = np.abs(clean).max(axis=0, initial=0.0), clean.sum(0), finite.sum(0)
        with self._lock:
            if self.amax.size == 0:
                self.amax, self.total, self.count = amax, total, count.astype(np.int64)
                return
            if self.amax.shape != amax.shape:
                raise DataError(
                    f"channel count changed between batches: {self.amax.size} -> {amax.size}"
                )
            self.amax = np.maximum(self.amax, amax)
            self.total = self.total + total
            self.count = self.count + count


def channel_statistics(
    model: ModelSource,
    data: DataLike,
    tensors: Mapping[str, int],
    *,
    batch_limit: int | None = None,
) -> dict[str, ChannelStats]:
    """Per-channel ``|x|`` maxima and means of activation tensors, in one streaming pass.

    Args:
        model: the FP32 model (not modified).
        data: calibration batches (read once).
        tensors: tensor name -> channel axis (1 for NCHW convolution inputs, -1 for the last
            axis of a MatMul input).
        batch_limit: read at most this many batches.

    Raises:
        DataError: empty or mis-shaped data, unknown or non-float tensors, no such axis.
        InvalidModelError: ONNX Runtime cannot load the model.
    """
    proto = as_model(model)
    source = as_source(proto, data, batch_limit)
    names, types = resolve_tensors(proto, list(tensors))
    stats = {n: ChannelStats(axis=int(tensors[n])) for n in names}
    fold_batches(proto, source, names, types, lambda name, arr: stats[name].update(arr),
                 description="channel statistics")
    return stats
