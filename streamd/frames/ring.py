"""A single-writer frame ring in POSIX shared memory.

Layout: an int64 header ``[write_count, read_count, slot_seq[0..n-1]]``
followed by ``n`` BGR frames of one fixed shape. The writer marks a slot
``-1`` while it writes and stamps the frame's sequence number when done; a
reader copies the slot and checks the stamp before and after, so a frame the
writer overwrote mid-copy is detected (seqlock) instead of read torn.

``read_count`` is advanced by the reader after it copied a frame; the
``block`` drop policy makes the writer wait on it, so no frame is lost.

Ownership: the writer creates and unlinks its segment. Attachers never
register with the resource tracker (on Python < 3.13 that would unlink the
segment when the attacher exits). The supervisor sweeps leftovers of dead
writers by name prefix.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import numpy as np
import numpy.typing as npt

from streamd.types import FrameRef

_HEADER_FIELDS = 2  # write_count, read_count
_ALIGN = 64
_SHM_DIR = Path("/dev/shm")

Frame = npt.NDArray[np.uint8]


def segment_prefix(run_id: str) -> str:
    return f"streamd_{run_id}_"


def sweep_segments(run_id: str, sub_prefix: str = "") -> list[str]:
    """Unlink this run's segments (optionally only one writer's) left in /dev/shm."""
    removed: list[str] = []
    if not _SHM_DIR.is_dir():
        return removed
    for path in _SHM_DIR.glob(segment_prefix(run_id) + sub_prefix + "*"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
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
    header_bytes = (_HEADER_FIELDS + slots) * 8
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
        self.data: npt.NDArray[np.uint8] = np.ndarray(
            (slots, height, width, 3), dtype=np.uint8, buffer=shm.buf, offset=offset
        )

    @property
    def name(self) -> str:
        return self.shm.name

    def release_views(self) -> None:
        # numpy views must go before the mmap can close.
        del self.header
        del self.data


class FrameRing(_RingView):
    """The writer's side: creates, fills and finally unlinks the segment."""

    def __init__(self, name: str, slots: int, height: int, width: int) -> None:
        _, size = _layout(slots, height, width)
        super().__init__(_open_untracked(name, create=True, size=size), slots, height, width)
        self.header[:] = 0
        self.header[_HEADER_FIELDS:] = -1

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
        slot = seq % self.slots
        stamp = _HEADER_FIELDS + slot
        self.header[stamp] = -1
        self.data[slot] = frame
        self.header[stamp] = seq
        self.header[0] = seq + 1
        return slot, seq

    def unwrite(self) -> None:
        """Take back the last write, whose descriptor could not be sent.

        No reader knows of that frame, so its slot may be reused at once; without
        this a ``block``/``oldest`` writer would wait forever for its release.
        """
        self.header[0] = int(self.header[0]) - 1

    def close(self) -> None:
        self.release_views()
        self.shm.close()
        # By path, not shm.unlink(): that would also unregister a name we
        # never left registered with the resource tracker.
        with contextlib.suppress(FileNotFoundError):
            (_SHM_DIR / self.shm.name.lstrip("/")).unlink()


class RingReader(_RingView):
    """The reader's side: attaches without tracking, copies frames out."""

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
    """The detector process's readers, one per stream, re-attached when a stream's writer
    moves to a new segment (restart, resolution change)."""

    def __init__(self) -> None:
        self._readers: dict[str, RingReader] = {}

    def _reader(self, ref: FrameRef) -> RingReader | None:
        reader = self._readers.get(ref.stream)
        if reader is not None and reader.name == ref.ring:
            return reader
        if reader is not None:
            reader.close()
            del self._readers[ref.stream]
        try:
            reader = RingReader(ref.ring, ref.slots, ref.height, ref.width)
        except FileNotFoundError:
            return None  # the writer restarted or resized since
        self._readers[ref.stream] = reader
        return reader

    def view(self, ref: FrameRef) -> Frame | None:
        reader = self._reader(ref)
        return None if reader is None else reader.view(ref.slot, ref.seq)

    def intact(self, ref: FrameRef) -> bool:
        reader = self._readers.get(ref.stream)
        return reader is not None and reader.name == ref.ring and reader.intact(ref.slot, ref.seq)

    def release(self, ref: FrameRef) -> None:
        reader = self._reader(ref)
        if reader is not None:
            reader.release(ref.seq)

    def close(self) -> None:
        for reader in self._readers.values():
            with contextlib.suppress(Exception):
                reader.close()
        self._readers.clear()


def ring_name(run_id: str, stream_index: int, generation: int) -> str:
    # pid keeps names unique across restarts of one stream's worker.
    return f"{segment_prefix(run_id)}{stream_index}_{os.getpid()}_{generation}"
