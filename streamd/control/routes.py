"""The supervisor's routes to the detector: each stream's results endpoint and lane.

A stream added, re-configured or removed at runtime is announced to the
detector process with a :class:`~streamd.types.RouteUpdate` on its inbox. That
inbox is shared with every camera's frames and bounded, so an update can be
lost (a full inbox refuses it) or wait behind a batch: the detector answers
each with a :class:`~streamd.types.RouteAck` to the control plane, and an
update not acknowledged in time is sent again (applying one twice changes
nothing). Only a stream's newest update is kept: an older one sent again could
undo a later removal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from streamd.runtime.channel import Outbox
from streamd.types import RouteUpdate

log = logging.getLogger(__name__)

RESEND_S = 5.0  # a batch on a slow CPU takes seconds: not lost before this


class Routes:
    def __init__(
        self, inbox: str, take_acks: Callable[[], set[int]], resend_s: float = RESEND_S
    ) -> None:
        """``take_acks()``: the seqs the detector acknowledged since the last call."""
        self._take_acks = take_acks
        self._resend_s = resend_s
        self._out = Outbox(inbox)  # now: a stream added when descriptors run short still has it
        self._seq = 0
        self._pending: dict[str, tuple[RouteUpdate, float]] = {}  # stream → newest, sent at

    def send(self, update: RouteUpdate) -> None:
        self._seq += 1
        update = replace(update, seq=self._seq)
        self._pending[update.stream] = (update, time.monotonic())  # supersedes an older one
        self._send(update)

    def check(self, now: float | None = None) -> int:
        """Forget the acknowledged updates, send again those overdue; how many were."""
        now = time.monotonic() if now is None else now
        acks = self._take_acks()  # the rest (superseded, sent twice) are forgotten here
        resent = 0
        for stream, (update, at) in list(self._pending.items()):
            if update.seq in acks:
                del self._pending[stream]
            elif now - at >= self._resend_s:
                log.warning("the detector did not confirm the route of stream %s within "
                            "%.0fs; sent again", stream, self._resend_s)  # fmt: skip
                self._pending[stream] = (update, now)
                self._send(update)
                resent += 1
        return resent

    def pending(self) -> list[str]:
        """Streams whose newest update is not confirmed yet."""
        return list(self._pending)

    def _send(self, update: RouteUpdate) -> None:
        if not self._out.send(update):
            log.warning("the detector's inbox is full: route of %s sent again later",
                        update.stream)  # fmt: skip

    def close(self) -> None:
        self._out.close()
