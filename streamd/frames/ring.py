"""A single-writer frame ring in POSIX shared memory.

Layout: an int64 header ``[write_count, read_count, slot_seq[0..n-1],
claimed[0..n-1]]`` followed by ``n`` BGR frames of one fixed shape. The
writer marks a slot ``-1`` while it writes and stamps the frame's sequence
number when done; a reader checks the stamp before and after it used the slot,
so a frame the writer overwrote meanwhile is detected (seqlock) instead of
read torn. A reader that uses a slot in place (the detector letterboxes
straight from it) claims it first, and the writer skips claimed slots, so a
fast ``latest`` writer laps around a frame being detected instead of over it.

``read_count`` is advanced by the reader once it is done with a frame; the
``block`` drop policy makes the writer wait on it, so no frame is lost.

Ownership: the writer creates and unlinks its segment. Attachers never
register with the resource tracker (on Python < 3.13 that would unlink the
segment when the attacher exits). The supervisor sweeps leftovers of dead
writers by name prefix.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import numpy as np
import numpy.typing as npt

from streamd.types import FrameRef

log = logging.getLogger(__name__)

_HEADER_FIELDS = 2  # write_count, read_count
_ALIGN = 64
_SHM_DIR = Path("/dev/shm")

Frame = npt.NDArray[np.uint8]


def new_run_id() -> str:
    """A supervisor's run id: its pid and 48 random bits, in hex (at most 20 characters).

    The stale-run sweep unlinks every segment named with a dead supervisor's run id;
    with a reused pid, only the random part keeps it off a live daemon's rings, so it
    must not collide by chance (16 bits did, one time in 65,536). Segment names stay
    near 50 characters, far below the 255 a POSIX shm name may have."""
    return f"{os.getpid():x}{secrets.token_hex(6)}"


def segment_prefix(run_id: str) -> str:
    return f"streamd_{run_id}_"


def sweep_segments(run_id: str, sub_prefix: str = "") -> list[str]:
    """Unlink this run's segments (optionally only one writer's) left in /dev/shm."""
    removed: list[str] = []
    if not _SHM_DIR.is_dir():
        return removed
    for path in _SHM_DIR.glob(segment_prefix(run_id) + sub_prefix + "*"):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except PermissionError:  # another user's file under our name (/dev/shm is sticky)
            log.warning("cannot remove %s: not ours", path)
            continue
        removed.append(path.name)
    return removed


def _open_untracked(name: str, create: bool, size: int = 0) -> shared_memory.SharedMemory:
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, create=create, size=size, track=False)
    shm = shared_memory.SharedMemory(name=name, create=create, size=size)
    # Python < 3.13 registers every segment with the resource tracker, which
    # unlinks it when this process exits; ownership is explicit here instead.
    resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    return shm


def _layout(slots: int, height: int, width: int) -> tuple[int, int]:
    header_bytes = (_HEADER_FIELDS + 2 * slots) * 8
    data_offset = (header_bytes + _ALIGN - 1) // _ALIGN * _ALIGN
    return data_offset, data_offset + slots * height * width * 3


class _RingView:
    def __init__(
        self, shm: shared_memory.SharedMemory, slots: int, height: int, width: int
    ) -> None:
        self.shm = shm
        self.slots = slots
        self.shape = (height, width, 3)
        offset, _ = _layout(slots, height, width)
        self.header: npt.NDArray[np.int64] = np.ndarray(
            (_HEADER_FIELDS + slots,), dtype=np.int64, buffer=shm.buf
        )
        self.claimed: npt.NDArray[np.int64] = np.ndarray(
            (slots,), dtype=np.int64, buffer=shm.buf, offset=(_HEADER_FIELDS + slots) * 8
        )
        self.data: npt.NDArray[np.uint8] = np.ndarray(
            (slots, height, width, 3), dtype=np.uint8, buffer=shm.buf, offset=offset
        )

    @property
    def name(self) -> str:
        return self.shm.name

    def release_views(self) -> None:
        # numpy views must go before the mmap can close.
        del self.header
        del self.claimed
        del self.data


class FrameRing(_RingView):
    """The writer's side: creates, fills and finally unlinks the segment."""

    def __init__(
        self, name: str, slots: int, height: int, width: int, skip_claimed: bool = True
    ) -> None:
        """``skip_claimed``: go around slots a reader holds (``latest``). A ``block`` or
        ``oldest`` writer only writes released slots and keeps strict slot order."""
        _, size = _layout(slots, height, width)
        super().__init__(_open_untracked(name, create=True, size=size), slots, height, width)
        self._skip_claimed = skip_claimed
        self.header[:] = 0
        self.header[_HEADER_FIELDS:] = -1
        self.claimed[:] = 0
        self._next = 0  # the slot to write next, unless a reader holds it
        self._last = 0

    def free_slots(self) -> int:
        return self.slots - (int(self.header[0]) - int(self.header[1]))

    def wait_free(
        self,
        count: int,
        should_stop: Callable[[], bool],
        timeout_s: float | None = None,
        poll_s: float = 0.002,
    ) -> bool:
        """Wait until the reader has released ``count`` slots; False on stop or timeout.

        ``count=1`` is block-policy back-pressure; ``count=slots`` waits for the
        reader to have taken every frame written.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.free_slots() < count:
            if should_stop() or (deadline is not None and time.monotonic() > deadline):
                return False
            time.sleep(poll_s)
        return True

    def write(self, frame: Frame) -> tuple[int, int]:
        """Copy ``frame`` into the next slot; return (slot, seq)."""
        seq = int(self.header[0])
        slot = self._free_slot()
        self._last, self._next = slot, (slot + 1) % self.slots
        stamp = _HEADER_FIELDS + slot
        self.header[stamp] = -1
        self.data[slot] = frame
        self.header[stamp] = seq
        self.header[0] = seq + 1
        return slot, seq

    def _free_slot(self) -> int:
        if not self._skip_claimed:
            return self._next
        for k in range(self.slots):
            slot = (self._next + k) % self.slots
            if self.claimed[slot] == 0:
                return slot
        return self._next  # every slot held: lap anyway (the readers see it torn)

    def unwrite(self) -> None:
        """Take back the last write, whose descriptor could not be sent.

        No reader knows of that frame, so its slot may be reused at once; without
        this a ``block``/``oldest`` writer would wait forever for its release.
        """
        self.header[0] = int(self.header[0]) - 1
        self._next = self._last

    def close(self) -> None:
        self.release_views()
        self.shm.close()
        # By path, not shm.unlink(): that would also unregister a name we
        # never left registered with the resource tracker.
        with contextlib.suppress(FileNotFoundError):
            (_SHM_DIR / self.shm.name.lstrip("/")).unlink()


class RingReader(_RingView):
    """The reader's side: attaches without tracking; frames used in place or copied out."""

    def __init__(self, name: str, slots: int, height: int, width: int) -> None:
        super().__init__(_open_untracked(name, create=False), slots, height, width)

    def read(self, slot: int, seq: int) -> Frame | None:
        """A copy of frame ``seq`` from ``slot``, or None if it was overwritten."""
        view = self.view(slot, seq)
        if view is None:
            return None
        frame: Frame = view.copy()
        return frame if self.intact(slot, seq) else None

    def view(self, slot: int, seq: int) -> Frame | None:
        """Frame ``seq`` in place (no copy), or None if already overwritten; whoever reads
        it must check :meth:`intact` afterwards (the writer may lap a ``latest`` ring)."""
        if not self.intact(slot, seq):
            return None
        frame: Frame = self.data[slot]
        return frame

    def claim(self, slot: int, seq: int) -> Frame | None:
        """Like :meth:`view`, and the writer keeps off the slot until :meth:`unclaim`."""
        self.claimed[slot] = 1
        frame = self.view(slot, seq)
        if frame is None:
            self.claimed[slot] = 0
        return frame

    def unclaim(self, slot: int) -> None:
        self.claimed[slot] = 0

    def intact(self, slot: int, seq: int) -> bool:
        """Slot ``slot`` still holds frame ``seq``, completely written."""
        return bool(self.header[_HEADER_FIELDS + slot] == seq)

    def release(self, seq: int) -> None:
        """Mark frames up to ``seq`` consumed (frees slots for a blocking writer)."""
        if seq + 1 > self.header[1]:
            self.header[1] = seq + 1

    def close(self) -> None:
        self.release_views()
        self.shm.close()


class RingReaders:
    """The detector process's readers, keyed by segment; a stream's writer moves to a new
    segment on a restart or a resolution change.

    A reader its stream has moved away from, or that nothing was read from for
    ``idle_s`` (a stream that ended), is closed at :meth:`sweep` (after a batch: the
    detector may hold views into it until then).
    """

    def __init__(self, idle_s: float = 30.0) -> None:
        self._readers: dict[str, RingReader] = {}
        self._current: dict[str, str] = {}  # stream → its newest segment
        self._used: dict[str, float] = {}  # segment → monotonic time of its last claim
        self._idle_s = idle_s

    def claim(self, ref: FrameRef) -> Frame | None:
        """The frame in place, its slot claimed; or None if it is gone already."""
        reader = self._readers.get(ref.ring)
        if reader is None:
            try:
                reader = RingReader(ref.ring, ref.slots, ref.height, ref.width)
            except FileNotFoundError:
                return None  # the writer restarted or resized since
            self._readers[ref.ring] = reader
            self._current[ref.stream] = ref.ring
        self._used[ref.ring] = time.monotonic()
        return reader.claim(ref.slot, ref.seq)

    def done(self, ref: FrameRef) -> bool:
        """Unclaim a frame used in place; True if it stayed intact all along."""
        reader = self._readers.get(ref.ring)
        if reader is None:
            return False
        intact = reader.intact(ref.slot, ref.seq)
        reader.unclaim(ref.slot)
        return intact

    def release(self, ref: FrameRef) -> None:
        """Hand the frame's slot back to a block/oldest writer (if its ring is attached:
        a frame dropped before it was ever read attaches nothing)."""
        reader = self._readers.get(ref.ring)
        if reader is None:
            try:
                reader = RingReader(ref.ring, ref.slots, ref.height, ref.width)
            except FileNotFoundError:
                return
            reader.release(ref.seq)
            reader.close()
            return
        reader.release(ref.seq)

    def sweep(self) -> None:
        """Close readers of segments left behind or idle (no views are held now)."""
        current = set(self._current.values())
        idle = time.monotonic() - self._idle_s
        for name in list(self._readers):
            if name not in current or self._used.get(name, 0.0) < idle:
                self._used.pop(name, None)
                with contextlib.suppress(Exception):
                    self._readers.pop(name).close()

    def close(self) -> None:
        for reader in self._readers.values():
            with contextlib.suppress(Exception):
                reader.close()
        self._readers.clear()


def ring_name(run_id: str, stream_index: int, generation: int) -> str:
    # pid keeps names unique across restarts of one stream's worker.
    return f"{segment_prefix(run_id)}{stream_index}_{os.getpid()}_{generation}"
