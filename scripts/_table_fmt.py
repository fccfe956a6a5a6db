"""Number formatting and table rows shared by the benchmark-page generators."""

from __future__ import annotations

from typing import Any

#: Every number written by a renderer, as written (filled by :func:`fmt`).
EMITTED: set[str] = set()


def fmt(value: float | int | None, spec: str) -> str:
    """``value`` in format ``spec`` (``%`` suffix: times 100); recorded in :data:`EMITTED`."""
    if value is None:
        return "-"
    text = format(value * 100, spec[:-1]) if spec.endswith("%") else format(value, spec)
    EMITTED.add(text)
    return text


def lookup(data: Any, key: str) -> Any:
    """The item of ``data`` at the dotted ``key`` (list items by index)."""
    for part in key.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def _rows(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head),
            *("| " + " | ".join(r) + " |" for r in rows)]
