"""Detector backends behind one Protocol; GPU code lives here only."""

from streamd.detect.base import Detector, DetectorError
from streamd.detect.factory import create_detector

__all__ = ["Detector", "DetectorError", "create_detector"]
