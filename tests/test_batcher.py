"""The batcher: size/wait triggers, drop policies with counted drops, fairness."""

from __future__ import annotations

from dataclasses import replace

from streamd.batching import Batcher
from streamd.types import FrameRef


def ref(stream: str, seq: int, ready: float) -> FrameRef:
    return FrameRef(stream, "ring", 4, 2, 2, seq % 4, seq, ready, ready, 1.0, ready)


def test_batch_is_due_when_full_or_when_oldest_waited_max_wait() -> None:
    b = Batcher(max_batch=3, max_wait_s=0.010, policies={"a": "block", "b": "block"})
    assert b.wait_time(100.0) is None
    b.offer(ref("a", 0, 100.000))
    wait = b.wait_time(100.004)
    assert wait is not None and abs(wait - 0.006) < 1e-9
    assert b.wait_time(100.010) == 0.0
    b.offer(ref("b", 0, 100.001))
    b.offer(ref("a", 1, 100.002))
    assert b.wait_time(100.002) == 0.0  # full
    assert [(r.stream, r.seq) for r in b.take()] == [("a", 0), ("b", 0), ("a", 1)]
    assert b.pending == 0


def test_latest_policy_replaces_and_counts_queue_full() -> None:
    b = Batcher(max_batch=8, max_wait_s=0.0, policies={"cam": "latest"})
    for seq in range(5):
        displaced = b.offer(ref("cam", seq, 1.0 + seq))
        assert len(displaced) == (0 if seq == 0 else 1)
    assert [r.seq for r in b.take()] == [4]
    assert b.drops("cam").queue_full == 4
    b.count_drop("cam")
    assert b.drops("cam").as_dict() == {"queue_full": 5, "stale": 0, "sampled": 0}


def test_block_policy_keeps_every_frame_in_order() -> None:
    b = Batcher(max_batch=2, max_wait_s=0.0, policies={"f": "block"})
    for seq in range(5):
        assert b.offer(ref("f", seq, 1.0)) == []
    out = []
    while b.pending:
        out += [r.seq for r in b.take()]
    assert out == [0, 1, 2, 3, 4]
    assert b.drops("f").queue_full == 0


def test_round_robin_does_not_starve_any_stream() -> None:
    streams = ["a", "b", "c"]
    b = Batcher(max_batch=2, max_wait_s=0.0, policies={s: "block" for s in streams})
    counts = dict.fromkeys(streams, 0)
    for seq in range(30):
        for s in streams:  # every stream always has frames waiting
            b.offer(ref(s, seq, 1.0))
        for r in b.take():
            counts[r.stream] += 1
    assert max(counts.values()) - min(counts.values()) <= 1, counts


def test_stale_frames_are_dropped_when_a_batch_is_taken() -> None:
    b = Batcher(max_batch=8, max_wait_s=0.0, policies={"cam": "oldest", "f": "oldest"},
                max_latency_s={"cam": 0.5, "f": None})  # fmt: skip
    for seq in range(4):
        b.offer(ref("cam", seq, 10.0 + 0.2 * seq))  # captured at 10.0, 10.2, 10.4, 10.6
        b.offer(ref("f", seq, 10.0 + 0.2 * seq))
    assert b.depth("cam") == 4
    batch = b.take(now=11.05)  # cam frames older than 0.5 s: 10.0, 10.2, 10.4
    assert [(r.stream, r.seq) for r in batch] == [
        ("cam", 3),
        ("f", 0),
        ("f", 1),
        ("f", 2),
        ("f", 3),
    ]
    assert [r.seq for r in b.pop_discarded()] == [0, 1, 2] and b.pop_discarded() == []
    assert b.drops("cam").as_dict() == {"queue_full": 0, "stale": 3, "sampled": 0}
    assert b.drops("f").stale == 0  # no max_latency: nothing is ever stale


def test_oldest_policy_queues_in_order_and_adds_source_drops() -> None:
    b = Batcher(max_batch=2, max_wait_s=0.0, policies={"cam": "oldest"})
    for seq in range(3):
        b.offer(
            replace(ref("cam", seq, 1.0), source_dropped={"queue_full": seq, "sampled": 2 * seq})
        )
    assert [r.seq for r in b.take()] == [0, 1] and [r.seq for r in b.take()] == [2]
    # The source's own totals (ring full under oldest, max_fps sampling) are carried in.
    assert b.drops("cam").as_dict() == {"queue_full": 2, "stale": 0, "sampled": 4}
    assert b.drops("cam").total == 6
