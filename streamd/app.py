"""Composition root: the supervisor spawns the inference worker and one worker per source.

Start order: the HTTP control port is bound first and the inference worker
binds the public and internal sockets and loads the model next, so a taken
port or a model that cannot serve the configuration stops start-up before any
camera is opened. A source worker that dies is restarted (rate-limited) with
its shared memory reclaimed; the others never notice. Shutdown: SIGTERM every
worker, wait, SIGKILL stragglers, then unlink every segment of this run.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.context import SpawnProcess
from typing import Any

from prometheus_client.multiprocess import mark_process_dead

from streamd.config import PipelineConfig, StreamConfig
from streamd.control import ControlServer, StatusBoard
from streamd.control.exposition import MetricsExporter
from streamd.frames.ring import segment_prefix, sweep_segments
from streamd.inference import EXIT_SETUP_FAILED, InferenceSpec, inference_main
from streamd.runtime.channel import Outbox
from streamd.runtime.process import StopFlag
from streamd.sources.reader import OpenOptions
from streamd.sources.worker import EXIT_HUNG, EXIT_STOPPED, SourceSpec, source_main
from streamd.types import SourceState, StatusUpdate, WatchUpdate
from streamd.view.overlay import LiveView

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_WORKER_DIED = 1
EXIT_REFUSED = 2
TERM_GRACE_S = 3.0
READY_TIMEOUT_S = 300.0  # first model load may compile/fuse for a while


RESTART_DELAYS_S = (0.5, 1.0, 2.0)  # then 2.0: a restart always comes within 5 s
HEARTBEAT_WAIT_S = 3.0


@dataclass(slots=True)
class _Source:
    spec: SourceSpec
    process: SpawnProcess | None = None
    restarts: int = 0
    recent: list[float] = field(default_factory=list)  # monotonic times of recent restarts
    restart_at: float | None = None
    resumed_since: float = 0.0


class StartupError(Exception):
    """The daemon cannot start (a port in use, ...); nothing was started."""


def source_spec(
    stream: StreamConfig, index: int, run_id: str, inbox: str, log_level: str
) -> SourceSpec:
    return SourceSpec(
        stream=stream.id,
        index=index,
        open=OpenOptions(
            url=stream.url,
            transport=stream.transport or "tcp",
            width=stream.width,
            height=stream.height,
            fps=stream.fps,
            open_timeout_s=stream.open_timeout_s,
            stall_timeout_s=stream.stall_timeout_s,
            on_corrupt=stream.on_corrupt,
        ),
        loop=stream.loop,
        realtime=stream.realtime,
        drop_policy=stream.effective_drop_policy,
        buffer=stream.buffer,
        reconnect=stream.reconnect,
        max_fps=stream.max_fps,
        run_id=run_id,
        inbox=inbox,
        log_level=log_level,
    )


class Daemon:
    """Runs one pipeline until stopped (signal), ``duration_s`` passes, or the detector dies."""

    def __init__(self, cfg: PipelineConfig, log_level: str = "INFO") -> None:
        self.cfg = cfg
        self.log_level = log_level
        self.ctx = mp.get_context("spawn")
        self.run_id = f"{os.getpid():x}{secrets.token_hex(2)}"
        self.stop = StopFlag()
        self._tmp = ""
        self._metrics_dir = ""
        self.inbox = ""
        self.inference: SpawnProcess | None = None
        self.sources: dict[str, _Source] = {}
        self._outbox: Outbox | None = None
        self.board = StatusBoard(
            cfg.publish.endpoint, [s.id for s in cfg.streams], cfg.publish.heartbeat_s
        )
        self._http: ControlServer | None = None
        self.view: LiveView | None = None
        self._watching: dict[str, float] = {}  # stream → view frames/s the viewers want
        self._watch_lock = threading.Lock()
        self._watch_outbox: Outbox | None = None  # HTTP threads' own socket, under the lock

    def run(self, duration_s: float | None = None) -> int:
        self.stop.install(signal.SIGINT, signal.SIGTERM)
        self._tmp = tempfile.mkdtemp(prefix="streamd-")  # 0700: private ipc sockets
        self.inbox = f"ipc://{self._tmp}/inbox"
        # Workers inherit this and write their metrics there (prometheus multiprocess mode).
        self._metrics_dir = os.path.join(self._tmp, "metrics")
        os.mkdir(self._metrics_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
        try:
            try:
                self._start_http()
            except StartupError as e:
                log.error("%s", e)
                return EXIT_REFUSED
            code = self._start_inference()
            if code is not None:
                return code
            self._outbox = Outbox(self.inbox)
            self._open_watch_channel()
            # Subscribed before any source speaks, so the board misses no transition.
            if not self.board.wait_heartbeat(HEARTBEAT_WAIT_S):
                log.warning(
                    "no heartbeat on %s yet; /status may miss early transitions",
                    self.cfg.publish.endpoint,
                )
            for index, stream in enumerate(self.cfg.streams):
                source = _Source(
                    source_spec(stream, index, self.run_id, self.inbox, self.log_level)
                )
                self.sources[stream.id] = source
                self._start_source(source)
            log.info(
                "running %d stream(s); publishing on %s",
                len(self.sources),
                self.cfg.publish.endpoint,
            )
            return self._supervise(duration_s)
        finally:
            self._shutdown()

    def _start_http(self) -> None:
        listen = self.cfg.http.listen
        if listen is None:
            return
        try:
            exporter = MetricsExporter(self.board, self._metrics_dir)
            self.view = LiveView(self.cfg, f"ipc://{self._tmp}/view", self._watch, self._hud)
            exporter.view = self.view
            self._http = ControlServer(listen, self.board, exporter, self.view, self.cfg.http.token)
        except OSError as e:
            raise StartupError(f"http.listen {listen}: {e.strerror or e}") from None
        self.view.start()
        self._http.start()
        log.info("live view on http://%s/ (status: /status, metrics: /metrics)", listen)

    def _watch(self, stream: str, max_fps: float) -> None:
        """Called from HTTP threads as viewers come and go."""
        with self._watch_lock:
            self._watching[stream] = max_fps
            if self._watch_outbox is not None:
                self._watch_outbox.send(WatchUpdate(stream, max_fps))

    def _open_watch_channel(self) -> None:
        with self._watch_lock:
            self._watch_outbox = Outbox(self.inbox)
            for stream, max_fps in self._watching.items():  # viewers who came early
                self._watch_outbox.send(WatchUpdate(stream, max_fps))

    def _hud(self, stream: str) -> dict[str, Any]:
        return self.board.row(stream)

    def _start_source(self, source: _Source) -> None:
        spec = source.spec
        if source.restarts:
            spec = replace(
                spec,
                restarts=source.restarts,
                resumed_from=SourceState.RECONNECTING,
                resumed_since=source.resumed_since,
            )
        source.process = self._spawn(source_main, f"source-{spec.stream}", spec)
        source.restart_at = None
        self.board.set_worker(spec.stream, source.process.pid, source.restarts)

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> SpawnProcess:
        proc = self.ctx.Process(target=target, args=args, name=name, daemon=True)
        proc.start()
        return proc

    def _start_inference(self) -> int | None:
        ready = self.ctx.Event()
        view = f"ipc://{self._tmp}/view" if self.view is not None else None
        self.inference = self._spawn(
            inference_main,
            "inference",
            InferenceSpec(self.cfg, self.inbox, self.log_level, view),
            ready,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.wait(0.2):
            if not self.inference.is_alive():
                refused = self.inference.exitcode == EXIT_SETUP_FAILED
                log.error(
                    "inference worker %s (exit code %s)",
                    "refused the configuration" if refused else "died",
                    self.inference.exitcode,
                )
                return EXIT_REFUSED if refused else EXIT_WORKER_DIED
            if self.stop.is_set():
                return EXIT_OK
            if time.monotonic() > deadline:
                log.error("inference worker not ready after %.0fs", READY_TIMEOUT_S)
                return EXIT_WORKER_DIED
        return None

    def _supervise(self, duration_s: float | None) -> int:
        assert self.inference is not None
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not self.stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                log.info("duration of %.1fs reached", duration_s)
                return EXIT_OK
            waitables = [self.inference.sentinel] + [
                s.process.sentinel for s in self.sources.values() if s.process is not None
            ]
            multiprocessing.connection.wait(waitables, timeout=0.2)
            if not self.inference.is_alive():
                log.error("inference worker died (exit code %s); stopping", self.inference.exitcode)
                return EXIT_WORKER_DIED
            now = time.monotonic()
            for source in self.sources.values():
                if source.process is not None and not source.process.is_alive():
                    self._source_exited(source)
                elif source.restart_at is not None and now >= source.restart_at:
                    self._start_source(source)
        log.info("stop requested")
        return EXIT_OK

    def _source_exited(self, source: _Source) -> None:
        assert source.process is not None
        code, pid = source.process.exitcode, source.process.pid
        source.process = None
        if pid is not None:
            # Its live gauges go; its counters stay in the sums.
            mark_process_dead(pid, self._metrics_dir)  # type: ignore[no-untyped-call]
        removed = sweep_segments(self.run_id, f"{source.spec.index}_{pid}_")
        stream = source.spec.stream
        self.board.set_worker(stream, None, source.restarts)
        if code == EXIT_OK:  # it reached ended/failed and said so itself
            log.info("source %s finished", stream)
            return
        reason = "worker_hung" if code == EXIT_HUNG else "worker_crashed"
        detail = _describe_exit(code)
        log.error(
            "source worker %s %s (%s); %d segment(s) reclaimed",
            stream,
            "hung" if code == EXIT_HUNG else "died",
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
            )
            return
        delay = RESTART_DELAYS_S[min(len(source.recent), len(RESTART_DELAYS_S) - 1)]
        source.recent.append(now)
        source.restarts += 1
        source.restart_at = now + delay
        # A dead worker cannot report its own state: say it on its behalf.
        source.resumed_since = self._say(
            stream, SourceState.RECONNECTING, reason, detail, source.restarts, delay
        )

    def _say(
        self,
        stream: str,
        state: SourceState,
        reason: str,
        detail: str,
        attempt: int,
        retry_in_s: float | None = None,
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
            )
        )
        return now

    def _shutdown(self) -> None:
        procs = [s.process for s in self.sources.values() if s.process is not None]
        if self.inference is not None:
            procs.append(self.inference)
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
        if self._outbox is not None:
            self._outbox.close()
        with self._watch_lock:
            if self._watch_outbox is not None:
                self._watch_outbox.close()
                self._watch_outbox = None
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


def _describe_exit(code: int | None) -> str:
    if code == EXIT_STOPPED:
        return "stopped by a signal"
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
