"""The whole pipeline file: every section and the list of streams."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from streamd.config.analytics import JournalConfig, TracksConfig
from streamd.config.base import _Strict
from streamd.config.batching import BatchingConfig
from streamd.config.http import HttpConfig
from streamd.config.model import ModelConfig
from streamd.config.overlay import OverlayConfig
from streamd.config.publish import PublishConfig
from streamd.config.stream import StreamConfig
from streamd.config.supervisor import SupervisorConfig
from streamd.config.tracker import TrackerConfig


class PipelineConfig(_Strict):
    model: ModelConfig = Field(default_factory=lambda: ModelConfig())
    tracker: TrackerConfig = Field(default_factory=lambda: TrackerConfig())
    batching: BatchingConfig = Field(default_factory=lambda: BatchingConfig())
    publish: PublishConfig = Field(default_factory=lambda: PublishConfig())
    http: HttpConfig = Field(default_factory=lambda: HttpConfig())
    supervisor: SupervisorConfig = Field(default_factory=lambda: SupervisorConfig())
    tracks: TracksConfig = Field(default_factory=lambda: TracksConfig())
    overlay: OverlayConfig = Field(default_factory=lambda: OverlayConfig())
    journal: JournalConfig = Field(default_factory=lambda: JournalConfig())
    streams: Annotated[list[StreamConfig], Field(min_length=1)]

    @field_validator("streams")
    @classmethod
    def _unique_ids(cls, streams: list[StreamConfig]) -> list[StreamConfig]:
        seen: set[str] = set()
        for s in streams:
            if s.id in seen:
                raise ValueError(f"duplicate stream id {s.id!r}")
            seen.add(s.id)
        return streams
