"""File helpers shared by every stage: atomic writes that leave nothing behind.

A write goes to a temporary file beside the target, named ``.NAME.rtrt-tmp-RANDOM``, held under an
exclusive ``flock`` while it is written, then renamed over the target. A writer killed half-way
leaves its temporary file; the next write into the same folder removes every such file that is
provably ours (our naming pattern, owned by this user, a regular file) and whose writer is gone
(its lock can be taken, which the kernel allows only once the writing process has exited).

New files get the permissions any tool's new file gets (``0666`` less the umask); a file that is
overwritten keeps its mode.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no stale-file sweep, writes stay atomic
    fcntl = None  # type: ignore[assignment]

TMP_MARK = ".rtrt-tmp-"
_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode any tool's new file gets here: ``0666`` less the umask."""
    return 0o666 & ~_umask()


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def sweep_stale(folder: str | Path) -> list[Path]:
    """Remove temporary files in ``folder`` left by writers that died; returns what was removed."""
    removed: list[Path] = []
    if fcntl is None:
        return removed
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    uid = os.getuid() if hasattr(os, "getuid") else None
    for entry in entries:
        if not (entry.name.startswith(".") and TMP_MARK in entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode) or (uid is not None and info.st_uid != uid):
                continue
            # Non-blocking and no symlinks: a FIFO swapped in after the stat must not hang us.
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_NONBLOCK", 0))
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live writer holds it
            os.close(fd)
            continue
        try:
            # Still the same file (not replaced between the scan and the lock)?
            if os.path.samestat(os.fstat(fd), os.stat(entry.path, follow_symlinks=False)):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def _temp_beside(path: Path) -> Iterator[tuple[BinaryIO, str]]:
    """A locked temporary file beside ``path``; removed on any exception."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent)
    lock_fd = -1
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A duplicate shares the lock, which then outlives closing the file object: the
            # temporary file stays locked until it is renamed, so no sweeper can take it.
            lock_fd = os.dup(fd)
        with os.fdopen(fd, "wb") as fh:
            yield fh, tmp
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)


def _finish(fh: BinaryIO, path: Path, mode: int | None = None) -> None:
    fh.flush()
    if hasattr(os, "fchmod"):
        os.fchmod(fh.fileno(), _mode_for(path) if mode is None else mode)
    os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_writer(path: str | Path, *, mode: int | None = None) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically.

    On any exception the temporary file is removed and ``path`` is left as it was, so a crash
    never leaves a partial file under the final name (and a killed writer's file is swept by the
    next write into the folder). The temporary file is private (0600) while it is written;
    ``mode`` sets the final file's mode (default: what the umask gives, or the existing file's).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent)
    with _temp_beside(path) as (fh, tmp):
        yield fh
        _finish(fh, path, mode)
        fh.close()
        os.replace(tmp, path)


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer` for ``mode``)."""
    with atomic_writer(path, mode=mode) as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_all(files: Mapping[str | Path, bytes]) -> None:
    """Write several files so that all of them are written or none is.

    Every file is first written and synced under a temporary name; only then are they renamed
    into place. A failure while writing leaves every target as it was; a failure while renaming
    puts back the targets already replaced (their old contents are kept as hard links meanwhile).

    Raises:
        IsADirectoryError: a target is a folder (checked before anything is written).
        OSError: a write failed.
    """
    paths = [Path(target) for target in files]
    for path in paths:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a folder", str(path))
    with contextlib.ExitStack() as stack:
        staged: list[tuple[str, Path]] = []
        for path, data in zip(paths, files.values()):
            path.parent.mkdir(parents=True, exist_ok=True)
            sweep_stale(path.parent)
            fh, tmp = stack.enter_context(_temp_beside(path))
            fh.write(data)
            _finish(fh, path)
            staged.append((tmp, path))
        backups: list[tuple[Path, str | None]] = []
        try:
            for tmp, path in staged:
                backup = None
                if path.exists():
                    backup = f"{tmp}.old"
                    os.link(path, backup)
                backups.append((path, backup))
                os.replace(tmp, path)
        except BaseException:
            for path, backup in reversed(backups):
                with contextlib.suppress(OSError):
                    if backup is None:
                        os.unlink(path)
                    else:
                        os.replace(backup, path)
            raise
        finally:
            for _, backup in backups:
                if backup is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(backup)
