"""Shared pieces of the pipeline schema: the strict base model, the error type, small types."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict

DropPolicy = Literal["latest", "oldest", "block"]
SourceKind = Literal["file", "rtsp", "http", "webcam"]


class ConfigError(Exception):
    """A pipeline file that cannot be used; ``problems`` are (key path, reason)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {path or '<root>'}: {reason}" for path, reason in problems]
        super().__init__("\n".join(lines))


class _Strict(BaseModel):
    # NaN and infinities are refused as what they are ("a finite number"), not by a bound
    # they happen to fail ("max_fps: .nan" read "should be at most 1000").
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a bind address, brackets allowed) is this machine only:
    ``localhost`` by name or a loopback IP literal. Any other name is not, whatever it
    looks like (``127.example.com`` is whatever DNS says, now or later)."""
    host = host.removeprefix("[").removesuffix("]").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def source_kind(url: str) -> SourceKind:
    lower = url.lower()
    if lower.startswith(("rtsp://", "rtsps://")):
        return "rtsp"
    if lower.startswith(("http://", "https://")):
        return "http"
    if url.isdigit() or url.startswith("/dev/video"):
        return "webcam"
    return "file"
