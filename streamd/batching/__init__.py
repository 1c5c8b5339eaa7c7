"""The batcher: fresh frames from every stream into detector-sized batches, drops counted."""

from streamd.batching.batcher import Batcher, DropCounters

__all__ = ["Batcher", "DropCounters"]
