"""A last-resort guard for blocking calls into native code.

ffmpeg's reads are bounded by PyAV's interrupt callback, but a demuxer or a
driver that ignores it would hang its worker forever. The watchdog thread
ends the process instead, so the supervisor can restart it (and count it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class Watchdog:
    def __init__(self, exit_code: int, poll_s: float = 0.25) -> None:
        self._exit_code = exit_code
        self._poll_s = poll_s
        self._deadline: float | None = None
        self._what = ""
        threading.Thread(target=self._watch, name="watchdog", daemon=True).start()

    @contextmanager
    def armed(self, limit_s: float, what: str) -> Iterator[None]:
        """Exit the process if the block does not finish within ``limit_s``."""
        self._what = what
        self._deadline = time.monotonic() + limit_s
        try:
            yield
        finally:
            self._deadline = None

    def _watch(self) -> None:
        while True:
            time.sleep(self._poll_s)
            deadline = self._deadline
            if deadline is not None and time.monotonic() > deadline:
                log.error("%s hung past its deadline; exiting for a restart", self._what)
                logging.shutdown()
                os._exit(self._exit_code)
