"""Pixels of the frames a camera announced, kept until the detector says what became of them.

Shared by the decoding thread (``add``) and the analysis thread (``pop``).
Bounded the way the ring is: under ``latest`` a frame whose slot the writer
reused is gone (the writer skips a slot the detector is reading, so that is
never the frame being detected: the detector reports it dropped); under
``block``/``oldest`` the writer reuses a slot only after the detector
released it, so entries wait for their results, up to a safety bound.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamd import metrics


@dataclass(frozen=True, slots=True)
class _Entry:
    mark: int  # announce order, for state changes (which frames came before them)
    slot: int
    image: npt.NDArray[np.uint8]


class InFlight:
    def __init__(self, stream: str, latest: bool, limit: int) -> None:
        self._latest = latest
        self._limit = limit
        self._frames: OrderedDict[tuple[str, int], _Entry] = OrderedDict()
        self._slots: dict[tuple[str, int], int] = {}  # latest: (ring, slot) → its frame's seq
        self._announced = 0
        self._lock = threading.Lock()
        self._evicted = metrics.INFLIGHT_EVICTED.labels(stream)

    def add(self, ring: str, slot: int, seq: int, image: npt.NDArray[np.uint8]) -> None:
        with self._lock:
            self._announced += 1
            if self._latest:
                lapped = self._slots.get((ring, slot))
                if lapped is not None:
                    self._frames.pop((ring, lapped), None)
                self._slots[(ring, slot)] = seq
            self._frames[(ring, seq)] = _Entry(self._announced, slot, image)
            while len(self._frames) > self._limit:
                self._frames.popitem(last=False)  # results lost on the way: counted
                self._evicted.inc()

    def pop(self, ring: str, seq: int) -> npt.NDArray[np.uint8] | None:
        with self._lock:
            entry = self._frames.pop((ring, seq), None)
            if entry is None:
                return None
            if self._latest and self._slots.get((ring, entry.slot)) == seq:
                del self._slots[(ring, entry.slot)]
            return entry.image

    def mark(self) -> int:
        """How many frames were announced so far."""
        with self._lock:
            return self._announced

    def pending(self, upto: int | None = None) -> int:
        """Frames still out; with ``upto``, only those among the first ``upto`` announced."""
        with self._lock:
            if upto is None:
                return len(self._frames)
            return sum(1 for e in self._frames.values() if e.mark <= upto)
