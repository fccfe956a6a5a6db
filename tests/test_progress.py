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


def test_track_yields_everything_and_logs_a_start_and_an_end_line(caplog) -> None:
    caplog.set_level(logging.INFO, logger="regiontrt.progress")
    assert list(track(range(5), "calibration (EU)")) == [0, 1, 2, 3, 4]
    lines = [r.getMessage() for r in caplog.records if r.name == "regiontrt.progress"]
    assert lines[0] == "calibration (EU): started (5 steps)"
    assert len(lines) == 2 and lines[1].startswith("calibration (EU): 5/5 done in ")


def test_a_failed_task_logs_a_warning_and_reraises(caplog) -> None:
    caplog.set_level(logging.INFO, logger="regiontrt.progress")
    with pytest.raises(KeyError), task("validation", total=3) as t:
        t.advance()
        raise KeyError("boom")
    record = [r for r in caplog.records if r.name == "regiontrt.progress"][-1]
    assert record.levelno == logging.WARNING and "1/3 stopped" in record.getMessage()


def test_plain_lines_while_a_long_task_runs(caplog, monkeypatch) -> None:
    monkeypatch.setattr(_progress, "PLAIN_EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="regiontrt.progress")
    with task("search", total=2) as t:
        t.advance()
        t.advance()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[1].startswith("search: 1/2 (") and lines[2].startswith("search: 2/2 (")


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
    print_table([("EU", long), ("[red]NA[/red]", "[[1, 8], [2, 8]]")], ("region", "description"),
                file=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["region", "description"]
    assert lines[2].split() == ["EU", long]  # not wrapped at 80 columns
    assert lines[3].split(maxsplit=1) == ["[red]NA[/red]", "[[1, 8], [2, 8]]"]  # not markup
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
    logging.getLogger("regiontrt.build.pipeline").info("chose fp16")
    assert ("chose fp16" in err.getvalue()) == (level <= logging.INFO)


def _int8_build():
    import regiontrt as rt
    from regiontrt import demo

    data = demo.region_data("NA")
    return (rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region("NA")
            .with_shape_profile({"input": [(1, 1, 8, 8), (32, 1, 8, 8), (64, 1, 8, 8)]})
            .with_calibrator("minmax", data=data.calibration[:128])  # one file, split in 4
            .with_validation(data.validation[:128])  # one array, split in 4
            .build())


def test_an_int8_build_on_the_cpu_reports_every_stage(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="regiontrt")
    engine = _int8_build()
    assert engine.precision == "int8"
    progress = [r.getMessage() for r in caplog.records if r.name == "regiontrt.progress"]
    assert any(m.startswith("calibration: 4 done") for m in progress), progress
    assert any(m.startswith("calibration mismatch check: 4/4 done") for m in progress), progress
    assert any(m.startswith("validation (4 batches): done") for m in progress), progress
    assert any(m.startswith("onnxruntime build (NA-int8): done in") for m in progress), progress
    decisions = [r.getMessage() for r in caplog.records if r.name == "regiontrt.build.pipeline"]
    assert decisions[0].startswith("region NA: trying int8 > fp16 > fp32 in order")
    assert any(m.startswith("region NA: int8 loss") and "accepted" in m for m in decisions)
    assert decisions[-1].startswith("region NA: chose int8")
    [trial] = [r for r in caplog.records if hasattr(r, "trial")]  # structured, for log shippers
    assert trial.region == "NA" and trial.trial["precision"] == "int8" and trial.trial["accepted"]
    assert any(r.name == "regiontrt.calibration" and "(minmax)" in r.getMessage()
               for r in caplog.records)


def test_an_int8_build_with_bars_on_a_terminal(monkeypatch) -> None:
    pytest.importorskip("rich", reason="needs rich (pip install 'regiontrt[rich]')")
    err = _Tty()
    monkeypatch.setattr("sys.stderr", err)
    _progress._console = None
    _progress.set_enabled(True)
    assert _int8_build().precision == "int8"
    assert _progress._display is None  # every bar stopped
    assert "\x1b[" in err.getvalue()  # the bars were drawn (cursor control on the terminal)


def test_mixed_precision_search_reports_its_sensitivity_pass(caplog) -> None:
    from regiontrt.precision.mixed import search_mixed_precision

    caplog.set_level(logging.DEBUG, logger="regiontrt")
    weights = {"conv0": 0.5, "conv1": 0.1, "fc": 0.3}
    result = search_mixed_precision(
        list(weights), lambda keep: sum(w for n, w in weights.items() if n not in keep), 0.35)
    assert result.fits and result.kept == ("conv0", "fc")
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("mixed precision: layer sensitivity: 3/3 done") for m in messages)
    assert any(m.startswith("mixed precision: most sensitive layers: conv0") for m in messages)


def test_a_bar_that_cannot_start_falls_back_to_plain_lines(monkeypatch, caplog) -> None:
    pytest.importorskip("rich", reason="needs rich (pip install 'regiontrt[rich]')")
    from rich.progress import Progress

    def refuse(self) -> None:
        raise RuntimeError("Only one live display may be active at once")

    monkeypatch.setattr(Progress, "start", refuse)
    monkeypatch.setattr("sys.stderr", _Tty())
    _progress.set_enabled(True)
    caplog.set_level(logging.INFO, logger="regiontrt.progress")
    assert list(track(range(3), "calibration")) == [0, 1, 2]
    assert _progress._display is None and _progress._users == 0
    assert caplog.records[0].getMessage() == "calibration: started (3 steps)"
