"""The notebook views of the domain's objects, registered with :mod:`regiontrt._display`.

Importing this module (``import regiontrt.report`` does, and so does ``import regiontrt``
inside IPython) gives engines, validation reports, ``inspect`` results, bundles and fleet
results their HTML view; the domain classes only look the view up.
"""

from __future__ import annotations

from regiontrt._display import register_html
from regiontrt.deploy.bundle import Bundle
from regiontrt.deploy.matrix import FleetResult
from regiontrt.errors import RegionTRTError
from regiontrt.precision.validation import ValidationReport
from regiontrt.report.page import summary_html
from regiontrt.report.text import engine_html, html_fragment, validation_html
from regiontrt.runtime import artifact
from regiontrt.runtime.engine import Engine
from regiontrt.runtime.inspection import EngineInfo


@register_html(Engine)
def engine_view(engine: Engine) -> str:
    """An engine: region, precision, compliance of the payload itself, trials, figures."""
    metadata = dict(engine.metadata, compliance_check=engine.compliance().to_dict())
    return html_fragment(engine_html(metadata, figures=True))


@register_html(EngineInfo)
def info_view(info: EngineInfo) -> str:
    """What :func:`regiontrt.inspect` read."""
    return html_fragment(engine_html(info, figures=True))


@register_html(ValidationReport)
def validation_view(report: ValidationReport) -> str:
    """Every precision tried, its loss against the budget, the choice."""
    return html_fragment(validation_html(report.to_dict()))


@register_html(Bundle)
def bundle_view(bundle: Bundle) -> str:
    """A bundle: the region x target matrix, compliance, accuracy, provenance."""
    engines, pending = [], []
    for v in bundle.variants:
        try:
            engines.append((artifact.read_header(bundle.path / v.file), v.target))
        except (OSError, RegionTRTError) as exc:  # the folder changed after load
            pending.append((bundle.region, v.target, v.precision, f"unreadable: {exc}"))
    pending += [(bundle.region, str(d.get("name")), bundle.precision,
                 f"deferred: {d.get('reason') or ''}") for d in bundle.deferred]
    return summary_html(engines, pending=pending, heading=f"bundle {bundle.name} "
                        f"{bundle.version}, region {bundle.region}, precision {bundle.precision}"
                        f" ({bundle.path})")


@register_html(FleetResult)
def fleet_view(result: FleetResult) -> str:
    """A fleet build: every cell's status, then the report of the engines built."""
    cells = result.cells
    engines = [(artifact.decode_header(c.engine), c.target) for c in cells
               if c.status == "built" and c.engine]
    pending = [(c.region, c.target, c.precision or "–", c.status) for c in cells
               if not (c.status == "built" and c.engine)]
    return summary_html(engines, pending=pending, cells=[c.to_dict() for c in cells],
                        heading=f"fleet {result.fleet.name} {result.fleet.version}: "
                                f"{len(cells)} cells, {result.seconds:.1f} s")
