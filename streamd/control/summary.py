"""The supervisor's summary lines: every ``log.summary_s`` one line of per-stream figures,
and the run's totals at shutdown, for people reading the log and for log shippers (a
``json`` line carries the figures as a ``summary`` / ``totals`` object).

Counts come from the workers' metric files (prometheus multiprocess mode), which keep a
dead process's counters, so they survive camera restarts; state and fps come from the
control plane's latest rows.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.multiprocess import MultiProcessCollector

from streamd.types import SourceState, StreamRow

log = logging.getLogger("streamd.summary")

Rows = Callable[[], dict[str, tuple[SourceState | None, StreamRow]]]


@dataclass
class Figures:
    """One stream's counters since the daemon started (or over an interval)."""

    analysed: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    alerts: int = 0
    latency: dict[float, float] = field(default_factory=dict)  # le (s) → cumulative count

    def minus(self, before: Figures) -> Figures:
        return Figures(
            self.analysed - before.analysed,
            {c: n - before.dropped.get(c, 0) for c, n in self.dropped.items()},
            self.alerts - before.alerts,
            {le: n - before.latency.get(le, 0.0) for le, n in self.latency.items()},
        )

    def latency_ms(self, q: float) -> float | None:
        """The q-quantile of capture → publish latency, from the histogram's buckets
        (linear within the bucket it falls in); None without frames."""
        bounds = sorted(self.latency)
        total = self.latency[bounds[-1]] if bounds else 0.0
        if total <= 0:
            return None
        rank, prev_le, prev_n = q * total, 0.0, 0.0
        for le in bounds:
            n = self.latency[le]
            if n >= rank:
                if le == float("inf"):
                    return round(prev_le * 1000, 1)  # past the last bound: its floor
                share = (rank - prev_n) / (n - prev_n) if n > prev_n else 1.0
                return round((prev_le + share * (le - prev_le)) * 1000, 1)
            prev_le, prev_n = le, n
        return None


def read_figures(metrics_dir: str) -> dict[str, Figures]:
    """Every stream's figures, merged from all worker processes' metric files."""
    files = glob.glob(os.path.join(metrics_dir, "*.db"))
    out: dict[str, Figures] = defaultdict(Figures)
    for metric in MultiProcessCollector.merge(files, accumulate=True):  # type: ignore[no-untyped-call]
        for s in metric.samples:
            stream = s.labels.get("stream")
            if stream is None:
                continue
            fig = out[stream]
            if s.name == "streamd_frames_analysed_total":
                fig.analysed += int(s.value)
            elif s.name == "streamd_frames_dropped_total":
                cause = s.labels["cause"]
                fig.dropped[cause] = fig.dropped.get(cause, 0) + int(s.value)
            elif s.name == "streamd_alerts_total":
                fig.alerts += int(s.value)
            elif s.name == "streamd_latency_seconds_bucket" and s.labels["stage"] == "total":
                le = float(s.labels["le"])
                fig.latency[le] = fig.latency.get(le, 0.0) + s.value
    return dict(out)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g} ms"


def _drops(dropped: dict[str, int]) -> str:
    return " ".join(f"{c}={n}" for c, n in sorted(dropped.items())) or "none"


class RunSummary:
    """Logs a summary every ``interval_s`` (0: never) on its own thread; :meth:`totals` once
    the workers stopped."""

    def __init__(self, metrics_dir: str, rows: Rows, interval_s: float) -> None:
        self._dir = metrics_dir
        self._rows = rows
        self._interval = interval_s
        self._before: dict[str, Figures] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="summary", daemon=True)

    def start(self) -> None:
        if self._interval > 0:
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.log_summary()
            except OSError as e:  # a metric file half written or gone: the next one
                log.warning("summary skipped: %s", e)

    def log_summary(self) -> None:
        now = read_figures(self._dir)
        streams: dict[str, Any] = {}
        for sid, (state, row) in self._rows().items():
            fig = now.get(sid, Figures()).minus(self._before.get(sid, Figures()))
            streams[sid] = {
                "state": state.value if state else None,
                "fps": round(row.fps, 2),
                "analysed": fig.analysed,
                "dropped": fig.dropped,
                "latency_ms": {"p50": fig.latency_ms(0.5), "p99": fig.latency_ms(0.99)},
            }
        self._before = now
        parts = [
            f"{sid} {s['state'] or '-'} {s['fps']:.1f} fps, analysed {s['analysed']}, "
            f"dropped {_drops(s['dropped'])}, latency p50 {_ms(s['latency_ms']['p50'])} "
            f"p99 {_ms(s['latency_ms']['p99'])}"
            for sid, s in streams.items()
        ]
        summary = {"interval_s": self._interval, "streams": streams}
        log.info("summary (last %gs): %s", self._interval, "; ".join(parts),
                 extra={"summary": summary})  # fmt: skip

    def totals(self, restarts: dict[str, int]) -> None:
        """The run's totals per stream; call after the workers stopped (final counts)."""
        self.close()
        figures = read_figures(self._dir)
        totals: dict[str, Any] = {}
        for sid, n in restarts.items():
            fig = figures.get(sid, Figures())
            totals[sid] = {"analysed": fig.analysed, "dropped": fig.dropped,
                           "alerts": fig.alerts, "restarts": n}  # fmt: skip
        parts = [
            f"{sid} analysed {t['analysed']}, dropped {_drops(t['dropped'])}, "
            f"alerts {t['alerts']}, restarts {t['restarts']}"
            for sid, t in totals.items()
        ]
        log.info("totals: %s", "; ".join(parts), extra={"totals": totals})

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
