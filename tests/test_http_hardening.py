"""The HTTP endpoint against hostile clients: huge JSON, hostile numbers, slow or idle sockets,
disconnects mid-body, and readiness while draining (real uvicorn on 127.0.0.1, real sockets)."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import regiontrt as rt

pytest.importorskip("starlette", reason="needs starlette (pip install 'regiontrt[serve]')")
pytest.importorskip("uvicorn", reason="needs uvicorn (pip install 'regiontrt[serve]')")

from regiontrt.serve.jsonscan import SMALL, NumberRun, load_infer_json
from regiontrt.serve.protocol import ProtocolError, decode_infer
from regiontrt.serve.runner import BackgroundHTTP, HTTPLimits

MODEL = "double_CERTIFIED"
INFER = f"/v2/models/{MODEL}/infer"


def _double_model() -> onnx.ModelProto:
    """y = 2x on x [N, T] (FP32)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])], "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T"])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def engine():
    profile = rt.ShapeProfile({"x": [(1, 1), (4, 64), (64, 1024)]})
    return (rt.RegionalEngineBuilder.from_onnx(_double_model()).for_region("CERTIFIED")
            .with_shape_profile(profile).build())


def _served(engine, **kw):
    return rt.serve(engine, name="double", mode="latency", **kw)


def _request(x: np.ndarray, **extra: object) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.reshape(-1).tolist()}], **extra}).encode()


def _post(port: int, path: str, body: bytes, headers: dict[str, str] | None = None,
          timeout: float = 60.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"content-type": "application/json",
                                                        **(headers or {})})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


# -- the JSON codec ---------------------------------------------------------------------------
def _flat_text(count: int, data: str) -> str:
    return ('{"inputs":[{"name":"x","datatype":"FP32","shape":[1,' + str(count) +
            '],"data":[' + data + ']}]}')


def _reference(body: bytes) -> np.ndarray:
    entry = json.loads(body)["inputs"][0]
    return np.asarray(entry["data"], np.float32).reshape(entry["shape"])


def test_fast_json_path_gives_what_json_loads_gives(engine):
    model = _served(engine)
    try:
        served = model.model()
        rng = np.random.default_rng(0)
        x = rng.standard_normal((64, 300)).astype(np.float32)
        flat = _request(x)
        assert len(flat) > SMALL
        parsed = load_infer_json(flat, 1 << 30)
        assert isinstance(parsed["inputs"][0]["data"], NumberRun)  # the fast path ran
        got = decode_infer(flat, None, served).inputs["x"]
        assert got.dtype == np.float32 and np.array_equal(got, _reference(flat))
        data = ", ".join(repr(float(v)) for v in x.reshape(-1))
        variants = [
            # data before shape, odd whitespace, exponents, NaN and infinities in the run
            '{"inputs":[{"data" :\n[ ' + data + ' , 1e3,-2E-2, 0 ],"name":"x",'
            '"datatype":"FP32","shape":[1,' + str(x.size + 3) + ']}]}',
            # a "data": [...] text inside a string: that is an id, not a tensor
            '{"id":"\\"data\\": [' + data[:5000] + ']","inputs":[{"name":"x",'
            '"datatype":"FP32","shape":[64,300],"data":[' + data + ']}]}',
            # nested data (parsed with the budgeted hooks, not the fast path)
            json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [64, 300],
                                    "data": x.tolist()}]}),
        ]
        for text in variants:
            body = text.encode()
            want = _reference(body)
            have = decode_infer(body, None, served).inputs["x"]
            assert have.shape == want.shape
            np.testing.assert_array_equal(have, want)
        special = _flat_text(x.size + 3, data + ",NaN,Infinity,-Infinity").encode()
        have = decode_infer(special, None, served).inputs["x"]
        assert np.isnan(have[0, -3]) and have[0, -2] == np.inf and have[0, -1] == -np.inf
        assert np.array_equal(have[0, :-3], x.reshape(-1))
        for bad in (data + ",", data + ",,1", data.replace(", ", ", 1 2", 1),
                    data.replace(", ", ", [", 1)):
            body = _flat_text(x.size, bad).encode()
            with pytest.raises(ProtocolError) as err:
                decode_infer(body, None, served)
            assert err.value.status == 400, bad[-40:]
            with pytest.raises(json.JSONDecodeError):  # json.loads refuses it too
                json.loads(body)
    finally:
        model.close()


def test_counts_and_memory_cap_are_checked_before_any_array(engine):
    model = _served(engine)
    try:
        served = model.model()
        x = np.ones((64, 1024), np.float32)
        body = _request(x).replace(b'"shape": [64, 1024]', b'"shape": [64, 1000]')
        with pytest.raises(ProtocolError, match="65536 values for shape") as err:
            decode_infer(body, None, served)
        assert err.value.status == 400
        with pytest.raises(ProtocolError, match="over the 1000-byte cap") as err:
            decode_infer(_request(x), None, served, max_bytes=1000)
        assert err.value.status == 413
        raw = x.astype("<f4").tobytes()
        head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [64, 1024],
                                       "parameters": {"binary_data_size": len(raw)}}]}).encode()
        with pytest.raises(ProtocolError, match="cap") as err:
            decode_infer(head + raw, str(len(head)), served, max_bytes=len(raw) - 1)
        assert err.value.status == 413
        nested = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [64, 1024],
                                         "data": x.tolist()}]}).encode()
        with pytest.raises(ProtocolError, match="memory cap") as err:  # 32 bytes a value
            decode_infer(nested, None, served, max_bytes=32 * 1000)
        assert err.value.status == 413
    finally:
        model.close()


# -- hostile numbers --------------------------------------------------------------------------
HOSTILE = ["1" + "0" * 400, "-1", "0", '"abc"', "true", '"NaN"', "NaN", "Infinity",
           "-Infinity", "1e309", "-1e309", "[1]", "[[1, 2]]", '{"a": 1}', "null0",
           "86400000001", "1e-400"]


@pytest.fixture(scope="module")
def hostile_server(engine):
    with BackgroundHTTP(_served(engine)) as srv:
        yield srv


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_timeout_is_400_never_500(hostile_server, value):
    x = np.ones((1, 4), np.float32)
    body = _request(x)[:-1] + b', "parameters": {"timeout": ' + value.encode() + b"}}"
    status, answer = _post(hostile_server.port, INFER, body)
    assert status == 400, (value, answer)
    assert json.loads(answer)["error"]


@pytest.mark.parametrize(("field", "value"), [
    ("shape", "[1, " + "9" * 400 + "]"), ("shape", "[1e3, 4]"), ("shape", "[1, -4]"),
    ("shape", "[true, 4]"), ("shape", '"1,4"'), ("shape", "[" + "1," * 40 + "4]"),
    ("binary_data_size", "1" + "0" * 400), ("binary_data_size", "-16"),
    ("binary_data_size", "16.0"), ("binary_data_output", '"false"'),
    ("binary_data_output", "1"), ("header_length", "1e3"), ("header_length", "\uff11\uff12"),
    ("header_length", "-5"), ("header_length", "9" * 40),
])
def test_hostile_shapes_sizes_and_flags_are_400(hostile_server, field, value):
    x = np.ones((1, 4), np.float32)
    raw = x.astype("<f4").tobytes()
    headers: dict[str, str] = {}
    if field == "shape":
        body = _request(x).replace(b'"shape": [1, 4]', b'"shape": ' + value.encode())
    elif field == "binary_data_size":
        head = ('{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],'
                '"parameters":{"binary_data_size":' + value + '}}]}').encode()
        body, headers = head + raw, {"Inference-Header-Content-Length": str(len(head))}
    elif field == "binary_data_output":
        body = _request(x)[:-1] + b', "parameters": {"binary_data_output": ' + \
            value.encode() + b"}}"
    else:
        body, headers = _request(x), {"Inference-Header-Content-Length": value}
    conn = http.client.HTTPConnection("127.0.0.1", hostile_server.port, timeout=30)
    try:
        conn.putrequest("POST", INFER)
        for k, v in {"content-length": str(len(body)), **headers}.items():
            conn.putheader(k, v.encode("utf-8"))
        conn.endheaders(body)
        r = conn.getresponse()
        status, answer = r.status, r.read()
    finally:
        conn.close()
    assert status == 400, (field, value, answer)
    assert json.loads(answer)["error"]
    ok, out = _post(hostile_server.port, INFER, _request(x))
    assert ok == 200 and json.loads(out)["outputs"][0]["data"] == [2.0] * 4


# -- a 60 MB request does not stall anyone ----------------------------------------------------
def _probe(port: int, path: str, stop: threading.Event, out: list[tuple[float, float]]) -> None:
    """GET ``path`` on one keep-alive connection until ``stop``: (time sent, latency)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        while not stop.is_set():
            t = time.perf_counter()
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            assert r.status == 200
            out.append((t, time.perf_counter() - t))
            time.sleep(0.01)
    finally:
        conn.close()


def _small_infers(port: int, n: int, body: bytes) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    lat = []
    try:
        for _ in range(n):
            t = time.perf_counter()
            conn.request("POST", INFER, body=body)
            r = conn.getresponse()
            r.read()
            assert r.status == 200
            lat.append(time.perf_counter() - t)
            time.sleep(0.02)
    finally:
        conn.close()
    return lat


def _big_body(values: int) -> bytes:
    block = ",".join(repr(float(v)) for v in
                     np.random.default_rng(1).standard_normal(1000).astype(np.float32))
    data = ",".join([block] * (values // 1000))
    return _flat_text(values, data).encode()


def _send_slowly(port: int, body: bytes, pieces: int, result: list, sent_at: list) -> None:
    """POST ``body`` in ``pieces`` writes 10 ms apart; records when sending ended."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    try:
        sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode())
        step = -(-len(body) // pieces)
        for i in range(0, len(body), step):
            sock.sendall(body[i:i + step])
            time.sleep(0.01)
        sent_at.append(time.perf_counter())
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        result.append(answer)
    finally:
        sock.close()


def test_a_60mb_json_request_leaves_health_and_small_requests_responsive(engine):
    psutil = pytest.importorskip("psutil", reason="needs psutil to measure the process's RSS")
    proc = psutil.Process()
    big = _big_body(3_000_000)  # ~60 MB of FP32 JSON, as tritonclient writes it
    assert 55e6 < len(big) < 64 * 1024 * 1024
    small = _request(np.arange(8, dtype=np.float32).reshape(2, 4))
    with BackgroundHTTP(_served(engine)) as srv:
        baseline = _small_infers(srv.port, 20, small)
        stop, probes = threading.Event(), []
        prober = threading.Thread(target=_probe, args=(srv.port, "/v2/health/live", stop, probes))
        peak, rss0 = [0], proc.memory_info().rss

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        result: list[bytes] = []
        sent_at: list[float] = []
        sender = threading.Thread(target=_send_slowly,
                                  args=(srv.port, big, 120, result, sent_at))
        prober.start()
        sampler.start()
        start = time.perf_counter()
        sender.start()
        during = _small_infers(srv.port, 20, small)
        sender.join(120)
        done = time.perf_counter()
        stop.set()
        prober.join(10)
        sampler.join(10)
    assert result, "no answer to the 60 MB request"
    head, _, payload = result[0].partition(b"\r\n\r\n")
    # Decoded in full (3M values), then refused by the engine's profile (T <= 1024): a typed 400.
    assert head.startswith(b"HTTP/1.1 400"), result[0][:300]
    assert "profile" in json.loads(payload)["error"] or "shape" in json.loads(payload)["error"]
    sending = [lat for t, lat in probes if start <= t <= sent_at[0]]
    decoding = [lat for t, lat in probes if sent_at[0] < t <= done]
    assert len(sending) >= 10 and len(decoding) >= 5, (len(sending), len(decoding))
    report = {phase: (round(statistics.median(v) * 1e3, 1), round(max(v) * 1e3, 1))
              for phase, v in (("sending", sending), ("decoding", decoding))}
    print("health latency ms (median, max):", report,
          "small infer ms (baseline, during):", round(statistics.median(baseline) * 1e3, 1),
          round(statistics.median(during) * 1e3, 1),
          "RSS delta MB:", round((peak[0] - rss0) / 1e6))
    # 2 shared cores: medians must be < 50 ms, single outliers < 200 ms.
    for phase, lats in (("sending", sending), ("decoding", decoding)):
        assert statistics.median(lats) < 0.05, (phase, report)
        assert max(lats) < 0.2, (phase, report)
    assert statistics.median(during) < max(10 * statistics.median(baseline), 0.05), \
        (baseline, during)
    # The body (60 MB, once as pieces and once joined) and the 12 MB array; json.loads with
    # np.asarray took ~870 MB.
    assert peak[0] - rss0 < 3 * len(big), (peak[0] - rss0) / 1e6


# -- slow, idle and vanishing clients ---------------------------------------------------------
SHORT = HTTPLimits(header_timeout_s=1.0, body_idle_s=1.0, body_timeout_s=2.0, keep_alive_s=1)


@pytest.fixture(scope="module")
def short_server(engine):
    with BackgroundHTTP(_served(engine), limits=SHORT) as srv:
        yield srv


def _closed_after(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    """Seconds until the server closes ``sock`` (reading what it sends), at most ``limit``."""
    sock.settimeout(limit)
    start, got = time.monotonic(), b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return time.monotonic() - start, got
            got += chunk
    except TimeoutError:
        return float("inf"), got
    except ConnectionResetError:
        return time.monotonic() - start, got


def test_an_idle_connection_is_closed(short_server):
    with socket.create_connection(("127.0.0.1", short_server.port)) as sock:
        elapsed, got = _closed_after(sock, 10)
    assert 0.8 < elapsed < 2.5 and got == b"", elapsed


def test_headers_sent_byte_by_byte_are_cut_off(short_server):
    head = (f"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Pad: {'a' * 200}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", short_server.port)) as sock:
        start = time.monotonic()
        sent = 0
        try:
            for byte in head:
                sock.sendall(bytes([byte]))
                sent += 1
                time.sleep(0.05)  # 200+ bytes: over 10 s if the server let it go on
                if time.monotonic() - start > 10:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        _, got = _closed_after(sock, 10)
        total = time.monotonic() - start
    assert sent < len(head) and total < 3.0 and b"200 OK" not in got, (sent, total, got)


def test_headers_without_the_body_get_408_or_a_close(short_server):
    with socket.create_connection(("127.0.0.1", short_server.port)) as sock:
        sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                     .encode() + b'{"inputs"')
        elapsed, got = _closed_after(sock, 10)
    assert got.startswith(b"HTTP/1.1 408") and elapsed < 2.5, (elapsed, got)
    assert b"connection: close" in got.lower()
    # A route that does not read the body: answered, then the connection goes.
    with socket.create_connection(("127.0.0.1", short_server.port)) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n")
        elapsed, got = _closed_after(sock, 10)
    assert elapsed < 2.5, (elapsed, got)
    # A body trickled a byte at a time: 408 once the whole-body deadline (2 s) passes.
    with socket.create_connection(("127.0.0.1", short_server.port)) as sock:
        sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                     .encode())
        start = time.monotonic()
        got = b""
        try:
            while time.monotonic() - start < 10 and not got:
                sock.sendall(b" ")
                sock.settimeout(0.5)
                with contextlib.suppress(TimeoutError):
                    got = sock.recv(65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        total = time.monotonic() - start
    assert got.startswith(b"HTTP/1.1 408") and 1.8 < total < 3.5, (total, got)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_client_leaving_mid_body_is_one_info_line(short_server):
    handler = _Records()
    loggers = [logging.getLogger(n) for n in ("regiontrt.serve", "uvicorn", "uvicorn.error",
                                                "starlette", "")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
    logging.getLogger("regiontrt.serve").setLevel(logging.INFO)
    try:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", short_server.port)) as sock:
                sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000"
                             "\r\n\r\n".encode() + b'{"inputs": [' + b"1," * 5000)
                time.sleep(0.1)
            time.sleep(0.3)
        ok, _ = _post(short_server.port, INFER, _request(np.ones((1, 4), np.float32)))
        assert ok == 200
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)
    records = {id(r): r for r in handler.records}.values()  # one record, several loggers
    errors = [r for r in records if r.levelno >= logging.WARNING]
    assert errors == [], [(r.name, r.getMessage()) for r in errors]
    left = [r for r in records if "went away" in r.getMessage()]
    assert len(left) == 3 and all(r.levelno == logging.INFO and r.exc_info is None
                                  for r in left), [r.getMessage() for r in records]


# -- draining ---------------------------------------------------------------------------------
def test_readiness_is_503_from_the_start_of_draining_and_live_stays_200(engine):
    server = _served(engine)
    with BackgroundHTTP(server) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)

        def get(path: str) -> int:
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            return r.status

        assert get("/v2/health/ready") == 200 and get(f"/v2/models/{MODEL}/ready") == 200
        server.begin_drain()
        assert get("/v2/health/ready") == 503
        assert get(f"/v2/models/{MODEL}/ready") == 503
        assert get("/v2/health/live") == 200
        # Requests already on their way still run while draining.
        ok, out = _post(srv.port, INFER, _request(np.ones((1, 4), np.float32)))
        assert ok == 200 and json.loads(out)["outputs"][0]["data"] == [2.0] * 4
        conn.close()
    other = _served(engine)
    with BackgroundHTTP(other) as srv:
        assert other.ready
        srv._uv.handle_exit(signal.SIGTERM, None)  # what uvicorn's signal handler calls
        assert not other.ready  # at once, not after uvicorn's next tick


def test_after_sigterm_readiness_never_answers_200(engine, tmp_path):
    """The CLI server, SIGTERMed with a request in flight: every readiness probe from then on
    is refused or 503 (uvicorn notices the signal only on its next 0.1 s tick)."""
    path = tmp_path / "double.CERTIFIED.engine"
    engine.save(path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": str(Path(rt.__file__).parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from regiontrt.cli import main; sys.exit(main())",
         "serve", str(path), "--port", str(port), "--mode", "throughput", "--max-batch", "64",
         "--max-delay-ms", "2000", "--log-level", "warning", "--header-timeout-s", "5"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/v2/health/ready")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "did not start"
            time.sleep(0.1)
        replies: list[tuple[int, bytes]] = []
        sender = threading.Thread(target=lambda: replies.append(_post(
            port, "/v2/models/double_CERTIFIED/infer", _request(np.ones((1, 4), np.float32)))))
        sender.start()
        time.sleep(0.5)  # queued for the 2 s fill
        proc.send_signal(signal.SIGTERM)
        statuses = []
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/v2/health/ready")
                statuses.append(c.getresponse().status)
                c.close()
            except OSError:
                statuses.append(0)  # refused: no longer listening
        sender.join(20)
        assert proc.wait(20) in (0, -signal.SIGTERM)
        print("readiness after SIGTERM:", Counter(statuses))
        assert statuses and 200 not in statuses, statuses
        assert replies and replies[0][0] == 200  # the in-flight request was still answered
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
