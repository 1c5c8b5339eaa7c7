"""A camera's own per-frame work after detection, in that camera's process.

The detector process sends each camera the boxes of its frames; the camera's
process tracks them, runs its analytics, journals and publishes its events,
feeds its live view and meters itself. Cameras run this in parallel, one
process each (Frigate's camera processes work the same way).
"""

from streamd.analysis.loop import AnalysisSpec, StreamAnalysis

__all__ = ["AnalysisSpec", "StreamAnalysis"]
