"""The host path with the null backend: per-camera processes track, analyse and publish.

Real daemon, real sockets, real ByteTrack; the ``null`` backend stands in for
the model only (it is the thing that is *not* under test here).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil
import pytest

from streamd.client import AlertSubscriber, Event, Subscriber
from streamd.publish.journal import SEQ_RESERVE

from .daemon import start, stop_and_check_clean, write_pipeline
from .util import free_port, shm_segments

BOXES = 6
FRAMES = 45  # 3 s at 15 fps


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamd.synth import SceneSpec, write_scene

    video = tmp_path_factory.mktemp("hostpath") / "small.mp4"
    write_scene(video, SceneSpec(width=320, height=180, fps=15, seconds=FRAMES / 15, people=1))
    return video


def _null_model(boxes: int) -> dict[str, Any]:
    return {"backend": "null", "null_boxes": boxes, "imgsz": 320}


def _collect_until_ended(sub: Subscriber, streams: set[str], timeout_s: float) -> list[Event]:
    events: list[Event] = []
    ended: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while ended != streams and time.monotonic() < deadline:
        ev = sub.recv(0.5)
        if ev is None:
            continue
        events.append(ev)
        if ev.kind == "status" and ev.payload["state"] == "ended":
            ended.add(str(ev.stream))
    assert ended == streams, f"only {sorted(ended)} ended within {timeout_s}s"
    return events


def test_null_boxes_are_tracked_with_stable_ids_and_seq_has_no_gaps(
    small_clip: Path, tmp_path: Path
) -> None:
    """Four cameras, each in its own process: every frame analysed (block), every
    (stream, kind) seq consecutive, the null backend's boxes tracked under fixed ids."""
    port = free_port()
    names = {f"c{i}" for i in range(4)}
    streams = [{"id": s, "url": str(small_clip)} for s in sorted(names)]
    cfg = write_pipeline(tmp_path, Path("unused.pt"), port, streams, model=_null_model(BOXES))
    shm_before = shm_segments()
    with Subscriber(f"tcp://127.0.0.1:{port}") as sub:
        daemon = start(cfg, tmp_path / "daemon.log")
        try:
            events = _collect_until_ended(sub, names, 120)
            time.sleep(1.5)  # a heartbeat with the final figures
            events += list(sub.events(timeout_s=1.0))
            gaps = list(sub.gaps)
        finally:
            if daemon.poll() is None:
                stop_and_check_clean(daemon, signal.SIGTERM, shm_before)
    assert gaps == []
    seqs: dict[tuple[str, str], list[int]] = defaultdict(list)
    for ev in events:
        if ev.stream is not None:
            seqs[(ev.stream, ev.kind)].append(ev.seq)
    for key, got in seqs.items():
        assert got == list(range(len(got))), f"{key}: seq {got[:10]}..."
    for stream in names:
        dets = [e.payload for e in events if e.kind == "det" and e.stream == stream]
        assert len(dets) == FRAMES  # block policy: every frame analysed, none lost on the way
        assert all(len(d["objects"]) == BOXES for d in dets)
        ids = [[o["track_id"] for o in d["objects"]] for d in dets]
        confirmed = ids[2:]  # tracks are confirmed after min_consecutive_frames (2)
        assert all(None not in frame_ids for frame_ids in confirmed)
        assert {i for frame_ids in confirmed for i in frame_ids} == set(confirmed[0])
        assert len(set(confirmed[0])) == BOXES  # one identity per box, for the whole clip
        tracks = [e.payload for e in events if e.kind == "track" and e.stream == stream]
        assert sum(t["event"] == "new" for t in tracks) == BOXES
        assert sum(t["event"] == "end" and t["reason"] == "ended" for t in tracks) == BOXES
    beat = [e.payload for e in events if e.kind == "heartbeat"][-1]
    assert {s: beat["streams"][s]["analysed"] for s in names} == dict.fromkeys(names, FRAMES)


def _camera_process(daemon_pid: int, stream: str) -> psutil.Process:
    for p in psutil.Process(daemon_pid).children(recursive=True):
        if " ".join(p.cmdline()).strip() == f"streamd: source {stream}":
            return p
    raise AssertionError(f"no process for camera {stream}")


def _journal(path: Path) -> list[tuple[str, int, int]]:
    with sqlite3.connect(path) as db:
        return list(db.execute("SELECT stream, seq, epoch FROM alerts ORDER BY id"))


class _Alerts:
    """An AlertSubscriber on a thread, keeping what it delivers."""

    def __init__(self, endpoint: str, request: str) -> None:
        self.got: list[tuple[str, int, int]] = []
        self._stop = threading.Event()
        self._sub = AlertSubscriber(endpoint, request)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            a = self._sub.recv(0.2)
            if a is not None:
                self.got.append((str(a.stream), a.seq, a.epoch))

    def count(self, stream: str) -> int:
        return sum(1 for s, _, _ in self.got if s == stream)

    def wait(self, stream: str, n: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.count(stream) < n:
            assert time.monotonic() < deadline, f"{self.count(stream)} alerts of {stream}"
            time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sub.close()


def test_a_killed_camera_process_loses_no_journaled_alert(small_clip: Path, tmp_path: Path) -> None:
    """SIGKILL one camera's process mid-run: it is restarted, its alert seq goes on
    above anything it could have published (new epoch), nothing journaled is lost, the
    other camera goes on."""
    port = free_port()
    # One null box circling the frame centre: the vertical centre line is crossed
    # about every 1.5 s, in then out.
    line = {"name": "mid", "points": [[160, 0], [160, 180]], "alert_on": ["in", "out"]}
    streams = [{"id": s, "url": str(small_clip), "loop": True, "realtime": True,
                "lines": [line]} for s in ("a", "b")]  # fmt: skip
    cfg = write_pipeline(tmp_path, Path("unused.pt"), port, streams, model=_null_model(1))
    sections = json.loads(cfg.read_text())["journal"]
    journal, request = Path(sections["path"]), sections["endpoint"]
    shm_before = shm_segments()
    daemon = start(cfg, tmp_path / "daemon.log")
    alerts = None
    try:
        alerts = _Alerts(f"tcp://127.0.0.1:{port}", request)
        alerts.wait("a", 3, 60)
        victim = _camera_process(daemon.pid, "a")
        victim.kill()
        killed_at = alerts.count("a")
        b_at_kill = alerts.count("b")
        alerts.wait("a", killed_at + 3, 60)
        assert _camera_process(daemon.pid, "a").pid != victim.pid
        stop_and_check_clean(daemon, signal.SIGTERM, shm_before)
        time.sleep(1.0)
    finally:
        if alerts is not None:
            alerts.close()
        if daemon.poll() is None:
            daemon.kill()
    journaled = _journal(journal)
    a_rows = [r for r in journaled if r[0] == "a"]
    epochs = sorted({epoch for _, _, epoch in a_rows})
    assert len(epochs) == 2  # the restart is visible
    before, after = ([seq for _, seq, e in a_rows if e == ep] for ep in epochs)
    assert before == list(range(len(before)))  # no hole
    # Killed, not stopped: the new process numbers on above the reserved block (its
    # predecessor might have published seqs from it unjournaled), never reusing one.
    assert after == list(range(after[0], after[0] + len(after)))
    assert after[0] >= SEQ_RESERVE > before[-1]
    assert len({epoch for s, _, epoch in journaled if s == "b"}) == 1  # b never restarted
    assert alerts.count("b") > b_at_kill
    # Every journaled alert reached the subscriber exactly once (live or replayed).
    assert sorted(alerts.got) == sorted(journaled)


def test_inflight_gate_closes_at_room_and_a_lost_answer_does_not_close_it_for_good(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import numpy as np

    from streamd.analysis import inflight

    gate = inflight.InFlight(room=3)
    image = np.zeros((2, 2, 3), np.uint8)
    for seq in range(3):
        gate.add("r", seq, image)
    assert gate.full() and gate.pending() == 3 and gate.pending(upto=1) == 1
    assert gate.pop("r", 1) is image and not gate.full()
    gate.add("r", 3, image)
    monkeypatch.setattr(inflight, "LOST_AFTER_S", 0.05)
    time.sleep(0.1)  # the answers for 0, 2 and 3 never come
    assert not gate.full() and gate.pending() == 0
    assert gate.pop("r", 2) is None  # a very late answer: analysed without pixels
