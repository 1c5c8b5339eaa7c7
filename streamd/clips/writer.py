"""The clip writer: a thread of the camera's process that remuxes packets into MP4 files.

The decoding thread only copies each packet's bytes into the pre-roll buffer and,
for a clip being recorded, offers it here through a bounded queue that never
blocks (:meth:`ClipWriter.offer`). Muxing, the file system, fsync-free renames and
retention all happen on this thread, so a slow or full disk costs the camera no
frames: a failed write is logged, counted and the clip removed; analysis goes on.

No re-encoding: the packets are the camera's own, so a clip costs a copy of its
bytes, not a decoder and an encoder (and keeps the camera's quality).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.container
import av.stream

from streamd import metrics
from streamd.clips.store import (
    PART,
    PRIVATE_FILE_MODE,
    Retention,
    private_folder,
    prune,
    remove_partial,
    write_private,
)

log = logging.getLogger(__name__)

QUEUE_ITEMS = 2048  # packets (or whole pre-rolls) waiting for the writer
PRUNE_EVERY_S = 600.0  # retention also runs after every finished clip


@dataclass(frozen=True, slots=True)
class PacketRec:
    """One compressed video packet, copied out of the demuxer (the input may close)."""

    data: bytes
    pts: int
    dts: int | None
    duration: int
    key: bool
    t: float  # pts in seconds, on the session's clock
    dts_t: float  # dts in seconds (pts when the packet has none)
    n: int = 0  # the packet's serial in its session (demux order)


@dataclass(frozen=True, slots=True)
class ClipRef:
    """What an alert carries: the clip's id and the path its MP4 will have."""

    id: str
    path: Path


class Template:
    """A session's codec parameters (extradata included), held apart from the input.

    The input container closes at a reconnect while a clip of it may still be
    written; an output stream of a never-started in-memory container keeps a copy of
    the parameters for as long as a clip needs them.
    """

    def __init__(self, stream: av.stream.Stream) -> None:
        import io

        self._holder = av.open(io.BytesIO(), "w", format="mp4")
        self.stream = self._holder.add_stream_from_template(stream)
        tb = stream.time_base
        if tb is None:
            raise ValueError("the video stream has no time base")
        self.time_base: Fraction = tb


@dataclass(frozen=True, slots=True)
class OpenClip:
    ref: ClipRef
    template: Template
    packets: tuple[PacketRec, ...]  # from the keyframe that starts it
    info: dict[str, Any]  # for the sidecar


@dataclass(frozen=True, slots=True)
class AppendPacket:
    clip_id: str
    packet: PacketRec


@dataclass(frozen=True, slots=True)
class CloseClip:
    clip_id: str
    reason: str  # post_s, max_s, gap, stop, queue_full
    info: dict[str, Any] = field(default_factory=dict)


Message = OpenClip | AppendPacket | CloseClip


@dataclass(slots=True)
class _Output:
    ref: ClipRef
    part: Path
    container: av.container.OutputContainer
    stream: av.stream.Stream
    time_base: Fraction
    base: int  # the first packet's pts: clip time 0
    info: dict[str, Any]
    last_dts: int | None = None
    end_pts: int = 0
    packets: int = 0
    skipped: int = 0


class ClipWriter:
    """``offer(message)`` from the camera's threads; files written on this one."""

    def __init__(self, stream: str, folder: Path, keep: Retention, items: int = QUEUE_ITEMS):
        self.stream = stream
        self.folder = folder
        self.keep = keep
        self._queue: queue.Queue[Message | None] = queue.Queue(maxsize=items)
        self._outputs: dict[str, _Output] = {}
        self._failed: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="clips", daemon=True)
        self._thread.start()

    def offer(self, message: Message) -> bool:
        """Queue without waiting; False when the queue is full (the caller counts it)."""
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            return False
        return True

    def close(self, timeout_s: float) -> bool:
        """Finish what is queued and the clips still open (up to ``timeout_s``)."""
        if not self._thread.is_alive():
            return True
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=max(0.01, timeout_s))
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.error("clips of %s: the writer did not finish within %.0fs (disk stuck?)",
                      self.stream, timeout_s)  # fmt: skip
            return False
        return True

    def _run(self) -> None:
        try:
            self._serve()
        except Exception:  # the queue fills and every clip after counts as dropped
            log.exception("clips of %s: the writer died", self.stream)
            raise

    def _serve(self) -> None:
        try:
            private_folder(self.folder)
            if removed := remove_partial(self.folder):
                log.warning("clips of %s: %d half-written clip(s) removed", self.stream, removed)
        except OSError as e:
            log.error("clips of %s: folder %s unusable: %s", self.stream, self.folder, e)
        next_prune = time.monotonic()
        while True:
            if time.monotonic() >= next_prune:
                self._prune()
                next_prune = time.monotonic() + PRUNE_EVERY_S
            try:
                msg = self._queue.get(timeout=max(0.1, next_prune - time.monotonic()))
            except queue.Empty:
                continue
            if msg is None:
                break
            self._handle(msg)
        for clip_id in list(self._outputs):
            self._finish(clip_id, "stop", {})

    def _handle(self, msg: Message) -> None:
        clip_id = msg.ref.id if isinstance(msg, OpenClip) else msg.clip_id
        if clip_id in self._failed:  # the rest of a clip that failed: its close ends it
            if isinstance(msg, CloseClip):
                self._failed.discard(clip_id)
            return
        try:
            if isinstance(msg, OpenClip):
                self._open(msg)
            elif isinstance(msg, AppendPacket):
                out = self._outputs.get(clip_id)
                if out is not None:
                    self._mux(out, msg.packet)
            else:
                self._finish(clip_id, msg.reason, msg.info)
        except Exception as e:
            self._fail(clip_id, e)

    def _open(self, msg: OpenClip) -> None:
        private_folder(self.folder)
        part = msg.ref.path.with_name(msg.ref.path.name + PART)
        # Created 0600 before ffmpeg opens it (and truncates it, keeping the mode).
        os.close(os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE_MODE))
        try:
            # faststart: the index moves to the front at close, so a player starts at once.
            container = av.open(str(part), "w", format="mp4",
                                options={"movflags": "+faststart"})  # fmt: skip
            try:
                stream = container.add_stream_from_template(msg.template.stream)
            except BaseException:
                container.close()
                raise
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        out = _Output(msg.ref, part, container, stream, msg.template.time_base,
                      msg.packets[0].pts, dict(msg.info))  # fmt: skip
        self._outputs[msg.ref.id] = out
        for rec in msg.packets:
            self._mux(out, rec)

    def _mux(self, out: _Output, rec: PacketRec) -> None:
        pts = rec.pts - out.base
        dts = pts if rec.dts is None else rec.dts - out.base
        if out.last_dts is not None and dts <= out.last_dts:
            out.skipped += 1  # a damaged stream's timestamps: the muxer would refuse it
            return
        packet = av.Packet(rec.data)
        packet.stream = out.stream
        packet.time_base = out.time_base
        packet.pts, packet.dts, packet.duration = pts, dts, rec.duration
        packet.is_keyframe = rec.key
        out.container.mux(packet)
        out.last_dts = dts
        out.end_pts = max(out.end_pts, pts + rec.duration)
        out.packets += 1

    def _finish(self, clip_id: str, reason: str, info: dict[str, Any]) -> None:
        out = self._outputs.pop(clip_id, None)
        if out is None:
            return
        try:
            out.container.close()  # the trailer (moov)
            os.replace(out.part, out.ref.path)
            sidecar = {
                **out.info,
                **info,
                "id": out.ref.id,
                "ended": reason,
                "duration_s": round(float(out.end_pts * out.time_base), 3),
                "packets": out.packets,
                "finished": round(time.time(), 3),
            }
            write_private(out.ref.path.with_suffix(".json"), json.dumps(sidecar).encode())
        except Exception as e:
            self._fail(clip_id, e, out, closed=True)
            return
        metrics.CLIPS_WRITTEN.labels(self.stream).inc()
        log.info("clip %s written (%.1fs, %s)", out.ref.path.name, sidecar["duration_s"], reason)
        self._prune()

    def _fail(
        self, clip_id: str, e: Exception, out: _Output | None = None, closed: bool = False
    ) -> None:
        """Count and log the clip's loss and remove its file; ``closed``: its close came
        (else what the camera still sends for it is ignored until then)."""
        out = out or self._outputs.pop(clip_id, None)
        if not closed:
            self._failed.add(clip_id)
        full = getattr(e, "errno", None) == errno.ENOSPC
        cause = "disk_full" if full else "io_error"
        metrics.CLIPS_DROPPED.labels(self.stream, cause).inc()
        log.error("clip %s of %s not written (%s): %s", clip_id, self.stream, cause, e)
        if out is not None:
            with contextlib.suppress(Exception):
                out.container.close()
            with contextlib.suppress(OSError):
                out.part.unlink(missing_ok=True)
                out.ref.path.unlink(missing_ok=True)

    def _prune(self) -> None:
        try:
            deleted = prune(self.folder, self.keep)
        except OSError as e:
            log.error("clips of %s: retention failed: %s", self.stream, e)
            return
        for cause, n in deleted.items():
            if n:
                metrics.CLIPS_DELETED.labels(self.stream, cause).inc(n)
                log.info("clips of %s: %d deleted (%s)", self.stream, n, cause)
