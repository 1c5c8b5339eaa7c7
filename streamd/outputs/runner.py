"""The outputs process: journal and bus in, every configured output fed, cursors saved.

One loop on one thread: it reads the journal (read-only, WAL: it never holds
up a camera's commit) for each output's next alerts every ``outputs.poll_ms``,
as many as the output has room for, and takes the live events it subscribed to
off the public bus (with the status board's CURVE keys when the bus has them),
handing each to the outputs that want it. Each output delivers on its own
threads; nothing here waits for a network.

Its own process rather than threads of the supervisor: broker clients (paho's
network thread, nats-py's event loop, webhook retries) and their JSON and TLS
work then share no interpreter lock with the supervisor's bus, control plane
and HTTP, a client library that hangs or leaks cannot take the supervisor with
it, and the supervisor restarts it (its cursors make that lose nothing).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from streamd import metrics
from streamd.config import PipelineConfig
from streamd.outputs.base import LiveEvent, Output
from streamd.outputs.cursor import CursorStore, JournalReader
from streamd.publish.curve import ClientKeys, connect_with
from streamd.publish.journal import connect
from streamd.publish.wire import decode
from streamd.runtime.exits import WorkerExit
from streamd.runtime.process import StopFlag, run_logged, setup_worker

log = logging.getLogger(__name__)

SAVE_EVERY_S = 0.5
GAUGES_EVERY_S = 1.0
CLOSE_S = 2.0  # each output's share of the stop (the supervisor waits 3 s in all)
EVENTS_PER_TURN = 1000


@dataclass(frozen=True, slots=True)
class OutputsSpec:
    config: PipelineConfig
    curve: ClientKeys | None  # the bus's CURVE client keys (the status board's), if any
    log_level: str = "INFO"


def outputs_main(spec: OutputsSpec) -> None:
    """Process entry point."""
    stop = setup_worker("outputs", spec.log_level, spec.config.log.format)
    run_logged(lambda: _serve(spec, stop))


@dataclass
class _Fed:
    output: Output
    reader: JournalReader
    store: CursorStore


def _serve(spec: OutputsSpec, stop: StopFlag) -> int:
    from streamd.outputs.factory import build_outputs  # client libraries: this process only

    cfg = spec.config
    journal = Path(str(cfg.journal.path))
    db = connect(journal, readonly=True)
    fed: list[_Fed] = []
    try:
        for name, make in build_outputs(cfg.outputs):
            store = CursorStore(journal, name)
            cursor = store.load(db)
            try:
                output = make(cursor)
                output.start()
            except Exception:  # a TLS file that cannot be read...: the others still run
                log.exception("output %s cannot start; it stays off until the next start", name)
                metrics.OUTPUT_CONNECTED.labels(name).set(0.0)
                continue
            fed.append(_Fed(output, JournalReader(cursor), store))
        log.info("outputs: %s", ", ".join(f.output.name for f in fed) or "none could start")
        _loop(spec, db, fed, stop)
    finally:
        for f in fed:
            try:
                f.output.close(CLOSE_S / max(1, len(fed)))
            except Exception:
                log.exception("output %s did not close cleanly", f.output.name)
            _save(f)
        db.close()
    return WorkerExit.OK


def _subscribe(
    spec: OutputsSpec, fed: list[_Fed]
) -> tuple[zmq.Context[zmq.Socket[bytes]], zmq.Socket[bytes]] | None:
    kinds = set().union(*(f.output.kinds for f in fed))
    if not kinds:
        return None
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 10_000)
    connect_with(sock, spec.curve)
    for kind in sorted(kinds):
        sock.setsockopt(
            zmq.SUBSCRIBE, kind.encode() if kind == "heartbeat" else f"{kind}.".encode()
        )
    sock.connect(spec.config.publish.endpoint)
    return ctx, sock


def _loop(spec: OutputsSpec, db: sqlite3.Connection, fed: list[_Fed], stop: StopFlag) -> None:
    poll_s = spec.config.outputs.poll_ms / 1000.0
    bus = _subscribe(spec, fed)
    next_read = next_save = next_gauges = 0.0
    try:
        while not stop.is_set():
            now = time.monotonic()
            wait = max(0.0, min(next_read, next_save) - now)
            if bus is not None:
                if bus[1].poll(int(wait * 1000)):
                    _dispatch(bus[1], fed)
            else:
                stop.wait(wait)
            now = time.monotonic()
            if now >= next_read:
                next_read = now + poll_s
                for f in fed:
                    _feed(db, f)
            if now >= next_save:
                next_save = now + SAVE_EVERY_S
                for f in fed:
                    _save(f, only_if_moved=True)
            if now >= next_gauges:
                next_gauges = now + GAUGES_EVERY_S
                wall = time.time()
                for f in fed:
                    f.output.update_gauges(wall)
    finally:
        if bus is not None:
            bus[1].close()
            bus[0].term()


def _dispatch(sock: zmq.Socket[bytes], fed: list[_Fed]) -> None:
    for _ in range(EVENTS_PER_TURN):
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        # Decoded only if some output takes it now (det events are sampled: most are not).
        kind, _, stream = frames[0].decode("utf-8", "replace").partition(".")
        takers = [f.output for f in fed if f.output.wants(kind, stream or None)]
        if not takers:
            continue
        try:
            ev = decode(frames)
        except (ValueError, UnicodeDecodeError) as e:
            log.warning("undecodable event on the bus ignored: %s", e)
            continue
        live = LiveEvent(ev.type, ev.stream, ev.payload)
        for output in takers:
            output.offer_event(live)


def _feed(db: sqlite3.Connection, f: _Fed) -> None:
    try:
        alerts = f.reader.read(db, f.output.ledger.room())
    except sqlite3.Error as e:  # busy past the timeout, a disk error: next poll
        log.error("outputs: journal read failed: %s", e)
        return
    for alert in alerts:
        taken = f.output.offer_alert(alert)
        assert taken, "read no more than the output had room for"


def _save(f: _Fed, only_if_moved: bool = False) -> None:
    cursor, moved = f.output.ledger.cursor()
    if only_if_moved and not moved:
        return
    try:
        f.store.save(cursor)
    except OSError as e:  # disk full: the next save tries again; a restart re-sends more
        log.error("output cursor %s not saved: %s", f.store.path, e)
