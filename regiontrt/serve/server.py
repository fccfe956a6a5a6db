"""The in-process server: one batcher per served model, metrics, and the drift monitor.

>>> server = rt.serve(engine, max_batch=32, max_delay_ms=5, mode="adaptive")   # doctest: +SKIP
>>> future = server.submit({"input": x})                                          # doctest: +SKIP
>>> logits = future.result()["logits"]                                            # doctest: +SKIP
>>> server.close()                                                                # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any

from regiontrt.errors import InputError, ServerClosed
from regiontrt.serve.batcher import ModelBatcher
from regiontrt.serve.metrics import ServeMetrics
from regiontrt.serve.modes import BatchPolicy, make_policy
from regiontrt.serve.sources import ServedModel, resolve

if TYPE_CHECKING:
    from regiontrt.serve.drift import DriftMonitor

log = logging.getLogger("regiontrt.serve")


class UnknownModel(InputError, KeyError):
    """A request named a model this server does not serve (HTTP 404)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Server:
    """Dynamic batching over one or more served models; thread-safe.

    Args:
        models: what to serve (see :func:`regiontrt.serve.sources.resolve`).
        max_batch: most rows per batch.
        max_delay_ms: longest wait to fill a batch (throughput and adaptive modes).
        mode: ``"latency"``, ``"throughput"``, ``"adaptive"``, or a :class:`BatchPolicy`
            instance (only when one model is served).
        max_queue: most requests waiting per model; past it :meth:`submit` raises
            :class:`~regiontrt.errors.Overloaded`.
        sla_ms: the p99 latency SLA (default: the region's ``latency_p99_ms``).
        batch_invariance: ``"fast"`` (default): batches of any size, so a request's outputs may
            differ in the last bits between a run alone and a run inside a batch (kernels pick
            other blocking for other batch sizes; see docs/serving.md for measured figures).
            ``"exact"``: every run is padded to one fixed size (``max_batch``, within the
            default variant's profile) on the default variant, so each request sees the same
            kernels whether alone or batched: bit-identical outputs, at the cost of running
            ``max_batch`` rows for every batch.
        shed_late: fail with :class:`~regiontrt.errors.LoadShed` (HTTP 503), without running
            it, every request that can no longer be answered within the SLA (no effect
            without an SLA). Off by default: measured under a 5x surge it lowered the surge's
            SLA attainment, over HTTP and in process (docs/benchmarks.md, "Serving").
    """

    def __init__(self, models: list[ServedModel], *, max_batch: int = 32,
                 max_delay_ms: float = 5.0, mode: str | BatchPolicy = "adaptive",
                 max_queue: int = 1024, sla_ms: float | None = None,
                 batch_invariance: str = "fast", shed_late: bool = False) -> None:
        if batch_invariance not in ("fast", "exact"):
            raise ValueError(f"batch_invariance must be 'fast' or 'exact', got "
                             f"{batch_invariance!r}")
        if not models:
            raise InputError("nothing to serve")
        if isinstance(mode, BatchPolicy) and len(models) > 1:
            raise ValueError("pass a mode name when serving several models (one policy each)")
        if sla_ms is not None and not (sla_ms > 0 and math.isfinite(sla_ms)):
            raise ValueError(f"sla_ms must be > 0, got {sla_ms}")
        self.metrics = ServeMetrics()
        self.mode = mode if isinstance(mode, str) else mode.name
        self.shed_late = bool(shed_late)
        self.batch_invariance = batch_invariance
        self._batchers: dict[str, ModelBatcher] = {}
        self._monitor: DriftMonitor | None = None
        self._closed = False
        self._draining = False
        try:
            for m in models:
                sla = sla_ms if sla_ms is not None else \
                    m.engine.metadata.get("region", {}).get("latency_p99_ms")
                policy = make_policy(mode, max_batch, max_delay_ms)
                self._batchers[m.name] = ModelBatcher(
                    m, policy, self.metrics, max_queue, None if sla is None else float(sla) / 1e3,
                    fixed_rows=max_batch if batch_invariance == "exact" else None,
                    shed_late=self.shed_late)
                log.info("[model=%s region=%s version=%s] serving: precision %s, %d "
                         "variant(s), mode %s", m.name, m.region, m.version, m.engine.precision,
                         len(m.variants), policy.name)
        except BaseException:
            for b in self._batchers.values():  # no worker thread outlives a failed start
                b.close(drain=False)
            raise

    # -- models -------------------------------------------------------------------------------
    @property
    def models(self) -> dict[str, ServedModel]:
        return {name: b.model for name, b in self._batchers.items()}

    def model(self, name: str | None = None) -> ServedModel:
        return self._batcher(name).model

    def _batcher(self, name: str | None) -> ModelBatcher:
        if name is None:
            if len(self._batchers) != 1:
                raise UnknownModel(f"this server serves {sorted(self._batchers)}; name one")
            return next(iter(self._batchers.values()))
        try:
            return self._batchers[name]
        except KeyError:
            raise UnknownModel(
                f"unknown model {name!r}; served: {', '.join(sorted(self._batchers))}"
            ) from None

    def sla_ms(self, name: str | None = None) -> float | None:
        """The model's p99 latency SLA in ms, or ``None`` where it has none."""
        sla_s = self._batcher(name).sla_s
        return None if sla_s is None else sla_s * 1e3

    @property
    def ready(self) -> bool:
        """Whether every batcher is running and the server is neither draining nor closed."""
        return not (self._closed or self._draining) and \
            all(b.alive for b in self._batchers.values())

    @property
    def draining(self) -> bool:
        """Whether shutdown has begun (:meth:`begin_drain` or :meth:`close`)."""
        return self._draining or self._closed

    def begin_drain(self) -> None:
        """Mark the server as going away: :attr:`ready` turns False at once (health checks
        answer 503) while requests already sent, and new ones, still run until :meth:`close`.
        """
        if not self._draining:
            self._draining = True
            log.info("draining: no longer ready")

    # -- requests -----------------------------------------------------------------------------
    def submit(self, inputs: Any, *, model: str | None = None,
               deadline_ms: float | None = None) -> Future[dict[str, Any]]:
        """Queue a request; returns a future of ``{output: array}``.

        Args:
            inputs: ``{input: array}`` (or one array for a single-input model); axis 0 is the
                batch axis.
            model: the served model's name (optional when one is served).
            deadline_ms: fail the request with :class:`DeadlineExceeded` rather than run it once
                this many milliseconds have passed.

        Raises:
            InputError: the inputs do not fit the model (raised here, never queued).
            Overloaded: the model's queue is full. (A request shed as late fails its future
                with :class:`~regiontrt.errors.LoadShed`, a subclass.)
            ServerClosed: the server is closing.
        """
        if self._closed:
            raise ServerClosed("the server is closed")
        if deadline_ms is not None and not deadline_ms > 0:
            raise InputError(f"deadline_ms must be > 0, got {deadline_ms}")
        return self._batcher(model).submit(
            inputs, None if deadline_ms is None else deadline_ms / 1e3)

    def infer(self, inputs: Any, *, model: str | None = None, deadline_ms: float | None = None,
              timeout: float | None = None) -> dict[str, Any]:
        """:meth:`submit` and wait for the outputs."""
        return self.submit(inputs, model=model, deadline_ms=deadline_ms).result(timeout)

    # -- observability ------------------------------------------------------------------------
    def stats(self) -> dict[str, dict[str, Any]]:
        """Metrics per model as a plain dict (see :meth:`ServeMetrics.snapshot`)."""
        snap = self.metrics.snapshot()
        for name, b in self._batchers.items():
            snap[name]["queue_depth"] = len(b.queue)
        return snap

    def monitor(self, sample_rate: float = 0.05, **options: Any) -> DriftMonitor:
        """Start (or return) the drift monitor; see :class:`regiontrt.serve.drift.DriftMonitor`."""
        from regiontrt.serve.drift import DriftMonitor

        if self._monitor is None:
            self._monitor = DriftMonitor(self.models, self.metrics, sample_rate=sample_rate,
                                         **options)
            for name, b in self._batchers.items():
                b.on_result = functools.partial(self._monitor.offer, name)
        return self._monitor

    # -- lifetime -----------------------------------------------------------------------------
    def close(self, *, drain: bool = True, timeout: float | None = 30.0) -> None:
        """Stop accepting requests, finish (``drain``) or fail what is queued, join threads."""
        if self._closed:
            return
        self._draining = True
        self._closed = True
        for b in self._batchers.values():
            b.close(drain=drain, timeout=timeout)
        if self._monitor is not None:
            for b in self._batchers.values():
                b.on_result = None
            self._monitor.close(timeout=timeout)
        for m in self.models.values():
            log.info("[model=%s region=%s version=%s] closed", m.name, m.region, m.version)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def serve(source: Any, *, name: str | None = None, max_batch: int = 32,
          max_delay_ms: float = 5.0, mode: str | BatchPolicy = "adaptive",
          max_queue: int = 1024, sla_ms: float | None = None,
          batch_invariance: str = "fast", shed_late: bool = False) -> Server:
    """Serve an engine, an ``.engine`` file, a bundle or an install directory in process.

    See :class:`Server` for the arguments; ``name`` overrides the ``<name>`` of the served
    ``<name>_<region>``.
    """
    if isinstance(source, Mapping):
        raise TypeError("serve() takes an Engine, a path or a bundle, not a mapping")
    return Server(resolve(source, name), max_batch=max_batch, max_delay_ms=max_delay_ms,
                  mode=mode, max_queue=max_queue, sla_ms=sla_ms,
                  batch_invariance=batch_invariance, shed_late=shed_late)
