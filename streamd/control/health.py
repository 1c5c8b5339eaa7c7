"""Liveness, readiness and each stream's health, judged from the status board's rows.

Liveness (``/healthz``) says the daemon itself works: heartbeats, journals,
supervisor threads. Readiness (``/readyz``) says it does its job: the model is
loaded and enough cameras stream (``supervisor.ready_streams``). A daemon can
be live and not ready, e.g. every camera unreachable: restarting it would not
help, but a dashboard or a load balancer must know.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamd.runtime.systemd import Health
from streamd.types import SourceState

if TYPE_CHECKING:
    from streamd.control.board import StatusBoard


def stream_problem(row: dict[str, Any]) -> str | None:
    """Why a stream is not analysing frames now, in words; None while it streams."""
    state = row.get("state")
    if state == SourceState.STREAMING:
        return None
    if state is None:
        return "not started yet"
    text = f"{state}: {row.get('reason') or '-'}"
    if row.get("detail"):
        text += f" ({row['detail']})"
    if row.get("retry_in_s") is not None and state == SourceState.RECONNECTING:
        text += f", retry in {row['retry_in_s']:.1f}s"
    return text


def mark_streams(streams: dict[str, dict[str, Any]]) -> None:
    """Add ``up`` and ``problem`` to every row, in place."""
    for row in streams.values():
        problem = stream_problem(row)
        row["up"] = problem is None
        row["problem"] = problem


def not_ready(
    streams: dict[str, dict[str, Any]], model_loaded: bool, ready_share: float
) -> list[str]:
    """What keeps the daemon from being ready, in words (empty: ready).

    ``ready_share`` is the fraction of streams that must stream (1.0: all of them;
    at least one when there are any and the share is above 0)."""
    out = [] if model_loaded else ["model not loaded: no detector heartbeat"]
    total = len(streams)
    up = sum(1 for row in streams.values() if stream_problem(row) is None)
    need = min(total, max(1, _ceil(ready_share * total))) if ready_share > 0 and total else 0
    if up < need:
        down = [sid for sid, row in streams.items() if stream_problem(row) is not None]
        out.append(f"{up}/{total} streams streaming, {need} needed; down: {', '.join(down)}")
    return out


def _ceil(x: float) -> int:
    # 0.75 * 4 must need 3, not 4 from float noise: round first, then ceil.
    r = round(x, 9)
    return int(r) if r == int(r) else int(r) + 1


def service_health(board: StatusBoard) -> Health:
    """The summary systemd is told: detector heartbeat, streams streaming, analysed fps."""
    streams = board.snapshot()["streams"]
    return Health(
        beating=board.beating(),
        streaming=sum(1 for row in streams.values() if row["up"]),
        total=len(streams),
        fps=sum(row.get("fps") or 0.0 for row in streams.values()),
    )
