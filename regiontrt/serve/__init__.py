"""Serving at the edge: dynamic batching, a KServe v2 / Triton HTTP endpoint, drift monitoring.

``rt.serve(engine_or_path_or_bundle, max_batch=32, max_delay_ms=5, mode="adaptive")`` returns a
:class:`Server` (in process, thread-safe). :func:`regiontrt.serve.http.create_app` wraps it in a
Starlette app speaking the KServe v2 protocol (the ``serve`` extra: starlette, uvicorn,
prometheus-client); ``regiontrt serve`` runs that app on uvicorn. This package sits above
``engine`` and uses only the Engine's public API.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from regiontrt.serve.modes import (
    AdaptivePolicy,
    BatchPlan,
    BatchPolicy,
    LatencyPolicy,
    LoadStats,
    ThroughputPolicy,
)
from regiontrt.serve.server import Server, UnknownModel, serve
from regiontrt.serve.sources import ServedModel, Variant, resolve

__all__ = [
    "AdaptivePolicy",
    "BatchPlan",
    "BatchPolicy",
    "LatencyPolicy",
    "LoadStats",
    "ServedModel",
    "Server",
    "ThroughputPolicy",
    "UnknownModel",
    "Variant",
    "resolve",
    "serve",
]


class _CallableModule(types.ModuleType):
    """Importing ``regiontrt.serve`` binds the package attribute ``regiontrt.serve`` to this
    module, shadowing the lazily exported function; calling the module keeps ``rt.serve(...)``
    working either way."""

    def __call__(self, *args: Any, **kwargs: Any) -> Server:
        return serve(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
