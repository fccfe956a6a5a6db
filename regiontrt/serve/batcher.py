"""The dynamic batcher of one served model: a bounded queue and one worker thread.

``submit`` checks a request against the engine at once (so a bad request fails alone, never a
batch), pads it to the engine's width buckets, and queues it. The worker asks the policy for a
plan, waits at most the plan's delay for the batch to fill, fails requests whose deadline passed
(and, with ``shed_late``, those whose answer could no longer arrive within the SLA),
concatenates the rest along axis 0, runs the engine once, and splits the outputs back by rows
(cutting bucketed outputs back per request), so each caller gets exactly what running its
request alone gives on a row-independent model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

import numpy as np

from regiontrt.errors import DeadlineExceeded, InputError, LoadShed, ServerClosed
from regiontrt.runtime.engine import Engine
from regiontrt.serve.metrics import ServeMetrics
from regiontrt.serve.modes import BatchPolicy, LoadTracker
from regiontrt.serve.queue import Request, RequestQueue, shape_key
from regiontrt.serve.sources import ServedModel, Variant

log = logging.getLogger("regiontrt.serve")


class TaggedLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every message with the model, region and version, so a fault in a fleet's logs
    is traced to its region at a glance."""

    def __init__(self, logger: logging.Logger, model: ServedModel) -> None:
        super().__init__(logger, {"model": model.name, "region": model.region,
                                  "version": model.version})
        self.prefix = f"[model={model.name} region={model.region} version={model.version}] "

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return self.prefix + str(msg), kwargs


def _batch_limit(engine: Engine) -> int | None:
    """Most rows one run may hold (``None``: unbounded), or 0 when axis 0 is not a batch axis."""
    specs = [*engine.inputs, *engine.outputs]
    if any(s.rank == 0 or isinstance(s.shape[0], int) for s in specs):
        return 0
    limits = []
    for profile in engine.profiles:
        maxima = [r.max[0] for r in profile.ranges.values() if r.max]
        if maxima:
            limits.append(min(maxima))
    return max(limits) if limits else None


class ModelBatcher:
    """Queue and worker of one :class:`ServedModel`.

    Args:
        model: what is served.
        policy: the batching policy.
        metrics: where figures go.
        max_queue: most requests waiting.
        sla_s: the latency SLA the policy and metrics measure against.
        fixed_rows: pad every run to this many rows on the default variant (``serve(...,
            batch_invariance="exact")``); ``None``: run batches as they come.
        shed_late: fail with :class:`~regiontrt.errors.LoadShed`, without running it, a request
            that can no longer be answered within ``sla_s`` (ignored without an SLA).

    Attributes:
        on_result: called on the worker with the inputs of each request that ran, after its
            future is resolved (the drift monitor's sampler); must not block.
    """

    def __init__(self, model: ServedModel, policy: BatchPolicy, metrics: ServeMetrics,
                 max_queue: int, sla_s: float | None, fixed_rows: int | None = None,
                 shed_late: bool = False) -> None:
        self.model, self.policy, self.metrics, self.sla_s = model, policy, metrics, sla_s
        self.shed_late = bool(shed_late) and sla_s is not None
        self.queue = RequestQueue(max_queue)
        self.load = LoadTracker()
        self.on_result: Callable[[Mapping[str, np.ndarray]], None] | None = None
        self._cond = threading.Condition()
        self._closing = False
        self._checked: set[tuple[Any, ...]] = set()
        self._limits = {v.label: _batch_limit(v.engine) for v in model.variants}
        limit = self._limits[model.variants[0].label]
        # Exact invariance pads along axis 0: impossible (and needless) without a batch axis.
        self.fixed_rows = None if fixed_rows is None or limit == 0 else \
            (fixed_rows if limit is None else min(fixed_rows, limit))
        self._log = TaggedLog(log, model)
        self._thread = threading.Thread(target=self._loop, name=f"regiontrt-batcher-{model.name}",
                                        daemon=True)
        metrics.add_model(model.name, model.version, model.region, sla_s, policy.state)
        self._warm_up()
        self._thread.start()

    def _warm_up(self) -> None:
        """Run each variant once before serving: runtimes load lazily (an ONNX Runtime session,
        CUDA buffers), and that first run must not be a request's latency, nor the service-time
        estimate the adaptive policy starts from."""
        for v in self.model.variants:
            try:
                v.engine.infer(v.engine.sample_inputs(batch=self.fixed_rows or 1))
            except Exception as exc:  # serving reports the real error on the first request
                self._log.warning("warm-up of variant %s failed: %s", v.label, exc)

    # -- producer side ------------------------------------------------------------------------
    def prepare(self, inputs: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Check ``inputs`` against the engine and pad them to its buckets.

        Raises:
            InputError: wrong names, dtypes, ranks, or shapes outside the engine's profiles.
        """
        engine = self.model.engine
        if not isinstance(inputs, Mapping):
            if len(engine.inputs) != 1:
                raise InputError("this model has several inputs; pass a dict")
            inputs = {engine.inputs[0].name: inputs}
        feeds = {str(k): np.ascontiguousarray(v) if isinstance(v, np.ndarray) else np.asarray(v)
                 for k, v in inputs.items()}
        info: dict[str, Any] = {}
        if engine.bucketing is not None:
            engine.check_inputs(feeds)  # names and dtypes first, for a clear error
            feeds, info = engine.bucketing.pad(feeds)
        signature = tuple(sorted((n, a.shape, a.dtype.str) for n, a in feeds.items()))
        if signature not in self._checked:
            # The check depends only on names, shapes and dtypes: remember the ones that passed
            # (a bounded set: a client sending ever new shapes just gets checked every time).
            engine.check_inputs(feeds)
            if len(self._checked) < 4096:
                self._checked.add(signature)
        rows = {int(a.shape[0]) for a in feeds.values() if a.ndim}
        if len(rows) > 1:
            raise InputError(f"inputs disagree on the batch size (axis 0): {sorted(rows)}")
        return feeds, info

    def submit(self, inputs: Any, deadline_s: float | None = None) -> Future[dict[str, Any]]:
        """Queue one request (see :meth:`Server.submit`)."""
        feeds, info = self.prepare(inputs)
        now = time.monotonic()
        rows = next((int(a.shape[0]) for a in feeds.values() if a.ndim), 1)
        request = Request(feeds, rows, shape_key(feeds), info, now,
                          None if deadline_s is None else now + deadline_s,
                          now + self.sla_s if self.shed_late and self.sla_s else None)
        with self._cond:
            if self._closing:
                raise ServerClosed(f"model {self.model.name!r} is shutting down")
            try:
                self.queue.put(request)
            except Exception:
                self.metrics.outcome(self.model.name, "-", "overloaded")
                raise
            self.load.arrived(now)
            depth = len(self.queue)
            self._cond.notify()
        self.metrics.depth(self.model.name, depth)
        return request.future

    # -- worker side --------------------------------------------------------------------------
    def _next_batch(self) -> tuple[list[Request], Variant, list[Request]] | None:
        """The next batch and its variant, and the requests shed as late on the way."""
        with self._cond:
            while not self.queue and not self._closing:
                self._cond.wait()
            if not self.queue:
                return None
            now = time.monotonic()
            need = self._answer_time(1)
            shed = self.queue.shed(now + need) if need is not None else []
            if not self.queue:
                return [], self.model.variants[0], shed
            plan = self.policy.plan(self.load.snapshot(len(self.queue), self.sla_s, now))
            self.metrics.mode(self.model.name, self.policy.state, self.policy.switches)
            # Exact invariance runs everything on one variant: another engine is other kernels.
            variant = self.model.variants[0] if self.fixed_rows else \
                self.model.variant_for(plan.role)
            limit = self._limits[variant.label]
            cap = plan.max_batch if not limit else min(plan.max_batch, limit)
            if limit == 0:
                cap = 1
            oldest = self.queue.oldest()
            assert oldest is not None
            until = oldest.enqueued + plan.max_wait_s
            if oldest.deadline is not None:
                until = min(until, oldest.deadline)
            need = self._answer_time(cap)
            if oldest.answer_by is not None and need is not None:
                # Waiting for company must not make the oldest late.
                until = min(until, oldest.answer_by - need)
            while not self._closing and self.queue.rows_ready(oldest.key, cap) < cap:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = self.queue.take(cap)
            self.metrics.depth(self.model.name, len(self.queue))
            if limit and sum(r.rows for r in batch) > limit:
                variant = self.model.variants[0]  # one request too big for the role's profile
            return batch, variant, shed

    def _loop(self) -> None:
        while True:
            item = self._next_batch()
            if item is None:
                return
            batch, variant, shed = item
            self._fail_late(shed)
            if not batch:
                continue
            try:
                self._run(batch, variant)
            except BaseException as exc:  # never let the worker die: fail the batch instead
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                self._log.exception("batch failed: %s", exc)

    def _answer_time(self, rows: int) -> float | None:
        """Least seconds a batch of ``rows`` takes to answer, or ``None`` where nothing is shed:
        shedding off, no run measured yet, or a request alone cannot meet the SLA anyway (then
        shedding would refuse every request, not the late ones)."""
        if not self.shed_late or self.sla_s is None:
            return None
        estimate = self.load.answer_estimate(rows)
        if estimate is None or estimate[0] >= self.sla_s:
            return None
        return estimate[1]

    def _fail_late(self, late: list[Request]) -> None:
        """Fail requests shed because their answer would miss the SLA (none of them ran)."""
        if not late:
            return
        now = time.monotonic()
        for r in late:
            if r.future.set_running_or_notify_cancel():
                r.future.set_exception(LoadShed(
                    f"shed: queued {1e3 * (now - r.enqueued):.1f} ms, its answer could not "
                    f"arrive within the {1e3 * (self.sla_s or 0.0):.0f} ms SLA at this load"))
        self.metrics.outcome(self.model.name, "-", "shed", len(late))

    def _run(self, batch: list[Request], variant: Variant) -> None:
        now = time.monotonic()
        live = [r for r in batch if r.deadline is None or r.deadline > now]
        expired = [r for r in batch if r not in live]
        for r in expired:
            late = now - (r.deadline or now)
            r.future.set_exception(DeadlineExceeded(
                f"deadline passed {1e3 * late:.1f} ms before the request could run "
                f"(queued {1e3 * (now - r.enqueued):.1f} ms)"))
        if expired:
            self.metrics.outcome(self.model.name, variant.label, "deadline_exceeded", len(expired))
        need = self._answer_time(sum(r.rows for r in live))
        if need is not None:
            shed = [r for r in live if r.answer_by is not None and r.answer_by < now + need]
            if shed:
                self._fail_late(shed)
                live = [r for r in live if r not in shed]
        live = [r for r in live if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        feeds = live[0].feeds if len(live) == 1 else {
            name: np.concatenate([r.feeds[name] for r in live]) for name in live[0].feeds
        }
        rows = sum(r.rows for r in live)
        started = time.monotonic()
        try:
            outputs = self._infer(variant.engine, feeds, rows)
            for name, arr in outputs.items():
                if len(live) > 1 and (np.ndim(arr) == 0 or arr.shape[0] != rows):
                    raise InputError(f"output {name!r} has shape {np.shape(arr)}, not {rows} "
                                     "rows: this model cannot be batched along axis 0")
        except Exception as exc:
            done = time.monotonic()
            for r in live:
                r.future.set_exception(exc)
            self.metrics.batch(self.model.name, variant.label, rows, done - started,
                               [started - r.enqueued for r in live],
                               [done - r.enqueued for r in live], ok=False)
            return
        done = time.monotonic()
        offset = 0
        bucketing = variant.engine.bucketing
        for r in live:
            part = {n: a[offset:offset + r.rows] for n, a in outputs.items()} if len(live) > 1 \
                else outputs
            offset += r.rows
            if r.unpad and bucketing is not None:
                part = bucketing.unpad(part, r.unpad)
            r.future.set_result(part)
            if self.on_result is not None:
                self.on_result(r.feeds)
        # The policy's service time is the worker's whole time on the batch, handing results
        # back included: that, not the engine's share alone, is what a batch costs the queue.
        self.load.ran(rows, time.monotonic() - started)
        self.metrics.batch(self.model.name, variant.label, rows, done - started,
                           [started - r.enqueued for r in live],
                           [done - r.enqueued for r in live], ok=True)

    def _infer(self, engine: Engine, feeds: dict[str, np.ndarray],
               rows: int) -> dict[str, np.ndarray]:
        """``engine.infer(feeds)``; with :attr:`fixed_rows`, in runs of exactly that many rows
        (the last padded by repeating its last row, cut off the outputs again)."""
        size = self.fixed_rows
        if not size or any(a.ndim == 0 for a in feeds.values()):
            return engine.infer(feeds)
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, rows, size):
            n = min(size, rows - start)
            chunk = {k: a[start:start + n] for k, a in feeds.items()}
            if n < size:
                chunk = {k: np.concatenate([a, np.repeat(a[-1:], size - n, axis=0)])
                         for k, a in chunk.items()}
            out = engine.infer(chunk)
            parts.append({k: v[:n] if np.ndim(v) and v.shape[0] == size else v
                          for k, v in out.items()})
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    # -- lifetime -----------------------------------------------------------------------------
    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting; run what is queued (``drain``) or fail it; join the worker."""
        with self._cond:
            self._closing = True
            dropped = [] if drain else self.queue.drain()
            self._cond.notify_all()
        for r in dropped:
            if r.future.set_running_or_notify_cancel():
                r.future.set_exception(ServerClosed("the server closed before the request ran"))
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._log.warning("batcher did not stop within %s s", timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
