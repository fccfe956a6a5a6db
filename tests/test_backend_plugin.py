"""A new backend is one module and a registration: the builder, the build stages and the CLI
take it untouched."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import regiontrt as rt
from regiontrt import demo
from regiontrt.backends import BACKENDS, get_backend, register_backend
from regiontrt.cli import main
from regiontrt.data.sources import split_batches

MODULE = '''
"""A backend written outside regiontrt: ONNX Runtime with every run counted."""

from regiontrt.backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeRunner

RUNS = []


class CountingRunner(OnnxRuntimeRunner):
    def run(self, feeds, *, outputs="host"):
        RUNS.append(sorted(feeds))
        return super().run(feeds, outputs=outputs)


class CountingBackend(OnnxRuntimeBackend):
    name = "{name}"

    def load(self, payload, metadata):
        return CountingRunner(payload)
'''


def _write_module(folder: Path, module: str, name: str) -> None:
    (folder / f"{module}.py").write_text(MODULE.replace("{name}", name))


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _write_module(tmp_path, "counting_backend", "counting")
    monkeypatch.syspath_prepend(str(tmp_path))
    register_backend("counting", "counting_backend:CountingBackend")
    yield __import__("counting_backend")
    BACKENDS.pop("counting", None)


def test_a_registered_backend_builds_saves_loads_and_runs(plugin, tmp_path: Path) -> None:
    data = demo.region_data("EU")
    engine = (rt.RegionalEngineBuilder.from_onnx(demo.model_path()).for_region("EU")
              .with_backend("counting")
              .with_validation(split_batches({"input": data.validation[:64]}, 32))
              .build(tmp_path / "eu.engine"))
    assert engine.backend_name == "counting"
    assert rt.inspect(tmp_path / "eu.engine")["backend"]["name"] == "counting"
    loaded = rt.load_engine(tmp_path / "eu.engine")
    before = len(plugin.RUNS)
    out = loaded.infer({"input": data.validation[:4]})["logits"]
    assert out.shape == (4, 10) and len(plugin.RUNS) == before + 1
    assert isinstance(get_backend("counting"), plugin.CountingBackend)


def test_the_cli_offers_a_registered_backend(plugin, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "val.npz", input=demo.region_data("EU").validation[:32])
    assert main(["build", str(demo.model_path()), "--region", "EU", "--validation", "val.npz",
                 "--backend", "counting", "-o", "cli.engine"]) == 0
    assert rt.inspect(tmp_path / "cli.engine")["backend"]["name"] == "counting"


def test_a_package_registers_its_backend_through_an_entry_point(tmp_path: Path) -> None:
    """A distribution on the path that names the backend in the entry-point group."""
    _write_module(tmp_path, "ep_backend", "from-entry-point")
    info = tmp_path / "ep_backend-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-backend\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[regiontrt.backends]\nfrom-entry-point = ep_backend:CountingBackend\n")
    code = textwrap.dedent("""
        import sys
        from regiontrt.backends import BACKENDS, backend_names, get_backend
        from regiontrt.cli import build_parser
        assert "from-entry-point" not in BACKENDS  # entry points are read on first lookup
        assert "from-entry-point" in backend_names()
        assert BACKENDS["from-entry-point"] == ("ep_backend", "CountingBackend")
        assert type(get_backend("from-entry-point")).__name__ == "CountingBackend"
        build_parser().parse_args(["build", "m.onnx", "--region", "EU", "--backend",
                                   "from-entry-point"])
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": f"{tmp_path}:{Path(__file__).parents[1]}",
                               "PATH": "/usr/bin:/bin"}, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("name,target", [("Bad Name", "m:C"), ("ok", "no-colon"),
                                          ("onnxruntime", "other:Backend")])
def test_bad_registrations_are_refused(name: str, target: str) -> None:
    with pytest.raises(ValueError):
        register_backend(name, target)
