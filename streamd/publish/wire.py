"""Event contract v1 on the wire: multipart ``[topic, JSON payload, (JPEG)]``.

Topics: ``det.<stream>``, ``status.<stream>``, ``heartbeat`` (and later
``track.<stream>``, ``alert.<stream>``). docs/events.md documents every field;
``events.schema.json`` beside this file is the machine-checkable form.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class Event:
    """One received message."""

    topic: str
    payload: dict[str, Any]
    attachment: bytes | None = None

    @property
    def type(self) -> str:
        return str(self.payload.get("type", ""))

    @property
    def stream(self) -> str | None:
        s = self.payload.get("stream")
        return None if s is None else str(s)

    @property
    def seq(self) -> int:
        return int(self.payload["seq"])

    @property
    def epoch(self) -> int:
        return int(self.payload["epoch"])

    @property
    def kind(self) -> str:
        """The topic kind (``det``, ``status``, ``heartbeat``...) that ``seq`` counts within."""
        return self.topic.split(".", 1)[0]


def topic_for(kind: str, stream: str | None) -> str:
    return kind if stream is None else f"{kind}.{stream}"


def encode(topic: str, payload: dict[str, Any], attachment: bytes | None = None) -> list[bytes]:
    # allow_nan=False: NaN/Infinity are not JSON and break other languages' parsers.
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    parts = [topic.encode(), body]
    if attachment is not None:
        parts.append(attachment)
    return parts


def decode(parts: list[bytes]) -> Event:
    if len(parts) not in (2, 3):
        raise ValueError(f"expected 2 or 3 message parts, got {len(parts)}")
    payload = json.loads(parts[1])
    if not isinstance(payload, dict):
        raise ValueError("payload is not a JSON object")
    return Event(parts[0].decode(), payload, parts[2] if len(parts) == 3 else None)


@cache
def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) every published payload validates against."""
    text = resources.files("streamd.publish").joinpath("events.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema
