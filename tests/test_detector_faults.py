"""A batch the detector raises on (found on an H200: a CUDA graph's NaN boxes, then an
illegal memory access): its frames are dropped, counted and reported to their cameras,
the next batches go on; a detector that fails every batch still ends the process."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

import streamd.inference as inference
from streamd.batching.batcher import DropCounters
from streamd.config import parse_config
from streamd.detect import DetectorError, create_detector
from streamd.frames.ring import FrameRing
from streamd.runtime.channel import Inbox, Outbox, ResultRouter
from streamd.types import Detected, Dropped, FrameRef, Results, RouteUpdate


class Flaky:
    """The real (null) detector, raising on the batches named."""

    def __init__(self, real: Any, fail: Sequence[int]) -> None:
        self.real, self.fail, self.calls = real, set(fail), 0
        self.backend, self.names = real.backend, real.names

    def detect(self, frames: Sequence[Any], refs: Sequence[FrameRef] | None = None) -> Any:
        self.calls += 1
        if self.calls in self.fail:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.real.detect(frames, refs)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[inference.InferenceWorker, FrameRing, Inbox]]:
    cfg = parse_config("streams: [{id: a, url: a.mp4}]\nmodel: {backend: null, imgsz: 320}\n")
    ep = f"ipc://{tmp_path}"
    camera = Inbox(f"{ep}/results-a")
    worker = inference.InferenceWorker(cfg, create_detector(cfg.model, max_batch=4),
                                       Inbox(f"{ep}/inbox"), ResultRouter({}),
                                       Outbox(f"{ep}/control"))  # fmt: skip
    worker._ingest([RouteUpdate("a", f"{ep}/results-a", "block")])
    ring = FrameRing(f"streamd_test_{os.getpid()}_faults", 4, 8, 8, skip_claimed=False)
    try:
        yield worker, ring, camera
    finally:
        worker.close()
        ring.close()
        camera.close()


def _frames(ring: FrameRing, n: int) -> list[FrameRef]:
    refs = []
    for _ in range(n):
        slot, seq = ring.write(np.zeros((8, 8, 3), np.uint8))
        now = time.time()
        refs.append(FrameRef("a", ring.name, 4, 8, 8, slot, seq, now, seq / 10, 1.0, now))
    return refs


def _received(camera: Inbox, n: int) -> list[Any]:
    items: list[Any] = []
    deadline = time.monotonic() + 10
    while len(items) < n and time.monotonic() < deadline:
        if camera.poll(0.1):
            items += [i for m in camera.drain() if isinstance(m, Results) for i in m.items]
    return items


def _counted() -> float:
    value = REGISTRY.get_sample_value(
        "streamd_frames_dropped_total", {"stream": "a", "cause": "detector_error"}
    )
    return value or 0.0


def test_a_failing_batch_drops_its_frames_and_the_next_goes_on(
    rig: tuple[inference.InferenceWorker, FrameRing, Inbox],
) -> None:
    worker, ring, camera = rig
    worker.detector = Flaky(worker.detector, fail=[1])
    before = _counted()
    worker.process(_frames(ring, 2))
    worker._flush()
    assert ring.free_slots() == 4  # a block writer is not left waiting on them
    assert int(ring.claimed.sum()) == 0  # nor a latest writer going around claimed slots
    worker.process(_frames(ring, 3))
    worker._flush()
    items = _received(camera, 5)
    assert [type(i) for i in items] == [Dropped, Dropped, Detected, Detected, Detected]
    assert [i.cause for i in items[:2]] == ["detector_error"] * 2
    assert [i.drops.detector_error for i in items] == [1, 2, 2, 2, 2]
    assert _counted() - before == 2
    assert ring.free_slots() == 4


def test_a_detector_failing_every_batch_ends_the_process(
    rig: tuple[inference.InferenceWorker, FrameRing, Inbox],
) -> None:
    worker, ring, _ = rig
    worker.detector = Flaky(worker.detector, fail=range(1, 100))
    for _ in range(inference.MAX_FAILED_BATCHES - 1):
        worker.process(_frames(ring, 1))
    with pytest.raises(DetectorError, match=r"5 batches in a row failed.*illegal memory access"):
        worker.process(_frames(ring, 1))


def test_a_success_resets_the_count_of_failures_in_a_row(
    rig: tuple[inference.InferenceWorker, FrameRing, Inbox],
) -> None:
    worker, ring, _ = rig
    n = inference.MAX_FAILED_BATCHES
    fail = [*range(1, n), *range(n + 1, 2 * n)]  # n-1 failures, a success, n-1 failures
    worker.detector = Flaky(worker.detector, fail=fail)
    for _ in range(2 * n - 1):
        worker.process(_frames(ring, 1))
    assert worker._failed["a"] == 2 * (n - 1)


def test_the_det_events_dropped_names_detector_errors_once_there_are_some() -> None:
    assert "detector_error" not in DropCounters(1, 2, {"sampled": 3}).as_dict()
    assert DropCounters(1, 2, {}, detector_error=4).as_dict() == {
        "queue_full": 1, "stale": 2, "sampled": 0, "detector_error": 4,
    }  # fmt: skip


def test_nonfinite_boxes_are_dropped_and_counted() -> None:
    """A model (or graph) giving NaN/inf coordinates: those candidates go, counted; the
    finite ones of the same batch stay."""
    import torch

    from streamd.detect.prepost import Placement, postprocess

    preds = torch.zeros((2, 4 + 1, 3))  # (B, 4+nc, N): xywh, one class score
    preds[:, :4, :] = torch.tensor([100.0, 100.0, 20.0, 40.0])[:, None]
    preds[:, 4, :] = 0.9
    preds[0, 4, 1] = 0.1  # below conf: one finite candidate in frame 0
    preds[0, 0, 2] = float("nan")
    preds[1, 2, 0] = float("inf")
    place = [Placement(1.0, 0, 0, 320, 320)] * 2
    before = REGISTRY.get_sample_value("streamd_detector_nonfinite_boxes_total") or 0.0
    rows = postprocess(preds, place, conf=0.25, iou=0.45, classes=None)
    assert torch.isfinite(rows).all()
    assert sorted(rows[:, 0].tolist()) == [0.0, 1.0]  # one box per frame after NMS
    after = REGISTRY.get_sample_value("streamd_detector_nonfinite_boxes_total") or 0.0
    assert after - before == 2


def test_a_captured_graph_keeps_the_heads_cached_anchors(person_model: Path) -> None:
    """The tensors a CUDA graph reads by address that no parameter or buffer owns (the
    head's anchors, re-made per input shape): module_tensors finds them to be held."""
    import torch

    from streamd.detect.yolo import load_checkpoint, module_tensors

    model, _, _ = load_checkpoint(str(person_model))
    head = model.model[-1]
    with torch.inference_mode():
        model(torch.zeros((2, 3, 320, 320)))
        held = module_tensors(model)  # as a graph of batch 2 is captured
        anchors = head.anchors
        model(torch.zeros((1, 3, 320, 320)))  # the next bucket's warm-up
    assert head.anchors is not anchors  # replaced: without ``held`` it would be freed
    assert any(t is anchors for t in held) and any(t is head.stride for t in held)
