"""Tracking quality, measured: synthetic scenes with ground truth, the real daemon on them,
MOT metrics from ``trackers.eval`` (CLEAR, Identity, HOTA). ``streamd eval-tracking``."""

from streamd.evaluation.metrics import Scores, TrackedFrame, score

__all__ = ["Scores", "TrackedFrame", "score"]
