"""One tracker instance per stream; IDs belong to the instance, never shared."""

from streamd.track.tracker import StreamTracker

__all__ = ["StreamTracker"]
