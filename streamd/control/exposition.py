"""``GET /metrics``: every worker's metrics merged, plus what only the supervisor knows."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from streamd.control.board import StatusBoard
from streamd.types import SourceState


class _BoardCollector:
    """Source state, restarts and detector liveness, from the status board."""

    def __init__(self, board: StatusBoard) -> None:
        self._board = board

    def collect(self) -> Iterator[Metric]:
        snap = self._board.snapshot()
        state = GaugeMetricFamily(
            "streamd_source_state",
            "1 for the state each stream is in (connecting, streaming, stalled, ...), else 0.",
            labels=["stream", "state"],
        )
        restarts = CounterMetricFamily(
            "streamd_source_restarts",
            "Source worker restarts by the supervisor.",
            labels=["stream"],
        )
        for sid, row in snap["streams"].items():
            for s in SourceState:
                state.add_metric([sid, s.value], 1.0 if row["state"] == s.value else 0.0)
            restarts.add_metric([sid], row["restarts"])
        up = GaugeMetricFamily(
            "streamd_detector_up", "1 while the inference worker heartbeats, else 0."
        )
        up.add_metric([], 1.0 if snap["healthy"] else 0.0)
        info = GaugeMetricFamily(
            "streamd_detector_backend",
            "1 for the detector backend that runs (auto's choice), e.g. onnx-cpu.",
            labels=["backend"],
        )
        if snap["backend"]:
            info.add_metric([snap["backend"]], 1.0)
        yield from (state, restarts, up, info)


class MetricsExporter:
    def __init__(self, board: StatusBoard, multiproc_dir: str | None) -> None:
        self._dir = multiproc_dir
        self._local = CollectorRegistry()
        self._local.register(_BoardCollector(board))

    def render(self) -> bytes:
        out = b""
        if self._dir is not None:
            merged = CollectorRegistry()
            MultiProcessCollector(merged, path=self._dir)  # type: ignore[no-untyped-call]
            out = generate_latest(merged)
        return out + generate_latest(self._local)
