"""The whole pipeline file: every section and the list of streams."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator

from streamd.config.analytics import JournalConfig, TracksConfig
from streamd.config.base import _Strict
from streamd.config.batching import BatchingConfig
from streamd.config.http import HttpConfig
from streamd.config.log import LogConfig
from streamd.config.model import ModelConfig
from streamd.config.outputs import OutputsConfig
from streamd.config.overlay import OverlayConfig
from streamd.config.publish import PublishConfig
from streamd.config.security import SecurityConfig, reachable_without_keys
from streamd.config.shard import ShardConfig
from streamd.config.stream import StreamConfig
from streamd.config.supervisor import SupervisorConfig
from streamd.config.tracker import TrackerConfig


class PipelineConfig(_Strict):
    # First: fields validate in order, and the publish and journal checks read it.
    security: SecurityConfig = Field(default_factory=lambda: SecurityConfig())
    model: ModelConfig = Field(default_factory=lambda: ModelConfig())
    tracker: TrackerConfig = Field(default_factory=lambda: TrackerConfig())
    batching: BatchingConfig = Field(default_factory=lambda: BatchingConfig())
    publish: PublishConfig = Field(default_factory=lambda: PublishConfig())
    http: HttpConfig = Field(default_factory=lambda: HttpConfig())
    supervisor: SupervisorConfig = Field(default_factory=lambda: SupervisorConfig())
    tracks: TracksConfig = Field(default_factory=lambda: TracksConfig())
    overlay: OverlayConfig = Field(default_factory=lambda: OverlayConfig())
    journal: JournalConfig = Field(default_factory=lambda: JournalConfig())
    log: LogConfig = Field(default_factory=lambda: LogConfig())
    outputs: OutputsConfig = Field(default_factory=lambda: OutputsConfig())
    shard: ShardConfig | None = Field(
        None, description="One instance of a fleet: it runs the streams its shard owns."
    )
    streams: Annotated[list[StreamConfig], Field(min_length=1)]

    @field_validator("publish", "journal")
    @classmethod
    def _keys_off_loopback(
        cls, section: PublishConfig | JournalConfig, info: ValidationInfo
    ) -> PublishConfig | JournalConfig:
        security = info.data.get("security")  # absent if it was invalid: reported already
        open_to_others = reachable_without_keys(section.endpoint)
        if security is not None and security.curve is None and open_to_others:
            raise ValueError(
                f"endpoint {section.endpoint} is reachable from other machines: set "
                "security.curve (server_secret, authorized_clients), or bind to 127.0.0.1 "
                "(events and alerts would otherwise go to anyone who connects)"
            )
        return section

    @field_validator("streams")
    @classmethod
    def _unique_ids(cls, streams: list[StreamConfig]) -> list[StreamConfig]:
        seen: set[str] = set()
        for s in streams:
            if s.id in seen:
                raise ValueError(f"duplicate stream id {s.id!r}")
            seen.add(s.id)
        return streams
