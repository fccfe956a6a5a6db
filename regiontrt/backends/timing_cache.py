"""Timing caches and runtime caches on disk, safe when several builds use them at once.

TensorRT times candidate kernels (tactics) while building; a *timing cache* keeps those timings so
the next build of a similar network skips them. A cache is only valid for one TensorRT version and
one GPU model (two GPUs of one compute capability, such as an H100 and an H200 or MIG slices, do
not share caches), so the file name carries the version, the compute capability and the device
name (:func:`timing_cache_path`). Around a build the cache is
loaded, the build adds to it, and on save the entries another build wrote meanwhile are merged in
(``ITimingCache.combine``) under an exclusive lock before the file is atomically replaced, so two
concurrent builds never lose each other's work and a reader never sees half a file.

TensorRT-RTX compiles kernels when the engine first runs instead, and keeps them in a *runtime
cache* (``IRuntimeCache``) that cannot be merged: :class:`RuntimeCacheFile` only guarantees that
writes are whole and serialized (the last writer wins).

The file logic is written against the small :class:`CacheCodec` protocol, so it is tested in pure
Python; :class:`TensorRTTimingCacheCodec` binds it to TensorRT.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from regiontrt._fs import atomic_write_bytes

if TYPE_CHECKING:
    import tensorrt

log = logging.getLogger(__name__)

C = TypeVar("C")


class CacheCodec(Protocol[C]):
    """How to create, merge and serialize one kind of cache object."""

    def load(self, data: bytes) -> C:
        """A cache from serialized bytes (``b""``: an empty cache). May raise on corrupt data."""
        ...

    def combine(self, into: C, other: C) -> bool:
        """Merge ``other``'s entries into ``into``; ``False`` if they are incompatible."""
        ...

    def serialize(self, cache: C) -> bytes:
        """The cache's bytes."""
        ...


@contextlib.contextmanager
def file_lock(path: str | Path, timeout: float = 600.0) -> Iterator[None]:
    """Hold an exclusive inter-process lock on ``<path>.lock`` for the ``with`` block.

    The lock file is left in place: removing it would let two processes lock different files.

    Raises:
        TimeoutError: the lock was not acquired within ``timeout`` seconds.
    """
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock(fd, lock_path, timeout)
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


def _lock(fd: int, lock_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
                import msvcrt

                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                # flock locks belong to the open file description, so threads of one process
                # exclude each other too (fcntl/lockf locks would not).
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not lock {lock_path} within {timeout:.0f} s") from None
            time.sleep(0.01)


def _unlock(fd: int) -> None:
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


def timing_cache_path(base: str | Path, trt_version: str, target: str,
                      device: str | None = None) -> Path:
    """The cache file for one TensorRT version, GPU target and GPU model.

    ``base`` is a directory (existing, or given with a trailing separator, or without a suffix),
    giving ``<base>/tensorrt-<version>-<target>[-<device>].cache``; or a file name, giving
    ``<stem>.tensorrt-<version>-<target>[-<device>]<suffix>`` beside it. ``device`` is the GPU's
    name as a slug (:func:`~regiontrt.backends.trt_env.device_name`).

    Example:
        >>> str(timing_cache_path("caches/", "10.8.0.43", "sm90", "nvidia-h200"))
        'caches/tensorrt-10.8.0.43-sm90-nvidia-h200.cache'
    """
    key = f"tensorrt-{trt_version}-{target}" + (f"-{device}" if device else "")
    text = str(base)
    path = Path(base)
    if text.endswith(("/", os.sep)) or path.is_dir() or not path.suffix:
        return path / f"{key}.cache"
    return path.with_name(f"{path.stem}.{key}{path.suffix}")


@dataclass(frozen=True)
class SaveResult:
    """What :meth:`TimingCacheFile.save` did.

    Attributes:
        path: the file written.
        merged: whether entries already on disk were merged in.
        discarded_disk: whether the file on disk was unreadable or incompatible and replaced.
        size: bytes written.
    """

    path: Path
    merged: bool
    discarded_disk: bool
    size: int


class TimingCacheFile(Generic[C]):
    """A timing cache file: load before a build, merge and save after it.

    Args:
        path: the cache file (see :func:`timing_cache_path` for per-version/GPU names).
        codec: creates, merges and serializes cache objects.
        lock_timeout: seconds to wait for another process's save.
    """

    def __init__(self, path: str | Path, codec: CacheCodec[C], lock_timeout: float = 600.0) -> None:
        self.path = Path(path)
        self.codec = codec
        self.lock_timeout = lock_timeout

    def _read(self) -> tuple[C | None, bool]:
        """``(cache or None, whether a non-empty file was unreadable)``."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None, False
        if not data:
            return None, False
        try:
            cache = self.codec.load(data)
        except Exception as exc:  # a corrupt cache must never fail a build
            log.warning("ignoring unreadable timing cache %s: %s", self.path, exc)
            return None, True
        return cache, False

    def load(self) -> C:
        """The cache on disk, or an empty one if there is none or it is unreadable.

        No lock is needed: saves replace the file atomically, so a reader sees a whole file.
        """
        cache, _ = self._read()
        return self.codec.load(b"") if cache is None else cache

    def save(self, cache: C, *, merge: bool = True) -> SaveResult:
        """Merge what is on disk now into ``cache`` and write it, under the file lock.

        Entries added by a concurrent build since :meth:`load` are kept. A disk cache that is
        unreadable or incompatible (``combine`` refuses it), or any disk cache when ``merge`` is
        false (TensorRT refused it before the build), is replaced by ``cache``.
        """
        with file_lock(self.path, self.lock_timeout):
            disk, discarded = self._read()
            merged = False
            if disk is not None and not merge:
                discarded = True
            elif disk is not None:
                merged = bool(self.codec.combine(cache, disk))
                if not merged:
                    log.warning("timing cache %s is incompatible; replacing it", self.path)
                    discarded = True
            data = self.codec.serialize(cache)
            atomic_write_bytes(self.path, data)
        return SaveResult(self.path, merged, discarded, len(data))


class TensorRTTimingCacheCodec:
    """:class:`CacheCodec` over TensorRT's ``ITimingCache``, created by a builder config."""

    def __init__(self, config: tensorrt.IBuilderConfig) -> None:
        self.config = config

    def load(self, data: bytes) -> tensorrt.ITimingCache:
        cache = self.config.create_timing_cache(data)
        if cache is None:
            raise ValueError("TensorRT could not read the timing cache")
        return cache

    def combine(self, into: tensorrt.ITimingCache, other: tensorrt.ITimingCache) -> bool:
        # ignore_mismatch=False: entries timed on another GPU or version must not be mixed in.
        return bool(into.combine(other, False))

    def serialize(self, cache: tensorrt.ITimingCache) -> bytes:
        return bytes(cache.serialize())


class RuntimeCacheFile:
    """A TensorRT-RTX runtime-cache file: whole-file reads and locked atomic writes.

    The runtime validates the blob itself (library version, GPU, driver) and ignores a mismatch,
    so one file per machine is enough.
    """

    def __init__(self, path: str | Path, lock_timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout

    def read(self) -> bytes | None:
        """The cache bytes, or ``None`` if there is no (non-empty) file."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return data or None

    def write(self, data: bytes) -> None:
        """Replace the file with ``data`` atomically, serialized with other writers."""
        with file_lock(self.path, self.lock_timeout):
            atomic_write_bytes(self.path, bytes(data))


def load_runtime_cache(runtime_config: Any, cache_file: RuntimeCacheFile) -> Any:
    """Create an ``IRuntimeCache`` on ``runtime_config``, filled from ``cache_file`` if valid.

    Returns the cache object (keep it alive as long as contexts use it).
    """
    cache = runtime_config.create_runtime_cache()
    data = cache_file.read()
    if data is not None and not cache.deserialize(data):
        log.info("runtime cache %s does not match this GPU/driver/version; starting empty",
                 cache_file.path)
    runtime_config.set_runtime_cache(cache)
    return cache


class RuntimeCacheContexts:
    """Creates TensorRT-RTX execution contexts whose runtime config carries the runtime cache.

    Used as ``TensorRTRunner(create_context=...)``: each call makes an ``IRuntimeConfig`` from the
    engine, gives it an ``IRuntimeCache`` filled from the file, and creates the context with it.
    """

    def __init__(self, cache_file: RuntimeCacheFile | None, graph_strategy: Any = None) -> None:
        self.cache_file = cache_file
        #: a ``CudaGraphStrategy`` member for ``IRuntimeConfig.cuda_graph_strategy`` (or None)
        self.graph_strategy = graph_strategy
        self._caches: list[Any] = []  # keep each IRuntimeConfig/IRuntimeCache alive

    def __call__(self, engine: Any) -> Any:
        if self.cache_file is None and self.graph_strategy is None:
            return engine.create_execution_context()
        runtime_config = engine.create_runtime_config()
        if self.graph_strategy is not None:
            # TensorRT-RTX captures and replays CUDA graphs inside execute_async_v3 itself
            runtime_config.cuda_graph_strategy = self.graph_strategy
        cache = None
        if self.cache_file is not None:
            cache = load_runtime_cache(runtime_config, self.cache_file)
        self._caches.append((runtime_config, cache))
        return engine.create_execution_context(runtime_config)

    def save(self) -> None:
        """Write the fullest runtime cache (kernels compiled so far) to the file."""
        if self.cache_file is None or not self._caches:
            return
        blobs = [bytes(cache.serialize()) for _, cache in self._caches if cache is not None]
        best = max(blobs, key=len, default=b"")
        if best:
            self.cache_file.write(best)

    def clear(self) -> None:
        """Drop the runtime configs and caches (after the contexts using them are gone)."""
        self._caches.clear()


class RuntimeCacheOwner:
    """``TensorRTRunner(owner=...)`` for TensorRT-RTX: keeps the ``Runtime`` alive, and
    :meth:`close` saves the runtime cache (the runner should call it when it closes, before it
    drops the engine)."""

    def __init__(self, runtime: Any, contexts: RuntimeCacheContexts) -> None:
        self.runtime = runtime
        self.contexts = contexts

    def close(self) -> None:
        try:
            self.contexts.save()
        except Exception as exc:  # a cache that cannot be written must not break shutdown
            log.warning("could not save the TensorRT-RTX runtime cache: %s", exc)
        self.contexts.clear()
        self.runtime = None
