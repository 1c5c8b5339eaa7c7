"""The shared-memory frame ring, across real processes."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import numpy as np

from streamd.frames.ring import FrameRing, RingReader, sweep_segments

from .util import shm_segments


def _writer(name: str, n_frames: int, block: bool) -> None:
    ring = FrameRing(name, 3, 8, 16)
    try:
        for i in range(n_frames):
            if block:
                ring.wait_free(1, lambda: False)
            ring.write(np.full((8, 16, 3), i % 256, dtype=np.uint8))
        if block:  # keep the segment until the reader is done
            ring.wait_free(ring.slots, lambda: False)
        else:
            time.sleep(0.5)
    finally:
        ring.close()


def _attach(name: str, timeout: float = 10.0) -> RingReader:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return RingReader(name, 3, 8, 16)
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def test_block_policy_delivers_every_frame_in_order_across_processes() -> None:
    name = "streamd_test_ring_block"
    proc = mp.get_context("spawn").Process(target=_writer, args=(name, 50, True))
    proc.start()
    reader = _attach(name)
    got = []
    seq = 0
    while seq < 50:
        frame = reader.read(seq % 3, seq)
        if frame is None:  # not written yet
            time.sleep(0.001)
            continue
        got.append(int(frame[0, 0, 0]))
        reader.release(seq)
        seq += 1
    proc.join(10)
    reader.close()
    assert proc.exitcode == 0
    assert got == list(range(50))
    assert not Path(f"/dev/shm/{name}").exists()


def test_overwritten_slot_is_detected_not_read_torn() -> None:
    ring = FrameRing("streamd_test_ring_torn", 2, 4, 4)
    reader = RingReader(ring.name, 2, 4, 4)
    try:
        slot0, seq0 = ring.write(np.zeros((4, 4, 3), np.uint8))
        ring.write(np.ones((4, 4, 3), np.uint8))
        frame = reader.read(slot0, seq0)
        assert frame is not None and frame.max() == 0
        ring.write(np.full((4, 4, 3), 2, np.uint8))  # laps slot 0
        assert reader.read(slot0, seq0) is None
        assert ring.free_slots() == 2 - 3  # latest policy never waits; block would have
    finally:
        reader.close()
        ring.close()


def test_attacher_exit_does_not_unlink_and_writer_close_does() -> None:
    ring = FrameRing("streamd_test_ring_owner", 2, 4, 4)
    try:
        ctx = mp.get_context("spawn")
        p = ctx.Process(target=_attach_and_exit, args=(ring.name,))
        p.start()
        p.join(20)
        assert p.exitcode == 0
        # On Python < 3.13 a tracked attacher would have unlinked it at exit.
        assert Path(f"/dev/shm/{ring.name}").exists()
    finally:
        ring.close()
    assert not Path(f"/dev/shm/{ring.name}").exists()


def _attach_and_exit(name: str) -> None:
    RingReader(name, 2, 4, 4).close()


def test_sweep_removes_a_dead_writers_segments() -> None:
    before = shm_segments()
    ring = FrameRing("streamd_deadrun_0_1_1", 2, 4, 4)
    ring.release_views()
    ring.shm.close()  # simulate a writer that died without unlinking
    assert "streamd_deadrun_0_1_1" in shm_segments()
    assert sweep_segments("deadrun") == ["streamd_deadrun_0_1_1"]
    assert shm_segments() == before


def test_unwrite_returns_the_slot_of_a_frame_nobody_was_told_about() -> None:
    ring = FrameRing("streamd_test_ring_unwrite", 2, 4, 4)
    reader = RingReader(ring.name, 2, 4, 4)
    try:
        ring.write(np.zeros((4, 4, 3), np.uint8))
        ring.write(np.ones((4, 4, 3), np.uint8))  # its descriptor could not be sent
        assert ring.free_slots() == 0
        ring.unwrite()
        assert ring.free_slots() == 1  # a block/oldest writer is not stuck on it
        slot, seq = ring.write(np.full((4, 4, 3), 7, np.uint8))
        assert seq == 1
        frame = reader.read(slot, seq)
        assert frame is not None and int(frame.max()) == 7
    finally:
        reader.close()
        ring.close()


def test_a_claimed_slot_is_lapped_around_not_over() -> None:
    """The detector reads a frame in place: a fast `latest` writer skips its slot."""
    ring = FrameRing("streamd_test_ring_claim", 3, 4, 4)
    reader = RingReader(ring.name, 3, 4, 4)
    try:
        slot, seq = ring.write(np.full((4, 4, 3), 5, np.uint8))
        view = reader.claim(slot, seq)
        assert view is not None
        used = [ring.write(np.full((4, 4, 3), 9, np.uint8))[0] for _ in range(6)]
        assert slot not in used and sorted(set(used)) == sorted({0, 1, 2} - {slot})
        assert reader.intact(slot, seq) and int(view.max()) == 5  # never torn
        reader.unclaim(slot)
        del view
        assert slot in {ring.write(np.zeros((4, 4, 3), np.uint8))[0] for _ in range(3)}
        assert not reader.intact(slot, seq)  # unclaimed: lapped as before
    finally:
        reader.close()
        ring.close()
