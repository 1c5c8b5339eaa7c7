"""Fair batching over streams with per-stream drop policies.

Logic with an injected clock: the inference loop feeds it descriptors and asks
when a batch is due; the unit tests drive it the same way. Every drop it
decides is counted here, once, in the event totals and the metrics together.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from streamd import metrics
from streamd.config import DropPolicy
from streamd.types import FrameRef

CAUSES = ("queue_full", "stale", "sampled")


@dataclass(slots=True)
class DropCounters:
    """Frames dropped before analysis, by cause (names as in docs/events.md).

    ``queue_full`` and ``stale`` are counted here; ``sampled`` and the source's
    own ``queue_full`` (``oldest`` policy, ring full) arrive as totals on each
    descriptor and are added in.
    """

    queue_full: int = 0
    stale: int = 0
    source: dict[str, int] = field(default_factory=dict)
    detector_error: int = 0  # frames of batches the detector raised on

    def as_dict(self) -> dict[str, int]:
        out = {
            "queue_full": self.queue_full + self.source.get("queue_full", 0),
            "stale": self.stale,
            "sampled": self.source.get("sampled", 0),
        }
        if self.detector_error:  # rare: the key appears once there is one (docs/events.md)
            out["detector_error"] = self.detector_error
        return out

    @property
    def total(self) -> int:
        return sum(self.as_dict().values())


@dataclass(slots=True)
class _Lane:
    stream: str
    policy: DropPolicy
    max_latency_s: float | None = None
    pending: deque[FrameRef] = field(default_factory=deque)
    drops: DropCounters = field(default_factory=DropCounters)


class Batcher:
    """Holds pending frames per stream; emits a batch when full or when the oldest waited enough.

    ``latest``: a new frame replaces an unconsumed one (counted ``queue_full``).
    ``oldest`` and ``block``: frames queue in order (the ring bounds the queue:
    the source drops new frames, or waits, when it is full).
    ``max_latency_s``: a frame older than that (capture to batch) when a batch
    is taken is dropped as ``stale`` instead.
    Batches take streams round-robin, so one busy stream cannot starve others.
    """

    def __init__(
        self,
        max_batch: int,
        max_wait_s: float,
        policies: Mapping[str, DropPolicy],
        max_latency_s: Mapping[str, float | None] | None = None,
    ) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        limits = max_latency_s or {}
        self._lanes = {s: _Lane(s, p, limits.get(s)) for s, p in policies.items()}
        self._order = list(policies)
        self._next = 0  # round-robin start
        self._discarded: list[FrameRef] = []

    def set_lane(self, stream: str, policy: DropPolicy, max_latency_s: float | None) -> None:
        """A stream added at runtime gets a lane; a changed one keeps its queue and counts."""
        lane = self._lanes.get(stream)
        if lane is None:
            self._lanes[stream] = _Lane(stream, policy, max_latency_s)
            self._order.append(stream)
        else:
            lane.policy, lane.max_latency_s = policy, max_latency_s

    def remove(self, stream: str) -> list[FrameRef]:
        """A stream removed at runtime: its lane goes; the frames it still held are returned."""
        lane = self._lanes.pop(stream, None)
        if lane is None:
            return []
        self._order.remove(stream)
        self._next = 0
        return list(lane.pending)

    def offer(self, ref: FrameRef) -> list[FrameRef]:
        """Add a frame; return the frames it displaced (already counted as drops)."""
        lane = self._lanes[ref.stream]
        lane.drops.source = ref.source_dropped
        displaced: list[FrameRef] = []
        if lane.policy == "latest":
            displaced = list(lane.pending)
            lane.pending.clear()
            self._count(lane, "queue_full", len(displaced))
        lane.pending.append(ref)
        metrics.QUEUE_DEPTH.labels(ref.stream).set(len(lane.pending))
        return displaced

    def count_drop(self, stream: str) -> None:
        """Count a frame lost after it was taken (e.g. overwritten in the ring)."""
        self._count(self._lanes[stream], "queue_full", 1)

    @staticmethod
    def _count(lane: _Lane, cause: str, n: int) -> None:
        if n:
            setattr(lane.drops, cause, getattr(lane.drops, cause) + n)
            metrics.FRAMES_DROPPED.labels(lane.stream, cause).inc(n)

    def drops(self, stream: str) -> DropCounters:
        return self._lanes[stream].drops

    @property
    def pending(self) -> int:
        return sum(len(lane.pending) for lane in self._lanes.values())

    def depth(self, stream: str) -> int:
        return len(self._lanes[stream].pending)

    def pop_discarded(self) -> list[FrameRef]:
        """Frames dropped as stale since the last call (their ring slots may need releasing)."""
        out, self._discarded = self._discarded, []
        return out

    def _drop_stale(self, now: float) -> None:
        for lane in self._lanes.values():
            limit = lane.max_latency_s
            while limit is not None and lane.pending and now - lane.pending[0].capture_ts > limit:
                self._discarded.append(lane.pending.popleft())
                self._count(lane, "stale", 1)

    def _oldest_ready(self) -> float | None:
        heads = [lane.pending[0].ready_ts for lane in self._lanes.values() if lane.pending]
        return min(heads) if heads else None

    def wait_time(self, now: float) -> float | None:
        """Seconds until a batch is due (0 if due now), None if nothing is pending."""
        oldest = self._oldest_ready()
        if oldest is None:
            return None
        if self.pending >= self.max_batch:
            return 0.0
        return max(0.0, oldest + self.max_wait_s - now)

    def take(self, now: float | None = None) -> list[FrameRef]:
        """Remove and return up to ``max_batch`` frames, round-robin across streams.

        With ``now``, frames past their stream's ``max_latency_s`` are dropped first.
        """
        if now is not None:
            self._drop_stale(now)
        batch: list[FrameRef] = []
        n = len(self._order)
        while len(batch) < self.max_batch:
            progressed = False
            for i in range(n):
                lane = self._lanes[self._order[(self._next + i) % n]]
                if lane.pending and len(batch) < self.max_batch:
                    batch.append(lane.pending.popleft())
                    progressed = True
            if not progressed:
                break
        self._next = (self._next + 1) % max(n, 1)
        return batch
