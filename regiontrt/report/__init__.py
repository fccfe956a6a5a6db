"""The report layer: text, HTML and plots of engines, builds and fleets.

It imports the domain (engines, validation reports, bundles) and is never imported by it:
``report --html`` pages (:mod:`~regiontrt.report.page`), the fragments notebooks show
(:mod:`~regiontrt.report.text`), and matplotlib figures (:mod:`~regiontrt.report.plots`,
``pip install 'regiontrt[plot]'``).

May import every layer except the CLI.
"""

from regiontrt.precision.validation import validation_text
from regiontrt.report import notebook  # noqa: F401 - registers the notebook views
from regiontrt.report.page import build_page, write_report
from regiontrt.report.text import engine_html, html_fragment, validation_html

__all__ = ["build_page", "engine_html", "html_fragment", "validation_html", "validation_text",
           "write_report"]
