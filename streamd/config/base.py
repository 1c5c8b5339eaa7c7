"""Shared pieces of the pipeline schema: the strict base model, the error type, small types."""

from __future__ import annotations

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
    model_config = ConfigDict(extra="forbid", frozen=True)


def source_kind(url: str) -> SourceKind:
    lower = url.lower()
    if lower.startswith(("rtsp://", "rtsps://")):
        return "rtsp"
    if lower.startswith(("http://", "https://")):
        return "http"
    if url.isdigit() or url.startswith("/dev/video"):
        return "webcam"
    return "file"
