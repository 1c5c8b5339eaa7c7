"""Compatibility shim: the analytics YAML models now live in :mod:`streamd.config.analytics`.

Kept only because ``streamd/view/draw.py`` still imports from here; import from
``streamd.config`` instead.
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

__all__ = [
    "ANCHORS",
    "LINE_RULES",
    "ZONE_RULE",
    "JournalConfig",
    "LineConfig",
    "Point",
    "TracksConfig",
    "ZoneConfig",
]
