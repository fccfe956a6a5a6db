"""Shards of a data set: pieces that a worker process reads on its own, in a known order.

Distributed calibration (:mod:`regiontrt.calibration.distributed`) sends each worker shards,
never batches it read first, so the driver's memory does not grow with the data set. A shard is:

* a location: a local ``.npz``/``.npy`` file or a folder of them, or an fsspec URL of either
  (``s3://bucket/calib/``, ``gs://...``, ``https://.../part-0.npz``, ``memory://...``; fsspec
  is the ``fleet`` extra, plus the filesystem's own package such as ``s3fs``);
* one partition of a Dask bag whose items are batches (``{input: array}`` or arrays);
* one block of a Dask array along axis 0 (the block is one batch);
* a run of batches held in memory (a list of batches is cut into contiguous runs).

:func:`shards_of` cuts a source into shards; reading every shard in order yields exactly the
batches :class:`~regiontrt.data.sources.DataSource` yields for the same source, so statistics
merged over shards equal a single pass. Files from outside are hostile: arrays are loaded with
``allow_pickle=False``.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from regiontrt.errors import DataError

#: A URL with a scheme (``s3://``, ``file://``, ``memory://``...): read through fsspec.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SUFFIXES = (".npz", ".npy")


def is_url(location: Any) -> bool:
    """Whether ``location`` is a string with a URL scheme."""
    return isinstance(location, str) and bool(_URL.match(location))


def is_location_list(source: Any) -> bool:
    """Whether ``source`` is a non-empty list or tuple of paths or URLs (a list of shards)."""
    return (isinstance(source, (list, tuple)) and len(source) > 0
            and all(isinstance(x, (str, os.PathLike)) for x in source))


def is_dask_collection(source: Any) -> bool:
    """A Dask bag or array, by duck typing (Dask is an optional extra)."""
    return hasattr(source, "__dask_graph__") and hasattr(source, "to_delayed")


def _is_dask_array(source: Any) -> bool:
    return is_dask_collection(source) and hasattr(source, "chunks") and hasattr(source, "ndim")


def _load(name: str, payload: Any) -> Mapping[str, np.ndarray] | np.ndarray:
    """One ``.npz`` (``{input: array}``) or ``.npy`` (an array) from a file or file object."""
    try:
        loaded = np.load(payload, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded
        with loaded as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{name}: not a readable .npz/.npy file: {exc} "
                        "(see docs/data.md)") from exc


def read_path(path: Path) -> Iterator[Mapping[str, np.ndarray] | np.ndarray]:
    """The batches of a local file or folder (its ``.npz``/``.npy`` files in sorted order)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in _SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"no .npz or .npy files in {path} (see docs/data.md)")
    elif path.is_file():
        files = [path]
    else:
        # A list of strings is a list of files: say so, in case batches were meant.
        raise DataError(f"data path not found: {path} (a string is the path or URL of .npz/.npy "
                        "data; a batch must be a mapping or an array, see docs/data.md)")
    for file in files:
        yield _load(str(file), file)


def _filesystem(url: str) -> tuple[Any, str]:
    try:
        from fsspec.core import url_to_fs
    except ImportError as exc:
        raise DataError(f"reading {url} needs fsspec: pip install 'regiontrt[fleet]'") from exc
    try:
        return url_to_fs(url)  # type: ignore[no-any-return]
    except (ImportError, ValueError) as exc:  # unknown scheme, or its package is missing
        raise DataError(f"cannot open {url}: {exc}") from exc


def url_files(url: str) -> list[str]:
    """The ``.npz``/``.npy`` files a URL names: itself, or a folder's files in sorted order."""
    fs, path = _filesystem(url)
    try:
        if fs.isdir(path):
            names = sorted(p for p in fs.ls(path, detail=False)
                           if str(p).endswith(_SUFFIXES) and fs.isfile(p))
            if not names:
                raise DataError(f"no .npz or .npy files in {url} (see docs/data.md)")
            return [fs.unstrip_protocol(p) for p in names]
        if fs.isfile(path):
            return [url]
    except OSError as exc:
        raise DataError(f"cannot list {url}: {exc}") from exc
    raise DataError(f"data URL not found: {url}")


def read_url(url: str) -> Iterator[Mapping[str, np.ndarray] | np.ndarray]:
    """The batches of a URL: a file, or a folder's files in sorted order (one at a time)."""
    for file in url_files(url):
        fs, path = _filesystem(file)
        try:
            content = fs.cat_file(path)
        except OSError as exc:
            raise DataError(f"cannot read {file}: {exc}") from exc
        yield _load(file, io.BytesIO(content))


def read_location(location: str | os.PathLike[str]) -> Iterator[Any]:
    """The batches of a path or URL."""
    if is_url(location):
        return read_url(str(location))
    return read_path(Path(location))


@dataclass(frozen=True)
class Shard:
    """One piece of a data set that a worker reads on its own.

    Attributes:
        kind: ``"location"`` (a path or URL), ``"partition"`` (a Dask bag partition),
            ``"block"`` (a Dask array block) or ``"batches"`` (batches in memory).
        payload: the location, the ``Delayed`` object or the list of batches.
    """

    kind: str
    payload: Any

    def raw(self) -> Iterable[Any]:
        """The shard's raw batches, in order (a Dask piece is computed here, synchronously)."""
        if self.kind == "location":
            return read_location(self.payload)
        if self.kind == "partition":
            return list(self.payload.compute(scheduler="sync"))
        if self.kind == "block":
            return [np.asarray(self.payload.compute(scheduler="sync"))]
        return list(self.payload)

    def describe(self) -> str:
        """A short name for messages."""
        if self.kind == "location":
            return str(self.payload)
        if self.kind == "batches":
            return f"{len(self.payload)} batches in memory"
        return f"a Dask {'bag partition' if self.kind == 'partition' else 'array block'}"


def _location_shards(location: str | os.PathLike[str]) -> list[Shard]:
    """A folder's files as one shard each; a file as one shard."""
    if is_url(location):
        return [Shard("location", f) for f in url_files(str(location))]
    path = Path(location)
    if path.is_dir():
        return [Shard("location", str(f)) for f in sorted(
            p for p in path.iterdir() if p.suffix in _SUFFIXES and p.is_file())]
    return [Shard("location", str(path))]


def shards_of(source: Any, parts: int = 16) -> list[Shard] | None:
    """``source`` cut into shards in order, or ``None`` where it cannot be (a generator, say).

    Args:
        source: paths/URLs (a folder gives one shard per file), a Dask bag or array, or a list
            of batches (cut into at most ``parts`` contiguous runs).
        parts: how many runs a list of in-memory batches is cut into.
    """
    if isinstance(source, (str, os.PathLike)):
        return _location_shards(source)
    if is_location_list(source):
        return [s for loc in source for s in _location_shards(loc)]
    if _is_dask_array(source):
        whole = source.rechunk({axis: -1 for axis in range(1, source.ndim)})
        return [Shard("block", d) for d in whole.to_delayed().reshape(-1)]
    if is_dask_collection(source):
        return [Shard("partition", d) for d in source.to_delayed()]
    if isinstance(source, (list, tuple)) and source:
        size = -(-len(source) // max(1, parts))
        return [Shard("batches", list(source[i : i + size])) for i in range(0, len(source), size)]
    return None


def iter_shards(shards: Sequence[Shard]) -> Iterator[Any]:
    """Every raw batch of ``shards``, in order, one shard read at a time."""
    for shard in shards:
        yield from shard.raw()
