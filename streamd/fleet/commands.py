"""The fleet's commands: ``streamd shards``, ``validate --shard``, ``status`` over
several instances, ``subscribe --nats``. ``streamd.cli`` parses; these run."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from streamd.config import ConfigError, PipelineConfig, load_config
from streamd.config.shard import ShardConfig, assignment
from streamd.runtime.redact import redact_url


def parse_shard(text: str) -> ShardConfig:
    """``i/n`` (argparse type)."""
    index, sep, count = text.partition("/")
    try:
        if not sep:
            raise ValueError("expected INDEX/COUNT, e.g. 0/3")
        return ShardConfig.model_validate({"index": index, "count": count})
    except ValidationError as e:
        why = "; ".join(f"shard.{'.'.join(map(str, err['loc']))}: {err['msg']}"
                        for err in e.errors())  # fmt: skip
        raise argparse.ArgumentTypeError(f"{text}: {why.replace('Value error, ', '')}") from None
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text}: {e}") from None


def load_all(path: str) -> PipelineConfig | None:
    """Every stream of the file, whatever its shard; None after printing why not."""
    try:
        return load_config(path, all_shards=True)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return None


def shard_lines(cfg: PipelineConfig, shard: ShardConfig) -> list[str]:
    """What ``validate --shard`` adds: the streams this shard runs."""
    mine = [s.id for s in cfg.streams if shard.owns(s.id)]
    lines = [f"shard {shard}: {len(mine)} of {len(cfg.streams)} stream(s)"]
    lines += [f"  {sid}" for sid in mine]
    if not mine:
        lines.append("  (none: an instance with this shard refuses to start)")
    return lines


def cmd_shards(args: argparse.Namespace) -> int:
    """Each stream's shard for ``--count`` (default: the file's shard.count), and which
    ones move from the file's count."""
    cfg = load_all(args.file)
    if cfg is None:
        return 2
    now = cfg.shard.count if cfg.shard is not None else None
    count = args.count or now
    if count is None:
        print(f"{args.file}: no shard section: give --count N", file=sys.stderr)
        return 2
    ids = [s.id for s in cfg.streams]
    new = assignment(ids, count)
    old = assignment(ids, now) if now is not None and now != count else None
    if args.json:
        print(json.dumps({"count": count, "streams": new}, indent=2))
        return 0
    rows = [("STREAM", "SHARD", *(("FROM", "") if old else ()))]
    for sid in ids:
        moved = old is not None and old[sid] != new[sid]
        extra = (str(old[sid]), "moves" if moved else "") if old else ()
        rows.append((sid, str(new[sid]), *extra))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    sizes = [sum(1 for s in new.values() if s == k) for k in range(count)]
    print(f"{count} shard(s): " + ", ".join(f"{k}: {n}" for k, n in enumerate(sizes)))
    if old is not None:
        moving = sum(1 for sid in ids if old[sid] != new[sid])
        print(f"{now} -> {count} shards: {moving} of {len(ids)} stream(s) move")
    if 0 in sizes:
        print("some shard has no stream: its instance would refuse to start", file=sys.stderr)
    return 0


def status_targets(args: argparse.Namespace) -> list[str]:
    targets = list(args.target)
    if args.fleet:
        from streamd.fleet.status import read_fleet_file

        targets += read_fleet_file(Path(args.fleet))
    return targets


def cmd_fleet_status(args: argparse.Namespace, addresses: list[str]) -> int:
    from streamd.cli import STATUS_COLUMNS, status_exit_code, status_row
    from streamd.fleet.status import fetch_all, fleet_exit_code, format_fleet

    token = args.token or os.environ.get("STREAMD_HTTP_TOKEN")
    instances = fetch_all(addresses, args.timeout, token)
    if args.json:
        print(json.dumps({i.address: i.status for i in instances}, indent=2))
    else:
        print(format_fleet(instances, STATUS_COLUMNS, status_row))
    return fleet_exit_code(instances, status_exit_code)


def cmd_subscribe_nats(args: argparse.Namespace) -> int:
    """``streamd subscribe --nats URL``: the fleet's events from JetStream as JSON lines."""
    from streamd.fleet.events import FleetReader

    kinds = tuple(args.kind or ("alert", "track"))
    try:
        reader = FleetReader(args.nats, args.jetstream, kinds)
    except ValueError as e:
        print(f"streamd subscribe: {e}", file=sys.stderr)
        return 2

    async def main() -> int:
        seen = 0
        async for ev in reader.events(args.timeout):
            out: dict[str, Any] = ev.payload
            print(json.dumps(out, separators=(",", ":")), flush=True)
            seen += 1
            if args.count is not None and seen >= args.count:
                break
        return seen

    try:
        seen = asyncio.run(main())
    except KeyboardInterrupt:
        return 0
    except Exception as e:  # nats-py's errors have no common base worth naming here
        servers = args.nats if isinstance(args.nats, list) else [args.nats]
        where = redact_url(", ".join(map(str, servers)))
        print(f"streamd subscribe: {where}: {type(e).__name__}: {redact_url(str(e))}",
              file=sys.stderr)  # fmt: skip
        return 1
    order = reader.order
    print(f"streamd subscribe: {seen} event(s); dropped {order.duplicates} duplicate(s), "
          f"{order.late} out of order", file=sys.stderr)  # fmt: skip
    return 0 if seen else 1
