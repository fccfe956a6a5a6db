"""The HTTP endpoint against hostile requests: huge JSON, hostile numbers, memory caps (the
codec directly, and real uvicorn on 127.0.0.1); slow and idle clients: test_http_connections."""

from __future__ import annotations

import http.client
import json
import socket
import statistics
import threading
import time

import numpy as np
import pytest

pytest.importorskip("starlette", reason="needs starlette (pip install 'regiontrt[serve]')")
pytest.importorskip("uvicorn", reason="needs uvicorn (pip install 'regiontrt[serve]')")

from http_hostile import INFER, build_engine, post, request, served

from regiontrt.serve.jsonscan import SMALL, NumberRun, load_infer_json
from regiontrt.serve.protocol import ProtocolError, decode_infer
from regiontrt.serve.runner import BackgroundHTTP


@pytest.fixture(scope="module")
def engine():
    return build_engine()


# -- the JSON codec ---------------------------------------------------------------------------
def _flat_text(count: int, data: str) -> str:
    return ('{"inputs":[{"name":"x","datatype":"FP32","shape":[1,' + str(count) +
            '],"data":[' + data + ']}]}')


def _reference(body: bytes) -> np.ndarray:
    entry = json.loads(body)["inputs"][0]
    return np.asarray(entry["data"], np.float32).reshape(entry["shape"])


def test_fast_json_path_gives_what_json_loads_gives(engine):
    model = served(engine)
    try:
        sm = model.model()
        rng = np.random.default_rng(0)
        x = rng.standard_normal((64, 300)).astype(np.float32)
        flat = request(x)
        assert len(flat) > SMALL
        parsed = load_infer_json(flat, 1 << 30)
        assert isinstance(parsed["inputs"][0]["data"], NumberRun)  # the fast path ran
        got = decode_infer(flat, None, sm).inputs["x"]
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
            have = decode_infer(body, None, sm).inputs["x"]
            assert have.shape == want.shape
            np.testing.assert_array_equal(have, want)
        special = _flat_text(x.size + 3, data + ",NaN,Infinity,-Infinity").encode()
        have = decode_infer(special, None, sm).inputs["x"]
        assert np.isnan(have[0, -3]) and have[0, -2] == np.inf and have[0, -1] == -np.inf
        assert np.array_equal(have[0, :-3], x.reshape(-1))
        for bad in (data + ",", data + ",,1", data.replace(", ", ", 1 2", 1),
                    data.replace(", ", ", [", 1)):
            body = _flat_text(x.size, bad).encode()
            with pytest.raises(ProtocolError) as err:
                decode_infer(body, None, sm)
            assert err.value.status == 400, bad[-40:]
            with pytest.raises(json.JSONDecodeError):  # json.loads refuses it too
                json.loads(body)
    finally:
        model.close()


def test_counts_and_memory_cap_are_checked_before_any_array(engine):
    model = served(engine)
    try:
        sm = model.model()
        x = np.ones((64, 1024), np.float32)
        body = request(x).replace(b'"shape": [64, 1024]', b'"shape": [64, 1000]')
        with pytest.raises(ProtocolError, match="65536 values for shape") as err:
            decode_infer(body, None, sm)
        assert err.value.status == 400
        with pytest.raises(ProtocolError, match="over the 1000-byte cap") as err:
            decode_infer(request(x), None, sm, max_bytes=1000)
        assert err.value.status == 413
        raw = x.astype("<f4").tobytes()
        head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [64, 1024],
                                       "parameters": {"binary_data_size": len(raw)}}]}).encode()
        with pytest.raises(ProtocolError, match="cap") as err:
            decode_infer(head + raw, str(len(head)), sm, max_bytes=len(raw) - 1)
        assert err.value.status == 413
        nested = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [64, 1024],
                                         "data": x.tolist()}]}).encode()
        with pytest.raises(ProtocolError, match="memory cap") as err:  # 32 bytes a value
            decode_infer(nested, None, sm, max_bytes=32 * 1000)
        assert err.value.status == 413
    finally:
        model.close()


def test_pathological_json_is_refused_quickly(engine):
    model = served(engine)
    try:
        sm = model.model()
        bodies = [
            b'{"inputs":[' + b'{"data": [' * 300_000 + b"1" + b"]}" * 300_000 + b"]}",
            b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[' +
            b"[]," * 3_000_000 + b"1]}]}",
            b'{"id":[' + b'"",' * 3_000_000 + b'""]}',
        ]
        for body in bodies:
            start = time.perf_counter()
            with pytest.raises(ProtocolError) as err:
                decode_infer(body, None, sm)
            assert err.value.status in (400, 413)
            assert time.perf_counter() - start < 5, (body[:40], time.perf_counter() - start)
    finally:
        model.close()


# -- hostile numbers --------------------------------------------------------------------------
HOSTILE = ["1" + "0" * 400, "-1", "0", '"abc"', "true", '"NaN"', "NaN", "Infinity",
           "-Infinity", "1e309", "-1e309", "[1]", "[[1, 2]]", '{"a": 1}', "null0",
           "86400000001", "1e-400"]


@pytest.fixture(scope="module")
def hostile_server(engine):
    with BackgroundHTTP(served(engine)) as srv:
        yield srv


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_timeout_is_400_never_500(hostile_server, value):
    x = np.ones((1, 4), np.float32)
    body = request(x)[:-1] + b', "parameters": {"timeout": ' + value.encode() + b"}}"
    status, answer = post(hostile_server.port, INFER, body)
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
        body = request(x).replace(b'"shape": [1, 4]', b'"shape": ' + value.encode())
    elif field == "binary_data_size":
        head = ('{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],'
                '"parameters":{"binary_data_size":' + value + '}}]}').encode()
        body, headers = head + raw, {"Inference-Header-Content-Length": str(len(head))}
    elif field == "binary_data_output":
        body = request(x)[:-1] + b', "parameters": {"binary_data_output": ' + \
            value.encode() + b"}}"
    else:
        body, headers = request(x), {"Inference-Header-Content-Length": value}
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
    ok, out = post(hostile_server.port, INFER, request(x))
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
    small = request(np.arange(8, dtype=np.float32).reshape(2, 4))
    with BackgroundHTTP(served(engine)) as srv:
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
    # Bounds relative to each phase's length, so a slow or loaded machine does not fail them: a
    # loop blocked by the upload or the decode would make a probe wait about the whole phase.
    lengths = {"sending": sent_at[0] - start, "decoding": done - sent_at[0]}
    for phase, lats in (("sending", sending), ("decoding", decoding)):
        assert statistics.median(lats) < max(0.1 * lengths[phase], 0.05), (phase, report, lengths)
        assert max(lats) < max(0.5 * lengths[phase], 0.2), (phase, report, lengths)
    assert statistics.median(during) < max(10 * statistics.median(baseline), 0.05), \
        (baseline, during)
    # The body (60 MB, once as pieces and once joined) and the 12 MB array; json.loads with
    # np.asarray took ~870 MB.
    assert peak[0] - rss0 < 3 * len(big), (peak[0] - rss0) / 1e6


