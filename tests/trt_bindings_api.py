"""The compiled TensorRT Python modules of the ``tensorrt-cu12/cu13-bindings`` wheels, as data.

Those wheels carry ``tensorrt_bindings/tensorrt.so`` without the TensorRT libraries it links to
(``libnvinfer.so.N``, ``libnvinfer_plugin.so.N``, ``libnvonnxparser.so.N``). Importing the module
only registers its classes, enums and functions with pybind11; it never calls into TensorRT. So
:func:`bindings_api` builds empty stand-ins of those libraries with the C compiler (every entry
point the module imports returns 0; a missing library or symbol named by the loader is added and
the import retried), imports the module in a subprocess, and returns what
``tests/tensorrt_api_dump.py`` reads from it: every class, method and property with its pybind11
signature, and every enum with its values. Results are cached next to the wheel.

(Named so as not to shadow NVIDIA's own ``tensorrt_bindings`` package when ``tests/`` is on the
import path.) Wheels are looked for in ``$REGIONTRT_TRT_BINDINGS`` or
``~/.cache/regiontrt/tensorrt-bindings``, where ``.ci/run`` downloads the releases listed in
``tests/tensorrt_bindings_releases.txt`` (one ``pip download --no-deps`` each).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DUMP = HERE / "tensorrt_api_dump.py"
ENV = "REGIONTRT_TRT_BINDINGS"
_SPECS = [line.split("==") for line in
          (HERE / "tensorrt_bindings_releases.txt").read_text().split() if "==" in line]
#: The releases checked: the oldest and newest TensorRT 10 and 11 bindings on PyPI.
RELEASES = [spec for spec in _SPECS if "-lean-" not in spec[0]]
#: The lean runtime's bindings (``tensorrt_lean``: Runtime and engines, no Builder), checked as
#: ``"lean-<version>"``.
LEAN_RELEASES = [(pkg, f"lean-{version}") for pkg, version in _SPECS if "-lean-" in pkg]
#: What TensorRT 10/11's bindings import from its libraries (found again by retrying if not).
SYMBOLS = ("createInferBuilder_INTERNAL", "createInferRefitter_INTERNAL",
           "createInferRuntime_INTERNAL", "createNvOnnxParserRefitter_INTERNAL",
           "createNvOnnxParser_INTERNAL", "getBuilderPluginRegistry", "getNvOnnxParserVersion",
           "getPluginRegistry", "initLibNvInferPlugins")


def wheel_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(os.environ.get(ENV) or default / "regiontrt" / "tensorrt-bindings")


def find_wheels() -> dict[str, Path]:
    """Release (``"10.0.1"``, ``"lean-11.4.0.106"``) -> its bindings wheel for this Python, as
    found in the folder."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    folder = wheel_dir()
    found = {}
    for wheel in sorted(folder.glob("tensorrt_*cu1*_bindings-*.whl")) if folder.is_dir() else []:
        m = re.match(r"tensorrt_(lean_)?cu1\d_bindings-([\d.]+?)(?:\.post\d+)?-(cp\d+)-",
                     wheel.name)
        if m and m.group(3) == tag:
            found[("lean-" if m.group(1) else "") + m.group(2)] = wheel
    return found


def missing_reason(release: str) -> str | None:
    """Why the bindings of TensorRT ``release`` cannot be checked here, or ``None``."""
    if not sys.platform.startswith("linux"):
        return "needs Linux (the bindings wheels are manylinux)"
    if release not in find_wheels():
        tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
        pkg = next((p for p, v in RELEASES + LEAN_RELEASES if v == release),
                   "tensorrt-cu12-bindings")
        version = release.removeprefix("lean-")
        return (f"needs the {pkg}=={version} wheel for {tag} in {wheel_dir()} (or ${ENV}); "
                f"fetch it with python3 -m pip download --no-deps {pkg}=={version} -d DIR "
                "(.ci/run does, where PyPI is reachable)")
    if compiler() is None:
        return "needs a C compiler (cc or gcc) to build stand-in TensorRT libraries"
    return None


def compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _stub_libs(folder: Path, libs: set[str], symbols: set[str]) -> None:
    source = folder / "stub.c"
    source.write_text("".join(f"void* {s}(void) {{ return 0; }}\n" for s in sorted(symbols)))
    cc = compiler()
    assert cc is not None
    for lib in sorted(libs):
        subprocess.run([cc, "-shared", "-fPIC", f"-Wl,-soname,{lib}", "-o", str(folder / lib),
                        str(source)], check=True, capture_output=True, timeout=120)


def _run_dump(target: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DUMP), target], capture_output=True, text=True,
                          env=env, timeout=120)


def bindings_api(release: str) -> dict[str, Any]:
    """The API of the bindings wheel of TensorRT ``release`` (see the module docstring)."""
    wheel = find_wheels()[release]
    major = int(release.removeprefix("lean-").split(".")[0])
    cache = wheel.with_name(wheel.name + ".api.json")
    if cache.is_file() and cache.stat().st_mtime >= DUMP.stat().st_mtime:
        return json.loads(cache.read_text())  # type: ignore[no-any-return]
    with tempfile.TemporaryDirectory(prefix="trt-bindings-") as tmp:
        work = Path(tmp)
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if re.search(r"/tensorrt[^/]*\.so$", n))
            # the file keeps its name: pybind11 registers PyInit_<name> (tensorrt, tensorrt_lean)
            module = work / member.rsplit("/", 1)[-1]
            module.write_bytes(zf.read(member))
            init = next((n for n in zf.namelist() if n.endswith("/__init__.py")), None)
            init_text = zf.read(init).decode() if init else ""
        names = (("libnvinfer_lean",) if module.stem == "tensorrt_lean" else
                 ("libnvinfer", "libnvinfer_plugin", "libnvonnxparser"))
        libs = {f"{name}.so.{major}" for name in names}
        symbols = set(SYMBOLS)
        env = dict(os.environ, LD_LIBRARY_PATH=str(work))
        for _ in range(20):
            _stub_libs(work, libs, symbols)
            proc = _run_dump(str(module), env)
            if proc.returncode == 0:
                break
            lib = re.search(r"(lib[\w.+-]+\.so[\d.]*): cannot open shared object", proc.stderr)
            sym = re.search(r"undefined symbol: (\w+)", proc.stderr)
            if lib and lib.group(1) not in libs:
                libs.add(lib.group(1))
            elif sym and sym.group(1) not in symbols:
                symbols.add(sym.group(1))
            else:
                raise RuntimeError(f"cannot import {wheel.name}'s module:\n{proc.stderr[-2000:]}")
        else:
            raise RuntimeError(f"gave up importing {wheel.name}: {proc.stderr[-2000:]}")
    api = json.loads(proc.stdout)
    version = re.search(r'__version__ = "([^"]+)"', init_text)
    api["version"] = version.group(1) if version else wheel.name.split("-")[1]
    with contextlib.suppress(OSError):  # a read-only wheel folder: dump again next time
        cache.write_text(json.dumps(api))
    return api  # type: ignore[no-any-return]


def installed_api(module: str) -> dict[str, Any]:
    """The API of an installed module (``tensorrt_rtx``), read the same way."""
    proc = _run_dump(module, dict(os.environ))
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout)  # type: ignore[no-any-return]
