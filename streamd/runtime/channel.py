"""Internal descriptor channel: workers PUSH small typed messages to the inference process.

ZeroMQ rather than a multiprocessing.Queue because a worker SIGKILLed in the
middle of a put cannot wedge a ZeroMQ socket shared with the other workers
(every worker owns its own socket).
"""

from __future__ import annotations

import pickle

import zmq

from streamd.types import FrameRef, StatusUpdate, WatchUpdate

Message = FrameRef | StatusUpdate | WatchUpdate


class Outbox:
    """A worker's sending end; never blocks the caller for long."""

    def __init__(self, endpoint: str, linger_ms: int = 1000) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.LINGER, linger_ms)
        self._sock.setsockopt(zmq.SNDHWM, 10_000)
        self._sock.connect(endpoint)

    def send(self, msg: Message) -> bool:
        """Queue ``msg``; False if the channel is full (the caller counts the drop)."""
        try:
            self._sock.send(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL), zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def close(self) -> None:
        self._sock.close()
        self._ctx.term()


class Inbox:
    """The inference process's receiving end (bound)."""

    def __init__(self, endpoint: str) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PULL)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
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
            # Only our own workers connect to this private ipc socket (0700 dir).
            msg = pickle.loads(data)
            if isinstance(msg, FrameRef | StatusUpdate | WatchUpdate):
                out.append(msg)
        return out

    def close(self) -> None:
        self._sock.close()
        self._ctx.term()
