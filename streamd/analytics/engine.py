"""Per-stream analytics: track lifecycle, zones (enter/exit/dwell/occupancy), line crossings.

Pure logic over (tracked objects, capture time) so it is tested with synthetic
tracks on exact paths. Times are the frames' capture times, so dropped frames
and overload do not change dwell or debounce.

Zone membership is supervision's ``PolygonZone`` test (the anchor point of the
box, rounded, on the polygon rasterised by ``sv.polygon_to_mask``), with the
polygon rasterised at the frame's size: ``PolygonZone`` sizes its mask by the
polygon's largest coordinates, so a zone drawn far outside the frame cost memory
by the square of them. Line crossings are computed here rather than with
``sv.LineZone``: that counts after N *frames* on the new side, while streamd
debounces in *seconds* (frames are dropped under load) and needs the crossing
direction per track for alerts and cooldowns.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import supervision as sv

from streamd.config import ZONE_RULE, LineConfig, TracksConfig, ZoneConfig
from streamd.types import ActiveTrack

log = logging.getLogger(__name__)

# Capture times are floats: a threshold met "exactly" must not miss by 1e-16.
EPS = 1e-6

_ANCHOR = {
    "bottom_center": sv.Position.BOTTOM_CENTER,
    "center": sv.Position.CENTER,
    "top_center": sv.Position.TOP_CENTER,
}


@dataclass(frozen=True, slots=True)
class Observation:
    """One tracked object in one frame."""

    track_id: int
    class_id: int
    cls: str
    conf: float
    bbox: tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class Alert:
    rule: str  # enter | exit | dwell | occupancy | in | out
    zone: str | None
    line: str | None
    obj: Observation | None  # None for zone-level rules (occupancy)
    frame: int
    ts: float
    extra: dict[str, Any]
    snapshot: bool


@dataclass(frozen=True, slots=True)
class TrackEvent:
    event: str  # new | update | end
    obj: Observation
    frame: int
    ts: float
    extra: dict[str, Any]


@dataclass
class _Track:
    first_ts: float
    last: Observation
    last_ts: float
    last_update_ts: float
    last_frame: int = 0
    frames: int = 1
    classes: Counter[str] = field(default_factory=Counter)
    zones: set[str] = field(default_factory=set)


def _snapshot(tid: int, tr: _Track) -> ActiveTrack:
    o, zones = tr.last, tuple(sorted(tr.zones))
    return ActiveTrack(tid, o.class_id, o.cls, o.conf, o.bbox, tr.last_frame, tr.first_ts,
                       tr.last_ts, tr.frames, dict(tr.classes), zones)  # fmt: skip


def _anchor(obj: Observation, anchor: str) -> tuple[float, float]:
    x1, y1, x2, y2 = obj.bbox
    y = {"bottom_center": y2, "center": (y1 + y2) / 2, "top_center": y1}[anchor]
    return (x1 + x2) / 2, y


@dataclass
class _Side:
    """Debounced position of one track relative to a zone or a line."""

    raw: int
    raw_since: float
    confirmed: int | None
    prev_point: tuple[float, float] | None = None  # lines: the anchor in the last frame
    within_segment: bool = False  # lines: the last side change crossed between the ends
    entered_at: float | None = None
    dwell_fired: set[float] = field(default_factory=set)  # thresholds fired this visit


class _Rule:
    def __init__(self, cooldown_s: float) -> None:
        self.cooldown_s = cooldown_s
        self.last: dict[tuple[str, int | None], float] = {}
        self.suppressed = 0

    def allow(self, rule: str, track: int | None, ts: float) -> bool:
        last = self.last.get((rule, track))
        if last is not None and ts - last < self.cooldown_s - EPS:
            self.suppressed += 1
            return False
        self.last[(rule, track)] = ts
        return True


def _eligible(cfg: ZoneConfig | LineConfig, obj: Observation, age: float) -> bool:
    return (
        (cfg.classes is None or obj.cls in cfg.classes)
        and obj.conf >= cfg.min_conf
        and age >= cfg.min_track_age_s
    )


def _scaled(points: Sequence[Sequence[float]], normalized: bool, w: int, h: int) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    return arr * [w, h] if normalized else arr


class Zone:
    def __init__(self, cfg: ZoneConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.sides: dict[int, _Side] = {}
        self.cooldown = _Rule(cfg.cooldown_s)
        parsed = [(r, ZONE_RULE.match(r)) for r in cfg.alert_on]
        self.on_enter = "enter" in cfg.alert_on
        self.on_exit = "exit" in cfg.alert_on
        # (threshold, the rule as the user wrote it: the alert's "condition")
        self.dwell = [(float(m.group(2)), r) for r, m in parsed if m and m.group(2)]
        self.occupancy_rules = [(int(m.group(3)), r) for r, m in parsed if m and m.group(3)]
        self.occupancy_armed = {r: True for _, r in self.occupancy_rules}
        self.entries = 0
        self.exits = 0
        # Set at runtime (moved, reshaped or added): the first frame after settles who is
        # inside without enter alerts; ``previous`` is the version it replaced.
        self.changed = False
        self.previous: Zone | None = None
        self._zone: _FrameZone | None = None
        self._size: tuple[int, int] | None = None

    @property
    def occupancy(self) -> int:
        return sum(1 for s in self.sides.values() if s.confirmed == 1)

    def inside(self, objs: list[Observation], w: int, h: int) -> list[bool]:
        if self._zone is None or self._size != (w, h):
            polygon = np.round(_scaled(self.cfg.polygon, self.cfg.normalized, w, h))
            self._zone = _FrameZone(polygon.astype(np.int64), _ANCHOR[self.cfg.anchor], w, h)
            self._size = (w, h)
            if not self._zone.mask.any():
                log.warning("zone %s lies outside the %dx%d frame: it never counts anyone",
                            self.name, w, h)  # fmt: skip
        if not objs:
            return []
        dets = sv.Detections(xyxy=np.array([o.bbox for o in objs], dtype=np.float32))
        return [bool(v) for v in self._zone.trigger(dets)]


class _FrameZone:
    """``sv.PolygonZone``'s test with one anchor, on the polygon rasterised at the frame's
    size (plus its edge, as PolygonZone's): boxes lie in the frame, so no anchor is
    further out, and a polygon costs the frame's memory whatever its coordinates. The
    same answers as PolygonZone for a polygon inside the frame (checked on 40,000
    anchors); where one crosses the frame's edge OpenCV's clipping may move an edge
    pixel (19 of 40,000 anchors)."""

    def __init__(self, polygon: np.ndarray, anchor: sv.Position, w: int, h: int) -> None:
        self.mask = sv.polygon_to_mask(polygon, (w + 2, h + 2))
        self.anchor = anchor

    def trigger(self, dets: sv.Detections) -> np.ndarray:
        x, y = np.rint(dets.get_anchors_coordinates(self.anchor)).astype(int).T
        mh, mw = self.mask.shape
        inside = (x >= 0) & (y >= 0) & (x < mw) & (y < mh)
        hit: np.ndarray = inside & (self.mask[np.clip(y, 0, mh - 1), np.clip(x, 0, mw - 1)] > 0)
        return hit


class Line:
    def __init__(self, cfg: LineConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.sides: dict[int, _Side] = {}
        self.cooldown = _Rule(cfg.cooldown_s)
        self.counts: dict[str, int] = {"in": 0, "out": 0}
        self.crossed: list[str] = []  # directions since the last drain (for metrics)
        self.by_class: dict[str, dict[str, int]] = {}

    def ends(self, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        pts = _scaled(self.cfg.points, self.cfg.normalized, w, h)
        return pts[0], pts[1]

    def side(self, p: tuple[float, float], w: int, h: int) -> int:
        a, b = self.ends(w, h)
        cross = (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
        return int(np.sign(cross))  # +1: right of a→b on screen (y down): the "in" side

    def within(self, p: tuple[float, float], q: tuple[float, float], w: int, h: int) -> bool:
        """Whether the move p → q crosses the line between its two end points."""
        a, b = self.ends(w, h)
        d = b - a
        cp = d[0] * (p[1] - a[1]) - d[1] * (p[0] - a[0])
        cq = d[0] * (q[1] - a[1]) - d[1] * (q[0] - a[0])
        if cp == cq:
            return False
        x = np.asarray(p) + (np.asarray(q) - np.asarray(p)) * (cp / (cp - cq))
        t = float(np.dot(x - a, d) / np.dot(d, d))
        return 0.0 <= t <= 1.0


_Region = TypeVar("_Region", Zone, Line)


def _kept(region: _Region | None, cfg: ZoneConfig | LineConfig) -> _Region | None:
    """The running zone or line if its configuration is unchanged, else None."""
    return region if region is not None and region.cfg == cfg else None


def _changed(cfg: ZoneConfig, previous: Zone | None) -> Zone:
    """A zone moved, reshaped or added at runtime (see ``set_regions``)."""
    zone = Zone(cfg)
    zone.changed = True
    zone.previous = None if previous is None else _settled(previous)
    return zone


def _settled(zone: Zone) -> Zone | None:
    """The version of a zone whose occupants are known (changed twice between frames:
    the one before the first change)."""
    return zone.previous if zone.changed else zone


class StreamAnalytics:
    """Everything analytics knows about one stream; ``update`` once per analysed frame."""

    def __init__(
        self,
        zones: Sequence[ZoneConfig],
        lines: Sequence[LineConfig],
        tracks: TracksConfig,
        lost_track_s: float,
    ) -> None:
        self.zones = [Zone(z) for z in zones]
        self.lines = [Line(c) for c in lines]
        self.tracks_cfg = tracks
        self.lost_track_s = lost_track_s
        self.tracks: dict[int, _Track] = {}
        self._retired: list[Zone] = []  # removed at runtime: occupants exit at the next frame

    def set_regions(self, zones: Sequence[ZoneConfig], lines: Sequence[LineConfig]) -> None:
        """New zones and lines at runtime; the tracks go on. A zone or line whose
        configuration did not change keeps its state (who is inside, counts). Nobody
        walked anywhere because a zone changed, so at the next frame: a track inside
        both the old and the new shape stays inside (its visit goes on); one the zone
        no longer holds exits with reason ``zone_changed`` (``zone_removed`` for a zone
        removed); one standing inside a moved or new zone is inside at once, without an
        ``enter`` (its visit counts from the change). A line learns each track's side
        before it counts one."""
        zones_now = {z.name: z for z in self.zones}
        lines_now = {ln.name: ln for ln in self.lines}
        self.zones = [_kept(zones_now.get(c.name), c) or _changed(c, zones_now.get(c.name))
                      for c in zones]  # fmt: skip
        names = {c.name for c in zones}
        gone = [_settled(z) for name, z in zones_now.items() if name not in names]
        self._retired += [z for z in gone if z is not None]
        self.lines = [_kept(lines_now.get(c.name), c) or Line(c) for c in lines]

    def update(
        self, objs: Sequence[Observation], frame: int, ts: float, width: int, height: int
    ) -> tuple[list[TrackEvent], list[Alert]]:
        events: list[TrackEvent] = []
        alerts: list[Alert] = []
        for obj in objs:
            events += self._observe(obj, frame, ts)
        seen = {o.track_id: o for o in objs}
        ages = {tid: ts - self.tracks[tid].first_ts for tid in seen}
        for retired in self._retired:
            alerts += self._vacate(retired, "zone_removed", frame, ts)
        self._retired = []
        for zone in self.zones:
            if zone.changed:
                alerts += self._rezone(zone, seen, ages, frame, ts, width, height)
            alerts += self._zone(zone, seen, ages, frame, ts, width, height)
        for line in self.lines:
            alerts += self._line(line, seen, ages, frame, ts, width, height)
        lost = [t for t, tr in self.tracks.items() if ts - tr.last_ts > self.lost_track_s + EPS]
        for tid in lost:
            e, a = self._end(tid, frame, ts, "lost")
            events.append(e)
            alerts += a
        return events, alerts

    def end_all(self, frame: int, ts: float, reason: str) -> tuple[list[TrackEvent], list[Alert]]:
        """The stream stopped (ended, failed, reconnecting): every track ends now."""
        events: list[TrackEvent] = []
        alerts: list[Alert] = []
        for tid in list(self.tracks):
            e, a = self._end(tid, frame, ts, reason)
            events.append(e)
            alerts += a
        return events, alerts

    def _observe(self, obj: Observation, frame: int, ts: float) -> list[TrackEvent]:
        tr = self.tracks.get(obj.track_id)
        if tr is None:
            tr = _Track(ts, obj, ts, ts, frame)
            tr.classes[obj.cls] += 1
            self.tracks[obj.track_id] = tr
            return [TrackEvent("new", obj, frame, ts, {})]
        tr.last, tr.last_ts, tr.last_frame = obj, ts, frame
        tr.frames += 1
        tr.classes[obj.cls] += 1
        if ts - tr.last_update_ts >= self.tracks_cfg.update_interval_s - EPS:
            tr.last_update_ts = ts
            return [TrackEvent("update", obj, frame, ts, {"age_s": round(ts - tr.first_ts, 3)})]
        return []

    def _end(self, tid: int, frame: int, ts: float, reason: str) -> tuple[TrackEvent, list[Alert]]:
        tr = self.tracks.pop(tid)
        alerts = []
        for zone in self._occupiable():
            side = zone.sides.pop(tid, None)
            if side is not None and side.confirmed == 1:
                alerts += self._exit(zone, tr.last, side, frame, tr.last_ts, reason)
        for line in self.lines:
            line.sides.pop(tid, None)
        extra = _snapshot(tid, tr).end_fields(reason)
        return TrackEvent("end", tr.last, frame, tr.last_ts, extra), alerts

    def _occupiable(self) -> list[Zone]:
        """Every zone a track may be inside now: the running ones, and those changed or
        removed at runtime whose occupants are settled at the next frame."""
        pending = [z.previous for z in self.zones if z.changed and z.previous is not None]
        return [*self.zones, *pending, *self._retired]

    def _vacate(self, zone: Zone, reason: str, frame: int, ts: float,
                keep: Collection[int] = ()) -> list[Alert]:  # fmt: skip
        """The zone's occupants (but ``keep``) exit: it was removed or changed."""
        alerts: list[Alert] = []
        for tid, side in zone.sides.items():
            if side.confirmed == 1 and tid not in keep and tid in self.tracks:
                side.confirmed = 0  # out before the alert: its occupancy is after the exit
                alerts += self._exit(zone, self.tracks[tid].last, side, frame, ts, reason)
        return alerts

    def _rezone(self, zone: Zone, seen: dict[int, Observation], ages: dict[int, float],
                frame: int, ts: float, w: int, h: int) -> list[Alert]:  # fmt: skip
        """The first frame of a zone changed at runtime: who is inside, and who left it."""
        zone.changed = False
        old, zone.previous = zone.previous, None
        objs = {o.track_id: o for o in seen.values() if _eligible(zone.cfg, o, ages[o.track_id])}
        occupants = [] if old is None else [t for t, s in old.sides.items() if s.confirmed == 1]
        for tid in occupants:  # missed or unsure this frame: where it was last seen
            if tid not in objs and tid in self.tracks:
                objs[tid] = seen.get(tid, self.tracks[tid].last)
        found = list(objs.values())
        inside = {o.track_id for o, i in zip(found, zone.inside(found, w, h), strict=True) if i}
        alerts: list[Alert] = []
        if old is not None:
            for tid in occupants:
                if tid in inside:
                    zone.sides[tid] = old.sides[tid]  # inside before and after: the visit goes on
            alerts += self._vacate(old, "zone_changed", frame, ts, keep=inside)
            zone.cooldown.last = dict(old.cooldown.last)
        for tid in inside - zone.sides.keys():
            zone.sides[tid] = _Side(1, ts, 1, entered_at=ts)  # stood there: no enter
        if old is not None:  # a reshape fires no occupancy rule that already held
            for n, rule in zone.occupancy_rules:
                zone.occupancy_armed[rule] = zone.occupancy < n
        return alerts

    def _zone(self, zone: Zone, seen: dict[int, Observation], ages: dict[int, float],
              frame: int, ts: float, w: int, h: int) -> list[Alert]:  # fmt: skip
        cfg = zone.cfg
        objs = [o for o in seen.values() if _eligible(cfg, o, ages[o.track_id])]
        alerts: list[Alert] = []
        for obj, inside in zip(objs, zone.inside(objs, w, h), strict=True):
            side = zone.sides.get(obj.track_id)
            if side is None:
                side = zone.sides[obj.track_id] = _Side(int(inside), ts, None)
            if int(inside) != side.raw:
                side.raw, side.raw_since = int(inside), ts
            if side.confirmed != side.raw and ts - side.raw_since >= cfg.debounce_s - EPS:
                was = side.confirmed
                side.confirmed = side.raw
                if side.raw == 1:
                    alerts += self._enter(zone, obj, side, frame, ts)
                elif was == 1:
                    alerts += self._exit(zone, obj, side, frame, ts, "left")
            if side.confirmed == 1 and side.entered_at is not None:
                alerts += self._dwell(zone, obj, side, frame, ts)
        alerts += self._occupancy(zone, frame, ts)
        return alerts

    def _enter(self, zone: Zone, obj: Observation, side: _Side, frame: int,
               ts: float) -> list[Alert]:  # fmt: skip
        side.entered_at = side.raw_since  # the visit began when it first stood inside
        side.dwell_fired = set()
        zone.entries += 1
        self.tracks[obj.track_id].zones.add(zone.name)
        if not zone.on_enter:
            return []
        return self._fire(zone, "enter", "enter", obj, frame, ts, {"occupancy": zone.occupancy})

    def _exit(self, zone: Zone, obj: Observation, side: _Side, frame: int, ts: float,
              reason: str) -> list[Alert]:  # fmt: skip
        zone.exits += 1
        # Left: the visit ended when it first stood outside. Track ended: when last seen.
        until = side.raw_since if reason == "left" else ts
        dwell = round(until - (side.entered_at if side.entered_at is not None else until), 3)
        side.entered_at = None
        if not zone.on_exit:
            return []
        extra = {"dwell_s": dwell, "reason": reason, "occupancy": zone.occupancy}
        return self._fire(zone, "exit", "exit", obj, frame, ts, extra)

    def _dwell(self, zone: Zone, obj: Observation, side: _Side, frame: int,
               ts: float) -> list[Alert]:  # fmt: skip
        dwell = ts - (side.entered_at if side.entered_at is not None else ts)
        out: list[Alert] = []
        for threshold, rule in zone.dwell:
            if dwell >= threshold - EPS and threshold not in side.dwell_fired:
                side.dwell_fired.add(threshold)  # once per visit
                extra = {"dwell_s": round(dwell, 3), "threshold_s": threshold}
                out += self._fire(zone, "dwell", rule, obj, frame, ts, extra)
        return out

    def _occupancy(self, zone: Zone, frame: int, ts: float) -> list[Alert]:
        out: list[Alert] = []
        count = zone.occupancy
        for n, rule in zone.occupancy_rules:
            if count < n:
                zone.occupancy_armed[rule] = True  # re-armed once it drops below N
            elif zone.occupancy_armed[rule]:
                zone.occupancy_armed[rule] = False
                inside = sorted(t for t, s in zone.sides.items() if s.confirmed == 1)
                extra = {"occupancy": count, "threshold": n, "track_ids": inside}
                out += self._fire(zone, "occupancy", rule, None, frame, ts, extra)
        return out

    def _fire(self, zone: Zone, kind: str, rule: str, obj: Observation | None, frame: int,
              ts: float, extra: dict[str, Any]) -> list[Alert]:  # fmt: skip
        if not zone.cooldown.allow(rule, obj.track_id if obj else None, ts):
            return []
        return [Alert(kind, zone.name, None, obj, frame, ts, {"condition": rule, **extra},
                      zone.cfg.snapshot)]  # fmt: skip

    def _line(self, line: Line, seen: dict[int, Observation], ages: dict[int, float],
              frame: int, ts: float, w: int, h: int) -> list[Alert]:  # fmt: skip
        cfg = line.cfg
        alerts: list[Alert] = []
        for obj in seen.values():
            if not _eligible(cfg, obj, ages[obj.track_id]):
                continue
            point = _anchor(obj, cfg.anchor)
            s = line.side(point, w, h)
            side = line.sides.get(obj.track_id)
            if side is None:
                line.sides[obj.track_id] = _Side(s, ts, s or None, point)
                continue
            if s != 0 and s != side.raw and side.prev_point is not None:
                side.raw, side.raw_since = s, ts
                side.within_segment = line.within(side.prev_point, point, w, h)
            side.prev_point = point
            settled = ts - side.raw_since >= cfg.debounce_s - EPS
            if side.raw != side.confirmed and side.raw != 0 and settled:
                crossed = side.confirmed is not None and side.within_segment
                side.confirmed = side.raw
                if crossed:
                    alerts += self._cross(line, obj, "in" if side.raw > 0 else "out", frame, ts)
        return alerts

    def _cross(self, line: Line, obj: Observation, direction: str, frame: int,
               ts: float) -> list[Alert]:  # fmt: skip
        line.counts[direction] += 1
        line.crossed.append(direction)
        per = line.by_class.setdefault(obj.cls, {"in": 0, "out": 0})
        per[direction] += 1
        if direction not in line.cfg.alert_on:
            return []
        if not line.cooldown.allow(direction, obj.track_id, ts):
            return []
        extra = {"condition": direction, "counts": dict(line.counts)}
        return [Alert(direction, None, line.name, obj, frame, ts, extra, line.cfg.snapshot)]

    def active(self) -> list[ActiveTrack]:
        """The confirmed tracks now."""
        return [_snapshot(tid, tr) for tid, tr in self.tracks.items()]

    def state(self) -> dict[str, Any]:
        """Active tracks, zone occupancy and line counts: what a late joiner asks for."""
        tracks = [t.state_fields() for t in self.active()]
        zones = {
            z.name: {"occupancy": z.occupancy, "entries": z.entries, "exits": z.exits,
                     "track_ids": sorted(t for t, s in z.sides.items() if s.confirmed == 1)}
            for z in self.zones
        }  # fmt: skip
        lines = {
            ln.name: {**ln.counts, "by_class": {k: dict(v) for k, v in ln.by_class.items()}}
            for ln in self.lines
        }
        return {"tracks": tracks, "zones": zones, "lines": lines}
