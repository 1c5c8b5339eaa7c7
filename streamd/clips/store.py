"""Event clips on disk: where a stream's clips live, their ids, listing, lookup, retention.

A stream's clips are ``<dir>/<stream id>/<clip id>.mp4``, each with a sidecar
``<clip id>.json`` saying what it holds (written once the MP4 is finished); a clip
being written is ``<clip id>.mp4.part``. The folder is 0700 and every file 0600:
clips show people.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamd.config import StreamConfig

log = logging.getLogger(__name__)

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# Stream id (config's pattern), UTC time to the millisecond, the track, 6 random hex digits.
CLIP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}-\d{8}T\d{9}Z-t\d{1,12}-[0-9a-f]{6}", re.ASCII)
PART = ".part"


def new_clip_id(stream: str, track_id: int, wall: float) -> str:
    """A clip's id: ``<stream>-<UTC yyyymmddThhmmssmmm>Z-t<track>-<random>``."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(wall)) + f"{int(wall * 1000) % 1000:03d}"
    return f"{stream}-{stamp}Z-t{track_id}-{secrets.token_hex(3)}"


def valid_clip_id(clip_id: str) -> bool:
    # fullmatch, ASCII: '$' lets a trailing newline through, \d takes any script's digits.
    return CLIP_ID.fullmatch(clip_id) is not None


def clips_root(stream: StreamConfig, journal_path: str | None) -> Path:
    """The folder that holds the stream's folder: ``clips.dir``, or beside the journal
    (``<journal name>.clips``)."""
    if stream.clips.dir is not None:
        return Path(stream.clips.dir)
    journal = Path(journal_path or "streamd.alerts.sqlite")
    name = journal.name.removesuffix(".sqlite").removesuffix(".alerts")
    return journal.with_name(f"{name}.clips")


def stream_folder(stream: StreamConfig, journal_path: str | None) -> Path:
    return clips_root(stream, journal_path) / stream.id


def private_folder(folder: Path) -> None:
    """Create ``folder`` (and missing parents) 0700; an existing stream folder of ours
    that lets others in is made 0700."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)  # the umask can only narrow it
    st = folder.stat()
    if stat.S_IMODE(st.st_mode) != PRIVATE_DIR_MODE and st.st_uid == os.getuid():
        os.chmod(folder, PRIVATE_DIR_MODE)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (0600) through a temporary file and a rename."""
    tmp = path.with_name(path.name + PART)
    fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
    os.fchmod(fd, PRIVATE_FILE_MODE)  # a leftover temporary file keeps its old mode otherwise
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class StoredClip:
    """A finished clip: its MP4 and what its sidecar says."""

    id: str
    stream: str
    path: Path
    bytes: int
    mtime: float
    info: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {**self.info, "id": self.id, "stream": self.stream, "path": str(self.path),
                "bytes": self.bytes}  # fmt: skip


def _regular(path: Path) -> os.stat_result | None:
    try:
        st = path.lstat()  # a symlink is never followed out of the folder
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def list_folder(stream: str, folder: Path, sidecars: bool = True) -> list[StoredClip]:
    """The finished clips in one stream's folder, oldest first (``sidecars``: with what
    each one's sidecar says)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    clips = []
    for name in names:
        clip_id = name.removesuffix(".mp4")
        if not name.endswith(".mp4") or not valid_clip_id(clip_id):
            continue
        path = folder / name
        st = _regular(path)
        if st is None:
            continue
        info = _sidecar(folder / f"{clip_id}.json") if sidecars else {}
        clips.append(StoredClip(clip_id, stream, path, st.st_size, st.st_mtime, info))
    return sorted(clips, key=lambda c: (c.mtime, c.id))


def _sidecar(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def list_clips(streams: Iterable[StreamConfig], journal_path: str | None) -> list[StoredClip]:
    """Every finished clip of these streams (those with clips enabled), oldest first."""
    out: list[StoredClip] = []
    for s in streams:
        if s.clips.enabled:
            out += list_folder(s.id, stream_folder(s, journal_path))
    return sorted(out, key=lambda c: (c.mtime, c.id))


@dataclass(frozen=True, slots=True)
class Found:
    """What a lookup found: a finished clip, one still being written, or nothing."""

    path: Path | None
    recording: bool = False


def find_clip(clip_id: str, streams: Iterable[StreamConfig], journal_path: str | None) -> Found:
    """The finished MP4 of ``clip_id`` among these streams' folders. The id is checked
    against :data:`CLIP_ID` first (no separators, no dots), and only a regular file
    directly inside a stream's folder is returned."""
    if not valid_clip_id(clip_id):
        return Found(None)
    recording = False
    for s in streams:
        if not s.clips.enabled or not clip_id.startswith(f"{s.id}-"):
            continue
        folder = stream_folder(s, journal_path)
        path = folder / f"{clip_id}.mp4"
        if path.parent != folder:
            continue
        if _regular(path) is not None:
            return Found(path)
        recording = recording or _regular(path.with_name(path.name + PART)) is not None
    return Found(None, recording)


@dataclass(frozen=True, slots=True)
class Retention:
    max_age_s: float
    max_bytes: int


def prune(folder: Path, keep: Retention, now: float | None = None) -> dict[str, int]:
    """Delete the folder's clips older than ``keep.max_age_s``, then the oldest until the
    rest fit in ``keep.max_bytes``; how many went, by cause (age, size)."""
    now = time.time() if now is None else now
    deleted = {"age": 0, "size": 0}
    clips = list_folder("", folder, sidecars=False)
    fresh = []
    for c in clips:
        if now - c.mtime > keep.max_age_s:
            deleted["age"] += _delete(c)
        else:
            fresh.append(c)
    total = sum(c.bytes for c in fresh)
    for c in fresh:  # oldest first
        if total <= keep.max_bytes:
            break
        deleted["size"] += _delete(c)
        total -= c.bytes
    return deleted


def _delete(clip: StoredClip) -> int:
    try:
        clip.path.unlink()
    except FileNotFoundError:
        return 0
    except OSError as e:
        log.error("clips: cannot delete %s: %s", clip.path, e)
        return 0
    try:
        clip.path.with_suffix(".json").unlink(missing_ok=True)
    except OSError as e:
        log.warning("clips: cannot delete %s: %s", clip.path.with_suffix(".json"), e)
    return 1


def remove_partial(folder: Path) -> int:
    """Delete clips a process before this one left half written (it died writing)."""
    removed = 0
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.endswith(PART) and _regular(folder / name) is not None:
            (folder / name).unlink(missing_ok=True)
            removed += 1
    return removed


class ClipIndex:
    """The supervisor's view of every clip folder, for ``GET /clips`` and ``/clips/<id>.mp4``:
    the streams configured now (streams change at runtime) and the journal's path."""

    def __init__(self, streams: Callable[[], list[StreamConfig]], journal_path: str | None) -> None:
        self._streams = streams
        self._journal = journal_path

    def find(self, clip_id: str) -> Found:
        return find_clip(clip_id, self._streams(), self._journal)

    def list(self) -> list[StoredClip]:
        return list_clips(self._streams(), self._journal)
