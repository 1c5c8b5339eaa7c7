"""Command line: run, validate, status, clips, view, subscribe, keys, bench, export-engine,
calibrate, synth, eval-tracking."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamd.config import ConfigError, PipelineConfig, load_config
from streamd.runtime.exits import DaemonExit
from streamd.runtime.logs import configure_logging

if TYPE_CHECKING:
    from streamd.client import Event, Subscriber
    from streamd.publish.curve import ClientKeys

log = logging.getLogger("streamd")

EXIT_BAD_CONFIG = DaemonExit.REFUSED


def _load(path: str) -> PipelineConfig | None:
    """The pipeline, or None after printing why it was refused."""
    try:
        return load_config(path)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return None


def _cmd_validate(args: argparse.Namespace) -> int:
    from streamd.fleet.commands import load_all, shard_lines
    from streamd.publish.curve import KeyFileError, load_server_keys

    cfg = load_all(args.file)  # every stream: each is checked, whichever shard runs it
    if cfg is None:
        return EXIT_BAD_CONFIG
    from streamd.control.streams import StreamsFile
    from streamd.validate import check_classes, check_files

    # What run starts: the streams as changed at runtime, if they were (the overlay
    # next to the file, or in systemd's state directory).
    overlay = StreamsFile(Path(args.file))
    try:
        if cfg.shard is not None:
            overlay.apply(cfg)  # as run applies it: refused if none of it is this shard's
        cfg = overlay.apply(cfg.model_copy(update={"shard": None})).model_copy(
            update={"shard": cfg.shard}
        )
    except ConfigError as e:
        print(e, file=sys.stderr)
        return EXIT_BAD_CONFIG
    # With an overlay, streams.N are its streams: its problems name its path.
    source = str(overlay.path) if overlay.path.exists() else args.file
    problems = check_files(cfg) or check_classes(cfg)  # classes only from a model that is there
    if problems:
        print(ConfigError(source, problems), file=sys.stderr)
        return EXIT_BAD_CONFIG
    try:
        if cfg.security.curve is not None:
            load_server_keys(cfg.security.curve)  # the files run would read
    except KeyFileError as e:
        print(f"{args.file}: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    changed = f", as changed at runtime in {overlay.path}" if overlay.path.exists() else ""
    print(f"{args.file}: ok ({len(cfg.streams)} stream(s){changed})")
    shard = args.shard or cfg.shard
    if shard is not None:
        print("\n".join(shard_lines(cfg, shard)))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, "supervisor")
    cfg = _load(args.file)
    if cfg is None:
        return EXIT_BAD_CONFIG
    configure_logging(args.log_level, "supervisor", cfg.log.format)  # the file's format now
    from streamd.sources.nvdec import start_refusals

    refused = start_refusals(cfg.streams)  # decode: nvdec on a machine without it
    if refused:
        print("\n".join(f"{args.file}: {r}" for r in refused), file=sys.stderr)
        return EXIT_BAD_CONFIG
    from streamd.app import Daemon
    from streamd.publish.curve import KeyFileError

    try:
        daemon = Daemon(cfg, args.log_level, pipeline=Path(args.file))
    except KeyFileError as e:
        print(f"{args.file}: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except ConfigError as e:  # the streams changed at runtime, persisted next to the file
        print(e, file=sys.stderr)
        return EXIT_BAD_CONFIG
    return daemon.run(args.duration)


def _client_keys(args: argparse.Namespace) -> ClientKeys | None:
    """``ClientKeys`` from --client-key/--server-key, None without them; KeyFileError."""
    from streamd.publish.curve import ClientKeys

    if args.client_key is None and args.server_key is None:
        return None
    if args.client_key is None or args.server_key is None:
        raise ValueError("--client-key and --server-key go together")
    return ClientKeys.load(args.client_key, args.server_key)


def _cmd_keys(args: argparse.Namespace) -> int:
    from streamd.publish.curve import make_key_pair

    folder = Path(args.dir)
    for name in args.names:
        try:
            public, secret = make_key_pair(folder, name)
        except (FileExistsError, ValueError) as e:
            print(f"streamd keys: {e}", file=sys.stderr)
            return 1
        print(f"{public}  public: give it out (clients: into the daemon's authorized_clients)")
        print(f"{secret}  secret (0600): keep it where it is used, share it with no one")
    return 0


def _cmd_subscribe(args: argparse.Namespace) -> int:
    if args.nats:
        from streamd.fleet.commands import cmd_subscribe_nats

        return cmd_subscribe_nats(args)
    import zmq

    from streamd.client import Gap, Subscriber
    from streamd.publish.curve import KeyFileError

    try:
        keys = _client_keys(args)
    except (KeyFileError, ValueError) as e:
        print(f"streamd subscribe: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG

    def on_gap(gap: Gap) -> None:
        print(
            json.dumps(
                {
                    "gap": {
                        "stream": gap.stream,
                        "kind": gap.kind,
                        "missing": gap.missing,
                        "expected": gap.expected,
                        "received": gap.received,
                    }
                }
            ),
            file=sys.stderr,
            flush=True,
        )

    topics = args.topic or [""]
    try:
        endpoint = _subscribe_endpoint(args.endpoint)
        # Heartbeats always: they tell a quiet daemon from none (printed only if asked for).
        sub = Subscriber(endpoint, topics=[*topics, "heartbeat"], on_gap=on_gap, curve=keys)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return EXIT_BAD_CONFIG
    except zmq.ZMQError as e:
        print(f"streamd subscribe: cannot connect to {endpoint!r}: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    seen = 0
    quiet = _QuietNotice(endpoint)
    with sub:
        try:
            for event in _events_noting_silence(sub, args.timeout, quiet):
                if not event.topic.startswith(tuple(topics)):
                    continue  # a heartbeat only subscribed to for _QuietNotice
                print(json.dumps(event.payload, separators=(",", ":")), flush=True)
                seen += 1
                if args.count is not None and seen >= args.count:
                    return 0
        except KeyboardInterrupt:
            return 0
    # Nothing at all, or fewer than asked for: a failure people and scripts can see.
    if seen == 0 or args.count is not None:
        print(f"streamd subscribe: {seen} event(s) from {endpoint} within {args.timeout or 0:g}s"
              + ("" if seen else " (is the daemon running, on this endpoint?)"),
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


SUBSCRIBE_QUIET_S = 5.0  # nothing at all this long (the daemon beats every 1 s): say so


class _QuietNotice:
    """Tells stderr, once, that nothing (not even a heartbeat) came from the endpoint,
    and once more when something does: a wrong or dead endpoint is otherwise silent."""

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint
        self._since = time.monotonic()
        self._warned = False
        self._heard = False

    def tick(self) -> None:
        quiet_s = time.monotonic() - self._since
        if not self._heard and not self._warned and quiet_s >= SUBSCRIBE_QUIET_S:
            self._warned = True
            print(f"streamd subscribe: no events from {self._endpoint} after {quiet_s:.0f} s: "
                  "is the daemon running, on this endpoint? still waiting...",
                  file=sys.stderr, flush=True)  # fmt: skip

    def event(self) -> None:
        if self._warned and not self._heard:
            print(f"streamd subscribe: events from {self._endpoint} arriving now",
                  file=sys.stderr, flush=True)  # fmt: skip
        self._heard = True


def _events_noting_silence(
    sub: Subscriber, timeout_s: float | None, quiet: _QuietNotice
) -> Iterator[Event]:
    """``sub``'s events until ``timeout_s`` (None: for ever), telling ``quiet`` as they come
    and once a second while none does."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while deadline is None or time.monotonic() < deadline:
        wait = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
        event = sub.recv(wait)
        if event is None:
            quiet.tick()
            continue
        quiet.event()
        yield event


def _subscribe_endpoint(target: str) -> str:
    """The ZeroMQ endpoint to connect to, from a pipeline file (its publish.endpoint, a
    wildcard bind read as this machine) or given directly."""
    if not (target.endswith((".yaml", ".yml", ".json")) or Path(target).is_file()):
        return target
    endpoint = load_config(target).publish.endpoint
    for wildcard in ("://*:", "://0.0.0.0:", "://[::]:"):
        endpoint = endpoint.replace(wildcard, "://127.0.0.1:")
    return endpoint


def _status_address(target: str) -> str:
    """HOST:PORT of the daemon's HTTP endpoint, from a pipeline file or given directly."""
    if target.endswith((".yaml", ".yml", ".json")) or Path(target).is_file():
        listen = load_config(target).http.listen
        if listen is None:
            raise ConfigError(target, [("http.listen", "the HTTP endpoint is turned off")])
        return listen
    return target


def _cmd_clips(args: argparse.Namespace) -> int:
    """List the event clips on disk of a pipeline's streams (no daemon needed)."""
    from streamd.clips import list_clips

    cfg = _load(args.file)
    if cfg is None:
        return EXIT_BAD_CONFIG
    streams = [s for s in cfg.streams if args.stream in (None, s.id)]
    if args.stream is not None and not streams:
        print(f"{args.file}: no stream {args.stream!r}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if not any(s.clips.enabled for s in streams):
        print("no stream has clips enabled (streams[i].clips.enabled)", file=sys.stderr)
    clips = list_clips(streams, cfg.journal.path)
    if args.json:
        print(json.dumps([c.as_dict() for c in clips], indent=2))
        return 0
    for c in clips:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.info.get("alert_ts", c.mtime)))
        duration = c.info.get("duration_s")
        length = f"{duration:6.1f}s" if isinstance(duration, int | float) else "     ?s"
        track = c.info.get("track_id", "?")
        print(f"{c.id}  {c.stream}  {when}  track {track}  {length}  {c.bytes / 1e6:7.2f} MB  "
              f"{c.path}")  # fmt: skip
    print(f"{len(clips)} clip(s)", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    from streamd.fleet.commands import cmd_fleet_status, status_targets

    targets = status_targets(args) or ["127.0.0.1:8090"]
    if len(targets) > 1 or args.fleet:
        try:
            return cmd_fleet_status(args, [_status_address(t) for t in targets])
        except ConfigError as e:
            print(e, file=sys.stderr)
            return EXIT_BAD_CONFIG
    try:
        address = _status_address(targets[0])
        token = args.token or os.environ.get("STREAMD_HTTP_TOKEN") or _file_token(targets[0])
    except ConfigError as e:
        print(e, file=sys.stderr)
        return EXIT_BAD_CONFIG
    try:
        request = urllib.request.Request(f"http://{address}/status")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=args.timeout) as r:
            status = json.load(r)
    except urllib.error.HTTPError as e:
        hint = " (its token: --token, STREAMD_HTTP_TOKEN or the file's http.token)"
        print(f"streamd status: the daemon on {address} answered {e.code} {e.reason}"
              f"{hint if e.code == 401 else ''}", file=sys.stderr)  # fmt: skip
        return 1
    except (urllib.error.URLError, OSError) as e:
        print(f"streamd status: no daemon answering on {address}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_status(status))
    return status_exit_code(status)


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {n}")
    return n


def _file_token(target: str) -> str | None:
    """The HTTP token of the pipeline file ``target`` names (None for an address)."""
    return load_config(target).http.token if Path(target).is_file() else None


EXIT_STREAMS_DOWN = 3  # `streamd status`: the daemon is healthy, but a camera is not streaming


def status_exit_code(status: dict[str, Any]) -> int:
    """0: healthy and every stream streaming; 1: unhealthy; 3: some stream down."""
    if not status.get("healthy"):
        return 1
    rows = status["streams"].values()
    return 0 if all(r.get("up", r.get("state") == "streaming") for r in rows) else EXIT_STREAMS_DOWN


STATUS_COLUMNS = ("STREAM", "STATE", "FOR", "REASON", "ATTEMPT", "RESTARTS", "FPS",
                  "ANALYSED", "DROPPED", "DEC_ERR")  # fmt: skip


def status_row(sid: str, s: dict[str, Any]) -> tuple[str, ...]:
    """One stream's cells under ``STATUS_COLUMNS``."""
    in_state = s.get("in_state_s")
    return (
        sid,
        s["state"] or "-",
        "-" if in_state is None else f"{in_state:.0f}s",
        s["reason"] or "-",
        str(s["attempt"]),
        str(s["restarts"]),
        f"{s['fps']:.1f}",
        str(s["analysed"]),
        str(sum(s["dropped"].values())),
        str(s["decode_errors"]),
    )


def format_status(status: dict[str, Any]) -> str:
    """A table of streams, one per line, for people."""
    cols = STATUS_COLUMNS
    rows = [cols, *(status_row(sid, s) for sid, s in status["streams"].items())]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    head = (
        f"backend {status.get('backend') or '-'}  uptime {status['uptime_s']:.0f}s  "
        f"{'healthy' if status.get('healthy') else _unhealthy(status)}"
    )
    down = [f"{sid}: DOWN, {s['problem']}" for sid, s in status["streams"].items()
            if s.get("problem")]  # fmt: skip
    return "\n".join([head, *lines, *down, *_analytics_lines(status)])


def _unhealthy(status: dict[str, Any]) -> str:
    problems = status.get("problems") or ["no heartbeat"]
    return f"UNHEALTHY ({'; '.join(problems)})"


def _analytics_lines(status: dict[str, Any]) -> list[str]:
    """Zone occupancy and line counts, one line per stream that has any."""
    out = []
    for sid, s in status["streams"].items():
        zones = [f"zone {n}: {c} inside" for n, c in (s.get("zones") or {}).items()]
        lines = [
            f"line {n}: in {c['in']} out {c['out']}" for n, c in (s.get("lines") or {}).items()
        ]
        if zones or lines:
            out.append(f"{sid}: " + ", ".join(zones + lines))
    return out


def _cmd_synth(args: argparse.Namespace) -> int:
    from streamd.synth import SceneSpec, write_scene

    spec = SceneSpec(
        width=args.width,
        height=args.height,
        fps=args.fps,
        seconds=args.seconds,
        people=args.people,
        seed=args.seed,
        kind=args.kind,
        noise=args.noise,
        light=args.light,
    )
    truth = write_scene(Path(args.out), spec)
    print(f"wrote {args.out} and {truth}")
    return 0


def _cmd_eval_tracking(args: argparse.Namespace) -> int:
    import yaml

    from streamd.evaluation.bench import EvalSpec, format_table, run
    from streamd.evaluation.targets import as_json, format_checks, judge

    configure_logging("WARNING", "eval")

    def split(v: str) -> tuple[str, ...]:
        return tuple(x for x in v.split(",") if x)

    spec = EvalSpec(
        weights=args.weights, scenes=split(args.scenes), loads=split(args.loads),
        kinds=split(args.kinds), imgsz=args.imgsz, conf=args.conf, backend=args.backend,
        tracker=yaml.safe_load(args.tracker) or {}, ultralytics=not args.no_ultralytics,
        workdir=Path(args.workdir) if args.workdir else None,
    )  # fmt: skip
    report = run(spec, say=lambda m: print(m, file=sys.stderr, flush=True))
    report["command"] = "streamd " + " ".join(sys.argv[1:])
    checks = judge(report["rows"], report["daemon_tracker"]["kind"])
    report["targets"] = as_json(checks)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(format_table(report))
    print(format_checks(checks))
    same = all(a["identical"] and a["scores_equal"] for a in report["agreement"])
    return 0 if same else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    from streamd.bench import BenchSpec, format_table, run

    configure_logging("WARNING", "bench")
    if args.decode_only:
        return _bench_decode(args)
    spec = BenchSpec(
        streams=args.streams,
        width=args.width,
        height=args.height,
        fps=args.fps,
        duration_s=args.duration,
        warmup_s=args.warmup,
        weights=args.weights,
        imgsz=args.imgsz,
        backend=args.backend,
        precision=args.precision,
        device=args.device,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        model_seconds=args.model_seconds,
        port=args.port,
        http_port=args.http_port,
        viewers=args.viewers,
        viewer_window_s=args.viewer_window,
        boxes=args.boxes,
        block=args.block,
        decode_in="detector" if args.decode_in == "inference" else "camera",
        vs_ultralytics=args.vs_ultralytics,
    )
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    report = run(spec, args.model_only, sizes)
    print(format_table(report))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def _bench_decode(args: argparse.Namespace) -> int:
    from streamd.decode_bench import DecodeBenchSpec, DecoderUnavailable, format_line, run_decode

    width, _, height = args.decode_size.partition("x")
    spec = DecodeBenchSpec(decoder=args.decoder, threads=args.threads, decode_in=args.decode_in,
                           clip=args.clip, width=int(width), height=int(height),
                           duration_s=args.duration,
                           bgr=not args.no_bgr)  # fmt: skip
    try:
        report = run_decode(spec, Path(args.workdir))
    except DecoderUnavailable as e:
        print(e, file=sys.stderr)
        return 2
    print(format_line(report))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _cmd_view(args: argparse.Namespace) -> int:
    from streamd.view.viewer import mjpeg_url, view

    try:
        address = _status_address(args.target)
        token = _file_token(args.target)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return EXIT_BAD_CONFIG
    url = mjpeg_url(address, args.stream, args.token or token)
    return view(url, args.out, args.seconds, args.fps)


def _cmd_export_engine(args: argparse.Namespace) -> int:
    configure_logging("INFO", "export")
    cfg = _load(args.file)
    if cfg is None:
        return EXIT_BAD_CONFIG
    from streamd.detect import DetectorError
    from streamd.detect.factory import export_model

    try:
        path = export_model(cfg.model, cfg.batching.max_batch, args.format)
    except DetectorError as e:
        print(f"export-engine: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(path)
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    configure_logging("INFO", "calibrate")
    cfg = _load(args.file)
    if cfg is None:
        return EXIT_BAD_CONFIG
    from streamd.calibrate import calibrate, format_outcome
    from streamd.detect import DetectorError

    try:
        outcome = calibrate(cfg, Path(args.file), args.frames, args.seconds)
    except (DetectorError, RuntimeError) as e:
        print(f"calibrate: {e}", file=sys.stderr)
        return 1
    print(format_outcome(outcome))
    return 0


def _parse_shard(text: str) -> Any:
    from streamd.fleet.commands import parse_shard

    return parse_shard(text)


def _cmd_shards(args: argparse.Namespace) -> int:
    from streamd.fleet.commands import cmd_shards

    return cmd_shards(args)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streamd")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamd", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a pipeline until Ctrl-C/SIGTERM")
    run.add_argument("file", help="pipeline YAML file")
    run.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(func=_cmd_run)

    val = sub.add_parser("validate", help="check a pipeline file; exit 2 naming the bad key")
    val.add_argument("file")
    val.add_argument("--shard", type=_parse_shard, default=None, metavar="I/N",
                     help="also list the streams shard I of N runs")  # fmt: skip
    val.set_defaults(func=_cmd_validate)

    sh = sub.add_parser("shards", help="which instance (shard) runs each stream")
    sh.add_argument("file", help="pipeline YAML file")
    sh.add_argument("--count", type=int, default=None,
                    help="shards (default: the file's shard.count; shows what moves)")  # fmt: skip
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=_cmd_shards)

    s = sub.add_parser("subscribe", help="print events as JSON lines")
    s.add_argument("endpoint", nargs="?", default="tcp://127.0.0.1:5556",
                   help="a pipeline file (its publish.endpoint) or ZeroMQ endpoint")  # fmt: skip
    s.add_argument("--topic", action="append", help="topic prefix filter, e.g. det. (repeatable)")
    s.add_argument("--count", type=_positive_int, default=None, help="exit after N events")
    s.add_argument("--timeout", type=float, default=None,
                   help="stop after this many seconds (exit 1 if no event came)")  # fmt: skip
    s.add_argument("--client-key", help="security.curve: this client's .key_secret file")
    s.add_argument("--server-key", help="security.curve: the daemon's public .key file")
    s.add_argument(
        "--nats",
        action="append",
        metavar="URL",
        help="the whole fleet's events from NATS JetStream instead (repeatable)",
    )
    s.add_argument("--jetstream", default="STREAMD", help="--nats: the JetStream stream")
    s.add_argument(
        "--kind",
        action="append",
        choices=["alert", "track", "det"],
        help="--nats: event kinds (default alert and track; repeatable)",
    )
    s.set_defaults(func=_cmd_subscribe)

    k = sub.add_parser(
        "keys", help="make CURVE key pairs (NAME.key public, NAME.key_secret 0600) in DIR"
    )
    k.add_argument("dir", help="folder to write into (made if missing)")
    k.add_argument("names", nargs="+", metavar="NAME", help="e.g. server, or a client's name")
    k.set_defaults(func=_cmd_keys)

    st = sub.add_parser("status", help="show every stream's state from a running daemon")
    st.add_argument(
        "target",
        nargs="*",
        help="the pipeline file (its http.listen is used) or HOST:PORT (default "
        "127.0.0.1:8090); several: the fleet in one table",
    )
    st.add_argument("--fleet", help="a file of instances, HOST:PORT per line")
    st.add_argument("--token", help="http.token (default: $STREAMD_HTTP_TOKEN)")
    st.add_argument("--json", action="store_true", help="print the raw /status JSON")
    st.add_argument("--timeout", type=float, default=5.0)
    st.set_defaults(func=_cmd_status)

    cl = sub.add_parser("clips", help="list the event clips a pipeline's streams wrote")
    cl.add_argument("file", help="pipeline YAML file (its streams' clips.dir)")
    cl.add_argument("--stream", default=None, help="only this stream's clips")
    cl.add_argument("--json", action="store_true", help="one JSON list, with each clip's details")
    cl.set_defaults(func=_cmd_clips)

    b = sub.add_parser("bench", help="measure pipeline and detector throughput and latency")
    b.add_argument("--model-only", action="store_true", help="detector throughput by batch size")
    b.add_argument("--batch-sizes", default="1,2,4,8", help="--model-only: comma-separated")
    b.add_argument("--streams", type=int, default=2)
    b.add_argument("--width", type=int, default=640)
    b.add_argument("--height", type=int, default=360)
    b.add_argument("--fps", type=int, default=15, help="each stream's live frame rate")
    b.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    b.add_argument("--warmup", type=float, default=5.0, help="seconds ignored after first event")
    b.add_argument("--weights", default="models/person-yolov8s.pt")
    b.add_argument("--imgsz", type=int, default=320)
    b.add_argument(
        "--backend",
        default="auto",
        help="auto, torch, onnx, openvino, tensorrt, cpu, or null (no model: the host path)",
    )
    b.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16", "int8"],
        help="model.precision; auto and int8 calibrate on the bench clip (guarded)",
    )
    b.add_argument("--boxes", type=int, default=10, help="--backend null: boxes per frame")
    b.add_argument(
        "--block",
        action="store_true",
        help="files read as fast as the pipeline takes them (drop_policy block) "
        "instead of live-paced",
    )
    b.add_argument("--vs-ultralytics", action="store_true",
                   help="then an ultralytics track() loop per stream on the same clip")  # fmt: skip
    b.add_argument("--device", default="auto")
    b.add_argument("--max-batch", type=int, default=8)
    b.add_argument("--max-wait-ms", type=float, default=10.0)
    b.add_argument("--model-seconds", type=float, default=8.0, help="detector-alone run per size")
    b.add_argument("--port", type=int, default=5599, help="ZeroMQ port of the benchmark daemon")
    b.add_argument("--http-port", type=int, default=8099)
    b.add_argument("--viewers", type=int, default=0,
                   help="live-view clients on stream s0, on and off in turns")  # fmt: skip
    b.add_argument("--viewer-window", type=float, default=10.0, help="seconds per turn")
    b.add_argument("--out", default="bench.json", help="JSON results file")
    b.add_argument(
        "--decode-only",
        action="store_true",
        help="decoding alone: frames/s of --threads decoders at once",
    )
    b.add_argument(
        "--decoder",
        choices=["cpu", "nvdec"],
        default="cpu",
        help="--decode-only: PyAV on the CPU or NVDEC (exit 2 where unavailable)",
    )
    b.add_argument("--threads", type=int, default=1, help="--decode-only: decoders at once")
    b.add_argument(
        "--decode-in",
        choices=["worker", "inference"],
        default="worker",
        help="a process per decoder (camera processes) or threads of one process "
        "(decoding in the detector's process); the pipeline bench: its streams' decode_in "
        "camera or detector",
    )
    b.add_argument(
        "--clip",
        default=None,
        help="--decode-only: the clip (default: synthetic H.264, --decode-size)",
    )
    b.add_argument("--decode-size", default="1920x1080", help="--decode-only: synthetic clip")
    b.add_argument(
        "--no-bgr",
        action="store_true",
        help="--decode-only: count decoded pictures without the BGR conversion",
    )
    b.add_argument(
        "--workdir",
        default=str(Path.home() / ".cache" / "streamd" / "bench"),
        help="--decode-only: where the synthetic clip is kept",
    )
    b.set_defaults(func=_cmd_bench)

    v = sub.add_parser("view", help="watch a stream's annotated live view (or record it)")
    v.add_argument("stream")
    v.add_argument("target", nargs="?", default="127.0.0.1:8090",
                   help="the pipeline file (its http.listen and token) or HOST:PORT")  # fmt: skip
    v.add_argument("--out", help="write an MP4 file instead of opening a window")
    v.add_argument("--seconds", type=float, default=None, help="stop after this long")
    v.add_argument("--fps", type=float, default=10.0, help="--out: the file's frame rate")
    v.add_argument("--token", default=None, help="http.token, when HOST:PORT is given")
    v.set_defaults(func=_cmd_view)

    ex = sub.add_parser(
        "export-engine",
        help="build the pipeline's TensorRT engine (or ONNX export) into the model cache now",
    )
    ex.add_argument("file", help="pipeline YAML file (its model and batching.max_batch)")
    ex.add_argument("--format", choices=["engine", "onnx"], default="engine")
    ex.set_defaults(func=_cmd_export_engine)

    cal = sub.add_parser(
        "calibrate",
        help="sample frames from the pipeline's streams, build and check its INT8 model",
    )
    cal.add_argument("file", help="pipeline YAML file")
    cal.add_argument("--frames", type=int, default=256,
                     help="frames in the set, over all streams (every 4th held out: 64 by "
                          "default, enough for the guard's verdict to hold)")  # fmt: skip
    cal.add_argument("--seconds", type=float, default=60.0,
                     help="span of each stream's time to spread them over")  # fmt: skip
    cal.set_defaults(func=_cmd_calibrate)

    syn = sub.add_parser("synth", help="write a synthetic H.264 scene with ground truth")
    syn.add_argument("out", help="output .mp4 (ground truth goes to .truth.json beside it)")
    syn.add_argument("--width", type=int, default=640)
    syn.add_argument("--height", type=int, default=360)
    syn.add_argument("--fps", type=int, default=15)
    syn.add_argument("--seconds", type=float, default=4.0)
    syn.add_argument("--people", type=int, default=2)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument(
        "--kind",
        choices=["lanes", "crowd"],
        default="lanes",
        help="lanes: one lane each; crowd: crossing, occluding, entering, leaving",
    )
    syn.add_argument("--noise", type=float, default=0.0, help="sensor noise (grey levels)")
    syn.add_argument("--light", type=float, default=0.0, help="share the light dims mid-clip")
    syn.set_defaults(func=_cmd_synth)

    ev = sub.add_parser("eval-tracking", help="score tracking (MOTA/IDF1/HOTA) on scenes")
    ev.add_argument("--scenes", default="crowd",
                    help="comma-separated: crowd, crowd2 ... crowd8, short")  # fmt: skip
    ev.add_argument("--loads", default="every,fps5,overload")
    ev.add_argument("--kinds", default="bytetrack,ocsort,botsort,sort",
                    help="tracker kinds replayed on the daemon's detections")  # fmt: skip
    ev.add_argument("--weights", default="models/person-yolov8s.pt")
    ev.add_argument("--imgsz", type=int, default=640)
    ev.add_argument("--conf", type=float, default=0.25)
    ev.add_argument("--backend", default="auto")
    ev.add_argument(
        "--tracker",
        default="{}",
        help="the daemon's tracker section as YAML/JSON, e.g. '{kind: ocsort}'",
    )
    ev.add_argument("--no-ultralytics", action="store_true", help="skip the track() loop")
    ev.add_argument("--workdir", help="keep clips and daemon logs here (default: a temp dir)")
    ev.add_argument("--out", default="eval-tracking.json", help="JSON report")
    ev.set_defaults(func=_cmd_eval_tracking)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
