"""The figures of ``bench_serving``'s step load: the peers' sweep, their best setting per phase,
and the issue's bar (adaptive's SLA attainment against every peer's best, per phase)."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks import loadgen


def figures(outcomes: list[loadgen.Outcome], bounds: list[tuple[str, float, float]],
             sla_ms: float, cpu: list[dict[str, float | None]]) -> dict[str, Any]:
    """Pooled figures of one server's rounds; CPU cores per phase averaged over the rounds."""
    out = loadgen.summarize(outcomes, bounds, sla_ms)
    for phase, row in out.items():
        got = [c[phase] for c in cpu if c.get(phase) is not None]
        row["cpu_cores"] = float(np.mean(got)) if got else None  # type: ignore[arg-type]
    return out


def peer_settings(sla_ms: float, batches: tuple[int, ...] = (8, 32),
                  waits_ms: tuple[float, ...] | None = None) -> list[tuple[int, float]]:
    """The sweep: every ``(max batch, wait ms)``; waits default to a 20th and a 4th of the SLA."""
    waits = waits_ms if waits_ms else (sla_ms / 20, sla_ms / 4)
    return [(b, w) for b in batches for w in waits]


def label(batch: int, wait_ms: float) -> str:
    """A peer setting's name in the results."""
    return f"batch {batch}, wait {wait_ms:g} ms"


def best_per_phase(settings: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each phase's best setting: the highest SLA attainment, then the lowest p99."""
    out: dict[str, dict[str, Any]] = {}
    for phase in next(iter(settings.values())):
        def key(name: str, phase: str = phase) -> tuple[float, float]:
            row = settings[name][phase]
            return (row["sla_attainment"] or 0.0, -(row["p99_ms"] or float("inf")))

        best = max(settings, key=key)
        out[phase] = {"setting": best, **settings[best][phase]}
    return out


def peer_report(swept: dict[str, dict[str, Any]], bounds: list[tuple[str, float, float]],
                sla_ms: float, grid: list[tuple[int, float]], threads: int,
                unfused: bool) -> dict[str, Any]:
    """Each peer's figures per setting (rounds pooled), its best per phase and its set-up."""
    out: dict[str, Any] = {}
    for kind, by_label in swept.items():
        capacity = by_label.pop("capacity_rps", None)
        settings = {name: figures(v["outcomes"], bounds, sla_ms, v["cpu"])
                    for name, v in by_label.items()}
        out[kind] = {"grid": [list(g) for g in grid], "ort_intra_op_threads": threads,
                     "ort_spinning": False,
                     "capacity_rps": capacity, "unfused_qdq": unfused, "settings": settings,
                     "best": best_per_phase(settings)}
    return out


def verdict(run: dict[str, Any]) -> dict[str, Any]:
    """Per phase, the issue's bar: adaptive's attainment at least every peer's best, and
    >= 99 % where the offered rate is under the best batching server's saturated capacity
    (ours in ``throughput`` mode, each peer at its largest batch and wait)."""
    adaptive = run["modes"].get("adaptive")
    if adaptive is None:
        return {}
    caps = [run.get("capacity_batched_rps")] + [p.get("capacity_rps")
                                                for p in run["peers"].values()]
    best_cap = max((c for c in caps if c), default=None)
    out = {}
    for phase, row in adaptive["phases"].items():
        best = {k: p["best"][phase]["sla_attainment"] or 0.0 for k, p in run["peers"].items()}
        ours = row["sla_attainment"] or 0.0
        rate = run["phase_rates"].get(phase)
        under = None if rate is None or best_cap is None else rate < best_cap
        out[phase] = {"adaptive": ours, "best_peer": max(best.values()),
                      "peer": max(best, key=best.__getitem__),
                      "at_least_every_peer": all(ours >= v for v in best.values()),
                      "offered_rps": rate, "best_batched_capacity_rps": best_cap,
                      "under_capacity": under,
                      "meets_99": None if not under else ours >= 0.99}
    return out
