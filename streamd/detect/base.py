"""The interface every detector backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import supervision as sv

from streamd.types import FrameRef

if TYPE_CHECKING:  # torch: imported where a backend is built, not by the supervisor
    from streamd.detect.nv12 import Frame


class DetectorError(Exception):
    """A detector that cannot be built from the configuration (bad weights, unknown class...)."""


class Detector(Protocol):
    """Batched object detector: BGR uint8 frames in, one ``sv.Detections`` per frame out.

    Boxes are in each frame's own pixel coordinates; ``data["class_name"]`` is set.
    """

    names: dict[int, str]
    backend: str  # which backend actually runs, e.g. "torch-cpu", "torch-cuda-fp16"

    def detect(
        self, frames: Sequence[Frame], refs: Sequence[FrameRef] | None = None
    ) -> list[sv.Detections]:
        """``frames``: host BGR arrays, or NV12 pictures NVDEC left on the device
        (:class:`~streamd.detect.nv12.DeviceFrame`). ``refs``: the frames' descriptors, for
        a backend that needs the stream or its clock (``null``); model backends look at the
        pixels only."""
        ...


def class_ids(names: dict[int, str], classes: list[str] | None) -> list[int] | None:
    if classes is None:
        return None
    by_name = {v: k for k, v in names.items()}
    unknown = [c for c in classes if c not in by_name]
    if unknown:
        raise DetectorError(
            f"model.classes: {unknown} not in the model's classes {sorted(by_name)}"
        )
    return [by_name[c] for c in classes]
