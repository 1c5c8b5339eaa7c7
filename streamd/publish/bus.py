"""The event bus: every publishing process PUSHes into the supervisor, one PUB goes out.

Each camera's process publishes its own ``det``/``track``/``alert`` events and
the supervisor its ``status`` and ``heartbeat`` events, but subscribers see
one endpoint. PUSH/PULL rather than PUB/XSUB on the inside: a PUB drops what it
sends before its subscriptions arrived (the slow-joiner problem), so a
restarted camera process would lose its first events. The forwarding loop is
libzmq's own proxy on a thread (no Python, no GIL, per message).
"""

from __future__ import annotations

import threading
from typing import Any

import zmq

from streamd.publish.curve import ServerKeys, ZapHandler, serve
from streamd.publish.publisher import configure_pub

BUS_HWM = 100_000  # inside the host: generous, the public PUB's HWM is the one that bounds


class BusProxy:
    """Binds the internal PULL and the public PUB; ``start`` forwards until ``close``.

    With ``curve`` keys the public PUB is a CURVE server: encrypted, and only
    authorized clients get a subscription through. The internal PULL is ipc in the
    run's private folder and stays plain.
    """

    def __init__(
        self, bus: str, public: str, hwm: int, sndbuf_kib: int, curve: ServerKeys | None = None
    ) -> None:
        self._ctx = zmq.Context()
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.RCVHWM, BUS_HWM)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pub = self._ctx.socket(zmq.PUB)
        configure_pub(self._pub, hwm, sndbuf_kib)
        # The PUB's ZAP handler (CURVE only): watched in health, no client gets in without it.
        self.zap: ZapHandler | None = None if curve is None else serve(self._pub, curve)
        self._control = self._ctx.socket(zmq.PAIR)
        self._control_addr = f"inproc://bus-control-{id(self)}"
        self._control.bind(self._control_addr)
        try:
            self._pub.bind(public)  # in the caller's thread: a taken port fails start-up
            self._pull.bind(bus)
        except zmq.ZMQError:
            self._close_sockets()
            self._ctx.term()  # also ends the context's ZAP handler, if any
            raise
        self._thread = threading.Thread(target=self._run, name="bus", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        steer: zmq.Socket[Any] = self._ctx.socket(zmq.PAIR)
        steer.connect(self._control_addr)
        try:
            zmq.proxy_steerable(self._pull, self._pub, None, steer)
        except zmq.ContextTerminated:
            pass
        finally:
            steer.close(linger=0)

    def close(self) -> None:
        """Stop forwarding, pass on what is still queued (the last events), then close."""
        if self._thread.is_alive():
            self._control.send(b"TERMINATE")
            self._thread.join(2.0)
            self._drain()
        self._close_sockets()
        self._ctx.term()

    def _drain(self) -> None:
        while self._pull.poll(0):
            self._pub.send_multipart(self._pull.recv_multipart(zmq.NOBLOCK), zmq.NOBLOCK)

    def _close_sockets(self) -> None:
        self._pull.close(linger=0)
        self._control.close(linger=0)
        self._pub.close()  # its own linger (configure_pub): a moment to flush
