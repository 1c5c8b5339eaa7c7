"""Zones, lines, dwell, occupancy and track lifecycle on synthetic tracks with known paths."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from pydantic import ValidationError

from streamd.analytics.engine import Alert, Observation, StreamAnalytics, TrackEvent
from streamd.config import LineConfig, TracksConfig, ZoneConfig

FPS = 10
W, H = 640, 480
SQUARE = [[100, 100], [300, 100], [300, 300], [100, 300]]


def obj(tid: int, x: float, y: float, cls: str = "person", conf: float = 0.9) -> Observation:
    """A 20x40 box whose bottom centre (the default anchor) is (x, y)."""
    return Observation(tid, 0 if cls == "person" else 1, cls, conf, (x - 10, y - 40, x + 10, y))


def run(
    engine: StreamAnalytics, frames: Iterable[list[Observation]]
) -> tuple[list[TrackEvent], list[Alert]]:
    events: list[TrackEvent] = []
    alerts: list[Alert] = []
    for i, objs in enumerate(frames):
        e, a = engine.update(objs, i, i / FPS, W, H)
        events += e
        alerts += a
    return events, alerts


def analytics(zones: list[dict[str, Any]] = (), lines: list[dict[str, Any]] = (),  # type: ignore[assignment]
              lost_s: float = 1.0, update_s: float = 1.0) -> StreamAnalytics:  # fmt: skip
    return StreamAnalytics(
        [ZoneConfig.model_validate(z) for z in zones],
        [LineConfig.model_validate(c) for c in lines],
        TracksConfig(update_interval_s=update_s),
        lost_track_s=lost_s,
    )


def at(seconds: float, x: float, y: float, tid: int = 1) -> list[list[Observation]]:
    return [[obj(tid, x, y)] for _ in range(round(seconds * FPS))]


def test_enter_dwell_exit_with_their_times() -> None:
    zone = {"name": "door", "polygon": SQUARE, "alert_on": ["enter", "exit", "dwell>=2s"],
            "debounce_s": 0.5}  # fmt: skip
    # Outside 1 s (frames 0-9), inside 3 s (10-39), outside 1 s (40-49).
    _, alerts = run(analytics([zone]), at(1, 50, 200) + at(3, 200, 200) + at(1, 400, 200))
    assert [(a.rule, a.frame) for a in alerts] == [("enter", 15), ("dwell", 30), ("exit", 45)]
    enter, dwell, leave = alerts
    assert enter.zone == "door" and enter.obj is not None and enter.obj.track_id == 1
    assert enter.extra["occupancy"] == 1
    assert dwell.extra == {"condition": "dwell>=2s", "dwell_s": 2.0, "threshold_s": 2.0}
    assert leave.extra["dwell_s"] == 3.0 and leave.extra["reason"] == "left"
    assert leave.extra["occupancy"] == 0


def test_debounce_stops_an_edge_lingerer_from_firing_twenty_alerts() -> None:
    jitter = [[obj(1, 200 if i % 2 else 50, 200)] for i in range(40)]  # in/out every frame
    then_inside = at(1, 200, 200)
    zone = {"name": "z", "polygon": SQUARE, "alert_on": ["enter", "exit"]}
    _, bouncing = run(analytics([{**zone, "debounce_s": 0.0}]), jitter + then_inside)
    _, debounced = run(analytics([{**zone, "debounce_s": 0.5}]), jitter + then_inside)
    assert len(bouncing) == 39  # every flip counts without debounce: 20 enters, 19 exits
    assert [(a.rule, a.frame) for a in debounced] == [("enter", 44)]  # settled 40 → 44


def test_cooldown_limits_repeats_per_track() -> None:
    visits = (at(1, 50, 200) + at(1, 200, 200)) * 3  # enters three times in 6 s
    zone = {"name": "z", "polygon": SQUARE, "alert_on": ["enter"], "debounce_s": 0.0}
    engine = analytics([{**zone, "cooldown_s": 10.0}])
    _, alerts = run(engine, visits)
    assert [a.frame for a in alerts] == [10]
    assert engine.zones[0].entries == 3 and engine.zones[0].cooldown.suppressed == 2
    _, every = run(analytics([{**zone, "cooldown_s": 1.5}]), visits)
    assert [a.frame for a in every] == [10, 30, 50]


def test_occupancy_fires_on_the_rising_edge_and_rearms() -> None:
    zone = {"name": "z", "polygon": SQUARE, "alert_on": ["occupancy>=2"], "debounce_s": 0.0}
    frames = (
        [[obj(1, 200, 200), obj(2, 50, 200)]] * 5  # one inside
        + [[obj(1, 200, 200), obj(2, 210, 200)]] * 5  # two inside: fires (frame 5)
        + [[obj(1, 200, 200), obj(2, 220, 200), obj(3, 230, 200)]] * 5  # three: no repeat
        + [[obj(1, 200, 200), obj(2, 50, 200), obj(3, 50, 200)]] * 5  # back to one
        + [[obj(1, 200, 200), obj(2, 200, 250), obj(3, 50, 200)]] * 5  # two again (frame 20)
    )
    engine = analytics([zone])
    _, alerts = run(engine, frames)
    assert [(a.rule, a.frame, a.extra["track_ids"]) for a in alerts] == [
        ("occupancy", 5, [1, 2]),
        ("occupancy", 20, [1, 2]),
    ]
    assert alerts[0].obj is None and alerts[0].extra["occupancy"] == 2
    assert engine.state()["zones"]["z"]["occupancy"] == 2


def test_line_counts_by_direction_only_within_the_segment() -> None:
    # Horizontal line drawn left to right at y=200 between x=100 and x=500: "in" is downward.
    line = {"name": "gate", "points": [[100, 200], [500, 200]], "alert_on": ["in", "out"],
            "debounce_s": 0.3, "classes": ["person"]}  # fmt: skip
    frames: list[list[Observation]] = []
    for k in range(40):
        y = 100 + 5 * k  # 100 → 295: on y=200 at frame 20, across at 21
        frames.append([
            obj(1, 300, y),  # down: in
            obj(2, 300, 300 - 5 * k),  # up: out
            obj(3, 700, y),  # beyond the segment's end: not a crossing
            obj(4, 300, 198 if k % 2 else 202),  # jitters on the line: never settles
            obj(5, 250, y, cls="car"),  # not a counted class
        ])  # fmt: skip
    engine = analytics(lines=[line])
    _, alerts = run(engine, frames)
    assert sorted((a.rule, a.obj.track_id if a.obj else None) for a in alerts) == [
        ("in", 1),
        ("out", 2),
    ]
    crossing = next(a for a in alerts if a.rule == "in")
    assert crossing.line == "gate" and crossing.frame == 24  # settled 0.3 s after 21
    assert engine.state()["lines"]["gate"] == {
        "in": 1, "out": 1, "by_class": {"person": {"in": 1, "out": 1}}
    }  # fmt: skip


def test_track_lifecycle_new_throttled_updates_and_end_summary() -> None:
    zone = {"name": "z", "polygon": SQUARE, "alert_on": ["exit"], "debounce_s": 0.0}
    engine = analytics([zone], lost_s=1.0, update_s=1.0)
    walk = at(1, 50, 200) + at(2.5, 200, 200)  # seen 3.5 s, the last 2.5 s inside the zone
    events, alerts = run(engine, walk + [[]] * 15)  # then gone
    kinds = [(e.event, e.frame) for e in events]
    assert kinds == [("new", 0), ("update", 10), ("update", 20), ("update", 30), ("end", 45)]
    end = events[-1]
    assert end.extra["reason"] == "lost" and end.extra["duration_s"] == pytest.approx(3.4)
    assert end.extra["frames"] == 35 and end.extra["classes"] == {"person": 35}
    assert end.extra["zones"] == ["z"] and end.ts == pytest.approx(3.4)
    # It ended inside the zone: the exit fires with reason "lost".
    assert [(a.rule, a.extra["reason"], a.extra["dwell_s"]) for a in alerts] == [
        ("exit", "lost", 2.4)
    ]
    assert engine.state()["tracks"] == []


def test_filters_min_conf_min_age_and_classes() -> None:
    zone = {"name": "z", "polygon": SQUARE, "alert_on": ["enter"], "debounce_s": 0.0,
            "min_conf": 0.5, "min_track_age_s": 1.0, "classes": ["person"]}  # fmt: skip
    frames = [
        [obj(1, 200, 200), obj(2, 200, 200, conf=0.3), obj(3, 200, 200, cls="car")]
        for _ in range(20)
    ]
    _, alerts = run(analytics([zone]), frames)
    # Only track 1, and only once it is 1 s old.
    assert [(a.obj.track_id if a.obj else None, a.frame) for a in alerts] == [(1, 10)]


def test_normalized_coordinates_scale_with_the_frame() -> None:
    norm = [[x / W, y / H] for x, y in SQUARE]
    zone = {"name": "z", "polygon": norm, "normalized": True, "alert_on": ["enter"],
            "debounce_s": 0.0}  # fmt: skip
    _, alerts = run(analytics([zone]), at(0.5, 50, 200) + at(0.5, 200, 200))
    assert [a.frame for a in alerts] == [5]


@pytest.mark.parametrize(
    ("zone", "message"),
    [
        ({"alert_on": ["dwell>30"]}, "unknown rule 'dwell>30'"),
        ({"alert_on": ["party"]}, "unknown rule"),
        ({"normalized": True}, "within 0..1"),
        ({"polygon": [[0, 0], [1, 1]]}, "at least 3"),
    ],
)
def test_bad_zone_config_is_refused(zone: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ZoneConfig.model_validate({"name": "z", "polygon": SQUARE, **zone})


def test_a_zone_changed_at_runtime_moves_nobody() -> None:
    """Nobody walked anywhere because a zone was edited: a track inside the old and the
    new shape stays inside (no alert, its visit goes on); one left outside the moved zone
    exits with reason zone_changed; one the moved zone now covers is inside at once,
    without an enter; the occupants of a removed zone exit with reason zone_removed."""
    rules = {"alert_on": ["enter", "exit"], "debounce_s": 0.0}
    left = [[100, 100], [300, 100], [300, 300], [100, 300]]
    engine = analytics([{"name": "z", "polygon": left, **rules},
                        {"name": "gone", "polygon": left, **rules}])  # fmt: skip
    standing = [obj(1, 200, 200), obj(2, 280, 200), obj(3, 450, 200)]  # 3 outside "left"
    _, alerts = run(engine, [standing] * 10)
    entered = sorted((a.rule, a.zone, a.obj.track_id) for a in alerts if a.obj)
    assert entered == [("enter", "gone", 1), ("enter", "gone", 2),
                       ("enter", "z", 1), ("enter", "z", 2)]  # fmt: skip

    moved = [[250, 100], [500, 100], [500, 300], [250, 300]]  # covers 2 and 3, not 1
    engine.set_regions([ZoneConfig.model_validate({"name": "z", "polygon": moved, **rules})], [])
    after: list[Alert] = []
    for i in range(10, 30):
        after += engine.update(standing, i, i / FPS, W, H)[1]
    assert [(a.rule, a.zone, a.obj.track_id, a.extra["reason"]) for a in after if a.obj] == [
        ("exit", "gone", 1, "zone_removed"), ("exit", "gone", 2, "zone_removed"),
        ("exit", "z", 1, "zone_changed")]  # fmt: skip
    state = engine.state()["zones"]
    assert state == {"z": {"occupancy": 2, "entries": 0, "exits": 0, "track_ids": [2, 3]}}

    # Track 3, inside since the change (t = 1.0 s), walks out at t = 3.0 s: its visit
    # counts from the change; track 2's goes on from t = 0.
    out: list[Alert] = []
    for i in range(30, 32):
        out += engine.update([obj(2, 280, 200), obj(3, 600, 200)], i, i / FPS, W, H)[1]
    (leave,) = out
    assert (leave.rule, leave.obj.track_id, leave.extra["dwell_s"]) == ("exit", 3, 2.0)
    assert engine.state()["zones"]["z"]["track_ids"] == [2]


def test_a_zone_edit_before_the_next_frame_loses_no_exit_and_refires_nothing() -> None:
    rules = {"alert_on": ["enter", "exit", "occupancy>=2"], "debounce_s": 0.0}
    wider = [[90, 90], [310, 90], [310, 310], [90, 310]]

    def two_inside() -> StreamAnalytics:
        engine = analytics([{"name": "z", "polygon": SQUARE, **rules}])
        _, alerts = run(engine, [[obj(1, 200, 200), obj(2, 250, 200)]] * 5)
        assert sorted(a.rule for a in alerts) == ["enter", "enter", "occupancy"]
        return engine

    def reshape(engine: StreamAnalytics, polygon: list[list[int]]) -> None:
        engine.set_regions([ZoneConfig.model_validate({"name": "z", "polygon": polygon,
                                                       **rules})], [])  # fmt: skip

    # The stream stops before any frame after the edit: its occupants still exit.
    engine = two_inside()
    reshape(engine, wider)
    _, ends = engine.end_all(5, 0.5, "restart")
    assert sorted((a.rule, a.obj.track_id, a.extra["reason"]) for a in ends if a.obj) == [
        ("exit", 1, "restart"), ("exit", 2, "restart")]  # fmt: skip

    # Track 2 is missed on the first frame after the edit: still inside, no exit, no enter,
    # and occupancy>=2, which already held, does not fire again.
    engine = two_inside()
    reshape(engine, wider)
    after: list[Alert] = []
    for i, objs in enumerate([[obj(1, 200, 200)]] + [[obj(1, 200, 200), obj(2, 250, 200)]] * 5):
        after += engine.update(objs, 5 + i, (5 + i) / FPS, W, H)[1]
    assert after == []
    assert engine.state()["zones"]["z"]["track_ids"] == [1, 2]

    # A removed zone's occupants exit one by one: the occupancy after each exit.
    engine = two_inside()
    engine.set_regions([], [])
    _, gone = engine.update([obj(1, 200, 200), obj(2, 250, 200)], 5, 0.5, W, H)
    assert [(a.extra["reason"], a.extra["occupancy"]) for a in gone] == [
        ("zone_removed", 1), ("zone_removed", 0)]  # fmt: skip


@pytest.mark.parametrize(
    ("polygon", "reason"),
    [
        ([[0, 0], [float("nan"), 10], [10, 10]], "finite number"),
        ([[0, 0], [1e12, 0], [0, 10]], "within -16384..16384"),
        ([[-20000, 0], [10, 0], [0, 10]], "within -16384..16384"),
        ([[5, 5], [5, 5], [5, 5]], "encloses no area"),
        ([[0, 0], [100, 100], [200, 200]], "encloses no area"),
    ],
)
def test_a_zone_that_could_never_count_or_would_choke_is_refused(
    polygon: list[list[float]], reason: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        ZoneConfig.model_validate({"name": "z", "polygon": polygon})
    assert reason in str(refused.value)


def test_zones_past_the_edge_and_crossed_ones_are_taken() -> None:
    """A zone reaching past the frame's edge, and one whose corners are out of order (a
    bow tie: it has an inside, unlike points on one line), are valid."""
    ZoneConfig.model_validate({"name": "z", "polygon": [[-50, -50], [100, -50], [100, 100]]})
    ZoneConfig.model_validate({"name": "z", "polygon": [[0, 0], [40, 40], [40, 0], [0, 40]]})
    LineConfig.model_validate({"name": "l", "points": [[-50, 300], [700, 300]]})


def test_a_zone_past_the_frame_costs_the_frames_memory_and_says_it_never_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A polygon reaching far past the frame is rasterised at the frame's size (it used
    to take its largest coordinates squared: 16,000 px, 256 MB), still counts who is in
    the frame's part of it; one wholly outside is logged as never counting."""
    wide = {"name": "wide", "polygon": [[100, 100], [16000, 100], [16000, 16000], [100, 300]],
            "alert_on": ["enter"], "debounce_s": 0.0}  # fmt: skip
    away = {"name": "away", "polygon": [[5000, 5000], [6000, 5000], [6000, 6000]]}
    engine = analytics([wide, away])
    with caplog.at_level("WARNING"):
        _, alerts = run(engine, at(1, 50, 200) + at(1, 200, 200))
    assert [a.zone for a in alerts] == ["wide"]
    for zone in engine.zones:
        assert zone._zone is not None and zone._zone.mask.shape == (H + 2, W + 2)
    assert [r.getMessage() for r in caplog.records if "never counts" in r.getMessage()] == [
        f"zone away lies outside the {W}x{H} frame: it never counts anyone"
    ]
