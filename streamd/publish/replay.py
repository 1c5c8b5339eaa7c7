"""Request socket (ZeroMQ REP on ``journal.endpoint``): alert replay and current state.

Requests are one JSON frame:

- ``{"op": "replay", "after": {"<stream>": <seq>, ...}, "stream": null, "limit": 500}``
  → ``[header JSON, snapshot, ...]``; the header has ``alerts`` (payloads, in the
  order they were published, seq greater than ``after`` per stream, all of a
  stream not named), ``snapshots`` (per alert, the index of its JPEG among the
  following frames, or null) and ``more`` (ask again after the last one).
- ``{"op": "state"}`` → active tracks, zone occupancy and line counts per
  stream, plus ``alert_seq`` (last alert seq per stream) and ``epoch``.

It runs on its own thread of the supervisor with its own read-only SQLite
connection, so a large replay never stalls a camera or the detector.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from streamd.publish.curve import ServerKeys, serve
from streamd.publish.journal import connect, last_seqs, read_after

log = logging.getLogger(__name__)

MAX_LIMIT = 5000


class ReplayServer:
    def __init__(
        self,
        endpoint: str,
        journal: Path,
        epoch: int,
        state: Callable[[], dict[str, Any]],
        curve: ServerKeys | None = None,
    ) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:  # a client without an authorized key never gets a reply
            serve(self._sock, curve)
        self._sock.bind(endpoint)  # in the caller's thread: a taken port fails start-up
        self._journal = journal
        self._epoch = epoch
        self._state = state
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="replay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        db = connect(self._journal, readonly=True)
        try:
            while not self._stop.is_set():
                if not self._sock.poll(200):
                    continue
                request = self._sock.recv()
                try:
                    reply = self._handle(db, json.loads(request))
                except (ValueError, TypeError, KeyError) as e:
                    reply = [json.dumps({"error": f"bad request: {e}"}).encode()]
                self._sock.send_multipart(reply)
        finally:
            db.close()
            self._sock.close()

    def _handle(self, db: Any, req: dict[str, Any]) -> list[bytes]:
        op = req.get("op")
        if op == "replay":
            after = {str(k): int(v) for k, v in (req.get("after") or {}).items()}
            limit = max(1, min(MAX_LIMIT, int(req.get("limit", 500))))
            entries, more = read_after(db, after, req.get("stream"), limit)
            snaps = [e.snapshot for e in entries if e.snapshot is not None]
            index, refs = 0, []
            for e in entries:
                refs.append(None if e.snapshot is None else index)
                index += e.snapshot is not None
            header = {"alerts": [e.payload for e in entries], "snapshots": refs, "more": more,
                      "epoch": self._epoch}  # fmt: skip
            return [json.dumps(header).encode(), *snaps]
        if op == "state":
            state = {"epoch": self._epoch, "streams": self._state(),
                     "alert_seq": last_seqs(db)}  # fmt: skip
            return [json.dumps(state).encode()]
        return [json.dumps({"error": f"unknown op {op!r} (replay, state)"}).encode()]

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        else:
            self._sock.close()
        self._ctx.term()
