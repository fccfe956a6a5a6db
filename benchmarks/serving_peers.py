"""The peers of ``bench_serving``: Ray Serve and LitServe serving the same ONNX Runtime model.

Each peer runs in a child process on 127.0.0.1 (``python -m benchmarks.serving_peers KIND ...``)
with the set-up its documentation recommends for a batched CPU model:

* **Ray Serve**: one replica whose ``@serve.batch`` method runs the batch (off the replica's
  event loop, so requests keep joining the next batch while one runs), ``max_ongoing_requests``
  well above the largest batch (Ray's default of 5 would cap every batch at 5), no dashboard.
  ``max_batch_size`` and ``batch_wait_timeout_s`` are changed in place through the batch
  handler's documented setters (``POST /configure``), so a sweep does not restart Ray.
* **LitServe**: one CPU worker, ``max_batch_size`` and ``batch_timeout`` on the ``LitAPI``
  (LitServe has no live setter, so each setting is a fresh server), ``batch``/``unbatch``
  concatenating and splitting numpy rows.

Both load the very ONNX file regiontrt's engine runs (``Engine.export_payload``) into an
``onnxruntime.InferenceSession`` with the same session settings as regiontrt's loaded engine:
the same intra-op threads (``--threads``; ONNX Runtime's default, one per physical core, is what
regiontrt's engine uses), spinning off (regiontrt's default for a loaded engine; measured, the
spinning pool threads took the cores the server's event loop and the clients needed) and the
same Q/DQ arithmetic.
Requests and answers are JSON: each array as base64 of its bytes with its shape and dtype, the
compact encoding a JSON endpoint allows (a list of floats would cost the peers a slow parse).

Install them with ``pip install 'regiontrt[bench]'`` (or ``pip install 'ray[serve]' litserve``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from benchmarks import loadgen

PEERS = ("ray", "litserve")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- the wire format -------------------------------------------------------------------------------
def encode_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Arrays as JSON-able dicts: base64 of the bytes, shape, dtype."""
    return {name: {"b64": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode(),
                   "shape": list(a.shape), "dtype": a.dtype.str} for name, a in arrays.items()}


def decode_arrays(data: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """The inverse of :func:`encode_arrays`."""
    return {name: np.frombuffer(base64.b64decode(v["b64"]), dtype=np.dtype(v["dtype"]))
            .reshape(v["shape"]) for name, v in data.items()}


def request_body(request: Mapping[str, np.ndarray]) -> bytes:
    """The JSON body of one request for either peer."""
    return json.dumps({"inputs": encode_arrays(request)}).encode()


# -- the model, as both peers run it ---------------------------------------------------------------
class OrtModel:
    """An ``onnxruntime.InferenceSession`` running row-stacked batches.

    Args:
        path: the ONNX file.
        threads: intra-op threads (0: ONNX Runtime's default).
        unfused_qdq: evaluate Q/DQ unfused (the engine's ``tensorrt`` int8 arithmetic).
    """

    def __init__(self, path: str, threads: int, unfused_qdq: bool) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        if unfused_qdq:
            so.add_session_config_entry("session.disable_quant_qdq", "1")
        # As regiontrt's loaded engines (TacticSelector.cpu_spinning's default).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, sess_options=so,
                                            providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run_batch(self, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Concatenate the requests' rows, run once, split the outputs back per request."""
        joined = feeds[0] if len(feeds) == 1 else {
            n: np.concatenate([f[n] for f in feeds]) for n in feeds[0]}
        values = dict(zip(self.outputs, self.session.run(self.outputs, joined)))
        if len(feeds) == 1:
            return [values]
        out, start = [], 0
        for f in feeds:
            rows = next(iter(f.values())).shape[0]
            out.append({n: v[start:start + rows] for n, v in values.items()})
            start += rows
        return out


# -- Ray Serve (child side) ------------------------------------------------------------------------
def ray_main(args: argparse.Namespace) -> None:
    """Serve the model with Ray Serve on 127.0.0.1:``args.port`` until SIGTERM."""
    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    ray.init(include_dashboard=False, logging_level="warning", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})

    @serve.deployment(num_replicas=1, max_ongoing_requests=1024)
    class RayOrt:
        def __init__(self, path: str, threads: int, unfused: bool, batch: int,
                     wait_s: float) -> None:
            self.model = OrtModel(path, threads, unfused)
            self.model.run_batch([self._sample()])  # warm up, as regiontrt does
            self.infer.set_max_batch_size(batch)
            self.infer.set_batch_wait_timeout_s(wait_s)

        def _sample(self) -> dict[str, np.ndarray]:
            shapes = {i.name: [d if isinstance(d, int) else 1 for d in i.shape]
                      for i in self.model.session.get_inputs()}
            types = {i.name: i.type for i in self.model.session.get_inputs()}
            return {n: np.zeros(s, dtype=np.float32 if "float" in types[n] else np.int64)
                    for n, s in shapes.items()}

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
        async def infer(self, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
            # Off the replica's loop: requests keep joining the next batch while this one runs.
            return await asyncio.get_running_loop().run_in_executor(
                None, self.model.run_batch, feeds)

        async def __call__(self, request: Request) -> Response:
            path = request.url.path.rstrip("/")
            if path.endswith("/ready"):
                return JSONResponse({"ready": True})
            body = await request.json()
            if path.endswith("/configure"):
                self.infer.set_max_batch_size(int(body["max_batch_size"]))
                self.infer.set_batch_wait_timeout_s(float(body["batch_wait_timeout_s"]))
                return JSONResponse({"ok": True})
            out = await self.infer(decode_arrays(body["inputs"]))
            return JSONResponse({"outputs": encode_arrays(out)})

    serve.run(RayOrt.bind(args.onnx, args.threads, args.unfused_qdq, args.max_batch,
                          args.wait_ms / 1e3), route_prefix="/", blocking=False)
    _wait_for_term()
    serve.shutdown()
    ray.shutdown()


# -- LitServe (child side) -------------------------------------------------------------------------
def litserve_main(args: argparse.Namespace) -> None:
    """Serve the model with LitServe on 127.0.0.1:``args.port`` until SIGTERM."""
    import litserve as ls

    from benchmarks._litserve_api import LitOrt

    api = LitOrt(args.onnx, args.threads, args.unfused_qdq, max_batch_size=args.max_batch,
                 batch_timeout=args.wait_ms / 1e3, api_path="/predict")
    # ``timeout`` drops a request that waited in LitServe's queue longer than this (its answer
    # to a backlog, like regiontrt's shedding); 30 s is LitServe's default.
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1,
                          timeout=args.queue_timeout_ms / 1e3 if args.queue_timeout_ms else 30,
                          fast_queue=True)
    server.run(host="127.0.0.1", port=args.port, log_level="warning",
               generate_client_file=False, num_api_servers=1)


def _wait_for_term() -> None:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.2)


# -- parent side -----------------------------------------------------------------------------------
class PeerServer:
    """One peer serving ``onnx`` in a child process (its own process group) on 127.0.0.1.

    Args:
        kind: ``"ray"`` or ``"litserve"``.
        onnx: the ONNX file.
        max_batch: the batch knob (Ray ``max_batch_size``, LitServe ``max_batch_size``).
        wait_ms: the wait knob (Ray ``batch_wait_timeout_s``, LitServe ``batch_timeout``).
        threads: ONNX Runtime intra-op threads.
        unfused_qdq: evaluate Q/DQ unfused, as the engine does.
        start_timeout_s: longest wait for the server to answer.
        queue_timeout_ms: LitServe's ``timeout`` (drop a request queued longer); ``None``: the
            peer's default.
    """

    def __init__(self, kind: str, onnx: str, max_batch: int, wait_ms: float, threads: int,
                 unfused_qdq: bool = False, start_timeout_s: float = 180.0,
                 queue_timeout_ms: float | None = None) -> None:
        import httpx

        from benchmarks.serving_step import _free_port

        if kind not in PEERS:
            raise ValueError(f"unknown peer {kind!r}; choose from {PEERS}")
        self.kind, self.port = kind, _free_port()
        cmd = [sys.executable, "-m", "benchmarks.serving_peers", kind, "--onnx", onnx,
               "--port", str(self.port), "--max-batch", str(max_batch), "--wait-ms",
               str(wait_ms), "--threads", str(threads)] + (["--unfused-qdq"] * unfused_qdq) + \
            (["--queue-timeout-ms", str(queue_timeout_ms)] if queue_timeout_ms else [])
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        ready = f"{self.base}/ready" if kind == "ray" else f"{self.base}/health"
        deadline = time.monotonic() + start_timeout_s
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"{kind} exited: {err[-2000:]}")
            try:
                if httpx.get(ready, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"{kind} did not answer within {start_timeout_s:g} s")
            time.sleep(0.3)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """Where inference requests go."""
        return f"{self.base}/infer" if self.kind == "ray" else f"{self.base}/predict"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def configure(self, max_batch: int, wait_ms: float) -> bool:
        """Change the batch knobs in place; ``False`` where the peer cannot (LitServe)."""
        if self.kind != "ray":
            return False
        import httpx

        r = httpx.post(f"{self.base}/configure", timeout=30,
                       json={"max_batch_size": max_batch, "batch_wait_timeout_s": wait_ms / 1e3})
        r.raise_for_status()
        return True

    def close(self) -> None:
        """SIGTERM the child's process group (Ray's daemons included), then SIGKILL it."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(60)
        with contextlib.suppress(ProcessLookupError):  # a Ray daemon still alive goes too
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


def run_peer(peer: PeerServer, body: bytes, schedule: list[loadgen.Arrival],
             bounds: list[tuple[str, float, float]], timeout_s: float, connections: int,
             procs: int = 1) -> tuple[list[loadgen.Outcome], dict[str, float | None] | None]:
    """One step load on a running peer (:class:`serving_peers.PeerServer`) through aiohttp,
    from ``procs`` generator processes."""
    from benchmarks.loadgen_procs import SenderSpec, drive_spec

    spec = SenderSpec("json", peer.url, body=body, connections=connections)
    return drive_spec(schedule, bounds, spec, peer.pid, procs=procs, timeout_s=timeout_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Serve an ONNX model with a peer server "
                                            "(run by benchmarks.bench_serving).")
    p.add_argument("kind", choices=PEERS)
    p.add_argument("--onnx", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--wait-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--unfused-qdq", action="store_true")
    p.add_argument("--queue-timeout-ms", type=float, default=0.0)
    args = p.parse_args(argv)
    (ray_main if args.kind == "ray" else litserve_main)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
