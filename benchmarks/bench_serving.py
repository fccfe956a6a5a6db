"""Serving under a step load: regiontrt's three batching modes against Ray Serve and LitServe.

One open-loop schedule (:mod:`benchmarks.loadgen`: Poisson arrivals sent on a clock, latency
from each request's scheduled send time, so a stalled server cannot hide its queue) steps from a
base rate to 5x and back. Every server gets that same schedule, the same SLA and the same
machine: regiontrt's ``latency``, ``throughput`` and ``adaptive`` modes in process and over
HTTP (``regiontrt serve`` in a child process, driven by ``tritonclient.http.aio`` with binary
tensors), and, over HTTP (aiohttp, JSON), Ray Serve (``@serve.batch``) and LitServe serving the
engine's own ONNX file with the same ONNX Runtime threads (:mod:`benchmarks.serving_peers`).
Each peer is swept over ``max_batch_size`` x wait (``--peer-batches``, ``--peer-waits-ms``) and
keeps its best setting per phase; regiontrt's modes run their defaults (``throughput`` and
``adaptive`` with ``max_delay_ms`` = the SLA, ``--max-batch``).

The base is a fraction (``--base-frac``, 0.3) of ``latency`` mode's saturated capacity on the
same path, so the surge (1.5x that capacity) is more than one-by-one serving absorbs. Servers
take turns for ``--rounds`` rounds and pool them, so a shared machine's drifting load weighs on
all alike. Per phase and server: requests, p50/p99, answers per second, SLA attainment (refused,
failed or timed-out requests are misses), the generator's p99 send lag, and the server's CPU use
(cores, its whole process tree, psutil). On a machine of 8 cores or more the HTTP schedule is
sent from several generator processes (``--client-procs``; :mod:`benchmarks.loadgen_procs`), so
the generator is not what falls behind at the surge's rate. It also measures the drift
monitor's request-path cost.

One command (peers that are not installed are skipped, and the JSON says so)::

    python -m benchmarks.bench_serving --models demo --json out.json

    python -m benchmarks.bench_serving --models demo --transports http --phase-s 20 \\
        --rounds 1 --peers ray,litserve --json /tmp/serving.json   # the step against the peers

On a host without a package index, carry wheels: on a machine with one, ``pip download
--only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 --platform
manylinux_2_28_x86_64 -d wheels starlette uvicorn httptools prometheus-client
'tritonclient[http]' aiohttp httpx psutil litserve`` (add ``'ray[serve]'`` where space allows:
Ray's own wheel is about 76 MB), then there ``pip install --no-index --find-links wheels`` the
same names and run the command above (numpy, onnx and onnxruntime are expected installed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import regiontrt as rt
from benchmarks._env import environment, finish
from benchmarks.loadgen_procs import default_procs
from benchmarks.serving_peers import PEERS
from benchmarks.serving_report import peer_settings
from benchmarks.serving_step import MODES, PHASES, step_load

__all__ = ["MODES", "PHASES", "Setup", "demo_setup", "main", "rec_setup", "step_load"]


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


def _f(x: float | int | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def print_run(model: str, transport: str, server: str, figures: dict[str, Any]) -> None:
    for phase, s in figures["phases"].items():
        print(f"| {model} | {transport} | {server} | {s.get('setting', 'default')} | {phase} | "
              f"{s['requests']} | {_f(s['p50_ms'])} | {_f(s['p99_ms'])} | "
              f"{_f(s['throughput'], '.0f')} | "
              f"{_f(s['sla_attainment'] and 100 * s['sla_attainment'], '.1f')} | "
              f"{_f(s.get('cpu_cores'))} |", flush=True)


def _peers(arg: str) -> tuple[tuple[str, ...], dict[str, str]]:
    """The peers to run and, for those left out, why (``auto``: every installed one)."""
    wanted = PEERS if arg == "auto" else tuple(p for p in arg.split(",") if p and p != "none")
    modules = {"ray": "ray.serve", "litserve": "litserve"}
    skipped = {}
    for p in wanted:
        if p not in modules:
            raise SystemExit(f"unknown peer {p!r}; choose from {PEERS}")
        if importlib.util.find_spec(modules[p].split(".")[0]) is None:
            skipped[p] = f"{modules[p]} is not installed (pip install 'regiontrt[bench]')"
    if arg != "auto" and skipped:
        raise SystemExit("; ".join(skipped.values()))
    return tuple(p for p in wanted if p not in skipped), skipped


def _floats(arg: str) -> tuple[float, ...]:
    return tuple(float(x) for x in arg.split(",") if x)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="demo,rec", help="demo, rec (PP-OCRv4 rec) or both")
    p.add_argument("--transports", default="inproc,http")
    p.add_argument("--modes", default=",".join(MODES),
                   help="regiontrt modes to run; a mode with +shed runs it with shed_late on, "
                        "e.g. latency,throughput,adaptive,adaptive+shed")
    p.add_argument("--phase-s", type=float, default=2.0, help="each phase's length (demo)")
    p.add_argument("--rec-phase-s", type=float, default=5.0)
    p.add_argument("--base-frac", type=float, default=0.3)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3,
                   help="servers take turns this many times; figures pool the rounds")
    p.add_argument("--peers", default="auto",
                   help="ray,litserve; 'auto': those installed; 'none': regiontrt only")
    p.add_argument("--peer-batches", default="8,32", help="the peers' max_batch_size sweep")
    p.add_argument("--peer-waits-ms", default="",
                   help="the peers' batch wait sweep in ms (default: SLA/20 and SLA/4)")
    p.add_argument("--threads", type=int, default=0,
                   help="the peers' ONNX Runtime intra-op threads (default: one per physical "
                        "core, ONNX Runtime's default, which regiontrt's engine runs with)")
    p.add_argument("--client-procs", type=int, default=0,
                   help="load generator processes for the HTTP runs (default: one per four "
                        "cores, at most four; one on a machine of under eight cores)")
    p.add_argument("--no-monitor-cost", action="store_true",
                   help="skip the drift monitor's cost measurement")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    env = environment(argv)
    peers, skipped = _peers(args.peers) if "http" in args.transports else ((), {})
    threads = args.threads or _physical_cores()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; peers: {', '.join(peers) or 'none'}"
          + "".join(f"; {k} skipped: {v}" for k, v in skipped.items()))
    print("| model | path | server | setting | phase | requests | p50 ms | p99 ms | "
          "answered/s | SLA % | CPU cores |")
    print("|" + " --- |" * 11)
    reports = []
    for name in args.models.split(","):
        setup = demo_setup() if name == "demo" else rec_setup()
        grid = peer_settings(setup.sla_ms, tuple(int(b) for b in _floats(args.peer_batches)),
                             _floats(args.peer_waits_ms) or None)
        reports.append(step_load(
            setup, transports=tuple(args.transports.split(",")),
            modes=tuple(args.modes.split(",")),
            phase_s=args.phase_s if name == "demo" else args.rec_phase_s,
            base_frac=args.base_frac, max_batch=args.max_batch, rounds=args.rounds,
            peers=peers, peer_grid=grid, threads=threads, on_run=print_run,
            client_procs=args.client_procs or default_procs()))
        for r in reports[-1]["runs"].values():
            for phase, v in r.get("adaptive_vs_peers", {}).items():
                print(f"{name} {phase}: adaptive {_f(100 * v['adaptive'], '.1f')} % vs best "
                      f"peer ({v['peer']}) {_f(100 * v['best_peer'], '.1f')} %")
    demo_cost = monitor_cost(demo_setup()) if "demo" in args.models and \
        not args.no_monitor_cost else None
    if demo_cost:
        print("drift monitor, median infer µs:", {k: round(v, 1) for k, v in demo_cost.items()})
    if args.json:
        args.json.write_text(json.dumps({"machine": platform.platform(), "reports": reports,
                                         "monitor_cost_us": demo_cost, "peers_skipped": skipped,
                                         "date": time.strftime("%Y-%m-%d"),
                                         "environment": finish(env)}, indent=2))
    return 0


def _physical_cores() -> int:
    try:
        import psutil

        return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except ImportError:
        return os.cpu_count() or 1


if __name__ == "__main__":
    sys.exit(main())
