"""The tracking benchmark: its metrics are sane, and it runs the real daemon end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamd.evaluation import TrackedFrame, score
from streamd.evaluation.targets import format_checks, judge
from streamd.synth import SceneSpec, render_frames


@pytest.fixture(scope="module")
def crowd_truth() -> list[list[dict[str, Any]]]:
    spec = SceneSpec(width=480, height=270, fps=10, seconds=6.0, people=6, kind="crowd", seed=5)
    return render_frames(spec)[1]


def _as_tracked(truth: list[list[dict[str, Any]]], ids: Any) -> list[TrackedFrame]:
    return [
        TrackedFrame(k, k / 10, np.array([p["bbox"] for p in people], np.float64).reshape(-1, 4),
                     np.ones(len(people)), np.asarray(ids(k, people), np.int64))
        for k, people in enumerate(truth)
    ]  # fmt: skip


def test_crowd_scene_has_what_real_scenes_have(crowd_truth: list[list[dict[str, Any]]]) -> None:
    counts = [len(f) for f in crowd_truth]
    assert max(counts) >= 3 and min(counts) < max(counts), "people enter and leave"
    occluded = [p for f in crowd_truth for p in f if p["visibility"] < 0.9]
    assert occluded, "someone is partly hidden (behind another, or at the edge)"
    heights = {p["id"]: p["bbox"][3] - p["bbox"][1] for f in crowd_truth for p in f}
    assert max(heights.values()) > 1.5 * min(heights.values()), "near and far people"


def test_perfect_tracker_scores_one(crowd_truth: list[list[dict[str, Any]]]) -> None:
    s = score(crowd_truth, _as_tracked(crowd_truth, lambda _k, ps: [p["id"] + 10 for p in ps]))
    assert (s.idf1, s.mota, s.idsw, s.fp, s.fn) == (1.0, 1.0, 0, 0, 0)
    assert s.hota == pytest.approx(1.0)
    assert s.tracks == s.people >= 5


def test_shuffled_ids_score_low(crowd_truth: list[list[dict[str, Any]]]) -> None:
    rng = np.random.default_rng(0)
    s = score(crowd_truth, _as_tracked(crowd_truth, lambda _k, ps: rng.permutation(
        rng.choice(50, len(ps), replace=False))))  # fmt: skip
    assert s.idf1 < 0.3 and s.hota < 0.4 and s.idsw > 50
    assert s.deta > 0.95, "the boxes are right, only the identities are not"


def test_unconfirmed_boxes_are_not_scored(crowd_truth: list[list[dict[str, Any]]]) -> None:
    s = score(crowd_truth, _as_tracked(crowd_truth, lambda _k, ps: [-1] * len(ps)))
    assert s.idf1 == 0.0 and s.fn == sum(len(f) for f in crowd_truth) and s.fp == 0


@pytest.mark.e2e
def test_replay_takes_each_boxs_class_from_the_det_event() -> None:
    """A det event's classes come into the frame, survive its JSON, and reach the replayed
    tracker with their boxes (it answers with them in its own order)."""
    from streamd.config import TrackerConfig
    from streamd.evaluation.offline import replay

    far = {"bbox": [200.0, 10.0, 240.0, 90.0], "conf": 0.9, "track_id": None, "class_id": 0}
    near = {"bbox": [10.0, 10.0, 50.0, 90.0], "conf": 0.6, "track_id": 4, "class_id": 2}
    event = {"frame": 0, "media_ts": 0.0, "objects": [near, far]}
    frame = TrackedFrame.from_event(event)
    assert frame.classes is not None and frame.classes.tolist() == [2, 0]
    again = TrackedFrame.from_dict(json.loads(json.dumps(frame.as_dict())))
    assert again.classes is not None and again.classes.tolist() == [2, 0]
    (out,) = replay([again], TrackerConfig())
    assert out.classes is not None
    by_x = sorted(zip(out.boxes[:, 0].tolist(), out.classes.tolist(), strict=True))
    assert by_x == [(10.0, 2), (200.0, 0)]


def test_eval_tracking_runs_the_daemon(person_model: Path, tmp_path: Path) -> None:
    """`streamd eval-tracking` on the short scene: daemon, replays and the ultralytics
    loop all scored, and the daemon equals the same tracker run offline."""
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "streamd.cli", "eval-tracking", "--scenes", "short",
           "--loads", "every,fps5", "--imgsz", "320", "--weights", str(person_model),
           "--workdir", str(tmp_path / "w"), "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "YOLO_OFFLINE": "1"})  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    rows = {(r["load"], r["tracker"], r["source"]): r for r in report["rows"]}
    kind = report["daemon_tracker"]["kind"]
    for load in ("every", "fps5"):
        assert {(load, k, "replay") for k in ("bytetrack", "ocsort", "botsort", "sort")} <= set(
            rows
        )
        daemon = rows[(load, kind, "daemon")]
        assert daemon["frames"] == (45 if load == "every" else 15)
        for r in (daemon, rows[(load, "bytetrack", "ultralytics")]):
            assert 0.0 <= r["idf1"] <= 1.0 and 0.0 <= r["hota"] <= 1.0 and r["mota"] <= 1.0
            assert r["people"] == 3
        assert daemon["tracks"] >= 1, "the detector found people and they were tracked"
    assert [a["identical"] and a["scores_equal"] for a in report["agreement"]] == [True, True]
    assert "| short | every |" in done.stdout and "identical" in done.stdout
    judged = {(c["scene"], c["load"], c["metric"]) for c in report["targets"]}
    assert judged == {(sc, lo, m) for sc in ("short", "all") for lo, m in
                      (("every", "idf1"), ("every", "hota"), ("fps5", "idf1"),
                       ("every", "idsw"), ("fps5", "idsw"))}  # fmt: skip
    assert "target short/every: IDF1" in done.stdout
    assert "target all scenes/fps5: ID switches" in done.stdout


def _row(scene: str, load: str, source: str, idf1: float, hota: float, idsw: int,
         tracker: str = "botsort") -> dict[str, Any]:  # fmt: skip
    return {"scene": scene, "load": load, "tracker": tracker, "source": source,
            "idf1": idf1, "hota": hota, "idsw": idsw}  # fmt: skip


def test_targets_are_judged_per_scene_and_over_all_scenes() -> None:
    """A scene under a bar fails on its own while the mean over the scenes passes, and
    the other way round; ID switches are compared with the ultralytics loop on the same
    clip and load; replayed kinds and other trackers' rows are not judged."""
    rows = [
        _row("a", "every", "daemon", 0.95, 0.70, 3), _row("b", "every", "daemon", 0.70, 0.62, 5),
        _row("a", "every", "ultralytics", 0.60, 0.50, 4, "bytetrack"),
        _row("b", "every", "ultralytics", 0.60, 0.50, 2, "bytetrack"),
        _row("a", "fps5", "daemon", 0.69, 0.6, 1), _row("b", "fps5", "daemon", 0.70, 0.6, 1),
        _row("a", "every", "replay", 0.10, 0.10, 99), _row("a", "every", "daemon", 0.1, 0.1, 99,
                                                             "sort"),
    ]  # fmt: skip
    got = {(c.scene, c.load, c.metric): (round(c.value, 4), c.met) for c in judge(rows, "botsort")}
    assert got == {
        ("a", "every", "idf1"): (0.95, True), ("b", "every", "idf1"): (0.70, False),
        ("all", "every", "idf1"): (0.825, True),
        ("a", "every", "hota"): (0.70, True), ("b", "every", "hota"): (0.62, False),
        ("all", "every", "hota"): (0.66, True),
        ("a", "every", "idsw"): (3, True), ("b", "every", "idsw"): (5, False),
        ("all", "every", "idsw"): (8, False),
        ("a", "fps5", "idf1"): (0.69, False), ("b", "fps5", "idf1"): (0.70, True),
        ("all", "fps5", "idf1"): (0.695, False),
    }  # fmt: skip
    text = format_checks(judge(rows, "botsort"))
    assert "target b/every: IDF1 0.700 (bar 0.80): NOT met" in text
    assert "target all scenes/every: mean IDF1 0.825 (bar 0.80): met" in text
    assert "target all scenes/every: ID switches 8 vs ultralytics 6: NOT met" in text
