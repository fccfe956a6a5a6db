"""Import paths of modules that moved when the package was split into layers (0.2).

``import regiontrt.engine`` and ``regiontrt.engine`` keep working for one release: each old
name resolves to the module at its new path, with a :class:`DeprecationWarning` naming it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

#: old module (under ``regiontrt.``) -> its new full name
MOVED = {
    "_arrays": "regiontrt.runtime.arrays",
    "_length_fit": "regiontrt.shapes.length_fit",
    "_length_measure": "regiontrt.shapes.length_measure",
    "_sampling": "regiontrt.runtime.sampling",
    "_shape_rules": "regiontrt.shapes.rules",
    "artifact": "regiontrt.runtime.artifact",
    "benchmarking": "regiontrt.runtime.benchmarking",
    "buckets": "regiontrt.shapes.buckets",
    "build_checks": "regiontrt.build.checks",
    "builder": "regiontrt.build.builder",
    "compliance": "regiontrt.precision.compliance",
    "datasets": "regiontrt.data.sources",
    "datastats": "regiontrt.data.stats",
    "default_profiles": "regiontrt.shapes.defaults",
    "engine": "regiontrt.runtime.engine",
    "inspection": "regiontrt.runtime.inspection",
    "int8": "regiontrt.precision.int8",
    "metrics": "regiontrt.precision.metrics",
    "mixed": "regiontrt.precision.mixed",
    "pipeline": "regiontrt.build.pipeline",
    "plots": "regiontrt.report.plots",
    "policy": "regiontrt.precision.policy",
    "regions": "regiontrt.precision.regions",
    "report_page": "regiontrt.report.page",
    "report_source": "regiontrt.report.source",
    "retarget": "regiontrt.build.retarget",
    "schema": "regiontrt.runtime.schema",
    "tactics": "regiontrt.backends.tactics",
    "trust": "regiontrt.runtime.trust",
    "validation": "regiontrt.precision.validation",
    "validator": "regiontrt.precision.validator",
}


def moved(short: str) -> ModuleType:
    """The module that ``regiontrt.<short>`` now is, with a warning naming its new path."""
    new = MOVED[short]
    warnings.warn(f"regiontrt.{short} moved to {new}; the old path goes in the next release",
                  DeprecationWarning, stacklevel=3)
    return importlib.import_module(new)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import regiontrt.<old>``: the new module under the old name."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None) -> Any:
        prefix, _, short = fullname.partition(".")
        if prefix != "regiontrt" or short not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> ModuleType:
        return moved(spec.name.partition(".")[2])

    def exec_module(self, module: ModuleType) -> None:
        """The module is already the executed new one."""


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
