"""Inputs pinned to one value: found in a region's data, and taken out of it.

A model that branches on a small input (``If(sr == 16000)`` on a sample rate) keeps every layer
of its branches out of int8's reach until that input is pinned and the ``If`` folded
(:func:`~regiontrt.graph.pin.fold_pinned_inputs`). The builder pins an input when told to, or
when every calibration and validation batch holds the same value of it
(:func:`constant_inputs`); the data then still holds the input, which the folded model no
longer has, so :func:`without_pinned` takes it out, refusing a batch with another value.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from regiontrt.data.sources import DataSource
from regiontrt.errors import DataError
from regiontrt.graph.io import TensorSpec

__all__ = ["MAX_PINNED_ELEMENTS", "constant_inputs", "one_shot", "without_pinned"]

#: An input with more elements than this is data, never a setting to pin (a sample rate, a
#: mode flag, a language id are scalars or a handful of values).
MAX_PINNED_ELEMENTS = 64


def one_shot(data: Any) -> bool:
    """Whether ``data`` can be read only once (a generator), so it cannot be scanned first."""
    src = data.source if isinstance(data, DataSource) else data
    return isinstance(src, Iterator)


def _small(spec: TensorSpec) -> bool:
    size = 1
    for dim in spec.shape:
        if not isinstance(dim, int):
            return False
        size *= dim
    return size <= MAX_PINNED_ELEMENTS


def constant_inputs(sources: Sequence[Any], inputs: Sequence[TensorSpec],
                    names: Iterable[str]) -> dict[str, np.ndarray]:
    """Inputs among ``names`` that hold one value in every batch of every source.

    Args:
        sources: the region's data sets (calibration, validation); ``None`` entries are skipped.
            None may be a one-shot iterator (see :func:`one_shot`): reading it here would
            leave nothing for the build.
        inputs: the model's inputs (each batch is checked against them as the build does).
        names: the inputs to look at; only those of a static shape of at most
            :data:`MAX_PINNED_ELEMENTS` elements are.

    Returns:
        ``{name: value}`` (converted to the input's dtype); empty when there is no data.

    Raises:
        DataError: a batch does not fit the model's inputs.
    """
    specs = {s.name: s for s in inputs}
    wanted = {n for n in names if n in specs and _small(specs[n])}
    given = [s for s in sources if s is not None]
    if not wanted or not given:
        return {}
    seen: dict[str, np.ndarray] = {}
    for data in given:
        for batch in DataSource(data, inputs):
            for name in list(wanted):
                value = batch[name]
                first = seen.setdefault(name, value)
                if value.shape != first.shape or not np.array_equal(value, first):
                    wanted.discard(name)
                    seen.pop(name)
            if not wanted:
                return {}
    return {n: seen[n] for n in sorted(wanted) if n in seen}


def _stripped(raw: Any, pinned: Mapping[str, np.ndarray], what: str) -> Any:
    """One raw batch without the pinned inputs; a different value is refused."""
    if not isinstance(raw, Mapping):
        return raw  # a bare array feeds the single input left
    out = {}
    for name, value in raw.items():
        if name not in pinned:
            out[name] = value
            continue
        want = pinned[name]
        got = np.asarray(value)
        if got.shape != want.shape or not np.array_equal(got, want):
            raise DataError(
                f"{what}: input {name!r} is pinned to {want.tolist()!r} (the engine is built "
                f"for that value only) but a batch holds {_show(got)}: leave it out of the "
                "data, pin another value, or build without pinning it")
        # equal values: dropped, the folded model has no such input
    return out


def _show(arr: np.ndarray) -> str:
    return repr(arr.tolist()) if arr.size <= 8 else f"an array of shape {list(arr.shape)}"


def without_pinned(data: Any, pinned: Mapping[str, np.ndarray], what: str) -> Any:
    """``data`` with the pinned inputs taken out of every batch that holds them.

    A list or tuple of batches, or one mapping, is stripped now (it stays a list, so it can
    still be cut into shards for distributed calibration); any other source is wrapped in a
    callable that strips each batch as it is read (re-readable where the source is).

    Args:
        data: anything :class:`~regiontrt.data.sources.DataSource` reads, or ``None``.
        pinned: input name -> its pinned value.
        what: which data this is, for messages (``"calibration data"``).

    Raises:
        DataError: (lists: now; other sources: when read) a batch holds another value of a
            pinned input.
    """
    if data is None or not pinned:
        return data
    if isinstance(data, Mapping):
        return _stripped(data, pinned, what)
    if isinstance(data, (list, tuple)) and all(isinstance(b, Mapping) for b in data):
        return [_stripped(b, pinned, what) for b in data]
    source = DataSource(data, [])  # one reader for every pass: a one-shot source stays one-shot

    def batches() -> Iterator[Any]:
        for raw in source.raw():
            yield _stripped(raw, pinned, what)

    return batches
