"""A calibration set on disk: frames from the pipeline's own streams, some held out.

``streamd calibrate`` writes one (``streamd/calibrate.py``); INT8 quantisation
(onnxruntime, TensorRT) calibrates on its ``calibrate`` frames and the
accuracy guard judges the result on its ``held`` frames, which calibration
never saw. The folder holds lossless PNG frames and a ``manifest.json``
saying, per frame, which stream and media time it came from, whether it is
held out and, where the source had ground truth (``streamd synth`` writes
it), the true boxes. A folder of plain images without a manifest works too:
every fourth image is held out. The set's ``digest`` (of the file names and
bytes) is part of every cache key built from it, so a new set means a new
model, and the same set is never calibrated twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from streamd.detect.base import DetectorError

MANIFEST = "manifest.json"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
HOLD_EVERY = 4  # without a manifest: every fourth frame is held out


@dataclass(frozen=True, slots=True)
class CalibrationFrame:
    file: str
    stream: str = ""
    t: float = 0.0  # media seconds into the stream
    held: bool = False
    truth: list[list[float]] | None = None  # xyxy in frame pixels; None: no ground truth


@dataclass(frozen=True, slots=True)
class CalibrationSet:
    folder: Path
    frames: tuple[CalibrationFrame, ...]
    digest: str = field(default="")

    @property
    def calibrate(self) -> list[CalibrationFrame]:
        return [f for f in self.frames if not f.held]

    @property
    def held(self) -> list[CalibrationFrame]:
        return [f for f in self.frames if f.held]

    def images(self, frames: Sequence[CalibrationFrame]) -> list[npt.NDArray[np.uint8]]:
        import cv2

        out = []
        for f in frames:
            image = cv2.imread(str(self.folder / f.file), cv2.IMREAD_COLOR)
            if image is None:
                raise DetectorError(f"calibration set {self.folder}: cannot read {f.file}")
            out.append(np.ascontiguousarray(image, dtype=np.uint8))
        return out


def load_calibration(folder: Path) -> CalibrationSet | None:
    """The set in ``folder``; None when the folder does not exist or holds no image."""
    if not folder.is_dir():
        return None
    files = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        return None
    manifest = folder / MANIFEST
    if manifest.is_file():
        frames = _from_manifest(folder, manifest, set(files))
    else:
        frames = tuple(CalibrationFrame(name, held=i % HOLD_EVERY == HOLD_EVERY - 1)
                       for i, name in enumerate(files))  # fmt: skip
    if not any(not f.held for f in frames):
        raise DetectorError(f"calibration set {folder}: every frame is held out")
    return CalibrationSet(folder, frames, _digest(folder, frames))


def _from_manifest(folder: Path, manifest: Path, files: set[str]) -> tuple[CalibrationFrame, ...]:
    try:
        rows = json.loads(manifest.read_text())["frames"]
        frames = tuple(
            CalibrationFrame(
                file=str(r["file"]),
                stream=str(r.get("stream", "")),
                t=float(r.get("t", 0.0)),
                held=bool(r.get("held", False)),
                truth=[[float(v) for v in box] for box in r["truth"]]
                if r.get("truth") is not None
                else None,
            )
            for r in rows
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DetectorError(f"calibration set {folder}: unreadable {MANIFEST}: {e}") from e
    missing = [f.file for f in frames if f.file not in files]
    if missing:
        raise DetectorError(
            f"calibration set {folder}: {MANIFEST} names missing files {missing[:3]}"
        )
    return frames


def _digest(folder: Path, frames: Sequence[CalibrationFrame]) -> str:
    h = hashlib.sha256()
    for f in frames:
        h.update(f"{f.file}\0{int(f.held)}\0".encode())
        h.update(hashlib.sha256((folder / f.file).read_bytes()).digest())
    return h.hexdigest()


def write_calibration(
    folder: Path, frames: Sequence[tuple[CalibrationFrame, npt.NDArray[np.uint8]]],
    meta: dict[str, Any],
) -> CalibrationSet:  # fmt: skip
    """Replace ``folder`` with these frames (PNG) and their manifest, atomically: a reader
    sees the old set or the new one, never a mix."""
    import cv2

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        for f, image in frames:
            if not cv2.imwrite(str(tmp / f.file), image):
                raise DetectorError(f"cannot write {tmp / f.file}")
        rows = [
            {"file": f.file, "stream": f.stream, "t": round(f.t, 3), "held": f.held,
             "truth": f.truth}
            for f, _ in frames
        ]  # fmt: skip
        (tmp / MANIFEST).write_text(json.dumps({**meta, "frames": rows}, indent=1) + "\n")
        old = folder.with_name(f".{folder.name}-old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    written = load_calibration(folder)
    if written is None:
        raise DetectorError(f"calibration set {folder}: nothing was written")
    return written
