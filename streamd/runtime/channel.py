"""Internal channels: small typed messages between the daemon's processes, never pixels.

ZeroMQ rather than a multiprocessing.Queue because a worker SIGKILLed in the
middle of a put cannot wedge a ZeroMQ socket shared with the other workers
(every worker owns its own socket). All endpoints are ipc sockets in the
supervisor's private (0700) run directory; only our own processes connect.

- source workers → detector process: ``FrameRef`` (:class:`Outbox` → :class:`Inbox`)
- detector process → each stream's process: ``Results`` (its ``Detected`` and
  ``Dropped``, gathered per loop turn; :class:`ResultRouter`)
- supervisor → a stream's process: ``WatchUpdate``, ``RegionsUpdate`` (zones and lines
  changed at runtime)
- supervisor → detector process (its inbox): ``RouteUpdate`` (a stream added, changed or
  removed at runtime)
- streams and the detector → supervisor: ``StatusUpdate``, ``StreamRow``, ``InferenceBeat``
"""

from __future__ import annotations

import logging
import pickle

import zmq

from streamd import metrics
from streamd.types import (
    DecodeReport,
    Detected,
    Dropped,
    FrameRef,
    InferenceBeat,
    RegionsUpdate,
    Results,
    RouteAck,
    RouteUpdate,
    StatusUpdate,
    StreamRow,
    WatchUpdate,
)

log = logging.getLogger(__name__)

Message = (
    FrameRef
    | StatusUpdate
    | WatchUpdate
    | RegionsUpdate
    | RouteUpdate
    | RouteAck
    | Detected
    | Dropped
    | Results
    | StreamRow
    | InferenceBeat
    | DecodeReport
)
_TYPES = (FrameRef, StatusUpdate, WatchUpdate, RegionsUpdate, RouteUpdate, RouteAck, Detected,
          Dropped, Results, StreamRow, InferenceBeat, DecodeReport)  # fmt: skip


def _dumps(msg: Message) -> bytes:
    return pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)


class Outbox:
    """A sending end (connects); never blocks the caller for long."""

    def __init__(self, endpoint: str, linger_ms: int = 1000, hwm: int = 10_000) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.LINGER, linger_ms)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        self._sock.connect(endpoint)

    def send(self, msg: Message) -> bool:
        """Queue ``msg``; False if the channel is full (the caller counts the drop)."""
        try:
            self._sock.send(_dumps(msg), zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def close(self) -> None:
        self._sock.close()
        self._ctx.term()


class Inbox:
    """A receiving end (binds)."""

    def __init__(self, endpoint: str, hwm: int = 100_000) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PULL)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, hwm)
        self._sock.bind(endpoint)

    def poll(self, timeout_s: float) -> bool:
        return bool(self._sock.poll(max(0, int(timeout_s * 1000))))

    def drain(self, limit: int = 10_000) -> list[Message]:
        out: list[Message] = []
        while len(out) < limit:
            try:
                data = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            msg = pickle.loads(data)  # only our own processes reach this 0700 directory
            if isinstance(msg, _TYPES):
                out.append(msg)
        return out

    def close(self) -> None:
        self._sock.close()
        self._ctx.term()


class ResultRouter:
    """The detector process's sockets to every stream's process, one PUSH each.

    A stream whose process is restarting is not waited for: its results queue up
    to the HWM and are then dropped (counted); the new process ignores results
    for frames of its predecessor's rings.
    """

    def __init__(self, endpoints: dict[str, str], hwm: int = 10_000) -> None:
        self._ctx = zmq.Context()
        self._hwm = hwm
        self._socks: dict[str, tuple[str, zmq.Socket[bytes]]] = {}
        for stream, endpoint in endpoints.items():
            self.connect(stream, endpoint)

    def connect(self, stream: str, endpoint: str) -> None:
        """Route ``stream``'s results to ``endpoint`` (a stream added at runtime)."""
        current = self._socks.get(stream)
        if current is not None and current[0] == endpoint:
            return
        self.disconnect(stream)
        sock = self._ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self._hwm)
        sock.connect(endpoint)
        self._socks[stream] = (endpoint, sock)

    def disconnect(self, stream: str) -> None:
        """The stream was removed: its results have nowhere to go."""
        current = self._socks.pop(stream, None)
        if current is not None:
            current[1].close()

    def send(self, stream: str, msg: Detected | Dropped | DecodeReport | Results) -> None:
        current = self._socks.get(stream)
        if current is None:  # removed while its frames were in a batch
            return
        try:
            current[1].send(_dumps(msg), zmq.NOBLOCK)
        except zmq.Again:
            metrics.RESULTS_DROPPED.labels(stream).inc()

    def close(self) -> None:
        for _, sock in self._socks.values():
            sock.close()
        self._ctx.term()
