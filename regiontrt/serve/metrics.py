"""Serving metrics per model, region, version and variant: Prometheus collectors and a dict.

Each :class:`~regiontrt.serve.Server` owns one :class:`ServeMetrics` with its own Prometheus
``CollectorRegistry`` (so several servers in one process never clash); ``GET /metrics`` renders
it. ``prometheus-client`` is part of the ``serve`` extra: without it the same figures are still
kept and returned by :meth:`ServeMetrics.snapshot` as a plain dict.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LABELS = ("model", "version", "region", "variant")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

#: Latencies kept per model for the dict's percentiles (a ring buffer of the newest).
WINDOW = 10_000


@dataclass
class _ModelFigures:
    region: str
    version: str
    sla_s: float | None
    outcomes: Counter[str] = field(default_factory=Counter)
    batch_sizes: Counter[int] = field(default_factory=Counter)
    variants: Counter[str] = field(default_factory=Counter)
    within_sla: int = 0
    completed: int = 0
    latency: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    queue: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    compute: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    mode: str = ""
    mode_switches: int = 0


def _attainment(f: _ModelFigures) -> float | None:
    """Share of the requests with an outcome answered within the SLA: a request refused
    (queue full), shed as late, past its deadline or failed is a miss, as its client sees it.
    No SLA, no attainment: a share of requests "within" no limit would read as 1.0."""
    decided = sum(f.outcomes.values())
    return f.within_sla / decided if f.sla_s is not None and decided else None


def _ms(values: deque[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "mean": None}
    arr = np.fromiter(values, dtype=np.float64) * 1e3
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)),
            "mean": float(arr.mean())}


class ServeMetrics:
    """Thread-safe counters and histograms of one server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, _ModelFigures] = {}
        self.registry: Any = None
        self._prom: dict[str, Any] = {}
        try:
            import prometheus_client as pc
        except ImportError:  # the dict still works; /metrics needs the serve extra anyway
            return
        reg = pc.CollectorRegistry()
        self.registry = reg
        p = "regiontrt_serve_"
        self._prom = {
            "requests": pc.Counter(p + "requests", "Requests by outcome (ok, error, "
                                   "overloaded, shed, deadline_exceeded)", [*LABELS, "outcome"],
                                   registry=reg),
            "within_sla": pc.Counter(p + "requests_within_sla", "Completed requests whose "
                                     "latency met the region's p99 SLA", LABELS, registry=reg),
            "batch": pc.Histogram(p + "batch_size", "Rows per executed batch", LABELS,
                                  buckets=BATCH_BUCKETS, registry=reg),
            "queue": pc.Histogram(p + "queue_seconds", "Time from submit to batch start",
                                  LABELS, buckets=LATENCY_BUCKETS, registry=reg),
            "compute": pc.Histogram(p + "compute_seconds", "Engine time per batch", LABELS,
                                    buckets=LATENCY_BUCKETS, registry=reg),
            "latency": pc.Histogram(p + "latency_seconds", "Time from submit to result",
                                    LABELS, buckets=LATENCY_BUCKETS, registry=reg),
            "depth": pc.Gauge(p + "queue_depth", "Requests waiting", ["model", "version",
                              "region"], registry=reg),
            "switches": pc.Counter(p + "mode_switches", "Adaptive mode switches",
                                   ["model", "version", "region", "to"], registry=reg),
            "sla_attainment": pc.Gauge(p + "sla_attainment", "Share of requests answered "
                                       "within the region's p99 SLA (refused, shed and failed "
                                       "ones are misses)", ["model", "version",
                                       "region"], registry=reg),
            "drift": pc.Gauge(p + "drift_score", "Latest drift score per tensor (share beyond "
                              "calibrated range, or PSI of inputs)", ["model", "version",
                              "region", "tensor", "kind"], registry=reg),
            "drift_alerts": pc.Counter(p + "drift_alerts", "Drift checks past the region's "
                                       "threshold", ["model", "version", "region", "kind"],
                                       registry=reg),
            "drift_dropped": pc.Counter(p + "drift_samples_dropped", "Samples dropped because "
                                        "the drift queue was full", ["model", "version",
                                        "region"], registry=reg),
        }

    def add_model(self, model: str, version: str, region: str, sla_s: float | None,
                  mode: str) -> None:
        with self._lock:
            self._models[model] = _ModelFigures(region, version, sla_s, mode=mode)

    def _labels(self, model: str, variant: str | None = None) -> tuple[str, ...]:
        f = self._models[model]
        base = (model, f.version, f.region)
        return base if variant is None else (*base, variant)

    def outcome(self, model: str, variant: str, outcome: str, n: int = 1) -> None:
        """Count ``n`` requests that ended with ``outcome`` without running."""
        with self._lock:
            f = self._models[model]
            f.outcomes[outcome] += n
            attainment = _attainment(f)
        if self._prom:
            self._prom["requests"].labels(*self._labels(model, variant), outcome).inc(n)
            if attainment is not None:
                self._prom["sla_attainment"].labels(*self._labels(model)).set(attainment)

    def batch(self, model: str, variant: str, rows: int, compute_s: float,
              queue_s: list[float], latency_s: list[float], ok: bool) -> None:
        """Record one executed batch and the requests it served."""
        with self._lock:
            f = self._models[model]
            f.batch_sizes[rows] += 1
            f.variants[variant] += 1
            f.compute.append(compute_s)
            f.queue.extend(queue_s)
            outcome = "ok" if ok else "error"
            f.outcomes[outcome] += len(latency_s)
            met = 0
            if ok:
                f.latency.extend(latency_s)
                f.completed += len(latency_s)
                if f.sla_s is not None:
                    met = sum(1 for t in latency_s if t <= f.sla_s)
                    f.within_sla += met
            has_sla = f.sla_s is not None
            attainment = _attainment(f)
        if not self._prom:
            return
        labels = self._labels(model, variant)
        self._prom["batch"].labels(*labels).observe(rows)
        self._prom["compute"].labels(*labels).observe(compute_s)
        self._prom["requests"].labels(*labels, outcome).inc(len(latency_s))
        hq, hl = self._prom["queue"].labels(*labels), self._prom["latency"].labels(*labels)
        for q in queue_s:
            hq.observe(q)
        if ok:
            for t in latency_s:
                hl.observe(t)
            if has_sla:
                self._prom["within_sla"].labels(*labels).inc(met)
        if attainment is not None:
            self._prom["sla_attainment"].labels(*self._labels(model)).set(attainment)

    def depth(self, model: str, depth: int) -> None:
        if self._prom:
            self._prom["depth"].labels(*self._labels(model)).set(depth)

    def mode(self, model: str, state: str, switches: int) -> None:
        with self._lock:
            f = self._models[model]
            changed = switches > f.mode_switches
            f.mode, f.mode_switches = state, switches
        if changed and self._prom:
            self._prom["switches"].labels(*self._labels(model), state).inc()

    def drift(self, model: str, tensor: str, kind: str, score: float, alert: bool) -> None:
        if self._prom:
            self._prom["drift"].labels(*self._labels(model), tensor, kind).set(score)
            if alert:
                self._prom["drift_alerts"].labels(*self._labels(model), kind).inc()

    def dropped(self, model: str) -> None:
        if self._prom:
            self._prom["drift_dropped"].labels(*self._labels(model)).inc()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every figure, per model, as plain Python values (milliseconds for times)."""
        with self._lock:
            out = {}
            for name, f in self._models.items():
                out[name] = {
                    "region": f.region,
                    "version": f.version,
                    "requests": sum(f.outcomes.values()),
                    "outcomes": dict(f.outcomes),
                    "batches": sum(f.batch_sizes.values()),
                    "batch_sizes": dict(sorted(f.batch_sizes.items())),
                    "variants": dict(f.variants),
                    "latency_ms": _ms(f.latency),
                    "queue_ms": _ms(f.queue),
                    "compute_ms": _ms(f.compute),
                    "mode": f.mode,
                    "mode_switches": f.mode_switches,
                }
                if f.sla_s is not None:  # SLA fields only where the region has an SLA
                    out[name]["sla_ms"] = f.sla_s * 1e3
                    out[name]["sla_attainment"] = _attainment(f)
            return out

    def prometheus_text(self) -> bytes:
        """The Prometheus exposition text (empty without ``prometheus-client``)."""
        if self.registry is None:
            return b""
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))
