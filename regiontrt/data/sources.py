"""Region data: validation and calibration batches from arrays, NPZ files, folders or loaders.

:class:`DataSource` accepts whatever a pipeline has at hand and yields ``{input_name: array}``
batches, one at a time, so a calibration pass never holds the whole set. It fingerprints what it
yields (names, dtypes, shapes and bytes, in order) for the engine's provenance.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from regiontrt.data.shards import (
    is_dask_collection,
    is_location_list,
    is_url,
    iter_shards,
    read_location,
    shards_of,
)
from regiontrt.errors import DataError
from regiontrt.graph.io import TensorSpec

Batch = dict[str, np.ndarray]
DataLike = Union[
    "DataSource",
    str,
    Path,
    np.ndarray,
    Mapping[str, Any],
    Iterable[Any],
    Callable[[], Iterable[Any]],
]


class DataSource:
    """Batches of model inputs, re-iterable where the source allows.

    Accepted sources:
      * a ``{input: array}`` mapping: one batch;
      * a numpy array: one batch of the model's single input;
      * a path to an ``.npz`` file (its keys are input names), to an ``.npy`` file (the
        single input of a single-input model), or to a folder of such files, each one batch,
        read in sorted order (see docs/data.md); an fsspec URL of either (``s3://...``);
      * a list of such paths or URLs (shards, read in the order given);
      * a Dask bag whose items are batches, or a Dask array (each block along axis 0 is a
        batch), read one partition or block at a time;
      * an iterable of mappings or arrays (lists, generators, Polygraphy data loaders);
      * a callable returning such an iterable (called once per pass, so generators re-run).

    A one-shot iterator (a generator object) can be read only once; a second pass raises
    :class:`DataError`. Pass a callable or a list for several passes.

    Args:
        source: the data.
        inputs: the model's inputs, to name bare arrays and check names, ranks and dtypes.
        max_batches: stop after this many batches.
        split: ``(max_size, size)``: a batch of more than ``max_size`` samples (axis 0) is cut
            into batches of ``size`` (see :func:`profile_split`), so one file holding a whole
            data set fits the engine's shape profile.
    """

    def __init__(
        self,
        source: DataLike,
        inputs: Sequence[TensorSpec],
        *,
        max_batches: int | None = None,
        split: tuple[int, int] | None = None,
    ) -> None:
        if isinstance(source, DataSource) and split is None:
            split = source.split
        self._source: Any = source._source if isinstance(source, DataSource) else source
        self._inputs = list(inputs)
        self._max = max_batches
        self._split: tuple[int, int] | None = split
        self._consumed = False
        self._fingerprint: str | None = None
        self.num_batches = 0
        self.num_samples = 0

    @property
    def source(self) -> Any:
        """The raw source given (what :func:`~regiontrt.data.shards.shards_of` cuts)."""
        return self._source

    @property
    def inputs(self) -> list[TensorSpec]:
        """The model inputs batches are checked against."""
        return list(self._inputs)

    def size_hint(self) -> int | None:
        """How many batches a pass yields, where that is known without reading them."""
        src = self._source
        if (self._split is not None or is_url(src) or is_location_list(src)
                or not isinstance(src, (list, tuple, str, Path, np.ndarray, Mapping))):
            return None
        if isinstance(src, (np.ndarray, Mapping)):
            n = 1
        elif isinstance(src, (str, Path)):
            path = Path(src)
            n = sum(1 for p in path.iterdir() if p.suffix in (".npz", ".npy")) if path.is_dir() \
                else 1
        else:
            n = len(src)
        return n if self._max is None else min(n, self._max)

    @property
    def split(self) -> tuple[int, int] | None:
        """``(max_size, size)`` batch splitting, or ``None``."""
        return self._split

    @property
    def fingerprint(self) -> str:
        """SHA-256 of everything the last complete pass yielded."""
        if self._fingerprint is None:
            for _ in self:
                pass
        assert self._fingerprint is not None
        return self._fingerprint

    def raw(self) -> Iterable[Any]:
        """The source's items as read, before :meth:`to_batch` checks them (one pass)."""
        return self._raw()

    def _raw(self) -> Iterable[Any]:
        src = self._source
        if isinstance(src, (str, Path)):
            return read_location(src)
        if is_location_list(src) or is_dask_collection(src):
            return iter_shards(shards_of(src) or [])
        if isinstance(src, (np.ndarray, Mapping)):
            return [src]
        if callable(src) and not hasattr(src, "__iter__"):
            return src()  # type: ignore[no-any-return]
        if isinstance(src, Iterator):
            if self._consumed:
                raise DataError(
                    "this data source is a one-shot iterator and was already read; pass a list "
                    "or a callable that returns a fresh iterator"
                )
            self._consumed = True
            return src
        if isinstance(src, Iterable):
            return src
        try:  # the sequence protocol (__getitem__ until IndexError), as Polygraphy's DataLoader
            return iter(src)  # type: ignore[no-any-return]
        except TypeError:
            raise DataError(f"unsupported data source of type {type(src).__name__}") from None

    def __iter__(self) -> Iterator[Batch]:
        digest = hashlib.sha256()
        batches = samples = 0
        for batch in self._split_batches(self._raw()):
            if self._max is not None and batches >= self._max:
                break
            for name in sorted(batch):
                arr = batch[name]
                digest.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
                digest.update(_content_bytes(arr))
            batches += 1
            first = next(iter(batch.values()), None)  # a model without inputs has empty batches
            samples += int(first.shape[0]) if first is not None and first.ndim else 1
            yield batch
        if batches == 0:
            raise DataError("the data source is empty: it yielded no batch")
        self.num_batches, self.num_samples = batches, samples
        self._fingerprint = digest.hexdigest()

    def _split_batches(self, raws: Iterable[Any]) -> Iterator[Batch]:
        for raw in raws:
            batch = self.to_batch(raw)
            if self._split is None:
                yield batch
                continue
            limit, size = self._split
            sizes = {int(a.shape[0]) if a.ndim else 1 for a in batch.values()}
            n = sizes.pop() if len(sizes) == 1 else 0  # disagreeing axis 0: not a batch axis
            if n <= limit:
                yield batch
                continue
            for i in range(0, n, size):
                yield {k: v[i : i + size] for k, v in batch.items()}

    def to_batch(self, raw: Any) -> Batch:
        """Normalise one raw item into a checked ``{input: array}`` batch."""
        specs = {s.name: s for s in self._inputs}
        if isinstance(raw, np.ndarray) or (
            not isinstance(raw, Mapping) and hasattr(raw, "__array__")
        ):
            if len(self._inputs) != 1:
                names = ", ".join(specs)
                raise DataError(f"a bare array needs a single-input model; inputs are: {names}")
            raw = {self._inputs[0].name: raw}
        if not isinstance(raw, Mapping):
            raise DataError(f"a batch must be a mapping or an array, got {type(raw).__name__}")
        missing = set(specs) - set(raw)
        unknown = set(raw) - set(specs)
        if missing or unknown:
            raise DataError(
                f"batch names {sorted(raw)} do not match the model inputs {sorted(specs)}"
                + (f"; missing {sorted(missing)}" if missing else "")
                + (f"; unknown {sorted(unknown)}" if unknown else "")
            )
        batch: Batch = {}
        arrays = {name: np.asarray(value) for name, value in raw.items()}
        if arrays and all(a.size == 0 for a in arrays.values()):
            shapes = {name: a.shape for name, a in arrays.items()}
            raise DataError(f"every input of the batch is an empty array: {shapes}")
        for name, arr in arrays.items():
            spec = specs[name]
            if arr.ndim != spec.rank:
                raise DataError(
                    f"input {name!r}: rank {arr.ndim} (shape {arr.shape}) but the model "
                    f"declares rank {spec.rank} (shape {list(spec.shape)})"
                )
            for axis, (got, want) in enumerate(zip(arr.shape, spec.shape)):
                if isinstance(want, int) and got != want:
                    raise DataError(
                        f"input {name!r}: axis {axis} is {got}, the model declares {want} "
                        f"(shape {list(spec.shape)})"
                    )
            # np.require keeps a 0-d array 0-d (np.ascontiguousarray makes it 1-d).
            batch[name] = np.require(_to_input_dtype(name, arr, spec), requirements="C")
        return batch

    def materialize(self) -> list[Batch]:
        """All batches in a list (for validation sets, which are read many times)."""
        return list(self)


def _to_input_dtype(name: str, arr: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """``arr`` in the input's dtype, converted only where no value can change meaning.

    Float inputs take any real numbers (uint8 images into a float model); integer inputs take
    integers that fit; booleans take booleans; string inputs take text (as Python ``str``
    objects, which ONNX Runtime expects). Nothing is ever turned into or out of text or bool,
    and no float becomes an integer.
    """
    want, kind = spec.dtype, arr.dtype.kind
    if arr.dtype == want:
        return arr
    if want.kind == "O" and kind in "USO":
        text = np.vectorize(_as_text, otypes=[object])(arr) if arr.size else arr.astype(object)
        return np.asarray(text, dtype=object).reshape(arr.shape)
    if want.kind == "f" and kind in "fiu":
        return arr.astype(want)
    if want.kind in "iu" and kind in "iu" and (
        arr.size == 0 or (np.iinfo(want).min <= arr.min() and arr.max() <= np.iinfo(want).max)
    ):
        return arr.astype(want)
    raise DataError(f"input {name!r}: dtype {arr.dtype} cannot feed {want}")


def _as_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _content_bytes(arr: np.ndarray) -> bytes:
    """The values of ``arr`` as bytes (object arrays by their text, not their pointers)."""
    if arr.dtype.kind == "O":
        return "\x00".join(_as_text(v) for v in arr.ravel()).encode("utf-8")
    return np.require(arr, requirements="C").tobytes()


def profile_split(profiles: Sequence[Any], inputs: Sequence[TensorSpec]) -> tuple[int, int] | None:
    """``(max, opt)`` batch sizes of the first shape profile, for :class:`DataSource`'s ``split``.

    ``None`` when the profile leaves axis 0 unconstrained (runtimes without profiles take any
    batch) or the model has no input.
    """
    if not profiles or not inputs:
        return None
    rng = profiles[0].ranges.get(inputs[0].name)
    if rng is None or not rng.opt:
        return None
    return int(rng.max[0]), max(1, int(rng.opt[0]))


def split_batches(arrays: Mapping[str, np.ndarray], batch_size: int) -> list[Batch]:
    """Cut ``{input: array}`` along axis 0 into batches of ``batch_size``."""
    if batch_size < 1:
        raise DataError("batch_size must be >= 1")
    n = len(next(iter(arrays.values())))
    return [{k: v[i : i + batch_size] for k, v in arrays.items()} for i in range(0, n, batch_size)]
