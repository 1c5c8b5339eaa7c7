"""``GET /metrics``: every worker's metrics merged, plus what only the supervisor knows.

A stream removed at runtime leaves its series behind in the multiprocess files
(its dead worker's counters, the inference worker's per-stream ones); only
series of the streams configured now are exposed. A stream added again under
the same id shows again, its counters summed with the earlier ones.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from streamd.control.board import StatusBoard
from streamd.types import SourceState
from streamd.view.overlay import LiveView


class _BoardCollector:
    """Source state, restarts and detector liveness, from the status board."""

    def __init__(self, board: StatusBoard) -> None:
        self._board = board
        self.view: LiveView | None = None

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
        stream_up = GaugeMetricFamily(
            "streamd_stream_up",
            "1 while the stream is streaming (frames analysed), else 0: connecting, "
            "reconnecting, stalled, failed, ended.",
            labels=["stream"],
        )
        for sid, row in snap["streams"].items():
            stream_up.add_metric([sid], 1.0 if row["up"] else 0.0)
            for s in SourceState:
                state.add_metric([sid, s.value], 1.0 if row["state"] == s.value else 0.0)
            restarts.add_metric([sid], row["restarts"])
        up = GaugeMetricFamily(
            "streamd_detector_up", "1 while the inference worker heartbeats, else 0."
        )
        up.add_metric([], 1.0 if self._board.beating() else 0.0)
        info = GaugeMetricFamily(
            "streamd_detector_backend",
            "1 for the detector backend that runs (auto's choice), e.g. onnx-cpu.",
            labels=["backend"],
        )
        if snap["backend"]:
            info.add_metric([snap["backend"]], 1.0)
        yield from (state, stream_up, restarts, up, info)
        if self.view is not None:
            yield from self._view_metrics(self.view)

    @staticmethod
    def _view_metrics(view: LiveView) -> Iterator[Metric]:
        encoded = CounterMetricFamily(
            "streamd_view_jpegs_encoded",
            "Annotated JPEGs encoded for the live view (none while nobody watches).",
            labels=["stream"],
        )
        viewers = GaugeMetricFamily(
            "streamd_view_viewers", "Live-view clients connected now.", labels=["stream"]
        )
        for sid, n in view.encoded().items():
            encoded.add_metric([sid], n)
        for sid, n in view.viewers().items():
            viewers.add_metric([sid], n)
        yield from (encoded, viewers)


class _WorkerCollector:
    """Every worker's metrics from the multiprocess files, the removed streams' left out."""

    def __init__(self, path: str, board: StatusBoard) -> None:
        self._files = MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]
        self._board = board

    def collect(self) -> Iterator[Metric]:
        streams = self._board.stream_ids()
        for family in self._files.collect():  # type: ignore[no-untyped-call]
            family.samples = [s for s in family.samples if _configured(s.labels, streams)]
            yield family


def _configured(labels: dict[str, str], streams: set[str]) -> bool:
    """Not a stream's series, or one of a stream configured now."""
    return "stream" not in labels or labels["stream"] in streams


class MetricsExporter:
    def __init__(self, board: StatusBoard, multiproc_dir: str | None) -> None:
        self._workers: CollectorRegistry | None = None
        if multiproc_dir is not None:
            self._workers = CollectorRegistry()
            self._workers.register(_WorkerCollector(multiproc_dir, board))
        self._local = CollectorRegistry()
        self._board = _BoardCollector(board)
        self._local.register(self._board)

    @property
    def view(self) -> LiveView | None:
        return self._board.view

    @view.setter
    def view(self, view: LiveView | None) -> None:
        self._board.view = view

    def render(self) -> bytes:
        out = b"" if self._workers is None else generate_latest(self._workers)
        return out + generate_latest(self._local)
