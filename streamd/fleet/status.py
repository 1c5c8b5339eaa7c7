"""``streamd status HOST:PORT HOST:PORT ...``: each instance's ``/status``, fetched
at once, merged into one table with an INSTANCE column.

A camera two instances both analyse (a fleet whose instances disagree on
``shard.count``) and an instance that does not answer are problems: the exit code
says so as for one daemon (1), after the table of those that answered.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class InstanceStatus:
    address: str
    status: dict[str, Any] | None  # None: it did not answer
    error: str = ""


def read_fleet_file(path: Path) -> list[str]:
    """HOST:PORT per line; blank lines and ``#`` comments skipped."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def fetch(address: str, timeout_s: float, token: str | None = None) -> InstanceStatus:
    request = urllib.request.Request(f"http://{address}/status")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as r:
            return InstanceStatus(address, json.load(r))
    except (urllib.error.URLError, OSError, ValueError) as e:
        return InstanceStatus(address, None, str(e))


def fetch_all(addresses: list[str], timeout_s: float, token: str | None) -> list[InstanceStatus]:
    """Every instance's status, asked all at once (the slowest sets the time)."""
    with ThreadPoolExecutor(max_workers=min(32, len(addresses) or 1)) as pool:
        return list(pool.map(lambda a: fetch(a, timeout_s, token), addresses))


def fleet_problems(instances: list[InstanceStatus]) -> list[str]:
    """Instances not answering or unhealthy, and cameras more than one instance runs."""
    out = [f"{i.address}: no answer ({i.error})" for i in instances if i.status is None]
    out += [f"{i.address}: unhealthy ({'; '.join(i.status.get('problems') or [])})"
            for i in instances if i.status is not None and not i.status.get("healthy")]  # fmt: skip
    owners: dict[str, list[str]] = {}
    for i in instances:
        for sid in (i.status or {}).get("streams", {}):
            owners.setdefault(sid, []).append(i.address)
    out += [f"{sid}: run by {len(a)} instances ({', '.join(a)}): do they agree on shard.count?"
            for sid, a in sorted(owners.items()) if len(a) > 1]  # fmt: skip
    return out


def format_fleet(
    instances: list[InstanceStatus],
    columns: tuple[str, ...],
    row: Callable[[str, dict[str, Any]], tuple[str, ...]],
) -> str:
    """One table of every instance's streams (``row`` gives one stream's cells under
    ``columns``), sorted by stream, then a line per problem."""
    rows = [("INSTANCE", *columns)]
    streams = [(sid, i.address, s) for i in instances if i.status is not None
               for sid, s in i.status["streams"].items()]  # fmt: skip
    rows += [(address, *row(sid, s)) for sid, address, s in sorted(streams, key=lambda t: t[:2])]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    table = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    up = sum(1 for i in instances if i.status is not None)
    head = f"fleet: {up}/{len(instances)} instance(s) answering, {len(streams)} stream(s)"
    down = [f"{sid}: DOWN, {s['problem']}" for sid, _, s in sorted(streams, key=lambda t: t[:2])
            if s.get("problem")]  # fmt: skip
    return "\n".join([head, *table, *down, *fleet_problems(instances)])


def fleet_exit_code(instances: list[InstanceStatus], one: Callable[[dict[str, Any]], int]) -> int:
    """1 if any instance is away or unhealthy or a camera runs twice; else the worst of
    ``one`` (the single daemon's exit code) over the instances."""
    if fleet_problems(instances):
        return 1
    return max((one(i.status) for i in instances if i.status is not None), default=1)
