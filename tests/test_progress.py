"""Progress bars, plain progress lines, live tables and the CLI's log configuration."""

from __future__ import annotations

import io
import logging
import threading

import pytest

from regiontrt import _progress
from regiontrt._progress import bars_enabled, configure_logging, live_table, task, track
from regiontrt._text import format_table, print_table


@pytest.fixture(autouse=True)
def _reset() -> None:
    _progress.set_enabled(False)  # a developer's terminal must not change what tests see
    yield
    _progress.set_enabled(None)
    root = logging.getLogger("regiontrt")
    for handler in list(root.handlers):
        if getattr(handler, "_regiontrt_cli", False):
            root.removeHandler(handler)
    root.setLevel(logging.NOTSET)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_track_yields_everything_and_logs_one_line_at_the_end(caplog) -> None:
    caplog.set_level(logging.INFO, logger="regiontrt.progress")
    assert list(track(range(5), "calibration (EU)")) == [0, 1, 2, 3, 4]
    lines = [r.getMessage() for r in caplog.records if r.name == "regiontrt.progress"]
    assert len(lines) == 1 and lines[0].startswith("calibration (EU): 5/5 done in ")


def test_a_failed_task_logs_a_warning_and_reraises(caplog) -> None:
    caplog.set_level(logging.INFO, logger="regiontrt.progress")
    with pytest.raises(KeyError), task("validation", total=3) as t:
        t.advance()
        raise KeyError("boom")
    [record] = [r for r in caplog.records if r.name == "regiontrt.progress"]
    assert record.levelno == logging.WARNING and "1/3 stopped" in record.getMessage()


def test_plain_lines_while_a_long_task_runs(caplog, monkeypatch) -> None:
    monkeypatch.setattr(_progress, "PLAIN_EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="regiontrt.progress")
    with task("search", total=2) as t:
        t.advance()
        t.advance()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("search: 1/2 (") and lines[1].startswith("search: 2/2 (")


def test_no_bars_in_pipes_or_ci(monkeypatch) -> None:
    _progress.set_enabled(None)
    monkeypatch.delenv("REGIONTRT_PROGRESS", raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not bars_enabled()  # not a terminal
    monkeypatch.setattr("sys.stderr", _Tty())
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert bars_enabled()
    monkeypatch.setenv("CI", "true")
    assert not bars_enabled()
    monkeypatch.setenv("REGIONTRT_PROGRESS", "1")
    assert bars_enabled()
    monkeypatch.delenv("CI")
    monkeypatch.setenv("REGIONTRT_PROGRESS", "0")
    assert not bars_enabled()


def test_rich_bars_nest_across_threads_and_stop_with_the_last_task(monkeypatch) -> None:
    pytest.importorskip("rich", reason="needs rich (pip install 'regiontrt[rich]')")
    err = _Tty()
    monkeypatch.setattr("sys.stderr", err)
    _progress.set_enabled(True)
    seen: list[int] = []

    def cell(n: int) -> None:
        for i in track(range(n), f"cell {n}"):
            seen.append(i)

    with task("fleet", total=3) as outer:
        assert _progress._display is not None
        threads = [threading.Thread(target=cell, args=(n,)) for n in (2, 3, 4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
            outer.advance()
        assert outer.completed == 3
    assert _progress._display is None and _progress._users == 0
    assert sorted(seen) == [0, 0, 0, 1, 1, 1, 2, 2, 3]


def test_live_table_in_a_pipe_prints_once_at_the_end(capsys) -> None:
    with live_table(("region", "precision"), title=None) as table:
        table.add_row("EU", "fp16")
        assert capsys.readouterr().out == ""  # nothing before the table is complete
        table.add_row("NA", "int8")
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["region", "precision"]
    assert [line.split() for line in out[2:]] == [["EU", "fp16"], ["NA", "int8"]]


def test_print_table_without_rich_is_the_plain_format(monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_rich(name: str, *args, **kwargs):
        if name.startswith("rich"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rich)
    out = io.StringIO()
    print_table([("EU", "fp16")], ("region", "precision"), file=out)
    assert out.getvalue() == format_table([("EU", "fp16")], ("region", "precision")) + "\n"
    _progress.set_enabled(True)
    assert not _progress.rich_available() and not bars_enabled()


def test_print_table_into_a_pipe_keeps_whole_rows() -> None:
    pytest.importorskip("rich", reason="needs rich (pip install 'regiontrt[rich]')")
    out = io.StringIO()
    long = "x" * 300
    print_table([("EU", long)], ("region", "description"), file=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["region", "description"]
    assert lines[2].split() == ["EU", long]  # not wrapped at 80 columns
    assert all(line == line.rstrip() for line in lines)


@pytest.mark.parametrize(("verbosity", "level"), [(-1, logging.WARNING), (0, logging.INFO),
                                                  (2, logging.DEBUG)])
def test_configure_logging_levels(verbosity: int, level: int, monkeypatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    configure_logging(verbosity)
    configure_logging(verbosity)  # idempotent: one handler, not two
    root = logging.getLogger("regiontrt")
    assert root.level == level
    assert sum(getattr(h, "_regiontrt_cli", False) for h in root.handlers) == 1
    logging.getLogger("regiontrt.pipeline").info("chose fp16")
    assert ("chose fp16" in err.getvalue()) == (level <= logging.INFO)
