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

Anyone who can reach the port can send anything, so a request is checked
before it is used: one frame of at most ``MAX_REQUEST_BYTES``, strict JSON types,
stream ids as in the pipeline file, at most ``MAX_AFTER_STREAMS`` streams in
``after``, seqs within SQLite's int64, ``limit`` 1..``MAX_LIMIT``. Anything
else is answered with ``{"error": ...}`` naming what is wrong; a failure while
answering is logged and answered too, so the thread only ends when closed.
``alive()`` says whether it still serves (part of ``/healthz``).

What bounds the memory a request takes: libzmq drops a connection that sends a
frame over ``MAX_MESSAGE_BYTES`` (``MAXMSGSIZE`` is per frame), and queues at
most ``REQUEST_HWM`` complete messages per connection. It does not bound how
many frames one message has, and holds a message's frames until its last one
arrived, so one oversized multipart message per connection is libzmq's to hold;
this thread then reads it frame by frame, keeps only the first frame and lets
each other go as it comes (never a list of them), and answers with an error.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import zmq
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from streamd.config import STREAM_ID_PATTERN
from streamd.publish.curve import ServerKeys, ZapHandler, serve
from streamd.publish.journal import connect, last_seqs, read_after

log = logging.getLogger(__name__)

MAX_LIMIT = 5000
MAX_REQUEST_BYTES = 64 * 1024  # 512 streams with the longest ids and seqs fit
MAX_MESSAGE_BYTES = 1024 * 1024  # per frame: past it libzmq drops the sender, no reply
# Complete requests queued per connection: a REQ client has one in flight; a DEALER
# pipelining hundreds would otherwise be buffered (libzmq's default is 1000).
REQUEST_HWM = 8
# Each named stream is one OR term in read_after's query; SQLite refuses expression
# trees deeper than 1000, and no daemon has this many streams.
MAX_AFTER_STREAMS = 512
INT64_MAX = 2**63 - 1  # SQLite's INTEGER

StreamId = Annotated[str, StringConstraints(pattern=STREAM_ID_PATTERN)]
Seq = Annotated[int, Field(ge=-1, le=INT64_MAX)]


class _Request(BaseModel):
    # strict: 1.0, "1" or true are not seqs; a typo in a key is an error, not a default.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ReplayRequest(_Request):
    op: Literal["replay"]
    after: dict[StreamId, Seq] = Field(default_factory=dict, max_length=MAX_AFTER_STREAMS)
    stream: StreamId | None = None
    limit: int = Field(500, ge=1, le=MAX_LIMIT)


class StateRequest(_Request):
    op: Literal["state"]


_REQUEST: TypeAdapter[ReplayRequest | StateRequest] = TypeAdapter(
    Annotated[ReplayRequest | StateRequest, Field(discriminator="op")]
)


class BadRequest(ValueError):
    """A request the server refuses; the message goes back to the client."""


def parse_body(body: bytes) -> ReplayRequest | StateRequest:
    """The request in one frame's ``body``, or :class:`BadRequest` saying what is wrong."""
    if len(body) > MAX_REQUEST_BYTES:
        raise BadRequest(_too_long(len(body)))
    try:
        # pydantic's JSON parser bounds nesting depth itself (no RecursionError).
        return _REQUEST.validate_json(body)
    except ValidationError as e:
        raise BadRequest(_describe(e)) from None


def _describe(e: ValidationError) -> str:
    # The locations and messages only: never echo the (possibly huge) input back.
    parts = []
    for err in e.errors(include_url=False, include_input=False):
        loc = err["loc"][1:] if err["loc"][:1] in (("replay",), ("state",)) else err["loc"]
        where = ".".join(str(p) for p in loc)  # after the union's tag: after.<stream>
        parts.append(f"{where}: {err['msg']}" if where else str(err["msg"]))
    return "; ".join(parts[:5])


def _too_long(size: int) -> str:
    return f"request of {size} bytes; the limit is {MAX_REQUEST_BYTES} bytes"


def receive_body(sock: zmq.Socket[Any]) -> bytes:
    """The one frame of the request waiting on ``sock``; :class:`BadRequest` if it has more
    frames or is too long. Frames past the first are dropped as they are read, and the
    first is copied only when it is short enough, so no request is ever held whole here."""
    first = sock.recv(copy=False)
    frames = 1
    while sock.getsockopt(zmq.RCVMORE):
        sock.recv(copy=False)  # released at once: only the count is kept
        frames += 1
    if frames != 1:
        raise BadRequest(f"a request is one frame of JSON, got {frames} frames")
    if len(first) > MAX_REQUEST_BYTES:
        raise BadRequest(_too_long(len(first)))
    return first.bytes


def _error(message: str) -> list[bytes]:
    return [json.dumps({"error": message}).encode()]


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
        # CURVE: a client without an authorized key never gets a reply, nor does any
        # client should this handler be gone (watched in health).
        self.zap: ZapHandler | None = None if curve is None else serve(self._sock, curve)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self._sock.setsockopt(zmq.RCVHWM, REQUEST_HWM)
        self._sock.bind(endpoint)  # in the caller's thread: a taken port fails start-up
        self._journal = journal
        self._epoch = epoch
        self._state = state
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="replay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        """Whether the thread is serving requests (it ends only when closed or if it
        cannot open the journal)."""
        return self._thread.is_alive() and not self._stop.is_set()

    def _serve(self) -> None:
        try:
            db = connect(self._journal, readonly=True)
        except sqlite3.Error:
            log.exception("replay: cannot open %s; replay and state are down", self._journal)
            return  # alive() is false from now on: /healthz says so
        try:
            while not self._stop.is_set():
                if self._sock.poll(200):
                    self._sock.send_multipart(self._answer(db))
        finally:
            db.close()
            self._sock.close()

    def _answer(self, db: sqlite3.Connection) -> list[bytes]:
        try:
            return self._handle(db, parse_body(receive_body(self._sock)))
        except BadRequest as e:
            return _error(f"bad request: {e}")
        except Exception:
            # A bug or a journal fault: this request fails, the service does not.
            log.exception("replay: could not answer a request")
            return _error("internal error answering the request; see the daemon's log")

    def _handle(self, db: sqlite3.Connection, req: ReplayRequest | StateRequest) -> list[bytes]:
        if isinstance(req, StateRequest):
            state = {"epoch": self._epoch, "streams": self._state(),
                     "alert_seq": last_seqs(db)}  # fmt: skip
            return [json.dumps(state).encode()]
        entries, more = read_after(db, req.after, req.stream, req.limit)
        snaps = [e.snapshot for e in entries if e.snapshot is not None]
        index, refs = 0, []
        for e in entries:
            refs.append(None if e.snapshot is None else index)
            index += e.snapshot is not None
        header = {"alerts": [e.payload for e in entries], "snapshots": refs, "more": more,
                  "epoch": self._epoch}  # fmt: skip
        return [json.dumps(header).encode(), *snaps]

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        else:
            self._sock.close()
        self._ctx.term()
