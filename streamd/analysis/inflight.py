"""Pixels of the frames a camera announced, kept until the detector says what became of them.

Shared by the decoding thread (``add``) and the analysis thread (``pop``).
Every announced frame gets an outcome from the detector (boxes, or a drop
notice), so entries leave when it is handled; the camera announces no more
than ``room`` frames ahead of its analysis, which bounds the pixels held
(references to decoded frames, no copies) to about a batch's worth of frames.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

LOST_AFTER_S = 10.0  # an answer this late is not coming: stop waiting for it


@dataclass(frozen=True, slots=True)
class _Entry:
    mark: int  # announce order, for state changes (which frames came before them)
    image: npt.NDArray[np.uint8] | None  # None: decoded in the detector process, no pixels here
    at: float  # monotonic time it was announced


class InFlight:
    """``room``: frames a camera may have out at once (announced, and their outcome not yet
    handled by its analysis). The camera waits (``block``) or drops (``latest``,
    ``oldest``) beyond it, so an analysis thread slower than the detector cannot queue
    results without bound."""

    def __init__(self, room: int) -> None:
        self.room = room
        self._frames: OrderedDict[tuple[str, int], _Entry] = OrderedDict()
        self._announced = 0
        self._lock = threading.Lock()

    def add(self, ring: str, seq: int, image: npt.NDArray[np.uint8] | None) -> None:
        with self._lock:
            self._announced += 1
            self._frames[(ring, seq)] = _Entry(self._announced, image, time.monotonic())

    def pop(self, ring: str, seq: int) -> npt.NDArray[np.uint8] | None:
        """The frame's outcome is handled: its pixels if still held."""
        with self._lock:
            entry = self._frames.pop((ring, seq), None)
        return None if entry is None else entry.image

    def forget(self, ring: str, after: int) -> int:
        """A decode session in the detector ended with ``after`` pictures: the units sent
        beyond them (refused, or held by a decoder that was closed) will not come back."""
        with self._lock:
            gone = [k for k in self._frames if k[0] == ring and k[1] > after]
            for k in gone:
                del self._frames[k]
        return len(gone)

    def full(self) -> bool:
        with self._lock:
            # A lost answer must not close the gate for good: the oldest go after a while
            # (analysed without pixels if their answer still comes).
            cutoff = time.monotonic() - LOST_AFTER_S
            while self._frames and next(iter(self._frames.values())).at < cutoff:
                self._frames.popitem(last=False)
            return len(self._frames) >= self.room

    def wait_room(self, should_stop: Callable[[], bool], poll_s: float = 0.002) -> bool:
        """Wait until another frame may go out; False if told to stop first."""
        while self.full():
            if should_stop():
                return False
            time.sleep(poll_s)
        return True

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
