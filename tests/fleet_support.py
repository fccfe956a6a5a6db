"""Helpers of the fleet tests: a demo-model fleet on disk and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from regiontrt import demo

PROFILE = "input = [[1, 1, 8, 8], [32, 1, 8, 8], [64, 1, 8, 8]]"
SAMPLES = 128  # two batches of 64 per region: enough for a decision, fast on 2 CI cores
TARGETS = {
    "cpu": '[[targets]]\nname = "cpu"\nbackend = "onnxruntime"\nrole = "latency"\n',
    "cpu-batch": '[[targets]]\nname = "cpu-batch"\nbackend = "onnxruntime"\nrole = "throughput"\n',
    "rtx": ('[[targets]]\nname = "rtx"\nbackend = "tensorrt-rtx"\n'
            'compute_capabilities = ["sm89", "sm120"]\noptimization_level = 0\n'),
    "dc-h100": ('[[targets]]\nname = "dc-h100"\nbackend = "tensorrt"\n'
                'compute_capabilities = ["sm90"]\n'),
}


def write_data(root: Path, regions: Sequence[str]) -> None:
    """Each region's calibration and validation data as folders of .npz (one file = one batch)."""
    for region in regions:
        data = demo.region_data(region)
        for kind, arr in (("calib", data.calibration[:SAMPLES]),
                          ("val", data.validation[:SAMPLES])):
            folder = root / "data" / region / kind
            if folder.is_dir():
                continue
            folder.mkdir(parents=True)
            for i in range(0, len(arr), 64):
                np.savez(folder / f"{i:04d}.npz", input=arr[i : i + 64])


def write_fleet(root: Path, *, regions: Sequence[str] = ("NA", "EU", "CERTIFIED"),
                targets: Sequence[str] = ("cpu",), version: str = "1.0.0",
                name: str = "digits", extra_regions: str = "") -> Path:
    """A fleet file for the demo model; returns its path."""
    root.mkdir(parents=True, exist_ok=True)
    write_data(root, regions)
    model = root / "model.onnx"
    if not model.exists():
        model.write_bytes(demo.model_path().read_bytes())
    lines = [f'name = "{name}"', f'version = "{version}"', 'model = "model.onnx"',
             "[shape_profile]", PROFILE]
    for region in regions:
        lines.append(f"[regions.{region}]")
        lines.append(f'validation = "data/{region}/val"')
        if region != "EU" and region != "CERTIFIED":
            lines.append(f'calibration = "data/{region}/calib"')
    text = "\n".join(lines) + "\n" + extra_regions + "\n" + "".join(TARGETS[t] for t in targets)
    path = root / f"fleet-{version}.toml"
    path.write_text(text)
    return path


def region_batches(region: str, kind: str) -> list[dict[str, np.ndarray]]:
    """The same batches the fleet file points to, in memory (for direct builds)."""
    data = demo.region_data(region)
    arr = (data.calibration if kind == "calib" else data.validation)[:SAMPLES]
    return [{"input": arr[i : i + 64]} for i in range(0, len(arr), 64)]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@contextlib.contextmanager
def serve(folder: Path, handler: type[http.server.BaseHTTPRequestHandler] = _Quiet,
          **kwargs: object) -> Iterator[str]:
    """Serve ``folder`` over HTTP on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    factory = functools.partial(handler, directory=str(folder), **kwargs)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), factory)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def session_threads(threads: int | None = None) -> dict[str, object]:
    """Create one ONNX Runtime session the way the library does, in this (worker) process.

    ``threads``: first call :func:`regiontrt.deploy._threads.limit_onnxruntime_threads`. Returns
    the threads the session added, each one's CPU affinity, this process's affinity, and the
    share the process was set to.
    """
    import os

    from regiontrt.deploy._threads import limit_onnxruntime_threads, onnxruntime_threads
    from regiontrt.graph.arithmetic import make_session, session_options

    if threads is not None:
        limit_onnxruntime_threads(threads)
    before = set(os.listdir("/proc/self/task"))
    session = make_session(demo.model_path().read_bytes(), session_options())
    added = sorted(set(os.listdir("/proc/self/task")) - before)
    affinity = [sorted(os.sched_getaffinity(int(t))) for t in added]
    del session
    return {"added": len(added), "affinity": affinity,
            "process": sorted(os.sched_getaffinity(0)), "share": onnxruntime_threads()}
