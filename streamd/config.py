"""Pipeline configuration: strict pydantic schema and safe YAML loading.

A bad file is refused before anything starts, with the dotted path of the
offending key and the reason (see :class:`ConfigError`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from streamd.analytics.config import JournalConfig, LineConfig, TracksConfig, ZoneConfig
from streamd.runtime.redact import redact_url

STREAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

DropPolicy = Literal["latest", "oldest", "block"]
SourceKind = Literal["file", "rtsp", "http", "webcam"]


class ConfigError(Exception):
    """A pipeline file that cannot be used; ``problems`` are (key path, reason)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {path or '<root>'}: {reason}" for path, reason in problems]
        super().__init__("\n".join(lines))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    weights: str = Field(
        "yolo11n.pt",
        description="Ultralytics checkpoint: a path (relative to the pipeline file) or a "
        "name ultralytics can fetch on a machine with internet.",
    )
    backend: Literal["auto", "tensorrt", "torch", "onnx", "cpu", "null"] = Field(
        "auto",
        description="Detector backend. auto: TensorRT on CUDA when installed, else torch FP16 "
        "with CUDA graphs on CUDA; without CUDA onnxruntime when installed (faster than torch "
        "on CPUs), else torch. cpu = torch on the CPU. null = no model: null_boxes moving "
        "boxes per frame, to measure the host path (auto never picks it).",
    )
    null_boxes: int = Field(
        10, ge=0, le=1000, description="backend null: boxes returned per frame."
    )
    precision: Literal["fp16", "int8", "fp32"] = Field(
        "fp16", description="TensorRT engine precision (int8 needs model.calibration)."
    )
    calibration: str | None = Field(
        None, description="Folder of .jpg/.png images for TensorRT INT8 calibration."
    )
    cuda_graphs: bool = Field(
        True, description="torch on CUDA: replay one CUDA graph per batch-size bucket."
    )
    threads: int = Field(
        0, ge=0, le=256, description="onnxruntime CPU threads; 0 = one per physical core."
    )
    cache_dir: str | None = Field(
        None,
        description="Where ONNX exports and TensorRT engines are cached "
        "(default ~/.cache/streamd/models).",
    )
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    imgsz: int = Field(640, ge=32, le=4096, multiple_of=32, description="Inference size.")
    conf: float = Field(0.25, gt=0.0, le=1.0, description="Minimum detection confidence.")
    iou: float = Field(0.7, gt=0.0, le=1.0, description="NMS IoU threshold.")
    classes: list[str] | None = Field(
        None, description="Class names to keep (checked against the model at start-up)."
    )

    @field_validator("backend", mode="before")
    @classmethod
    def _yaml_null(cls, v: object) -> object:
        # YAML reads a bare `backend: null` as None: that is the null backend too.
        return "null" if v is None else v


class TrackerConfig(_Strict):
    """ByteTrack settings; thresholds must suit the detector's confidence range."""

    activation_threshold: float = Field(0.5, gt=0.0, le=1.0)
    high_conf_threshold: float = Field(0.5, gt=0.0, le=1.0)
    min_iou: float = Field(0.1, ge=0.0, le=1.0)
    lost_track_s: float = Field(1.0, gt=0.0, description="Keep a lost track this long.")
    min_consecutive_frames: int = Field(2, ge=1)


class BatchingConfig(_Strict):
    max_batch: int = Field(8, ge=1, le=256, description="Frames per detector call at most.")
    max_wait_ms: float = Field(
        10.0,
        ge=0.0,
        le=1000.0,
        description="Send a partial batch once its oldest frame waited this long.",
    )


class PublishConfig(_Strict):
    endpoint: str = Field("tcp://127.0.0.1:5556", description="ZeroMQ PUB bind endpoint.")
    hwm: int = Field(1000, ge=1, description="Send high-water mark per subscriber.")
    sndbuf_kib: int = Field(
        256,
        ge=0,
        le=65536,
        description="Kernel send buffer per subscriber connection (0 = the OS default, which "
        "can hold megabytes of stale events for a stalled subscriber).",
    )
    heartbeat_s: float = Field(1.0, gt=0.0, le=60.0)

    @field_validator("endpoint")
    @classmethod
    def _zmq_endpoint(cls, v: str) -> str:
        # inproc:// cannot work: the publisher lives in the inference process.
        if not re.match(r"^(tcp|ipc)://.+", v):
            raise ValueError("must look like tcp://HOST:PORT or ipc://PATH")
        return v


class HttpConfig(_Strict):
    """The daemon's HTTP endpoint: live view (``/``), ``/status``, ``/metrics``, ``/healthz``."""

    listen: str | None = Field(
        "127.0.0.1:8090",
        description="HOST:PORT to serve on (loopback by default); null turns it off.",
    )
    token: str | None = Field(
        None,
        description="Bearer token every request must carry (Authorization: Bearer, or "
        "?token=); required when listen is not a loopback address. Use ${ENV}.",
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$", v):
            raise ValueError("must look like HOST:PORT, e.g. 127.0.0.1:8090")
        return v

    @model_validator(mode="after")
    def _token_off_loopback(self) -> HttpConfig:
        if self.listen is not None and self.token is None and not _loopback(self.listen):
            raise ValueError(
                f"listen {self.listen} is reachable from other machines: set http.token "
                "(the live view and status would otherwise be open to anyone)"
            )
        return self


def _loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


class OverlayConfig(_Strict):
    """The annotated live view: only drawn and encoded while someone watches."""

    max_fps: float = Field(10.0, gt=0.0, le=60.0, description="Annotated frames/s per stream.")
    jpeg_quality: int = Field(75, ge=10, le=100)
    trace_s: float = Field(2.0, ge=0.0, le=30.0, description="Motion trace length (seconds).")


class SupervisorConfig(_Strict):
    """Restart policy for crashed source workers."""

    max_restarts: int = Field(
        5, ge=0, description="Restarts allowed within restart_window_s before 'failed'."
    )
    restart_window_s: float = Field(60.0, gt=0.0)


class ReconnectConfig(_Strict):
    """Capped exponential backoff with jitter between connection attempts."""

    initial_s: float = Field(1.0, gt=0.0, le=3600.0, description="First retry delay.")
    max_s: float = Field(30.0, gt=0.0, le=3600.0, description="Delay cap.")
    max_attempts: int = Field(
        -1, ge=-1, description="Retries after a failure before 'failed'; -1 = forever."
    )

    @model_validator(mode="after")
    def _ordered(self) -> ReconnectConfig:
        if self.max_s < self.initial_s:
            raise ValueError("max_s must be >= initial_s")
        return self


_KIND_OF_OPTION: dict[str, SourceKind] = {
    "loop": "file",
    "realtime": "file",
    "transport": "rtsp",
    "width": "webcam",
    "height": "webcam",
    "fps": "webcam",
}


class StreamConfig(_Strict):
    id: str = Field(..., pattern=STREAM_ID_PATTERN, description="Unique stream id (topic suffix).")
    url: str = Field(
        ..., min_length=1, description="rtsp://, http(s)://, file:PATH, a path, or a webcam index."
    )
    loop: bool = Field(False, description="Files: start again at the end.")
    realtime: bool = Field(False, description="Files: pace reading at the file's own frame rate.")
    drop_policy: DropPolicy | None = Field(
        None,
        description="latest (live default: a newer frame replaces an unanalysed one), oldest "
        "(queued frames are kept, new ones dropped while the ring is full) or block (default "
        "for files read as fast as possible: never drop, slow the reader).",
    )
    buffer: int = Field(4, ge=2, le=256, description="Frame ring slots (bounded memory).")
    max_fps: float | None = Field(
        None, gt=0.0, le=1000.0, description="Analyse at most this many frames per second."
    )
    max_latency_ms: float | None = Field(
        None,
        gt=0.0,
        le=600_000.0,
        description="Drop (as stale) a frame older than this when it would enter a batch.",
    )
    transport: Literal["tcp", "udp"] | None = Field(
        None, description="RTSP only: RTP over the RTSP TCP connection (default) or UDP."
    )
    width: int | None = Field(None, ge=16, le=8192, description="Webcams: capture width.")
    height: int | None = Field(None, ge=16, le=8192, description="Webcams: capture height.")
    fps: float | None = Field(None, gt=0.0, le=1000.0, description="Webcams: capture rate.")
    open_timeout_s: float = Field(
        10.0, gt=0.0, le=600.0, description="Give up opening (connect + probe) after this."
    )
    stall_timeout_s: float = Field(
        10.0, gt=0.0, le=600.0, description="No frame for this long: 'stalled', then reconnect."
    )
    on_corrupt: Literal["drop", "conceal"] = Field(
        "drop",
        description="drop: a frame the decoder reports damaged is skipped and counted; "
        "conceal: keep the decoder's error-concealed picture.",
    )
    reconnect: ReconnectConfig = Field(default_factory=lambda: ReconnectConfig())
    zones: list[ZoneConfig] = Field(default_factory=list, description="Polygon zones and rules.")
    lines: list[LineConfig] = Field(default_factory=list, description="Counting lines.")

    @field_validator("zones", "lines")
    @classmethod
    def _unique_names(cls, regions: list[ZoneConfig] | list[LineConfig]) -> object:
        names = [r.name for r in regions]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate names {dup}")
        return regions

    @field_validator("loop", "realtime", "transport", "width", "height", "fps")
    @classmethod
    def _applies_to_kind(cls, v: object, info: ValidationInfo) -> object:
        # Checked per key so the error names the key the user wrote.
        url = info.data.get("url")
        if url is None or v in (None, False):
            return v
        kind = source_kind(url)
        wanted = _KIND_OF_OPTION[str(info.field_name)]
        if kind != wanted:
            raise ValueError(f"applies to {wanted} sources only (this url is a {kind} source)")
        return v

    @field_validator("max_latency_ms")
    @classmethod
    def _block_never_drops(cls, v: float | None, info: ValidationInfo) -> float | None:
        url = info.data.get("url")
        if v is not None and url is not None:
            policy = _effective_policy(
                url, info.data.get("realtime", False), info.data.get("drop_policy")
            )
            if policy == "block":
                raise ValueError(
                    "the block drop policy never drops, so it cannot drop stale frames "
                    "(use drop_policy: latest or oldest, or remove max_latency_ms)"
                )
        return v

    @model_validator(mode="after")
    def _size_pairs(self) -> StreamConfig:
        if (self.width is None) != (self.height is None):
            raise ValueError("width and height go together")
        return self

    @property
    def kind(self) -> SourceKind:
        return source_kind(self.url)

    @property
    def is_file(self) -> bool:
        return self.kind == "file"

    @property
    def effective_drop_policy(self) -> DropPolicy:
        return _effective_policy(self.url, self.realtime, self.drop_policy)


class PipelineConfig(_Strict):
    model: ModelConfig = Field(default_factory=lambda: ModelConfig())
    tracker: TrackerConfig = Field(default_factory=lambda: TrackerConfig())
    batching: BatchingConfig = Field(default_factory=lambda: BatchingConfig())
    publish: PublishConfig = Field(default_factory=lambda: PublishConfig())
    http: HttpConfig = Field(default_factory=lambda: HttpConfig())
    supervisor: SupervisorConfig = Field(default_factory=lambda: SupervisorConfig())
    tracks: TracksConfig = Field(default_factory=lambda: TracksConfig())
    overlay: OverlayConfig = Field(default_factory=lambda: OverlayConfig())
    journal: JournalConfig = Field(default_factory=lambda: JournalConfig())
    streams: Annotated[list[StreamConfig], Field(min_length=1)]

    @field_validator("streams")
    @classmethod
    def _unique_ids(cls, streams: list[StreamConfig]) -> list[StreamConfig]:
        seen: set[str] = set()
        for s in streams:
            if s.id in seen:
                raise ValueError(f"duplicate stream id {s.id!r}")
            seen.add(s.id)
        return streams


def _effective_policy(url: str, realtime: bool, policy: DropPolicy | None) -> DropPolicy:
    if policy is not None:
        return policy
    return "block" if source_kind(url) == "file" and not realtime else "latest"


def source_kind(url: str) -> SourceKind:
    lower = url.lower()
    if lower.startswith(("rtsp://", "rtsps://")):
        return "rtsp"
    if lower.startswith(("http://", "https://")):
        return "http"
    if url.isdigit() or url.startswith("/dev/video"):
        return "webcam"
    return "file"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of keeping the last."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        out[key] = loader.construct_object(value_node)
    return out


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _substitute_env(
    node: Any, path: str, env: Mapping[str, str], problems: list[tuple[str, str]]
) -> Any:
    if isinstance(node, dict):
        return {
            k: _substitute_env(v, f"{path}.{k}" if path else str(k), env, problems)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_substitute_env(v, f"{path}.{i}", env, problems) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append((path, f"environment variable {name} is not set"))
        return ""

    return _ENV_REF.sub(repl, node)


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc)


def parse_config(
    text: str, source: str = "<string>", env: Mapping[str, str] | None = None
) -> PipelineConfig:
    """Parse and validate pipeline YAML; raise :class:`ConfigError` on any problem."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.constructor.ConstructorError as e:
        where = f"line {e.problem_mark.line + 1}" if e.problem_mark else ""
        reason = e.problem or str(e)
        if "could not determine a constructor" in reason:
            reason = f"YAML tags that are not plain data are refused ({reason})"
        raise ConfigError(source, [(where, reason)]) from None
    except yaml.YAMLError as e:
        raise ConfigError(source, [("", f"invalid YAML: {e}")]) from None
    if not isinstance(raw, dict):
        raise ConfigError(source, [("", "the file must be a mapping with at least 'streams'")])
    problems: list[tuple[str, str]] = []
    data = _substitute_env(raw, "", os.environ if env is None else env, problems)
    if problems:
        raise ConfigError(source, problems)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        errs = [(_loc_to_path(err["loc"]), _redacted_reason(err)) for err in e.errors()]
        raise ConfigError(source, errs) from None


def _redacted_reason(err: Any) -> str:
    # pydantic echoes the input in some messages; a URL may carry a password.
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    return redact_url(msg.removeprefix("Value error, "))


def resolve_paths(cfg: PipelineConfig, base_dir: Path, name: str = "pipeline") -> PipelineConfig:
    """Resolve file URLs, weights and the journal relative to the pipeline file's folder."""
    streams = [
        s.model_copy(update={"url": _resolve_file_url(s.url, base_dir)}) for s in cfg.streams
    ]
    model = cfg.model.model_copy(
        update={
            "weights": _relative_to(cfg.model.weights, base_dir),
            "calibration": cfg.model.calibration and _relative_to(cfg.model.calibration, base_dir),
        }
    )
    journal = cfg.journal.model_copy(
        update={"path": _journal_path(cfg.journal.path, base_dir, name)}
    )
    return cfg.model_copy(update={"streams": streams, "model": model, "journal": journal})


def _journal_path(path: str | None, base_dir: Path, name: str) -> str:
    if path is not None:
        return str((base_dir / path).resolve()) if not Path(path).is_absolute() else path
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(state) / "streamd" / f"{name}.alerts.sqlite")


def _relative_to(path: str, base_dir: Path) -> str:
    # A name that is not there (e.g. "yolo11n.pt") is left for ultralytics to fetch.
    candidate = base_dir / path
    return str(candidate.resolve()) if not Path(path).is_absolute() and candidate.exists() else path


def _resolve_file_url(url: str, base_dir: Path) -> str:
    if source_kind(url) != "file":
        return url
    path = Path(url.removeprefix("file://").removeprefix("file:"))
    if not path.is_absolute():
        path = base_dir / path
    return str(path.resolve())


def load_config(path: str | Path) -> PipelineConfig:
    """Load, validate and resolve a pipeline file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(p), [("", f"cannot read file: {e.strerror}")]) from None
    return resolve_paths(parse_config(text, source=str(p)), p.parent, p.stem)
