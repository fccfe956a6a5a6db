"""Run a piece of work in a child process and measure its wall time and peak memory.

Every contender of a benchmark runs in its own fresh process, so one's allocations (ONNX Runtime
arenas, numpy caches) cannot inflate another's peak. The child reports its own peak resident set
(``VmHWM``); the parent also polls the child's resident set, kills it past a memory cap or a
timeout, and then records ``"oom"`` or ``"timeout"`` instead of crashing the whole benchmark.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

POLL_S = 0.1
MB = 1024.0 * 1024.0
RESULT_MARKER = "@@MEASURED@@ "


@dataclass
class Measured:
    """Outcome of one measured run.

    Attributes:
        status: "ok", "error", "timeout" or "oom" (killed past the cap, or by the kernel).
        wall_s: seconds the work itself took (process start-up and imports excluded); for a
            killed run, the time until it was killed.
        peak_rss_mb: peak resident set of the child (``VmHWM``), imports included.
        base_rss_mb: resident set when the work started (interpreter and imports), so the
            work's own footprint is ``peak_rss_mb - base_rss_mb``.
        value: what the function returned (``None`` unless status is "ok").
        error: the error message or the reason it was killed.
    """

    status: str
    wall_s: float
    peak_rss_mb: float | None
    base_rss_mb: float | None = None
    value: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def summary(self) -> dict[str, Any]:
        """JSON-friendly fields (the returned value left out)."""
        d = asdict(self)
        d.pop("value")
        return d


def proc_status_mb(pid: int | str, key: str) -> float | None:
    """A memory field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``...) in MiB, if readable."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def self_peak_mb() -> float:
    """This process's peak resident set in MiB (``VmHWM``, else ``ru_maxrss``)."""
    hwm = proc_status_mb("self", "VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _child(
    conn: Any, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    base = proc_status_mb("self", "VmRSS")
    start = time.perf_counter()
    msg: tuple[Any, ...]
    try:
        value = fn(*args, **kwargs)
        msg = ("ok", time.perf_counter() - start, self_peak_mb(), base, value, None)
    except BaseException as exc:
        tb = traceback.format_exc(limit=6)
        msg = ("error", time.perf_counter() - start, self_peak_mb(), base, None, f"{exc!r}\n{tb}")
    conn.send(msg)
    conn.close()


def _watch(
    pid: int,
    alive: Callable[[], bool],
    done: Callable[[], bool],
    timeout_s: float,
    mem_limit_mb: float | None,
) -> tuple[str | None, float, float]:
    """Poll a child until it is done or dead; the kill reason (or None), seconds, peak seen."""
    start = time.perf_counter()
    seen = 0.0
    while alive() and not done():
        rss = proc_status_mb(pid, "VmRSS")
        if rss is not None:
            seen = max(seen, rss)
        elapsed = time.perf_counter() - start
        if mem_limit_mb is not None and seen > mem_limit_mb:
            return f"oom: resident set passed the {mem_limit_mb:.0f} MiB cap", elapsed, seen
        if elapsed > timeout_s:
            return f"timeout: still running after {timeout_s:.0f} s", elapsed, seen
        time.sleep(POLL_S)
    return None, time.perf_counter() - start, seen


def run_measured(
    fn: Callable[..., Any],
    *args: Any,
    timeout_s: float = 600.0,
    mem_limit_mb: float | None = None,
    **kwargs: Any,
) -> Measured:
    """Call ``fn(*args, **kwargs)`` in a fresh (spawned) process and measure it.

    ``fn`` and its arguments must be picklable (a module-level function). The returned value
    comes back through a pipe, so keep it small (write large results to a file).

    Args:
        fn: the work.
        timeout_s: kill the child after this many seconds.
        mem_limit_mb: kill the child once its resident set passes this many MiB.
    """
    ctx = mp.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child_conn, fn, args, kwargs), daemon=True)
    proc.start()
    child_conn.close()
    assert proc.pid is not None
    reason, elapsed, seen = _watch(
        proc.pid, proc.is_alive, parent_conn.poll, timeout_s, mem_limit_mb
    )
    if reason is not None:
        proc.kill()
        proc.join()
        return Measured(reason.split(":")[0], elapsed, seen or None, error=reason)
    try:
        status, wall, peak, base, value, error = parent_conn.recv()
    except EOFError:
        proc.join()
        # SIGKILL without our doing: the kernel's OOM killer is the usual culprit.
        what = "oom" if proc.exitcode == -9 else "error"
        return Measured(
            what, elapsed, seen or None, error=f"child died with exit code {proc.exitcode}"
        )
    proc.join()
    return Measured(status, wall, peak, base, value, error)


def run_command_measured(
    argv: Sequence[str],
    *,
    timeout_s: float = 600.0,
    mem_limit_mb: float | None = None,
    env: dict[str, str] | None = None,
) -> Measured:
    """Run a command whose last ``@@MEASURED@@ {json}`` stdout line reports its own figures.

    Used for contenders living in another virtual environment (another interpreter). The JSON
    has ``wall_s``, ``peak_rss_mb``, ``base_rss_mb`` and optionally ``value``; :func:`report`
    prints it.
    """
    with subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    ) as proc:
        lines: list[str] = []
        # Drain stdout on a thread so a chatty child cannot block on a full pipe.
        import threading

        reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
        reader.start()
        reason, elapsed, seen = _watch(
            proc.pid, lambda: proc.poll() is None, lambda: False, timeout_s, mem_limit_mb
        )
        if reason is not None:
            proc.kill()
        proc.wait()
        reader.join(timeout=5)
    if reason is not None:
        return Measured(reason.split(":")[0], elapsed, seen or None, error=reason)
    for line in reversed(lines):
        if line.startswith(RESULT_MARKER):
            d = json.loads(line[len(RESULT_MARKER) :])
            return Measured(
                d.get("status", "ok"),
                float(d["wall_s"]),
                d.get("peak_rss_mb"),
                d.get("base_rss_mb"),
                d.get("value"),
                d.get("error"),
            )
    tail = "".join(lines[-15:])
    what = "oom" if proc.returncode == -9 else "error"
    return Measured(
        what,
        elapsed,
        seen or None,
        error=f"exit code {proc.returncode}, no result line; output tail:\n{tail}",
    )


def report(
    status: str,
    wall_s: float,
    base_rss_mb: float | None,
    value: Any = None,
    error: str | None = None,
) -> None:
    """Print the result line :func:`run_command_measured` reads (call it last in the child)."""
    d = {
        "status": status,
        "wall_s": wall_s,
        "peak_rss_mb": self_peak_mb(),
        "base_rss_mb": base_rss_mb,
        "value": value,
        "error": error,
    }
    sys.stdout.write(RESULT_MARKER + json.dumps(d) + "\n")
    sys.stdout.flush()
