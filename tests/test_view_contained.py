"""The live view's drawing thread: a picture of one stream that cannot be drawn costs
that picture, never the live view of the other streams (an attacker's finding: one
bad zone stopped every stream's view, with /healthz still healthy)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from streamd.config import parse_config
from streamd.view.feed import ViewMeta
from streamd.view.overlay import LiveView


def test_a_picture_that_cannot_be_drawn_costs_only_its_stream(tmp_path: Path) -> None:
    cfg = parse_config("streams: [{id: bad, url: a.mp4}, {id: good, url: b.mp4}]")
    endpoint = f"ipc://{tmp_path}/view"
    view = LiveView(cfg, endpoint, watch=lambda _s, _r: None, hud=lambda _s: {})

    def choke(*_a: Any, **_k: Any) -> Any:
        raise ValueError("a region the drawing code chokes on")

    view.streams["bad"].annotator.draw = choke  # type: ignore[method-assign]
    view.start()
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(endpoint)
    frame = np.zeros((36, 64, 3), np.uint8)
    try:
        with view.viewer("bad"), view.viewer("good"):
            for n in range(1, 11):
                for sid in ("bad", "good"):
                    meta = ViewMeta(sid, n, n / 10, [], 0.0, 10.0, shape=(36, 64))
                    push.send_multipart([meta.encode(), frame.tobytes()])
                time.sleep(0.05)
            deadline, newest = time.monotonic() + 5.0, 0
            while newest < 10 and time.monotonic() < deadline:
                picture = view.next_picture("good", 0, timeout_s=0.5)
                newest = 0 if picture is None else picture.meta.frame
        assert newest == 10, "good's view died with bad's"
        assert view.streams["bad"].picture is None
        assert set(view.failed) == {"bad"} and view.failed["bad"] >= 1
    finally:
        push.close()
        view.close()


def test_a_recording_holds_each_picture_until_the_next_came(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``streamd view --out`` at 10 frames/s from pictures at 0, 0.5 and 1.0 s: five
    frames of the first, five of the second, then the last: the file plays in real time."""
    import cv2

    from streamd.view import viewer

    clock = iter([0.0, 0.5, 1.0, 1.0])
    monkeypatch.setattr(viewer.time, "monotonic", lambda: next(clock))
    out = tmp_path / "v.mp4"
    shades = [np.full((48, 64, 3), v, np.uint8) for v in (0, 120, 250)]
    rec = viewer._Recorder(str(out), 10.0, shades[0])
    rec.add(shades[1])
    rec.add(shades[2])
    rec.close()
    cap = cv2.VideoCapture(str(out))
    seen = []
    while (got := cap.read())[0]:
        seen.append(round(float(got[1].mean()) / 10) * 10)
    cap.release()
    assert seen == [0] * 5 + [120] * 5 + [250], seen
