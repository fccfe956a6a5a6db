"""The execution contexts of one :class:`~.trt_runner.TensorRTRunner`, handed to one call at a time.

TensorRT: "If the engine supports dynamic shapes, each execution context in concurrent use must
use a separate optimization profile", and a context cannot switch to a profile that another live
context holds. So :class:`ContextPool` has two modes:

* **per profile** (an engine with dynamic inputs and ``max_contexts > 1``): one context per
  optimization profile, created on the profile's first call, switched to it once and never
  switched again; calls for the same profile take turns, calls for different profiles run
  concurrently (at most ``max_contexts`` at once). A single-profile engine thus runs one call at
  a time: build several profiles to serve several threads.
* **shared** (``max_contexts == 1``, or an engine with static shapes only): up to
  ``max_contexts`` interchangeable contexts; a call takes a free one and switches its profile.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from regiontrt.backends import cuda
from regiontrt.backends.trt_slots import RunnerStats, Slot
from regiontrt.errors import InputError

__all__ = ["ContextPool"]


class ContextPool:
    """Contexts (:class:`Slot` objects) of one engine on one device.

    Args:
        create_context: makes an execution context from ``engine``.
        engine: the deserialized engine.
        device: the CUDA device made current before a context is created.
        max_contexts: how many calls may hold a context at once.
        per_profile: one context pinned to each optimization profile (see the module docstring).
    """

    def __init__(self, create_context: Callable[[Any], Any], engine: Any, device: int,
                 max_contexts: int, per_profile: bool) -> None:
        self._create_context, self._engine = create_context, engine
        self._device, self._max, self.per_profile = device, max_contexts, per_profile
        self._cond = threading.Condition()
        self._create_lock = threading.Lock()
        self.slots: list[Slot] = []
        self._free: list[Slot] = []
        self._by_profile: dict[int, Slot] = {}
        self._busy: set[int] = set()
        self._nslots = self._inflight = 0
        self.closed = False
        self._retired = RunnerStats()

    @property
    def stats(self) -> RunnerStats:
        """Totals over the contexts, live and closed."""
        with self._cond:
            total = RunnerStats(contexts=len(self.slots) + self._retired.contexts)
            for slot in self.slots:
                total.add(slot.stats)
        total.add(RunnerStats(**{**vars(self._retired), "contexts": 0}))
        return total

    def acquire(self, k: int) -> Slot:
        """A context for a call in profile ``k`` (waits while none may be used)."""
        with self._cond:
            while True:
                if self.closed:
                    raise InputError("this engine was closed")
                if self.per_profile:
                    if k not in self._busy and self._inflight < self._max:
                        self._busy.add(k)
                        self._inflight += 1
                        slot = self._by_profile.get(k)
                        if slot is not None:
                            return slot
                        break
                elif self._free:
                    self._inflight += 1
                    return self._free.pop()
                elif self._nslots < self._max:
                    self._nslots += 1
                    self._inflight += 1
                    break
                self._cond.wait()
        try:
            slot = self._create(k)
        except BaseException:
            with self._cond:
                self._inflight -= 1
                if self.per_profile:
                    self._busy.discard(k)
                else:
                    self._nslots -= 1
                self._cond.notify_all()
            raise
        with self._cond:
            self.slots.append(slot)
            if self.per_profile:
                self._by_profile[k] = slot
        return slot

    def _create(self, k: int) -> Slot:
        with self._create_lock:  # one at a time: each takes its profile before the next exists
            cuda.set_device(self._device)
            slot = Slot(self._create_context, self._engine)
            if self.per_profile:
                try:
                    slot.set_profile(k)
                except BaseException:
                    slot.close()
                    raise
            return slot

    def release(self, slot: Slot, k: int) -> None:
        """Hand back the context a call in profile ``k`` used."""
        with self._cond:
            self._inflight -= 1
            if self.per_profile:
                self._busy.discard(k)
            else:
                self._free.append(slot)
            self._cond.notify_all()

    def close(self) -> list[Slot] | None:
        """Wait for running calls, refuse new ones; the contexts to close (``None`` if closed)."""
        with self._cond:
            if self.closed:
                return None
            self.closed = True
            self._cond.notify_all()
            while self._inflight:
                self._cond.wait()
            slots, self.slots, self._free, self._by_profile = self.slots, [], [], {}
            for slot in slots:
                self._retired.add(slot.stats)
                self._retired.contexts += 1
        return slots
