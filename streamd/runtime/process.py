"""Per-process setup done once in every worker: title, signals, faulthandler, logging."""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

import setproctitle

from streamd.config.log import LogFormat
from streamd.runtime.exits import WorkerExit
from streamd.runtime.logs import configure_logging
from streamd.runtime.redact import redact_url

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class StopFlag:
    """Set by SIGTERM (or by code); workers poll it between units of work."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)

    def install(self, *signals: signal.Signals) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            self.set()

        for sig in signals:
            signal.signal(sig, handler)


def _die_with_parent() -> None:
    # A worker must not outlive a supervisor that was SIGKILLed (Linux only).
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable")


def run_logged(main: Callable[[], int]) -> NoReturn:
    """Run a worker's body; an unexpected exception is logged (redacted) and exits 1.

    multiprocessing would print it raw to stderr, and exception text may hold a URL.
    """
    try:
        code = main()
    except Exception:
        log.critical("worker crashed", exc_info=True)
        code = WorkerExit.CRASHED
    logging.shutdown()
    sys.exit(code)


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    log.critical(
        "thread %s crashed",
        args.thread.name if args.thread else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
    )


def setup_worker(
    title: str, log_level: str, log_format: LogFormat = "text", stream: str | None = None
) -> StopFlag:
    """Call first thing in a worker process; returns the flag SIGTERM sets. ``stream``:
    the camera a process serves, carried by its every log line."""
    setproctitle.setproctitle(redact_url(f"streamd: {title}"))
    configure_logging(log_level, title, log_format, stream)
    faulthandler.enable()
    threading.excepthook = _log_thread_exception  # through the redacting formatter
    _die_with_parent()
    # Ctrl-C and a hangup (a closed terminal, `kill -HUP -<group>`) reach the whole
    # process group; only the supervisor acts on them (SIGHUP: reload).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stop = StopFlag()
    stop.install(signal.SIGTERM)
    return stop
