"""A stand-in for NVIDIA's PyNvVideoCodec (the 2.2 names streamd's shim uses), for a
machine without the GPU: it decodes with PyAV underneath and hands NV12 back through a
host pointer, as the real one does with ``usedevicememory=False``; with
``usedevicememory=True`` its frames export DLPack (a CPU torch tensor standing for the
device surface), as the real one's do. With a stub
``libcuda`` (tests/test_nvdec.py builds one) the daemon takes it for the real thing, so
its whole NVDEC path runs here. ``FAKE_NVDEC_FAIL=hevc:N``: the device "fails" at the
N+1th packet of an H.265 decoder (any codec name).
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

import av
import numpy as np

__version__ = "2.2.4+fake"


class PyNvVCException(Exception):
    pass


class cudaVideoCodec:  # the real name
    H264 = "h264"
    HEVC = "hevc"


class VideoPacketFlag:
    ENDOFSTREAM = 1
    TIMESTAMP = 2
    ENDOFPICTURE = 8


class DisplayDecodeLatencyType:
    NATIVE = 0
    LOW = 1
    ZERO = 2


class PacketData:
    def __init__(self) -> None:
        self.bsl_data = 0
        self.bsl = 0
        self.pts = 0
        self.decode_flag = 0


class DecodedFrame:
    def __init__(self, nv12: np.ndarray, pts: int, device: bool = False) -> None:
        self._nv12 = nv12
        self._pts = pts
        self._device = device

    def __dlpack__(self, stream: Any = None, **kwargs: Any) -> Any:
        if not self._device or os.environ.get("FAKE_NVDEC_PLANES_ONLY"):
            raise PyNvVCException("no DLPack on this frame (fake)")
        import torch

        return torch.from_numpy(self._nv12).__dlpack__()

    def cuda(self) -> list[np.ndarray]:
        """Its planes, Y then interleaved UV (the real ones have the CUDA Array Interface;
        these the host's array interface)."""
        h = self._nv12.shape[0] * 2 // 3
        return [self._nv12[:h], self._nv12[h:]]

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU: the fake's "device" is the host

    def framesize(self) -> int:
        return int(self._nv12.size)

    def GetPtrToPlane(self, index: int) -> int:
        return int(self._nv12.ctypes.data)

    def getPTS(self) -> int:
        return self._pts


class PyNvDecoder:
    def __init__(self, codec: str, device: bool = False) -> None:
        self._device = device
        self._ctx = av.CodecContext.create(codec, "r")
        self._size = (0, 0)
        self._fed = 0
        fail_codec, _, at = os.environ.get("FAKE_NVDEC_FAIL", "").partition(":")
        self._fail_at = int(at) if fail_codec == codec else -1

    def Decode(self, packet: PacketData) -> list[DecodedFrame]:
        if packet.bsl == 0:
            frames = self._ctx.decode(None)
        else:
            if 0 <= self._fail_at <= self._fed:
                raise PyNvVCException("CUDA_ERROR_LAUNCH_FAILED (fake)")
            self._fed += 1
            data = av.Packet(ctypes.string_at(packet.bsl_data, packet.bsl))
            data.pts = packet.pts
            frames = self._ctx.decode(data)
        out = []
        for f in frames:
            self._size = (f.width, f.height)
            nv12 = np.ascontiguousarray(f.reformat(format="nv12").to_ndarray(), dtype=np.uint8)
            out.append(DecodedFrame(nv12, int(f.pts), self._device))
        return out

    def GetWidth(self) -> int:
        return self._size[0]

    def GetHeight(self) -> int:
        return self._size[1]


def CreateDecoder(gpuid: int = 0, codec: str = "h264", **kwargs: Any) -> PyNvDecoder:
    return PyNvDecoder(codec, bool(kwargs.get("usedevicememory")))
