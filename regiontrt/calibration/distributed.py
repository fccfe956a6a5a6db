"""Calibration statistics collected on many workers and merged exactly on the driver.

The data is cut into shards (:func:`regiontrt.data.shards.shards_of`: paths or URLs, Dask bag
partitions or array blocks, runs of in-memory batches); each worker runs the model on its shards
through ONNX Runtime, one batch at a time as a single process does, and returns its per-tensor
:class:`~regiontrt.calibration.stats.TensorStats`; the driver merges them.

Exactness: min, max, counts are exact by nature. Histograms are exact bit for bit because every
worker starts from the range a single pass would start from: one small task first runs the first
batch and reads each tensor's ``|x|`` maximum (a single pass's first range), every shard is then
seeded with it, and ranges only grow by powers of two from there, which
:meth:`TensorStats.merge` adds exactly. A tensor that is all zeros in the first batch has no
seed: its first non-zero shard (in order) sets the range, as a single pass would, and any later
shard whose own range is not a power of two apart from it is read again seeded with it (a second
pass over those shards only, for those tensors only).

Executors: anything with ``submit`` returning futures with ``result()`` (a
``concurrent.futures`` pool, ``Client.get_executor()``), or a ``dask.distributed.Client`` itself
(recognised by duck typing; the model is then scattered to the workers once). A worker that dies
is Dask's to retry (its scheduler reruns lost tasks); a ``ProcessPoolExecutor`` whose worker
dies is broken and the calibration fails with :class:`~regiontrt.errors.BuildError`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from regiontrt.calibration.collect import fold_batches
from regiontrt.calibration.stats import TensorStats
from regiontrt.data.shards import Shard, shards_of
from regiontrt.data.sources import DataSource
from regiontrt.errors import BuildError, DataError, InvalidArgumentError, RegionTRTError
from regiontrt.graph.io import TensorSpec

log = logging.getLogger("regiontrt.calibration")

#: A list of in-memory batches is cut into at most this many shards.
MEMORY_PARTS = 16


def is_dask_client(executor: Any) -> bool:
    """Whether ``executor`` looks like a ``dask.distributed.Client`` (no Dask import)."""
    return all(hasattr(executor, a) for a in ("submit", "scatter", "gather", "scheduler_info"))


def check_executor(executor: Any) -> None:
    """Refuse an object that cannot run tasks.

    Raises:
        InvalidArgumentError: ``executor`` has no callable ``submit``.
    """
    if not callable(getattr(executor, "submit", None)):
        raise InvalidArgumentError(
            "executor must be a concurrent.futures executor or a dask.distributed Client, not "
            f"{type(executor).__name__}")


@dataclass
class ShardResult:
    """What a worker returns for one shard."""

    stats: dict[str, TensorStats]
    num_batches: int
    num_samples: int
    fingerprint: str


@dataclass
class CollectedStatistics:
    """Merged statistics of every shard.

    Attributes:
        stats: ``{tensor: TensorStats}``, equal to a single pass's.
        num_batches: batches read (first pass).
        num_samples: samples read (first pass).
        fingerprint: SHA-256 over the shards' own data fingerprints, in order (not the
            single-pass fingerprint, which chains every batch).
        shards: how many shards.
        reread: ``(shard, tensor)`` pairs read a second time to align their ranges.
    """

    stats: dict[str, TensorStats]
    num_batches: int
    num_samples: int
    fingerprint: str
    shards: int
    reread: int = 0


def shard_statistics(
    model: bytes, shard: Shard, inputs: Sequence[TensorSpec], split: tuple[int, int] | None,
    tensors: Sequence[str], types: Mapping[str, int], num_bins: int, histogram: bool,
    seeds: Mapping[str, float], max_batches: int | None = None,
) -> ShardResult:
    """Run on a worker: the statistics of ``tensors`` over one shard, ranges seeded by ``seeds``.

    Batches are read and folded one at a time (:func:`fold_batches`), so a worker's memory is
    one batch's activations plus the fixed-size statistics, whatever the shard's size.
    """
    proto = onnx.load_from_string(model)
    source = DataSource(shard.raw, inputs, split=split, max_batches=max_batches)
    stats = {t: TensorStats(num_bins=num_bins, histogram=histogram,
                            hist_max=float(seeds.get(t, 0.0)) if histogram else 0.0)
             for t in tensors}
    fold_batches(proto, source, list(tensors), types,
                 lambda name, arr: stats[name].update(arr), f"calibration shard {shard.describe()}")
    return ShardResult(stats, source.num_batches, source.num_samples, source.fingerprint)


class _Runner:
    """Submits shard tasks to an executor and waits for them with typed errors."""

    def __init__(self, executor: Any, model: onnx.ModelProto, data: DataSource,
                 types: Mapping[str, int], num_bins: int, histogram: bool) -> None:
        self.executor = executor
        payload: Any = model.SerializeToString()
        if is_dask_client(executor):  # ship the model once per worker, not once per task
            payload = executor.scatter(payload, broadcast=True)
        self.common = (payload,)
        self.inputs, self.split = data.inputs, data.split
        self.types, self.num_bins, self.histogram = dict(types), num_bins, histogram

    def submit(self, shard: Shard, tensors: Sequence[str], seeds: Mapping[str, float],
               max_batches: int | None = None) -> Any:
        return self.executor.submit(
            shard_statistics, *self.common, shard, self.inputs, self.split, list(tensors),
            self.types, self.num_bins, self.histogram, dict(seeds), max_batches)

    @staticmethod
    def wait(future: Any, shard: Shard) -> ShardResult:
        try:
            result = future.result()
        except RegionTRTError:
            raise
        except Exception as exc:  # a broken pool, a lost cluster, an unpicklable payload...
            raise BuildError(
                f"calibration of shard {shard.describe()} failed on its worker: "
                f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(result, ShardResult):
            raise BuildError(f"calibration shard {shard.describe()}: the executor returned "
                             f"{type(result).__name__}, not a ShardResult")
        return result


def _seeds(runner: _Runner, first: Shard, tensors: Sequence[str]) -> dict[str, float]:
    """Each tensor's first range: its ``|x|`` maximum over the first batch (0 left out)."""
    if not runner.histogram:
        return {}
    probe = runner.wait(runner.submit(first, tensors, {}, max_batches=1), first)
    return {t: st.hist_max for t, st in probe.stats.items() if st.hist_max > 0.0}


def distributed_statistics(
    model: onnx.ModelProto, data: DataSource, tensors: Sequence[str], types: Mapping[str, int],
    *, executor: Any, num_bins: int = 2048, histogram: bool = True,
) -> CollectedStatistics:
    """Statistics of ``tensors`` over ``data``, shards run on ``executor``, merged exactly.

    Args:
        model: the model to run (already named and upgraded as the calibrator wants).
        data: the calibration data; its source must be shardable (see
            :func:`~regiontrt.data.shards.shards_of`).
        tensors: the tensors (resolved), and ``types`` their element types.
        executor: a ``concurrent.futures`` executor or a ``dask.distributed.Client``.
        num_bins: histogram bins; ``histogram``: whether to build histograms.

    Raises:
        DataError: the source cannot be cut into shards, or a shard is empty or mis-shaped.
        BuildError: a worker failed in a way the executor did not recover from.
    """
    check_executor(executor)
    shards = shards_of(data.source, MEMORY_PARTS)
    if not shards:
        raise DataError(
            f"calibration data of type {type(data.source).__name__} cannot be cut into shards "
            "for distributed calibration: pass paths or URLs of .npz/.npy files or folders, a "
            "Dask bag or array, or a list of batches (see docs/data.md)")
    runner = _Runner(executor, model, data, types, num_bins, histogram)
    seeds = _seeds(runner, shards[0], tensors)
    futures = [runner.submit(s, tensors, seeds) for s in shards]
    merged = {t: TensorStats(num_bins=num_bins, histogram=histogram) for t in tensors}
    again: dict[int, dict[str, float]] = {}
    digest = hashlib.sha256()
    batches = samples = 0
    try:
        for i, (shard, future) in enumerate(zip(shards, futures)):
            result = runner.wait(future, shard)
            futures[i] = None  # drop the reference: Dask may free the result
            batches, samples = batches + result.num_batches, samples + result.num_samples
            digest.update(f"{i}|{result.num_batches}|{result.fingerprint}|".encode())
            for t, st in result.stats.items():
                if merged[t].aligned(st):
                    merged[t].merge(st)
                else:  # a range started elsewhere: read again from the anchored range
                    again.setdefault(i, {})[t] = merged[t].hist_max
        _reread(runner, shards, again, merged)
    finally:
        for future in futures:
            if future is not None:
                future.cancel()
    log.info("distributed calibration: %d tensors over %d shards (%d batches, %d samples); "
             "%d tensor ranges read again", len(merged), len(shards), batches, samples,
             sum(len(v) for v in again.values()))
    return CollectedStatistics(merged, batches, samples, digest.hexdigest(), len(shards),
                               sum(len(v) for v in again.values()))


def _reread(runner: _Runner, shards: Sequence[Shard], again: Mapping[int, Mapping[str, float]],
            merged: dict[str, TensorStats]) -> None:
    """Read shards again for the tensors whose range did not line up, seeded with it."""
    pending = [(i, runner.submit(shards[i], list(seeds), seeds)) for i, seeds in again.items()]
    for i, future in pending:
        result = runner.wait(future, shards[i])
        for t, st in result.stats.items():
            merged[t].merge(st)  # seeded with the merged range: always aligned
