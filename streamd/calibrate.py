"""``streamd calibrate``: a calibration set from the pipeline's own streams, then INT8.

Every stream is opened as the daemon opens it (same options, same decoder),
all at once, one thread each, and ``frames`` frames are taken spread evenly
over ``seconds`` of each stream's own time (a file shorter than that: over
its length) and over the cameras. Every fourth frame of each stream is held
out for the accuracy guard. A file source with ground truth beside it (the
``.truth.json`` that ``streamd synth`` writes) gives its frames their true
boxes. The set is written to ``model.calibration`` (default
``<pipeline>.calibration`` beside the pipeline file, which the daemon then
finds by itself), and the detector is built exactly as ``streamd run`` would
build it: quantised, judged by the guard, cached; the next start reuses it.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from streamd.config import PipelineConfig
from streamd.config.base import source_kind
from streamd.config.model import default_calibration_dir
from streamd.config.stream import StreamConfig
from streamd.detect.calibration import CalibrationFrame, CalibrationSet, write_calibration
from streamd.detect.guard import GuardReport

log = logging.getLogger(__name__)

HOLD_EVERY = 4


@dataclass(slots=True)
class Sampled:
    stream: str
    frames: list[tuple[float, int, npt.NDArray[np.uint8]]] = field(default_factory=list)
    truth: list[list[list[float]]] | None = None  # per frame index of the source
    error: str | None = None


def _truth(url: str) -> list[list[list[float]]] | None:
    if source_kind(url) != "file":
        return None
    path = Path(url.removeprefix("file://").removeprefix("file:")).with_suffix(".truth.json")
    try:
        frames = json.loads(path.read_text())["frames"]
        return [[[float(v) for v in box["bbox"]] for box in boxes] for boxes in frames]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def sample_stream(stream: StreamConfig, count: int, seconds: float) -> Sampled:
    """``count`` frames spread over ``seconds`` of the stream's media time."""
    from streamd.sources.reader import DecodeCounters, OpenOptions, decode_frames, open_source

    out = Sampled(stream.id, truth=_truth(stream.url))
    opts = OpenOptions(url=stream.url, transport=stream.transport or "tcp", width=stream.width,
                       height=stream.height, fps=stream.fps,
                       open_timeout_s=stream.open_timeout_s,
                       stall_timeout_s=stream.stall_timeout_s)  # fmt: skip
    started = time.monotonic()
    try:
        with open_source(opts) as container:
            length = container.duration / 1e6 if container.duration else None
            span = min(seconds, length) if length else seconds
            step = span / count
            first: float | None = None
            due = 0.0
            frames = decode_frames(container, DecodeCounters(), stream.stall_timeout_s)
            for index, frame in enumerate(frames):
                wall = time.monotonic() - started
                if frame.pts_s is not None and first is None:
                    first = frame.pts_s
                t = frame.pts_s - first if frame.pts_s is not None and first is not None else wall
                if t + 1e-6 >= due:
                    out.frames.append((t, index, frame.image().copy()))
                    due += step
                # A live source is read in real time; give up past the span (and its open).
                if len(out.frames) >= count or wall > span + stream.open_timeout_s + 5.0:
                    break
    except Exception as e:  # PyAV raises many kinds; one bad camera must not stop the rest
        out.error = str(e)
    return out


def sample(cfg: PipelineConfig, frames: int, seconds: float) -> list[Sampled]:
    """Every stream at once, ``frames`` in all (spread evenly over the cameras)."""
    streams = cfg.streams
    each = max(1, math.ceil(frames / max(1, len(streams))))
    results: list[Sampled | None] = [None] * len(streams)

    def run(i: int, s: StreamConfig) -> None:
        results[i] = sample_stream(s, each, seconds)

    threads = [threading.Thread(target=run, args=(i, s), daemon=True)
               for i, s in enumerate(streams)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in results if r is not None]


def to_set(folder: Path, sampled: list[Sampled], frames: int, meta: dict[str, Any]
           ) -> CalibrationSet:  # fmt: skip
    """Write the samples (at most ``frames``, taken round-robin over the streams)."""
    rows: list[tuple[CalibrationFrame, npt.NDArray[np.uint8]]] = []
    per_stream = [list(enumerate(s.frames)) for s in sampled]
    depth = max((len(p) for p in per_stream), default=0)
    for k in range(depth):
        for s, taken in zip(sampled, per_stream, strict=True):
            if k >= len(taken) or len(rows) >= frames:
                continue
            j, (t, index, image) = taken[k]
            truth = s.truth[index] if s.truth is not None and index < len(s.truth) else None
            name = f"{s.stream}-{index:06d}.png"
            rows.append((CalibrationFrame(name, s.stream, t, j % HOLD_EVERY == HOLD_EVERY - 1,
                                          truth), image))  # fmt: skip
    return write_calibration(folder, rows, meta)


def calibration_folder(cfg: PipelineConfig, pipeline: Path) -> Path:
    return Path(cfg.model.calibration) if cfg.model.calibration else (
        default_calibration_dir(pipeline))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Outcome:
    folder: Path
    frames: int
    held: int
    per_stream: dict[str, int]
    errors: dict[str, str]
    backend: str
    precision: str
    guard: list[GuardReport]
    verdicts: list[str]


def calibrate(cfg: PipelineConfig, pipeline: Path, frames: int, seconds: float) -> Outcome:
    """Sample, write the set, then build the detector as the daemon would (quantise, guard,
    cache); DetectorError when the model cannot be built (int8 asked for and refused)."""
    from streamd.detect import create_detector

    if frames < HOLD_EVERY:
        raise RuntimeError(f"--frames {frames}: at least {HOLD_EVERY} (one in {HOLD_EVERY} is held "
                           "out for the accuracy guard)")  # fmt: skip
    if seconds <= 0:
        raise RuntimeError(f"--seconds {seconds:g}: must be above 0")
    folder = calibration_folder(cfg, pipeline)
    sampled = sample(cfg, frames, seconds)
    errors = {s.stream: s.error for s in sampled if s.error and not s.frames}
    if not any(s.frames for s in sampled):
        raise RuntimeError(f"no frame from any stream: {errors}")
    meta = {"pipeline": str(pipeline), "seconds": seconds, "made": time.time()}
    cs = to_set(folder, sampled, frames, meta)
    model = cfg.model.model_copy(update={"calibration": str(folder)})
    detector = create_detector(model, cfg.batching.max_batch)
    reports: list[GuardReport] = list(getattr(detector, "guard_reports", []))
    floor = (cfg.model.guard_recall, cfg.model.guard_precision)
    return Outcome(
        folder=folder,
        frames=len(cs.frames),
        held=len(cs.held),
        per_stream={s.stream: sum(1 for f in cs.frames if f.stream == s.stream) for s in sampled},
        errors={s.stream: s.error for s in sampled if s.error},
        backend=detector.backend,
        precision=str(getattr(detector, "precision", "fp32")),
        guard=reports,
        verdicts=[r.verdict(*floor)[1] for r in reports],
    )


def format_outcome(o: Outcome) -> str:
    lines = [f"calibration set {o.folder}: {o.frames} frames ({o.held} held out for the guard); "
             f"per stream {o.per_stream}"]  # fmt: skip
    lines += [f"  stream {s}: {e}" for s, e in o.errors.items()]
    lines += [f"  guard: {v}" for v in o.verdicts]
    lines.append(f"detector: {o.backend} (precision {o.precision}); `streamd run` reuses it")
    return "\n".join(lines)
