"""``regiontrt serve``: the KServe v2 / Triton HTTP endpoint over an engine, bundle or install."""

from __future__ import annotations

import argparse
import logging


def _cmd_serve(args: argparse.Namespace) -> int:
    from ..serve import serve
    from ..serve.runner import serve_http

    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.regions_file:
        from ..regions import load_regions

        load_regions(args.regions_file)
    sources = args.source if len(args.source) > 1 else args.source[0]
    server = serve(sources, name=args.name, max_batch=args.max_batch,
                   max_delay_ms=args.max_delay_ms, mode=args.mode, max_queue=args.max_queue,
                   sla_ms=args.sla_ms)
    if args.monitor > 0:
        server.monitor(sample_rate=args.monitor)
    try:
        serve_http(server, host=args.host, port=args.port,
                   max_body=int(args.max_body_mb * 1024 * 1024), graceful_s=args.graceful_s,
                   log_level=args.log_level)
    finally:
        server.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``regiontrt`` parser."""
    s = sub.add_parser("serve", help="serve engines over the KServe v2 / Triton HTTP protocol "
                       "(needs the serve extra)")
    s.add_argument("source", nargs="+", help=".engine file(s), a bundle or an install directory")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--name", help="model name before _<region> (default: bundle name or stem)")
    s.add_argument("--mode", default="adaptive", choices=("adaptive", "latency", "throughput"))
    s.add_argument("--max-batch", type=int, default=32)
    s.add_argument("--max-delay-ms", type=float, default=5.0)
    s.add_argument("--max-queue", type=int, default=1024)
    s.add_argument("--sla-ms", type=float, help="p99 SLA (default: the region's)")
    s.add_argument("--max-body-mb", type=float, default=64.0)
    s.add_argument("--graceful-s", type=float, default=30.0,
                   help="on SIGTERM, wait this long for in-flight requests")
    s.add_argument("--monitor", type=float, default=0.0, metavar="RATE",
                   help="sample this share of requests for drift monitoring (0: off)")
    s.add_argument("--regions-file", help="TOML file adding or overriding regions")
    s.add_argument("--log-level", default="info",
                   choices=("critical", "error", "warning", "info", "debug"))
    s.set_defaults(func=_cmd_serve)
