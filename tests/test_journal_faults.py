"""The alert journal under faults: failed writes, a stuck disk, a restart after either.

Real SQLite files, real ZeroMQ sockets, the real daemon where detection must go on.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from streamd.client import AlertSubscriber
from streamd.publish.alert_writer import STALL_S, AlertWriter
from streamd.publish.journal import SEQ_RESERVE, AlertJournal, Entry
from streamd.publish.publisher import Publisher
from streamd.publish.wire import Event, decode

from .daemon import EventLog, start, stop_and_check_clean, write_pipeline
from .util import free_port, shm_segments


def _alert(stream: str, seq: int) -> Entry:
    payload: dict[str, Any] = {"type": "alert", "stream": stream, "seq": seq, "epoch": 1,
                               "ts": 1.0 + seq, "rule": "in"}  # fmt: skip
    return Entry(payload, None)


class _Bus:
    """A PULL socket standing where the supervisor's bus is: what the writer sent."""

    def __init__(self) -> None:
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PULL)
        self._sock.bind(self.endpoint)

    def publisher(self) -> Publisher:
        return Publisher(self.endpoint, 100, epoch=1, bus=True)

    def close_writer(self, writer: AlertWriter, last: int) -> bool:
        fallback = self.publisher()
        try:
            return writer.close(5.0, last, fallback)
        finally:
            fallback.close()

    def next(self, timeout_s: float) -> Event | None:
        if not self._sock.poll(int(timeout_s * 1000)):
            return None
        return decode(self._sock.recv_multipart())

    def seqs(self, n: int, timeout_s: float = 5.0) -> list[int]:
        out: list[int] = []
        while len(out) < n and (ev := self.next(timeout_s)) is not None:
            out.append(ev.seq)
        return out

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()


def test_alert_seqs_published_while_the_journal_fails_are_never_reused(tmp_path: Path) -> None:
    """Disk full (every commit fails): the alerts still go out, counted; a process that
    starts after an unclean end numbers on above them, one after a clean end right after."""
    path = tmp_path / "alerts.sqlite"
    bus = _Bus()
    try:
        j = AlertJournal(path, "full", 30, 100)
        writer = AlertWriter(j, "a", j.next_seq("a"), bus.publisher)
        writer.submit([_alert("a", 0), _alert("a", 1)])
        assert bus.seqs(2) == [0, 1]
        j.db.close()  # every write fails from now on, as on a full disk
        writer.submit([_alert("a", 2)])
        writer.submit([_alert("a", 3)])
        assert bus.seqs(2) == [2, 3]  # published live all the same
        assert writer.health().unjournaled == 2 and writer.published == 3
        # The process dies here (no clean close). The next one:
        j2 = AlertJournal(path, "full", 30, 100, prune=False)
        first = j2.next_seq("a")
        assert first > 3, "seq 2 and 3 went out: handing them out again would be a lie"
        assert first == SEQ_RESERVE  # the block reserved at start, 0..SEQ_RESERVE-1
        writer2 = AlertWriter(j2, "a", first, bus.publisher)
        writer2.submit([_alert("a", first)])
        assert bus.seqs(1) == [first]
        assert bus.close_writer(writer2, first)  # a clean stop releases the block
        j2.close()
        j3 = AlertJournal(path, "full", 30, 100, prune=False)
        assert j3.next_seq("a") == first + 1
        j3.close()
    finally:
        bus.close()


def test_the_reservation_stays_ahead_of_what_goes_out(tmp_path: Path) -> None:
    """Past half the block, the next commit extends it in the same transaction."""
    bus = _Bus()
    try:
        j = AlertJournal(tmp_path / "alerts.sqlite", "normal", 30, 100)
        writer = AlertWriter(j, "a", 0, bus.publisher)
        seq = SEQ_RESERVE // 2 + 1
        writer.submit([_alert("a", seq)])
        assert bus.seqs(1) == [seq]
        reserved = j.db.execute("SELECT upto FROM seq_reserve WHERE stream = 'a'").fetchone()
        assert reserved == (seq + SEQ_RESERVE,)
        assert bus.close_writer(writer, seq)
        j.close()
    finally:
        bus.close()


def _lock_journal(path: Path, hold_s: float, locked: threading.Event) -> None:
    """Another writer holding the journal (a stuck disk, a long backup): commits wait."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    locked.set()
    time.sleep(hold_s)
    db.execute("COMMIT")
    db.close()


def _healthz(cfg: Path) -> tuple[int, list[str]]:
    listen = json.loads(cfg.read_text())["http"]["listen"]
    try:
        with urllib.request.urlopen(f"http://{listen}/healthz", timeout=5) as r:
            return int(r.status), json.load(r)["problems"]
    except urllib.error.HTTPError as e:
        return int(e.code), json.load(e)["problems"]


@pytest.fixture(scope="module")
def circling_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamd.synth import SceneSpec, write_scene

    video = tmp_path_factory.mktemp("journalfaults") / "small.mp4"
    write_scene(video, SceneSpec(width=320, height=180, fps=15, seconds=4, people=1))
    return video


def test_a_stuck_journal_delays_alerts_not_detection(circling_clip: Path, tmp_path: Path) -> None:
    """The journal held by another writer for longer than the stall limit: det events
    and heartbeats go on at their rate, /healthz fails while it is stuck, and when it
    comes back every alert is journaled, then published, in order, none lost."""
    port = free_port()
    # One null box circling the frame centre crosses the vertical line about every 1.5 s.
    line = {"name": "mid", "points": [[160, 0], [160, 180]], "alert_on": ["in", "out"]}
    streams = [{"id": "a", "url": str(circling_clip), "loop": True, "realtime": True,
                "lines": [line]}]  # fmt: skip
    model = {"backend": "null", "null_boxes": 1, "imgsz": 320}
    cfg = write_pipeline(tmp_path, Path("unused.pt"), port, streams, model=model)
    sections = json.loads(cfg.read_text())["journal"]
    journal, request = Path(sections["path"]), sections["endpoint"]
    shm_before = shm_segments()
    daemon = start(cfg, tmp_path / "daemon.log")
    watcher = EventLog(f"tcp://127.0.0.1:{port}")
    alerts = AlertSubscriber(f"tcp://127.0.0.1:{port}", request)
    try:
        first = alerts.recv(60)
        assert first is not None, "no alert before the fault"
        locked = threading.Event()
        hold_s = STALL_S + 8.0
        holder = threading.Thread(target=_lock_journal, args=(journal, hold_s, locked))
        holder.start()
        assert locked.wait(5)
        t0 = time.time()
        stuck_health, problems = 200, []
        while stuck_health == 200 and time.time() < t0 + hold_s - 1.0:
            time.sleep(0.5)
            stuck_health, problems = _healthz(cfg)
        stuck_rows = [e.payload["streams"]["a"]["journal"] for _, e in watcher.snapshot()
                      if e.topic == "heartbeat" and e.payload["streams"].get("a")]  # fmt: skip
        det_rate = watcher.rate("det.a", t0 + 1.0, t0 + STALL_S + 1.0)
        alerts_while_stuck = [e for t, e in watcher.snapshot()
                              if e.topic == "alert.a" and t0 + 0.5 < t < t0 + STALL_S]  # fmt: skip
        holder.join()
        got = [first]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(got) < 12:
            a = alerts.recv(1.0)
            if a is not None:
                got.append(a)
        recovered_health = _healthz(cfg)[0]
        until = time.monotonic() + 5.0  # the next heartbeat shows the journal moving again
        while recovered_health != 200 and time.monotonic() < until:
            time.sleep(0.5)
            recovered_health = _healthz(cfg)[0]
        stop_and_check_clean(daemon, signal.SIGTERM, shm_before)
    finally:
        alerts.close()
        watcher.close()
        if daemon.poll() is None:
            daemon.kill()
    assert det_rate > 10.0, f"det events stalled with the journal: {det_rate:.1f}/s (15 fps)"
    assert alerts_while_stuck == []  # nothing published before it is journaled
    assert max(r["queued"] for r in stuck_rows) >= 1
    assert max(r["stalled_s"] for r in stuck_rows) > STALL_S - 2
    assert stuck_health == 503 and recovered_health == 200
    assert len(problems) == 1 and problems[0].startswith("alert journal of a stuck for")
    seqs = [a.seq for a in got]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and len(seqs) >= 8
    with sqlite3.connect(journal) as db:
        stored = [s for (s,) in db.execute("SELECT seq FROM alerts WHERE stream = 'a'")]
        (reserved,) = db.execute("SELECT upto FROM seq_reserve WHERE stream = 'a'").fetchone()
    assert set(seqs) <= set(stored)  # every alert delivered was journaled first
    assert reserved == max(stored)  # a clean stop: the next run numbers on right after


def test_a_superseded_process_state_is_not_published(tmp_path: Path) -> None:
    """A dead camera's late `streaming` reaches the inbox after the supervisor said
    `failed`/restart_limit on its behalf: it is dropped, not published."""
    from streamd.config import parse_config
    from streamd.control.plane import ControlPlane
    from streamd.runtime.channel import Outbox
    from streamd.types import SourceState, StatusUpdate

    cfg = parse_config(json.dumps({"streams": [{"id": "cam", "url": "x.mp4"}]}))
    bus = _Bus()
    inbox = f"ipc://{tmp_path}/inbox"
    j = AlertJournal(tmp_path / "alerts.sqlite", "normal", 30, 100)
    plane = ControlPlane(cfg, inbox, bus.endpoint, 1, j)
    plane.start()
    out = Outbox(inbox)
    try:
        now = time.time()
        said = StatusUpdate("cam", SourceState.FAILED, "restart_limit", now, generation=3)
        late = StatusUpdate("cam", SourceState.STREAMING, "connected", now - 1, generation=2)
        newer = StatusUpdate("cam", SourceState.CONNECTING, "restart", now, generation=3)
        for msg in (said, late, newer):
            out.send(msg)
        states: list[str] = []
        while len(states) < 3 and (ev := bus.next(3.0)) is not None:
            if ev.kind == "status":
                states.append(ev.payload["state"])
    finally:
        out.close()
        plane.close()
        j.close()
        bus.close()
    assert states == ["failed", "connecting"]  # the stale `streaming` never went out


def test_alerts_go_out_in_order_through_the_journal_thread(tmp_path: Path) -> None:
    """A burst of alerts over several frames leaves in seq order, each after its commit."""
    bus = _Bus()
    try:
        j = AlertJournal(tmp_path / "alerts.sqlite", "full", 30, 100)
        writer = AlertWriter(j, "a", 0, bus.publisher)
        for seq in range(0, 30, 3):
            assert writer.submit([_alert("a", seq), _alert("a", seq + 1), _alert("a", seq + 2)])
        assert bus.seqs(30) == list(range(30))
        assert bus.close_writer(writer, 29)
        stored = [s for (s,) in j.db.execute("SELECT seq FROM alerts ORDER BY id")]
        j.close()
    finally:
        bus.close()
    assert stored == list(range(30))


def _tracked(e: Event) -> bool:
    return e.topic == "det.a" and any(o["track_id"] is not None for o in e.payload["objects"])


def test_tracking_goes_on_after_a_camera_restart_late_in_a_long_run(
    circling_clip: Path, tmp_path: Path
) -> None:
    """A camera's process killed after running a while: its tracks end with reason
    `restart`, before any track of the new process, and the new one tracks at once
    (not blind for as long as the old one ran, as when a tracker outlived its clock)."""
    port = free_port()
    streams = [{"id": "a", "url": str(circling_clip), "loop": True, "realtime": True}]
    model = {"backend": "null", "null_boxes": 2, "imgsz": 320}
    cfg = write_pipeline(tmp_path, Path("unused.pt"), port, streams, model=model)
    shm_before = shm_segments()
    daemon = start(cfg, tmp_path / "daemon.log")
    watcher = EventLog(f"tcp://127.0.0.1:{port}")
    try:
        assert watcher.wait_for(lambda _, e: _tracked(e), 60) is not None
        time.sleep(20)  # a run long enough that 20 s of blindness would show
        victim = next(p for p in psutil.Process(daemon.pid).children(recursive=True)
                      if " ".join(p.cmdline()).strip() == "streamd: source a")  # fmt: skip
        old_epoch = watcher.payloads("det.a")[-1]["epoch"]
        victim.kill()
        killed_at = time.time()
        found = watcher.wait_for(lambda _, e: _tracked(e) and e.epoch != old_epoch, 20)
        assert found is not None, "no tracked object after the restart"
        tracked_after_s = found[0] - killed_at
        time.sleep(1.0)
        stop_and_check_clean(daemon, signal.SIGTERM, shm_before)
    finally:
        watcher.close()
        if daemon.poll() is None:
            daemon.kill()
    old = [p for p in watcher.payloads("track.a") if p["epoch"] == old_epoch]
    old_tracks = {p["track_id"] for p in old if p["event"] == "new"} - {
        p["track_id"] for p in old if p["event"] == "end"
    }
    new_epoch = [p for p in watcher.payloads("track.a") if p["epoch"] != old_epoch]
    ends = [p for p in new_epoch if p["event"] == "end" and p["reason"] == "restart"]
    assert {p["track_id"] for p in ends} == old_tracks and len(old_tracks) == 2
    assert new_epoch[: len(ends)] == ends  # before any track of the new process
    assert any(p["event"] == "new" for p in new_epoch[len(ends) :])
    assert tracked_after_s < 10.0
