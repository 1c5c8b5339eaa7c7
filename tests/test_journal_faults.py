"""The alert journal under faults: failed writes, a stuck disk, a restart after either.

Real SQLite files, real ZeroMQ sockets, the real daemon where detection must go on.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from streamd.client import AlertSubscriber
from streamd.config import parse_config
from streamd.control.plane import ControlPlane
from streamd.publish.alert_writer import QUEUE_BATCHES, STALL_S, AlertWriter, NewAlert
from streamd.publish.journal import SEQ_RESERVE, AlertJournal
from streamd.publish.publisher import Publisher
from streamd.publish.wire import Event, decode
from streamd.runtime.channel import Outbox
from streamd.types import SourceState, StatusUpdate

from .daemon import EventLog, start, stop_and_check_clean, write_pipeline
from .util import free_port, shm_segments


def _new(n: int) -> NewAlert:
    return NewAlert(1.0 + n, {"rule": "in", "n": n}, None)


class _Bus:
    """A PULL socket standing where the supervisor's bus is: what the writer sent."""

    def __init__(self) -> None:
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PULL)
        self._sock.bind(self.endpoint)

    def publisher(self) -> Publisher:
        return Publisher(self.endpoint, 10_000, epoch=1, bus=True)

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


def _writer(path: Path, bus: _Bus, busy_s: float = 5.0, floor: int = 0) -> AlertWriter:
    def open_journal() -> AlertJournal:
        return AlertJournal(path, "full", 30, 100, prune=False, busy_timeout_s=busy_s)

    return AlertWriter("a", open_journal, bus.publisher, floor)


class _Lock:
    """Another writer holding the journal: every commit waits, then fails ("locked")."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        AlertJournal(path, "full", 30, 100).close()  # the schema exists
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        self._db.execute("COMMIT")
        self._db.close()


def _reserved(path: Path) -> int | None:
    try:
        with sqlite3.connect(path) as db:
            row = db.execute("SELECT upto FROM seq_reserve WHERE stream = 'a'").fetchone()
    except sqlite3.OperationalError:  # not created yet
        return None
    return None if row is None else int(row[0])


def _wait(pred: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_alert_seqs_published_while_the_journal_fails_are_never_reused(tmp_path: Path) -> None:
    """Commits failing (another writer, a full disk): alerts inside the reserved block
    still go out, counted; a process that starts after an unclean end numbers on
    above them, one after a clean end right after the last one out."""
    path = tmp_path / "alerts.sqlite"
    bus = _Bus()
    first_writer = _writer(path, bus, busy_s=0.2)
    try:
        first_writer.submit([_new(0), _new(1)])
        assert bus.seqs(2) == [0, 1]
        lock = _Lock(path)  # every commit fails from now on
        first_writer.submit([_new(2)])
        first_writer.submit([_new(3)])
        assert bus.seqs(2) == [2, 3]  # out live all the same, in order
        _wait(lambda: first_writer.published == 3)
        assert first_writer.health().unjournaled == 2
        lock.release()
        # That process dies here (no clean close). The next one:
        second = _writer(path, bus)
        second.submit([_new(4)])
        (seq,) = bus.seqs(1)
        assert seq == SEQ_RESERVE > 3  # above the dead one's block: 2 and 3 never again
        assert second.close(5.0)  # a clean stop releases the block
        assert _reserved(path) == seq
        third = _writer(path, bus)
        third.submit([_new(5)])
        assert bus.seqs(1) == [seq + 1]
        assert third.close(5.0)
    finally:
        first_writer.close(0.1)
        bus.close()


def test_an_alert_past_the_reservation_is_held_until_the_journal_takes_it(
    tmp_path: Path,
) -> None:
    """The disk is full from the start (nothing could be reserved): an alert is not
    published unjournaled (its seq could not be proven unique), it waits, counted in
    health, and goes out once its commit succeeds."""
    path = tmp_path / "alerts.sqlite"
    bus = _Bus()
    lock = _Lock(path)
    writer = _writer(path, bus, busy_s=0.2)
    try:
        writer.submit([_new(0)])
        assert bus.next(2.0) is None  # held, not published
        assert writer.health().stalled_s > 1.0 and writer.health().unjournaled == 0
        lock.release()
        assert bus.seqs(1) == [0]
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT seq FROM alerts").fetchall() == [(0,)]
        assert writer.close(5.0)
    finally:
        bus.close()


def test_a_full_queue_drops_and_counts_and_what_was_queued_goes_out_in_order(
    tmp_path: Path,
) -> None:
    path = tmp_path / "alerts.sqlite"
    bus = _Bus()
    writer = _writer(path, bus, busy_s=30.0)
    try:
        writer.submit([_new(0)])
        assert bus.seqs(1) == [0]
        lock = _Lock(path)  # the disk hangs: the next commit waits
        for n in range(1, QUEUE_BATCHES + 8):
            writer.submit([_new(n)])
        _wait(lambda: writer.health().unjournaled > 0)
        dropped = writer.health().unjournaled
        assert dropped in (6, 7) and writer.health().queued >= QUEUE_BATCHES - 1
        lock.release()
        kept = QUEUE_BATCHES + 7 - dropped
        assert bus.seqs(kept) == list(range(1, kept + 1))  # one path, in seq order
        assert writer.close(5.0)
    finally:
        bus.close()


def test_alerts_queued_behind_a_stuck_journal_at_stop_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "alerts.sqlite"
    bus = _Bus()
    writer = _writer(path, bus, busy_s=30.0)
    _wait(lambda: path.exists() and _reserved(path) is not None)  # open, seqs reserved
    lock = _Lock(path)
    try:
        for n in range(3):
            writer.submit([_new(n)])
        _wait(lambda: writer.health().stalled_s > 0)
        assert writer.close(0.5) is False
        assert writer.health().unjournaled == 2  # the two behind the stuck commit
    finally:
        lock.release()
        bus.close()


def test_the_reservation_stays_ahead_of_what_goes_out(tmp_path: Path) -> None:
    """Past half the block, the next commit extends it in the same transaction."""
    path = tmp_path / "alerts.sqlite"
    bus = _Bus()
    writer = _writer(path, bus)
    try:
        last = SEQ_RESERVE // 2 + 1
        writer.submit([_new(n) for n in range(last + 1)])
        assert bus.seqs(last + 1)[-1] == last
        assert _reserved(path) == last + SEQ_RESERVE
        assert writer.close(5.0)
    finally:
        bus.close()


def test_a_clean_release_never_lowers_another_process_reservation(tmp_path: Path) -> None:
    j = AlertJournal(tmp_path / "alerts.sqlite", "normal", 30, 100)
    j.reserve("a", 10_000)
    j.reserve("a", 20_000)  # a newer process of the same stream
    j.reserve("a", 15_000)  # a straggler extends: never lowers
    j.release("a", 3, 10_000)  # the straggler stops cleanly: not its block any more
    assert j.next_seq("a") == 20_001
    j.close()


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


def _tracked(e: Event) -> bool:
    return e.topic == "det.a" and any(o["track_id"] is not None for o in e.payload["objects"])


def test_a_stuck_journal_delays_alerts_not_detection_then_a_late_restart_tracks_at_once(
    circling_clip: Path, tmp_path: Path
) -> None:
    """Two faults in turn on one camera (one daemon for both; each checked as it was on a
    daemon of its own):

    1. The journal held by another writer for longer than the stall limit: det events
       and heartbeats go on at their rate, /healthz fails while it is stuck, and when it
       comes back every alert is journaled, then published, in order, none lost.
    2. Then the camera's process killed after running a while (20 s and more): its tracks
       end with reason `restart`, before any track of the new process, and the new one
       tracks at once (not blind for as long as the old one ran, as when a tracker
       outlived its clock)."""
    port = free_port()
    # Two null boxes, each circling the centre of its half of the frame (the restart check
    # wants two tracks): the left one crosses this line about every 1.5 s.
    line = {"name": "mid", "points": [[80, 0], [80, 180]], "alert_on": ["in", "out"]}
    streams = [{"id": "a", "url": str(circling_clip), "loop": True, "realtime": True,
                "lines": [line]}]  # fmt: skip
    model = {"backend": "null", "null_boxes": 2, "imgsz": 320}
    cfg = write_pipeline(tmp_path, Path("unused.pt"), port, streams, model=model)
    sections = json.loads(cfg.read_text())["journal"]
    journal, request = Path(sections["path"]), sections["endpoint"]
    shm_before = shm_segments()
    daemon = start(cfg, tmp_path / "daemon.log")
    watcher = EventLog(f"tcp://127.0.0.1:{port}")
    alerts = AlertSubscriber(f"tcp://127.0.0.1:{port}", request)
    try:
        tracked = watcher.wait_for(lambda _, e: _tracked(e), 60)
        assert tracked is not None
        stuck = _stuck_journal(cfg, journal, watcher, alerts)
        # 2. A run long enough that 20 s of blindness would show, then the kill.
        time.sleep(max(0.0, tracked[0] + 20.0 - time.time()))
        victim = next(p for p in psutil.Process(daemon.pid).children(recursive=True)
                      if " ".join(p.cmdline()).strip() == "streamd: source a")  # fmt: skip
        old_epoch = watcher.payloads("det.a")[-1]["epoch"]
        victim.kill()
        killed_at = time.time()
        found = watcher.wait_for(lambda _, e: _tracked(e) and e.epoch != old_epoch, 20)
        assert found is not None, "no tracked object after the restart"
        tracked_after_s = found[0] - killed_at
        # An alert of the new process out before the stop (the journal check below: a
        # clean stop leaves the reservation at the last one out).
        after = watcher.wait_for(lambda _, e: e.topic == "alert.a" and e.epoch != old_epoch, 20)
        assert after is not None, "no alert after the restart"
        time.sleep(1.0)
        stop_and_check_clean(daemon, signal.SIGTERM, shm_before)
    finally:
        alerts.close()
        watcher.close()
        if daemon.poll() is None:
            daemon.kill()
    # 1. The stuck journal.
    rate = stuck.det_rate
    assert rate > 10.0, f"det events stalled with the journal: {rate:.1f}/s (15 fps)"
    assert stuck.published == []  # nothing published before it is journaled
    assert max(r["queued"] for r in stuck.rows) >= 1
    assert max(r["stalled_s"] for r in stuck.rows) > STALL_S - 2
    assert stuck.health == (503, 200)
    problems = stuck.problems
    assert len(problems) == 1 and problems[0].startswith("alert journal of a stuck for")
    seqs = [a.seq for a in stuck.got]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and len(seqs) >= 8
    with sqlite3.connect(journal) as db:
        stored = [s for (s,) in db.execute("SELECT seq FROM alerts WHERE stream = 'a'")]
        (reserved,) = db.execute("SELECT upto FROM seq_reserve WHERE stream = 'a'").fetchone()
    assert set(seqs) <= set(stored)  # every alert delivered was journaled first
    assert reserved == max(stored)  # a clean stop: the next run numbers on right after
    # 2. The restart.
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


@dataclass(frozen=True)
class _Stuck:
    """What a stuck journal looked like from outside."""

    det_rate: float  # det events/s while stuck
    published: list[Any]  # alerts published while stuck
    rows: list[dict[str, Any]]  # the heartbeats' journal rows
    health: tuple[int, int]  # /healthz while stuck, then once recovered
    problems: list[str]  # /healthz's problems while stuck
    got: list[Any]  # the alerts delivered, from the last one before the fault on


def _stuck_journal(cfg: Path, journal: Path, watcher: EventLog, alerts: AlertSubscriber) -> _Stuck:
    """Hold the journal past the stall limit, then let it go."""
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
    return _Stuck(det_rate, alerts_while_stuck, stuck_rows, (stuck_health, recovered_health),
                  problems, got)  # fmt: skip


@contextlib.contextmanager
def _plane(tmp_path: Path) -> Iterator[tuple[ControlPlane, Outbox, _Bus]]:
    """A control plane for stream `cam` with real sockets: its inbox, and its bus read."""
    cfg = parse_config(json.dumps({"streams": [{"id": "cam", "url": "x.mp4"}]}))
    bus = _Bus()
    inbox = f"ipc://{tmp_path}/inbox"
    j = AlertJournal(tmp_path / "alerts.sqlite", "normal", 30, 100)
    plane = ControlPlane(cfg, inbox, bus.endpoint, 1, j)
    plane.start()
    out = Outbox(inbox)
    try:
        yield plane, out, bus
    finally:
        out.close()
        plane.close()
        j.close()
        bus.close()


def test_a_superseded_process_state_is_not_published(tmp_path: Path) -> None:
    """A dead camera's late `streaming` reaches the inbox after the supervisor said
    `failed`/restart_limit on its behalf: it is dropped, not published."""
    with _plane(tmp_path) as (_, out, bus):
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
    assert states == ["failed", "connecting"]  # the stale `streaming` never went out


def test_a_removed_stream_added_again_is_not_silenced_by_its_old_process(
    tmp_path: Path,
) -> None:
    """Removed (its final `ended`/removed held a moment), then added again at once: the
    new process's states go out; the old process's late `streaming` and the held final
    word are superseded, and the new stream is not forgotten."""
    with _plane(tmp_path) as (plane, out, bus):
        now = time.time()
        # The old process was generation 2; the supervisor removes it (final, 3) and the
        # stream is added again as generation 4 (app.Daemon: removed + 2).
        out.send(StatusUpdate("cam", SourceState.ENDED, "removed", now, generation=3,
                              final=True))  # fmt: skip
        time.sleep(0.05)  # in the plane, held
        plane.add_stream("cam", 4)
        out.send(StatusUpdate("cam", SourceState.STREAMING, "connected", now, generation=2))
        out.send(StatusUpdate("cam", SourceState.CONNECTING, "start", now, generation=4))
        states: list[str] = []
        while (ev := bus.next(1.0)) is not None:
            if ev.kind == "status":
                states.append(ev.payload["state"])
        rows = plane.state()
    assert states == ["connecting"] and "cam" in rows


def test_alerts_go_out_in_order_through_the_journal_thread(tmp_path: Path) -> None:
    """A burst of alerts over several frames leaves in seq order, each after its commit."""
    path = tmp_path / "alerts.sqlite"
    bus = _Bus()
    writer = _writer(path, bus)
    try:
        for n in range(0, 30, 3):
            writer.submit([_new(n), _new(n + 1), _new(n + 2)])
        assert bus.seqs(30) == list(range(30))
        assert writer.close(5.0)
    finally:
        bus.close()
    with sqlite3.connect(path) as db:
        stored = [s for (s,) in db.execute("SELECT seq FROM alerts ORDER BY id")]
    assert stored == list(range(30))
