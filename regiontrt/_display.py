"""Notebook views without the domain importing its presentation.

Domain objects (engines, reports, bundles, fleet results) define ``_repr_html_`` as
``return _display.html(self)``; :mod:`regiontrt.report.notebook` registers the renderer of each
type when it is imported, which the package does on ``import regiontrt`` inside IPython. So the
report layer imports the domain and never the reverse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_HTML: dict[type, Callable[[Any], str]] = {}


def register_html(cls: type) -> Callable[[Callable[[T], str]], Callable[[T], str]]:
    """Decorator: ``fn(obj) -> html`` renders instances of ``cls`` (and its subclasses)."""
    def add(fn: Callable[[T], str]) -> Callable[[T], str]:
        _HTML[cls] = fn
        return fn
    return add


def html(obj: Any) -> str | None:
    """The registered HTML view of ``obj``, or ``None`` (IPython then shows its ``repr``)."""
    for cls in type(obj).__mro__:
        fn = _HTML.get(cls)
        if fn is not None:
            return fn(obj)
    return None
