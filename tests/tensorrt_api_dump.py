"""Dump the Python API of a compiled TensorRT module as JSON (run in a subprocess).

Usage: ``python tensorrt_api_dump.py PATH_TO/tensorrt.so`` (a ``tensorrt-cu1x-bindings`` wheel's
module, loaded with stand-in TensorRT libraries on ``LD_LIBRARY_PATH``: importing it only
registers classes, it never calls into TensorRT) or ``python tensorrt_api_dump.py tensorrt_rtx``
(an installed module). Prints ``{"classes": {name: {attr: {"kind", "sigs"}}}, "enums":
{name: {member: value}}, "functions": {name: sigs}}``; a signature is a list of
``{"params": [[parameter, has_default], ...], "returns": type}`` without ``self``, one per
pybind11 overload.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import json
import re
import sys
from typing import Any


def _load(target: str) -> Any:
    if not target.endswith(".so"):
        return importlib.import_module(target)
    name = target.rsplit("/", 1)[-1].split(".", 1)[0]  # tensorrt or tensorrt_lean: its PyInit_
    loader = importlib.machinery.ExtensionFileLoader(name, target)
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _split(params: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in params:
        depth += ch in "([{<"
        depth -= ch in ")]}>"
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


def signatures(name: str, doc: str | None) -> list[dict[str, Any]]:
    """Each pybind11 overload of ``name`` in ``doc``: parameters (with whether they have a
    default) and the return type."""
    out = []
    for line in (doc or "").splitlines():
        m = re.match(rf"^\s*(?:\d+\.\s+)?{re.escape(name)}\((.*)\)\s*(?:->\s*(.*))?$", line)
        if not m or m.group(1).startswith("*args"):
            continue
        params = []
        for part in _split(m.group(1)):
            pname = part.split(":", 1)[0].split("=", 1)[0].strip()
            if pname in ("self", ""):
                continue
            params.append((pname, "=" in part))
        out.append({"params": params, "returns": (m.group(2) or "").strip()})
    return out


def _kind(value: Any) -> str:
    if isinstance(value, property):
        return "property"
    if isinstance(value, staticmethod):
        return "static"
    if isinstance(value, type):
        return "class"
    if callable(value):
        return "method"
    return "other"


def _enum(value: Any) -> dict[str, int] | None:
    members = getattr(value, "__members__", None)
    if isinstance(value, type) and isinstance(members, dict):
        return {k: int(v) for k, v in members.items()}
    return None


def dump(module: Any) -> dict[str, Any]:
    classes: dict[str, Any] = {}
    docs: dict[str, str] = {}  # class docstrings: IOutputAllocator documents its methods there
    enums: dict[str, Any] = {}
    functions: dict[str, Any] = {}
    for name, value in vars(module).items():
        if name.startswith("_"):
            continue
        if isinstance(value, type):
            members = _enum(value)
            if members is not None:
                enums[name] = members
            attrs: dict[str, Any] = {}
            for cls in reversed(value.__mro__):
                if cls.__module__ in ("builtins", "pybind11_builtins"):
                    continue
                for attr, raw in vars(cls).items():
                    if attr.startswith("__") and attr != "__init__":
                        continue
                    nested = _enum(raw)
                    if nested is not None:
                        enums[f"{name}.{attr}"] = nested
                    doc = getattr(raw, "__doc__", None)
                    if isinstance(raw, staticmethod):
                        doc = raw.__func__.__doc__
                    attrs[attr] = {"kind": _kind(raw), "sigs": signatures(attr, doc)}
            classes[name] = attrs
            docs[name] = value.__doc__ or ""
        elif callable(value):
            functions[name] = signatures(name, getattr(value, "__doc__", None))
    version = getattr(module, "__version__", None)
    return {"version": version, "classes": classes, "docs": docs, "enums": enums,
            "functions": functions}


def main() -> None:
    module = _load(sys.argv[1])
    inspect.getmembers(module)  # touch everything once: lazy pybind11 types register here
    json.dump(dump(module), sys.stdout, sort_keys=True)


if __name__ == "__main__":
    main()
