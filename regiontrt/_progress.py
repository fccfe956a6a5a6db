"""Progress bars and plain progress lines for long stages (calibration, validation, searches...).

The API is two calls, used by every stage that loops over something long::

    from ._progress import task, track

    for batch in track(batches, "calibration", total=len(batches)):
        ...
    with task("mixed-precision search", total=n) as t:
        ...
        t.advance()

Bars are drawn with ``rich`` (an optional extra, imported only when a bar is shown) on standard
error, and only when standard error is a terminal and ``CI`` is not set: CI logs and pipes get no
carriage-return noise. Whatever the output, every task logs one plain line when it ends (and,
when there is no bar, one when it starts and one every :data:`PLAIN_EVERY_S` seconds while it
runs) on the ``regiontrt.progress`` logger, at INFO, so the CLI or a configured ``logging``
shows them.

``REGIONTRT_PROGRESS=0`` (or :func:`set_enabled(False) <set_enabled>`) turns bars off,
``REGIONTRT_PROGRESS=1`` forces them on a terminal even under CI.

Tasks may nest (a calibration inside a precision trial) and may run on several threads: all
bars of a process share one ``rich`` display, started by the first task and stopped by the last.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("regiontrt.progress")

#: Without a bar, a running task logs a line at most this often (seconds).
PLAIN_EVERY_S = 10.0

_forced: bool | None = None
_lock = threading.RLock()
_display: Any = None  # the shared rich.progress.Progress while any bar is shown
_users = 0
_console: Any = None


def set_enabled(flag: bool | None) -> None:
    """Force bars on (``True``) or off (``False``); ``None`` returns to the automatic choice."""
    global _forced
    _forced = flag


def rich_available() -> bool:
    """Whether the optional ``rich`` package can be imported."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def bars_enabled() -> bool:
    """Whether progress bars are drawn now (see the module docstring for the rules)."""
    if _forced is not None:
        return _forced and rich_available()
    env = os.environ.get("REGIONTRT_PROGRESS", "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    stream = sys.stderr
    try:
        tty = bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        tty = False
    if not tty or os.environ.get("TERM") == "dumb":
        return False
    if os.environ.get("CI") and env not in ("1", "true", "yes", "on"):
        return False
    return rich_available()


def console() -> Any:
    """The shared ``rich`` console on standard error (for log handlers that draw above bars)."""
    global _console
    from rich.console import Console

    if _console is None or _console.file is not sys.stderr:
        _console = Console(stderr=True)
    return _console


def _acquire_display() -> Any:
    global _display, _users
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    with _lock:
        if _display is None:
            display = Progress(
                SpinnerColumn(),
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console(),
                transient=True,
            )
            display.start()  # may raise (older rich: another live display is active)
            _display = display
        _users += 1
        return _display


def _release_display() -> None:
    global _display, _users
    with _lock:
        _users -= 1
        if _users <= 0 and _display is not None:
            _display.stop()
            _display, _users = None, 0


class Task:
    """One running task: call :meth:`advance` as work completes.

    Attributes:
        description: what is being done (shown beside the bar and in the log line).
        total: how many steps there are, or ``None`` when unknown.
        completed: steps done so far.
    """

    def __init__(self, description: str, total: int | None) -> None:
        self.description = description
        self.total = total
        self.completed = 0
        self.started = time.perf_counter()
        self._last_line = self.started
        self._bar: Any = None
        self._bar_id: Any = None

    def advance(self, steps: int = 1) -> None:
        """Mark ``steps`` more steps done."""
        self.completed += steps
        if self._bar is not None:
            self._bar.advance(self._bar_id, steps)
            return
        now = time.perf_counter()
        if now - self._last_line >= PLAIN_EVERY_S:
            self._last_line = now
            log.info("%s: %s (%.0f s)", self.description, self._count(), now - self.started)

    def update(self, *, total: int | None = None, description: str | None = None) -> None:
        """Change the total or the description of a running task."""
        if total is not None:
            self.total = total
        if description is not None:
            self.description = description
        if self._bar is not None:
            self._bar.update(self._bar_id, total=self.total, description=self.description)

    @property
    def seconds(self) -> float:
        """Seconds since the task started."""
        return time.perf_counter() - self.started

    def _count(self) -> str:
        return f"{self.completed}" + (f"/{self.total}" if self.total is not None else "")


@contextlib.contextmanager
def task(
    description: str, total: int | None = None, *, log_level: int = logging.INFO
) -> Iterator[Task]:
    """A task with a bar (on a terminal) and a log line when it ends.

    Args:
        description: what is being done, e.g. ``"calibration (EU)"``.
        total: number of steps, or ``None`` when unknown (the bar then pulses).
        log_level: level of the line logged when the task ends (DEBUG for passes repeated
            many times, such as each validation run of a search); a failure logs a WARNING.
    """
    t = Task(description, total)
    display = None
    if bars_enabled():
        # A bar must never break a build: on any failure, fall back to plain lines.
        with contextlib.suppress(Exception):
            display = _acquire_display()
        if display is not None:
            try:
                t._bar_id = display.add_task(description, total=total)
                t._bar = display
            except Exception:
                _release_display()
                display = None
    if display is None:  # no bar: a plain line says the (possibly long) task has started
        log.log(log_level, "%s: started%s", description,
                f" ({total} steps)" if total is not None else "")
    ok = False
    try:
        yield t
        ok = True
    finally:
        if display is not None:
            with contextlib.suppress(Exception):
                display.remove_task(t._bar_id)
            _release_display()
        count = t._count() + " " if t.total is not None or t.completed else ""
        log.log(log_level if ok else logging.WARNING, "%s: %s%s in %.2f s",
                t.description, count, "done" if ok else "stopped", t.seconds)


def track(
    iterable: Iterable[T],
    description: str,
    total: int | None = None,
    *,
    log_level: int = logging.INFO,
) -> Iterator[T]:
    """Yield from ``iterable`` with a progress task advancing once per item.

    Args:
        iterable: what to loop over.
        description: what is being done.
        total: number of items; taken from ``len(iterable)`` when it has one.
        log_level: level of the line logged at the end (see :func:`task`).
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with task(description, total, log_level=log_level) as t:
        for item in iterable:
            yield item
            t.advance()


class LiveTable:
    """Rows shown as they arrive: a live ``rich`` table on a terminal, else a table at the end.

    Use through :func:`live_table`.
    """

    def __init__(self, header: Sequence[str], title: str | None) -> None:
        self.header = tuple(header)
        self.title = title
        self.rows: list[tuple[str, ...]] = []
        self._live: Any = None

    def add_row(self, *cells: Any) -> None:
        """Append a row (cells are converted with ``str``)."""
        self.rows.append(tuple(str(c) for c in cells))
        if self._live is not None:
            from regiontrt._text import rich_table

            self._live.update(rich_table(self.rows, self.header, self.title))
        else:  # without a live table, a plain line tells a pipe's reader the row is done
            log.info("%s", "  ".join(f"{h}={c}" for h, c in zip(self.header, self.rows[-1])))


@contextlib.contextmanager
def live_table(header: Sequence[str], title: str | None = None) -> Iterator[LiveTable]:
    """A table filled row by row, printed to standard output.

    On a terminal (with ``rich``) the table is drawn live as rows arrive and stays on screen; in
    a pipe the finished table is printed once at the end (each row is also logged when added).
    """
    from regiontrt._text import print_table

    table = LiveTable(header, title)
    stdout_tty = False
    with contextlib.suppress(AttributeError, ValueError):
        stdout_tty = sys.stdout.isatty()
    if stdout_tty and bars_enabled():
        from rich.console import Console
        from rich.live import Live

        from regiontrt._text import rich_table

        with Live(rich_table([], table.header, title), console=Console(),
                  refresh_per_second=4) as live:
            table._live = live
            yield table
            live.update(rich_table(table.rows, table.header, title))
        return
    yield table
    print_table(table.rows, table.header, title=title)


def reset_logging() -> None:
    """Undo :func:`configure_logging` (the CLI calls it on exit, so in-process callers of
    ``regiontrt.cli.main`` keep their own logging as it was)."""
    root = logging.getLogger("regiontrt")
    for old in list(root.handlers):
        if getattr(old, "_regiontrt_cli", False):
            root.removeHandler(old)
    root.setLevel(logging.NOTSET)
    set_enabled(None)


def configure_logging(verbosity: int = 0) -> None:
    """Show ``regiontrt.*`` log records on standard error (what the CLI's ``-v``/``-q`` set).

    Args:
        verbosity: ``-1`` warnings and errors only (and no bars), ``0`` stage decisions and
            progress lines (INFO), ``1`` or more everything (DEBUG).
    """
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    root = logging.getLogger("regiontrt")
    for old in list(root.handlers):
        if getattr(old, "_regiontrt_cli", False):
            root.removeHandler(old)
    set_enabled(False if verbosity < 0 else None)
    handler: logging.Handler
    if bars_enabled():
        from rich.logging import RichHandler

        handler = RichHandler(console=console(), show_path=verbosity > 0, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))
    setattr(handler, "_regiontrt_cli", True)  # noqa: B010 - marks the handler this function owns
    root.addHandler(handler)
    root.setLevel(level)
