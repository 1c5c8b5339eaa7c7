"""Annotate one analysed frame with supervision: boxes, labels, traces, zones, lines, HUD."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import supervision as sv

from streamd.config import LineConfig, OverlayConfig, StreamConfig, ZoneConfig
from streamd.view.feed import ViewMeta

ZONE_COLOR = sv.Color.from_hex("#00b4ff")
LINE_COLOR = sv.Color.from_hex("#ffd000")


def detections(objects: list[dict[str, Any]]) -> sv.Detections:
    """A ``det`` event's objects back as ``sv.Detections`` (tracker id -1 = unconfirmed)."""
    if not objects:
        return sv.Detections.empty()
    return sv.Detections(
        xyxy=np.array([o["bbox"] for o in objects], dtype=np.float32),
        confidence=np.array([o["conf"] for o in objects], dtype=np.float32),
        class_id=np.array([o["class_id"] for o in objects], dtype=int),
        tracker_id=np.array(
            [-1 if o["track_id"] is None else o["track_id"] for o in objects], dtype=int
        ),
        data={"class_name": np.array([o["class"] for o in objects], dtype=str)},
    )


def _points(points: list[list[float]], normalized: bool, w: int, h: int) -> npt.NDArray[np.int64]:
    arr = np.asarray(points, dtype=np.float64)
    return np.round(arr * [w, h] if normalized else arr).astype(np.int64)


class FrameAnnotator:
    """One per stream: the trace annotator remembers each track's path."""

    def __init__(self, stream: StreamConfig, cfg: OverlayConfig) -> None:
        self.stream = stream
        self.boxes = sv.BoxAnnotator(thickness=2)
        self.labels = sv.LabelAnnotator(text_scale=0.45, text_padding=3)
        self.traces = sv.TraceAnnotator(
            trace_length=max(2, round(cfg.trace_s * cfg.max_fps)), thickness=2
        )

    def draw(
        self, frame: npt.NDArray[np.uint8], meta: ViewMeta, state: str | None
    ) -> npt.NDArray[np.uint8]:
        h, w = frame.shape[:2]
        scene = frame.copy()
        for zone in self.stream.zones:
            self._zone(scene, zone, meta.zones.get(zone.name), w, h)
        for line in self.stream.lines:
            self._line(scene, line, meta.lines.get(line.name), w, h)
        dets = detections(meta.objects)
        tracked = detections([o for o in meta.objects if o["track_id"] is not None])
        if len(tracked):
            scene = self.traces.annotate(scene, tracked)
        scene = self.boxes.annotate(scene, dets)
        scene = self.labels.annotate(scene, dets, labels=self._label_texts(meta.objects))
        self._hud(scene, meta, state)
        return scene

    @staticmethod
    def _label_texts(objects: list[dict[str, Any]]) -> list[str]:
        return [
            ("" if o["track_id"] is None else f"#{o['track_id']} ")
            + f"{o['class']} {o['conf']:.2f}"
            for o in objects
        ]

    @staticmethod
    def _zone(scene: npt.NDArray[np.uint8], zone: ZoneConfig, inside: int | None, w: int,
              h: int) -> None:  # fmt: skip
        polygon = _points(zone.polygon, zone.normalized, w, h)
        sv.draw_polygon(scene, polygon, ZONE_COLOR, thickness=2)
        text = zone.name if inside is None else f"{zone.name}: {inside}"
        x, y = polygon.mean(axis=0)  # the label at the zone's centre, clear of the HUD
        sv.draw_text(scene, text, sv.Point(int(x), int(y)), ZONE_COLOR,
                     text_scale=0.5, background_color=sv.Color.BLACK)  # fmt: skip

    @staticmethod
    def _line(scene: npt.NDArray[np.uint8], line: LineConfig, counts: dict[str, int] | None,
              w: int, h: int) -> None:  # fmt: skip
        a, b = _points(line.points, line.normalized, w, h)
        sv.draw_line(scene, sv.Point(*a), sv.Point(*b), LINE_COLOR, thickness=2)
        text = (
            line.name if counts is None else f"{line.name}: in {counts['in']} out {counts['out']}"
        )
        mid = (a + b) // 2
        sv.draw_text(scene, text, sv.Point(int(mid[0]), int(mid[1])), LINE_COLOR,
                     text_scale=0.5, background_color=sv.Color.BLACK)  # fmt: skip

    def _hud(self, scene: npt.NDArray[np.uint8], meta: ViewMeta, state: str | None) -> None:
        text = (
            f"{self.stream.id}  {state or '-'}  {meta.fps:.1f} fps  "
            f"{meta.latency_ms:.0f} ms  frame {meta.frame}"
        )
        cv2.rectangle(scene, (0, 0), (min(scene.shape[1], 9 * len(text) + 12), 24), (0, 0, 0), -1)
        cv2.putText(scene, text, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)  # fmt: skip
