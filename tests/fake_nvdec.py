"""A stand-in for the NVDEC hardware we do not have: the :class:`NvBackend` protocol,
"decoding" with PyAV's software decoder underneath, so frames are real and comparable.

Like NVDEC's parser it is given nothing but the packets' bytes (no extradata), so
it only decodes what arrives as Annex B with the parameter sets in band: a packet
the adapter forgot to convert fails here as it would on the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import av
import numpy as np
import numpy.typing as npt
import torch

from streamd.sources.nvdec import (
    NO_PTS,
    NvCodec,
    NvdecBitstreamError,
    NvdecDeviceError,
    NvdecUnavailable,
    NvDeviceFrame,
    NvDeviceSession,
    NvFrame,
    NvSession,
)


@dataclass(frozen=True, slots=True)
class FakeFrame:
    pts: int
    data: npt.NDArray[np.uint8]

    def nv12(self) -> npt.NDArray[np.uint8]:
        return self.data


@dataclass
class FakeSession:
    codec: NvCodec
    low_latency: bool = False  # PyAV's decoder underneath outputs as early as it can anyway
    device_error_at: int | None = None  # the device dies when this packet (0-based) arrives
    fed: list[tuple[int, int]] = field(default_factory=list)  # (size, pts) in feeding order
    flushes: int = 0
    closed: bool = False

    def __post_init__(self) -> None:
        self._ctx = av.CodecContext.create(self.codec, "r")

    def decode(self, data: bytes, pts: int) -> list[NvFrame]:
        assert not self.closed, "fed after close"
        if self.device_error_at is not None and len(self.fed) >= self.device_error_at:
            raise NvdecDeviceError("CUDA_ERROR_LAUNCH_FAILED (fake)")
        self.fed.append((len(data), pts))
        packet = av.Packet(data)
        packet.pts = None if pts == NO_PTS else pts
        try:
            return self._frames(self._ctx.decode(packet))
        except av.FFmpegError as e:
            raise NvdecBitstreamError(str(e)) from e

    def flush(self) -> list[NvFrame]:
        self.flushes += 1
        return self._frames(self._ctx.decode(None))

    def close(self) -> None:
        self.closed = True

    @staticmethod
    def _frames(frames: list[av.VideoFrame]) -> list[NvFrame]:
        out: list[NvFrame] = []
        for f in frames:
            nv12 = np.ascontiguousarray(f.reformat(format="nv12").to_ndarray(), dtype=np.uint8)
            out.append(FakeFrame(NO_PTS if f.pts is None else int(f.pts), nv12))
        return out


@dataclass
class FakeBackend:
    """Opens :class:`FakeSession`s; ``open_error`` makes every open fail as a driver would."""

    name: str = "fake"
    open_error: str | None = None
    device_error_at: int | None = None
    sessions: list[FakeSession] = field(default_factory=list)

    def open_device(self, codec: NvCodec, gpu_id: int, low_latency: bool) -> NvDeviceSession:
        raise NvdecUnavailable("host output only (FakeDeviceBackend has device output)")

    def open(self, codec: NvCodec, gpu_id: int, low_latency: bool = False) -> NvSession:
        if self.open_error is not None:
            raise NvdecUnavailable(self.open_error)
        session = FakeSession(codec, low_latency, self.device_error_at)
        self.sessions.append(session)
        return session


@dataclass(frozen=True, slots=True)
class FakeDeviceFrame:
    """A picture "in device memory": a torch tensor (on the CPU here), as the detector's
    decode threads get them from NVDEC with ``usedevicememory``."""

    pts: int
    data: torch.Tensor

    def tensor(self) -> torch.Tensor:
        return self.data


@dataclass
class FakeDeviceSession:
    host: FakeSession
    raise_at: int | None = None  # any exception (not the library's) at this packet

    def decode(self, data: bytes, pts: int) -> list[NvDeviceFrame]:
        if self.raise_at is not None and len(self.host.fed) >= self.raise_at:
            raise RuntimeError("an unexpected error inside the binding (fake)")
        return self._device(self.host.decode(data, pts))

    def flush(self) -> list[NvDeviceFrame]:
        return self._device(self.host.flush())

    def close(self) -> None:
        self.host.close()

    @staticmethod
    def _device(frames: list[NvFrame]) -> list[NvDeviceFrame]:
        return [FakeDeviceFrame(f.pts, torch.from_numpy(f.nv12().copy())) for f in frames]


@dataclass
class FakeDeviceBackend(FakeBackend):
    """:class:`FakeBackend` that also opens device-memory sessions."""

    raise_at: int | None = None
    device_sessions: list[FakeDeviceSession] = field(default_factory=list)

    def open_device(self, codec: NvCodec, gpu_id: int, low_latency: bool) -> NvDeviceSession:
        host = self.open(codec, gpu_id, low_latency)
        assert isinstance(host, FakeSession)
        session = FakeDeviceSession(host, self.raise_at)
        self.device_sessions.append(session)
        return session
