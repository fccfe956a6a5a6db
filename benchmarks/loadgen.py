"""An open-loop load generator: requests leave on a clock, whatever the server does.

A closed loop (send, wait for the answer, send the next) slows down exactly when the server
does, so the requests a stalled server would have kept waiting are never sent and never
measured: coordinated omission. Here every request has a scheduled send time fixed before the
run (:func:`poisson_schedule`, :func:`fixed_schedule`); :func:`open_loop` starts each one at its
time as its own task, never waiting for earlier answers, and measures its latency from the
*scheduled* time, so a generator that falls behind charges its lateness to the latency too
(``send_lag_s`` says by how much it fell behind).

The same schedule drives every server through a *sender*, a coroutine that makes one request
and raises on anything but success:

* :func:`triton_sender`: ``tritonclient.http.aio``, the KServe v2 / Triton client, binary
  tensors (regiontrt's endpoint);
* :func:`json_sender`: aiohttp posting one JSON body (the peers' endpoints).

:class:`ProcessTreeCPU` reads a server's CPU time (its process and every descendant, psutil) at
each phase boundary, so each phase's CPU use is the server's alone, not the load generator's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: A sender: one request, raising on anything but success.
Sender = Callable[[], Awaitable[Any]]


@dataclass(frozen=True)
class Arrival:
    """One scheduled request: its send time (seconds from the start) and its phase."""

    at: float
    phase: str


@dataclass(frozen=True)
class Outcome:
    """What became of one scheduled request.

    Attributes:
        phase: the phase it belongs to.
        scheduled: its scheduled send time (s from the start).
        send_lag_s: how late the generator actually started it (s).
        latency_s: from the scheduled time to the whole answer read; ``None``: failed, refused
            or timed out (a miss whatever the SLA).
        error: the failure's type name, for a failed request.
    """

    phase: str
    scheduled: float
    send_lag_s: float
    latency_s: float | None
    error: str | None = None


def poisson_schedule(phases: Sequence[tuple[str, float, float]], seed: int = 0,
                     max_requests: int | None = None) -> list[Arrival]:
    """Poisson arrivals: ``phases`` is ``(name, rate per s, seconds)`` each, back to back.

    The inter-arrival gaps are exponential with the phase's mean, drawn from ``seed``, so
    every server is offered exactly the same request times.
    """
    rng = np.random.default_rng(seed)
    out: list[Arrival] = []
    start = 0.0
    for name, rate, seconds in phases:
        if rate <= 0 or seconds <= 0:
            raise ValueError(f"phase {name!r}: rate and length must be > 0")
        t = start
        while max_requests is None or len(out) < max_requests:
            t += float(rng.exponential(1.0 / rate))
            if t >= start + seconds:
                break
            out.append(Arrival(t, name))
        start += seconds
    return out


def fixed_schedule(phases: Sequence[tuple[str, float, float]]) -> list[Arrival]:
    """Evenly spaced arrivals at each phase's rate (``(name, rate per s, seconds)`` each)."""
    out: list[Arrival] = []
    start = 0.0
    for name, rate, seconds in phases:
        if rate <= 0 or seconds <= 0:
            raise ValueError(f"phase {name!r}: rate and length must be > 0")
        n = int(rate * seconds)
        out.extend(Arrival(start + i / rate, name) for i in range(n))
        start += seconds
    return out


def phase_bounds(phases: Sequence[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """``(name, start, end)`` of each phase, seconds from the start of the run."""
    out, start = [], 0.0
    for name, _, seconds in phases:
        out.append((name, start, start + seconds))
        start += seconds
    return out


async def open_loop(schedule: Sequence[Arrival], send: Sender, *, timeout_s: float = 10.0,
                    at_times: Sequence[float] = (),
                    on_time: Callable[[float], None] | None = None,
                    start: float | None = None) -> list[Outcome]:
    """Run ``schedule`` open loop through ``send``; one :class:`Outcome` per arrival, in order.

    Each request is its own task, started at its scheduled time whether or not earlier ones
    were answered; one not answered within ``timeout_s`` of its scheduled time is a miss.

    Args:
        schedule: the arrivals, in time order.
        send: makes one request.
        timeout_s: a request's longest life, from its scheduled time.
        at_times: times (s from the start) at which ``on_time`` is called, off the event loop
            (a CPU reading at each phase boundary, say), so it never delays a send.
        on_time: called with each of ``at_times``, in a worker thread.
        start: the run's time zero on ``time.perf_counter()``'s clock (system-wide on Linux, so
            several generator processes can share it); default: now.
    """
    loop = asyncio.get_running_loop()
    outcomes: list[Outcome | None] = [None] * len(schedule)
    t0 = time.perf_counter() if start is None else start

    async def one(i: int, due: float, lag: float) -> None:
        arrival = schedule[i]
        try:
            # asyncio.timeout, not wait_for: no second task a request (the generator's own
            # cost must stay small next to the server's)
            async with asyncio.timeout(timeout_s - lag):
                await send()
        except Exception as exc:  # refused, failed or late: a miss, never a crash of the run
            outcomes[i] = Outcome(arrival.phase, arrival.at, lag, None, type(exc).__name__)
            return
        outcomes[i] = Outcome(arrival.phase, arrival.at, lag, time.perf_counter() - due)

    async def ticks() -> None:
        for at in at_times:
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            if on_time is not None:
                await loop.run_in_executor(None, on_time, at)

    tick_task = asyncio.create_task(ticks())
    tasks = []
    for i, arrival in enumerate(schedule):
        due = t0 + arrival.at
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due, max(0.0, time.perf_counter() - due))))
    await asyncio.gather(*tasks)
    await tick_task
    return [o for o in outcomes if o is not None]


async def drive(schedule: Sequence[Arrival], bounds: Sequence[tuple[str, float, float]],
                client: Callable[[], Any], make_send: Callable[[Any], Sender], pid: int | None,
                *,
                timeout_s: float = 10.0, warmup: int = 20, start: float | None = None
                ) -> tuple[list[Outcome], dict[str, float | None] | None]:
    """One run: ``schedule`` through the sender ``make_send`` makes of ``client()``.

    ``client()`` is an async context manager, made here (an aiohttp client needs the running
    loop). ``warmup`` requests go first, one by one (connections opened, lazy paths taken: not
    the schedule's cost). With ``pid``, the CPU use of that process tree per phase. ``start``:
    the run's time zero, as :func:`open_loop` takes it.
    """
    cpu = ProcessTreeCPU(pid) if pid is not None else None
    async with client() as c:
        send = make_send(c)
        for _ in range(warmup):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(send(), timeout_s)
        ticks = [b[1] for b in bounds] + [bounds[-1][2]]
        outcomes = await open_loop(schedule, send, timeout_s=timeout_s,
                                   at_times=ticks if cpu else (),
                                   on_time=cpu.read if cpu else None, start=start)
    return outcomes, cpu.per_phase(bounds) if cpu else None


def triton_sender(client: Any, model: str, request: dict[str, np.ndarray],
                  outputs: Sequence[str] = ()) -> Sender:
    """One KServe v2 inference through ``tritonclient.http.aio`` (binary tensors both ways).

    Args:
        client: a ``tritonclient.http.aio.InferenceServerClient``.
        model: the model's name.
        request: the input arrays (the same for every request).
        outputs: the outputs to ask for as binary data (none named: all, as JSON).
    """
    import tritonclient.http as th

    from regiontrt.serve.protocol import datatype

    inputs = []
    for name, arr in request.items():
        item = th.InferInput(name, list(arr.shape), datatype(arr.dtype))
        item.set_data_from_numpy(np.ascontiguousarray(arr), binary_data=True)
        inputs.append(item)

    wanted = [th.InferRequestedOutput(name, binary_data=True) for name in outputs] or None

    async def send() -> Any:
        return await client.infer(model, inputs, outputs=wanted)

    return send


def json_sender(session: Any, url: str, body: bytes) -> Sender:
    """One POST of a ready JSON ``body`` through an ``aiohttp.ClientSession``; non-200 raises."""
    headers = {"Content-Type": "application/json"}

    async def send() -> bytes:
        async with session.post(url, data=body, headers=headers) as r:
            payload: bytes = await r.read()
            r.raise_for_status()
            return payload

    return send


class ProcessTreeCPU:
    """CPU seconds used by a process and all its descendants, read on demand (psutil).

    Args:
        pid: the root process (a server's).
    """

    def __init__(self, pid: int) -> None:
        import psutil

        self._root = psutil.Process(pid)
        self._last: dict[int, float] = {}  # each process's latest reading: survives its exit
        self.readings: list[tuple[float, float]] = []

    def total(self) -> float:
        """CPU seconds (user + system) of the tree so far."""
        import psutil

        procs = [self._root]
        with contextlib.suppress(psutil.Error):
            procs += self._root.children(recursive=True)
        for p in procs:
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            self._last[p.pid] = t.user + t.system
        return sum(self._last.values())

    def read(self, at: float) -> None:
        """Record the tree's total at run time ``at``."""
        self.readings.append((at, self.total()))

    def per_phase(self, bounds: Sequence[tuple[str, float, float]]) -> dict[str, float | None]:
        """Cores used on average in each phase (CPU seconds over wall seconds), from readings
        taken at every phase boundary; ``None`` where a boundary was not read."""
        got = dict(self.readings)
        out: dict[str, float | None] = {}
        for name, start, end in bounds:
            if start in got and end in got and end > start:
                out[name] = (got[end] - got[start]) / (end - start)
            else:
                out[name] = None
        first, last = bounds[0][1], bounds[-1][2]
        out["all"] = (got[last] - got[first]) / (last - first) \
            if first in got and last in got and last > first else None
        return out


def summarize(outcomes: Sequence[Outcome], bounds: Sequence[tuple[str, float, float]],
              sla_ms: float) -> dict[str, dict[str, float | int | None]]:
    """Per phase and over the run: requests, answered, p50/p99 (ms, of answered ones),
    answered per second, SLA attainment (misses count as late) and the generator's p99 lag."""
    out: dict[str, dict[str, float | int | None]] = {}
    spans = {name: end - start for name, start, end in bounds}
    spans["all"] = bounds[-1][2] - bounds[0][1]
    for phase, span in spans.items():
        rows = [o for o in outcomes if phase in ("all", o.phase)]
        ok = np.array([o.latency_s for o in rows if o.latency_s is not None]) * 1e3
        lag = np.array([o.send_lag_s for o in rows]) * 1e3
        out[phase] = {
            "requests": len(rows),
            "answered": int(ok.size),
            "p50_ms": float(np.percentile(ok, 50)) if ok.size else None,
            "p99_ms": float(np.percentile(ok, 99)) if ok.size else None,
            "throughput": ok.size / span,
            "sla_attainment": float(np.sum(ok <= sla_ms)) / len(rows) if rows else None,
            "send_lag_p99_ms": float(np.percentile(lag, 99)) if lag.size else None,
        }
    return out
