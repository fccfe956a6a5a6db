"""Requests and the bounded queue they wait in, grouped by compatible shape.

A :class:`Request` holds one caller's inputs (already padded to the engine's width buckets), the
number of rows it contributes along axis 0, its shape key and its future. Two requests can share
a batch exactly when their keys are equal: same input names, dtypes and shapes past axis 0.
:class:`RequestQueue` is FIFO per key, bounded in requests, and never blocks a producer: a full
queue raises :class:`~regiontrt.errors.Overloaded` at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from regiontrt.errors import Overloaded

ShapeKey = tuple[tuple[str, tuple[int, ...], str], ...]


def shape_key(feeds: Mapping[str, np.ndarray]) -> ShapeKey:
    """The batching key: per input, its name, shape past axis 0 and dtype."""
    return tuple(sorted((n, tuple(int(d) for d in a.shape[1:]), a.dtype.str)
                        for n, a in feeds.items()))


@dataclass(eq=False)
class Request:
    """One queued inference request.

    Attributes:
        feeds: the inputs, padded to the engine's buckets.
        rows: rows along axis 0.
        key: its :func:`shape_key`.
        unpad: what :meth:`Bucketing.unpad` needs to cut its outputs back (empty without).
        enqueued: monotonic time it was queued.
        deadline: monotonic time after which it must not run (``None``: no deadline).
        answer_by: monotonic time after which its answer is late for the region's SLA
            (``None``: not shed for lateness).
        future: resolved with the outputs or the error.
    """

    feeds: dict[str, np.ndarray]
    rows: int
    key: ShapeKey
    unpad: dict[str, Any]
    enqueued: float
    deadline: float | None = None
    answer_by: float | None = None
    future: Future[dict[str, np.ndarray]] = field(default_factory=Future)


class RequestQueue:
    """A bounded FIFO of requests that hands out batches of one shape key.

    Not thread-safe on its own: the batcher guards it with its condition variable.

    Args:
        max_requests: most requests waiting at once.
    """

    def __init__(self, max_requests: int) -> None:
        if max_requests < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_requests}")
        self.max_requests = int(max_requests)
        self._items: deque[Request] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, request: Request) -> None:
        """Queue ``request``.

        Raises:
            Overloaded: the queue already holds ``max_requests`` requests.
        """
        if len(self._items) >= self.max_requests:
            raise Overloaded(
                f"request queue full ({self.max_requests} waiting); retry later"
            )
        self._items.append(request)

    @property
    def rows(self) -> int:
        """Rows waiting, all keys together (counted when asked: nothing on the request path
        needs it)."""
        return sum(r.rows for r in self._items)

    def oldest(self) -> Request | None:
        return self._items[0] if self._items else None

    def rows_ready(self, key: ShapeKey, limit: int) -> int:
        """Rows queued under ``key`` (counting stops once ``limit`` is reached)."""
        total = 0
        for r in self._items:
            if r.key == key:
                total += r.rows
                if total >= limit:
                    break
        return total

    def take(self, max_rows: int) -> list[Request]:
        """The oldest request and, in arrival order, later ones of its key while rows fit.

        The oldest request is always taken, even when it alone exceeds ``max_rows`` (it then
        runs by itself; the engine's profile check decides whether that shape is allowed).
        """
        if not self._items:
            return []
        first = self._items.popleft()
        batch, rows = [first], first.rows
        if rows >= max_rows:
            return batch
        kept: deque[Request] = deque()
        while self._items:
            r = self._items.popleft()
            if r.key == first.key and rows + r.rows <= max_rows:
                batch.append(r)
                rows += r.rows
                if rows >= max_rows:
                    break
            else:
                kept.append(r)
        kept.extend(self._items)
        self._items = kept
        return batch

    def drain(self) -> list[Request]:
        """Remove and return everything queued."""
        items = list(self._items)
        self._items.clear()
        return items

    def shed(self, cutoff: float) -> list[Request]:
        """Remove and return the oldest requests whose answer would be late if they ran after
        ``cutoff`` (``answer_by`` before it).

        Every request of one queue gets the same SLA, so ``answer_by`` grows along the queue
        and the late ones are a prefix: shedding costs what it removes, not the queue's length.
        """
        late: list[Request] = []
        while self._items and self._items[0].answer_by is not None \
                and self._items[0].answer_by < cutoff:
            late.append(self._items.popleft())
        return late
