"""Exit codes: what a worker's exit tells the supervisor, and what the daemon tells its caller."""

from __future__ import annotations

from enum import IntEnum


class WorkerExit(IntEnum):
    OK = 0  # a source: its stream is over (ended/failed, said by the worker itself)
    CRASHED = 1  # an unexpected exception (logged, redacted)
    SETUP_FAILED = 3  # inference: the configuration cannot be served (refused before start)
    HUNG = 4  # a source: the watchdog ended it, stuck inside ffmpeg
    STOPPED = 5  # a source: stopped by a signal before its stream was over


class DaemonExit(IntEnum):
    OK = 0
    WORKER_DIED = 1
    REFUSED = 2  # bad configuration, a port in use, ...: nothing was started
