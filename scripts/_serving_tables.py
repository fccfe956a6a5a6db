"""The serving tables of ``docs/benchmarks.md`` (see ``scripts/gen_benchmarks_md.py``)."""

from __future__ import annotations

from typing import Any

from scripts._table_fmt import _rows, fmt


def _reports(d: dict[str, Any]) -> list[dict[str, Any]]:
    return d.get("reports", [d])  # type: ignore[no-any-return]  # the GPU test: one, bare


def serving_phases(data: list[dict[str, Any]]) -> list[str]:
    rows = [[rep["model"], path, mode, phase, str(s["requests"]), fmt(s["p50_ms"], ".2f"),
             fmt(s["p99_ms"], ".2f"), fmt(s["throughput"], ".0f"),
             fmt(s["sla_attainment"], ".1f%")]
            for d in data for rep in _reports(d) for path, run in rep["runs"].items()
            for mode, m in run["modes"].items() for phase, s in m["phases"].items()]
    return _rows(["model", "path", "mode", "phase", "requests", "p50 ms", "p99 ms",
                  "answered/s", "SLA %"], rows)


def serving_summary(data: list[dict[str, Any]]) -> list[str]:
    rows = []
    for d in data:
        for rep in _reports(d):
            for path, run in rep["runs"].items():
                for mode, m in run["modes"].items():
                    p = m["phases"]
                    rows.append([d["_file"], rep["model"], path, fmt(run["capacity_rps"], ".0f"),
                                 fmt(run["base_rps"], ".0f"), mode,
                                 *(fmt(p[k]["sla_attainment"], ".1f%")
                                   for k in ("base", "surge", "recover", "all"))])
    return _rows(["file", "model", "path", "capacity/s (saturated)", "base/s", "mode",
                  "SLA % base", "surge", "recover", "all"], rows)


def _server_rows(d: dict[str, Any], rep: dict[str, Any], run: dict[str, Any]) -> list[list[str]]:
    """One row per server and phase of one HTTP run: regiontrt's modes at their defaults, each
    peer at its best setting of the phase."""
    servers = [(f"regiontrt {mode}", {ph: {"setting": "default", **row}
                                      for ph, row in m["phases"].items()})
               for mode, m in run["modes"].items()]
    servers += [(f"{kind} (best of {fmt(len(p['settings']), 'd')})", p["best"])
                for kind, p in run.get("peers", {}).items()]
    return [[d["_file"], rep["model"], name, phase, r["setting"], str(r["requests"]),
             fmt(r["p50_ms"], ".2f"), fmt(r["p99_ms"], ".2f"), fmt(r["throughput"], ".0f"),
             fmt(r["sla_attainment"], ".1f%"), fmt(r.get("cpu_cores"), ".2f"),
             fmt(r.get("send_lag_p99_ms"), ".1f")]
            for name, phases in servers for phase, r in phases.items()]


def serving_peers(data: list[dict[str, Any]]) -> list[str]:
    """regiontrt's modes against Ray Serve and LitServe on one schedule, over HTTP, per phase."""
    rows = [row for d in data for rep in _reports(d) for path, run in rep["runs"].items()
            if path == "http" for row in _server_rows(d, rep, run)]
    return _rows(["file", "model", "server", "phase", "setting", "requests", "p50 ms", "p99 ms",
                  "answered/s", "SLA %", "CPU cores", "client send lag p99 ms"], rows)


def serving_verdict(data: list[dict[str, Any]]) -> list[str]:
    """Per phase: adaptive's SLA attainment against the best peer's (the issue's bar)."""
    def yes(x: bool | None) -> str:
        return "-" if x is None else "yes" if x else "no"

    rows = [[d["_file"], rep["model"], phase, fmt(v.get("offered_rps"), ".0f"),
             fmt(v.get("best_batched_capacity_rps"), ".0f"), fmt(v["adaptive"], ".1f%"),
             fmt(v["best_peer"], ".1f%"), v["peer"], yes(v["at_least_every_peer"]),
             yes(v.get("meets_99"))]
            for d in data for rep in _reports(d) for run in rep["runs"].values()
            for phase, v in run.get("adaptive_vs_peers", {}).items()]
    return _rows(["file", "model", "phase", "offered/s", "best batched capacity/s",
                  "adaptive SLA %", "best peer SLA %", "best peer", "adaptive >= every peer",
                  ">= 99 % under capacity"], rows)


def monitor_cost(data: list[dict[str, Any]]) -> list[str]:
    rows = [[d["_file"], *(fmt(d["monitor_cost_us"][k], ".1f")
                           for k in ("off", "sample 5%", "sample 100%")),
             fmt(d["monitor_cost_us"]["dropped (sample 5%)"]
                 + d["monitor_cost_us"]["dropped (sample 100%)"], ".0f")]
            for d in data if d.get("monitor_cost_us")]
    return _rows(["file", "monitor off µs", "sampling 5 % µs", "sampling every request µs",
                  "samples dropped"], rows)
