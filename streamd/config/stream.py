"""The ``streams`` entries: one video source each, its reconnect policy, zones and lines."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from streamd.config.analytics import LineConfig, ZoneConfig
from streamd.config.base import DropPolicy, SourceKind, _Strict, source_kind
from streamd.config.clips import ClipsConfig
from streamd.config.urls import url_problem

STREAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


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
    decode: Literal["auto", "cpu", "nvdec"] = Field(
        "auto",
        description="auto: NVDEC for H.264/H.265 where PyNvVideoCodec and a CUDA device are "
        "present, else the CPU; cpu: PyAV/ffmpeg always; nvdec: NVDEC (start-up is refused "
        "where it is unavailable; a device that fails later falls back to the CPU, counted).",
    )
    decode_in: Literal["camera", "detector"] = Field(
        "camera",
        description="Where NVDEC decodes this stream: camera (its own process; frames to the "
        "host and through the shared-memory ring) or detector (threads of the detector "
        "process: compressed packets go there and the pictures stay in GPU memory, one CUDA "
        "context for all such streams). Only for decode auto/nvdec; a stream on the CPU "
        "decodes in its camera process either way. Read at start-up: a stream added or "
        "changed at runtime (API, SIGHUP) decodes in its camera process until the next "
        "start, and the appearance cue of tracking is off for detector-decoded streams.",
    )
    decode_threads: int = Field(
        0,
        ge=0,
        le=32,
        description="CPU decoder threads of this stream (ffmpeg's frame threads: each adds "
        "a frame of delay and its own reference pictures). 0 = auto: the cores this process "
        "may use (affinity, a container's CPU limit) shared among the streams decoded in "
        "their cameras, 1 to 4 each (ffmpeg's own default, a thread per core "
        "for every stream, took 100 1080p cameras on 16 cores to 104 of 126 GiB).",
    )
    reconnect: ReconnectConfig = Field(default_factory=lambda: ReconnectConfig())
    zones: list[ZoneConfig] = Field(default_factory=list, description="Polygon zones and rules.")
    lines: list[LineConfig] = Field(default_factory=list, description="Counting lines.")
    clips: ClipsConfig = Field(
        default_factory=lambda: ClipsConfig(), description="MP4 clips around alerts."
    )

    @field_validator("url")
    @classmethod
    def _well_formed(cls, url: str) -> str:
        problem = url_problem(url)
        if problem is not None:
            raise ValueError(problem)
        return url

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

    @field_validator("decode_in")
    @classmethod
    def _decoded_by_nvdec(cls, v: str, info: ValidationInfo) -> str:
        if v == "detector" and info.data.get("decode") == "cpu":
            raise ValueError("decode_in: detector is NVDEC's (decode: auto or nvdec), not cpu's")
        return v

    @model_validator(mode="after")
    def _size_pairs(self) -> StreamConfig:
        if (self.width is None) != (self.height is None):
            raise ValueError("width and height go together")
        return self

    @property
    def effective_drop_policy(self) -> DropPolicy:
        return _effective_policy(self.url, self.realtime, self.drop_policy)


def _effective_policy(url: str, realtime: bool, policy: DropPolicy | None) -> DropPolicy:
    if policy is not None:
        return policy
    return "block" if source_kind(url) == "file" and not realtime else "latest"
