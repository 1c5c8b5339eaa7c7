"""Composition root: the supervisor spawns the detector process and one process per camera.

Start order (:meth:`Daemon._start`): the HTTP port, the public event endpoint
(the bus), the journal and its request socket are bound first, then the
detector process loads the model, so a taken port, an unusable journal or a
model that cannot serve the configuration stops start-up before any camera is
opened. A camera's process that dies is restarted (rate-limited) with its
shared memory reclaimed; the others never notice. Shutdown: SIGTERM every
worker, wait, SIGKILL stragglers, then unlink every segment of this run.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

import zmq

from streamd.analysis import AnalysisSpec
from streamd.clips import ClipIndex
from streamd.config import PipelineConfig
from streamd.control import ControlServer, StatusBoard
from streamd.control.exposition import MetricsExporter
from streamd.control.health import service_health
from streamd.control.http import Limits
from streamd.control.plane import ControlPlane
from streamd.control.routes import Routes
from streamd.control.streams import Body, StreamChanges, StreamsFile
from streamd.control.summary import RunSummary
from streamd.frames.ring import new_run_id, segment_prefix, sweep_segments
from streamd.inference import InferenceSpec, inference_main
from streamd.outputs import OutputsSpec
from streamd.outputs.worker import OutputsWorker
from streamd.publish.bus import BusProxy
from streamd.publish.curve import ClientKeys, ServerKeys, load_server_keys
from streamd.publish.journal import AlertJournal
from streamd.publish.replay import ReplayServer
from streamd.reconfigure import RETRY_START_S, TERM_GRACE_S, Reconfigure, Source
from streamd.runtime.channel import Outbox
from streamd.runtime.exits import DaemonExit, WorkerExit
from streamd.runtime.process import StopFlag
from streamd.runtime.rundir import make_run_dir, stale_run_dirs
from streamd.runtime.systemd import ServiceNotifier
from streamd.sources.worker import source_main, source_spec
from streamd.types import SourceState, StatusUpdate, WatchUpdate
from streamd.view.overlay import LiveView

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 300.0  # first model load may compile/fuse for a while


RESTART_DELAYS_S = (0.5, 1.0, 2.0)  # then 2.0: a restart always comes within 5 s
HEARTBEAT_WAIT_S = 3.0


class StartupError(Exception):
    """The daemon cannot start (a port in use, ...); nothing was started."""


class Daemon(Reconfigure):
    """Runs one pipeline until stopped (signal), ``duration_s`` passes, or the detector dies."""

    def __init__(
        self, cfg: PipelineConfig, log_level: str = "INFO", pipeline: Path | None = None
    ) -> None:
        """``pipeline``: the file ``cfg`` came from, for runtime stream changes (persisted
        next to it, ConfigError if that overlay is invalid) and SIGHUP reloads."""
        self._file = None if pipeline is None else StreamsFile(pipeline)
        bodies: dict[str, Body] = {}  # each stream as written: what the overlay saves
        if self._file is not None:
            cfg, bodies = self._file.load(cfg)
        self.cfg = cfg
        base_dir = Path.cwd() if pipeline is None else pipeline.parent
        self.changes = StreamChanges(cfg.streams, base_dir, self._file, bodies, cfg.shard)
        self._next_index = len(cfg.streams)  # a stream added at runtime: a fresh ring index
        self._next_generation: dict[str, int] = {}  # a removed id added again starts here
        # SIGHUP: a plain flag, set in signal context (an Event's lock could deadlock there
        # if the signal lands while the loop holds it).
        self._reload_asked = False
        self._routes: Routes | None = None  # to the detector's inbox: RouteUpdate
        self.log_level = log_level
        self.ctx = mp.get_context("spawn")
        self.run_id = new_run_id()
        self.epoch = int(time.time() * 1000)  # every publisher of this run, until it restarts
        self.stop = StopFlag()
        self._tmp = ""
        self._metrics_dir = ""
        self.inference: SpawnProcess | None = None
        self.sources: dict[str, Source] = {}
        self._names: dict[int, str] = {}
        self._outbox: Outbox | None = None  # to the control plane: status said on behalf
        self._curve, board_keys = _curve_keys(cfg)  # KeyFileError: refused, nothing started
        self._outputs: OutputsWorker | None = None  # outputs.*: its process, subscribed as
        self._outputs_keys = board_keys  # the board is (its keys, when the bus has CURVE)
        self.board = StatusBoard(
            cfg.publish.endpoint,
            [s.id for s in cfg.streams],
            cfg.publish.heartbeat_s,
            board_keys,
            ready_share=cfg.supervisor.ready_streams,
        )
        # Under systemd (Type=notify): READY=1, STATUS=, WATCHDOG=1 from the loop below.
        self._systemd = ServiceNotifier(lambda: service_health(self.board))
        self._http: ControlServer | None = None
        self._bus: BusProxy | None = None
        self._journal: AlertJournal | None = None
        self._replay: ReplayServer | None = None
        self._plane: ControlPlane | None = None
        self._summary: RunSummary | None = None  # log.summary_s lines, totals at shutdown
        self.view: LiveView | None = None
        self._watching: dict[str, float] = {}  # stream → view frames/s the viewers want
        self._watch_lock = threading.Lock()
        self._watch_outboxes: dict[str, Outbox] = {}  # HTTP threads' sockets, under the lock

    def _endpoint(self, name: str) -> str:
        return f"ipc://{self._tmp}/{name}"

    def run(self, duration_s: float | None = None) -> int:
        self.stop.install(signal.SIGINT, signal.SIGTERM)
        signal.signal(signal.SIGHUP, self._on_sighup)
        _clear_stale_runs()
        self._tmp = str(make_run_dir(self.run_id))  # 0700: private ipc sockets
        # Workers inherit this and write their metrics there (prometheus multiprocess mode).
        self._metrics_dir = os.path.join(self._tmp, "metrics")
        os.mkdir(self._metrics_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
        try:
            code = self._start()
            if code is not None:
                return code
            log.info(
                "running %d stream(s); publishing on %s",
                len(self.sources),
                self.cfg.publish.endpoint,
            )
            assert self._plane is not None
            self._summary = RunSummary(self._metrics_dir, self._plane.rows,
                                       self.cfg.log.summary_s)  # fmt: skip
            self._summary.start()
            return self._supervise(duration_s)
        finally:
            self._shutdown()

    def _start(self) -> int | None:
        """Bring everything up in order; an exit code if start-up is refused or stopped."""
        try:
            self._start_http()
            self._start_bus()
            self._start_journal()
        except StartupError as e:
            log.error("%s", e)
            return DaemonExit.REFUSED
        code = self._start_inference()
        if code is not None:
            return code
        if self.cfg.outputs.enabled:  # MQTT, NATS, webhooks: fed from the journal and the bus
            outputs = OutputsSpec(self.cfg, self._outputs_keys, self.log_level)
            self._outputs = OutputsWorker(outputs, self._spawn, self._metrics_dir)
            self._outputs.start()
        self._outbox = Outbox(self._endpoint("control"))
        assert self._plane is not None
        self._routes = Routes(self._endpoint("inbox"), self._plane.take_route_acks)
        # Subscribed before any source speaks, so the board misses no transition.
        if not self.board.wait_heartbeat(HEARTBEAT_WAIT_S):
            log.warning(
                "no heartbeat on %s yet; /status may miss early transitions",
                self.cfg.publish.endpoint,
            )
        for index, stream in enumerate(self.cfg.streams):
            spec = source_spec(stream, index, self.run_id, self._endpoint("inbox"),
                               self._analysis_spec(index, self.epoch), self.log_level,
                               self._packets(index))  # fmt: skip
            self.sources[stream.id] = Source(spec)
            self._start_source(self.sources[stream.id])
        return None

    def _packets(self, index: int) -> str | None:
        """decode_in: detector: the stream's packet socket, bound by its decode thread in the
        detector process (streams the detector was started with; one added at runtime
        decodes in its own process)."""
        stream = self.cfg.streams[index]
        return self._endpoint(f"packets-{index}") if stream.decode_in == "detector" else None

    def _analysis_spec(self, index: int, epoch: int) -> AnalysisSpec:
        return AnalysisSpec(
            pipeline=self.cfg,
            results=self._endpoint(f"results-{index}"),
            bus=self._endpoint("bus"),
            control=self._endpoint("control"),
            view=self._endpoint("view") if self.view is not None else None,
            names=self._names,
            epoch=epoch,
        )

    def _start_http(self) -> None:
        listen = self.cfg.http.listen
        if listen is None:
            return
        try:
            exporter = MetricsExporter(self.board, self._metrics_dir)
            self.view = LiveView(self.cfg, self._endpoint("view"), self._watch, self._hud)
            exporter.view = self.view
            h = self.cfg.http
            limits = Limits(h.max_connections, h.max_viewers, h.idle_timeout_s)
            clips = ClipIndex(self.changes.list_streams, self.cfg.journal.path)
            self._http = ControlServer(listen, self.board, exporter, self.view, h.token,
                                       self.changes, limits, clips)  # fmt: skip
        except OSError as e:
            raise StartupError(f"http.listen {listen}: {e.strerror or e}") from None
        self.view.start()
        self._http.start()
        log.info("live view on http://%s/ (status: /status, metrics: /metrics)", listen)

    def _start_bus(self) -> None:
        p = self.cfg.publish
        _refuse_taken_ipc("publish.endpoint", p.endpoint)
        try:
            self._bus = BusProxy(
                self._endpoint("bus"), p.endpoint, p.hwm, p.sndbuf_kib, self._curve
            )
        except zmq.ZMQError as e:
            raise StartupError(f"publish.endpoint {p.endpoint}: {e}") from None
        self._bus.start()
        if self._bus.zap is not None:
            self.board.watch("publish ZAP", self._bus.zap.is_alive)

    def _start_journal(self) -> None:
        j = self.cfg.journal
        path = Path(str(j.path))
        try:
            self._journal = AlertJournal(path, j.synchronous, j.max_age_days, j.max_mb)
        except (OSError, sqlite3.Error) as e:
            raise StartupError(f"journal.path {path}: {e}") from None
        _refuse_taken_ipc("journal.endpoint", j.endpoint)
        self._plane = ControlPlane(self.cfg, self._endpoint("control"), self._endpoint("bus"),
                                   self.epoch, self._journal)  # fmt: skip
        try:
            self._replay = ReplayServer(
                j.endpoint, path, self.epoch, self._plane.state, self._curve
            )
        except zmq.ZMQError as e:
            raise StartupError(f"journal.endpoint {j.endpoint}: {e}") from None
        self._plane.start()
        self._replay.start()
        self.board.watch("replay", self._replay.alive)
        if self._replay.zap is not None:
            self.board.watch("journal ZAP", self._replay.zap.is_alive)

    def _watch(self, stream: str, max_fps: float) -> None:
        """Called from HTTP threads as viewers come and go."""
        with self._watch_lock:
            self._watching[stream] = max_fps
            outbox = self._watch_outboxes.get(stream)
            if outbox is not None:
                outbox.send(WatchUpdate(stream, max_fps))

    def _hud(self, stream: str) -> dict[str, Any]:
        return self.board.row(stream)

    def _start_source(self, source: Source) -> None:
        spec = source.spec
        if spec.analysis.generation != source.generation:
            spec = replace(spec, analysis=replace(spec.analysis, generation=source.generation))
        if source.restarts:
            # A restarted camera process is a new publisher: a new epoch, not a gap; its
            # alerts number on from the last one its predecessor published.
            assert self._plane is not None
            # Its tracker starts afresh: it ends the tracks the dead one last reported.
            ended = tuple(self._plane.take_active_tracks(spec.stream))
            analysis = replace(spec.analysis, epoch=int(time.time() * 1000),
                               alert_seq_from=self._plane.alert_seq(spec.stream) + 1,
                               predecessor_tracks=ended)  # fmt: skip
            spec = replace(
                spec,
                analysis=analysis,
                restarts=source.restarts,
                resumed_from=SourceState.RECONNECTING,
                resumed_since=source.resumed_since,
            )
        try:
            source.process = self._spawn(source_main, f"source-{spec.stream}", spec)
        except BaseException:
            if spec.analysis.predecessor_tracks:  # for the process that comes instead
                assert self._plane is not None
                self._plane.put_back_tracks(spec.stream, list(spec.analysis.predecessor_tracks))
            raise
        source.restart_at = None
        self.board.set_worker(spec.stream, source.process.pid, source.restarts)
        with self._watch_lock:
            outbox = self._watch_outboxes.get(spec.stream)
            if outbox is None:
                outbox = self._watch_outboxes[spec.stream] = Outbox(spec.analysis.results)
            if self._watching.get(spec.stream):  # viewers who came early, or stayed
                outbox.send(WatchUpdate(spec.stream, self._watching[spec.stream]))

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> SpawnProcess:
        proc = self.ctx.Process(target=target, args=args, name=name, daemon=True)
        proc.start()
        return proc

    def _start_inference(self) -> int | None:
        names_rx, names_tx = self.ctx.Pipe(duplex=False)
        streams = enumerate(self.cfg.streams)
        packets = tuple((s.id, p) for i, s in streams if (p := self._packets(i)) is not None)
        spec = InferenceSpec(
            self.cfg,
            self._endpoint("inbox"),
            self._endpoint("control"),
            tuple(self._endpoint(f"results-{i}") for i in range(len(self.cfg.streams))),
            self.log_level,
            packets,
        )
        self.inference = self._spawn(inference_main, "inference", spec, names_tx)
        names_tx.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        with names_rx:
            while not names_rx.poll(0.2):
                if not self.inference.is_alive():
                    return self._inference_gone()
                if self.stop.is_set():
                    return DaemonExit.OK
                if time.monotonic() > deadline:
                    log.error("inference worker not ready after %.0fs", READY_TIMEOUT_S)
                    return DaemonExit.WORKER_DIED
            try:
                self._names.update(names_rx.recv())  # the model's classes, for the cameras
            except EOFError:  # it closed the pipe without an answer: it is on its way out
                self.inference.join(5.0)
                return self._inference_gone()
        return None

    def _inference_gone(self) -> int:
        """The detector process ended before it was ready: refused, or died."""
        assert self.inference is not None
        refused = self.inference.exitcode == WorkerExit.SETUP_FAILED
        log.error("inference worker %s (exit code %s)",
                  "refused the configuration" if refused else "died",
                  self.inference.exitcode)  # fmt: skip
        return DaemonExit.REFUSED if refused else DaemonExit.WORKER_DIED

    def _supervise(self, duration_s: float | None) -> int:
        assert self.inference is not None
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not self.stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                log.info("duration of %.1fs reached", duration_s)
                return DaemonExit.OK
            waitables = [self.inference.sentinel] + [
                s.process.sentinel for s in self.sources.values() if s.process is not None
            ]
            multiprocessing.connection.wait(waitables, timeout=0.2)
            self.changes.apply_pending(self._apply)  # the stream API's, one per turn
            if self._routes is not None:
                self._routes.check()
            if self._outputs is not None:
                self._outputs.check()
            if self._reload_asked:
                self._reload_asked = False
                self._reload_file()
            self._systemd.tick()
            if not self.inference.is_alive():
                log.error("inference worker died (exit code %s); stopping", self.inference.exitcode)
                return DaemonExit.WORKER_DIED
            now = time.monotonic()
            for source in self.sources.values():
                if source.process is not None and not source.process.is_alive():
                    self._source_exited(source)
                elif source.restart_at is not None and now >= source.restart_at:
                    self._restart(source)
        log.info("stop requested")
        return DaemonExit.OK

    def _restart(self, source: Source) -> None:
        try:
            self._start_source(source)
        except Exception as e:  # no process could be started (descriptors, memory): later
            log.error("stream %s: its process could not start (%s); again in %.0fs",
                      source.spec.stream, e, RETRY_START_S)  # fmt: skip
            source.restart_at = time.monotonic() + RETRY_START_S

    def _source_exited(self, source: Source) -> None:
        assert source.process is not None
        code, pid = source.process.exitcode, source.process.pid
        source.process = None
        removed = self._reclaim(source.spec.index, pid)
        stream = source.spec.stream
        self.board.set_worker(stream, None, source.restarts)
        if code == WorkerExit.OK:  # it reached ended/failed and said so itself
            log.info("source %s finished", stream)
            return
        reason = "worker_hung" if code == WorkerExit.HUNG else "worker_crashed"
        detail = _describe_exit(code)
        log.error(
            "source worker %s %s (%s); %d segment(s) reclaimed",
            stream,
            "hung" if code == WorkerExit.HUNG else "died",
            detail,
            len(removed),
        )
        now = time.monotonic()
        window = self.cfg.supervisor.restart_window_s
        source.recent = [t for t in source.recent if now - t < window]
        if len(source.recent) >= self.cfg.supervisor.max_restarts:
            self._say(
                stream,
                SourceState.FAILED,
                "restart_limit",
                f"{reason}: {detail}; {len(source.recent)} restart(s) within {window:g}s",
                source.restarts,
                generation=source.generation + 1,  # no process comes after the dead one
            )
            return
        delay = RESTART_DELAYS_S[min(len(source.recent), len(RESTART_DELAYS_S) - 1)]
        source.recent.append(now)
        source.restarts += 1
        source.generation += 1
        source.restart_at = now + delay
        # A dead worker cannot report its own state: say it on its behalf.
        # Said for the process to come (generation): the dead one's last words are stale.
        source.resumed_since = self._say(
            stream, SourceState.RECONNECTING, reason, detail, source.restarts, delay,
            generation=source.generation,
        )  # fmt: skip

    def _say(
        self,
        stream: str,
        state: SourceState,
        reason: str,
        detail: str,
        attempt: int,
        retry_in_s: float | None = None,
        *,
        generation: int,
        final: bool = False,
    ) -> float:
        """Publish a transition for a stream whose worker cannot; returns its time."""
        prev, since = self.board.state(stream)
        now = time.time()
        assert self._outbox is not None
        self._outbox.send(
            StatusUpdate(
                stream=stream,
                state=state,
                reason=reason,
                ts=now,
                prev_state=prev,
                in_prev_state_s=max(0.0, now - since),
                attempt=attempt,
                detail=detail,
                retry_in_s=retry_in_s,
                counters={"restarts": self.sources[stream].restarts},
                generation=generation,
                final=final,
            )
        )
        return now

    def _on_sighup(self, _sig: int, _frame: object) -> None:
        self._reload_asked = True

    def _shutdown(self) -> None:
        self._systemd.stopping()
        self._stop_workers()
        if self._summary is not None:  # the workers' counts are final now
            self._summary.totals({sid: s.restarts for sid, s in self.sources.items()})
        with self._watch_lock:
            for outbox in self._watch_outboxes.values():
                outbox.close()
            self._watch_outboxes.clear()
        for channel in (self._outbox, self._routes):
            if channel is not None:
                channel.close()
        for part in (self._replay, self._plane, self._bus, self._journal):
            if part is not None:
                part.close()
        removed = sweep_segments(self.run_id)
        if removed:
            log.info(
                "reclaimed %d shared-memory segment(s) %s*",
                len(removed),
                segment_prefix(self.run_id),
            )
        shutil.rmtree(self._tmp, ignore_errors=True)
        if self._http is not None:
            self._http.close()
        if self.view is not None:
            self.view.close()
        self.board.close()

    def _stop_workers(self) -> None:
        procs = [s.process for s in self.sources.values() if s.process is not None]
        if self.inference is not None:
            procs.append(self.inference)
        if self._outputs is not None and self._outputs.process is not None:
            procs.append(self._outputs.process)
        for p in procs:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + TERM_GRACE_S
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                log.warning("worker %s did not stop within %.0fs; killing", p.name, TERM_GRACE_S)
                p.kill()
                p.join(1.0)


def _curve_keys(cfg: PipelineConfig) -> tuple[ServerKeys | None, ClientKeys | None]:
    """The public sockets' CURVE keys, and the status board's: it subscribes to its own
    publisher, with a key pair made for this run (no file holds it) that is let in."""
    if cfg.security.curve is None:
        return None, None
    server = load_server_keys(cfg.security.curve)
    board = ClientKeys.ephemeral(server.public)
    log.info(
        "CURVE on publish.endpoint and journal.endpoint: %d authorized client key(s) from %s",
        len(server.authorized),
        cfg.security.curve.authorized_clients,
    )
    return server.allowing(board.public), board


def _refuse_taken_ipc(key: str, endpoint: str) -> None:
    """A taken ipc path refuses start-up like a taken port: libzmq would unlink whatever
    is there before binding, silently taking a live process's socket (or deleting a file)."""
    path = endpoint.removeprefix("ipc://")
    if path == endpoint or path.startswith("@"):  # tcp, or abstract: bind itself says in use
        return
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise StartupError(f"{key} {endpoint}: {path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:  # refused (its process is gone: zmq replaces it), or not ours to ask
            return
    raise StartupError(f"{key} {endpoint}: Address already in use (a process listens there)")


def _clear_stale_runs() -> None:
    """Remove what supervisors that died without cleaning up (SIGKILL) left behind."""
    for path, owner in stale_run_dirs():
        segments = sweep_segments(owner.run_id)
        shutil.rmtree(path, ignore_errors=True)  # another supervisor may be at it too
        log.warning(
            "removed %s and %d shared-memory segment(s) left by supervisor %d, which is gone",
            path,
            len(segments),
            owner.pid,
        )


def _describe_exit(code: int | None) -> str:
    if code == WorkerExit.STOPPED:
        return "stopped by a signal"
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
