"""streamd: real-time video stream analysis daemon."""

__version__ = "0.1.0"
