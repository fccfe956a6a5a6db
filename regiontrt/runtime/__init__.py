"""The runtime layer: a built engine, its file format, and running it.

:class:`Engine` (guarded ``infer``, ``benchmark``, ``save``), :func:`load_engine` and
:func:`inspect` (no GPU needed), the ``.engine`` container (:mod:`~regiontrt.runtime.artifact`)
and its header schema (:mod:`~regiontrt.runtime.schema`), signatures of single files
(:mod:`~regiontrt.runtime.trust`). The backends that run payloads live in
:mod:`regiontrt.backends`, beside this layer.

May import: ``errors``, ``graph``, ``data``, ``shapes``, ``precision``, ``backends``. Never the
build, deploy, serve, report or CLI layers.
"""

from regiontrt.runtime.benchmarking import BenchmarkReport
from regiontrt.runtime.engine import Engine, load_engine
from regiontrt.runtime.inspection import inspect

__all__ = ["BenchmarkReport", "Engine", "inspect", "load_engine"]
