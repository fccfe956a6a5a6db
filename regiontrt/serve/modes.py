"""Batching modes: how many requests a batch may hold and how long the batcher waits to fill it.

A :class:`BatchPolicy` is asked, before every batch, for a :class:`BatchPlan` given the measured
load (:class:`LoadStats`). Three are shipped:

* :class:`LatencyPolicy` (``"latency"``): dispatch at once, one request per run, on the
  ``latency`` variant. Best when the server is quiet; falls behind in a surge.
* :class:`ThroughputPolicy` (``"throughput"``): fill up to ``max_batch`` or wait ``max_delay_ms``
  for the oldest request, on the ``throughput`` variant. Keeps up in a surge; in a quiet phase
  every request pays the wait.
* :class:`AdaptivePolicy` (``"adaptive"``): a two-state machine driven by the utilisation one-by-one
  serving would need (arrival rate x single-request service time) and the queue depth, with
  separate up and down thresholds and a minimum dwell time, so it does not flap. Quiet: dispatch
  at once with whatever is queued. Busy: batch, waiting only as long as the region's SLA leaves
  room for. Batches grow by doubling (4, 8, 16...) as long as they are measured to pay; where
  a batch costs as much per row as single requests, it runs requests one by one in either
  state (re-measuring a batch of 4 every few seconds) until the queue passes high water.
  Service times are medians of recent runs, so one slow run does not flip a decision.

Subclass :class:`BatchPolicy` and pass an instance as ``mode=`` to plug in another rule.
"""

from __future__ import annotations

import abc
import math
import statistics
import threading
from collections import deque
from dataclasses import dataclass

LATENCY, THROUGHPUT = "latency", "throughput"

#: Rows of the smallest batch that tells whether batching pays (and of an exploring batch).
PROBE_ROWS = 4


@dataclass(frozen=True)
class BatchPlan:
    """What the next batch may be.

    Attributes:
        max_batch: most rows (along axis 0) in the batch.
        max_wait_s: longest the oldest queued request waits for the batch to fill.
        role: the variant role preferred for the batch (``"latency"``/``"throughput"``).
    """

    max_batch: int
    max_wait_s: float
    role: str


@dataclass(frozen=True)
class LoadStats:
    """The load a policy decides on.

    Attributes:
        arrival_rate: requests per second over the recent window.
        queue_depth: requests waiting now.
        service_s: estimated seconds to run one request alone (``None`` before any run).
        batch_service_s: estimated seconds to run a batch of ``batch_rows`` (``None`` before
            any, and before three batches of at least :data:`PROBE_ROWS` rows ran).
        sla_s: the region's p99 latency SLA in seconds (``None`` without one).
        now: the monotonic time of the decision.
        batch_rows: the median rows of the recent batches of at least :data:`PROBE_ROWS` rows
            (else of the largest batch so far): what :attr:`batching_pays` compares with
            single requests.
        largest_batch: the most rows any batch held so far.
    """

    arrival_rate: float
    queue_depth: int
    service_s: float | None
    batch_service_s: float | None
    sla_s: float | None
    now: float
    batch_rows: int = 0
    largest_batch: int = 0

    @property
    def batching_pays(self) -> bool | None:
        """Whether a row costs less in the largest batch seen than alone (``None``: unknown).

        Known only once a batch of at least :data:`PROBE_ROWS` rows ran; "less" means by a fifth,
        so noise in the estimates does not count as a gain.
        """
        if self.service_s is None or self.batch_service_s is None or \
                self.batch_rows < PROBE_ROWS:
            return None
        return self.batch_service_s / self.batch_rows < 0.8 * self.service_s


class BatchPolicy(abc.ABC):
    """Decides each batch's size and wait. Implementations must be cheap and thread-safe.

    Args:
        max_batch: most rows in one batch.
        max_delay_ms: longest wait to fill a batch.
    """

    name = "custom"

    def __init__(self, max_batch: int = 32, max_delay_ms: float = 5.0) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if not (max_delay_ms >= 0 and math.isfinite(max_delay_ms)):
            raise ValueError(f"max_delay_ms must be finite and >= 0, got {max_delay_ms}")
        self.max_batch = int(max_batch)
        self.max_delay_s = float(max_delay_ms) / 1e3
        self.switches = 0

    @property
    def state(self) -> str:
        """The configuration in force (``"latency"`` or ``"throughput"``)."""
        return self.name

    @abc.abstractmethod
    def plan(self, load: LoadStats) -> BatchPlan:
        """The plan for the next batch under ``load``."""


class LatencyPolicy(BatchPolicy):
    """Dispatch each request at once, alone."""

    name = LATENCY

    def plan(self, load: LoadStats) -> BatchPlan:
        return BatchPlan(1, 0.0, LATENCY)


class ThroughputPolicy(BatchPolicy):
    """Fill to ``max_batch`` or wait ``max_delay_ms`` for the oldest request."""

    name = THROUGHPUT

    def plan(self, load: LoadStats) -> BatchPlan:
        return BatchPlan(self.max_batch, self.max_delay_s, THROUGHPUT)


class AdaptivePolicy(BatchPolicy):
    """Switch between dispatch-at-once and batching from the measured load, with hysteresis.

    Args:
        max_batch: most rows in one batch.
        max_delay_ms: longest wait to fill a batch in the busy state.
        up: switch to batching when one-by-one utilisation reaches this (or the queue reaches
            ``high_water``).
        down: switch back when utilisation falls to this and at most one request waits.
        dwell_s: least time between two switches.
        high_water: queue depth that forces batching (default ``max_batch``).
    """

    name = "adaptive"

    def __init__(
        self,
        max_batch: int = 32,
        max_delay_ms: float = 5.0,
        *,
        up: float = 0.6,
        down: float = 0.3,
        dwell_s: float = 0.5,
        high_water: int | None = None,
    ) -> None:
        super().__init__(max_batch, max_delay_ms)
        if not 0 < down < up:
            raise ValueError(f"need 0 < down < up, got down={down}, up={up}")
        self.up, self.down, self.dwell_s = float(up), float(down), float(dwell_s)
        self.high_water = int(high_water) if high_water is not None else max(2, self.max_batch)
        self._state = LATENCY
        self._since = -math.inf
        self._explored = -math.inf
        self.explore_s = 5.0
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        return self._state

    def _wanted(self, load: LoadStats) -> str:
        rho = load.arrival_rate * load.service_s if load.service_s is not None else 0.0
        if self._state == LATENCY and (rho >= self.up or load.queue_depth >= self.high_water):
            return THROUGHPUT
        if self._state == THROUGHPUT and rho <= self.down and load.queue_depth <= 1:
            return LATENCY
        return self._state

    def plan(self, load: LoadStats) -> BatchPlan:
        with self._lock:
            wanted = self._wanted(load)
            if wanted != self._state and load.now - self._since >= self.dwell_s:
                self._state, self._since = wanted, load.now
                self.switches += 1
            state = self._state
        pays = load.batching_pays
        if pays is False and load.queue_depth < self.high_water:
            # Measured: rows cost no less together (a CPU already short of cores, say), so
            # waiting or joining requests only adds latency: run them one by one, except for
            # one small batch every explore_s, which keeps that measurement current. Past high
            # water one by one is falling behind for sure, and a verdict measured under that
            # load (the batch timings then carry the contention of the callers' threads) is
            # not worth the queue: batch whatever waits, without waiting for more.
            with self._lock:
                explore = load.now - self._explored >= self.explore_s
                if explore:
                    self._explored = load.now
            return BatchPlan(min(PROBE_ROWS, self.max_batch) if explore else 1, 0.0, state)
        # Slow start: a batch may hold at most twice the largest one measured so far, so a model
        # on which batching turns out not to pay never stalls on one huge batch to find out.
        grow = min(self.max_batch, max(PROBE_ROWS, 2 * load.largest_batch))
        if state == LATENCY or pays is False:
            return BatchPlan(grow, 0.0, state)
        wait = self.max_delay_s
        if load.sla_s is not None:
            # Leave room in the SLA for running the full batch twice (the one in flight and
            # ours): waiting longer would trade the SLA for a fuller batch.
            run = load.batch_service_s or load.service_s or 0.0
            wait = min(wait, max(0.0, (load.sla_s - 2.0 * run) / 2.0))
        return BatchPlan(grow, wait, THROUGHPUT)


def make_policy(mode: str | BatchPolicy, max_batch: int, max_delay_ms: float) -> BatchPolicy:
    """The policy for ``mode`` (a name or a ready instance)."""
    if isinstance(mode, BatchPolicy):
        return mode
    table: dict[str, type[BatchPolicy]] = {
        LATENCY: LatencyPolicy, THROUGHPUT: ThroughputPolicy, "adaptive": AdaptivePolicy,
    }
    try:
        return table[str(mode)](max_batch, max_delay_ms)
    except KeyError:
        raise ValueError(f"unknown mode {mode!r}; choose latency, throughput or adaptive") from None


class LoadTracker:
    """Arrival rate over a sliding window and service-time estimates, thread-safe.

    Service times are the median of the latest ``samples`` runs of each batch size: one run
    slowed by something else on the machine (a garbage collection, a busy core, the GIL) must
    not flip the policy's view of what batching costs, as a running mean would.

    Args:
        window_s: length of the arrival-rate window.
        samples: runs per batch size the medians are taken over.
    """

    def __init__(self, window_s: float = 1.0, samples: int = 9) -> None:
        self.window_s = float(window_s)
        self._arrivals: deque[float] = deque()
        self._samples = int(samples)
        # Latest runs of batches under PROBE_ROWS rows, by size; (rows, seconds) of larger ones.
        self._small: dict[int, deque[float]] = {}
        self._big: deque[tuple[int, float]] = deque(maxlen=self._samples)
        self._largest = 0
        self._lock = threading.Lock()

    def arrived(self, now: float) -> None:
        with self._lock:
            self._arrivals.append(now)
            self._trim(now)

    def _trim(self, now: float) -> None:
        cutoff = now - self.window_s
        while self._arrivals and self._arrivals[0] < cutoff:
            self._arrivals.popleft()

    def ran(self, rows: int, seconds: float) -> None:
        """Fold in one batch of ``rows`` that ran for ``seconds``."""
        with self._lock:
            self._largest = max(self._largest, rows)
            if rows >= PROBE_ROWS:
                self._big.append((rows, seconds))
            else:
                self._small.setdefault(rows, deque(maxlen=self._samples)).append(seconds)

    def answer_estimate(self, rows: int) -> tuple[float, float] | None:
        """``(alone, batch)``: least seconds until one row alone, and ``rows`` rows together,
        queued behind nothing else, are answered (``None`` before any run): one run, or the
        rows at the best measured cost a row.

        It errs low on purpose: shedding a request on it must mean the request was late for
        sure. Computed when asked (only shedding asks), not on every run.
        """
        with self._lock:
            costs = [statistics.median(d) / r for r, d in self._small.items()]
            if self._big:
                costs.append(statistics.median(t / r for r, t in self._big))
            if not costs:
                return None
            row = min(costs)
            one = statistics.median(self._small[1]) if 1 in self._small else 0.0
            return max(one, row), max(one, rows * row)

    def snapshot(self, queue_depth: int, sla_s: float | None, now: float) -> LoadStats:
        with self._lock:
            self._trim(now)
            rate = len(self._arrivals) / self.window_s
            # Before a batch of one has run, the smallest batch seen stands in for it (an
            # overestimate, so it errs towards batching).
            if self._small:
                one: float | None = statistics.median(self._small[min(self._small)])
            else:
                one = statistics.median(t for _, t in self._big) if self._big else None
            rows, batch = 0, None
            if len(self._big) >= 3:
                # Batches of PROBE_ROWS rows or more, whatever their size: the median row count
                # and the median cost a row. Fewer than three runs are no verdict.
                rows = int(statistics.median(r for r, _ in self._big))
                batch = rows * statistics.median(t / r for r, t in self._big)
            elif not self._big and self._largest:
                rows, batch = self._largest, statistics.median(self._small[self._largest])
            return LoadStats(rate, queue_depth, one, batch, sla_s, now, rows, self._largest)
