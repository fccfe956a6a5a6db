"""What every benchmark result records about where and how it ran (issue 20: results you can trust).

:func:`environment` is called at the start of a run and :func:`finish` at its end; both go into
the result JSON untouched. Nothing in ``docs/results/`` is written by hand: a result file is what
a script wrote, with the command that wrote it.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_PACKAGES = ("numpy", "onnx", "onnxruntime", "regiontrt", "nvidia-modelopt", "torch")


def _cpu() -> dict[str, Any]:
    model, flags = platform.processor(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                wanted = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8",
                          "fma", "f16c")
                flags = [f for f in line.split(":", 1)[1].split() if f in wanted]
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": flags}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _commit() -> str:
    # A copy of the tree without its history (the lent GPU machine) is told its commit.
    if os.environ.get("REGIONTRT_COMMIT"):
        return os.environ["REGIONTRT_COMMIT"] + " (given by REGIONTRT_COMMIT)"
    run = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                         check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True, check=False).stdout.strip()
    return run.stdout.strip() + ("+dirty" if dirty else "")


def environment(argv: list[str] | None = None) -> dict[str, Any]:
    """Machine, CPU model and flags, load, versions, commit, command and start time."""
    return {
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "started_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu": _cpu()},
        "load_before": list(os.getloadavg()),
        "versions": _versions(),
        "commit": _commit(),
    }


def finish(env: dict[str, Any]) -> dict[str, Any]:
    """``env`` completed with the load after the run and the end time."""
    return {**env, "load_after": list(os.getloadavg()),
            "finished_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}


def jsonable(obj: Any) -> Any:
    """``json.dumps(default=...)`` for results: numpy scalars and arrays as Python values."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
