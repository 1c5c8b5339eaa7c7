"""systemd's notify protocol (sd_notify), spoken by the supervisor: ``Type=notify``.

READY=1 once the model is warm and the first heartbeat came through, STATUS=
lines with a summary, and WATCHDOG=1 only while the detector's heartbeat is
fresh, so a hung inference worker gets the unit restarted by systemd. Without
``$NOTIFY_SOCKET`` (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

STATUS_EVERY_S = 5.0  # systemctl status shows the latest; more often is only noise


class Notifier:
    """A datagram socket to ``$NOTIFY_SOCKET`` (a path, or abstract when it starts with @)."""

    def __init__(self, address: str | None) -> None:
        self._address = (
            None if not address else "\0" + address[1:] if address[0] == "@" else address
        )
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; False if it could not be sent."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as e:  # systemd gone or restarting: the unit's fate is its call
            log.warning("sd_notify to %s failed: %s", self._address.lstrip("\0"), e)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: dict[str, str] | os._Environ[str]) -> float | None:
    """How often to send WATCHDOG=1 (half of ``WATCHDOG_USEC``), or None if no watchdog
    is asked of this process (``WATCHDOG_PID`` names another one)."""
    usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec), 1) / 2e6
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number of microseconds; no watchdog", usec)
        return None


@dataclass(slots=True)
class Health:
    """What the supervisor knows each loop turn: fed by the status board."""

    beating: bool  # the detector's heartbeat is fresh
    streaming: int
    total: int
    fps: float  # analysed frames per second, all streams


class ServiceNotifier:
    """Called from the supervisor loop each turn (:meth:`tick`); rate-limits itself."""

    def __init__(self, health: Callable[[], Health]) -> None:
        # Read once, then removed: workers must not inherit it and speak for the unit.
        self._notifier = Notifier(os.environ.pop("NOTIFY_SOCKET", None))
        self._watchdog_s = watchdog_interval(os.environ)
        os.environ.pop("WATCHDOG_USEC", None)
        os.environ.pop("WATCHDOG_PID", None)
        self._health = health
        self._ready = False
        self._last_status = ""
        self._status_at = 0.0
        self._fed_at = 0.0

    def tick(self) -> None:
        if not self._notifier.enabled:
            return
        now = time.monotonic()
        feed = self._watchdog_s is not None and now - self._fed_at >= self._watchdog_s
        if self._ready and not feed and now - self._status_at < STATUS_EVERY_S:
            return  # nothing due: the board is not asked every turn
        h = self._health()
        if not self._ready and h.beating:
            self._last_status = summary(h)
            self._ready = self._notifier.send("READY=1", f"STATUS={self._last_status}")
            self._status_at = now
        elif self._ready and now - self._status_at >= STATUS_EVERY_S:
            self._status(summary(h), now)
        if feed and h.beating:
            # Not fed while the heartbeat is stale: systemd restarts a hung detector's unit.
            self._notifier.send("WATCHDOG=1")
            self._fed_at = now

    def _status(self, text: str, now: float) -> None:
        if text != self._last_status:
            self._notifier.send(f"STATUS={text}")
            self._last_status = text
        self._status_at = now

    def stopping(self) -> None:
        self._notifier.send("STOPPING=1", "STATUS=stopping")
        self._notifier.close()


def summary(h: Health) -> str:
    beat = "" if h.beating else "; no detector heartbeat"
    return f"{h.streaming}/{h.total} streams streaming, {h.fps:.1f} fps analysed{beat}"
