"""The build matrix: every (region, target) cell of a fleet, on any ``concurrent.futures.Executor``.

Each region's precision is decided once (one :func:`.tasks.decide_region` task); as soon as it
is, one :func:`.tasks.build_cell` task per target builds that target from the region's
precision-compiled ONNX. Tasks carry bytes and URLs only, so the executor can be a local process
pool (default) or Dask (``Client.get_executor()``, or ``scheduler="tcp://host:8786"``). A failed
cell never stops the others; every cell ends up in :attr:`FleetResult.cells`. Each task's ONNX
Runtime sessions get a share of the host's cores (``threads``; see :mod:`._threads`).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regiontrt import _display
from regiontrt._progress import task
from regiontrt._text import format_table
from regiontrt.deploy._threads import cpu_share
from regiontrt.deploy.bundle import write_bundle
from regiontrt.deploy.fleet import FleetSpec, RegionSpec, TargetSpec
from regiontrt.deploy.tasks import build_cell, decide_region
from regiontrt.errors import InvalidArgumentError
from regiontrt.runtime import artifact
from regiontrt.runtime.engine import FLEET_BUILT, Engine


@dataclass
class CellResult:
    """The outcome of one (region, target) cell."""

    region: str
    target: str
    backend: str
    status: str  # "built", "deferred" or "failed"
    precision: str | None = None
    loss: float | None = None
    budget: float | None = None
    metric: str | None = None
    size: int | None = None
    seconds: float = 0.0
    error: str = ""
    engine: bytes | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in vars(self).items() if k != "engine"}
        return d

    def row(self) -> tuple[str, ...]:
        """The cell as a table row (see :data:`CELL_HEADER`)."""
        loss = "-" if self.loss is None else f"{self.loss:.4g}"
        budget = "-" if self.budget is None else f"{self.budget:g}"
        size = "-" if self.size is None else f"{self.size / 1024:.0f} KiB"
        status = self.status + (f": {self.error}" if self.error else "")
        return (self.region, self.target, self.backend, self.precision or "-",
                f"{loss} / {budget}", size, f"{self.seconds:.1f}", status)


#: The columns of :meth:`CellResult.row` and :meth:`FleetResult.table`.
CELL_HEADER = ("region", "target", "backend", "precision", "loss / budget", "size", "build s",
               "status")


@dataclass
class FleetResult:
    """Every cell of a fleet build, and where its bundles were written.

    Attributes:
        decisions: each region's precision-decision task, in seconds (as the task measured it).
        threads: ONNX Runtime intra-op threads each task used (None: ONNX Runtime's default).
    """

    fleet: FleetSpec
    cells: list[CellResult]
    bundles: dict[str, Path]
    seconds: float
    decisions: dict[str, float] = field(default_factory=dict)
    threads: int | None = None

    @property
    def ok(self) -> bool:
        """No cell failed (deferred cells are not failures)."""
        return all(c.status != "failed" for c in self.cells)

    def __repr__(self) -> str:
        counts = {s: sum(c.status == s for c in self.cells) for s in ("built", "deferred",
                                                                     "failed")}
        return (f"FleetResult(fleet={self.fleet.name!r}, version={self.fleet.version!r}, "
                f"cells={len(self.cells)} ({', '.join(f'{n} {s}' for s, n in counts.items())}), "
                f"bundles={sorted(self.bundles)}, seconds={self.seconds:.1f})")

    def _repr_html_(self) -> str | None:
        return _display.html(self)

    def table(self) -> str:
        """The final table: one row per cell."""
        return format_table([c.row() for c in self.cells], CELL_HEADER)


@contextlib.contextmanager
def open_executor(workers: int = 1, scheduler: str | None = None) -> Iterator[cf.Executor]:
    """A local process pool of ``workers`` processes, or a Dask executor for ``scheduler``."""
    if scheduler:
        try:
            from distributed import Client
        except ImportError as exc:
            raise ValueError(
                "--scheduler needs Dask: pip install 'regiontrt[fleet]'") from exc
        with Client(scheduler) as client:
            executor = client.get_executor()
            try:
                yield executor
            finally:
                executor.shutdown(wait=True)
        return
    if workers < 1:
        raise ValueError("workers must be >= 1")
    # "spawn": a forked child would inherit ONNX Runtime's and TensorRT's threads mid-state.
    with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def _region_cells(fleet: FleetSpec, region: str, outcome: Mapping[str, Any]) -> list[CellResult]:
    """Failed cells for every target of a region whose precision decision failed."""
    return [CellResult(region, t.name, t.backend, "failed", seconds=outcome.get("seconds", 0.0),
                       error=f"region decision failed: {outcome['error']}")
            for t in fleet.targets]


def _cell(region: str, target: TargetSpec, engine: Engine, out: Mapping[str, Any]) -> CellResult:
    report = engine.metadata.get("validation") or {}
    chosen: dict[str, Any] = next((t for t in report.get("trials", []) if t.get("accepted")), {})
    blob = out.get("engine")
    return CellResult(
        region, target.name, target.backend, out["status"], precision=engine.precision,
        loss=chosen.get("loss"), budget=report.get("budget"), metric=report.get("metric"),
        size=len(blob) if blob else None, seconds=float(out.get("seconds", 0.0)),
        error=out.get("reason") or out.get("error") or "", engine=blob)


def expected_cost(spec: RegionSpec) -> tuple[bool, bool, int]:
    """A sort key for a region decision's expected cost (larger: costlier).

    A calibrated int8 region calibrates, then tries int8 (with ``search_mixed``, mixed
    precisions too) before wider precisions; other regions try fewer precisions. Deciding the
    costliest first keeps a long decision from starting last, while the other workers have
    nothing left to do (longest-processing-time-first scheduling).
    """
    precisions = spec.precisions or tuple(spec.region.get("precisions") or ())
    int8 = spec.calibration is not None and "int8" in precisions
    return int8, int8 and spec.search_mixed, len(precisions)


def run_matrix(fleet: FleetSpec, executor: cf.Executor,
               on_cell: Callable[[CellResult], None] | None = None,
               threads: int | None = None,
               decisions: dict[str, float] | None = None,
               ) -> tuple[list[CellResult], dict[str, Engine]]:
    """Run every cell of ``fleet`` on ``executor``; returns the cells and each region's engine.

    Region decisions are submitted costliest first (:func:`expected_cost`); each region's
    cells as soon as its decision is known. Progress: one task of all the cells (a bar on a
    terminal, plain lines otherwise, see :mod:`regiontrt._progress`), and ``on_cell(cell)`` as
    each cell finishes. ``threads``: ONNX Runtime intra-op threads for each task (None: ONNX
    Runtime's default). ``decisions``, when given, receives each region's decision time in
    seconds.
    """
    model = fleet.model_bytes()
    decisions = {} if decisions is None else decisions
    pending: dict[cf.Future[dict[str, Any]], tuple[str, TargetSpec | None]] = {}
    for spec in sorted(fleet.regions, key=expected_cost, reverse=True):  # stable: ties keep order
        job = {"model": model, "region": spec.to_job(), "shape_profile": fleet.shape_profile,
               "threads": threads}
        pending[executor.submit(decide_region, job)] = (spec.name, None)
    cells: list[CellResult] = []
    engines: dict[str, Engine] = {}
    total = len(fleet.regions) * len(fleet.targets)
    with task(f"fleet {fleet.name} {fleet.version}: cells", total=total) as progress:
        while pending:
            done, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
            for future in done:
                region, target = pending.pop(future)
                out = future.result()  # tasks never raise (see tasks.py)
                finished: list[CellResult] = []
                if target is None:
                    decisions[region] = float(out.get("seconds", 0.0))
                if target is None and not out["ok"]:
                    finished = _region_cells(fleet, region, out)
                elif target is None:
                    blob = out["engine"]
                    engines[region] = Engine(*artifact.decode(blob, f"region {region}"),
                                             provenance=FLEET_BUILT)
                    for t in fleet.targets:
                        job = {"engine": blob, "target": t.to_dict(), "threads": threads}
                        pending[executor.submit(build_cell, job)] = (region, t)
                else:
                    finished = [_cell(region, target, engines[region], out)]
                for cell in finished:
                    cells.append(cell)
                    progress.advance()
                    if on_cell is not None:
                        on_cell(cell)
    order = {(r.name, t.name): i for i, (r, t) in
             enumerate((r, t) for r in fleet.regions for t in fleet.targets)}
    cells.sort(key=lambda c: order[(c.region, c.target)])
    return cells, engines


def bundle_dir(out: str | Path, name: str, version: str, region: str) -> Path:
    """Where a bundle goes in a build output or a registry: ``<name>/<version>/<region>``."""
    return Path(out) / name / version / region


def build_fleet(
    fleet: FleetSpec | str | Path,
    out: str | Path,
    *,
    executor: cf.Executor | None = None,
    workers: int = 1,
    scheduler: str | None = None,
    threads: int | None = None,
    sign_key: str | Path | None = None,
    on_cell: Callable[[CellResult], None] | None = None,
) -> FleetResult:
    """Build every (region, target) cell and write one bundle per region under ``out``.

    Args:
        fleet: a :class:`FleetSpec` or the path/URL of a fleet TOML file.
        out: the output folder; bundles go to ``out/<name>/<version>/<region>/``.
        executor: any ``concurrent.futures.Executor`` (e.g. ``client.get_executor()``); when
            omitted, ``scheduler`` (a Dask address) or a local pool of ``workers`` processes.
        threads: ONNX Runtime intra-op threads for each task's sessions. Default: for the local
            pool, this host's usable CPUs divided by ``workers`` (ONNX Runtime's own default
            pins one thread per core in every worker, so workers would queue on the same
            cores); with ``executor`` or ``scheduler``, ONNX Runtime's default (pass the cores
            of a worker host divided by its worker processes).
        sign_key: a private key to sign each bundle with.
        on_cell: called with each :class:`CellResult` as soon as it is known (in the calling
            process), e.g. to fill a live table; progress is also logged (``regiontrt.progress``).

    Returns:
        The cells and bundle folders; ``result.ok`` is False when any cell failed (a region
        whose decision succeeded still gets a bundle of the cells that did not fail).
    """
    spec = fleet if isinstance(fleet, FleetSpec) else FleetSpec.load(fleet)
    if threads is not None and threads < 1:
        raise InvalidArgumentError(f"threads must be >= 1, got {threads}")
    if threads is None and executor is None and not scheduler:
        threads = cpu_share(workers)
    started = time.perf_counter()
    decisions: dict[str, float] = {}
    if executor is None:
        with open_executor(workers, scheduler) as own:
            cells, engines = run_matrix(spec, own, on_cell, threads, decisions)
    else:
        cells, engines = run_matrix(spec, executor, on_cell, threads, decisions)
    bundles: dict[str, Path] = {}
    for region, engine in engines.items():
        mine = [c for c in cells if c.region == region]
        targets = {t.name: t for t in spec.targets}
        variants = [(targets[c.target].to_dict(),
                     Engine(*artifact.decode(c.engine), provenance=FLEET_BUILT))
                    for c in mine if c.status == "built" and c.engine]
        deferred = [{**targets[c.target].to_dict(), "reason": c.error}
                    for c in mine if c.status == "deferred"]
        folder = write_bundle(bundle_dir(out, spec.name, spec.version, region), name=spec.name,
                              version=spec.version, region_engine=engine, variants=variants,
                              deferred=deferred, sign_key=sign_key)  # signed before it appears
        bundles[region] = folder
    return FleetResult(spec, cells, bundles, time.perf_counter() - started, decisions, threads)
