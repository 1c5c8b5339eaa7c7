"""Letterbox straight from NVDEC's NV12 pictures, as torch ops on the frames' device.

Frames decoded in the detector process (``decode_in: detector``) stay where the
decoder put them (device memory on a GPU; a CPU tensor in the tests) and are
turned into the network input here: Y and the 2x upsampled interleaved UV
through the BT.601 limited-range matrix OpenCV's ``COLOR_YUV2BGR_NV12`` uses
(so boxes match a host-decoded frame's), rounded to 8-bit levels as OpenCV
does, then the same resize, pad and scaling as :func:`prepost.preprocess`.
A batch may mix these with host BGR frames from the shared-memory rings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from streamd.detect.prepost import PAD_VALUE, Placement, _placement, preprocess

# OpenCV's fixed-point BT.601 limited-range coefficients (imgproc color_yuv: ITUR_BT_601_*),
# in floating point: 1.164 (Y), 1.596 (V→R), -0.391 / -0.813 (U, V→G), 2.018 (U→B).
_CY = 1220542 / (1 << 20)
_CVR = 1673527 / (1 << 20)
_CUG = -409993 / (1 << 20)
_CVG = -852492 / (1 << 20)
_CUB = 2116026 / (1 << 20)


@dataclass(frozen=True, slots=True)
class DeviceFrame:
    """One decoded NV12 picture where the decoder left it: ``(height * 3/2, width)`` uint8."""

    nv12: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, 3), as a BGR frame's: batch shapes are chosen the same way."""
        rows, width = int(self.nv12.shape[0]), int(self.nv12.shape[1])
        return rows * 2 // 3, width, 3

    def to_bgr(self) -> npt.NDArray[np.uint8]:
        """A host BGR copy (snapshots, the live view): the one device→host trip, on demand."""
        rgb = nv12_to_rgb(self.nv12.unsqueeze(0))[0]
        return np.ascontiguousarray(rgb.flip(0).permute(1, 2, 0).to(torch.uint8).cpu().numpy())


Frame = npt.NDArray[np.uint8] | DeviceFrame


def nv12_to_rgb(nv12: torch.Tensor) -> torch.Tensor:
    """``(N, H * 3/2, W)`` uint8 NV12 → ``(N, 3, H, W)`` float32 RGB in whole levels 0..255.

    Each chroma sample covers its 2x2 block (nearest upsampling, as OpenCV), and
    the result is rounded and clipped to 8-bit levels as OpenCV's uint8 output is.
    """
    n, rows, w = nv12.shape
    h = rows * 2 // 3
    y = (nv12[:, :h].float() - 16.0).clamp_(min=0.0) * _CY
    uv = nv12[:, h:].reshape(n, h // 2, w // 2, 2).float() - 128.0
    uv = uv.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    u, v = uv[..., 0], uv[..., 1]
    rgb = torch.stack((y + _CVR * v, y + _CUG * u + _CVG * v, y + _CUB * u), dim=1)
    return rgb.round_().clamp_(0.0, 255.0)


def letterbox(
    frames: Sequence[Frame],
    shape: tuple[int, int],
    device: torch.device,
    dtype: torch.dtype,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[Placement]]:
    """:func:`prepost.preprocess` for a batch that may hold :class:`DeviceFrame` s.

    Host frames go through ``preprocess`` row by row; device frames of one size are
    converted together, resized (bilinear, as ``preprocess`` on a GPU) and written
    into their rows, so nothing crosses to the host.
    """
    if not any(isinstance(f, DeviceFrame) for f in frames):
        return preprocess([f for f in frames if isinstance(f, np.ndarray)], shape, device, dtype,
                          out)  # fmt: skip
    n = len(frames)
    batch = out if out is not None else torch.empty((n, 3, *shape), device=device, dtype=dtype)
    batch[:n].fill_(PAD_VALUE)
    placements: list[Placement | None] = [None] * n
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, f in enumerate(frames):
        if isinstance(f, DeviceFrame):
            by_size.setdefault(f.shape[:2], []).append(i)
        else:
            _, (placements[i],) = preprocess([f], shape, device, dtype, batch[i : i + 1])
    for (h, w), rows in by_size.items():
        p, (uh, uw) = _placement(h, w, shape)
        stacked = torch.stack([_as_device_frame(frames[i]).nv12 for i in rows]).to(device)
        rgb = nv12_to_rgb(stacked)
        if (uh, uw) != (h, w):
            rgb = F.interpolate(rgb, size=(uh, uw), mode="bilinear", align_corners=False)
        batch[rows, :, p.top : p.top + uh, p.left : p.left + uw] = (rgb / 255).to(dtype)
        for i in rows:
            placements[i] = p
    return batch, [p for p in placements if p is not None]


def _as_device_frame(frame: Frame) -> DeviceFrame:
    assert isinstance(frame, DeviceFrame)
    return frame
