"""Event clips: MP4s of the seconds around a track's alerts, remuxed from the camera's
own packets in the camera's process (``recorder``: pre-roll and clip assembly,
``writer``: the thread that writes them, ``store``: folders, ids, listing, retention)."""

from streamd.clips.recorder import ClipRecorder, start_clips
from streamd.clips.store import ClipIndex, StoredClip, find_clip, list_clips, valid_clip_id
from streamd.clips.writer import ClipRef, ClipWriter

__all__ = [
    "ClipIndex",
    "ClipRecorder",
    "ClipRef",
    "ClipWriter",
    "StoredClip",
    "find_clip",
    "list_clips",
    "start_clips",
    "valid_clip_id",
]
