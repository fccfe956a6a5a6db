"""mypy checks the TensorRT backends, build side and runtime side, against ``tensorrt-stubs``.

The stubs (10.13) install ``tensorrt/__init__.pyi`` without a ``py.typed`` marker, so mypy skips
them, and their generated ``tensorrt.pyi`` has a few syntax errors (parameters named ``in``,
non-default parameters after defaults). This test copies them into a temporary stub path with
those signatures repaired, then runs mypy on the backend modules with that path. A probe with a
misspelt TensorRT attribute must fail, which proves the stubs are really in effect; a second
probe proves that a ``TensorRT type | Any`` annotation (the runner's, since test doubles run there
too) is still checked.
"""

from __future__ import annotations

import keyword
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy", reason="needs mypy")
ROOT = Path(__file__).resolve().parents[1]
MODULES = ["tensorrt.py", "tensorrt_rtx.py", "trt_build.py", "trt_env.py", "plan.py",
           "timing_cache.py", "fusion.py", "trt_runner.py", "trt_slots.py", "trt_alloc.py",
           "trt_compat.py", "trt_features.py"]


def find_stubs() -> Path | None:
    for entry in map(Path, sys.path):
        if (entry / "tensorrt_bindings" / "tensorrt.pyi").is_file():
            return entry
    return None


def _fix_params(params: str) -> str:
    parts, depth, current = [], 0, ""
    for ch in params:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    out, seen_default = [], False
    for part in parts:
        text = part.strip()
        name = re.match(r"\**(\w+)", text)
        if name and keyword.iskeyword(name.group(1)):
            text = text.replace(name.group(1), name.group(1) + "_", 1)
        if text.startswith("*"):
            seen_default = False
        elif "=" in text:
            seen_default = True
        elif seen_default:
            text += " = ..."
        out.append(text)
    return ", ".join(out)


def sanitise(source: str) -> str:
    """Repair the one-line ``def`` signatures that are not valid Python."""
    lines = []
    for line in source.splitlines():
        m = re.match(r"^(\s*def \w+\()(.*)(\)\s*->.*:\s*)$", line)
        lines.append(m.group(1) + _fix_params(m.group(2)) + m.group(3) if m else line)
    return "\n".join(lines) + "\n"


CONFIG = """\
[mypy]
python_version = 3.10
ignore_missing_imports = true
warn_unused_ignores = false
check_untyped_defs = true
disallow_untyped_defs = true
follow_imports = silent

[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]
ignore_errors = true
"""

PROBE = """\
from __future__ import annotations
from typing import Any
import tensorrt

def probe(config: tensorrt.IBuilderConfig) -> None:
    config.max_num_tacticz = 3


def probe_runtime(context: tensorrt.IExecutionContext | Any) -> None:
    # the runner's objects are typed "TensorRT type | Any" (fakes run there too): still checked
    context.set_optimization_profile_asynk(0, 0)
"""


def test_backends_type_check_against_tensorrt_stubs(tmp_path, request):
    site = find_stubs()
    if site is None:
        pytest.skip("needs tensorrt-stubs (pip install --no-deps tensorrt-stubs)")
    stubs = tmp_path / "stubs"
    for package in ("tensorrt", "tensorrt_bindings"):
        (stubs / package).mkdir(parents=True)
        for pyi in (site / package).glob("*.pyi"):
            (stubs / package / pyi.name).write_text(sanitise(pyi.read_text()))
    (tmp_path / "mypy.ini").write_text(CONFIG)
    probe = tmp_path / "probe_trt.py"
    probe.write_text(PROBE)
    # Reuse mypy's cache across runs when pytest's cache is on (cold: ~8 s, warm: ~1 s).
    cache_plugin = getattr(request.config, "cache", None)
    cache = cache_plugin.mkdir("mypy-tensorrt-stubs") if cache_plugin else tmp_path / "mypy"
    files = [str(ROOT / "regiontrt" / "backends" / m) for m in MODULES] + [str(probe)]
    env = dict(os.environ, MYPYPATH=str(stubs))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(tmp_path / "mypy.ini"),
         "--cache-dir", str(cache), "--no-error-summary", *files],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    ours = [line for line in errors if "probe_trt.py" not in line]
    assert ours == [], proc.stdout
    assert any('"IBuilderConfig" has no attribute "max_num_tacticz"' in e for e in errors), (
        "the probe passed: mypy did not use the TensorRT stubs\n" + proc.stdout)
    assert any('has no attribute "set_optimization_profile_asynk"' in e for e in errors), (
        "the runtime probe passed: a 'TensorRT type | Any' annotation is not checked\n"
        + proc.stdout)
