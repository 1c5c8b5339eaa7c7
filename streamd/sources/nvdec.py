"""NVDEC decode for a camera's process: PyAV demuxes, PyNvVideoCodec decodes.

Only :class:`PyNvBackend` touches PyNvVideoCodec; everything else talks to the
:class:`NvBackend` protocol, so the adapter (packet feeding, Annex B, pts,
flushing, falling back to the CPU) is tested on the CPU against a fake backend
(``tests/fake_nvdec.py``) and a GPU session only has the thin shim to fix.

Frames come back to host memory as NV12 and become BGR with OpenCV, so they go
through the shared-memory ring like CPU-decoded frames (docs/architecture.md,
"NVDEC decode", says why and what the GPU-resident path will change).
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal, Protocol

import av
import av.bitstream
import cv2
import numpy as np
import numpy.typing as npt

from streamd import metrics
from streamd.config import StreamConfig
from streamd.sources.reader import (
    CpuDecoder,
    CpuFromKeyframe,
    DecodeCounters,
    FrameDecoder,
    Picture,
)

if TYPE_CHECKING:  # camera processes do not import torch: only the detector's decode threads
    import torch

log = logging.getLogger(__name__)

DecodeMode = Literal["auto", "cpu", "nvdec"]
NvCodec = Literal["h264", "hevc"]
NVDEC_CODECS: tuple[NvCodec, ...] = ("h264", "hevc")  # what `auto` hands to NVDEC
NO_PTS = -(2**63)  # AV_NOPTS_VALUE: a packet without pts (NVDEC's timestamps are int64)


class NvdecUnavailable(Exception):
    """NVDEC cannot decode this stream here (no library, no device, codec, driver)."""


class NvdecDeviceError(Exception):
    """The device or the driver failed while decoding: the stream goes on on the CPU."""


class NvdecBitstreamError(Exception):
    """One packet NVDEC could not take: skipped and counted, like a corrupt packet."""


# --- the protocol the shim implements ------------------------------------------------------


class NvFrame(Protocol):
    """One decoded picture, NV12 in host memory."""

    @property
    def pts(self) -> int: ...  # the pts of the packet it came from (NO_PTS: none)
    def nv12(self) -> npt.NDArray[np.uint8]: ...  # (height * 3/2, width), Y then interleaved UV


class NvSession(Protocol):
    """One hardware decoder, fed Annex B access units in decode order."""

    def decode(self, data: bytes, pts: int) -> list[NvFrame]: ...
    def flush(self) -> list[NvFrame]: ...  # the pictures still held for reordering
    def close(self) -> None: ...


class NvDeviceFrame(Protocol):
    """One decoded picture left in device memory (``decode_in: detector``)."""

    @property
    def pts(self) -> int: ...
    def tensor(self) -> torch.Tensor: ...  # (height * 3/2, width) uint8 NV12, a copy of its own


class NvDeviceSession(Protocol):
    """A hardware decoder whose pictures stay in device memory."""

    def decode(self, data: bytes, pts: int) -> list[NvDeviceFrame]: ...
    def flush(self) -> list[NvDeviceFrame]: ...
    def close(self) -> None: ...


class NvBackend(Protocol):
    """The library: opens decoders. Raises :class:`NvdecUnavailable` if it cannot.

    ``low_latency``: the stream has no B-frames, so every picture can come out as
    soon as its packet went in (NVDEC's default holds up to 4 pictures back).
    ``open`` copies pictures to the host (a camera's process); ``open_device`` leaves
    them in device memory (decode threads of the detector process).
    """

    name: str

    def open(self, codec: NvCodec, gpu_id: int, low_latency: bool) -> NvSession: ...
    def open_device(self, codec: NvCodec, gpu_id: int, low_latency: bool) -> NvDeviceSession: ...


# --- availability -------------------------------------------------------------------------


def probe(gpu_id: int = 0) -> str | None:
    """Why NVDEC is unavailable here, or None if it looks usable.

    Cheap and without a CUDA context (the supervisor calls it): PyNvVideoCodec is
    installed, the driver's libcuda loads and has device ``gpu_id``. Whether a
    decoder really opens is only known in the camera's process (then it falls back).
    """
    if importlib.util.find_spec("PyNvVideoCodec") is None:
        return "PyNvVideoCodec is not installed (pip install 'streamd[nvdec]')"
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver (libcuda.so.1 does not load)"
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return "the CUDA driver does not initialise (no usable device)"
    if count.value <= gpu_id:
        return f"no CUDA device {gpu_id} ({count.value} found)"
    return None


def load_backend() -> NvBackend:
    """PyNvVideoCodec behind the protocol; :class:`NvdecUnavailable` when it cannot load."""
    reason = probe()
    if reason is not None:
        raise NvdecUnavailable(reason)
    try:
        import PyNvVideoCodec as nvc  # GPU-only: the optional extra `nvdec`
    except Exception as e:  # its import checks the driver and raises RuntimeError too
        raise NvdecUnavailable(f"PyNvVideoCodec does not import: {e}") from e
    return PyNvBackend(nvc)


def choose(mode: DecodeMode, codec: str, unavailable: str | None) -> tuple[str, str]:
    """Which decoder a stream gets, and why (``unavailable``: :func:`probe`'s answer).

    ``auto`` takes NVDEC for H.264/H.265 where it is available; ``nvdec`` asked
    for a codec NVDEC does not take here, or where it is unavailable (at run time:
    start-up refused it before), falls back to the CPU with the reason.
    """
    if mode == "cpu":
        return "cpu", "asked for"
    if codec not in NVDEC_CODECS:
        return "cpu", f"codec {codec} is not decoded by NVDEC here (h264, hevc only)"
    if unavailable is not None:
        return "cpu", f"nvdec unavailable: {unavailable}"
    return "nvdec", f"{codec} on NVDEC"


# --- the adapter ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NV12Picture:
    """An NVDEC picture in host memory (a :class:`reader.HostPicture`)."""

    data: npt.NDArray[np.uint8]  # (height * 3/2, width)
    time: float | None

    @property
    def width(self) -> int:
        return int(self.data.shape[1])

    @property
    def height(self) -> int:
        return int(self.data.shape[0]) * 2 // 3

    def to_bgr(self) -> npt.NDArray[np.uint8]:
        return np.asarray(cv2.cvtColor(self.data, cv2.COLOR_YUV2BGR_NV12), dtype=np.uint8)


class NvdecDecoder:
    """A :class:`reader.FrameDecoder` feeding PyAV's packets to one NVDEC session.

    MP4/MKV carry H.264/H.265 length-prefixed with the parameter sets in the
    extradata; NVDEC's parser wants Annex B, so every packet goes through
    ``h264_mp4toannexb``/``hevc_mp4toannexb`` (a pass-through for streams that are
    Annex B already: RTSP, MPEG-TS). The size-0 packet PyAV's demuxer ends with
    flushes the pictures NVDEC holds for reordering. If the device fails, the
    rest of the session is decoded by PyAV from the next keyframe on, and
    ``on_device_error`` is told once.
    """

    name = "nvdec"

    def __init__(
        self,
        stream: av.VideoStream,
        session: NvSession,
        on_device_error: Callable[[str], None] | None = None,
    ) -> None:
        self._session: NvSession | None = session
        self._bsf = av.bitstream.BitStreamFilterContext(f"{stream.codec_context.name}_mp4toannexb",
                                                        stream)  # fmt: skip
        self._time_base = stream.time_base or Fraction(1, 90_000)
        self._on_device_error = on_device_error
        self._cpu: CpuFromKeyframe | None = None

    @property
    def on_cpu(self) -> bool:
        return self._cpu is not None

    def decode(self, packet: av.Packet[Any], counters: DecodeCounters) -> list[Picture]:
        if self._cpu is not None:
            return self._cpu.decode(packet, counters)
        counters.decode_errors += packet.is_corrupt  # as the CPU path counts them
        try:
            return self._decode_nvdec(packet, counters)
        except NvdecDeviceError as e:
            self._fall_back(str(e))
            return []

    def _decode_nvdec(self, packet: av.Packet[Any], counters: DecodeCounters) -> list[Picture]:
        assert self._session is not None
        out: list[NvFrame] = []
        flush = packet.size == 0
        for unit in self._bsf.filter(None if flush else packet):
            try:
                out += self._session.decode(bytes(unit), NO_PTS if unit.pts is None else unit.pts)
            except NvdecBitstreamError as e:
                log.debug("skipping a packet NVDEC refused: %s", e)
                counters.decode_errors += 1
        if flush:
            out += self._session.flush()
            self._bsf.flush()
        return [self._picture(f) for f in out]

    def _picture(self, frame: NvFrame) -> NV12Picture:
        pts = frame.pts
        t = None if pts == NO_PTS else float(pts * self._time_base)
        return NV12Picture(frame.nv12(), t)

    def _fall_back(self, reason: str) -> None:
        log.warning("NVDEC failed (%s); this stream decodes on the CPU from the next keyframe",
                    reason)  # fmt: skip
        self._close_session()
        self._cpu = CpuFromKeyframe()
        if self._on_device_error is not None:
            self._on_device_error(reason)

    def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                session.close()
            except Exception as e:  # a dead device may fail to release; the session is gone
                log.warning("closing the NVDEC session failed: %s", e)

    def close(self) -> None:
        """End of the session (reconnect, stop): pictures still queued are dropped."""
        self._close_session()


class DecoderChoice:
    """A camera's decoder across its sessions: ``decode`` asked for, what runs, fallbacks.

    Chosen at each open of the source (the codec may change at a reconnect).
    ``auto`` on a machine without NVDEC (``prober``'s answer) simply decodes on
    the CPU. NVDEC that should work but does not (the library or a decoder does
    not open, the device fails mid-stream) sends the stream to the CPU for the
    rest of the process's life: a warning, ``streamd_decode_fallbacks_total`` and
    the ``decode_fallbacks`` status counter, and the ``streaming`` status's detail.
    """

    def __init__(
        self,
        stream: str,
        mode: DecodeMode,
        loader: Callable[[], NvBackend] = load_backend,
        prober: Callable[[], str | None] = probe,
        on_fallback: Callable[[str], None] | None = None,  # a device failed mid-session
        gpu_id: int = 0,
        remote: Callable[[av.VideoStream], FrameDecoder] | None = None,
    ) -> None:
        """``remote``: NVDEC sessions are opened by it (decode_in: detector: the detector
        process decodes) instead of in this process."""
        self.stream = stream
        self.mode: DecodeMode = mode
        self.active = "cpu"
        self.reason = ""
        self.fallbacks = 0
        self._loader = loader
        self._prober = prober
        self._on_fallback = on_fallback
        self._gpu_id = gpu_id
        self._backend: NvBackend | None = None
        self._remote = remote
        self._off: str | None = None  # why NVDEC is not used by this process
        self._probed = mode == "cpu"

    def open(self, stream: av.VideoStream) -> FrameDecoder:
        """The decoder for one session of the source."""
        if not self._probed:
            self._probed = True
            self._off = self._prober()
            if self._off is not None and self.mode == "nvdec":
                self._count(self._off, "unavailable")  # start-up refuses this; a late add
        codec = stream.codec_context.name
        name, reason = choose(self.mode, codec, self._off)
        if name == "nvdec" and self._remote is not None:
            return self._use(self._remote(stream), f"{reason} in the detector process")
        if name == "nvdec":
            decoder = self._open_nvdec(stream, codec)
            if decoder is not None:
                return self._use(decoder, reason)
            name, reason = "cpu", f"nvdec unavailable: {self._off}"
        return self._use(CpuDecoder(), reason)

    def _open_nvdec(self, stream: av.VideoStream, codec: str) -> NvdecDecoder | None:
        t0 = time.perf_counter()
        try:
            if self._backend is None:
                self._backend = self._loader()
            decoder = open_nvdec(self._backend, stream, self._gpu_id, self.device_failed)
        except (NvdecUnavailable, NvdecDeviceError, av.FFmpegError) as e:
            self._off = str(e)
            self._count(self._off, "unavailable")
            return None
        log.info("NVDEC decoder for %s opened in %.0f ms", codec, (time.perf_counter() - t0) * 1e3)
        return decoder

    def device_failed(self, reason: str) -> None:
        """NVDEC failed mid-session: the stream is on the CPU for the rest of the process."""
        self._off = reason
        self._count(reason, "device_error")
        self._use_name("cpu", f"nvdec failed: {reason}")
        if self._on_fallback is not None:
            self._on_fallback(self.describe())

    def _count(self, reason: str, cause: str) -> None:
        log.warning("stream %s: NVDEC off, decoding on the CPU (%s)", self.stream, reason)
        self.fallbacks += 1
        metrics.DECODE_FALLBACKS.labels(self.stream, cause).inc()

    def _use(self, decoder: FrameDecoder, reason: str) -> FrameDecoder:
        self._use_name(decoder.name, reason)
        return decoder

    def _use_name(self, name: str, reason: str) -> None:
        self.active, self.reason = name, reason
        for each in ("cpu", "nvdec"):
            metrics.DECODER.labels(self.stream, each).set(1 if each == name else 0)

    def describe(self) -> str:
        """What decodes now and why, for the status detail."""
        return f"decode: {self.active} ({self.reason})"


def open_nvdec(
    backend: NvBackend,
    stream: av.VideoStream,
    gpu_id: int = 0,
    on_device_error: Callable[[str], None] | None = None,
) -> NvdecDecoder:
    """An NVDEC decoder for one session of ``stream`` (low latency when it has no B-frames)."""
    low_latency = not stream.codec_context.has_b_frames  # cameras: IPPP, mostly
    session = backend.open(nv_codec(stream.codec_context.name), gpu_id, low_latency)
    try:
        return NvdecDecoder(stream, session, on_device_error)
    except av.FFmpegError:  # no bitstream filter for it: the session is not used
        session.close()
        raise


def start_refusals(streams: Sequence[StreamConfig], prober: Callable[[], str | None] = probe
                   ) -> list[str]:  # fmt: skip
    """``streams.<i>.decode: nvdec`` where NVDEC is unavailable: why start-up is refused.

    Asked for by name, NVDEC is a capacity the machine was sized for (a hundred
    1080p cameras do not decode on 16 cores), so running on the CPU instead would
    fail later and less clearly; ``auto`` is the setting that falls back.
    """
    asked = [i for i, s in enumerate(streams) if s.decode == "nvdec"]
    reason = prober() if asked else None
    if reason is None:
        return []
    return [f"streams.{i}.decode: nvdec is unavailable: {reason}" for i in asked]


def nv_codec(codec: str) -> NvCodec:
    if codec == "h264":
        return "h264"
    if codec == "hevc":
        return "hevc"
    raise NvdecUnavailable(f"codec {codec} is not decoded by NVDEC here")


# --- the PyNvVideoCodec shim (GPU only; never run here) -------------------------------------


class PyNvBackend:
    """PyNvVideoCodec 2.x's low-level decoder (``CreateDecoder``/``Decode``), host output.

    Never run on a GPU. The names and signatures it uses (``CreateDecoder``'s
    keywords, ``PacketData.bsl_data/bsl/pts/decode_flag``,
    ``VideoPacketFlag.ENDOFSTREAM``, ``cudaVideoCodec.H264/HEVC``,
    ``PyNvDecoder.Decode/GetWidth/GetHeight``, ``DecodedFrame.framesize/
    GetPtrToPlane/getPTS``) were checked against the 2.2.4 wheel's extension
    loaded without a GPU (a stub ``libcuda``), and ``PacketData`` takes the values
    given here; what NVDEC does with them is for ``pytest -m gpu`` to show.
    """

    name = "pynvvideocodec"

    def __init__(self, nvc: Any) -> None:
        self._nvc = nvc

    def open(self, codec: NvCodec, gpu_id: int, low_latency: bool) -> NvSession:
        # usedevicememory=False: NV12 copied to host by the decoder (the host-copy path).
        decoder, flag = self._create(codec, gpu_id, low_latency, device=False)
        return _PyNvSession(self._nvc, decoder, flag)

    def open_device(self, codec: NvCodec, gpu_id: int, low_latency: bool) -> NvDeviceSession:
        # usedevicememory=True: the picture stays in the decoder's device surface; each is
        # taken over DLPack and copied device→device before the next Decode reuses it.
        decoder, flag = self._create(codec, gpu_id, low_latency, device=True)
        return _PyNvDeviceSession(_PyNvSession(self._nvc, decoder, flag))

    def _create(self, codec: NvCodec, gpu_id: int, low_latency: bool, device: bool
                ) -> tuple[Any, int]:  # fmt: skip
        nvc = self._nvc
        codec_id = {"h264": nvc.cudaVideoCodec.H264, "hevc": nvc.cudaVideoCodec.HEVC}[codec]
        latencies = nvc.DisplayDecodeLatencyType
        latency = latencies.LOW if low_latency else latencies.NATIVE
        try:
            decoder = nvc.CreateDecoder(gpuid=gpu_id, codec=codec_id, usedevicememory=device,
                                        latency=latency)  # fmt: skip
        except Exception as e:
            raise NvdecUnavailable(f"CreateDecoder({codec}) failed: {e}") from e
        # LOW latency decodes a packet at once when told it holds a whole picture (PyAV's
        # demuxer gives one picture a packet).
        flag = int(nvc.VideoPacketFlag.ENDOFPICTURE) if low_latency else 0
        return decoder, flag


class _PyNvSession:
    def __init__(self, nvc: Any, decoder: Any, flag: int) -> None:
        self._nvc = nvc
        self._decoder = decoder
        self._flag = flag

    def decode(self, data: bytes, pts: int) -> list[NvFrame]:
        packet, _buf = self.packet(data, pts)  # _buf: alive until Decode returns
        return self._run(packet)

    def flush(self) -> list[NvFrame]:
        return self._run(self.end_packet())

    def _run(self, packet: Any) -> list[NvFrame]:
        frames, width, height = self.run_raw(packet)
        return [_host_frame(f, width, height) for f in frames]

    def run_raw(self, packet: Any) -> tuple[list[Any], int, int]:
        """The library's own frames of one ``Decode``, and the picture size."""
        try:
            frames = self._decoder.Decode(packet)
        except Exception as e:
            text = str(e)
            if "CUDA_ERROR" in text or "cuda" in text.lower():
                raise NvdecDeviceError(text) from e
            raise NvdecBitstreamError(text) from e
        return list(frames), int(self._decoder.GetWidth()), int(self._decoder.GetHeight())

    def packet(self, data: bytes, pts: int) -> tuple[Any, npt.NDArray[np.uint8]]:
        """A ``PacketData`` for ``data`` and the buffer it points into (keep it alive)."""
        buf = np.frombuffer(data, dtype=np.uint8)
        packet = self._nvc.PacketData()
        packet.bsl_data = buf.ctypes.data
        packet.bsl = buf.size
        packet.pts = pts
        packet.decode_flag = self._flag
        return packet, buf

    def end_packet(self) -> Any:
        packet = self._nvc.PacketData()
        packet.bsl_data, packet.bsl = 0, 0  # size 0 is end of stream to NVDEC's parser
        packet.decode_flag = self._nvc.VideoPacketFlag.ENDOFSTREAM
        return packet

    def close(self) -> None:
        self._decoder = None  # the binding releases the decoder with its last reference


class _PyNvDeviceSession:
    """Pictures in device memory: ``torch.from_dlpack`` on the library's frame (never run
    on a GPU: the layout it gives for NV12 is for ``pytest -m gpu`` to confirm)."""

    def __init__(self, session: _PyNvSession) -> None:
        self._session = session

    def decode(self, data: bytes, pts: int) -> list[NvDeviceFrame]:
        packet, _buf = self._session.packet(data, pts)
        return self._frames(packet)

    def flush(self) -> list[NvDeviceFrame]:
        return self._frames(self._session.end_packet())

    def _frames(self, packet: Any) -> list[NvDeviceFrame]:
        frames, width, height = self._session.run_raw(packet)
        return [_device_frame(f, width, height) for f in frames]

    def close(self) -> None:
        self._session.close()


@dataclass(frozen=True, slots=True)
class _DeviceFrame:
    pts: int
    data: torch.Tensor

    def tensor(self) -> torch.Tensor:
        return self.data


def _device_frame(frame: Any, width: int, height: int) -> _DeviceFrame:
    # The decoder reuses its surfaces: a device→device copy before the next Decode.
    data = _nv12_view(frame, width, height).clone()
    pts = frame.getPTS() if hasattr(frame, "getPTS") else frame.timestamp
    return _DeviceFrame(int(pts), data)


def _nv12_view(frame: Any, width: int, height: int) -> torch.Tensor:
    """The library's picture as one ``(height * 3/2, width)`` uint8 tensor on its device:
    the whole frame over DLPack, or else its planes (``cuda()``: Y, then interleaved UV,
    each with the CUDA Array Interface) joined (one copy)."""
    import torch

    rows = height * 3 // 2
    try:
        view = torch.utils.dlpack.from_dlpack(frame)
        if view.numel() == rows * width:
            return view.reshape(rows, width)
        why = f"DLPack gives {tuple(view.shape)}, not NV12 {width}x{height}"
    except Exception as e:  # a binding that exports its planes only
        why = f"no DLPack ({e})"
    try:
        planes = [torch.as_tensor(p, device="cuda" if torch.cuda.is_available() else "cpu")
                  for p in frame.cuda()]  # fmt: skip
        y, uv = (p.reshape(-1, width) for p in planes[:2])
    except Exception as e:
        text = f"the decoded frame gives no NV12 picture: {why}; planes: {e}"
        raise NvdecDeviceError(text) from e
    if y.shape[0] != height or uv.shape[0] != height // 2:
        raise NvdecDeviceError(f"planes {tuple(y.shape)} + {tuple(uv.shape)} are not NV12 "
                               f"{width}x{height} ({why})")  # fmt: skip
    return torch.cat((y, uv))


@dataclass(frozen=True, slots=True)
class _HostFrame:
    pts: int
    data: npt.NDArray[np.uint8]

    def nv12(self) -> npt.NDArray[np.uint8]:
        return self.data


def _host_frame(frame: Any, width: int, height: int) -> _HostFrame:
    size = int(frame.framesize())
    if size != width * height * 3 // 2:
        raise NvdecDeviceError(f"frame of {size} bytes is not NV12 {width}x{height}")
    # The decoder reuses its host buffer: copy the picture out before the next Decode.
    pointer = ctypes.cast(frame.GetPtrToPlane(0), ctypes.POINTER(ctypes.c_uint8))
    view = np.ctypeslib.as_array(pointer, shape=(size,))
    pts = frame.getPTS() if hasattr(frame, "getPTS") else frame.timestamp
    return _HostFrame(int(pts), view.reshape(height * 3 // 2, width).copy())
