"""The publisher: envelopes, per-(stream, kind) sequence numbers, epoch.

In the daemon every process that publishes (each camera's process, the
supervisor) pushes its events into the supervisor's bus (``bus=True``: a
PUSH socket), which forwards them to the one public PUB socket
(:mod:`streamd.publish.bus`). ``bus=False`` binds a PUB socket itself.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

import zmq

from streamd import metrics
from streamd.publish.wire import SCHEMA_VERSION, encode, topic_for

log = logging.getLogger(__name__)


# What a subscriber sends a PUB is its subscriptions (a topic prefix each): far more than
# any topic ("alert." and a 64-character stream id). libzmq keeps each in a trie, so one
# subscription of 4 MiB took the supervisor from 214 to 674 MB, and stayed; a peer
# sending more than this is disconnected instead.
MAX_SUBSCRIPTION_BYTES = 1024


def configure_pub(sock: zmq.Socket[Any], hwm: int, sndbuf_kib: int) -> None:
    """The public PUB socket's limits: a slow subscriber loses messages, never the daemon;
    a hostile one cannot grow its memory with a huge subscription."""
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)
    if sndbuf_kib > 0:
        # Bounds what the kernel holds per subscriber on top of the HWM: without it
        # a stalled subscriber gets megabytes of stale events instead of a gap.
        sock.setsockopt(zmq.SNDBUF, sndbuf_kib * 1024)
    sock.setsockopt(zmq.LINGER, 200)


class Publisher:
    """Binds a PUB socket; ``publish`` never blocks (a slow subscriber loses messages at HWM).

    ``seq`` is consecutive per (stream, topic kind) within one ``epoch``; the
    epoch is the publisher's start time in milliseconds, so a restart is
    visible as a new, larger epoch rather than as a gap.
    """

    def __init__(
        self,
        endpoint: str,
        hwm: int,
        epoch: int | None = None,
        sndbuf_kib: int = 0,
        *,
        bus: bool = False,
    ) -> None:
        self.epoch = epoch if epoch is not None else int(time.time() * 1000)
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUSH if bus else zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        if bus:
            # Flush what is queued when the process stops (the last frames' events).
            self._sock.setsockopt(zmq.LINGER, 1000)
            self._sock.connect(endpoint)
        else:
            configure_pub(self._sock, hwm, sndbuf_kib)
            self._sock.bind(endpoint)
        self._seq: defaultdict[tuple[str, str | None], int] = defaultdict(int)

    def publish(
        self,
        kind: str,
        stream: str | None,
        ts: float,
        fields: dict[str, Any],
        attachment: bytes | None = None,
    ) -> int:
        """Send one event; return its seq."""
        payload = self.envelope(kind, stream, ts, fields)
        self.send(payload, attachment)
        return int(payload["seq"])

    def continue_from(self, kind: str, stream: str, next_seq: int) -> None:
        """Number (kind, stream) on from ``next_seq`` (alerts continue across restarts)."""
        key = (kind, stream)
        self._seq[key] = max(self._seq[key], next_seq)

    def envelope(
        self, kind: str, stream: str | None, ts: float, fields: dict[str, Any]
    ) -> dict[str, Any]:
        """The full payload with the next seq, not sent yet (journaled alerts go to disk first)."""
        key = (kind, stream)
        seq = self._seq[key]
        self._seq[key] = seq + 1
        return {
            "v": SCHEMA_VERSION,
            "type": kind,
            "stream": stream,
            "seq": seq,
            "epoch": self.epoch,
            "ts": ts,
            **fields,
        }

    def send(self, payload: dict[str, Any], attachment: bytes | None = None) -> None:
        kind, stream = str(payload["type"]), payload["stream"]
        parts = encode(topic_for(kind, stream), payload, attachment)
        try:
            # Never blocks: a bus that cannot keep up costs a seq gap, not pipeline time.
            self._sock.send_multipart(parts, zmq.NOBLOCK, copy=attachment is not None)
        except zmq.Again:
            metrics.BUS_DROPPED.labels(kind).inc()
            return
        metrics.PUBLISHED.labels(kind).inc()

    def close(self) -> None:
        self._sock.close()
        self._ctx.term()
