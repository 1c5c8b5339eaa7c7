"""``streamd bench --decode-only``: frames/s one machine decodes, on the CPU or NVDEC.

N decoders run at once over the same clip (looped), each with its own container
and decoder, exactly as a camera's process decodes (``reader.decode_frames``;
BGR for every frame unless ``--no-bgr``). ``--decode-in worker`` runs each in a
process of its own (today's camera processes: one CUDA context each with NVDEC);
``--decode-in inference`` runs them as threads of one process (decode threads in
the detector's process: one context); with NVDEC these decode as the detector's
decode threads do (``decode_in: detector``): pictures left in device memory
(``usedevicememory``), converted NV12 → RGB on the device unless ``--no-bgr``,
never copied to the host. All of them count frames over the same wall-clock
window, so the total is the machine's, not a sum of solo runs.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import platform
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import av.bitstream
import cv2
import numpy as np

from streamd.sources.nvdec import (
    NO_PTS,
    NvBackend,
    load_backend,
    nv_codec,
    open_nvdec,
    probe,
)
from streamd.sources.reader import (
    CpuDecoder,
    DecodeCounters,
    OpenOptions,
    auto_decode_threads,
    decode_frames,
    open_source,
)

START_GRACE_S = {"worker": 5.0, "inference": 0.5}  # spawned processes import first


class DecoderUnavailable(Exception):
    """The decoder asked for cannot run here (one line for the command line)."""


@dataclass(frozen=True, slots=True)
class DecodeBenchSpec:
    decoder: Literal["cpu", "nvdec"] = "cpu"
    threads: int = 1  # decoders at once
    decode_in: Literal["worker", "inference"] = "worker"
    clip: str | None = None  # default: a synthetic H.264 clip of width x height at fps
    width: int = 1920
    height: int = 1080
    fps: int = 30
    clip_seconds: float = 4.0
    duration_s: float = 10.0
    bgr: bool = True


def synthetic_clip(folder: Path, width: int, height: int, fps: int, seconds: float) -> Path:
    """An H.264 MP4 like a camera's (cached): a scene panning under sensor noise, at a
    camera's bit rate (4 Mbit/s at 1080p, scaled by area), a keyframe a second. Noise and
    the bit rate matter: a clean synthetic picture decodes several times faster."""
    path = folder / f"decode-{width}x{height}-{fps}-{seconds:g}s.mp4"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    coarse = rng.integers(0, 255, (height // 16 + 1, (width + 64) // 16 + 1, 3), dtype=np.uint8)
    scene = cv2.resize(coarse, ((coarse.shape[1]) * 16, coarse.shape[0] * 16),
                       interpolation=cv2.INTER_CUBIC)  # fmt: skip
    noise = rng.normal(0.0, 4.0, (8, height, width, 3)).astype(np.int16)
    part = path.with_suffix(".part.mp4")
    with av.open(str(part), mode="w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = int(4_000_000 * width * height / (1920 * 1080))
        stream.options = {"preset": "veryfast", "g": str(fps)}
        for i in range(round(seconds * fps)):
            x = (i * 2) % 64
            img = scene[:height, x : x + width].astype(np.int16) + noise[i % len(noise)]
            frame = np.ascontiguousarray(np.clip(img, 0, 255), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    part.rename(path)
    return path


def _decode_window(clip: str, decoder: str, start: float, end: float, bgr: bool,
                   device: bool = False, cpu_threads: int = 0) -> int:  # fmt: skip
    """Frames one decoder delivered between the wall times ``start`` and ``end``
    (``cpu_threads``: the CPU decoder's threads, as a camera's process gets them)."""
    if device:
        return _device_window(load_backend(), clip, start, end, bgr)
    backend = load_backend() if decoder == "nvdec" else None
    frames = 0
    while True:
        with open_source(OpenOptions(clip, threads=cpu_threads)) as container:
            stream = container.streams.video[0]
            dec = CpuDecoder() if backend is None else open_nvdec(backend, stream)
            time.sleep(max(0.0, start - time.time()))
            try:
                for frame in decode_frames(container, DecodeCounters(), 10.0, None, dec):
                    if bgr:
                        frame.image()
                    now = time.time()
                    if now >= end:
                        return frames
                    frames += now >= start
            finally:
                dec.close()


def _device_window(backend: NvBackend, clip: str, start: float, end: float, rgb: bool) -> int:
    """:func:`_decode_window` as a decode thread of the detector process decodes: Annex B
    packets to NVDEC, pictures kept in device memory, NV12 → RGB there (``rgb``)."""
    import torch  # here only: the worker shape's processes do not import it

    from streamd.detect.nv12 import nv12_to_rgb

    frames = 0
    while True:
        with open_source(OpenOptions(clip)) as container:
            stream = container.streams.video[0]
            ctx = stream.codec_context
            session = backend.open_device(nv_codec(ctx.name), 0, not ctx.has_b_frames)
            bsf = av.bitstream.BitStreamFilterContext(f"{ctx.name}_mp4toannexb", stream)
            time.sleep(max(0.0, start - time.time()))
            try:
                for packet in container.demux(stream):
                    last = packet.size == 0
                    pictures = [p for unit in bsf.filter(None if last else packet)
                                for p in session.decode(bytes(unit), NO_PTS if unit.pts is None
                                                        else unit.pts)]  # fmt: skip
                    pictures += session.flush() if last else []
                    for picture in pictures:
                        nv12 = picture.tensor()
                        if rgb:
                            nv12_to_rgb(nv12.unsqueeze(0))
                        if nv12.is_cuda:  # the work done, not queued
                            torch.cuda.synchronize(nv12.device)
                        now = time.time()
                        if now >= end:
                            return frames
                        frames += now >= start
            finally:
                session.close()


def run_decode(spec: DecodeBenchSpec, workdir: Path) -> dict[str, Any]:
    """Decode with ``spec.threads`` decoders at once for ``spec.duration_s``; the figures."""
    if spec.decoder == "nvdec":
        reason = probe()
        if reason is not None:
            raise DecoderUnavailable(f"nvdec unavailable: {reason}")
    clip = spec.clip or str(synthetic_clip(workdir, spec.width, spec.height, spec.fps,
                                           spec.clip_seconds))  # fmt: skip
    with av.open(clip) as c:
        s = c.streams.video[0]
        codec, width, height = s.codec_context.name, s.codec_context.width, s.codec_context.height
    if spec.decoder == "nvdec" and codec not in ("h264", "hevc"):
        raise DecoderUnavailable(f"nvdec: the clip is {codec} (h264, hevc only)")
    device = spec.decoder == "nvdec" and spec.decode_in == "inference"
    if device:  # torch and the letterbox imported before the window opens, not in it
        import streamd.detect.nv12  # noqa: F401
    start = time.time() + START_GRACE_S[spec.decode_in]
    end = start + spec.duration_s
    cpu_threads = auto_decode_threads(spec.threads)  # each decoder's, as a camera gets them
    args = (clip, spec.decoder, start, end, spec.bgr, device, cpu_threads)
    pool: cf.Executor = (
        cf.ProcessPoolExecutor(spec.threads, mp_context=mp.get_context("spawn"))
        if spec.decode_in == "worker"
        else cf.ThreadPoolExecutor(spec.threads)
    )
    with pool:
        counts = list(pool.map(_decode_window, *zip(*[args] * spec.threads, strict=True)))
    total = sum(counts)
    return {
        "spec": asdict(spec),
        "clip": {"path": clip, "codec": codec, "width": width, "height": height},
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
        "pictures_in": "device memory" if device else "host memory",
        "cpu_decoder_threads": cpu_threads if spec.decoder == "cpu" else None,
        "frames": counts,
        "fps_total": round(total / spec.duration_s, 1),
        "fps_per_decoder": round(total / spec.duration_s / spec.threads, 1),
    }


def format_line(report: dict[str, Any]) -> str:
    s, c = report["spec"], report["clip"]
    speed = f"{report['fps_total']} frames/s ({report['fps_per_decoder']} per decoder)"
    on_device = report.get("pictures_in") == "device memory"
    to = (" to RGB on the device" if on_device else " to BGR") if s["bgr"] else ""
    kept = ", kept on the device" if on_device else ""
    return (f"decode {s['decoder']} x{s['threads']} ({s['decode_in']}), {c['codec']} "
            f"{c['width']}x{c['height']}{to}{kept}: {speed}")  # fmt: skip
