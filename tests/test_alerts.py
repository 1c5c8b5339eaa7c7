"""Alerts through the real daemon: fields, snapshots, journal, replay, restarts.

The scene's ground truth says exactly when each person crosses each line and
leaves each zone; the daemon's alerts must match it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest

from streamd.client import AlertClient, Subscriber
from streamd.publish import load_schema
from streamd.publish.journal import SEQ_RESERVE

from .daemon import collect, sample, scrape, start, stop_and_check_clean, write_pipeline
from .groundtruth import iou
from .util import free_port, shm_segments

pytestmark = pytest.mark.e2e
VALIDATOR = jsonschema.Draft202012Validator(load_schema())
FPS = 15
DEBOUNCE_S = 0.2
LINE_X = {"a": 160, "b": 480}  # vertical lines, drawn top to bottom: "in" is towards x = 0
ZONE = [[0, 0], [160, 0], [160, 360], [0, 360]]  # the left quarter


def analytics_streams(video: Path, loop: bool = False) -> list[dict[str, Any]]:
    region = {"debounce_s": DEBOUNCE_S, "min_conf": 0.3}
    return [
        {
            "id": "walk",
            "url": str(video),
            "loop": loop,
            "zones": [{"name": "left", "polygon": ZONE, **region,
                       "alert_on": ["enter", "exit", "dwell>=0.5s"]}],
            "lines": [
                {"name": name, "points": [[x, 0], [x, 360]], "alert_on": ["in", "out"],
                 "snapshot": name == "a", **region}
                for name, x in LINE_X.items()
            ],
        }
    ]  # fmt: skip


def expected_crossings(truth: list[list[dict[str, Any]]]) -> list[tuple[str, str, int, int]]:
    """(line, direction, person, first frame on the new side) from the ground truth."""
    out = []
    for line, x in LINE_X.items():
        side: dict[int, int] = {}
        for k, people in enumerate(truth):
            for p in people:
                cx = (p["bbox"][0] + p["bbox"][2]) / 2
                s = 1 if cx < x else -1  # 1 = the "in" side
                if p["id"] in side and s != side[p["id"]]:
                    out.append((line, "in" if s == 1 else "out", p["id"], k))
                side[p["id"]] = s
    return sorted(out, key=lambda c: (c[3], c[0]))


def person_at(truth: list[list[dict[str, Any]]], frame: int, bbox: list[float]) -> int:
    best = max(truth[frame], key=lambda p: iou(p["bbox"], bbox))
    assert iou(best["bbox"], bbox) >= 0.5, f"alert box {bbox} matches nobody at frame {frame}"
    return int(best["id"])


def test_alerts_match_the_scene_and_are_journaled(
    person_model: Path, scene: tuple[Path, Path], tmp_path: Path
) -> None:
    video, truth_path = scene
    truth = json.loads(truth_path.read_text())["frames"]
    port = free_port()
    cfg = write_pipeline(tmp_path, person_model, port, analytics_streams(video))
    shm_before = shm_segments()
    sub = Subscriber(f"tcp://127.0.0.1:{port}", topics=["alert.", "track.", "heartbeat"])
    daemon = start(cfg, tmp_path / "daemon.log")
    try:
        events = collect(
            sub,
            lambda evs: sum(e.kind == "track" and e.payload["event"] == "end" for e in evs) >= 2,
            120,
        )
        time.sleep(1.5)  # a heartbeat after the last alert
        events += collect(sub, lambda evs: False, 1.5)
        journal = json.loads(cfg.read_text())["journal"]
        client = AlertClient(journal["endpoint"])
        replayed, more = client.replay({})
        state = client.state()
        client.close()
        metrics = scrape(cfg)
        stop_and_check_clean(daemon, signal.SIGTERM, shm_before)
    finally:
        if daemon.poll() is None:
            daemon.kill()
        sub.close()
    for e in events:
        VALIDATOR.validate(e.payload)
    alerts = [e for e in events if e.kind == "alert"]
    # The journal holds exactly what was published, snapshots included.
    assert not more and [e.payload for e in replayed] == [e.payload for e in alerts]
    assert [e.attachment for e in replayed] == [e.attachment for e in alerts]

    crossings = [a for a in alerts if a.payload["line"] is not None]
    want = expected_crossings(truth)
    assert len(want) == 4  # each person crosses its lane's line there and back
    got = sorted(
        (a.payload["line"], a.payload["rule"],
         person_at(truth, a.payload["frame"], a.payload["bbox"]), a.payload["frame"])
        for a in crossings
    )  # fmt: skip
    assert [g[:3] for g in got] == sorted(w[:3] for w in want)
    for (_, _, _, frame), (_, _, _, gt_frame) in zip(got, sorted(want), strict=True):
        # Confirmed DEBOUNCE_S after the first frame on the new side (+ anchor jitter).
        assert gt_frame <= frame <= gt_frame + round(DEBOUNCE_S * FPS) + 3
    for a in crossings:
        p = a.payload
        assert p["class"] == "Normal" and p["conf"] >= 0.3 and p["track_id"] is not None
        assert p["counts"]["in"] + p["counts"]["out"] >= 1
        assert p["snapshot"] is (p["line"] == "a") and (a.attachment is not None) is p["snapshot"]
        if a.attachment is not None:
            jpeg = cv2.imdecode(np.frombuffer(a.attachment, np.uint8), cv2.IMREAD_COLOR)
            x1, y1, x2, y2 = p["bbox"]
            want_h = min(360, y2 + 0.1 * (y2 - y1)) - max(0, y1 - 0.1 * (y2 - y1))
            assert jpeg is not None and abs(jpeg.shape[0] - want_h) <= 3
            assert abs(jpeg.shape[1] - 1.2 * (x2 - x1)) <= 3

    # Person 0 starts in the left zone, leaves across line a after 1 s, comes back
    # for the last second, and is still there when the file ends: dwell once per visit.
    zone = [(a.payload["rule"], a.payload.get("reason")) for a in alerts if a.payload["zone"]]
    assert zone == [("enter", None), ("dwell", None), ("exit", "left"), ("enter", None),
                    ("dwell", None), ("exit", "ended")]  # fmt: skip
    dwell = next(a.payload for a in alerts if a.payload["rule"] == "dwell")
    assert dwell["dwell_s"] >= 0.5 and dwell["condition"] == "dwell>=0.5s"
    leave_a = next(c for c in crossings if c.payload["line"] == "a")
    exit_left = next(a.payload for a in alerts if a.payload["rule"] == "exit")
    assert abs(exit_left["frame"] - leave_a.payload["frame"]) <= 3

    tracks = [e.payload for e in events if e.kind == "track"]
    ends = [t for t in tracks if t["event"] == "end"]
    assert {t["event"] for t in tracks} >= {"new", "update", "end"}
    assert len([t for t in tracks if t["event"] == "new"]) == len(ends) == 2
    assert sorted(tuple(t["zones"]) for t in ends) == [(), ("left",)]
    assert all(t["duration_s"] >= 3.0 and t["reason"] == "ended" for t in ends)

    beats = [e.payload for e in events if e.kind == "heartbeat"]
    assert beats[-1]["streams"]["walk"]["lines"] == {"a": {"in": 1, "out": 1},
                                                    "b": {"in": 1, "out": 1}}  # fmt: skip
    assert beats[-1]["streams"]["walk"]["alert_seq"] == alerts[-1].seq
    # The camera's own rows say so (MQTT clears a zone only on such a row's word).
    assert beats[-1]["streams"]["walk"]["reported"] is True
    walk = state["streams"]["walk"]
    assert walk["lines"]["a"]["in"] == 1 and walk["zones"]["left"]["occupancy"] == 0
    assert state["alert_seq"]["walk"] == alerts[-1].seq
    for line in LINE_X:
        for direction in ("in", "out"):
            labels = {"stream": "walk", "line": line, "direction": direction}
            assert sample(metrics, "streamd_line_crossings_total", **labels) == 1.0
    occupancy = ("streamd_zone_occupancy", (("stream", "walk"), ("zone", "left")))
    assert metrics.get(occupancy) == 0.0  # exported, and empty after the person's track ended
    fired = sum(v for (name, _), v in metrics.items() if name == "streamd_alerts_total")
    assert fired == len(alerts)


SUBSCRIBER = """
import json, sys
from streamd.client import AlertSubscriber
out_path, endpoint, request = sys.argv[1:4]
position = {}
try:
    for line in open(out_path):
        row = json.loads(line)
        position[row["stream"]] = row["seq"]
except FileNotFoundError:
    pass
# Position kept with the output itself: exactly once across our own restarts.
with AlertSubscriber(endpoint, request, position=position) as alerts, open(out_path, "a") as out:
    for a in alerts:
        out.write(json.dumps({"stream": a.stream, "seq": a.seq, "epoch": a.epoch,
                              "replayed": alerts.replayed}) + "\\n")
        out.flush()
"""


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _wait_lines(path: Path, n: int, timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = _lines(path)
        if len(rows) >= n:
            return rows
        time.sleep(0.2)
    raise AssertionError(f"{path.name}: {len(_lines(path))} alerts after {timeout_s}s, wanted {n}")


def _journal(path: Path) -> list[tuple[str, int, int]]:
    with sqlite3.connect(path) as db:
        return list(db.execute("SELECT stream, seq, epoch FROM alerts ORDER BY id"))


def test_subscriber_and_daemon_restarts_lose_no_alert(
    person_model: Path, scene: tuple[Path, Path], tmp_path: Path
) -> None:
    """A subscriber SIGKILLed mid-burst and restarted, then the daemon SIGKILLed and
    restarted: the subscriber ends with every journaled alert once, in order, and no
    seq is handed out twice."""
    video, _ = scene
    port = free_port()
    cfg = write_pipeline(tmp_path, person_model, port, analytics_streams(video, loop=True))
    journal = json.loads(cfg.read_text())["journal"]
    out = tmp_path / "received.jsonl"
    shm_before = shm_segments()
    sub_cmd = [sys.executable, "-c", SUBSCRIBER, str(out), f"tcp://127.0.0.1:{port}",
               journal["endpoint"]]  # fmt: skip
    daemon = start(cfg, tmp_path / "daemon.log")
    subscriber = subprocess.Popen(sub_cmd)
    try:
        _wait_lines(out, 8, 120)
        subscriber.kill()  # mid-burst: the clip loops, alerts keep coming
        subscriber.wait(5)
        missed_from = len(_lines(out))
        # Down until it has missed some: two alerts journaled since its death.
        missed = len(_journal(Path(journal["path"]))) + 2
        deadline = time.monotonic() + 30
        while len(_journal(Path(journal["path"]))) < missed:
            assert time.monotonic() < deadline, "no alert while the subscriber was down"
            time.sleep(0.2)
        subscriber = subprocess.Popen(sub_cmd)
        _wait_lines(out, missed_from + 8, 60)

        os.killpg(daemon.pid, signal.SIGKILL)  # the whole daemon, no clean-up
        daemon.wait(5)
        for name in shm_segments() - shm_before:
            (Path("/dev/shm") / name).unlink(missing_ok=True)
        time.sleep(1)
        daemon = start(cfg, tmp_path / "daemon2.log")
        _wait_lines(out, len(_journal(Path(journal["path"]))) + 6, 120)
        stop_and_check_clean(daemon, signal.SIGTERM, shm_before)
        published = _journal(Path(journal["path"]))
        _wait_lines(out, len(published), 30)
    finally:
        subscriber.kill()
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
    received = _lines(out)
    assert [(r["stream"], r["seq"], r["epoch"]) for r in received] == published
    epochs = sorted({r["epoch"] for r in received})
    assert len(epochs) == 2  # the restart is visible
    before, after = ([r["seq"] for r in received if r["epoch"] == e] for e in epochs)
    assert before == list(range(len(before)))
    # The daemon was killed, not stopped: the new run numbers on above the block its
    # predecessor had reserved (seqs it may have published unjournaled), none reused.
    assert after == list(range(after[0], after[0] + len(after)))
    assert after[0] >= SEQ_RESERVE > before[-1]
    restarted = received[missed_from:]
    assert restarted[0]["replayed"] > 0, "the restarted subscriber did not replay what it missed"


@pytest.mark.parametrize("problem", ["path", "endpoint"])
def test_an_unusable_journal_refuses_start_naming_the_key(
    person_model: Path, tmp_path: Path, problem: str
) -> None:
    import zmq

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    ctx = zmq.Context()
    taken = ctx.socket(zmq.REP)
    taken_port = taken.bind_to_random_port("tcp://127.0.0.1")
    journal = {"path": str(blocker / "alerts.sqlite"), "endpoint": f"tcp://127.0.0.1:{free_port()}"}
    if problem == "endpoint":
        journal = {"path": str(tmp_path / "ok.sqlite"), "endpoint": f"tcp://127.0.0.1:{taken_port}"}
    cfg = write_pipeline(tmp_path, person_model, free_port(), [{"id": "a", "url": "x.mp4"}],
                         journal=journal)  # fmt: skip
    try:
        out = subprocess.run([sys.executable, "-m", "streamd.cli", "run", str(cfg)],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    finally:
        taken.close()
        ctx.term()
    assert out.returncode == 2  # refused, not crashed
    assert f"journal.{problem}" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
