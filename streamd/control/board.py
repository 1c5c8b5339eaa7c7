"""The daemon's own view of every stream, built from what it published on the bus.

The supervisor subscribes to its own ``status.*`` and ``heartbeat`` topics,
so ``/status`` shows exactly what subscribers were told; no second path for
state to disagree through.
"""

from __future__ import annotations

import copy
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from streamd.client import ClientKeys, Event, Subscriber
from streamd.control.health import mark_streams, not_ready
from streamd.publish.alert_writer import STALL_S
from streamd.types import SourceState

_WILDCARD_TCP = re.compile(r"^tcp://(\*|0\.0\.0\.0|\[::\]):")


def connect_endpoint(bind: str) -> str:
    """The address a local client connects to for a PUB bound at ``bind``."""
    m = _WILDCARD_TCP.match(bind)
    if m is None:
        return bind
    host = "[::1]" if m.group(1) == "[::]" else "127.0.0.1"
    return f"tcp://{host}:{bind[m.end() :]}"


def _blank(stream: str) -> dict[str, Any]:
    return {
        "stream": stream,
        "state": None,
        "reason": None,
        "detail": "",
        "attempt": 0,
        "since": None,
        "retry_in_s": None,
        "pid": None,
        "restarts": 0,
        "reconnects": 0,
        "analysed": 0,
        "fps": 0.0,
        "dropped": {},
        "decoded": 0,
        "decode_errors": 0,
    }


class StatusBoard:
    def __init__(
        self,
        endpoint: str,
        streams: list[str],
        heartbeat_s: float,
        curve: ClientKeys | None = None,  # the publisher's CURVE keys let this client in
        ready_share: float = 1.0,  # supervisor.ready_streams: the share that must stream
    ) -> None:
        self._ready_share = ready_share
        self._endpoint = connect_endpoint(endpoint)
        self._curve = curve
        self._heartbeat_s = heartbeat_s
        self._lock = threading.Lock()
        self._streams = {sid: _blank(sid) for sid in streams}
        self._backend: str | None = None
        self._epoch: int | None = None
        self._last_beat: float | None = None
        self._watched: dict[str, Callable[[], bool]] = {}  # supervisor parts: name → alive()
        self._started = time.time()
        self._beat_seen = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-board", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # The socket lives and dies in this thread (ZeroMQ sockets are not thread-safe).
        with Subscriber(self._endpoint, topics=["status.", "heartbeat"], curve=self._curve) as sub:
            while not self._closed.is_set():
                event = sub.recv(0.2)
                if event is not None:
                    self.apply(event)

    def apply(self, event: Event) -> None:
        p = event.payload
        with self._lock:
            self._epoch = p.get("epoch", self._epoch)
            if p["type"] == "heartbeat":
                self._apply_heartbeat(p)
            elif p["type"] == "status" and p["stream"] in self._streams:
                row = self._streams[p["stream"]]
                row.update(
                    state=p["state"],
                    reason=p["reason"],
                    detail=p["detail"],
                    attempt=p["attempt"],
                    since=p["ts"],
                    retry_in_s=p["retry_in_s"],
                )
                row["reconnects"] = max(row["reconnects"], p["counters"].get("reconnects", 0))

    def _apply_heartbeat(self, p: dict[str, Any]) -> None:
        self._backend = p["backend"]
        self._last_beat = time.time()
        for sid, s in p["streams"].items():
            row = self._streams.get(sid)
            if row is not None:
                for key in ("analysed", "fps", "dropped", "decoded", "decode_errors", "zones",
                            "lines", "alert_seq", "latency_ms", "journal"):  # fmt: skip
                    row[key] = s.get(key)
        self._beat_seen.set()

    def wait_heartbeat(self, timeout_s: float) -> bool:
        """True once a heartbeat came through: the subscription is live."""
        return self._beat_seen.wait(timeout_s)

    def add_stream(self, stream: str) -> None:
        """A stream added at runtime gets a row (its events fill it in)."""
        with self._lock:
            self._streams[stream] = _blank(stream)

    def remove_stream(self, stream: str) -> None:
        """A stream removed at runtime leaves /status."""
        with self._lock:
            self._streams.pop(stream, None)

    def stream_ids(self) -> set[str]:
        """The streams configured now (runtime additions in, removals out)."""
        with self._lock:
            return set(self._streams)

    def set_worker(self, stream: str, pid: int | None, restarts: int) -> None:
        with self._lock:
            self._streams[stream].update(pid=pid, restarts=restarts)

    def state(self, stream: str) -> tuple[SourceState | None, float]:
        """The stream's last published state and the wall time it began."""
        with self._lock:
            row = self._streams[stream]
            state = SourceState(row["state"]) if row["state"] else None
            return state, row["since"] or self._started

    def watch(self, name: str, alive: Callable[[], bool]) -> None:
        """Count a supervisor part (e.g. the replay thread) in health."""
        with self._lock:
            self._watched[name] = alive

    def dead(self) -> list[str]:
        """Watched parts that stopped: a dead thread never comes back, so it is unhealthy."""
        with self._lock:
            watched = list(self._watched.items())
        return [name for name, alive in watched if not alive()]

    def beating(self) -> bool:
        """The detector is alive: a heartbeat arrived within three intervals."""
        with self._lock:
            last = self._last_beat
        return last is not None and time.time() - last < 3 * self._heartbeat_s + 1.0

    def problems(self) -> list[str]:
        """What makes the daemon unhealthy now, in words (empty: healthy)."""
        with self._lock:
            stuck = {sid: (row.get("journal") or {}).get("stalled_s", 0)
                     for sid, row in self._streams.items()}  # fmt: skip
        out = [] if self.beating() else ["no heartbeat: the detector is down or hung"]
        out += [f"alert journal of {sid} stuck for {s:.0f}s" for sid, s in stuck.items()
                if s > STALL_S]  # fmt: skip
        return out + [f"{name} thread dead" for name in self.dead()]

    def not_ready(self) -> list[str]:
        """What keeps the daemon from being ready (model, streams), in words; empty: ready."""
        with self._lock:
            streams = copy.deepcopy(self._streams)
            loaded = self._backend is not None
        return not_ready(streams, loaded and self.beating(), self._ready_share)

    def healthy(self) -> bool:
        """The detector is alive, no stream's alert journal is stuck and every watched
        part is alive."""
        return not self.problems()

    def row(self, stream: str) -> dict[str, Any]:
        """One stream's row (a copy), without copying every other stream's."""
        with self._lock:
            return copy.deepcopy(self._streams.get(stream, {}))

    def snapshot(self) -> dict[str, Any]:
        problems = self.problems()
        now = time.time()
        with self._lock:
            streams = copy.deepcopy(self._streams)
            backend, epoch = self._backend, self._epoch
        mark_streams(streams)
        waiting = not_ready(streams, backend is not None and self.beating(), self._ready_share)
        for row in streams.values():
            row["in_state_s"] = None if row["since"] is None else round(now - row["since"], 3)
        return {
            "uptime_s": round(now - self._started, 3),
            "epoch": epoch,
            "backend": backend,
            "healthy": not problems,
            "problems": problems,
            "dead": self.dead(),
            "ready": not waiting,
            "not_ready": waiting,
            "streams": streams,
        }

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2.0)
