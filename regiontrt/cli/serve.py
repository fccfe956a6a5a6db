"""``regiontrt serve``: the KServe v2 / Triton HTTP (and gRPC) endpoints over an engine, bundle
or install."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from regiontrt.cli._common import non_negative_float, positive_float, positive_int, share

if TYPE_CHECKING:
    from regiontrt.serve.grpc_server import BackgroundGRPC
    from regiontrt.serve.server import Server


def _cmd_serve(args: argparse.Namespace) -> int:
    from regiontrt.errors import BackendUnavailable
    from regiontrt.serve import serve

    try:
        from regiontrt.serve.runner import HTTPLimits, serve_http
    except ImportError as exc:
        raise BackendUnavailable(
            f"regiontrt serve needs the web stack ({exc.name}): pip install 'regiontrt[serve]'"
        ) from exc

    handler = _one_log(args.log_level)
    if args.regions_file:
        from regiontrt.precision.regions import load_regions

        load_regions(args.regions_file)
    sources = args.source if len(args.source) > 1 else args.source[0]
    server = serve(sources, name=args.name, max_batch=args.max_batch,
                   max_delay_ms=args.max_delay_ms, mode=args.mode, max_queue=args.max_queue,
                   sla_ms=args.sla_ms, shed_late=args.shed_late == "on")
    if args.monitor > 0:
        server.monitor(sample_rate=args.monitor)
    grpc_endpoint = None
    try:
        if args.grpc_port is not None:
            grpc_endpoint = _start_grpc(server, args)
        serve_http(server, host=args.host, port=args.port,
                   max_body=int(args.max_body_mb * 1024 * 1024), graceful_s=args.graceful_s,
                   log_level=args.log_level, limits=HTTPLimits(
                       max_decoded=int(args.max_decoded_mb * 1024 * 1024),
                       header_timeout_s=args.header_timeout_s, body_idle_s=args.body_idle_s,
                       body_timeout_s=args.body_timeout_s, keep_alive_s=args.keep_alive_s,
                       decode_workers=args.decode_workers,
                       max_connections=args.max_connections), uvicorn_logging=False)
    finally:
        if grpc_endpoint is not None:
            grpc_endpoint.stop(timeout=args.graceful_s + 5)
        server.close()
        for name in _SERVER_LOGGERS:
            logging.getLogger(name).removeHandler(handler)
            logging.getLogger(name).propagate = True
    return 0


#: Loggers of the servers' stacks that get the CLI's one handler (they stop propagating to the
#: root meanwhile, so a root handler set up elsewhere does not print each line again).
_SERVER_LOGGERS = ("uvicorn", "grpc")


def _one_log(level: str) -> logging.Handler:
    """One handler, one format, for regiontrt's, uvicorn's and grpc's records: each event is
    one line (the CLI's own ``regiontrt`` handler is replaced, uvicorn installs none)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    setattr(handler, "_regiontrt_cli", True)  # noqa: B010 - removed by the CLI's reset_logging
    number = getattr(logging, level.upper(), logging.INFO)
    ours = logging.getLogger("regiontrt")
    for old in list(ours.handlers):
        if getattr(old, "_regiontrt_cli", False):
            ours.removeHandler(old)
    ours.addHandler(handler)
    ours.setLevel(number)
    for name in _SERVER_LOGGERS:
        other = logging.getLogger(name)
        other.addHandler(handler)
        other.setLevel(number)
        other.propagate = False
    return handler


def _start_grpc(server: Server, args: argparse.Namespace) -> BackgroundGRPC:
    from regiontrt.errors import BackendUnavailable

    try:
        from regiontrt.serve.grpc_server import BackgroundGRPC
    except ImportError as exc:
        raise BackendUnavailable(
            f"--grpc-port needs grpcio and tritonclient[grpc] ({exc.name}): "
            "pip install 'regiontrt[serve]'"
        ) from exc
    return BackgroundGRPC(server, args.host, args.grpc_port,
                          max_message=int(args.max_body_mb * 1024 * 1024),
                          max_decoded=int(args.max_decoded_mb * 1024 * 1024),
                          decode_workers=args.decode_workers, close_server=False,
                          grace_s=args.graceful_s).start()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` to the ``regiontrt`` parser."""
    s = sub.add_parser("serve", help="serve engines over the KServe v2 / Triton HTTP protocol "
                       "(needs the serve extra)")
    s.add_argument("source", nargs="+",
                   help=".engine file(s), a bundle or an install folder, e.g. rec.EU.engine "
                        "rec.NA.engine")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1), e.g. 0.0.0.0")
    s.add_argument("--port", type=positive_int, default=8000,
                   help="port to listen on (default: 8000), e.g. 8080")
    s.add_argument("--grpc-port", type=positive_int, metavar="N",
                   help="also serve the KServe v2 / Triton gRPC protocol on this port "
                        "(default: off), e.g. 8001")
    s.add_argument("--name", help="model name before _<region> (default: the bundle's name or "
                                  "the file's stem), e.g. rec")
    s.add_argument("--mode", default="adaptive", choices=("adaptive", "latency", "throughput"),
                   help="batching: adaptive switches between latency (small batches, no wait) "
                        "and throughput (full batches) with the load (default: adaptive), "
                        "e.g. latency")
    s.add_argument("--max-batch", type=positive_int, default=32, metavar="N",
                   help="most requests' rows run in one batch (default: 32), e.g. 16")
    s.add_argument("--max-delay-ms", type=non_negative_float, default=5.0, metavar="MS",
                   help="longest a request waits for a batch to fill (default: 5), e.g. 2")
    s.add_argument("--max-queue", type=positive_int, default=1024, metavar="N",
                   help="requests waiting before new ones get 503 (default: 1024), e.g. 256")
    s.add_argument("--sla-ms", type=positive_float, metavar="MS",
                   help="p99 latency SLA (default: the region's), e.g. 50")
    s.add_argument("--shed-late", default="off", choices=("on", "off"),
                   help="answer 503, without running it, a request that can no longer meet the "
                        "SLA (default: off; see docs/serving.md before turning it on), e.g. on")
    s.add_argument("--max-body-mb", type=positive_float, default=64.0, metavar="MB",
                   help="largest request body accepted (default: 64), e.g. 16")
    s.add_argument("--max-decoded-mb", type=positive_float, default=128.0, metavar="MB",
                   help="cap on one request's decoded input arrays (default: 128), e.g. 32")
    s.add_argument("--header-timeout-s", type=positive_float, default=10.0, metavar="S",
                   help="close a connection whose request head is not complete this long "
                        "after it opened or its last response (default: 10), e.g. 5")
    s.add_argument("--body-idle-s", type=positive_float, default=10.0, metavar="S",
                   help="408 when the next piece of a body takes longer (default: 10), e.g. 5")
    s.add_argument("--body-timeout-s", type=positive_float, default=60.0, metavar="S",
                   help="408 when a whole body takes longer (default: 60), e.g. 30")
    s.add_argument("--keep-alive-s", type=positive_int, default=5, metavar="S",
                   help="close idle keep-alive connections after this (default: 5), e.g. 2")
    s.add_argument("--decode-workers", type=positive_int, default=2, metavar="N",
                   help="threads decoding request bodies off the event loop (default: 2), "
                        "e.g. 4")
    s.add_argument("--max-connections", type=positive_int, metavar="N",
                   help="open connections past which new requests get 503 (default: no "
                        "limit), e.g. 1000")
    s.add_argument("--graceful-s", type=non_negative_float, default=30.0, metavar="S",
                   help="on SIGTERM, wait this long for in-flight requests (default: 30), "
                        "e.g. 10")
    s.add_argument("--monitor", type=share, default=0.0, metavar="RATE",
                   help="sample this share of requests for drift monitoring (default: 0, off), "
                        "e.g. 0.05")
    s.add_argument("--regions-file", metavar="TOML",
                   help="TOML file adding or overriding regions, e.g. mine.toml")
    s.add_argument("--log-level", default="info",
                   choices=("critical", "error", "warning", "info", "debug"),
                   help="server log level (default: info), e.g. warning")
    s.set_defaults(func=_cmd_serve)
