"""The step-load runs of ``bench_serving``: every server on one schedule, in process and over HTTP.

One Poisson schedule (:mod:`benchmarks.loadgen`, open loop) is offered to each server in turn:
regiontrt's modes in process (``Server.submit``) and over HTTP (``tritonclient.http.aio``,
binary tensors, against ``regiontrt serve`` in a child process), and each peer of
:mod:`benchmarks.serving_peers` over HTTP (aiohttp, JSON) at every setting of its sweep. Each
server's CPU use is read from its process tree at every phase boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import regiontrt as rt
from benchmarks import loadgen
from benchmarks.loadgen_procs import SenderSpec, drive_spec
from benchmarks.serving_report import figures, label, peer_report, peer_settings, verdict
from regiontrt.serve.protocol import datatype

MODES = ("latency", "throughput", "adaptive")
#: A mode name ending in this runs that mode with ``shed_late`` on (``--modes adaptive+shed``).
SHED = "+shed"


def split_mode(mode: str) -> tuple[str, bool]:
    """``"adaptive+shed"`` -> ``("adaptive", True)``; a plain mode -> ``(mode, False)``."""
    return mode.removesuffix(SHED), mode.endswith(SHED)
PHASES = (("base", 1.0), ("surge", 5.0), ("recover", 1.0))
MAX_REQUESTS = 400_000  # per run: a bound on memory, far above any phase length x rate used
REQUEST_TIMEOUT_S = 10.0
CONNECTIONS = 1024  # each client's connection cap: far above what the offered load keeps open


def phases(base_rate: float, phase_s: float) -> list[tuple[str, float, float]]:
    """``(name, rate, seconds)`` of the step: base, 5x surge, back."""
    return [(name, base_rate * factor, phase_s) for name, factor in PHASES]


def _schedule(base_rate: float, phase_s: float, seed: int) -> list[loadgen.Arrival]:
    """One round's Poisson schedule; refused whole rather than cut (a cut loses its last
    phases)."""
    out = loadgen.poisson_schedule(phases(base_rate, phase_s), seed, MAX_REQUESTS)
    if len(out) == MAX_REQUESTS:
        raise ValueError(f"over {MAX_REQUESTS} requests a run: shorten --phase-s")
    return out


def inproc_capacity(server: Any, request: dict[str, np.ndarray], seconds: float = 1.5,
                    depth: int = 128) -> float:
    """Requests answered per second by ``server`` kept saturated (``depth`` always queued).

    Saturated, not closed-loop: a closed loop also counts the hand-off between the caller and
    the worker thread, which a queued load hides, so it underestimates what one-by-one serving
    absorbs, and a "surge" built on it may be none.
    """
    for _ in range(5):
        server.infer(request)
    pending: deque[Any] = deque()
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        while len(pending) < depth:
            pending.append(server.submit(request))
        pending.popleft().result(REQUEST_TIMEOUT_S)
        done += 1
    return done / (time.perf_counter() - t0)


async def _saturate_http(url: str, body: bytes, headers: dict[str, str], seconds: float,
                         depth: int) -> float:
    import aiohttp

    done = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=depth)) as session:
        t0 = time.perf_counter()

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() - t0 < seconds:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                done += r.status == 200

        await asyncio.gather(*(worker() for _ in range(depth)))
        return done / (time.perf_counter() - t0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HTTPServerProcess:
    """``regiontrt serve`` in a child process on 127.0.0.1."""

    def __init__(self, engine_path: Path, mode: str, max_batch: int, delay_ms: float,
                 sla_ms: float) -> None:
        self.port = _free_port()
        code = "import sys; from regiontrt.cli import main; sys.exit(main())"
        mode, shed = split_mode(mode)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "serve", str(engine_path), "--port", str(self.port),
             "--mode", mode, "--max-batch", str(max_batch), "--max-delay-ms", str(delay_ms),
             "--sla-ms", str(sla_ms), "--max-queue", "512", "--log-level", "warning",
             "--shed-late", "on" if shed else "off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read().decode() if self.proc.stderr else "")
        index = httpx.post(f"{self.base}/v2/repository/index", timeout=5).json()
        self.model = index[0]["name"]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class HTTPServerThread:
    """The same endpoint on a thread of this process, for engines a child cannot load (the GPU
    test double's backend exists only in this process)."""

    def __init__(self, engine: rt.Engine, mode: str, max_batch: int, delay_ms: float,
                 sla_ms: float) -> None:
        from regiontrt.serve.runner import BackgroundHTTP

        name, shed = split_mode(mode)
        server = rt.serve(engine, mode=name, max_batch=max_batch, max_delay_ms=delay_ms,
                          max_queue=512, sla_ms=sla_ms, shed_late=shed)
        self.model = next(iter(server.models))
        self._http = BackgroundHTTP(server).start()
        self.base = f"http://{self._http.url}"

    def close(self) -> None:
        self._http.stop()


def _http_server(setup: Any, engine_path: Path | None, mode: str, max_batch: int,
                 delay_ms: float) -> HTTPServerProcess | HTTPServerThread:
    if engine_path is None:
        return HTTPServerThread(setup.engine, mode, max_batch, delay_ms, setup.sla_ms)
    return HTTPServerProcess(engine_path, mode, max_batch, delay_ms, setup.sla_ms)


def http_capacity(setup: Any, engine_path: Path | None, seconds: float = 1.5,
                  depth: int = 32, mode: str = "latency", max_batch: int = 1) -> float:
    """Like :func:`inproc_capacity`, over HTTP: ``depth`` clients sending back to back."""
    server = _http_server(setup, engine_path, mode, max_batch, setup.sla_ms)
    try:
        body, headers = _binary_body(setup.request)
        url = f"{server.base}/v2/models/{server.model}/infer"
        asyncio.run(_saturate_http(url, body, headers, 0.3, depth))  # warm up
        return asyncio.run(_saturate_http(url, body, headers, seconds, depth))
    finally:
        server.close()


def _binary_body(request: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """A KServe v2 request with binary tensors (for the saturated capacity run)."""
    entries, blobs = [], []
    for name, arr in request.items():
        raw = np.ascontiguousarray(arr).tobytes()
        entries.append({"name": name, "datatype": datatype(arr.dtype), "shape": list(arr.shape),
                        "parameters": {"binary_data_size": len(raw)}})
        blobs.append(raw)
    head = json.dumps({"inputs": entries, "parameters": {"binary_data_output": True}}).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head)),
                                    "Content-Type": "application/octet-stream"}


def run_inproc(setup: Any, mode: str, schedule: list[loadgen.Arrival],
               bounds: list[tuple[str, float, float]],
               max_batch: int) -> tuple[list[loadgen.Outcome], dict[str, Any]]:
    """One step load in process: outcomes, and the server's batch figures."""
    name, shed = split_mode(mode)
    server = rt.serve(setup.engine, mode=name, max_batch=max_batch, max_delay_ms=setup.sla_ms,
                      max_queue=512, sla_ms=setup.sla_ms, shed_late=shed)
    try:
        def make_send(s: Any) -> loadgen.Sender:
            return lambda: asyncio.wrap_future(s.submit(setup.request))

        got, _ = asyncio.run(loadgen.drive(schedule, bounds, lambda: contextlib.nullcontext(server),
                                           make_send, None, timeout_s=REQUEST_TIMEOUT_S))
        stats = next(iter(server.stats().values()))
    finally:
        server.close()
    return got, {"batch_sizes": stats["batch_sizes"], "mode_switches": stats["mode_switches"]}


def run_http(setup: Any, engine_path: Path | None, mode: str, schedule: list[loadgen.Arrival],
             bounds: list[tuple[str, float, float]], max_batch: int, procs: int = 1
             ) -> tuple[list[loadgen.Outcome], dict[str, float | None] | None]:
    """One step load over HTTP through ``tritonclient.http.aio`` (from ``procs`` generator
    processes): outcomes and CPU per phase (of the server's process tree; ``None`` for a
    server on a thread of this process)."""
    server = _http_server(setup, engine_path, mode, max_batch, setup.sla_ms)
    pid = server.proc.pid if isinstance(server, HTTPServerProcess) else None
    spec = SenderSpec("triton", server.base.removeprefix("http://"), server.model,
                      dict(setup.request), tuple(o.name for o in setup.engine.outputs),
                      connections=CONNECTIONS)
    try:
        return drive_spec(schedule, bounds, spec, pid, procs=procs, timeout_s=REQUEST_TIMEOUT_S)
    finally:
        server.close()


# -- the peers' sweep ------------------------------------------------------------------------------
def _sweep_round(kind: str, onnx: str, unfused: bool, threads: int, body: bytes,
                 settings: list[tuple[int, float]], schedule: list[loadgen.Arrival],
                 bounds: list[tuple[str, float, float]], into: dict[str, Any],
                 capacity: bool = False, sla_ms: float | None = None, procs: int = 1) -> None:
    """Every setting of one peer on one round's schedule; outcomes and CPU appended to ``into``.
    Ray is started once and reconfigured in place; LitServe is started per setting, each twice
    with ``sla_ms``: its default queue timeout and one of the SLA (LitServe's own way to drop a
    backlog). With ``capacity``, the peer's saturated capacity at the last setting (the grid's
    largest batch and wait) goes to ``into["capacity_rps"]``."""
    from benchmarks.serving_peers import PeerServer, run_peer

    # The default last, so the capacity run below measures the peer as it ships.
    timeouts: list[float | None] = [sla_ms, None] if kind == "litserve" and sla_ms else [None]
    peer = None
    try:
        for queue_timeout, (batch, wait) in itertools.product(timeouts, settings):
            if queue_timeout is not None or peer is None or not peer.configure(batch, wait):
                if peer is not None:
                    peer.close()
                peer = PeerServer(kind, onnx, batch, wait, threads, unfused,
                                  queue_timeout_ms=queue_timeout)
            got, cpu = run_peer(peer, body, schedule, bounds, REQUEST_TIMEOUT_S, CONNECTIONS,
                                procs)
            name = label(batch, wait) + ("" if queue_timeout is None else
                                         f", queue timeout {queue_timeout:g} ms")
            slot = into.setdefault(name, {"outcomes": [], "cpu": []})
            slot["outcomes"].extend(got)
            slot["cpu"].append(cpu or {})
        if capacity and peer is not None:
            headers = {"Content-Type": "application/json"}
            into["capacity_rps"] = asyncio.run(_saturate_http(peer.url, body, headers, 3.0, 64))
    finally:
        if peer is not None:
            peer.close()


# -- the whole step --------------------------------------------------------------------------------
def step_load(setup: Any, *, transports: tuple[str, ...] = ("inproc", "http"),
              modes: tuple[str, ...] = MODES, phase_s: float = 3.0, base_frac: float = 0.3,
              max_batch: int = 32, rounds: int = 1, http_in_process: bool = False,
              peers: tuple[str, ...] = (), peer_grid: list[tuple[int, float]] | None = None,
              threads: int = 0, on_run: Callable[..., None] | None = None,
              client_procs: int = 1) -> dict[str, Any]:
    """Every mode on every transport, and every peer over HTTP, for one model.

    With ``rounds`` > 1 the servers take turns (latency, throughput, adaptive, each peer's
    sweep, latency, ...) and each pools its rounds, so a machine whose load drifts (a shared
    one) weighs on every server alike. With ``http_in_process`` regiontrt's HTTP server runs on
    a thread here instead of in a child ``regiontrt serve`` (for engines whose backend only this
    process has). ``peers`` (``"ray"``, ``"litserve"``) serve the engine's ONNX payload with
    ``threads`` intra-op threads, swept over ``peer_grid`` (default :func:`peer_settings`).
    Every HTTP run's schedule is sent from ``client_procs`` processes
    (:mod:`benchmarks.loadgen_procs`).
    """
    from regiontrt.backends.onnxruntime import runtime_arithmetic
    from regiontrt.graph.arithmetic import Int8Arithmetic

    report: dict[str, Any] = {"model": setup.name, "sla_ms": setup.sla_ms, "rounds": rounds,
                              "phase_s": phase_s, "client_procs": client_procs, "runs": {}}
    grid = peer_grid or peer_settings(setup.sla_ms)
    with tempfile.TemporaryDirectory() as tmp:
        path: Path | None = Path(tmp) / f"{setup.name}.{setup.engine.region}.engine"
        if http_in_process:
            path = None
        elif "http" in transports:
            setup.engine.save(path)
        onnx = str(setup.engine.export_payload(Path(tmp) / "model.onnx")[0]) if peers else ""
        unfused = runtime_arithmetic(setup.engine.metadata)[0] is Int8Arithmetic.TENSORRT
        for transport in transports:
            if transport == "inproc":
                with rt.serve(setup.engine, mode="latency", max_queue=512) as server:
                    cap = inproc_capacity(server, setup.request)
            else:
                cap = http_capacity(setup, path)
                run_batched = http_capacity(setup, path, 3.0, 64, "throughput", max_batch)
            base = base_frac * cap
            bounds = loadgen.phase_bounds(phases(base, phase_s))
            run: dict[str, Any] = {"capacity_rps": cap, "base_rps": base, "modes": {},
                                   "phase_rates": {n: r for n, r, _ in phases(base, phase_s)}}
            if transport == "http":
                run["capacity_batched_rps"] = run_batched
            pooled: dict[str, dict[str, Any]] = {m: {"outcomes": [], "cpu": []} for m in modes}
            swept: dict[str, dict[str, Any]] = {p: {} for p in peers}
            for r in range(rounds):
                schedule = _schedule(base, phase_s, seed=r)
                for mode in modes:
                    if transport == "inproc":
                        got, info = run_inproc(setup, mode, schedule, bounds, max_batch)
                        for b, n in info["batch_sizes"].items():
                            sizes = pooled[mode].setdefault("batch_sizes", {})
                            sizes[b] = sizes.get(b, 0) + n
                        pooled[mode]["mode_switches"] = (pooled[mode].get("mode_switches", 0)
                                                         + info["mode_switches"])
                    else:
                        got, cpu = run_http(setup, path, mode, schedule, bounds, max_batch,
                                            client_procs)
                        pooled[mode]["cpu"].append(cpu or {})
                    pooled[mode]["outcomes"].extend(got)
                if transport == "http":
                    body = _peer_body(setup.request)
                    for kind in peers:
                        _sweep_round(kind, onnx, unfused, threads, body, grid, schedule,
                                     bounds, swept[kind], capacity=r == 0,
                                     sla_ms=setup.sla_ms, procs=client_procs)
            for mode, got in pooled.items():
                result = {"phases": figures(got.pop("outcomes"), bounds, setup.sla_ms,
                                            got.pop("cpu")), **got}
                run["modes"][mode] = result
                if on_run:
                    on_run(setup.name, transport, mode, result)
            if transport == "http" and peers:
                run["peers"] = peer_report(swept, bounds, setup.sla_ms, grid, threads, unfused)
                run["adaptive_vs_peers"] = verdict(run)
                for kind, rep in run["peers"].items():
                    if on_run:
                        on_run(setup.name, transport, f"{kind} (best per phase)",
                               {"phases": rep["best"]})
            report["runs"][transport] = run
    return report


def _peer_body(request: dict[str, np.ndarray]) -> bytes:
    from benchmarks.serving_peers import request_body

    return request_body(request)


