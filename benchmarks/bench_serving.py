"""Serving under a step load: the three batching modes, in process and over HTTP.

The arrival rate steps from a base to 5x and back (open loop, Poisson arrivals, bounded in count
and time). The base is a fraction (``--base-frac``, 0.3) of the capacity of ``latency`` mode on
the same path, measured saturated (a full queue, so the figure is what one-by-one serving
absorbs), so the 5x surge (1.5x that capacity) is more than one-by-one serving can absorb.
``throughput`` waits up to ``max_delay_ms`` = the region's p99 SLA to fill a batch of
``--max-batch``; ``adaptive`` starts from the same settings. The modes take turns for
``--rounds`` rounds and each pools its rounds, so the drifting load of a shared machine weighs
on all three alike. Per phase: p50, p99, throughput and SLA attainment (requests refused or
failed count as misses). The peer of each mode is the other two on the same load; the ratio
printed is adaptive's attainment over the best fixed mode's, over the whole step.

It also measures the drift monitor's cost on the request path: closed-loop ``infer`` latency
with the monitor off, sampling 5 % and sampling every request.

    python -m benchmarks.bench_serving                       # demo + PP-OCRv4 rec, both paths
    python -m benchmarks.bench_serving --models demo --transports inproc --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import regiontrt as rt
from benchmarks._env import environment, finish
from regiontrt.serve.protocol import datatype

MODES = ("latency", "throughput", "adaptive")
PHASES = (("base", 1.0), ("surge", 5.0), ("recover", 1.0))
MAX_REQUESTS = 30_000  # per run, whatever the rates
REQUEST_TIMEOUT_S = 10.0


@dataclass
class Setup:
    """A model to load: its engine, one request's inputs, and its SLA."""

    name: str
    engine: rt.Engine
    request: dict[str, np.ndarray]
    sla_ms: float


def demo_setup() -> Setup:
    """The demo NA engine (int8, ONNX Runtime), one image per request, NA's 10 ms SLA."""
    from regiontrt import demo
    from regiontrt.data.sources import split_batches
    from regiontrt.demo.run import PROFILE

    d = demo.region_data("NA")
    engine = (rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region("NA")
              .with_shape_profile(PROFILE)
              .with_calibrator("entropy", data=split_batches({"input": d.calibration}, 64))
              .with_validation(split_batches({"input": d.validation}, 64)).build())
    return Setup("demo", engine, {"input": d.validation[:1]}, 10.0)


def rec_setup(sla_ms: float = 250.0) -> Setup:
    """PP-OCRv4 rec (fp32, ONNX Runtime) from the rapidocr wheel, one 48x320 line per request."""
    from benchmarks.ocr import rec_model_path

    region = rt.Region("OCR", precisions=("fp32",), budget=1e-3, metric="relative_l2",
                       latency_p99_ms=sla_ms)
    profile = {"x": [(1, 3, 48, 320), (8, 3, 48, 320), (32, 3, 48, 320)]}
    engine = (rt.RegionalEngineBuilder.from_onnx(rec_model_path()).for_region(region)
              .with_shape_profile(profile).build())
    x = np.random.default_rng(0).random((1, 3, 48, 320), dtype=np.float32)
    return Setup("pp-ocrv4-rec", engine, {"x": x}, sla_ms)


# -- load generation -------------------------------------------------------------------------------
def arrivals(base_rate: float, phase_s: float, seed: int = 0) -> list[tuple[float, str]]:
    """Poisson arrival times (seconds from start) and their phase, at most MAX_REQUESTS."""
    rng = np.random.default_rng(seed)
    out: list[tuple[float, str]] = []
    start = 0.0
    for phase, factor in PHASES:
        t = start
        while len(out) < MAX_REQUESTS:
            t += rng.exponential(1.0 / (base_rate * factor))
            if t >= start + phase_s:
                break
            out.append((t, phase))
        start += phase_s
    return out


def _wait_until(t: float) -> None:
    # Sleep, never spin: the machine is shared and the server needs the cores.
    left = t - time.perf_counter()
    if left > 0:
        time.sleep(left)


def load_inproc(server: Any, request: dict[str, np.ndarray],
                schedule: list[tuple[float, str]]) -> list[tuple[str, float | None]]:
    """Open-loop submits; returns ``(phase, latency_s or None)`` per request."""
    results: list[tuple[str, float | None]] = [("", None)] * len(schedule)
    futures = []
    t0 = time.perf_counter()
    for i, (at, phase) in enumerate(schedule):
        _wait_until(t0 + at)
        sent = time.perf_counter()
        results[i] = (phase, None)
        try:
            fut = server.submit(request)
        except rt.RegionTRTError:
            continue

        def done(f: Any, i: int = i, phase: str = phase, sent: float = sent) -> None:
            ok = not f.cancelled() and f.exception() is None
            results[i] = (phase, time.perf_counter() - sent if ok else None)

        fut.add_done_callback(done)
        futures.append(fut)
    for f in futures:
        with contextlib.suppress(Exception):
            f.result(REQUEST_TIMEOUT_S)
    return results


def _binary_body(request: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    entries, blobs = [], []
    for name, arr in request.items():
        raw = np.ascontiguousarray(arr).tobytes()
        entries.append({"name": name, "datatype": datatype(arr.dtype), "shape": list(arr.shape),
                        "parameters": {"binary_data_size": len(raw)}})
        blobs.append(raw)
    head = json.dumps({"inputs": entries, "parameters": {"binary_data_output": True}}).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head)),
                                    "Content-Type": "application/octet-stream"}


async def _load_http(url: str, body: bytes, headers: dict[str, str],
                     schedule: list[tuple[float, str]]) -> list[tuple[str, float | None]]:
    import aiohttp

    results: list[tuple[str, float | None]] = [(p, None) for _, p in schedule]
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256),
                                     timeout=timeout) as session:
        async def one(i: int) -> None:
            sent = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status == 200:
                        results[i] = (schedule[i][1], time.perf_counter() - sent)
            except (TimeoutError, aiohttp.ClientError):
                pass

        tasks = []
        t0 = time.perf_counter()
        for i, (at, _) in enumerate(schedule):
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return results


def summarize(results: list[tuple[str, float | None]], phase_s: float,
              sla_ms: float) -> dict[str, dict[str, float | int | None]]:
    """Per phase and overall: requests, p50/p99 (ms, of answered ones), throughput, attainment."""
    out = {}
    for phase in [p for p, _ in PHASES] + ["all"]:
        rows = [lat for p, lat in results if phase in ("all", p)]
        ok = np.array([x for x in rows if x is not None]) * 1e3
        span = phase_s * (len(PHASES) if phase == "all" else 1)
        out[phase] = {
            "requests": len(rows),
            "answered": int(ok.size),
            "p50_ms": float(np.percentile(ok, 50)) if ok.size else None,
            "p99_ms": float(np.percentile(ok, 99)) if ok.size else None,
            "throughput": ok.size / span,
            "sla_attainment": float(np.sum(ok <= sla_ms)) / len(rows) if rows else None,
        }
    return out


# -- runs ------------------------------------------------------------------------------------------
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
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "serve", str(engine_path), "--port", str(self.port),
             "--mode", mode, "--max-batch", str(max_batch), "--max-delay-ms", str(delay_ms),
             "--sla-ms", str(sla_ms), "--max-queue", "512", "--log-level", "warning"],
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


def run_inproc(setup: Setup, mode: str, base_rate: float, phase_s: float,
               max_batch: int, seed: int = 0) -> tuple[list[tuple[str, float | None]], dict]:
    """One step load in process: per-request results, and the server's batch figures."""
    server = rt.serve(setup.engine, mode=mode, max_batch=max_batch, max_delay_ms=setup.sla_ms,
                      max_queue=512, sla_ms=setup.sla_ms)
    try:
        results = load_inproc(server, setup.request, arrivals(base_rate, phase_s, seed))
        stats = next(iter(server.stats().values()))
    finally:
        server.close()
    return results, {"batch_sizes": stats["batch_sizes"], "mode_switches": stats["mode_switches"]}


class HTTPServerThread:
    """The same endpoint on a thread of this process, for engines a child cannot load (the GPU
    test double's backend exists only in this process)."""

    def __init__(self, engine: rt.Engine, mode: str, max_batch: int, delay_ms: float,
                 sla_ms: float) -> None:
        from regiontrt.serve.runner import BackgroundHTTP

        server = rt.serve(engine, mode=mode, max_batch=max_batch, max_delay_ms=delay_ms,
                          max_queue=512, sla_ms=sla_ms)
        self.model = next(iter(server.models))
        self._http = BackgroundHTTP(server).start()
        self.base = f"http://{self._http.url}"

    def close(self) -> None:
        self._http.stop()


def _http_server(setup: Setup, engine_path: Path | None, mode: str, max_batch: int,
                 delay_ms: float) -> HTTPServerProcess | HTTPServerThread:
    if engine_path is None:
        return HTTPServerThread(setup.engine, mode, max_batch, delay_ms, setup.sla_ms)
    return HTTPServerProcess(engine_path, mode, max_batch, delay_ms, setup.sla_ms)


def run_http(setup: Setup, engine_path: Path | None, mode: str, base_rate: float,
             phase_s: float, max_batch: int, seed: int = 0) -> list[tuple[str, float | None]]:
    """One step load over HTTP: per-request results."""
    server = _http_server(setup, engine_path, mode, max_batch, setup.sla_ms)
    try:
        body, headers = _binary_body(setup.request)
        url = f"{server.base}/v2/models/{server.model}/infer"
        return asyncio.run(_load_http(url, body, headers, arrivals(base_rate, phase_s, seed)))
    finally:
        server.close()


def http_capacity(setup: Setup, engine_path: Path | None, seconds: float = 1.5,
                  depth: int = 32) -> float:
    """Like :func:`inproc_capacity`, over HTTP: ``depth`` clients sending back to back."""
    server = _http_server(setup, engine_path, "latency", 1, 0.0)
    try:
        body, headers = _binary_body(setup.request)
        url = f"{server.base}/v2/models/{server.model}/infer"
        asyncio.run(_saturate_http(url, body, headers, 0.3, depth))  # warm up
        return asyncio.run(_saturate_http(url, body, headers, seconds, depth))
    finally:
        server.close()


def monitor_cost(setup: Setup, n: int = 2000) -> dict[str, float]:
    """Median closed-loop ``infer`` latency (µs) with the drift monitor off / 5 % / 100 %.

    The three servers run side by side and take turns request by request, so the machine's
    load (shared with other jobs) weighs on each configuration alike.
    """
    configs = (("off", None), ("sample 5%", 0.05), ("sample 100%", 1.0))
    servers = [rt.serve(setup.engine, mode="latency") for _ in configs]
    times: dict[str, list[float]] = {label: [] for label, _ in configs}
    try:
        for server, (_, rate) in zip(servers, configs):
            if rate is not None:
                server.monitor(sample_rate=rate, window=64, queue_size=64)
            for _ in range(20):
                server.infer(setup.request)
        for _ in range(n):
            for server, (label, _) in zip(servers, configs):
                t = time.perf_counter()
                server.infer(setup.request)
                times[label].append(time.perf_counter() - t)
        dropped = {label: s.monitor().report()["dropped"] for s, (label, rate) in
                   zip(servers, configs) if rate is not None}
    finally:
        for server in servers:
            server.close()
    out = {label: float(np.median(v) * 1e6) for label, v in times.items()}
    out.update({f"dropped ({label})": float(d) for label, d in dropped.items()})
    return out


def step_load(setup: Setup, *, transports: tuple[str, ...] = ("inproc", "http"),
              modes: tuple[str, ...] = MODES, phase_s: float = 3.0, base_frac: float = 0.3,
              max_batch: int = 32, rounds: int = 1,
              http_in_process: bool = False) -> dict[str, Any]:
    """Every mode on every transport for one model; returns the figures.

    With ``rounds`` > 1 the modes take turns (latency, throughput, adaptive, latency, ...) and
    each mode's figures pool its rounds, so a machine whose load drifts (a shared one) weighs
    on every mode alike. With ``http_in_process`` the HTTP server runs on a thread here instead
    of in a child ``regiontrt serve`` (for engines whose backend only this process has).
    """
    report: dict[str, Any] = {"model": setup.name, "sla_ms": setup.sla_ms, "rounds": rounds,
                              "phase_s": phase_s, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        path: Path | None = Path(tmp) / f"{setup.name}.{setup.engine.region}.engine"
        if http_in_process:
            path = None
        elif "http" in transports:
            setup.engine.save(path)
        for transport in transports:
            if transport == "inproc":
                with rt.serve(setup.engine, mode="latency", max_queue=512) as server:
                    cap = inproc_capacity(server, setup.request)
            else:
                cap = http_capacity(setup, path)
            base = base_frac * cap
            results: dict[str, list[tuple[str, float | None]]] = {m: [] for m in modes}
            extra: dict[str, dict[str, Any]] = {m: {} for m in modes}
            for r in range(rounds):
                for mode in modes:
                    if transport == "inproc":
                        got, info = run_inproc(setup, mode, base, phase_s, max_batch, seed=r)
                        for b, n in info["batch_sizes"].items():
                            sizes = extra[mode].setdefault("batch_sizes", {})
                            sizes[b] = sizes.get(b, 0) + n
                        extra[mode]["mode_switches"] = (extra[mode].get("mode_switches", 0)
                                                        + info["mode_switches"])
                    else:
                        got = run_http(setup, path, mode, base, phase_s, max_batch, seed=r)
                    results[mode].extend(got)
            report["runs"][transport] = {"capacity_rps": cap, "base_rps": base, "modes": {}}
            for mode in modes:
                figures = {"phases": summarize(results[mode], phase_s * rounds, setup.sla_ms),
                           **extra[mode]}
                report["runs"][transport]["modes"][mode] = figures
                print_run(setup.name, transport, mode, base, figures)
    return report


def _f(x: float | int | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def print_run(model: str, transport: str, mode: str, base: float, figures: dict) -> None:
    for phase, s in figures["phases"].items():
        print(f"| {model} | {transport} | {mode} | {phase} | {s['requests']} | "
              f"{_f(s['p50_ms'])} | {_f(s['p99_ms'])} | {_f(s['throughput'], '.0f')} | "
              f"{_f(s['sla_attainment'] and 100 * s['sla_attainment'], '.1f')} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="demo,rec")
    p.add_argument("--transports", default="inproc,http")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--phase-s", type=float, default=2.0)
    p.add_argument("--rec-phase-s", type=float, default=5.0)
    p.add_argument("--base-frac", type=float, default=0.3)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3,
                   help="modes take turns this many times; figures pool the rounds")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    env = environment(argv)
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} (shared with other jobs)")
    print("| model | path | mode | phase | requests | p50 ms | p99 ms | answered/s | SLA % |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    reports = []
    for name in args.models.split(","):
        setup = demo_setup() if name == "demo" else rec_setup()
        reports.append(step_load(
            setup, transports=tuple(args.transports.split(",")),
            modes=tuple(args.modes.split(",")),
            phase_s=args.phase_s if name == "demo" else args.rec_phase_s,
            base_frac=args.base_frac, max_batch=args.max_batch, rounds=args.rounds))
        for r in reports[-1]["runs"].values():
            modes = r["modes"]
            fixed = [m for m in ("latency", "throughput") if m in modes]
            if "adaptive" in modes and fixed:
                best = max(modes[m]["phases"]["all"]["sla_attainment"] or 0 for m in fixed)
                ours = modes["adaptive"]["phases"]["all"]["sla_attainment"] or 0
                r["adaptive_over_best_fixed"] = ours / best if best else None
                print(f"{name}: adaptive / best fixed SLA attainment over the step: "
                      f"{_f(r['adaptive_over_best_fixed'], '.3f')}")
    demo_cost = monitor_cost(demo_setup()) if "demo" in args.models else None
    if demo_cost:
        print("drift monitor, median infer µs:", {k: round(v, 1) for k, v in demo_cost.items()})
    if args.json:
        args.json.write_text(json.dumps({"machine": platform.platform(), "reports": reports,
                                         "monitor_cost_us": demo_cost,
                                         "date": time.strftime("%Y-%m-%d"),
                                         "environment": finish(env)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
