"""Readable views of engines and their reports: text, notebook HTML and self-contained pages.

Everything here works from metadata dicts (what an ``.engine`` header holds), so an engine, the
result of :func:`regiontrt.inspect`, a bundle manifest or a fleet result can share one renderer.
The HTML helpers are plain functions returning strings:

* :func:`html_table` renders a list of row dicts as a table;
* :func:`figure_html` embeds a matplotlib figure as a base64 PNG ``<img>`` (no file, no server);
* :func:`html_fragment` wraps HTML for a notebook cell (``_repr_html_``) with its own style;
* :func:`html_page` makes a complete, self-contained page (``regiontrt report --html``).

Every value from a file is escaped: a region name or a note cannot inject markup.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from regiontrt.precision.validation import format_value, trial_rows
from regiontrt.runtime.inspection import compliance, region_of

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Style of every fragment and page; scoped under ``.regiontrt`` so a notebook's own style holds.
CSS = """
.regiontrt { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; font-size: 14px;
  color: #1f2328; }
.regiontrt h1 { font-size: 1.6em; margin: .4em 0; }
.regiontrt h2 { font-size: 1.25em; margin: 1.2em 0 .4em; border-bottom: 1px solid #d0d7de; }
.regiontrt table { border-collapse: collapse; margin: .4em 0 .8em; }
.regiontrt th, .regiontrt td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left;
  vertical-align: top; }
.regiontrt th { background: #f6f8fa; }
.regiontrt td { max-width: 36em; overflow-wrap: anywhere; }
.regiontrt caption { text-align: left; font-weight: 600; padding: 2px 0; }
.regiontrt .ok { color: #1a7f37; font-weight: 600; }
.regiontrt .bad { color: #cf222e; font-weight: 600; }
.regiontrt .muted { color: #656d76; }
.regiontrt img { max-width: 100%; height: auto; }
.regiontrt pre { background: #f6f8fa; padding: 8px; overflow: auto; max-height: 24em; }
""".strip()


def escape(value: Any) -> str:
    """``value`` as HTML text (``None`` as a dash)."""
    return "–" if value is None else html.escape(str(value), quote=True)


def html_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    caption: str | None = None,
    raw: Iterable[str] = (),
) -> str:
    """An HTML table of row dicts.

    Args:
        rows: one mapping per row; a missing key shows as a dash.
        columns: column keys in order (default: the keys of every row, first seen first).
        caption: an optional caption.
        raw: columns whose values are already HTML (e.g. a status badge); every other cell is
            escaped.
    """
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    raw = set(raw)
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c)
            cells.append(f"<td>{value if c in raw else escape(format_value(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def status_html(ok: bool | None, yes: str = "pass", no: str = "fail") -> str:
    """A coloured pass/fail word (a dash for ``None``)."""
    if ok is None:
        return '<span class="muted">–</span>'
    cls, word = ("ok", yes) if ok else ("bad", no)
    return f'<span class="{cls}">{escape(word)}</span>'


def figure_png(fig: Figure, *, dpi: int = 96) -> bytes:
    """The figure as PNG bytes (rendered off-screen; no display or pyplot state needed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def figure_html(fig: Figure, alt: str = "figure", *, dpi: int = 96) -> str:
    """An ``<img>`` holding the figure as a base64 PNG data URI (self-contained)."""
    data = base64.b64encode(figure_png(fig, dpi=dpi)).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def html_fragment(body: str) -> str:
    """HTML for a notebook cell: ``body`` under the scoped style."""
    return f'<div class="regiontrt"><style>{CSS}</style>{body}</div>'


def html_page(title: str, body: str) -> str:
    """A complete HTML5 page with inline style: no external resource, so it works offline."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f'<body class="regiontrt"><h1>{escape(title)}</h1>{body}</body></html>\n'
    )


# -- validation reports ---------------------------------------------------------------------

def validation_html(report: Mapping[str, Any]) -> str:
    """The validation report as an HTML table (without the notebook wrapper)."""
    rows = trial_rows(report)
    for row in rows:
        row["accepted"] = status_html(row["accepted"], "accepted", "rejected")
    caption = (
        f"chosen {format_value(report.get('chosen'))}: metric {format_value(report.get('metric'))}"
        f", budget {format_value(report.get('budget'))}, {format_value(report.get('num_samples'))}"
        " validation samples"
    )
    return html_table(rows, caption=caption, raw=("accepted",))


# -- engines --------------------------------------------------------------------------------

def engine_rows(metadata: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``field``/``value`` rows of an engine's identity and provenance."""
    region, backend = region_of(metadata), metadata.get("backend") or {}
    calib = metadata.get("calibration") or {}
    val = metadata.get("validation") or {}
    fields = [
        ("region", region.get("name")),
        ("precision", metadata.get("precision")),
        ("backend", f"{backend.get('name')} {backend.get('version')}"),
        ("target", metadata.get("target")),
        ("forbidden", region.get("forbidden")),
        ("latency SLA p99 ms", region.get("latency_p99_ms")),
        ("layers kept in high precision", metadata.get("kept_high_precision")),
        ("model sha256", (metadata.get("model") or {}).get("sha256")),
        ("payload sha256", metadata.get("payload_sha256")),
        ("validation data", val.get("data_fingerprint")),
        ("calibration data", calib.get("fingerprint")),
        ("calibration method", calib.get("method")),
        ("regiontrt", metadata.get("regiontrt_version")),
        ("created", metadata.get("created_at")),
        ("gpu", metadata.get("gpu")),
    ]
    return [{"field": k, "value": v} for k, v in fields]


def plots_available() -> bool:
    """Whether matplotlib can be imported (plots are an extra: ``regiontrt[plot]``)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def engine_html(metadata: Mapping[str, Any], *, figures: bool = False) -> str:
    """An engine's identity, compliance and validation report as HTML (no wrapper).

    Args:
        metadata: the engine's metadata.
        figures: also embed the loss-against-budget plot (when matplotlib is installed).
    """
    figure = ""
    if figures and plots_available():
        from regiontrt.report.plots import accuracy_figure

        figure = figure_html(accuracy_figure([metadata]), "loss against budget")
    ok, why = compliance(metadata)
    name = escape(region_of(metadata).get("name"))
    head = (
        f"<h2>Engine for region {name}: {escape(metadata.get('precision'))}</h2>"
        f"<p>compliance: {status_html(ok)} <span class='muted'>{escape(why)}</span></p>"
    )
    return (
        head + html_table(engine_rows(metadata), ("field", "value"))
        + validation_html(metadata.get("validation") or {}) + figure
    )
