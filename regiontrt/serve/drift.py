"""Drift monitoring: do live inputs still look like what the region calibrated and validated on?

:meth:`Server.monitor` samples a share of the requests that ran and hands their inputs to a
background worker through a bounded queue (a full queue drops the sample and counts it; the
request path never waits). Every ``window`` sampled rows, the worker scores each model:

* ``range`` (int8 engines): per calibrated tensor, the share of live values beyond the calibrated
  ``amax`` (``metadata["calibration"]["amax"]``), computed by running the precision-compiled ONNX
  on the CPU with those tensors exposed as outputs, the same measure the build's mismatch check
  uses. For the ``onnxruntime`` backend the payload is that ONNX; for a plan, pass it with
  ``reference_onnx={model: bytes}``, else only the input checks run.
* ``input_psi`` (every precision): per input, the Population Stability Index of the live values
  against the validation data's decile histogram (``metadata["input_stats"]``).

A score past the region's threshold raises a :class:`DriftWarning`, increments the
``drift_alerts`` metric and adds an entry to :meth:`DriftMonitor.report`. Thresholds: the region
tags ``drift_share``/``drift_psi`` when set, else the build's calibration mismatch threshold for
``range`` and 0.25 for ``input_psi`` (the customary "significant shift" level of PSI).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from regiontrt.data.stats import psi
from regiontrt.graph.arithmetic import seal
from regiontrt.serve.metrics import ServeMetrics
from regiontrt.serve.sources import ServedModel

log = logging.getLogger("regiontrt.serve.drift")

DEFAULT_SHARE = 0.01
DEFAULT_PSI = 0.25


class DriftWarning(UserWarning):
    """Live inputs drifted past the region's threshold."""


@dataclass(frozen=True)
class DriftAlert:
    """One score past its threshold."""

    model: str
    region: str
    version: str
    kind: str
    tensor: str
    score: float
    threshold: float
    rows: int
    at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _RangeProbe:
    """The precision-compiled ONNX with the calibrated tensors exposed, on ONNX Runtime (CPU)."""

    def __init__(self, onnx_bytes: bytes, amax: Mapping[str, float]) -> None:
        import onnx
        import onnxruntime as ort

        from regiontrt.calibration.collect import expose_tensors, resolve_tensors

        model = onnx.load_from_string(onnx_bytes)
        # ONNX Runtime follows external-data paths; an engine's payload must be self-contained.
        for init in model.graph.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL:
                raise ValueError("the payload references external data; refusing to load it")
        self.inputs = {i.name for i in model.graph.input}
        self.names, types = resolve_tensors(model, list(amax))
        self.amax = {n: float(amax[n]) for n in self.names}
        self.fetch = [n for n in self.names if n not in self.inputs]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # off the request path: leave the cores to serving
        options.log_severity_level = 3
        seal(options)
        exposed = expose_tensors(model, self.fetch, types).SerializeToString()
        self.session = ort.InferenceSession(exposed, sess_options=options,
                                            providers=["CPUExecutionProvider"])

    def count(self, feeds: Mapping[str, np.ndarray], beyond: dict[str, int],
              total: dict[str, int]) -> None:
        values = dict(zip(self.fetch, self.session.run(self.fetch, dict(feeds))))
        values.update({n: feeds[n] for n in self.names if n in self.inputs})
        for name, arr in values.items():
            flat = np.asarray(arr).reshape(-1)
            over = int(np.count_nonzero(np.abs(flat) > self.amax[name]))
            beyond[name] = beyond.get(name, 0) + over
            total[name] = total.get(name, 0) + int(flat.size)


class _ModelWatch:
    """What the monitor keeps per model: references, thresholds and the current window."""

    def __init__(self, model: ServedModel, reference_onnx: bytes | None) -> None:
        meta = model.engine.metadata
        self.model = model
        tags = (meta.get("region") or {}).get("tags") or {}
        calibration = meta.get("calibration") or {}
        mismatch = calibration.get("mismatch") or {}
        self.share_threshold = float(tags.get("drift_share", mismatch.get("threshold",
                                                                          DEFAULT_SHARE)))
        self.psi_threshold = float(tags.get("drift_psi", DEFAULT_PSI))
        self.input_stats: dict[str, Any] = meta.get("input_stats") or {}
        self.probe: _RangeProbe | None = None
        amax = calibration.get("amax") or {}
        payload = reference_onnx
        if payload is None and meta.get("payload_format") == "onnx":
            payload = model.engine.payload
        if amax and payload is not None:
            try:
                self.probe = _RangeProbe(payload, amax)
            except Exception as exc:  # a monitor must never take serving down
                log.warning("%s: range checks off (%s); input checks only", model.name, exc)
        self.samples: list[dict[str, np.ndarray]] = []
        self.rows = 0


class DriftMonitor:
    """Samples live requests and scores them off the request path.

    Args:
        models: the served models by name.
        metrics: the server's metrics (drift gauges and counters go there).
        sample_rate: share of requests sampled, in ``[0, 1]``.
        window: sampled rows per check.
        queue_size: most samples waiting for the worker; more are dropped and counted.
        reference_onnx: ``{model: precision-compiled ONNX bytes}`` for engines whose payload is
            not ONNX (TensorRT plans), enabling the ``range`` check for them.
        seed: seed of the sampling decision (reproducible tests).
    """

    def __init__(self, models: Mapping[str, ServedModel], metrics: ServeMetrics, *,
                 sample_rate: float = 0.05, window: int = 64, queue_size: int = 256,
                 reference_onnx: Mapping[str, bytes] | None = None,
                 seed: int | None = None) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be within [0, 1], got {sample_rate}")
        if window < 1 or queue_size < 1:
            raise ValueError("window and queue_size must be >= 1")
        self.sample_rate, self.window = float(sample_rate), int(window)
        self.metrics = metrics
        refs = reference_onnx or {}
        self._watch = {name: _ModelWatch(m, refs.get(name)) for name, m in models.items()}
        self._queue: queue.Queue[tuple[str, dict[str, np.ndarray]] | None] = \
            queue.Queue(queue_size)
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._work = threading.Lock()  # one scorer at a time: the worker, or flush()
        self.sampled = self.dropped = self.checks = 0
        self._alerts: list[DriftAlert] = []
        self._latest: dict[str, dict[str, dict[str, float]]] = {}
        self._thread = threading.Thread(target=self._loop, name="regiontrt-drift", daemon=True)
        self._thread.start()

    # -- request path: must never block ---------------------------------------------------------
    def offer(self, model: str, feeds: Mapping[str, np.ndarray]) -> None:
        """Maybe sample ``feeds`` (called by the batcher after a request ran)."""
        if self.sample_rate <= 0 or self._random.random() >= self.sample_rate:
            return
        try:
            self._queue.put_nowait((model, dict(feeds)))
        except queue.Full:
            with self._lock:
                self.dropped += 1
            self.metrics.dropped(model)
            return
        with self._lock:
            self.sampled += 1

    # -- worker ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                name, feeds = item
                watch = self._watch.get(name)
                if watch is None:
                    continue
                with self._work:
                    watch.samples.append(feeds)
                    watch.rows += int(next(iter(feeds.values())).shape[0]) if feeds else 0
                    if watch.rows >= self.window:
                        self._check(watch)
            except Exception as exc:  # keep monitoring whatever one sample does
                log.warning("drift check failed: %s", exc)
            finally:
                self._queue.task_done()

    def _check(self, watch: _ModelWatch) -> None:
        samples, rows = watch.samples, watch.rows
        watch.samples, watch.rows = [], 0
        scores: dict[str, dict[str, float]] = {"range": {}, "input_psi": {}}
        if watch.probe is not None:
            beyond: dict[str, int] = {}
            total: dict[str, int] = {}
            for feeds in samples:
                watch.probe.count(feeds, beyond, total)
            scores["range"] = {n: beyond[n] / total[n] for n in total if total[n]}
        for name, ref in watch.input_stats.items():
            values = [np.asarray(s[name]) for s in samples if name in s]
            if values:
                scores["input_psi"][name] = psi(ref, np.concatenate([v.reshape(-1)
                                                                     for v in values]))
        m = watch.model
        thresholds = {"range": watch.share_threshold, "input_psi": watch.psi_threshold}
        now = time.time()
        fired = []
        for kind, per_tensor in scores.items():
            for tensor, score in per_tensor.items():
                alert = score > thresholds[kind]
                self.metrics.drift(m.name, tensor, kind, score, alert)
                if alert:
                    fired.append(DriftAlert(m.name, m.region, m.version, kind, tensor, score,
                                            thresholds[kind], rows, now))
        with self._lock:
            self.checks += 1
            self._latest[m.name] = scores
            self._alerts.extend(fired)
        for a in fired:
            message = (f"[model={a.model} region={a.region} version={a.version}] drift: "
                       f"{a.kind} of {a.tensor!r} is {a.score:.4g}, past the region's threshold "
                       f"{a.threshold:.4g} (over {a.rows} sampled rows)")
            log.warning(message)
            warnings.warn(message, DriftWarning, stacklevel=2)

    # -- results --------------------------------------------------------------------------------
    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued sample is processed, then score partial windows."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._work:
            for watch in self._watch.values():
                if watch.rows:
                    self._check(watch)

    def report(self) -> dict[str, Any]:
        """Alerts so far, the latest scores per model, and the sampling counters."""
        with self._lock:
            return {
                "alerts": [a.to_dict() for a in self._alerts],
                "latest": {k: {kind: dict(v) for kind, v in s.items()}
                           for k, s in self._latest.items()},
                "sampled": self.sampled,
                "dropped": self.dropped,
                "checks": self.checks,
                "thresholds": {n: {"range": w.share_threshold, "input_psi": w.psi_threshold,
                                   "range_check": w.probe is not None}
                               for n, w in self._watch.items()},
            }

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the worker (samples still queued are scored first)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
