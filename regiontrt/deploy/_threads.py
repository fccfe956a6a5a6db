"""A fair share of the host's cores for each build task's ONNX Runtime sessions.

ONNX Runtime's default intra-op pool has one thread per physical core and pins its thread *i* to
core *i* in every process, whatever the process's CPU affinity (measured with onnxruntime 1.32: a
session created under ``taskset -c 0`` on a 2-core host still pins its extra thread to core 1).
N build workers on one host therefore stack N pinned threads on each core but the first: two
workers built a fleet no faster than one (``docs/benchmarks.md``, "Fleet build"), and the same
2-worker build of PP-OCRv4 rec on 2 cores took 30-40 % more worker CPU time than with one
unpinned thread per worker. A session given an explicit thread count is not pinned, so a fleet
worker makes every session it creates use ``cores // workers`` threads.

The sessions are created all over the library (calibration, precision trials, backends), each
from a fresh ``onnxruntime.SessionOptions()``; the worker swaps that class for a subclass whose
thread count starts at its share. Callers that set a thread count themselves still win.
"""

from __future__ import annotations

import os
from typing import Any

from regiontrt.errors import InvalidArgumentError

_MARK = "_regiontrt_threads"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), else the host's CPU count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_share(workers: int) -> int:
    """Intra-op threads for each of ``workers`` tasks running at once on this host (at least 1)."""
    return max(1, usable_cpus() // max(1, workers))


def onnxruntime_threads() -> int | None:
    """The thread count :func:`limit_onnxruntime_threads` set in this process, or None."""
    import onnxruntime as ort

    value = getattr(ort.SessionOptions, _MARK, None)
    return int(value) if value is not None else None


def limit_onnxruntime_threads(threads: int) -> None:
    """Make every ``onnxruntime.SessionOptions()`` this process creates use ``threads`` threads.

    Meant for build worker processes (a local pool's, or a Dask worker's); calling it again
    changes the count. Sessions already created keep theirs.

    Raises:
        InvalidArgumentError: ``threads`` < 1.
    """
    if threads < 1:
        raise InvalidArgumentError(f"threads must be >= 1, got {threads}")
    import onnxruntime as ort

    base: Any = getattr(ort.SessionOptions, "_regiontrt_base", ort.SessionOptions)

    class SharedCoreOptions(base):  # type: ignore[misc, valid-type]
        """``onnxruntime.SessionOptions`` with this worker's share of the cores (unpinned)."""

        _regiontrt_base = base

        def __init__(self) -> None:
            super().__init__()
            self.intra_op_num_threads = threads

    setattr(SharedCoreOptions, _MARK, threads)
    ort.SessionOptions = SharedCoreOptions
