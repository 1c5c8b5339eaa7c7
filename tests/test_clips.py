"""Event clips (streams[i].clips): MP4s remuxed from a camera's packets around its alerts.

Real parts throughout: synthetic H.264 scenes, PyAV, ffprobe, the real daemon with
the ``null`` detector (its boxes drift smoothly, so tracks and zone/line rules fire
at known-ish times; what matters here is the clip, not the boxes).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import jsonschema
import numpy as np
import pytest

from streamd.clips import writer as writer_mod
from streamd.clips.recorder import ClipRecorder
from streamd.clips.store import Retention, list_folder, prune, valid_clip_id
from streamd.clips.writer import ClipRef, ClipWriter, Message
from streamd.config import ClipsConfig, ConfigError, parse_config
from streamd.publish import load_schema

from .daemon import running_daemon, write_pipeline
from .util import free_port

FPS = 15  # the synth scenes have a keyframe every FPS frames: a GOP of 1 s
GOP_S = 1.0
# A clip is cut in decode order (a packet goes in while its dts is within the clip: the
# frames it references always do), so its last frame shown may lie up to the encoder's
# reordering depth past the end: x264's B-pyramid, a handful of frames.
REORDER_S = 6 / FPS
NULL_MODEL = {"backend": "null", "null_boxes": 3, "imgsz": 320}
WHOLE_FRAME = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamd.synth import SceneSpec, write_scene

    path = tmp_path_factory.mktemp("clips") / "walk.mp4"
    write_scene(path, SceneSpec(width=320, height=180, fps=FPS, seconds=7.0, people=2))
    return path


def ffprobe(path: Path, *entries: str) -> dict[str, Any]:
    exe = shutil.which("ffprobe")
    assert exe, "ffprobe missing: `make system-deps` installs ffmpeg"
    out = subprocess.run(
        [exe, "-v", "error", "-of", "json", *entries, str(path)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def probe(path: Path) -> tuple[float, list[dict[str, Any]]]:
    """(duration, frames in presentation order) as ffprobe reads the file."""
    fmt = ffprobe(path, "-show_entries", "format=duration")
    frames = ffprobe(path, "-select_streams", "v", "-show_entries",
                     "frame=key_frame,pict_type,pts_time")["frames"]  # fmt: skip
    return float(fmt["format"]["duration"]), frames


def decoded(path: Path) -> dict[int, np.ndarray]:
    """Every frame of a file by pts in milliseconds (rounded), as BGR."""
    with av.open(str(path)) as c:
        return {round(float(f.time) * 1000): f.to_ndarray(format="bgr24")
                for f in c.decode(video=0)}  # fmt: skip


def assert_matches_source(clip: Path, source: Path, start_pts_s: float, around_s: float,
                          half_window_s: float = 0.5) -> None:  # fmt: skip
    """The clip's frames near ``around_s`` (source time) are the source's frames at the
    same pts (clip time 0 is source time ``start_pts_s``)."""
    src = decoded(source)
    got = decoded(clip)
    near = 0
    for ms, image in got.items():
        t = start_pts_s + ms / 1000.0
        if abs(t - around_s) > half_window_s:
            continue
        ref = src.get(round(t * 1000))
        assert ref is not None, f"the source has no frame at {t:.3f}s"
        assert np.abs(ref.astype(np.int16) - image.astype(np.int16)).max() <= 1, f"frame {t:.3f}s"
        near += 1
    assert near >= int(2 * half_window_s * FPS) - 1, f"only {near} frames near {around_s:.2f}s"


# --- configuration -----------------------------------------------------------------------


def _cfg(clips: dict[str, Any]) -> str:
    return json.dumps({"streams": [{"id": "cam", "url": "/tmp/x.mp4", "clips": clips}]})


@pytest.mark.parametrize(
    ("clips", "key"),
    [
        ({"enabled": True, "pre_s": 5, "post_s": 5, "max_s": 8}, "streams.0.clips.max_s"),
        ({"pre_s": -1}, "streams.0.clips.pre_s"),
        ({"enabled": True, "retention_days": 0}, "streams.0.clips.retention_days"),
        ({"max_gb": "lots"}, "streams.0.clips.max_gb"),
        ({"pre": 5}, "streams.0.clips.pre"),
    ],
)
def test_bad_clips_config_names_the_key(clips: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(_cfg(clips))
    assert [p for p, _ in e.value.problems] == [key]


def test_clips_dir_is_relative_to_the_pipeline_file(tmp_path: Path) -> None:
    from streamd.config import load_config

    path = tmp_path / "p.yaml"
    path.write_text(_cfg({"enabled": True, "dir": "recordings"}))
    assert load_config(path).streams[0].clips.dir == str(tmp_path / "recordings")


# --- the recorder and writer on a real file ----------------------------------------------


class Gate:
    """A sink in front of the real writer that can refuse (a full queue)."""

    def __init__(self, writer: ClipWriter) -> None:
        self.writer = writer
        self.refuse = 0  # the next this many offers are refused

    def offer(self, message: Message) -> bool:
        if self.refuse > 0:
            self.refuse -= 1
            return False
        return self.writer.offer(message)


def feed(rec: ClipRecorder, video: Path, alerts: dict[int, int], lag: int = 5,
         stop_at: int | None = None) -> Iterator[tuple[int, ClipRef | None]]:  # fmt: skip
    """Play ``video`` through ``rec`` as a camera's process does (one session, cut after
    ``stop_at`` frames: a dropped connection). Frame k is analysed ``lag`` frames after
    it was decoded, and raises an alert of track ``alerts[k]`` if there is one. Yields
    (frame, the clip its alert got)."""

    def analyse(k: int) -> Iterator[tuple[int, ClipRef | None]]:
        if k in alerts:
            yield k, rec.request(alerts[k], k)
        rec.analysed(k)

    index = 0
    with av.open(str(video)) as c:
        stream = c.streams.video[0]
        rec.begin_session(stream)
        for packet in c.demux(stream):
            if stop_at is not None and index >= stop_at:
                break
            rec.on_packet(packet)
            for frame in packet.decode():
                rec.on_frame(index, frame.time)
                if index >= lag:
                    yield from analyse(index - lag)
                index += 1
    rec.end_session()
    for k in range(max(0, index - lag), index):  # the last frames come back after the end
        yield from analyse(k)
    rec.drain()  # the state change that follows them


def _recorder(folder: Path, **clips: Any) -> tuple[ClipRecorder, ClipWriter, Gate]:
    writer = ClipWriter("cam", folder, Retention(1e9, 10**12))
    gate = Gate(writer)
    cfg = ClipsConfig(enabled=True, **clips)
    return ClipRecorder("cam", cfg, folder, gate), writer, gate


def _finish(rec: ClipRecorder, writer: ClipWriter) -> dict[str, Any]:
    rec.close()
    assert writer.close(10)
    return {c.id: c for c in list_folder("cam", rec.folder)}


def test_alerts_of_one_track_in_the_window_make_one_clip_capped_at_max_s(
    video: Path, tmp_path: Path
) -> None:
    rec, writer, _ = _recorder(tmp_path / "cam", pre_s=1.0, post_s=1.5, max_s=4.0)
    # Track 1 at 2.0 s and 2.93 s (within post_s): one clip. Track 2 at 2.07, 3.07 and
    # 3.8 s: each inside the window, but the clip stops at max_s (4 s from its keyframe
    # at 1.0 s); its alert at 5.6 s starts a second clip.
    got = dict(feed(rec, video, {30: 1, 44: 1, 31: 2, 46: 2, 57: 2, 84: 2}))
    clips = _finish(rec, writer)
    assert got[30] is not None and got[30] == got[44]
    assert got[31] is not None and got[31] == got[46] == got[57] != got[84]
    assert len(clips) == 3
    one = clips[got[30].id]
    assert one.info["alerts"] == 2 and one.info["ended"] == "post_s"
    duration, frames = probe(one.path)
    # From the keyframe at or before 2.0 - pre_s to post_s after the last alert.
    assert one.info["start_pts_s"] == pytest.approx(1.0)
    expected = 44 / FPS + 1.5 - 1.0
    assert expected - 2 / FPS <= duration <= expected + REORDER_S
    assert frames[0]["key_frame"] == 1 and frames[0]["pict_type"] == "I"
    capped = clips[got[31].id]
    assert capped.info["ended"] == "max_s" and capped.info["alerts"] == 3
    assert 4.0 - 2 / FPS <= probe(capped.path)[0] <= 4.0 + REORDER_S
    assert clips[got[84].id].info["ended"] == "gap"  # the file ended first
    assert_matches_source(one.path, video, one.info["start_pts_s"], 2.0)


def test_a_gap_ends_the_clip_there_and_it_plays(video: Path, tmp_path: Path) -> None:
    rec, writer, _ = _recorder(tmp_path / "cam", pre_s=1.0, post_s=3.0)
    got = dict(feed(rec, video, {40: 7}, stop_at=55))  # the camera drops at 3.67 s
    clips = _finish(rec, writer)
    clip = clips[got[40].id]  # type: ignore[union-attr]
    assert clip.info["ended"] == "gap"
    duration, frames = probe(clip.path)
    # From the keyframe at 1.0 s to the last packet before the gap, not to 5.67 s.
    assert 55 / FPS - 1.0 - 2 / FPS <= duration <= 55 / FPS - 1.0 + REORDER_S
    assert frames[0]["key_frame"] == 1
    assert_matches_source(clip.path, video, clip.info["start_pts_s"], 40 / FPS, 0.3)


def test_an_alert_analysed_after_a_reconnect_still_gets_its_clip(
    video: Path, tmp_path: Path
) -> None:
    """The analysis lags decoding: the camera already reconnected (a new session) when
    an alert on one of the last frames before the gap is raised. Its clip comes from
    the session before, ends at the gap, and closes once the analysis reaches the new
    session's frames."""
    rec, writer, _ = _recorder(tmp_path / "cam", pre_s=1.0, post_s=3.0)
    index = 0
    for _ in range(2):  # two opens of the source: a reconnect between them
        with av.open(str(video)) as c:
            rec.begin_session(c.streams.video[0])
            for packet in c.demux(c.streams.video[0]):
                rec.on_packet(packet)
                for frame in packet.decode():
                    rec.on_frame(index, frame.time)
                    index += 1
                if index >= 105 + 20:  # 20 frames into the second session
                    break
        rec.end_session()
    ref = rec.request(4, 100)  # frame 100 of the first session: 6.67 s, 0.33 s before the gap
    assert ref is not None
    assert not list_folder("cam", rec.folder)  # open until the analysis moves on
    rec.analysed(110)  # a frame of the second session
    assert writer.close(10)
    clip = {c.id: c for c in list_folder("cam", rec.folder)}[ref.id]
    assert clip.info["ended"] == "gap" and clip.info["start_pts_s"] == pytest.approx(5.0)
    duration, frames = probe(clip.path)
    assert 2.0 - 2 / FPS <= duration <= 2.0 + 1 / FPS  # 5.0 s to the file's end at 7.0 s
    assert frames[0]["key_frame"] == 1


def test_a_full_writer_queue_cuts_the_clip_short_playable_and_counted(
    video: Path, tmp_path: Path
) -> None:
    from prometheus_client import REGISTRY

    def dropped() -> float:
        v = REGISTRY.get_sample_value(
            "streamd_clips_dropped_total", {"stream": "cam", "cause": "queue_full"}
        )
        return v or 0.0

    before = dropped()
    rec, writer, gate = _recorder(tmp_path / "cam", pre_s=1.0, post_s=3.0)
    got = {}
    for frame, ref in feed(rec, video, {30: 1, 50: 2}):
        got[frame] = ref
        if frame == 30:
            gate.refuse = 3  # a stuck disk: the next packet and the close are refused
    clips = _finish(rec, writer)
    first = clips[got[30].id]  # type: ignore[union-attr]
    assert first.info["ended"] == "queue_full"
    duration, frames = probe(first.path)
    # What was queued when the refusals began (the pre-roll up to the packet being
    # demuxed then), far short of its 4 s (1.0 s to 2.0 + 3.0 s).
    assert frames[0]["key_frame"] == 1 and duration < 40 / FPS - 1.0
    assert got[50] is not None and clips[got[50].id].info["ended"] == "post_s"
    assert dropped() - before == 1


def test_disk_full_is_counted_and_the_writer_goes_on(
    video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prometheus_client import REGISTRY

    real_open = writer_mod.av.open
    outputs = []

    def open_output(path: Any, mode: str = "r", **kw: Any) -> Any:
        if mode == "w" and isinstance(path, str):
            outputs.append(path)
            if len(outputs) == 1:  # the first clip's file: every write fails, ENOSPC
                return real_open("/dev/full", mode, **kw)
        return real_open(path, mode, **kw)

    monkeypatch.setattr(writer_mod.av, "open", open_output)
    rec, writer, _ = _recorder(tmp_path / "cam", pre_s=1.0, post_s=1.0)
    key = {"stream": "cam", "cause": "disk_full"}
    before = REGISTRY.get_sample_value("streamd_clips_dropped_total", key) or 0.0
    got = {}
    for frame, ref in feed(rec, video, {20: 1, 70: 2}):
        got[frame] = ref
    clips = _finish(rec, writer)
    monkeypatch.undo()
    assert (REGISTRY.get_sample_value("streamd_clips_dropped_total", key) or 0) - before == 1
    assert got[20] is not None and got[20].id not in clips  # lost, no half file left
    assert got[70] is not None and got[70].id in clips
    assert sorted(os.listdir(tmp_path / "cam")) == sorted(
        [f"{got[70].id}.mp4", f"{got[70].id}.json"]
    )


def test_retention_deletes_by_age_then_oldest_first_by_size(tmp_path: Path) -> None:
    folder = tmp_path / "cam"
    folder.mkdir()
    now = time.time()
    ids = []
    for k, (age_days, size) in enumerate([(10, 100), (3, 400), (2, 300), (1, 200), (0, 100)]):
        clip_id = f"cam-20260101T00000{k}000Z-t{k}-abcdef"
        ids.append(clip_id)
        for suffix, data in ((".mp4", b"x" * size), (".json", b"{}")):
            path = folder / f"{clip_id}{suffix}"
            path.write_bytes(data)
            os.utime(path, (now - age_days * 86400, now - age_days * 86400))
    (folder / "notes.txt").write_text("not a clip")  # left alone
    deleted = prune(folder, Retention(max_age_s=7 * 86400, max_bytes=650), now)
    # Age: the 10-day-old one. Size: 1,000 bytes left over 650: the oldest (400) goes.
    assert deleted == {"age": 1, "size": 1}
    assert [c.id for c in list_folder("cam", folder)] == ids[2:]
    assert not (folder / f"{ids[1]}.json").exists() and (folder / "notes.txt").exists()


def test_clip_ids_refuse_path_tricks() -> None:
    assert valid_clip_id("front-door-20261125T101112345Z-t12-0a1b2c")
    for bad in ("../x", "cam-20261125T101112345Z-t1-0a1b2c/../../etc",
                "..", "cam-20261125T101112345Z-t1-0A1B2C", "a/b-20261125T101112345Z-t1-0a1b2c",
                "cam-20261125T101112345Z-t1-0a1b2c.mp4", ""):  # fmt: skip
        assert not valid_clip_id(bad), bad


def test_byte_ranges() -> None:
    from streamd.control.http import byte_range

    assert byte_range("", 1000) == (0, 1000, False)
    assert byte_range("bytes=0-", 1000) == (0, 1000, True)
    assert byte_range("bytes=0-1", 1000) == (0, 2, True)
    assert byte_range("bytes=900-5000", 1000) == (900, 1000, True)
    assert byte_range("bytes=-100", 1000) == (900, 1000, True)
    assert byte_range("bytes=0-1,5-9", 1000) == (0, 1000, False)  # several: the whole file
    assert byte_range("bytes=1000-", 1000) is None
    assert byte_range("bytes=5-2", 1000) is None


# The alerts table as journals written before clips have it.
OLD_SCHEMA = """
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, seq INTEGER NOT NULL,
    epoch INTEGER NOT NULL, ts REAL NOT NULL, stored REAL NOT NULL, bytes INTEGER NOT NULL,
    payload TEXT NOT NULL, snapshot BLOB, UNIQUE (stream, seq));
CREATE INDEX alerts_stored ON alerts (stored);
CREATE TABLE seq_reserve (stream TEXT PRIMARY KEY, upto INTEGER NOT NULL);
"""


def _payload(seq: int, **extra: Any) -> dict[str, Any]:
    return {"v": 1, "type": "alert", "stream": "cam", "seq": seq, "epoch": 1, "ts": 1.0,
            "rule": "enter", **extra}  # fmt: skip


def test_an_old_journal_stays_readable_and_gains_the_clip_columns(tmp_path: Path) -> None:
    from streamd.publish.journal import AlertJournal, Entry, connect, read_after

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO alerts (stream, seq, epoch, ts, stored, bytes, payload, snapshot)"
               " VALUES ('cam', 0, 1, 1.0, ?, 10, ?, NULL)",
               (time.time(), json.dumps(_payload(0))))  # fmt: skip
    db.commit()
    db.close()
    # Replay (read-only) reads it as it is, before any writer touched it.
    ro = connect(path, readonly=True)
    assert [e.payload["seq"] for e in read_after(ro, {})[0]] == [0]
    ro.close()
    # A camera's process opens it to write: the columns are added, the old row reads.
    journal = AlertJournal(path, "full", 30, 512, prune=False)
    clip = {"clip_id": "cam-20261125T101112345Z-t3-0a1b2c", "clip_path": "/x/cam/c.mp4"}
    journal.append([Entry(_payload(1, **clip), None)])
    assert journal.next_seq("cam") == 2
    journal.close()
    AlertJournal(path, "full", 30, 512, prune=False).close()  # opened again: nothing to add
    ro = connect(path, readonly=True)
    assert [e.payload.get("clip_id") for e in read_after(ro, {})[0]] == [None, clip["clip_id"]]
    rows = ro.execute("SELECT seq, clip_id, clip_path FROM alerts ORDER BY seq").fetchall()
    assert rows == [(0, None, None), (1, clip["clip_id"], clip["clip_path"])]
    ro.close()


# --- through the real daemon -------------------------------------------------------------


def _streams(video: Path, clips_dir: Path) -> list[dict[str, Any]]:
    clips = {"enabled": True, "dir": str(clips_dir)}
    return [
        {   # every track dwells 2 s in the zone: one alert (and one clip) per track
            "id": "dwell",
            "url": str(video),
            "zones": [{"name": "all", "polygon": WHOLE_FRAME, "normalized": True,
                       "alert_on": ["dwell>=2s"], "debounce_s": 0}],
            "clips": {**clips, "pre_s": 1.5, "post_s": 1.5},
        },
        {   # boxes swing across the line every 1.5 to 2.2 s: several alerts per track
            "id": "line",
            "url": str(video),
            "lines": [{"name": "mid", "points": [[0.25, 0.0], [0.25, 1.0]], "normalized": True,
                       "alert_on": ["in", "out"], "debounce_s": 0.2}],
            "clips": {**clips, "pre_s": 1.0, "post_s": 2.5},
        },
    ]  # fmt: skip


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_alert_clips_through_the_daemon(
    video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clips_dir = tmp_path / "clips"
    cfg = write_pipeline(tmp_path, Path("unused.pt"), free_port(), _streams(video, clips_dir),
                         model=NULL_MODEL)  # fmt: skip
    with running_daemon(cfg) as d:
        log = d.log
        for sid in ("dwell", "line"):
            assert log.wait_state(sid, {"ended"}, 60) is not None, f"{sid} never ended"
        alerts = {sid: log.payloads(f"alert.{sid}") for sid in ("dwell", "line")}
        listen = json.loads(cfg.read_text())["http"]["listen"]

        # Every track's dwell alert has a clip of its own.
        validator = jsonschema.Draft202012Validator(load_schema())
        dwell = alerts["dwell"]
        assert len(dwell) == 3 and len({a["track_id"] for a in dwell}) == 3
        for a in [*dwell, *alerts["line"]]:
            validator.validate(a)
            assert valid_clip_id(a["clip_id"])
            assert a["clip_path"] == str(clips_dir / a["stream"] / f"{a['clip_id']}.mp4")
        assert len({a["clip_id"] for a in dwell}) == 3
        for a in dwell:
            path = Path(a["clip_path"])
            info = json.loads(path.with_suffix(".json").read_text())
            duration, frames = probe(path)
            # pre_s + post_s, plus up to a GOP (the keyframe before alert - pre_s)
            assert 3.0 - 2 / FPS <= duration <= 3.0 + GOP_S + REORDER_S, (a["media_ts"], info)
            assert frames[0]["key_frame"] == 1 and frames[0]["pict_type"] == "I"
            assert_matches_source(path, video, info["start_pts_s"], a["media_ts"])
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE((clips_dir / "dwell").stat().st_mode) == 0o700

        # Several alerts of one track within post_s of each other: one clip per track.
        by_track: dict[int, set[str]] = defaultdict(set)
        for a in alerts["line"]:
            by_track[a["track_id"]].add(a["clip_id"])
        assert max(sum(1 for a in alerts["line"] if a["track_id"] == t) for t in by_track) >= 2
        assert all(len(ids) == 1 for ids in by_track.values()), by_track
        # The file ended while they were open: they end at the gap, and play.
        for ids in by_track.values():
            path = clips_dir / "line" / f"{next(iter(ids))}.mp4"
            assert json.loads(path.with_suffix(".json").read_text())["ended"] == "gap"
            assert probe(path)[1][0]["key_frame"] == 1

        # The journal's rows carry the clip too.
        db = sqlite3.connect(tmp_path / "alerts.sqlite")
        rows = dict(db.execute("SELECT clip_id, clip_path FROM alerts WHERE stream = 'dwell'"))
        db.close()
        assert rows == {a["clip_id"]: a["clip_path"] for a in dwell}

        # Served over HTTP; a bad or unknown id is a 404, never a file outside the folder.
        first = dwell[0]
        url = f"http://{listen}/clips/{first['clip_id']}.mp4"
        code, body = _get(url)
        assert code == 200 and body == Path(first["clip_path"]).read_bytes()
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=8-99"}),
                                    timeout=10) as r:  # fmt: skip
            assert r.status == 206 and r.read() == body[8:100]
        for bad in ("..%2F..%2Fpipeline.yaml", "%2e%2e.mp4", "dwell.mp4",
                    f"{first['clip_id'][:-1]}0.mp4", f"{first['clip_id']}.json"):  # fmt: skip
            assert _get(f"http://{listen}/clips/{bad}")[0] == 404, bad
        code, body = _get(f"http://{listen}/clips")
        listed = {c["id"] for c in json.loads(body)["clips"]}
        assert code == 200 and {a["clip_id"] for a in [*dwell, *alerts["line"]]} == listed

        # `streamd clips PIPELINE` lists them from the folders.
        from streamd.cli import main

        assert main(["clips", str(cfg), "--json"]) == 0
        assert {c["id"] for c in json.loads(capsys.readouterr().out)} == listed


def test_a_camera_that_drops_mid_clip_yields_a_clip_that_ends_at_the_gap(
    video: Path, tmp_path: Path
) -> None:
    """A real RTSP camera (gst-rtsp-server) whose stream ends at 7 s while the clip of an
    alert at about 4 s (post_s 5) is open: the camera reconnects, the clip ends at the
    gap, and it plays."""
    from .live import LIVE
    from .rtsp import RtspServer

    clips_dir = tmp_path / "clips"
    clips = {"enabled": True, "dir": str(clips_dir), "pre_s": 1.0, "post_s": 5.0}
    server = RtspServer(video).start()  # the stream ends with the file: a dropped camera
    stream = {"id": "cam", "url": server.url(), **LIVE, "clips": clips,
              "zones": [{"name": "all", "polygon": WHOLE_FRAME, "normalized": True,
                         "alert_on": ["dwell>=4s"], "debounce_s": 0}]}  # fmt: skip
    cfg = write_pipeline(tmp_path, Path("unused.pt"), free_port(), [stream], model=NULL_MODEL)
    with contextlib.closing(server), running_daemon(cfg) as d:
        log = d.log
        hit = log.wait_for(lambda _t, e: e.topic == "alert.cam", 60)
        assert hit is not None, "no alert"
        first = hit[1].payload
        assert log.wait_state("cam", {"reconnecting"}, 30) is not None
        path = Path(first["clip_path"])
        deadline = time.monotonic() + 20
        while not path.with_suffix(".json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        info = json.loads(path.with_suffix(".json").read_text())
        assert info["ended"] == "gap", info
        duration, frames = probe(path)
        assert frames[0]["key_frame"] == 1 and frames[0]["pict_type"] == "I"
        # From the keyframe before alert - pre_s to the stream's end (not to alert + post_s).
        media_left = 7.0 - info["start_pts_s"]
        assert 1.0 <= duration <= media_left + 0.5, (duration, info)
        assert len(frames) == pytest.approx(duration * FPS, abs=2)  # every frame decodes
