"""The reference: a plain ultralytics ``model.track()`` loop (its own ByteTrack) on the clip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import numpy as np

from streamd.evaluation.metrics import TrackedFrame


def track_loop(video: Path, weights: str, imgsz: int, conf: float, stride: int = 1
               ) -> list[TrackedFrame]:  # fmt: skip
    """``model.track(frame, persist=True, tracker="bytetrack.yaml")`` on every ``stride``-th
    frame, the way the ultralytics docs show it."""
    try:
        import lap  # noqa: F401  # ultralytics' ByteTrack needs it and would pip-install it
    except ImportError as e:
        raise RuntimeError("the ultralytics track() loop needs `lap`: pip install lap") from e
    from ultralytics.models import YOLO

    model = YOLO(weights)
    out = []
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 25)
        for k, frame in enumerate(container.decode(stream)):
            if k % stride:
                continue
            img = frame.to_ndarray(format="bgr24")
            results: Any = model.track(img, persist=True, tracker="bytetrack.yaml", imgsz=imgsz,
                                       conf=conf, verbose=False)  # fmt: skip
            b = results[0].boxes
            xyxy = np.asarray(b.xyxy.cpu().numpy(), np.float64)
            ids = np.full(len(xyxy), -1) if b.id is None else b.id.cpu().numpy()
            out.append(TrackedFrame(k, k / rate, xyxy,
                                    np.asarray(b.conf.cpu().numpy(), np.float64),
                                    np.asarray(ids, np.int64)))  # fmt: skip
    return out
