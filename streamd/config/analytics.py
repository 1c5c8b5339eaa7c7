"""Analytics sections: zones, lines, their rules (per stream), track events and the journal."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from streamd.config.base import _Strict

# Pixel coordinates up to this (16K frames and then some): a zone far outside any frame is
# a typo, and never fires.
MAX_PIXEL = 16384.0
Point = Annotated[
    list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=2, max_length=2)
]

ZONE_RULE = re.compile(r"^(enter|exit|dwell>=(\d+(?:\.\d+)?)s?|occupancy>=(\d+))$")
LINE_RULES = ("in", "out")
ANCHORS = ("bottom_center", "center", "top_center")


class _Region(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    normalized: bool = Field(
        False, description="Coordinates are fractions (0..1) of the frame's width and height."
    )
    classes: list[str] | None = Field(None, description="Only these class names count.")
    min_conf: float = Field(0.0, ge=0.0, le=1.0, description="Detections below this ignored.")
    min_track_age_s: float = Field(
        0.0, ge=0.0, description="A track counts only once it has been seen this long."
    )
    anchor: Literal["bottom_center", "center", "top_center"] = Field(
        "bottom_center", description="The point of the box that must be in the zone / cross."
    )
    debounce_s: float = Field(
        0.3,
        ge=0.0,
        le=60.0,
        description="A track must stay on its new side this long before it counts as moved.",
    )
    cooldown_s: float = Field(
        0.0, ge=0.0, description="The same rule fires for the same track at most this often."
    )
    snapshot: bool = Field(False, description="Attach a JPEG crop of the object to alerts.")

    def _check_points(self, points: list[list[float]]) -> None:
        if self.normalized and any(not 0.0 <= v <= 1.0 for p in points for v in p):
            raise ValueError("normalized coordinates must be within 0..1")
        # Past the frame's edges is fine (a line across the whole picture, a zone to its
        # border): the frame clips them.
        if any(not -MAX_PIXEL <= v <= MAX_PIXEL for p in points for v in p):
            raise ValueError(f"pixel coordinates must be within -{MAX_PIXEL:g}..{MAX_PIXEL:g}")


class ZoneConfig(_Region):
    polygon: Annotated[list[Point], Field(min_length=3)]
    alert_on: list[str] = Field(
        default_factory=list, description="enter, exit, dwell>=SECONDS, occupancy>=N."
    )

    @field_validator("alert_on")
    @classmethod
    def _rules(cls, rules: list[str]) -> list[str]:
        bad = [r for r in rules if not ZONE_RULE.match(r)]  # each named, not the first only
        if bad:
            raise ValueError(
                f"unknown rule{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))}: use "
                "enter, exit, dwell>=SECONDS (e.g. dwell>=30s) or occupancy>=N"
            )
        return rules

    @model_validator(mode="after")
    def _coords(self) -> ZoneConfig:
        self._check_points(self.polygon)
        if _on_one_line(self.polygon):
            raise ValueError("the polygon encloses no area (its points are on one line)")
        return self


class LineConfig(_Region):
    points: Annotated[list[Point], Field(min_length=2, max_length=2)]
    alert_on: list[Literal["in", "out"]] = Field(
        default_factory=list,
        description="in: crossed to the right of the line's direction (first → second point, "
        "as seen on screen); out: the other way.",
    )

    @model_validator(mode="after")
    def _coords(self) -> LineConfig:
        self._check_points(self.points)
        if self.points[0] == self.points[1]:
            raise ValueError("a line needs two different points")
        return self


def _on_one_line(points: list[list[float]]) -> bool:
    """Whether every point lies on the line through the first and another (or all are one
    point): such a polygon has no inside. A crossed one (corners out of order) has."""
    (x0, y0), rest = points[0], points[1:]
    far = next(((x, y) for x, y in rest if (x, y) != (x0, y0)), None)
    if far is None:
        return True
    dx, dy = far[0] - x0, far[1] - y0
    return all(dx * (y - y0) - dy * (x - x0) == 0 for x, y in rest)


class TracksConfig(_Strict):
    update_interval_s: float = Field(
        1.0, gt=0.0, description="track.<stream> update events per track at most this often."
    )


class JournalConfig(_Strict):
    path: str | None = Field(
        None,
        description="SQLite file of every alert (default: "
        "$XDG_STATE_HOME/streamd/<pipeline file name>.alerts.sqlite).",
    )
    synchronous: Literal["full", "normal"] = Field(
        "full",
        description="full: every alert is fsynced before it is published (survives power "
        "loss); normal: survives a crash of streamd, may lose the last alerts on power loss.",
    )
    max_age_days: float = Field(30.0, gt=0.0, description="Alerts older than this are deleted.")
    max_mb: float = Field(512.0, gt=0.0, description="Oldest alerts deleted beyond this size.")
    endpoint: str = Field(
        "tcp://127.0.0.1:5557",
        description="ZeroMQ REP endpoint for replay and state requests.",
    )
