"""Pipeline configuration: strict pydantic schema and safe YAML loading.

A bad file is refused before anything starts, with the dotted path of the
offending key and the reason (see :class:`ConfigError`).

One module per section (``model``, ``tracker``, ``batching``, ``publish``, ``http``,
``overlay``, ``supervisor``, ``stream``, ``clips``, ``analytics``, ``security``, ``log``), the
whole file in ``pipeline``, the shared strict base in ``base`` and YAML loading in
``loader``. Nothing here imports the stages it configures. Import from ``streamd.config``:
every name is re-exported.
"""

from streamd.config.analytics import (
    ANCHORS,
    LINE_RULES,
    ZONE_RULE,
    JournalConfig,
    LineConfig,
    Point,
    TracksConfig,
    ZoneConfig,
)
from streamd.config.base import ConfigError, DropPolicy, SourceKind, source_kind
from streamd.config.batching import BatchingConfig
from streamd.config.clips import ClipsConfig
from streamd.config.http import HttpConfig
from streamd.config.loader import load_config, parse_config, resolve_paths
from streamd.config.log import LogConfig, LogFormat
from streamd.config.model import ModelConfig
from streamd.config.outputs import (
    MqttConfig,
    NatsConfig,
    OutputsConfig,
    WebhookConfig,
)
from streamd.config.overlay import OverlayConfig
from streamd.config.pipeline import PipelineConfig
from streamd.config.publish import PublishConfig
from streamd.config.security import (
    CurveConfig,
    SecurityConfig,
    reachable_without_keys,
    resolve_key_paths,
)
from streamd.config.stream import STREAM_ID_PATTERN, ReconnectConfig, StreamConfig
from streamd.config.supervisor import SupervisorConfig
from streamd.config.tracker import TrackerConfig

__all__ = [
    "ANCHORS",
    "LINE_RULES",
    "STREAM_ID_PATTERN",
    "ZONE_RULE",
    "BatchingConfig",
    "ClipsConfig",
    "ConfigError",
    "CurveConfig",
    "DropPolicy",
    "HttpConfig",
    "JournalConfig",
    "LineConfig",
    "LogConfig",
    "LogFormat",
    "ModelConfig",
    "MqttConfig",
    "NatsConfig",
    "OutputsConfig",
    "OverlayConfig",
    "PipelineConfig",
    "Point",
    "PublishConfig",
    "ReconnectConfig",
    "SecurityConfig",
    "SourceKind",
    "StreamConfig",
    "SupervisorConfig",
    "TrackerConfig",
    "TracksConfig",
    "WebhookConfig",
    "ZoneConfig",
    "load_config",
    "parse_config",
    "reachable_without_keys",
    "resolve_key_paths",
    "resolve_paths",
    "source_kind",
]
