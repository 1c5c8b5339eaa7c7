"""Composition root: the supervisor spawns the inference worker and one worker per source.

Start order: the inference worker binds the public and internal sockets and
loads the model first, so a model that cannot serve the configuration stops
start-up before any camera is opened. Shutdown: SIGTERM every worker, wait,
SIGKILL stragglers, then unlink every shared-memory segment of this run.
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
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess

from streamd.config import PipelineConfig
from streamd.frames.ring import segment_prefix, sweep_segments
from streamd.inference import EXIT_SETUP_FAILED, InferenceSpec, inference_main
from streamd.runtime.channel import Outbox
from streamd.runtime.process import StopFlag
from streamd.sources.worker import SourceSpec, source_main
from streamd.types import SourceState, StatusUpdate

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_WORKER_DIED = 1
EXIT_REFUSED = 2
TERM_GRACE_S = 3.0
READY_TIMEOUT_S = 300.0  # first model load may compile/fuse for a while


@dataclass(slots=True)
class _Source:
    spec: SourceSpec
    process: SpawnProcess
    done: bool = False


class Daemon:
    """Runs one pipeline until stopped (signal), ``duration_s`` passes, or the detector dies."""

    def __init__(self, cfg: PipelineConfig, log_level: str = "INFO") -> None:
        self.cfg = cfg
        self.log_level = log_level
        self.ctx = mp.get_context("spawn")
        self.run_id = f"{os.getpid():x}{secrets.token_hex(2)}"
        self.stop = StopFlag()
        self._tmp = ""
        self.inbox = ""
        self.inference: SpawnProcess | None = None
        self.sources: dict[str, _Source] = {}
        self._outbox: Outbox | None = None

    def run(self, duration_s: float | None = None) -> int:
        self.stop.install(signal.SIGINT, signal.SIGTERM)
        self._tmp = tempfile.mkdtemp(prefix="streamd-")  # 0700: private ipc sockets
        self.inbox = f"ipc://{self._tmp}/inbox"
        try:
            code = self._start_inference()
            if code is not None:
                return code
            self._outbox = Outbox(self.inbox)
            for index, stream in enumerate(self.cfg.streams):
                spec = SourceSpec(
                    stream=stream.id,
                    index=index,
                    url=stream.url,
                    loop=stream.loop,
                    realtime=stream.realtime,
                    drop_policy=stream.effective_drop_policy,
                    buffer=stream.buffer,
                    run_id=self.run_id,
                    inbox=self.inbox,
                    log_level=self.log_level,
                )
                self.sources[stream.id] = _Source(
                    spec, self._spawn(source_main, f"source-{stream.id}", spec)
                )
            log.info(
                "running %d stream(s); publishing on %s",
                len(self.sources),
                self.cfg.publish.endpoint,
            )
            return self._supervise(duration_s)
        finally:
            self._shutdown()

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> SpawnProcess:
        proc = self.ctx.Process(target=target, args=args, name=name, daemon=True)
        proc.start()
        return proc

    def _start_inference(self) -> int | None:
        ready = self.ctx.Event()
        self.inference = self._spawn(
            inference_main, "inference", InferenceSpec(self.cfg, self.inbox, self.log_level), ready
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
                s.process.sentinel for s in self.sources.values() if not s.done
            ]
            multiprocessing.connection.wait(waitables, timeout=0.2)
            if not self.inference.is_alive():
                log.error("inference worker died (exit code %s); stopping", self.inference.exitcode)
                return EXIT_WORKER_DIED
            for source in self.sources.values():
                if not source.done and not source.process.is_alive():
                    self._source_exited(source)
        log.info("stop requested")
        return EXIT_OK

    def _source_exited(self, source: _Source) -> None:
        source.done = True
        code = source.process.exitcode
        pid = source.process.pid
        removed = sweep_segments(self.run_id, f"{source.spec.index}_{pid}_")
        if code == 0:
            log.info("source %s finished", source.spec.stream)
            return
        # A crash cannot report its own state: say it on its behalf.
        log.error(
            "source worker %s died (exit code %s); %d segment(s) reclaimed",
            source.spec.stream,
            code,
            len(removed),
        )
        assert self._outbox is not None
        self._outbox.send(
            StatusUpdate(
                stream=source.spec.stream,
                state=SourceState.FAILED,
                reason="worker_crashed",
                ts=time.time(),
                detail=f"exit code {code}",
            )
        )

    def _shutdown(self) -> None:
        procs = [s.process for s in self.sources.values()]
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
        removed = sweep_segments(self.run_id)
        if removed:
            log.info(
                "reclaimed %d shared-memory segment(s) %s*",
                len(removed),
                segment_prefix(self.run_id),
            )
        shutil.rmtree(self._tmp, ignore_errors=True)
