"""What the output tests share: a live looping clip whose null-detector boxes keep
crossing a line (about one alert a second), the pipeline around it, journal reads."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from .daemon import write_pipeline
from .util import free_port

NULL_MODEL = {"backend": "null", "null_boxes": 3, "imgsz": 320}
# The null boxes of the left column swing across x = 0.25 (periods 3 s and 4.4 s).
LINE = {"name": "mid", "normalized": True, "points": [[0.25, 0.0], [0.25, 1.0]],
        "alert_on": ["in", "out"], "debounce_s": 0.0}  # fmt: skip
ZONE = {"name": "left", "normalized": True, "debounce_s": 0.0,
        "polygon": [[0.0, 0.0], [0.25, 0.0], [0.25, 1.0], [0.0, 1.0]]}  # fmt: skip


def make_clip(folder: Path) -> Path:
    from streamd.synth import SceneSpec, write_scene

    video = folder / "small.mp4"
    if not video.exists():
        write_scene(video, SceneSpec(width=320, height=180, fps=15, seconds=2.0, people=1))
    return video


def camera(sid: str, clip: Path, snapshot: bool = False) -> dict[str, Any]:
    return {"id": sid, "url": str(clip), "loop": True, "realtime": True,
            "lines": [{**LINE, "snapshot": snapshot}], "zones": [ZONE]}  # fmt: skip


def pipeline(
    tmp: Path,
    clip: Path,
    outputs: dict[str, Any] | None,
    sids: tuple[str, ...] = ("cam",),
    snapshot: bool = False,
    **sections: Any,
) -> Path:
    extra = dict(sections)
    if outputs is not None:
        extra["outputs"] = outputs
    streams = [camera(s, clip, snapshot) for s in sids]
    return write_pipeline(tmp, Path("unused.pt"), free_port(), streams, model=NULL_MODEL, **extra)


def journal_path(cfg: Path) -> Path:
    return Path(json.loads(cfg.read_text())["journal"]["path"])


def journal_alerts(cfg: Path) -> list[dict[str, Any]]:
    """Every journaled alert, in journal order, with its stored time as ``_stored``."""
    db = sqlite3.connect(f"file:{journal_path(cfg)}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT payload, stored FROM alerts ORDER BY id").fetchall()
    finally:
        db.close()
    return [{**json.loads(p), "_stored": s} for p, s in rows]


def strip(alert: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in alert.items() if k != "_stored"}
