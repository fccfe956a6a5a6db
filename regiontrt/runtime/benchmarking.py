"""What :meth:`Engine.benchmark <regiontrt.runtime.engine.Engine.benchmark>` reports: latency
percentiles, throughput and the region's SLA verdict, from the runner's per-call timings."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from regiontrt.backends import Runner, Timing
from regiontrt.errors import InvalidArgumentError

log = logging.getLogger("regiontrt.runtime.engine")


@dataclass(frozen=True)
class BenchmarkReport:
    """Latency statistics of :meth:`Engine.benchmark`, in milliseconds.

    ``h2d_ms``/``compute_ms``/``d2h_ms`` are means of each phase where the backend separates
    them (CUDA events on the GPU); on the CPU the whole call is compute.
    """

    backend: str
    timer: str
    iterations: int
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float
    h2d_ms: float
    compute_ms: float
    d2h_ms: float
    sla_p99_ms: float | None = None

    @property
    def meets_sla(self) -> bool | None:
        """Whether p99 is within the region's SLA (``None`` without one)."""
        return None if self.sla_p99_ms is None else self.p99_ms <= self.sla_p99_ms

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["meets_sla"] = self.meets_sla
        return d


def timings_report(backend: str, region: str, timings: Sequence[Timing], *, batch: int,
                   sla_p99_ms: float | None) -> BenchmarkReport:
    """Summarise per-call ``timings`` of a ``batch``-row input and log the result.

    Args:
        backend: the backend's name (``onnxruntime`` is timed on the host, others by CUDA events).
        region: the engine's region, for the log line.
        timings: one :class:`Timing` a timed call.
        batch: rows a call (throughput counts rows).
        sla_p99_ms: the region's p99 SLA, if it has one.
    """
    total = np.array([t.total_ms for t in timings])
    mean = float(total.mean())
    report = BenchmarkReport(
        backend=backend,
        timer="perf_counter_ns" if backend == "onnxruntime" else "cuda-events",
        iterations=len(timings),
        batch=batch,
        p50_ms=float(np.percentile(total, 50)),
        p90_ms=float(np.percentile(total, 90)),
        p99_ms=float(np.percentile(total, 99)),
        mean_ms=mean,
        throughput=batch / (mean / 1e3) if mean > 0 else float("inf"),
        h2d_ms=float(np.mean([t.h2d_ms for t in timings])),
        compute_ms=float(np.mean([t.compute_ms for t in timings])),
        d2h_ms=float(np.mean([t.d2h_ms for t in timings])),
        sla_p99_ms=sla_p99_ms,
    )
    sla = "" if report.meets_sla is None else f", SLA {report.sla_p99_ms} ms " + (
        "met" if report.meets_sla else "MISSED")
    log.info("benchmark %s: batch %d, %d runs, p50 %.3f ms, p99 %.3f ms%s", region, batch,
             len(timings), report.p50_ms, report.p99_ms, sla,
             extra={"benchmark": report.to_dict()})
    return report


def timed_calls(runner: Runner, feeds: Mapping[str, Any], iterations: int, warmup: int,
                max_seconds: float | None) -> list[Timing]:
    """``warmup`` untimed then ``iterations`` timed calls, stopping at ``max_seconds`` (warmup
    included; at least one timed call) with a warning that says how many were timed."""
    if max_seconds is not None and not (isinstance(max_seconds, (int, float))
                                        and not isinstance(max_seconds, bool) and max_seconds > 0):
        raise InvalidArgumentError(f"max_seconds must be a number > 0 or None, got {max_seconds!r}")
    deadline = None if max_seconds is None else time.perf_counter() + float(max_seconds)
    for _ in range(warmup):
        if deadline is not None and time.perf_counter() > deadline:
            break
        runner.run(feeds)
    timings: list[Timing] = []
    for _ in range(iterations):
        timings.append(runner.time_once(feeds))
        if deadline is not None and time.perf_counter() > deadline:
            break
    if len(timings) < iterations:
        warnings.warn(f"benchmark stopped after {len(timings)} of {iterations} timed calls: the "
                      f"{max_seconds:g} s budget ran out (pass max_seconds=None to time them all, "
                      "or a smaller batch)", stacklevel=3)
    return timings
