"""The open-loop schedule sent from several processes, for rates one Python client cannot send.

One asyncio client tops out at a few thousand requests a second; past that it falls behind its
own schedule and reads answers late, and its lateness is charged to the server it measures. On a
machine with cores to spare, :func:`drive_sharded` deals the schedule round-robin to ``procs``
child processes (each its own event loop and connection pool), which start on one shared clock
(``time.perf_counter``, CLOCK_MONOTONIC on Linux, the same in every process) and send their
share at the scheduled times; the outcomes are merged. The server's CPU per phase is read here.

A sender is described by a picklable :class:`SenderSpec` (the children build the client).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks import loadgen

#: Seconds the children get to start, connect and warm up before time zero.
START_MARGIN_S = 5.0


@dataclass(frozen=True)
class SenderSpec:
    """What a child sends: ``kind`` ``"triton"`` (``tritonclient.http.aio``, binary tensors, to
    ``url`` = host:port, model ``model``, ``request`` arrays, ``outputs``) or ``"json"``
    (aiohttp POST of ``body`` to ``url``)."""

    kind: str
    url: str
    model: str = ""
    request: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    body: bytes = b""
    connections: int = 1024


def _client(spec: SenderSpec, timeout_s: float) -> Any:
    if spec.kind == "triton":
        import tritonclient.http.aio as aio

        return aio.InferenceServerClient(spec.url, conn_limit=spec.connections,
                                         conn_timeout=timeout_s)
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=spec.connections),
                                 timeout=aiohttp.ClientTimeout(total=timeout_s))


def _sender(spec: SenderSpec, client: Any) -> loadgen.Sender:
    if spec.kind == "triton":
        return loadgen.triton_sender(client, spec.model, spec.request, spec.outputs)
    return loadgen.json_sender(client, spec.url, spec.body)


def _child(spec: SenderSpec, shard: list[loadgen.Arrival],
           bounds: Sequence[tuple[str, float, float]], start: float, timeout_s: float,
           warmup: int) -> list[loadgen.Outcome]:
    outcomes, _ = asyncio.run(loadgen.drive(
        shard, bounds, lambda: _client(spec, timeout_s), lambda c: _sender(spec, c), None,
        timeout_s=timeout_s, warmup=warmup, start=start))
    return outcomes


def drive_spec(schedule: Sequence[loadgen.Arrival], bounds: Sequence[tuple[str, float, float]],
               spec: SenderSpec, pid: int | None, *, procs: int = 1, timeout_s: float = 10.0
               ) -> tuple[list[loadgen.Outcome], dict[str, float | None] | None]:
    """One run of ``schedule`` sent as ``spec`` says: from this process, or from ``procs``
    processes (:func:`drive_sharded`); with ``pid``, that process tree's CPU per phase."""
    if procs > 1:
        return drive_sharded(schedule, bounds, spec, pid, procs=procs, timeout_s=timeout_s)
    return asyncio.run(loadgen.drive(schedule, bounds, lambda: _client(spec, timeout_s),
                                     lambda c: _sender(spec, c), pid, timeout_s=timeout_s))


def drive_sharded(schedule: Sequence[loadgen.Arrival],
                  bounds: Sequence[tuple[str, float, float]], spec: SenderSpec,
                  pid: int | None, *, procs: int, timeout_s: float = 10.0, warmup: int = 20
                  ) -> tuple[list[loadgen.Outcome], dict[str, float | None] | None]:
    """Like :func:`loadgen.drive`, from ``procs`` processes; the outcomes of all, merged."""
    shards = [list(schedule[i::procs]) for i in range(procs)]
    cpu = loadgen.ProcessTreeCPU(pid) if pid is not None else None
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(procs, mp_context=ctx) as pool:
        start = time.perf_counter() + START_MARGIN_S
        futures = [pool.submit(_child, spec, shard, list(bounds), start, timeout_s,
                               -(-warmup // procs)) for shard in shards]
        reader = None
        if cpu is not None:
            ticks = [b[1] for b in bounds] + [bounds[-1][2]]
            reader = threading.Thread(target=_read_at, args=(cpu, start, ticks), daemon=True)
            reader.start()
        outcomes = [o for f in futures for o in f.result()]
        if reader is not None:
            reader.join()
    outcomes.sort(key=lambda o: o.scheduled)
    return outcomes, cpu.per_phase(bounds) if cpu else None


def _read_at(cpu: loadgen.ProcessTreeCPU, start: float, ticks: Sequence[float]) -> None:
    for at in ticks:
        time.sleep(max(0.0, start + at - time.perf_counter()))
        cpu.read(at)


def default_procs(cores: int | None = None) -> int:
    """Generator processes for a machine: one per four cores, at most four; one on a small
    machine, where more would take the cores the server needs."""
    n = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, min(4, n // 4))
