"""Prometheus metrics, written by every worker process, served by the supervisor.

Workers run in prometheus_client's multiprocess mode: the supervisor points
``PROMETHEUS_MULTIPROC_DIR`` at its private run directory before spawning, each
process writes its own files there, and ``/metrics`` merges them. Counters of a
worker that died stay in the sum, so totals survive worker restarts. Outside a
daemon (unit tests) the same objects are plain in-process metrics.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STAGES = ("decode", "queue", "infer", "track", "total")  # as in the det event's latency_ms

# Latency buckets in seconds: 5 ms .. 20 s, dense where real-time pipelines live.
_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.2,
    0.35,
    0.5,
    0.75,
    1.0,
    1.5,
    2.5,
    5.0,
    10.0,
    20.0,
)

FRAMES_DECODED = Counter(
    "streamd_frames_decoded", "Frames decoded by the source worker.", ["stream"]
)
FRAMES_ANALYSED = Counter(
    "streamd_frames_analysed", "Frames that went through the detector.", ["stream"]
)
NONFINITE_BOXES = Counter(
    "streamd_detector_nonfinite_boxes",
    "Boxes above the confidence threshold (of the classes asked for) that the model gave "
    "with NaN or infinite coordinates, dropped: a broken model, engine or CUDA graph.",
)
FRAMES_DROPPED = Counter(
    "streamd_frames_dropped",
    "Decoded frames not analysed, by cause: sampled (max_fps), queue_full (drop policy), "
    "stale (max_latency_ms), inbox_full (decoded in the detector process, whose own queue "
    "was full), detector_error (the detector raised on the frame's batch).",
    ["stream", "cause"],
)
DECODE_ERRORS = Counter(
    "streamd_decode_errors", "Corrupt or undecodable packets skipped.", ["stream"]
)
RECONNECTS = Counter("streamd_source_reconnects", "Reconnect attempts.", ["stream"])
BATCH_SIZE = Histogram(
    "streamd_batch_size", "Frames per detector call.", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)
LATENCY = Histogram(
    "streamd_latency_seconds",
    "Per-frame latency by stage: decode, queue (ring → batch), infer, track, total "
    "(capture → publish).",
    ["stream", "stage"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "streamd_queue_depth",
    "Frames waiting for a batch.",
    ["stream"],
    multiprocess_mode="livemax",
)
PUBLISHED = Counter(
    "streamd_published_messages",
    "Messages handed to the ZeroMQ PUB socket, by type. A subscriber past publish.hwm "
    "loses messages inside libzmq, uncounted here: it sees them as seq gaps.",
    ["type"],
)
ALERTS = Counter("streamd_alerts", "Alerts journaled and published, by rule.", ["stream", "rule"])
LINE_CROSSINGS = Counter(
    "streamd_line_crossings",
    "Objects that crossed a line, by direction (counted whether or not it alerts).",
    ["stream", "line", "direction"],
)
ZONE_OCCUPANCY = Gauge(
    "streamd_zone_occupancy",
    "Tracks inside the zone now.",
    ["stream", "zone"],
    # Written by the camera's process, which exits when its file ends: its last value
    # stands (0 once the tracks ended), and a restarted process's newer one wins.
    multiprocess_mode="mostrecent",
)
STALE_UPDATES = Counter(
    "streamd_stale_updates",
    "State updates and rows of a stream's superseded (dead) process, dropped.",
    ["stream"],
)
ALERTS_UNJOURNALED = Counter(
    "streamd_alerts_unjournaled",
    "Alerts published live without a journal entry (not replayable), by cause: "
    "journal_error (the commit failed: disk full...), queue_full (the journal was stuck "
    "for a queue's worth of alerts), journal_stuck (still queued when the camera stopped).",
    ["stream", "cause"],
)
CLIPS_WRITTEN = Counter("streamd_clips_written", "Event clips finished (MP4 on disk).", ["stream"])
CLIPS_DROPPED = Counter(
    "streamd_clips_dropped",
    "Event clips lost or cut short, by cause: queue_full (the writer's queue was full: the "
    "clip ends at the last packet queued, or is not started), no_packets (nothing buffered "
    "for the alert's frame), unsupported (the codec cannot go into MP4), disk_full, "
    "io_error (writing failed: the clip is removed).",
    ["stream", "cause"],
)
CLIPS_DELETED = Counter(
    "streamd_clips_deleted",
    "Event clips deleted by retention, by cause: age (clips.retention_days), size (clips.max_gb).",
    ["stream", "cause"],
)
JOURNAL_ERRORS = Counter(
    "streamd_journal_errors",
    "Alert batches the journal could not store (published anyway, not replayable).",
)
BUS_DROPPED = Counter(
    "streamd_bus_dropped_messages",
    "Events a process could not hand to the supervisor's bus (its queue was full), by type: "
    "subscribers see them as seq gaps.",
    ["type"],
)
RESULTS_DROPPED = Counter(
    "streamd_results_dropped",
    "Detection results that never reached a stream's analysis: the detector process could "
    "not hand them over (queue full, process restarting), or they were for the frames of a "
    "restarted process's predecessor (ignored).",
    ["stream"],
)
SINK_ERRORS = Counter(
    "streamd_sink_errors",
    "Per-frame consumers (det event, analytics, live view, meters) that raised; the others "
    "still ran.",
    ["stream", "sink"],
)
VIEW_FRAMES = Counter(
    "streamd_view_frames",
    "Analysed frames a camera's process offered the live view while watched: sent, or "
    "dropped because the view was still busy with earlier ones.",
    ["stream", "outcome"],
)
INFLIGHT_EVICTED = Counter(
    "streamd_analysed_without_pixels",
    "Frames analysed after their camera's process let go of the pixels (the result came "
    "more than 10 s late): no snapshot, no live-view frame.",
    ["stream"],
)
# Outputs (streamd/outputs/): one series per output (mqtt, nats, webhook-<name>), written by
# the outputs process. Alerts come from the journal, so "queued" is bounded by the output's
# max_inflight and a broker that is away delays alerts (lag) rather than losing them.
OUTPUT_SENT = Counter(
    "streamd_output_sent",
    "Messages an output delivered (confirmed by the broker or receiver), by type: alert, "
    "track, status, det, state (MQTT retained topics), discovery.",
    ["output", "type"],
)
OUTPUT_FAILED = Counter(
    "streamd_output_failed",
    "Delivery attempts that failed (broker away, timeout, a receiver's error); an alert's "
    "every retry counts.",
    ["output"],
)
OUTPUT_DROPPED = Counter(
    "streamd_output_dropped",
    "Messages an output gave up, by cause: queue_full (live events beyond outputs.*.queue), "
    "disconnected (live events while the broker was away), rejected (a webhook answered a "
    "4xx other than 408/429: not retried), error (could not be sent).",
    ["output", "cause"],
)
OUTPUT_QUEUED = Gauge(
    "streamd_output_queued",
    "Alerts taken from the journal and not yet confirmed, plus live events waiting.",
    ["output"],
    multiprocess_mode="livesum",
)
OUTPUT_LAG = Gauge(
    "streamd_output_lag_seconds",
    "Age (from its capture time) of the oldest alert the output has not delivered yet; 0 "
    "when it has caught up with the journal.",
    ["output"],
    multiprocess_mode="livemax",
)
OUTPUT_CONNECTED = Gauge(
    "streamd_output_connected",
    "1 while the output is connected to its broker (webhooks: the last request succeeded).",
    ["output"],
    multiprocess_mode="livemax",
)
DECODER = Gauge(
    "streamd_decoder",
    "1 for the decoder a stream's frames come from now (cpu or nvdec), 0 for the other.",
    ["stream", "decoder"],
    multiprocess_mode="mostrecent",
)
DECODE_FALLBACKS = Counter(
    "streamd_decode_fallbacks",
    "Streams sent from NVDEC to the CPU decoder, by cause: unavailable (the library or a "
    "decoder did not open), device_error (the device failed while decoding).",
    ["stream", "cause"],
)
