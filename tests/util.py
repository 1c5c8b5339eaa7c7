"""Small test utilities with no fixtures."""

from __future__ import annotations

import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shm_segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("streamd_*")}
