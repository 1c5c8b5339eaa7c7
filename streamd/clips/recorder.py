"""A camera's pre-roll of compressed packets and the clips being cut from it.

The decoding thread hands every demuxed video packet to :meth:`ClipRecorder.on_packet`
(a copy of its bytes into a deque, a lock taken briefly) and says which pts each
announced frame had (:meth:`on_frame`); the analysis thread, when a track raises an
alert, asks for that track's clip (:meth:`request`) and gets its id and path at once
(the alert carries them). The clip starts at the keyframe at or before ``alert -
pre_s`` and runs to ``post_s`` after the track's last alert (each alert of the track
while its clip is open pushes the end out), at most ``max_s``. Packets go to the
:class:`~streamd.clips.writer.ClipWriter` thread through its bounded queue; nothing
here waits for the disk.

Times are a session's own pts: a session is one open-to-close of the source, so a
reconnect (or a file's loop) ends every clip of the session before: the clip ends at
the gap and stays playable. The session before is kept, so an alert of a frame
decoded just before the gap (analysis lags decoding) still gets its clip.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import av
import av.stream

from streamd import metrics
from streamd.clips.store import Retention, new_clip_id, stream_folder
from streamd.clips.writer import (
    AppendPacket,
    ClipRef,
    ClipWriter,
    CloseClip,
    Message,
    OpenClip,
    PacketRec,
    Template,
)
from streamd.config import ClipsConfig, StreamConfig

log = logging.getLogger(__name__)

# Kept beyond pre_s: an alert is raised after its frame was detected and analysed,
# while decoding went on; its pre-roll must still be here then.
LAG_S = 3.0
MAX_BUFFER_BYTES = 64 * 1024 * 1024  # per camera, whatever its bitrate
FRAME_MEMORY = 4096  # announced frames whose pts an alert can still be placed at


class Sink(Protocol):
    def offer(self, message: Message) -> bool: ...


@dataclass(slots=True)
class _Session:
    number: int
    template: Template | None
    time_base: Fraction
    packets: deque[PacketRec] = field(default_factory=deque)
    keys: deque[float] = field(default_factory=deque)  # keyframe times in ``packets``
    bytes: int = 0
    count: int = 0  # packets so far: the next one's serial
    newest: float = float("-inf")
    last_dts_t: float = float("-inf")
    ended: bool = False


@dataclass(slots=True)
class _Clip:
    ref: ClipRef
    track: int
    session: _Session
    start_t: float
    end_t: float
    cap_t: float
    last_n: int  # serial of the last packet sent to the writer
    alerts: int = 1


class ClipRecorder:
    """One camera's pre-roll and open clips (thread-safe: decoding and analysis threads).

    A clip stays open until the analysis has passed its end (an analysed frame later
    than it, or the state change that follows the session's last frame), so an alert
    of the track that the analysis raises late still extends it; packets past the end
    wait in the pre-roll meanwhile, and go to the writer only if the end moves out.
    """

    def __init__(
        self, stream: str, cfg: ClipsConfig, folder: Path, sink: Sink, owned: bool = False
    ) -> None:
        """``owned``: ``sink`` is this recorder's :class:`ClipWriter` (closed by
        :meth:`shutdown`)."""
        self.stream = stream
        self.cfg = cfg
        self.folder = folder
        self._sink = sink
        self._owned = sink if owned and isinstance(sink, ClipWriter) else None
        self._lock = threading.Lock()
        self._session: _Session | None = None
        self._previous: _Session | None = None
        self._sessions = 0
        self._frames: dict[int, tuple[int, float]] = {}  # frame index → (session, pts s)
        self._order: deque[int] = deque()
        self._open: dict[int, _Clip] = {}  # track → its open clip
        self._closing: deque[CloseClip] = deque()  # closes the full queue refused, retried
        self._unsupported_said = False
        self._dropped = {c: metrics.CLIPS_DROPPED.labels(stream, c)
                         for c in ("queue_full", "no_packets", "unsupported")}  # fmt: skip

    # --- the decoding thread -------------------------------------------------------------

    def begin_session(self, stream: av.stream.Stream) -> None:
        """A new open of the source (after a reconnect, or a file's loop)."""
        template: Template | None
        try:
            template = Template(stream)
        except (ValueError, av.FFmpegError) as e:
            template = None
            if not self._unsupported_said:
                self._unsupported_said = True
                log.warning("clips of %s: this video cannot go into MP4 (%s): no clips",
                            self.stream, e)  # fmt: skip
        with self._lock:
            if self._session is not None:
                self._session.ended = True
            if self._previous is not None:  # two gaps ago: nothing more can come for it
                self._close_where(lambda c: c.session is self._previous)
            self._sessions += 1
            tb = stream.time_base or Fraction(1, 90000)
            self._previous, self._session = self._session, _Session(self._sessions, template, tb)

    def end_session(self) -> None:
        """The source closed (a reconnect follows, or the file ended): the session's clips
        end at the gap, once the analysis has seen its last frames (:meth:`drain`)."""
        with self._lock:
            if self._session is not None:
                self._session.ended = True

    def on_packet(self, packet: av.Packet[Any]) -> None:
        if packet.pts is None or packet.size == 0:
            return  # nothing to place on the clock (the demuxer's flush packet)
        with self._lock:
            s = self._session
            if s is None or s.ended:
                return
            rec = _record(packet, s.time_base, s.count)
            s.count += 1
            self._retry_closes()
            s.packets.append(rec)
            s.bytes += len(rec.data)
            s.newest = max(s.newest, rec.t)
            s.last_dts_t = rec.dts_t
            if rec.key:
                s.keys.append(rec.t)
            for clip in [c for c in self._open.values() if c.session is s]:
                self._feed(clip, rec)
            self._trim(s)

    def on_frame(self, index: int, pts_s: float | None) -> None:
        """An announced frame (``FrameRef.frame``) and its pts, for :meth:`request`."""
        if pts_s is None:
            return
        with self._lock:
            if self._session is None:
                return
            self._frames[index] = (self._session.number, pts_s)
            self._order.append(index)
            while len(self._order) > FRAME_MEMORY:
                self._frames.pop(self._order.popleft(), None)

    # --- the analysis thread -------------------------------------------------------------

    def request(self, track: int, frame: int, wall: float | None = None) -> ClipRef | None:
        """The clip of ``track``'s alert at ``frame``: its open clip, pushed out to
        ``post_s`` after this alert, or a new one; None when no clip can be made (counted)."""
        with self._lock:
            placed = self._frames.get(frame)
            session = self._find(placed[0]) if placed is not None else None
            if placed is None or session is None:
                self._dropped["no_packets"].inc()
                return None
            t = placed[1]
            clip = self._open.get(track)
            if clip is not None and clip.session is session and t <= clip.end_t:
                self._extend(clip, min(t + self.cfg.post_s, clip.cap_t))
                clip.alerts += 1
                return clip.ref
            if clip is not None:
                self._close_where(lambda c: c is clip)
            return self._start(track, session, t, time.time() if wall is None else wall)

    def analysed(self, frame: int) -> None:
        """The analysis is done with ``frame``: clips that end before it (or belong to a
        session before its) can get no more alerts."""
        with self._lock:
            placed = self._frames.get(frame)
            if placed is None or not self._open:
                return
            number, t = placed
            self._close_where(lambda c: c.session.number < number
                              or (c.session.number == number and t > c.end_t))  # fmt: skip

    def drain(self) -> None:
        """The analysis has every frame announced so far (a state change was applied):
        clips of a session that is over end now."""
        with self._lock:
            self._close_where(lambda c: c.session.ended)

    def close(self) -> None:
        """The camera stops: its open clips end with what they have."""
        with self._lock:
            self._close_where(lambda c: True, "stop")
            self._retry_closes()

    def shutdown(self, timeout_s: float) -> None:
        """End the open clips and let the writer finish them (up to ``timeout_s``)."""
        self.close()
        if self._owned is not None:
            self._owned.close(timeout_s)

    # --- under the lock ------------------------------------------------------------------

    def _find(self, number: int) -> _Session | None:
        for s in (self._session, self._previous):
            if s is not None and s.number == number:
                return s
        return None

    def _start(self, track: int, s: _Session, t: float, wall: float) -> ClipRef | None:
        if s.template is None:
            self._dropped["unsupported"].inc()
            return None
        packets = list(s.packets)
        first = _start_index(packets, t - self.cfg.pre_s)
        if first is None:
            self._dropped["no_packets"].inc()
            return None
        start_t = packets[first].t
        cap_t = start_t + self.cfg.max_s
        end_t = min(t + self.cfg.post_s, cap_t)
        take = tuple(itertools.takewhile(lambda p: p.dts_t <= end_t, packets[first:]))
        if not take:  # the alert's frame left the buffer long ago
            self._dropped["no_packets"].inc()
            return None
        clip_id = new_clip_id(self.stream, track, wall)
        ref = ClipRef(clip_id, self.folder / f"{clip_id}.mp4")
        info: dict[str, Any] = {"stream": self.stream, "track_id": track,
                                "alert_ts": round(wall, 3), "start_pts_s": round(start_t, 6),
                                "alert_pts_s": round(t, 6)}  # fmt: skip
        if not self._sink.offer(OpenClip(ref, s.template, take, info)):
            self._dropped["queue_full"].inc()
            log.warning("clips of %s: writer queue full; no clip for track %d", self.stream, track)
            return None
        self._open[track] = _Clip(ref, track, s, start_t, end_t, cap_t, take[-1].n)
        return ref

    def _extend(self, clip: _Clip, end_t: float) -> None:
        """A later end: the packets up to it that waited in the pre-roll go out now."""
        if end_t <= clip.end_t:
            return
        clip.end_t = end_t
        for rec in clip.session.packets:
            if rec.n > clip.last_n and not self._send(clip, rec):
                return

    def _feed(self, clip: _Clip, rec: PacketRec) -> None:
        if rec.n == clip.last_n + 1:
            self._send(clip, rec)
        if rec.dts_t > clip.end_t + LAG_S:  # the pre-roll would not hold an extension
            self._close_where(lambda c: c is clip)

    def _send(self, clip: _Clip, rec: PacketRec) -> bool:
        """Send ``rec`` (the clip's next packet) if it is within the clip; False once past."""
        if rec.dts_t > clip.end_t or rec.n != clip.last_n + 1:
            return False
        if not self._sink.offer(AppendPacket(clip.ref.id, rec)):
            self._dropped["queue_full"].inc()
            log.warning("clips of %s: writer queue full; clip %s ends here", self.stream,
                        clip.ref.id)  # fmt: skip
            self._close_where(lambda c: c is clip, "queue_full")
            return False
        clip.last_n = rec.n
        return True

    def _close_where(self, which: Callable[[_Clip], bool], reason: str | None = None) -> None:
        for track, clip in list(self._open.items()):
            if which(clip):
                del self._open[track]
                self._close(clip, reason or self._why_ended(clip))

    def _why_ended(self, clip: _Clip) -> str:
        s = clip.session
        if s.ended and clip.last_n == s.count - 1 and s.last_dts_t < clip.end_t:
            return "gap"  # it had every packet the session had
        return "max_s" if clip.end_t >= clip.cap_t else "post_s"

    def _close(self, clip: _Clip, reason: str) -> None:
        msg = CloseClip(clip.ref.id, reason, {"alerts": clip.alerts,
                                              "end_pts_s": round(clip.end_t, 6)})  # fmt: skip
        if not self._sink.offer(msg):
            self._closing.append(msg)  # said once there is room; the writer waits for it

    def _retry_closes(self) -> None:
        while self._closing and self._sink.offer(self._closing[0]):
            self._closing.popleft()

    def _trim(self, s: _Session) -> None:
        """Keep from the last keyframe at or before ``newest - pre_s - LAG_S`` (and within
        the byte bound: then from the next keyframe)."""
        keep_from = s.newest - self.cfg.pre_s - LAG_S
        while len(s.keys) >= 2 and (s.keys[1] <= keep_from or s.bytes > MAX_BUFFER_BYTES):
            s.keys.popleft()
            head = s.keys[0]
            while s.packets and not (s.packets[0].key and s.packets[0].t == head):
                s.bytes -= len(s.packets.popleft().data)


def _record(packet: av.Packet[Any], tb: Fraction, n: int) -> PacketRec:
    pts = int(packet.pts or 0)
    dts = None if packet.dts is None else int(packet.dts)
    return PacketRec(bytes(packet), pts, dts, int(packet.duration or 0), bool(packet.is_keyframe),
                     float(pts * tb), float((pts if dts is None else dts) * tb), n)  # fmt: skip


def _start_index(packets: list[PacketRec], t: float) -> int | None:
    """The keyframe at or before ``t`` (the first one buffered if none is that early)."""
    best = None
    for i, p in enumerate(packets):
        if not p.key:
            continue
        if p.t > t and best is not None:
            break
        best = i
        if p.t > t:
            break
    return best


def start_clips(stream: StreamConfig, journal_path: str | None) -> ClipRecorder | None:
    """The stream's recorder with its writer thread running; None when clips are off."""
    cfg = stream.clips
    if not cfg.enabled:
        return None
    folder = stream_folder(stream, journal_path)
    keep = Retention(cfg.retention_days * 86400.0, int(cfg.max_gb * 1024**3))
    return ClipRecorder(stream.id, cfg, folder, ClipWriter(stream.id, folder, keep), owned=True)
