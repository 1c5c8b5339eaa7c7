"""Pick and build the detector backend named by the configuration."""

from __future__ import annotations

import logging

from streamd.config import ModelConfig
from streamd.detect.base import Detector

log = logging.getLogger(__name__)


def create_detector(cfg: ModelConfig) -> Detector:
    """Build the backend; ``auto`` takes the fastest one present and says which."""
    # Only the ultralytics/torch backend exists so far; tensorrt and onnx slot in here.
    from streamd.detect.ultralytics_backend import UltralyticsDetector

    detector = UltralyticsDetector(cfg)
    detector.warmup()  # the first call builds/fuses the model: keep it out of frame latency
    log.info(
        "detector backend=%s (asked %s) device=%s weights=%s classes=%s",
        detector.backend,
        cfg.backend,
        detector.device,
        cfg.weights,
        detector.names,
    )
    return detector
