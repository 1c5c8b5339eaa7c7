"""``streamd eval-tracking``: every scene x load through the real daemon, every tracker kind
replayed on the daemon's detections, the plain ultralytics loop beside them."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamd.config import TrackerConfig
from streamd.evaluation.daemon import run_daemon, write_pipeline
from streamd.evaluation.metrics import Scores, TrackedFrame, score
from streamd.evaluation.offline import agreement, replay
from streamd.evaluation.scenes import LOADS, SCENES, make_scene
from streamd.evaluation.ultra import track_loop

KINDS = ("bytetrack", "ocsort", "botsort", "sort")


@dataclass(frozen=True)
class EvalSpec:
    weights: str
    scenes: tuple[str, ...] = ("crowd",)
    loads: tuple[str, ...] = ("every", "fps5", "overload")
    kinds: tuple[str, ...] = KINDS
    imgsz: int = 640
    conf: float = 0.25
    backend: str = "auto"
    agnostic_nms: bool = True  # the person model's Normal/Fall boxes of one person are one
    tracker: dict[str, Any] = field(default_factory=dict)  # the daemon's tracker section
    ultralytics: bool = True
    workdir: Path | None = None
    timeout_s: float = 900.0


def run(spec: EvalSpec, say: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """The whole benchmark as a JSON-ready report."""
    daemon_cfg = TrackerConfig.model_validate(spec.tracker)
    folder = spec.workdir or Path(tempfile.mkdtemp(prefix="streamd-eval-"))
    folder.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": machine(), "daemon_tracker": daemon_cfg.model_dump(),
        "model": _model(spec),
        "rows": [], "agreement": [],
    }  # fmt: skip
    for scene in spec.scenes:
        video, truth = make_scene(scene, folder)
        for load in spec.loads:
            say(f"{scene}/{load}: the daemon ({daemon_cfg.kind}) on {video.name}")
            _one_load(spec, daemon_cfg, scene, load, video, truth, folder, report)
        if spec.ultralytics:
            _ultralytics(spec, scene, video, truth, report, say)
    return report


def _one_load(
    spec: EvalSpec, daemon_cfg: TrackerConfig, scene: str, load: str, video: Path,
    truth: list[list[dict[str, Any]]], folder: Path, report: dict[str, Any],
) -> None:  # fmt: skip
    model = _model(spec)
    run_dir = folder / f"{scene}-{load}"
    run_dir.mkdir(exist_ok=True)
    pipeline, endpoint = write_pipeline(run_dir, video, model, spec.tracker, LOADS[load])
    done = run_daemon(pipeline, endpoint, run_dir / "daemon.log", spec.timeout_s)
    (run_dir / "frames.json").write_text(json.dumps([f.as_dict() for f in done.frames]))
    extra = {"analysed": len(done.frames), "of": len(truth), "dropped": done.dropped,
             "wall_s": round(done.wall_s, 1)}  # fmt: skip
    _row(report, scene, load, daemon_cfg.kind, "daemon", score(truth, done.frames), extra)
    apart = not spec.agnostic_nms  # as the daemon's tracker took the classes
    same = replay(done.frames, daemon_cfg, video, apart)
    agree = agreement(done.frames, same)
    same_scores = score(truth, same)
    report["agreement"].append({
        "scene": scene, "load": load, "kind": daemon_cfg.kind, "frames": agree.frames,
        "boxes": agree.boxes, "same_boxes": agree.same_boxes, "same_ids": agree.same_ids,
        "identical": agree.identical,
        "scores_equal": same_scores == score(truth, done.frames),
    })  # fmt: skip
    for kind in spec.kinds:
        cfg = daemon_cfg if kind == daemon_cfg.kind else _kind_like(daemon_cfg, kind)
        _row(report, scene, load, kind, "replay",
             score(truth, replay(done.frames, cfg, video, apart)))  # fmt: skip


def _model(spec: EvalSpec) -> dict[str, Any]:
    return {"weights": spec.weights, "imgsz": spec.imgsz, "conf": spec.conf,
            "backend": spec.backend, "agnostic_nms": spec.agnostic_nms}  # fmt: skip


def _kind_like(cfg: TrackerConfig, kind: str) -> TrackerConfig:
    """``kind`` with its own defaults and the daemon's shared settings."""
    return TrackerConfig.model_validate(
        {"kind": kind, "lost_track_s": cfg.lost_track_s,
         "min_consecutive_frames": cfg.min_consecutive_frames,
         "appearance": cfg.appearance.model_dump()}
    )  # fmt: skip


def _ultralytics(
    spec: EvalSpec, scene: str, video: Path, truth: list[list[dict[str, Any]]],
    report: dict[str, Any], say: Callable[[str], None],
) -> None:  # fmt: skip
    fps = SCENES[scene].fps
    for load, stride in (("every", 1), ("fps5", max(1, round(fps / 5)))):
        if load not in spec.loads:
            continue
        say(f"{scene}/{load}: ultralytics model.track() loop, every {stride} frame(s)")
        frames: list[TrackedFrame] = track_loop(video, spec.weights, spec.imgsz, spec.conf, stride)
        _row(report, scene, load, "bytetrack", "ultralytics", score(truth, frames))


def _row(report: dict[str, Any], scene: str, load: str, kind: str, source: str, s: Scores,
         extra: dict[str, Any] | None = None) -> None:  # fmt: skip
    report["rows"].append({"scene": scene, "load": load, "tracker": kind, "source": source,
                           **s.as_dict(), **(extra or {})})  # fmt: skip


def machine() -> dict[str, Any]:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version()}


_COLS = ("scene", "load", "tracker", "source", "frames", "mota", "idf1", "hota", "deta",
         "assa", "idsw", "fp", "fn")  # fmt: skip


def format_table(report: dict[str, Any]) -> str:
    """The rows as a Markdown table, then whether the daemon equals the offline replay."""
    lines = ["| " + " | ".join(_COLS) + " |", "|" + "---|" * len(_COLS)]
    for r in report["rows"]:
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in _COLS]
        lines.append("| " + " | ".join(cells) + " |")
    for a in report["agreement"]:
        verdict = "identical" if a["identical"] and a["scores_equal"] else "DIFFERENT"
        lines.append(
            f"daemon vs offline {a['kind']} on {a['scene']}/{a['load']}: {verdict} "
            f"({a['same_ids']}/{a['boxes']} boxes with the same id in {a['frames']} frames, "
            f"scores equal: {a['scores_equal']})"
        )
    return "\n".join(lines)
