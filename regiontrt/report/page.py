"""One self-contained HTML page about a set of engines (``regiontrt report``).

The input is an ``.engine`` file or a folder: every ``.engine`` below it and, for bundles and
fleet outputs, every ``manifest.json`` (read tolerantly: unknown keys are shown, missing ones are
skipped). The page holds the region x target matrix, compliance, accuracy against the budget,
latencies measured here, provenance and the manifests; plots are embedded as base64 PNGs, so the
file can be mailed or archived alone. Unreadable or tampered files are listed, never fatal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from regiontrt._fs import atomic_write_text
from regiontrt.precision.validation import format_value
from regiontrt.report.source import (
    EngineEntry,
    ReportSource,
    collect,
    manifest_variants,
    measure,
)
from regiontrt.report.text import (
    escape,
    figure_html,
    html_fragment,
    html_page,
    html_table,
    status_html,
)
from regiontrt.runtime.inspection import EngineInfo, compliance, region_of


def _rel(source: ReportSource, entry: EngineEntry) -> str:
    return str(entry.path.relative_to(source.root) if entry.path != source.root
               else entry.path.name)


def _row(source: ReportSource, entry: EngineEntry) -> str:
    """The matrix row of an engine: its region, or region and file when two would share a cell.

    Two engines of one (version, region, target), e.g. built with different metrics, get a row
    each: one cell or one chart must never mix two engines.
    """
    twins = [e for e in source.engines
             if (e.version, e.region, e.target) == (entry.version, entry.region, entry.target)]
    return entry.region if len(twins) < 2 else f"{entry.region} ({_rel(source, entry)})"


def _label(source: ReportSource, entry: EngineEntry) -> str:
    """A label unique to one engine (charts and tables key by it)."""
    version = f"{entry.version} " if _versioned(source) else ""
    return f"{version}{_row(source, entry)} / {entry.target} / {entry.info.precision}"


def _versioned(source: ReportSource) -> bool:
    """Whether the engines span several bundle versions (then tables get a version column)."""
    return len({e.version for e in source.engines} | set(source.pending_versions)) > 1


def _matrix(source: ReportSource) -> str:
    pending_versions = [*source.pending_versions, *[""] * len(source.pending)]
    rows_of = [*((e.version, _row(source, e)) for e in source.engines),
               *((pending_versions[i], p[0]) for i, p in enumerate(source.pending))]
    keys = sorted(dict.fromkeys(rows_of), key=rows_of.index)
    targets = list(dict.fromkeys([*(e.target for e in source.engines),
                                  *(p[1] for p in source.pending)]))
    cells: dict[tuple[str, str, str], list[str]] = {}
    for i, (region, target, precision, status) in enumerate(source.pending):
        cells.setdefault((pending_versions[i], region, target), []).append(
            f'{escape(precision)} <span class="muted">{escape(status)}</span>')
    for e in source.engines:
        ok, why = compliance(e.info)
        cells.setdefault((e.version, _row(source, e), e.target), []).append(
            f'{escape(e.info.precision)} {status_html(ok, "compliant", "VIOLATION")}'
            f'<br><span class="muted">{escape(why)}</span>')
    rows = [{"version": escape(v), "region": escape(r),
             **{t: "<br>".join(cells.get((v, r, t), ["–"])) for t in targets}}
            for v, r in keys]
    columns = [*(["version"] if _versioned(source) else []), "region", *targets]
    return html_table(rows, columns, raw=columns,
                      caption="precision chosen per region (rows) and target (columns)")


def _compliance(source: ReportSource) -> str:
    rows = []
    for e in source.engines:
        region = region_of(e.info)
        ok, why = compliance(e.info)
        rows.append({
            **({"version": e.version} if _versioned(source) else {}),
            "region": _row(source, e), "target": e.target, "precision": e.info.precision,
            "allowed, in order": region.get("precisions"), "forbidden": region.get("forbidden"),
            "status": status_html(ok, "compliant", "VIOLATION"), "why": why,
        })
    return html_table(rows, raw=["status"])


def _accuracy(source: ReportSource, figures: bool) -> str:
    rows = []
    for e in source.engines:
        val = e.info.get("validation") or {}
        for t in val.get("trials") or []:
            if isinstance(t, Mapping):
                rows.append({
                    **({"version": e.version} if _versioned(source) else {}),
                    "region": _row(source, e), "target": e.target, "metric": val.get("metric"),
                    "precision": t.get("precision"), "loss": t.get("loss"),
                    "budget": t.get("budget", val.get("budget")),
                    "verdict": status_html(t.get("accepted"), "accepted", "rejected"),
                    "measured on": t.get("measured_on"), "note": t.get("note"),
                })
    body = html_table(rows, raw=["verdict"])
    if figures and source.engines:
        from regiontrt.report.plots import accuracy_figure

        fig = accuracy_figure([e.info for e in _one_per_region(source)])
        body = figure_html(fig, "accuracy loss against budget per region") + body
    return body


def _one_per_region(source: ReportSource) -> list[EngineEntry]:
    # Every target of a bundle's region shares its precision decision: one panel per decision,
    # keyed by version, region and the validation record itself, so two engines of one region
    # validated differently (another metric) get a panel each.
    def key(e: EngineEntry) -> tuple[str, str, str]:
        val = json.dumps(e.info.get("validation"), sort_keys=True, default=str)
        return e.version, e.region, val

    return list({key(e): e for e in reversed(source.engines)}.values())[::-1]


def _latency(source: ReportSource, figures: bool) -> str:
    rows, series, slas = [], {}, {}
    for e in source.engines:
        sla = region_of(e.info).get("latency_p99_ms")
        row: dict[str, Any] = {"engine": _label(source, e), "SLA p99 ms": sla}
        if e.latencies_ms is not None and e.latencies_ms.size:
            lat = e.latencies_ms
            p99 = float(np.percentile(lat, 99))
            row.update({"calls": lat.size, "p50 ms": float(np.percentile(lat, 50)),
                        "p99 ms": p99,
                        "meets SLA": status_html(None if sla is None else p99 <= sla)})
            series[_label(source, e)] = lat
            if sla is not None:
                slas[_label(source, e)] = float(sla)
        else:
            row["meets SLA"] = escape(e.latency_note or "not measured")
        rows.append(row)
    body = html_table(rows, ["engine", "calls", "p50 ms", "p99 ms", "SLA p99 ms", "meets SLA"],
                      raw=["meets SLA"], caption="wall-clock latency of infer() on this machine")
    if figures and series:
        from regiontrt.report.plots import latency_figure

        body = figure_html(latency_figure(series, sla_ms=slas), "latency distributions") + body
    return body


def _sensitivity(source: ReportSource) -> str:
    from regiontrt.report.plots import sensitivity, sensitivity_figure

    parts = []
    for e in _one_per_region(source):
        if sensitivity(e.info)[0]:
            name = _label(source, e) if _versioned(source) or _row(source, e) != e.region \
                else e.region
            parts.append(f"<h3>{escape(name)}</h3>"
                         + figure_html(sensitivity_figure(e.info), f"sensitivity {name}"))
    return "".join(parts)


def _provenance(source: ReportSource, files: bool = True) -> str:
    rows = []
    for e in source.engines:
        info = e.info
        calib = info.get("calibration") or {}
        backend = info.get("backend") or {}
        rows.append({
            **({"file": _rel(source, e)} if files else {}),
            **({"version": e.version} if _versioned(source) else {}),
            "region": e.region, "target": e.target,
            "backend": f"{backend.get('name')} {backend.get('version')}",
            "model sha256": (info.get("model") or {}).get("sha256"),
            "payload sha256": info.get("payload_sha256"),
            "validation data": (info.get("validation") or {}).get("data_fingerprint"),
            "calibration data": calib.get("fingerprint"),
            "regiontrt": info.get("regiontrt_version"), "created": info.get("created_at"),
            "toolchain": ", ".join(f"{k} {v}" for k, v in (info.get("toolchain") or {}).items()),
        })
    return html_table(rows)


def _manifests(source: ReportSource) -> str:
    parts = []
    for path, manifest in source.manifests:
        scalars = [{"key": k, "value": v} for k, v in manifest.items()
                   if isinstance(v, (str, int, float, bool)) or v is None]
        vrows = manifest_variants(manifest)
        parts.append(
            f"<h3>{escape(path.relative_to(source.root) if source.root.is_dir() else path)}</h3>"
            + html_table(scalars, ["key", "value"])
            + (html_table([{k: (v if isinstance(v, (str, int, float, bool)) or v is None
                                else json.dumps(v)) for k, v in r.items()} for r in vrows],
                          caption="variants") if vrows else "")
            + f"<details><summary>manifest JSON</summary><pre>"
              f"{escape(json.dumps(manifest, indent=2, sort_keys=True))}</pre></details>"
        )
    return "".join(parts)


def build_page(source: ReportSource, *, figures: bool = True, title: str | None = None) -> str:
    """The HTML page for ``source`` (call :func:`measure` first for latencies)."""
    return html_page(title or f"regiontrt report: {report_subject(source)}",
                     body_html(source, figures=figures))


def report_subject(source: ReportSource) -> str:
    """What a report is about, for its title: the folder or file it reads."""
    root = source.root.resolve()
    return root.name or str(root)  # "." would otherwise name nothing


def summary_html(engines: Sequence[tuple[Mapping[str, Any], str]], *,
                 pending: Sequence[tuple[str, str, str, str]] = (),
                 cells: Sequence[Mapping[str, Any]] = (), heading: str = "",
                 figures: bool = True) -> str:
    """A notebook view (``_repr_html_``) of engines in memory, e.g. a bundle's variants.

    Args:
        engines: ``(metadata, target name)`` per engine.
        pending: ``(region, target, precision, status)`` of cells with no engine (deferred,
            failed), shown in the region x target matrix.
        cells: rows of a "cells" table shown first (e.g. a fleet build's outcome per cell).
        heading: a line of text above everything (escaped).
        figures: embed the plots when matplotlib is installed.
    """
    source = ReportSource(root=Path("."), engines=[
        EngineEntry(Path(f"{i}.engine"), EngineInfo(meta), target)
        for i, (meta, target) in enumerate(engines)], pending=list(pending))
    head = f"<p><b>{escape(heading)}</b></p>" if heading else ""
    table = "<h2>Cells</h2>" + html_table(cells) if cells else ""
    return html_fragment(head + table + body_html(source, figures=figures,
                                                  provenance_files=False))


def body_html(source: ReportSource, *, figures: bool = True,
              provenance_files: bool = True) -> str:
    """The sections of the report (without the page around them)."""
    if figures:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            figures = False
    origin = f" from <code>{escape(source.root)}</code>" if provenance_files else ""
    sections = [
        f"<p>{len(source.engines)} engine(s) and {len(source.manifests)} manifest(s){origin}"
        + ("" if figures else " (plots need matplotlib: pip install 'regiontrt[plot]')")
        + "</p>"
    ]
    if source.engines or source.pending:
        sections.append("<h2>Region × target</h2>" + _matrix(source))
    if source.engines:
        sections += [
            "<h2>Compliance</h2>" + _compliance(source),
            "<h2>Accuracy against budget</h2>" + _accuracy(source, figures),
            "<h2>Latency</h2>" + _latency(source, figures),
        ]
        sens = _sensitivity(source) if figures else ""
        if sens:
            sections.append("<h2>Mixed-precision sensitivity</h2>" + sens)
        sections.append("<h2>Provenance</h2>" + _provenance(source, provenance_files))
    if source.manifests:
        sections.append("<h2>Bundle manifests</h2>" + _manifests(source))
    if source.problems:
        rows = [{"file": str(p), "problem": m} for p, m in source.problems]
        sections.append("<h2>Problems</h2>" + html_table(rows))
    return "".join(sections)


def text_summary(source: ReportSource) -> list[tuple[str, ...]]:
    """One row per engine: region, target, precision, loss / budget, compliance, p99."""
    rows: list[tuple[str, ...]] = []
    for e in source.engines:
        val = e.info.get("validation") or {}
        loss = e.info.report.loss
        ok, _ = compliance(e.info)
        p99 = (f"{float(np.percentile(e.latencies_ms, 99)):.3g}"
               if e.latencies_ms is not None else "-")
        rows.append((e.region, e.target, e.info.precision,
                     f"{format_value(loss)} / {format_value(val.get('budget'))}",
                     {True: "compliant", False: "VIOLATION", None: "-"}[ok], p99))
    rows += [(region, target, precision, "-", status, "-")
             for region, target, precision, status in source.pending]
    rows += [(str(p), "-", "-", "-", f"unreadable: {m}", "-") for p, m in source.problems]
    return rows


def write_report(path: str | Path, out: str | Path, *, iterations: int = 30,
                 figures: bool = True) -> ReportSource:
    """Collect, measure (``iterations`` > 0) and write the page to ``out`` atomically."""
    source = collect(path)
    if iterations > 0:
        measure(source, iterations)
    atomic_write_text(Path(out), build_page(source, figures=figures))
    return source
