"""Frames in shared memory: fixed-size rings, one per stream, written by its source worker."""

from streamd.frames.ring import FrameRing, RingReader, segment_prefix, sweep_segments

__all__ = ["FrameRing", "RingReader", "segment_prefix", "sweep_segments"]
