"""The supervisor's handle on the outputs process: start, restart when it dies, stop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from multiprocessing.context import SpawnProcess

from prometheus_client.multiprocess import mark_process_dead

from streamd.outputs.runner import OutputsSpec, outputs_main

log = logging.getLogger(__name__)

RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # then 30 s: it never stops trying
STEADY_S = 60.0  # alive this long: the next death starts the delays afresh

Spawn = Callable[..., SpawnProcess]


class OutputsWorker:
    """Runs :func:`outputs_main` in a process of its own and restarts it when it dies.

    A dead outputs process costs no alert (each output's cursor is on disk and
    the journal holds what it had not delivered) and never touches the cameras.
    """

    def __init__(self, spec: OutputsSpec, spawn: Spawn, metrics_dir: str) -> None:
        self._spec = spec
        self._spawn = spawn
        self._metrics_dir = metrics_dir
        self.process: SpawnProcess | None = None
        self._restart_at: float | None = None
        self._started = 0.0
        self._deaths = 0

    def start(self) -> None:
        self.process = self._spawn(outputs_main, "outputs", self._spec)
        self._started = time.monotonic()
        self._restart_at = None

    def check(self) -> None:
        """From the supervisor's loop: notice a death, restart when due."""
        now = time.monotonic()
        if self.process is not None and not self.process.is_alive():
            code, pid = self.process.exitcode, self.process.pid
            self.process = None
            if pid is not None:
                mark_process_dead(pid, self._metrics_dir)  # type: ignore[no-untyped-call]
            if now - self._started > STEADY_S:
                self._deaths = 0
            delay = RESTART_DELAYS_S[min(self._deaths, len(RESTART_DELAYS_S) - 1)]
            self._deaths += 1
            self._restart_at = now + delay
            log.error("outputs process ended (exit code %s); restarting in %.0fs", code, delay)
        if self.process is None and self._restart_at is not None and now >= self._restart_at:
            try:
                self.start()
            except Exception as e:  # no process could start (descriptors, memory): later
                log.error("outputs process could not start (%s); again in 5s", e)
                self._restart_at = now + 5.0
