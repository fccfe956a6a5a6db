"""The HTTP endpoint against slow, idle and vanishing clients, and readiness while draining
(real uvicorn on 127.0.0.1, real sockets)."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import regiontrt as rt

pytest.importorskip("starlette", reason="needs starlette (pip install 'regiontrt[serve]')")
pytest.importorskip("uvicorn", reason="needs uvicorn (pip install 'regiontrt[serve]')")

from http_hostile import INFER, MODEL, build_engine, post, request, served

from regiontrt.serve.runner import BackgroundHTTP, HTTPLimits


@pytest.fixture(scope="module")
def engine():
    return build_engine()


# -- slow, idle and vanishing clients ---------------------------------------------------------
SHORT = HTTPLimits(header_timeout_s=1.0, body_idle_s=1.0, body_timeout_s=2.0, keep_alive_s=1)


def _parsers() -> list:
    """Both HTTP parsers the head deadline is built on (httptools only where installed)."""
    import importlib.util

    has = importlib.util.find_spec("httptools") is not None
    return ["h11", pytest.param("httptools", marks=pytest.mark.skipif(
        not has, reason="needs httptools (pip install 'regiontrt[serve]')"))]


@pytest.fixture(scope="module", params=_parsers())
def short_server(engine, request):
    limits = dataclasses.replace(SHORT, parser=request.param)
    with BackgroundHTTP(served(engine), limits=limits) as srv:
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


def test_a_head_over_the_size_cap_is_refused_not_buffered(short_server):
    """A head that never ends is refused once past 16 KiB (h11's cap, which the httptools
    protocol enforces too): a 4xx answer, then the connection closed, not held until the head
    deadline while it grows."""
    with socket.create_connection(("127.0.0.1", short_server.port)) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(64):
                sock.sendall(b"a" * 1024)
        _, got = _closed_after(sock, 10)
    assert got.startswith(b"HTTP/1.1 4"), got[:200]


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
        ok, _ = post(short_server.port, INFER, request(np.ones((1, 4), np.float32)))
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
    server = served(engine)
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
        ok, out = post(srv.port, INFER, request(np.ones((1, 4), np.float32)))
        assert ok == 200 and json.loads(out)["outputs"][0]["data"] == [2.0] * 4
        conn.close()
    other = served(engine)
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
        sender = threading.Thread(target=lambda: replies.append(post(
            port, "/v2/models/double_CERTIFIED/infer", request(np.ones((1, 4), np.float32)))))
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


def test_the_head_deadline_rides_on_httptools_where_installed():
    """The endpoint uses uvicorn's C parser when it is there (h11's pure-Python parsing costs
    the single event loop far more a request), and says why when a parser cannot be had."""
    from regiontrt.serve.guard import head_timeout_protocol

    h11_impl = pytest.importorskip("uvicorn.protocols.http.h11_impl")
    assert issubclass(head_timeout_protocol(1.0, "h11"), h11_impl.H11Protocol)
    with pytest.raises(ValueError, match="parser"):
        head_timeout_protocol(1.0, "picohttp")
    with pytest.raises(ValueError, match="> 0"):
        head_timeout_protocol(0.0)
    tools = pytest.importorskip("uvicorn.protocols.http.httptools_impl",
                                reason="needs httptools (pip install 'regiontrt[serve]')")
    auto = head_timeout_protocol(2.5)
    assert issubclass(auto, tools.HttpToolsProtocol) and auto.header_timeout_s == 2.5
