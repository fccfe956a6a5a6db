"""The command line as a new user meets it: help, versions, errors, where files land, bench."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_cnn

import regiontrt as rt
from regiontrt import demo
from regiontrt.cli import build_parser, main
from regiontrt.cli.core import default_output

README_SHAPE = "input:1x1x8x8,32x1x8x8,64x1x8x8"


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "regiontrt", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_version_and_python_dash_m() -> None:
    got = run("--version")
    assert got.returncode == 0 and got.stdout.strip() == f"regiontrt {rt.__version__}"


def test_top_level_help_is_for_users() -> None:
    text = build_parser().format_help()
    assert "Nothing in the library" not in text and "imports" not in text
    assert "examples:" in text and "regiontrt build model.onnx" in text and "--version" in text


def _actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)
        else:
            yield parser.prog, action


def test_every_argument_has_help_with_an_example() -> None:
    """Every argument of every command, nested ones included, found by walking the parser."""
    flags = (argparse._HelpAction, argparse._VersionAction, argparse._StoreTrueAction,
             argparse._CountAction)
    missing, commands = [], set()
    for command, action in _actions(build_parser()):
        commands.add(command)
        if not action.help:
            missing.append(f"{command} {action.dest}: no help")
        elif not isinstance(action, flags) and "e.g." not in action.help:
            missing.append(f"{command} {action.dest}: no example in {action.help!r}")
    assert not missing, "\n".join(missing)
    # The walk reached the commands of every module, nested ones too.
    assert {"regiontrt build", "regiontrt serve", "regiontrt report", "regiontrt fleet build",
            "regiontrt pull", "regiontrt triton-export"} <= commands


def test_every_command_takes_verbosity_after_its_name() -> None:
    parser = build_parser()
    args = parser.parse_args(["fleet", "build", "f.toml", "--out", "d", "-q", "-q"])
    assert args.quiet == 2 and args.verbose == 0
    assert parser.parse_args(["-v", "fleet", "build", "f.toml", "--out", "d"]).verbose == 1


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["fleet", "build", "f.toml", "--out", "d", "--workers", "0"], "argument --workers"),
        (["serve", "x.engine", "--max-batch", "0"], "argument --max-batch"),
        (["serve", "x.engine", "--max-delay-ms", "nan"], "argument --max-delay-ms"),
        (["serve", "x.engine", "--monitor", "1.5"], "argument --monitor"),
        (["serve", "x.engine", "--sla-ms", "-1"], "argument --sla-ms"),
        (["serve", "x.engine", "--max-queue", "many"], "argument --max-queue"),
    ],
)
def test_fleet_and_serve_numbers_are_refused_naming_the_flag(argv, needle, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and needle in err
    assert "max_batch" not in err and "Traceback" not in err


def test_closed_pipe_ends_quietly() -> None:
    """``regiontrt regions | head -1``: the reader is gone before the output is written."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "regiontrt", "regions"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # closed long before the interpreter has started and printed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err


def test_regions_table_rows_are_whole_in_a_pipe(capsys) -> None:
    assert main(["regions"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["region", "precisions", "forbidden"]
    names = [line.split()[0] for line in lines[2:]]
    assert names == list(rt.precision.default_regions())


def test_errors_name_cli_flags_not_python_methods(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    val = tmp_path / "val.npz"
    np.savez(val, input=demo.region_data("NA").validation[:32])
    assert main(["build", str(demo.model_path()), "--region", "na", "--validation", str(val),
                 "--shape", README_SHAPE]) == 2
    err = capsys.readouterr().err
    assert "--calibration" in err and "--precision" in err
    assert ".with_" not in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.engine"))  # nothing half-written
    assert main(["build", str(demo.model_path()), "--region", "EU", "--shape", README_SHAPE]) == 2
    err = capsys.readouterr().err
    assert "--validation" in err and ".with_validation" not in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["build", "missing.onnx", "--region", "EU"], "model file not found"),
        (["build", "{model}", "--region", "MARS"], "MARS"),
        (["build", "{model}", "--region", "EU", "--shape", "input:1x1x8"], "rank"),
        (["build", "{model}", "--region", "EU", "--shape", "input:axbxc"], "integers"),
        (["build", "{model}", "--region", "EU", "--validation", "nowhere/"], "not found"),
        (["inspect", "missing.engine"], "missing.engine"),
        (["bench", "{model}"], "{model}"),
        (["regions", "--regions-file", "nowhere.toml"], "nowhere.toml"),
    ],
)
def test_user_errors_are_one_line_without_traceback(argv, needle, tmp_path, capsys,
                                                    monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = str(demo.model_path())
    argv = [a.replace("{model}", model) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and needle.replace("{model}", model) in err
    assert err.strip().splitlines()[-1].startswith("regiontrt: error: ")


def test_build_writes_into_the_current_folder_and_logs_every_int8_decision(
        tmp_path: Path, capsys, monkeypatch) -> None:
    """One .npz with all 360 validation samples and the README's --shape: split into batches."""
    models = tmp_path / "models"
    models.mkdir()
    model = models / "digits.onnx"
    shutil.copy(demo.model_path(), model)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    data = demo.region_data("NA")
    assert len(data.validation) == 360 > 64
    np.savez(work / "val.npz", input=data.validation)
    np.save(work / "calib.npy", data.calibration)  # .npy for a single-input model
    assert main(["build", str(model), "--region", "na", "--validation", "val.npz",
                 "--calibration", "calib.npy", "--shape", README_SHAPE]) == 0
    captured = capsys.readouterr()
    assert (work / "digits.NA.engine").is_file() and default_output(model, "NA").parent == work
    assert not list(models.glob("*.engine"))  # never beside the model
    meta = rt.inspect(work / "digits.NA.engine")
    assert meta["validation"]["num_samples"] == 360
    assert meta["calibration"]["num_batches"] == 8 and meta["calibration"]["num_samples"] == 256
    assert captured.out.startswith(f"built {work / 'digits.NA.engine'}: region NA")
    log = captured.err
    for needle in ("validation data: 360 samples in 12 batches",
                   "region NA: trying int8 > fp16 > fp32 in order",
                   "int8: calibrating",
                   "calibration (auto):",
                   "int8: whole-model loss",
                   "region NA: int8 loss",
                   "region NA: chose"):
        assert needle in log, f"{needle!r} not in the log:\n{log}"


def test_quiet_and_verbose(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["build", str(demo.model_path()), "--region", "CERTIFIED", "-o", "c.engine"]
    assert main([*args, "-q"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["-v", *args]) == 0
    err = capsys.readouterr().err
    assert "region CERTIFIED: chose fp32" in err
    assert main([*args, "-v", "--regions-file", "nowhere.toml"]) == 2
    assert "Traceback" in capsys.readouterr().err  # -v shows where an error came from
    root = logging.getLogger("regiontrt")  # main() leaves the caller's logging as it was
    assert root.level == logging.NOTSET and not any(
        getattr(h, "_regiontrt_cli", False) for h in root.handlers)


def _dynamic_cnn(path: Path) -> Path:
    model = make_cnn()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    onnx.save(model, path)
    return path


def test_bench_refuses_to_guess_a_dynamic_dimension(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = _dynamic_cnn(tmp_path / "dyn.onnx")
    assert main(["build", str(model), "--region", "CERTIFIED", "-q"]) == 0
    engine = rt.load_engine(tmp_path / "dyn.CERTIFIED.engine")
    with pytest.raises(rt.errors.InputError, match="no shape profile"):
        engine.sample_inputs()
    with pytest.raises(rt.errors.InputError, match="unknown inputs"):
        engine.sample_inputs(shapes={"image": (1, 1, 8, 8)})
    assert engine.sample_inputs(shapes={"input": (2, 1, 5, 7)})["input"].shape == (2, 1, 5, 7)
    capsys.readouterr()
    assert main(["bench", "dyn.CERTIFIED.engine", "--iterations", "2"]) == 2
    err = capsys.readouterr().err
    assert "--shape" in err and "sample_inputs" not in err and "axes [2, 3]" in err
    assert main(["bench", "dyn.CERTIFIED.engine", "--iterations", "2", "--warmup", "0",
                 "--shape", "input:3x1x16x24", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["batch"] == 3 and report["iterations"] == 2


def test_bench_uses_the_profile_opt_shape(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = _dynamic_cnn(tmp_path / "dyn.onnx")
    assert main(["build", str(model), "--region", "CERTIFIED", "-q",
                 "--shape", "input:1x1x8x8,4x1x16x32,8x1x32x64"]) == 0
    capsys.readouterr()
    engine = rt.load_engine(tmp_path / "dyn.CERTIFIED.engine")
    assert engine.sample_inputs()["input"].shape == (4, 1, 16, 32)
    assert engine.sample_inputs(batch=2)["input"].shape == (2, 1, 16, 32)
    assert main(["bench", "dyn.CERTIFIED.engine", "--iterations", "2", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["batch"] == 4
    assert "on input (4, 1, 16, 32)" in captured.err
    assert "benchmark CERTIFIED: batch 4, 2 runs, p50 " in captured.err
    assert main(["bench", "dyn.CERTIFIED.engine", "--shape", "input:1x1x64x64"]) == 2
    err = capsys.readouterr().err
    assert "--batch/--shape must fit" in err and "(1, 1, 64, 64) not within" in err


def test_demo_normalises_region_names(tmp_path: Path, capsys) -> None:
    out = tmp_path / "d"
    assert main(["demo", "--out", str(out), "--regions", "eu,certified", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["digits_cnn.CERTIFIED.engine",
                                                     "digits_cnn.EU.engine"]
    rows = capsys.readouterr().out.splitlines()
    assert [r.split()[0] for r in rows[3:]] == ["EU", "CERTIFIED"]
    assert rt.inspect(out / "digits_cnn.EU.engine")["region"]["name"] == "EU"


def test_demo_with_an_unknown_region_creates_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "d"
    assert main(["demo", "--out", str(out), "--regions", "eu,XX"]) == 2
    assert "XX" in capsys.readouterr().err
    assert not out.exists()


def test_a_free_batch_axis_alone_benchmarks_batch_one() -> None:
    engine = rt.RegionalEngineBuilder.from_onnx(make_cnn()).for_region("CERTIFIED").build()
    assert engine.profiles == [] or "input" not in engine.profiles[0].ranges
    assert engine.sample_inputs()["input"].shape == (1, 1, 8, 8)
    assert engine.sample_inputs(batch=3)["input"].shape == (3, 1, 8, 8)


def test_fleet_build_reports_each_cell_as_it_finishes(tmp_path: Path) -> None:
    """In a pipe: a plain line per cell on stderr, the table on stdout; -q: no progress at all."""
    pytest.importorskip("fsspec", reason="needs fsspec (pip install 'regiontrt[fleet]')")
    from fleet_support import write_fleet

    fleet = write_fleet(tmp_path / "src", regions=("CERTIFIED", "EU"), targets=("cpu", "cpu-batch"))
    got = run("fleet", "build", str(fleet), "--out", str(tmp_path / "dist"))
    assert got.returncode == 0, got.stderr
    cells = [line for line in got.stderr.splitlines() if "region=" in line]
    assert sorted(line.split()[2:4] for line in cells) == [
        [f"region={r}", f"target={t}"] for r in ("CERTIFIED", "EU") for t in ("cpu", "cpu-batch")]
    assert all(line.rstrip().endswith("status=built") for line in cells)
    assert "fleet digits 1.0.0: cells: 4/4 done" in got.stderr
    assert "\r" not in got.stderr and "\x1b[" not in got.stderr + got.stdout  # no bars in a pipe
    rows = [line.split()[:2] for line in got.stdout.splitlines() if line.endswith("built")]
    assert rows == [[r, t] for r in ("CERTIFIED", "EU") for t in ("cpu", "cpu-batch")]

    quiet = run("fleet", "build", str(fleet), "--out", str(tmp_path / "dist-q"), "-q")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert quiet.stdout.splitlines()[-1].startswith("4 cells, 0 failed")  # the result stays


def test_fleet_build_draws_a_live_table_on_a_terminal(tmp_path: Path) -> None:
    pytest.importorskip("fsspec", reason="needs fsspec (pip install 'regiontrt[fleet]')")
    pytest.importorskip("rich", reason="needs rich (pip install 'regiontrt[rich]')")
    pty = pytest.importorskip("pty", reason="needs a POSIX pseudo-terminal")
    from fleet_support import write_fleet

    fleet = write_fleet(tmp_path / "src", regions=("CERTIFIED",), targets=("cpu", "cpu-batch"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "COLUMNS": "160", "TERM": "xterm"}
    env.pop("CI", None)
    env.pop("REGIONTRT_PROGRESS", None)
    parent, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "regiontrt", "fleet", "build", str(fleet),
                             "--out", str(tmp_path / "dist")],
                            stdin=child, stdout=child, stderr=child, env=env)
    os.close(child)
    screen = b""
    while True:
        try:
            chunk = os.read(parent, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        screen += chunk
    os.close(parent)
    assert proc.wait(timeout=120) == 0, screen.decode(errors="replace")
    text = screen.decode()
    assert "region=" not in text  # no plain lines: the table is drawn in place
    for target in ("cpu ", "cpu-batch"):
        assert any(line.startswith("│ CERTIFIED │ " + target) for line in text.splitlines())
    assert "\x1b[1A" in text  # redrawn as cells arrive


def test_build_without_shape_accepts_every_declared_shape(tmp_path: Path, capsys,
                                                         monkeypatch) -> None:
    """A new user's first build often omits --shape: on ONNX Runtime, which needs no profile,
    the engine then takes every shape the model declares, not just the validation data's, and
    nothing warns; inspect says where the (absent) profile came from."""
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "val.npz", input=demo.region_data("EU").validation[:48])
    assert main(["build", str(demo.model_path()), "--region", "EU", "--validation",
                 str(tmp_path / "val.npz"), "-o", "a.engine"]) == 0
    err = capsys.readouterr().err
    assert "WARNING" not in err and "no shape profile given" not in err
    engine = rt.load_engine(tmp_path / "a.engine")
    for batch in (1, 4, 48, 100):
        x = demo.region_data("EU").validation[:batch]
        assert engine.infer({"input": x})["logits"].shape[0] == batch
    assert main(["inspect", "a.engine"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime accepts every shape the model declares" in out


def test_inspect_an_onnx_model_lists_the_names_data_files_need(capsys) -> None:
    assert main(["inspect", str(demo.model_path())]) == 0
    out = capsys.readouterr().out
    model = onnx.load(str(demo.model_path()))
    [row] = [line.split() for line in out.splitlines() if line.startswith("input ")]
    assert row[1] == model.graph.input[0].name and row[2] == "float32"
    assert "regiontrt build" in out
    assert main(["inspect", str(demo.model_path()), "--json"]) == 0
    [first, *_] = json.loads(capsys.readouterr().out)
    assert first["kind"] == "input" and first["name"] == model.graph.input[0].name
