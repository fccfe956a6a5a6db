"""The benchmarks' open-loop load generator (issue 21): requests leave on their schedule whatever
the server does, and latency counts from the scheduled time, so coordinated omission cannot hide
a server's queue. Driven against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp", reason="needs aiohttp (the load generator's client)")
loadgen = pytest.importorskip("benchmarks.loadgen", reason="run from the repository root")


class StallingServer(ThreadingHTTPServer):
    """Answers nothing until ``release_after`` requests arrived (or ``hold_s`` passed); records
    every arrival and every answer. Request paths ending in ``/never`` are never answered
    within the test; ``/fail`` gets a 503 at once."""

    daemon_threads = True

    def __init__(self, release_after: int, hold_s: float = 20.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.release_after, self.hold_s = release_after, hold_s
        self.cond = threading.Condition()
        self.arrived = 0
        self.answered = 0
        self.answered_before_release = 0
        self.closing = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: StallingServer

    def log_message(self, *args: object) -> None:  # quiet test output
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        s = self.server
        if self.path.endswith("/fail"):
            self._answer(503)
            return
        if self.path.endswith("/never"):
            s.closing.wait(s.hold_s)
            return
        with s.cond:
            s.arrived += 1
            s.cond.notify_all()
            released = s.cond.wait_for(lambda: s.arrived >= s.release_after, s.hold_s)
            if not released:
                s.answered_before_release += 1
            s.answered += 1
        self._answer(200)

    def _answer(self, status: int) -> None:
        body = b"{}"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def stalling() -> Iterator[StallingServer]:
    server = StallingServer(release_after=12)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.closing.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def _run(schedule: list, url: str, timeout_s: float = 15.0,
         block_loop_s: float = 0.0) -> list:
    async def go() -> list:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
            if block_loop_s:
                # Hold the event loop before the first send, as a busy client would: the
                # generator is late, and that lateness must be charged to the requests.
                asyncio.get_running_loop().call_soon(time.sleep, block_loop_s)
            return await loadgen.open_loop(schedule, loadgen.json_sender(session, url, b"{}"),
                                           timeout_s=timeout_s)

    return asyncio.run(go())


def test_sends_stay_on_schedule_while_the_server_stalls(stalling):
    """A server that answers nothing until all 12 requests arrived: an open loop sends all 12
    (a closed loop would wait for the first answer forever), and every answer is timed from
    its scheduled send, so all include the wait for the last request."""
    schedule = loadgen.fixed_schedule([("stall", 40.0, 0.3)])
    assert len(schedule) == 12
    outcomes = _run(schedule, stalling.url + "/infer")
    assert stalling.arrived == 12
    assert stalling.answered_before_release == 0  # none answered before the last one arrived
    assert [o.latency_s is not None for o in outcomes] == [True] * 12, outcomes
    last = schedule[-1].at
    for o in outcomes:
        # answered no earlier than the last request's scheduled send
        assert o.scheduled + o.latency_s >= last


def test_a_late_generator_charges_its_lateness_to_latency(stalling):
    """Requests the generator sent late (its loop was held) carry that lag in their latency."""
    stalling.release_after = 1
    schedule = loadgen.fixed_schedule([("p", 50.0, 0.1)])
    outcomes = _run(schedule, stalling.url + "/infer", block_loop_s=0.3)
    # the loop was held 0.3 s from the first send; the later four were due within 0.1 s
    assert all(o.send_lag_s > 0.1 for o in outcomes[1:]), outcomes
    for o in outcomes:
        assert o.latency_s is not None and o.latency_s >= o.send_lag_s


def test_refusals_and_timeouts_are_misses_not_crashes(stalling):
    schedule = loadgen.fixed_schedule([("p", 20.0, 0.1)])
    failed = _run(schedule, stalling.url + "/fail")
    assert [o.latency_s for o in failed] == [None, None]
    assert {o.error for o in failed} == {"ClientResponseError"}
    late = _run(schedule, stalling.url + "/never", timeout_s=0.5)
    assert [o.latency_s for o in late] == [None, None]
    assert {o.error for o in late} == {"TimeoutError"}
    figures = loadgen.summarize(late, loadgen.phase_bounds([("p", 20.0, 0.1)]), sla_ms=100.0)
    assert figures["p"]["sla_attainment"] == 0.0 and figures["p"]["answered"] == 0


def test_poisson_schedule_is_reproducible_and_keeps_each_phase_in_its_window():
    phases = [("base", 200.0, 2.0), ("surge", 1000.0, 2.0), ("recover", 200.0, 2.0)]
    a = loadgen.poisson_schedule(phases, seed=3)
    assert a == loadgen.poisson_schedule(phases, seed=3)
    assert a != loadgen.poisson_schedule(phases, seed=4)
    times = [x.at for x in a]
    assert times == sorted(times)
    for name, start, end in loadgen.phase_bounds(phases):
        inside = [x for x in a if x.phase == name]
        assert all(start <= x.at < end for x in inside)
        rate = dict((n, r) for n, r, _ in phases)[name]
        expected = rate * (end - start)
        assert abs(len(inside) - expected) < 6 * np.sqrt(expected)  # Poisson: 6 sigma
    assert len(loadgen.poisson_schedule(phases, seed=3, max_requests=50)) == 50
    with pytest.raises(ValueError, match="rate"):
        loadgen.poisson_schedule([("x", 0.0, 1.0)])


def test_process_tree_cpu_counts_a_busy_grandchild():
    """The server's CPU is its whole tree: a grandchild burning CPU is counted."""
    pytest.importorskip("psutil", reason="needs psutil (pip install 'regiontrt[bench]')")
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"
    spawn = ("import subprocess, sys; subprocess.run([sys.executable, '-c', sys.argv[1]])")
    child = subprocess.Popen([sys.executable, "-c", spawn, burn])
    try:
        cpu = loadgen.ProcessTreeCPU(child.pid)
        cpu.read(0.0)
        seen = cpu.total()
        while child.poll() is None:
            seen = cpu.total()  # read while the grandchild lives
            time.sleep(0.05)
        cpu.readings.append((1.0, seen))
    finally:
        child.wait(30)
    used = cpu.per_phase([("p", 0.0, 1.0)])["p"]
    assert used is not None and used >= 0.2  # most of the grandchild's 0.4 s (read before exit)


def test_best_setting_is_chosen_per_phase():
    step = pytest.importorskip("benchmarks.serving_report", reason="run from the repository root")
    settings = {
        "a": {"base": {"sla_attainment": 1.0, "p99_ms": 5.0},
              "surge": {"sla_attainment": 0.5, "p99_ms": 50.0}},
        "b": {"base": {"sla_attainment": 1.0, "p99_ms": 4.0},
              "surge": {"sla_attainment": 0.9, "p99_ms": 90.0}},
    }
    best = step.best_per_phase(settings)
    assert best["base"]["setting"] == "b"  # tie on attainment: the lower p99
    assert best["surge"]["setting"] == "b" and best["surge"]["sla_attainment"] == 0.9


def test_triton_sender_drives_regiontrt_endpoint_on_schedule(na_engine):
    """The generator's KServe v2 client (``tritonclient.http.aio``, binary tensors) against the
    real endpoint: every scheduled request answered, with what the engine gives."""
    pytest.importorskip("tritonclient.http.aio", reason="needs tritonclient[http] (test extra)")
    pytest.importorskip("starlette", reason="needs starlette (pip install 'regiontrt[serve]')")
    import tritonclient.http.aio as aio

    import regiontrt as rt
    from regiontrt.serve.runner import BackgroundHTTP

    x = np.random.default_rng(1).random((1, *na_engine.inputs[0].shape[1:]), dtype=np.float32)
    request = {na_engine.inputs[0].name: x}
    outputs = [o.name for o in na_engine.outputs]
    schedule = loadgen.fixed_schedule([("p", 100.0, 0.2)])

    async def go(url: str, model: str):
        async with aio.InferenceServerClient(url) as client:
            send = loadgen.triton_sender(client, model, request, outputs)
            first = await send()
            return first, await loadgen.open_loop(schedule, send)

    with BackgroundHTTP(rt.serve(na_engine, mode="adaptive", max_batch=8)) as http:
        first, outcomes = asyncio.run(go(http.url, next(iter(http.server.models))))
    np.testing.assert_array_equal(first.as_numpy(outputs[0]), na_engine.infer(request)[outputs[0]])
    assert len(outcomes) == 20 and all(o.latency_s is not None for o in outcomes), outcomes


@pytest.mark.parametrize("kind", ["litserve", "ray"])
def test_peer_serves_the_engines_onnx_with_the_same_answers(kind, na_engine, tmp_path):
    """Each peer of bench_serving serves the engine's own ONNX file and answers what the engine
    answers (same file, same Q/DQ arithmetic), through the JSON the load generator sends."""
    pytest.importorskip("litserve" if kind == "litserve" else "ray",
                        reason=f"needs {kind} (pip install 'regiontrt[bench]')")
    if kind == "ray":  # Ray Serve loads gRPC reflection, which needs a matching protobuf
        try:
            import grpc_reflection.v1alpha.reflection  # noqa: F401
            import ray.serve  # noqa: F401
        except Exception as exc:  # protobuf's VersionError: another package pinned it lower
            pytest.skip(f"needs Ray Serve importable (here: {type(exc).__name__}: {exc})")
    pytest.importorskip("httpx", reason="needs httpx (the test extra)")
    from benchmarks.serving_peers import PeerServer, decode_arrays, request_body
    from regiontrt.backends.onnxruntime import runtime_arithmetic
    from regiontrt.graph.arithmetic import Int8Arithmetic

    onnx_path = str(na_engine.export_payload(tmp_path / "model.onnx")[0])
    unfused = runtime_arithmetic(na_engine.metadata)[0] is Int8Arithmetic.TENSORRT
    x = np.random.default_rng(2).random((1, *na_engine.inputs[0].shape[1:]), dtype=np.float32)
    request = {na_engine.inputs[0].name: x}

    async def go(url: str) -> tuple[bytes, list]:
        async with aiohttp.ClientSession() as session:
            send = loadgen.json_sender(session, url, request_body(request))
            return await send(), await loadgen.open_loop(
                loadgen.fixed_schedule([("p", 50.0, 0.2)]), send)

    peer = PeerServer(kind, onnx_path, max_batch=4, wait_ms=2.0, threads=1, unfused_qdq=unfused)
    try:
        body, outcomes = asyncio.run(go(peer.url))
        assert peer.configure(8, 1.0) is (kind == "ray")  # Ray's knobs change in place
    finally:
        peer.close()
    got = decode_arrays(json.loads(body)["outputs"])
    want = na_engine.infer(request)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)
    assert all(o.latency_s is not None for o in outcomes), outcomes
    assert peer.proc.poll() is not None  # the peer's process group is gone


def test_sharded_generator_sends_every_request_from_several_processes(stalling):
    """The schedule dealt to two generator processes: every request is sent once, on the shared
    clock (the 12th arrival releases all), and the outcomes come back merged in schedule order."""
    procs = pytest.importorskip("benchmarks.loadgen_procs", reason="run from the repository root")
    schedule = loadgen.fixed_schedule([("a", 40.0, 0.15), ("b", 40.0, 0.15)])
    assert len(schedule) == 12
    bounds = loadgen.phase_bounds([("a", 40.0, 0.15), ("b", 40.0, 0.15)])
    spec = procs.SenderSpec("json", stalling.url + "/infer", body=b"{}", connections=64)
    outcomes, cpu = procs.drive_sharded(schedule, bounds, spec, None, procs=2, timeout_s=15.0,
                                        warmup=0)
    assert cpu is None and stalling.arrived == 12 and stalling.answered_before_release == 0
    assert [o.scheduled for o in outcomes] == [a.at for a in schedule]
    assert [o.phase for o in outcomes] == [a.phase for a in schedule]
    assert all(o.latency_s is not None for o in outcomes), outcomes
    last = schedule[-1].at
    assert all(o.scheduled + o.latency_s >= last for o in outcomes)  # answered after the 12th


def test_default_generator_processes_leave_a_small_machine_one():
    procs = pytest.importorskip("benchmarks.loadgen_procs", reason="run from the repository root")
    assert [procs.default_procs(n) for n in (1, 2, 4, 8, 16, 64)] == [1, 1, 1, 2, 4, 4]
