"""The supervisor's control plane: the status board and its HTTP endpoint."""

from streamd.control.board import StatusBoard, connect_endpoint
from streamd.control.http import ControlServer

__all__ = ["ControlServer", "StatusBoard", "connect_endpoint"]
