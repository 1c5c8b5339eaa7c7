"""Frames that stay on the GPU (issue 18, design B): NV12 letterboxed as torch ops
(``detect/nv12.py``) against OpenCV's conversion and the CPU letterbox, with the real
detector's boxes on both."""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import av
import cv2
import numpy as np
import numpy.typing as npt
import psutil
import pytest
import supervision as sv
import torch

from streamd.config import ConfigError, ModelConfig, StreamConfig, parse_config
from streamd.detect import create_detector
from streamd.detect.nv12 import DeviceFrame, Frame, letterbox, nv12_to_rgb
from streamd.detect.prepost import input_shape, preprocess
from streamd.runtime.channel import Inbox
from streamd.sources.device_decode import DecodeLane, DeviceFrames
from streamd.sources.nvdec import (
    NvBackend,
    NvCodec,
    NvDeviceFrame,
    NvDeviceSession,
    NvFrame,
    PyNvBackend,
    load_backend,
    probe,
)
from streamd.sources.reader import (
    DecodeCounters,
    OpenOptions,
    SourceStalled,
    decode_frames,
    open_source,
)
from streamd.sources.remote import PacketLink, RemoteDecoder, RemotePicture, RemoteTally
from streamd.types import DecodeReport, Dropped, FrameRef

from . import test_nvdec
from .daemon import EventLog, running, sample, scrape, start, write_pipeline
from .fake_nvdec import FakeDeviceBackend, FakeDeviceSession
from .rtsp import RtspServer
from .test_nvdec import FRAMES, GOP
from .util import free_port, shm_segments

# The H.264 (B-frames in MP4 and MPEG-TS, IPPP in TS) and H.265 clips of test_nvdec.py.
clips = pytest.fixture(scope="module")(getattr(test_nvdec.clips, "__wrapped__"))  # noqa: B009

IMGSZ = 320


def _bgr(nv12: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    return np.asarray(cv2.cvtColor(nv12, cv2.COLOR_YUV2BGR_NV12), dtype=np.uint8)


def _nv12_frames(video: Path, every: int = 6) -> list[npt.NDArray[np.uint8]]:
    with av.open(str(video)) as container:
        frames = [f for i, f in enumerate(container.decode(video=0)) if i % every == 0]
        return [np.ascontiguousarray(f.reformat(format="nv12").to_ndarray()) for f in frames]


@pytest.fixture(scope="module")
def nv12(scene: tuple[Path, Path]) -> list[npt.NDArray[np.uint8]]:
    return _nv12_frames(scene[0])


def test_nv12_letterbox_matches_opencv_and_the_cpu_letterbox(
    nv12: list[npt.NDArray[np.uint8]],
) -> None:
    """The colour conversion is OpenCV's to the level; after the resize (bilinear on
    float here, cv2 on uint8 there) within 1 level of 255 anywhere and under 0.5 on
    average, on the scene's real frames, for a whole batch and for one mixing host and
    device frames. (Measured when written: max 0.5, mean 0.23.)"""
    bgr = [_bgr(f) for f in nv12]
    dev = [DeviceFrame(torch.from_numpy(f)) for f in nv12]
    cpu = torch.device("cpu")
    shape = input_shape([b.shape for b in bgr], IMGSZ, 32, True)
    assert shape == input_shape([d.shape for d in dev], IMGSZ, 32, True) == (192, 320)
    rgb = nv12_to_rgb(torch.stack([d.nv12 for d in dev]))
    assert np.array_equal(rgb.flip(1).permute(0, 2, 3, 1).to(torch.uint8).numpy(), np.stack(bgr))
    ref, ref_places = preprocess(bgr, shape, cpu, torch.float32)
    ours, places = letterbox(dev, shape, cpu, torch.float32)
    assert places == ref_places
    diff = (ours - ref).abs() * 255
    assert float(diff.max()) <= 1.0 and float(diff.mean()) <= 0.5, (diff.max(), diff.mean())
    mixed: list[Frame] = [bgr[0], dev[1], bgr[2], dev[3]]
    both, _ = letterbox(mixed, shape, cpu, torch.float32)
    assert torch.equal(both[0], ref[0]) and torch.equal(both[2], ref[2])
    assert torch.equal(both[1], ours[1]) and torch.equal(both[3], ours[3])
    # A fixed-shape input (CUDA graphs, TensorRT): square, padded the same way.
    square, _ = letterbox(dev[:2], (IMGSZ, IMGSZ), cpu, torch.float32)
    ref_sq, _ = preprocess(bgr[:2], (IMGSZ, IMGSZ), cpu, torch.float32)
    assert float(((square - ref_sq).abs() * 255).max()) <= 1.0


def test_a_device_frame_comes_back_to_the_host_as_opencv_makes_it(
    nv12: list[npt.NDArray[np.uint8]],
) -> None:
    """Snapshots and the live view of a detector-decoded stream: the host copy."""
    back = DeviceFrame(torch.from_numpy(nv12[0])).to_bgr()
    want = _bgr(nv12[0])
    assert back.shape == want.shape and back.dtype == np.uint8
    assert int(np.abs(back.astype(np.int16) - want).max()) <= 1


def test_the_detector_boxes_on_nv12_frames_are_within_a_pixel_of_the_bgr_frames(
    nv12: list[npt.NDArray[np.uint8]], person_model: Path
) -> None:
    detector = create_detector(ModelConfig(weights=str(person_model), imgsz=IMGSZ), 8)
    bgr = [_bgr(f) for f in nv12]
    ours = detector.detect([DeviceFrame(torch.from_numpy(f)) for f in nv12])
    theirs = detector.detect(bgr)
    assert sum(len(d) for d in theirs) >= len(nv12)  # two people walk through the scene
    _within_a_pixel(ours, theirs)


def _within_a_pixel(ours: list[sv.Detections], theirs: list[sv.Detections]) -> None:
    """Frame by frame, the same number of boxes, each within 1 px (sorted by x1, y1)."""
    for a, b in zip(ours, theirs, strict=True):
        assert len(a) == len(b)
        if len(a):
            pa = a.xyxy[np.lexsort((a.xyxy[:, 1], a.xyxy[:, 0]))]
            pb = b.xyxy[np.lexsort((b.xyxy[:, 1], b.xyxy[:, 0]))]
            assert float(np.abs(pa - pb).max()) <= 1.0


# --- decode threads in the detector process (sources/device_decode.py) ----------------------


class _Detector:
    """The detector process's side of a decode thread: its inbox, and the pictures'
    store, each picture released once its ref is read (as a batch would)."""

    def __init__(self, tmp: Path) -> None:
        self.inbox = Inbox(f"ipc://{tmp}/inbox")
        self.store = DeviceFrames()
        self.refs: list[FrameRef] = []
        self.reports: list[DecodeReport] = []
        self.dropped: list[Dropped] = []
        self.pixels: dict[tuple[str, int], npt.NDArray[np.uint8]] = {}
        self.frames: list[DeviceFrame] = []  # as announced, kept past their release

    def until(self, done: Callable[[], bool], timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline, (len(self.refs), self.reports[-3:])
            if self.inbox.poll(0.05):
                for msg in self.inbox.drain():
                    self._take(msg)

    def _take(self, msg: object) -> None:
        if isinstance(msg, FrameRef):
            frame = self.store.claim(msg)
            assert frame is not None and msg.slot == -1
            self.pixels[(msg.ring, msg.seq)] = frame.to_bgr()
            self.frames.append(frame)
            self.store.release(msg)
            self.refs.append(msg)
        elif isinstance(msg, DecodeReport):
            self.reports.append(msg)
        elif isinstance(msg, Dropped):
            self.dropped.append(msg)

    def final(self, ring: str) -> DecodeReport | None:
        return next((r for r in self.reports if r.ring == ring and r.final), None)

    def close(self) -> None:
        self.inbox.close()


def _send_session(link: PacketLink, clip: Path, ring: str, stop_after: int | None = None,
                  frame0: int = 0, skip: int = 0, gap: range = range(0)) -> int:  # fmt: skip
    """What a camera's process sends for one session of ``clip``: its access units (Annex B,
    as RemoteDecoder makes them), then the end (``flush`` at the file's end, ``close``
    when stopped early, as at a reconnect); ``skip``: the first units are not sent (a
    detector that joined mid-session); ``gap``: units (counted from 0) the camera dropped:
    their frame indices are spent, as a camera's are. The units sent."""
    with open_source(OpenOptions(str(clip))) as container:
        stream = container.streams.video[0]
        decoder = RemoteDecoder(stream, "s", ring, RemoteTally(), 10.0)
        sent = 0
        for packet in container.demux(stream):
            for unit in decoder.decode(packet, DecodeCounters()):
                assert isinstance(unit, RemotePicture)
                if skip:
                    skip -= 1
                    continue
                sent += 1
                if sent - 1 in gap:
                    continue
                header = decoder.header(sent, frame0 + sent - 1, time.time(), {}, unit.pts,
                                        key=unit.key)  # fmt: skip
                assert link.send(header, unit.data, lambda: True)
            if stop_after is not None and sent >= stop_after:
                break
        end: Literal["flush", "close"] = "close" if stop_after is not None else "flush"
        assert link.send(decoder.header(0, 0, time.time(), {}, end=end), b"", lambda: True)
    return sent


@pytest.fixture
def lane_env(tmp_path: Path) -> Iterator[tuple[_Detector, Callable[..., DecodeLane]]]:
    detector = _Detector(tmp_path)
    lanes: list[DecodeLane] = []

    def make(backend: NvBackend, name: str = "s", **stream: Any) -> DecodeLane:
        cfg = StreamConfig(id=name, url="clip.mp4", **stream)
        lane = DecodeLane(cfg, f"ipc://{tmp_path}/packets-{name}", f"ipc://{tmp_path}/inbox",
                          detector.store, lambda: backend)  # fmt: skip
        lane.start()
        lanes.append(lane)
        return lane

    yield detector, make
    for lane in lanes:
        lane.stop()
    detector.close()


def test_a_decode_thread_announces_device_pictures_with_the_cpus_pts_and_pixels(
    clips: dict[str, Path], lane_env: tuple[_Detector, Callable[..., DecodeLane]], tmp_path: Path
) -> None:
    """B-frames in MP4 to Annex B by the camera, decoded in the detector in display order:
    every picture announced as a slot -1 FrameRef, its pixels as the CPU decodes them, the
    media clock from its own pts, frame indices in display order; the block policy holds
    at most ``buffer`` pictures (the test releases each as it reads it)."""
    detector, make = lane_env
    backend = FakeDeviceBackend()
    lane = make(backend, buffer=2)
    link = PacketLink(lane.endpoint)
    cpu = _cpu_frames(clips["h264.mp4"])
    try:
        assert _send_session(link, clips["h264.mp4"], "s_nv1", frame0=5) == FRAMES
        detector.until(lambda: detector.final("s_nv1") is not None)
    finally:
        link.close()
    refs = detector.refs
    assert [r.seq for r in refs] == list(range(1, FRAMES + 1))
    assert [r.frame for r in refs] == list(range(5, 5 + FRAMES))
    assert [r.media_ts for r in refs] == [t for t, _ in cpu]
    assert all((r.width, r.height) == (320, 240) for r in refs)
    for ref, (_, bgr) in zip(refs, cpu, strict=True):
        ours = detector.pixels[(ref.ring, ref.seq)]
        assert int(np.abs(ours.astype(np.int16) - bgr).max()) <= 1
    final = detector.final("s_nv1")
    assert final is not None and final.decoded == FRAMES and final.decode_errors == 0
    (session,) = backend.device_sessions
    assert session.host.closed and session.host.flushes == 1 and not session.host.low_latency


def test_a_new_session_closes_the_old_decoder_and_nothing_of_it_comes_after(
    clips: dict[str, Path], lane_env: tuple[_Detector, Callable[..., DecodeLane]]
) -> None:
    """A reconnect: the camera stops the first session after 12 units ("close"), the
    second starts; the pictures the first decoder held for reordering are dropped with
    it, its final report says how many came (the camera forgets the rest), and every
    picture of the old session is announced before any of the new one."""
    detector, make = lane_env
    backend = FakeDeviceBackend()
    lane = make(backend, drop_policy="latest")
    link = PacketLink(lane.endpoint)
    try:
        assert _send_session(link, clips["h264.mp4"], "s_nv1", stop_after=12) == 12
        assert _send_session(link, clips["h264.ts"], "s_nv2", frame0=12) == FRAMES
        detector.until(lambda: detector.final("s_nv2") is not None)
    finally:
        link.close()
    rings = [r.ring for r in detector.refs]
    first = rings.count("s_nv1")
    assert 0 < first < 12  # B-frames: the decoder held pictures back; they went with it
    assert rings == ["s_nv1"] * first + ["s_nv2"] * FRAMES
    final = detector.final("s_nv1")
    assert final is not None and final.decoded == first
    old, new = backend.device_sessions
    assert old.host.closed and old.host.flushes == 0 and new.host.flushes == 1
    assert [r.frame for r in detector.refs if r.ring == "s_nv2"] == list(range(12, 12 + FRAMES))


def test_a_decode_thread_that_joins_a_session_midway_starts_at_its_next_keyframe(
    clips: dict[str, Path], lane_env: tuple[_Detector, Callable[..., DecodeLane]]
) -> None:
    """A session whose first units never came: units without their references are
    counted as refused, not fed to NVDEC; pictures start at the next keyframe."""
    detector, make = lane_env
    lane = make(FakeDeviceBackend())
    link = PacketLink(lane.endpoint)
    try:
        assert _send_session(link, clips["h264-ipp.ts"], "s_nv1", skip=3) == FRAMES - 3
        detector.until(lambda: detector.final("s_nv1") is not None)
    finally:
        link.close()
    final = detector.final("s_nv1")
    assert final is not None and final.decoded == FRAMES - GOP
    assert final.decode_errors == GOP - 3
    assert len(detector.refs) == FRAMES - GOP


def test_pictures_keep_the_cameras_frame_indices_across_units_it_dropped(
    clips: dict[str, Path], lane_env: tuple[_Detector, Callable[..., DecodeLane]]
) -> None:
    """The camera dropped a whole GOP (a full queue drops the rest of the GOP too): the
    pictures after it carry the camera's indices (its clip recorder filed their times
    under them), not a count of pictures, which would run a GOP behind."""
    detector, make = lane_env
    lane = make(FakeDeviceBackend())
    link = PacketLink(lane.endpoint)
    try:
        _send_session(link, clips["h264-ipp.ts"], "s_nv1", frame0=3, gap=range(GOP, 2 * GOP))
        detector.until(lambda: detector.final("s_nv1") is not None)
    finally:
        link.close()
    kept = [*range(GOP), *range(2 * GOP, FRAMES)]
    assert [r.frame for r in detector.refs] == [3 + k for k in kept]


def test_a_decoder_that_raises_in_the_detector_is_contained_and_the_camera_told(
    clips: dict[str, Path], lane_env: tuple[_Detector, Callable[..., DecodeLane]]
) -> None:
    """One stream's decoder raises at its 15th packet: its thread reports the failure
    (the camera then decodes on its CPU) and keeps serving; another stream's thread
    decodes every picture meanwhile."""
    detector, make = lane_env
    bad = make(FakeDeviceBackend(raise_at=14), "bad")
    good = make(FakeDeviceBackend(), "good")
    links = [PacketLink(bad.endpoint), PacketLink(good.endpoint)]
    try:
        _send_session(links[0], clips["hevc.mp4"], "bad_nv1")
        _send_session(links[1], clips["h264.ts"], "good_nv1")
        detector.until(lambda: detector.final("good_nv1") is not None
                       and detector.final("bad_nv1") is not None)  # fmt: skip
        failed = [r for r in detector.reports if r.ring == "bad_nv1" and r.failed]
        assert failed and "unexpected error inside the binding" in failed[0].failed
        assert bad.alive and good.alive
        assert sum(r.ring == "good_nv1" for r in detector.refs) == FRAMES
        assert sum(r.ring == "bad_nv1" for r in detector.refs) == failed[0].decoded < FRAMES
        # The failed stream's next session (the camera reconnected) opens a new decoder.
        _send_session(links[0], clips["h264.ts"], "bad_nv2", stop_after=3)
        detector.until(lambda: detector.final("bad_nv2") is not None)
    finally:
        for link in links:
            link.close()


class _BadPictures(FakeDeviceBackend):
    """Its fifth picture cannot be taken (a picture the shim does not understand):
    the failure is outside the decoder's own calls."""

    def open_device(self, codec: NvCodec, gpu_id: int, low_latency: bool) -> NvDeviceSession:
        session = super().open_device(codec, gpu_id, low_latency)
        assert isinstance(session, FakeDeviceSession)
        count = [0]
        real = session._device

        def device(frames: list[NvFrame]) -> list[NvDeviceFrame]:
            out = real(frames)
            count[0] += len(out)
            if count[0] >= 5:
                raise ValueError("a picture of an unknown layout (test)")
            return out

        session._device = device  # type: ignore[method-assign]
        return session


def test_a_decode_thread_survives_a_failure_outside_the_decoder_and_hands_over(
    clips: dict[str, Path], lane_env: tuple[_Detector, Callable[..., DecodeLane]]
) -> None:
    """Anything that goes wrong with a unit (here taking its picture) hands the stream
    to its camera's CPU, as a decoder error does; the thread lives on for the next
    session (before, it died and the camera reconnected to a socket nobody read)."""
    detector, make = lane_env
    lane = make(_BadPictures())
    link = PacketLink(lane.endpoint)
    try:
        _send_session(link, clips["h264-ipp.ts"], "s_nv1")
        detector.until(lambda: any(r.ring == "s_nv1" and r.failed for r in detector.reports))
        assert lane.alive
        failed = next(r for r in detector.reports if r.failed)
        assert "unknown layout" in failed.failed
    finally:
        link.close()


def test_max_fps_samples_pictures_in_the_detector_on_the_media_clock(
    clips: dict[str, Path], lane_env: tuple[_Detector, Callable[..., DecodeLane]]
) -> None:
    """15 fps at max_fps 5: every third picture is announced, the others go back to the
    camera as ``sampled`` drops (so its in-flight count and drop totals stay true), over
    two sessions of one camera process."""
    detector, make = lane_env
    lane = make(FakeDeviceBackend(), max_fps=5.0)
    link = PacketLink(lane.endpoint)
    try:
        _send_session(link, clips["h264-ipp.ts"], "s_1_nv1")
        _send_session(link, clips["h264-ipp.ts"], "s_1_nv2")  # the camera's next session
        detector.until(lambda: detector.final("s_1_nv2") is not None)
    finally:
        link.close()
    kept, left = FRAMES // 3, FRAMES - FRAMES // 3
    assert len(detector.refs) == 2 * kept and len(detector.dropped) == 2 * left
    assert {d.cause for d in detector.dropped} == {"sampled"}
    # The camera's running totals: every sampled picture of its process so far.
    assert detector.refs[kept - 1].source_dropped["sampled"] == left - 2
    assert detector.refs[-1].source_dropped["sampled"] == 2 * left - 2
    # Each session's report its own (the camera adds them up).
    for ring in ("s_1_nv1", "s_1_nv2"):
        final = detector.final(ring)
        assert final is not None and final.sampled == left


@pytest.mark.parametrize("planes_only", [False, True])
def test_the_pynvvideocodec_shim_hands_out_device_pictures(
    clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch, planes_only: bool
) -> None:
    """PyNvBackend.open_device as written, over the fake library: the frame taken whole
    over DLPack, or from its planes where it exports none; the CPU's pixels either way."""
    if planes_only:
        monkeypatch.setenv("FAKE_NVDEC_PLANES_ONLY", "1")
    detector_side = PyNvBackend(test_nvdec._fake_pynv())
    with open_source(OpenOptions(str(clips["h264-ipp.ts"]))) as container:
        stream = container.streams.video[0]
        session = detector_side.open_device("h264", 0, True)
        remote = RemoteDecoder(stream, "s", "s_nv1", RemoteTally(), 10.0)
        units = [u for p in container.demux(stream) for u in remote.decode(p, DecodeCounters())]
        pictures = [f for u in units if isinstance(u, RemotePicture)
                    for f in session.decode(u.data, u.pts)]  # fmt: skip
        pictures += session.flush()
        session.close()
    cpu = _cpu_frames(clips["h264-ipp.ts"])
    assert len(pictures) == len(cpu) == FRAMES
    for picture, (_, bgr) in zip(pictures, cpu, strict=True):
        ours = DeviceFrame(picture.tensor()).to_bgr()
        assert int(np.abs(ours.astype(np.int16) - bgr).max()) <= 1


def test_a_camera_paces_its_units_in_decode_order(clips: dict[str, Path]) -> None:
    """B-frames: the units go out in decode order, so they are due by their dts (even
    steps); pacing by pts there jumps back and forth and ran a 10 fps camera at 4."""
    with open_source(OpenOptions(str(clips["h264.mp4"]))) as container:
        stream = container.streams.video[0]
        decoder = RemoteDecoder(stream, "s", "s_nv1", RemoteTally(), 10.0)
        units = [u for p in container.demux(stream) for u in decoder.decode(p, DecodeCounters())]
    assert isinstance(units[0], RemotePicture) and len(units) == FRAMES
    keys = [i for i, u in enumerate(units) if isinstance(u, RemotePicture) and u.key]
    assert keys == list(range(0, FRAMES, GOP))  # where a camera that dropped one resumes
    due = [u.time for u in units if isinstance(u, RemotePicture) and u.time is not None]
    pts = [u.pts_s for u in units if isinstance(u, RemotePicture) and u.pts_s is not None]
    assert len(due) == len(pts) == FRAMES
    assert due == sorted(due) and pts != sorted(pts)
    steps = {round(b - a, 6) for a, b in itertools.pairwise(due)}
    assert steps == {round(1 / 15, 6)}


def test_a_remote_session_without_pictures_stalls_and_a_failure_there_hands_over_to_the_cpu(
    clips: dict[str, Path],
) -> None:
    """The camera's side of the reports: the counters follow what the detector decoded; a
    session whose units give no picture for stall_timeout_s is stalled; a failure reported
    by the detector puts the rest of the session on this process's CPU from the next
    keyframe, said once."""
    told: list[str] = []
    tally = RemoteTally()
    counters = DecodeCounters()
    with open_source(OpenOptions(str(clips["h264-ipp.ts"]))) as container:
        stream = container.streams.video[0]
        decoder = RemoteDecoder(stream, "s", "s_nv1", tally, 0.3, told.append)
        packets = container.demux(stream)
        for _ in range(3):
            assert all(
                isinstance(u, RemotePicture) for u in decoder.decode(next(packets), counters)
            )
            decoder.sent_one()
        tally.update(DecodeReport("s", "s_nv1", decoded=2, decode_errors=1))
        decoder.decode(next(packets), counters)
        assert (counters.decoded, counters.decode_errors) == (2, 1)
        time.sleep(0.4)  # no picture since: stalled
        with pytest.raises(SourceStalled):
            decoder.decode(next(packets), counters)
        tally.update(DecodeReport("s", "s_nv1", decoded=5, failed="CUDA_ERROR_ILLEGAL_ADDRESS"))
        out = [decoder.decode(p, counters) for p in packets]
    assert told == ["CUDA_ERROR_ILLEGAL_ADDRESS"] and decoder.on_cpu
    assert counters.decoded == 5  # and the CPU's own pictures are counted by decode_frames
    pictures = [f for batch in out for f in batch if isinstance(f, av.VideoFrame)]
    cpu = _cpu_frames(clips["h264-ipp.ts"])  # from the keyframe after the failure: frame 10
    assert [f.time for f in pictures] == [t for t, _ in cpu[GOP:]]


def test_the_camera_keeps_the_detectors_last_report_and_adds_up_sampled_pictures() -> None:
    """A long-running camera (a looping file: a session a loop) holds one report, not one
    per session, and its sampled total goes across sessions."""
    tally = RemoteTally()
    for n in range(1, 1001):
        tally.update(DecodeReport("s", f"s_nv{n}", decoded=3, sampled=2, final=False))
        tally.update(DecodeReport("s", f"s_nv{n}", decoded=10, sampled=5, final=True))
    assert tally.sampled() == 5000
    last = tally.get("s_nv1000")
    assert last is not None and last.final and tally.get("s_nv999") is None


def test_decode_in_is_strict_and_only_for_nvdec() -> None:
    base = "model: {weights: x.pt}\nstreams:\n  - {id: a, url: a.mp4, decode: %s, decode_in: %s}\n"
    assert parse_config(base % ("nvdec", "detector"), env={}).streams[0].decode_in == "detector"
    assert parse_config(base % ("auto", "camera"), env={}).streams[0].decode_in == "camera"
    for decode, where in (("cpu", "detector"), ("auto", "gpu")):
        with pytest.raises(ConfigError) as info:
            parse_config(base % (decode, where), env={})
        ((key, _),) = info.value.problems
        assert key == "streams.0.decode_in"


def test_the_supervisor_and_the_cameras_do_not_import_torch() -> None:
    """Only the detector process needs torch: importing it in the supervisor (through the
    NV12 letterbox's types) cost seconds at every start and stop."""
    code = ("import sys, streamd.app, streamd.sources.worker; "
            "sys.exit('torch' in sys.modules)")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_gpu_check_runs_both_decode_shapes_and_the_pipeline_decoded_in_the_detector() -> None:
    """What a GPU session runs (make gpu-check): the decode bench in the camera processes'
    shape and the detector's (pictures in device memory), and the pipeline bench with
    decode_in: detector beside the host path at 25, 50, 100 streams."""
    done = subprocess.run([sys.executable, "-m", "streamd.gpucheck", "--dry-run"],
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    for threads in (1, 16):
        assert f"decode-nvdec-worker-{threads}:" in done.stdout
        assert f"decode-nvdec-inference-{threads}:" in done.stdout
    for n in (25, 50, 100):
        line = next(
            x
            for x in done.stdout.splitlines()
            if f"--out build/gpu-check/frames-on-gpu-{n}.json" in x
        )
        assert f"--streams {n} --width 1920 --height 1080 --fps 30" in line
        assert "--decode-in inference" in line and "--device cuda:0" in line


def _cpu_frames(clip: Path) -> list[tuple[float, npt.NDArray[np.uint8]]]:
    """(pts seconds, BGR) of every frame as the CPU path decodes it."""
    with open_source(OpenOptions(str(clip))) as container:
        out = []
        for f in decode_frames(container, DecodeCounters(), 10.0):
            assert f.pts_s is not None
            out.append((f.pts_s, f.image()))
        return out


# --- through the daemon: a fake PyNvVideoCodec found through a stub libcuda ------------------

fake_gpu_env = pytest.fixture(scope="module")(getattr(test_nvdec.fake_gpu_env, "__wrapped__"))  # noqa: B009


SCENE = 60  # frames in the scene fixture: 4 s at 15 fps


def _reencode(src: Path, out: Path, *args: str) -> Path:
    exe = shutil.which("ffmpeg")
    assert exe, "ffmpeg missing: `make system-deps` installs it"
    subprocess.run([exe, "-v", "error", "-y", "-i", str(src), *args, str(out)], check=True)
    return out


def _stop(daemon: subprocess.Popen[bytes]) -> None:
    """SIGTERM: exit 0 leaving no worker and no shared memory of its own. (The 5 s bound on
    stopping is test_small_things'; four streams and the CPU detector on two shared cores
    can take longer, which is not what this test is about.)"""
    if daemon.poll() is not None:
        return
    children = psutil.Process(daemon.pid).children(recursive=True)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
    _, alive = psutil.wait_procs(children, timeout=5)
    assert [p for p in alive if running(p)] == []
    pids = {str(p.pid) for p in children}
    assert [n for n in shm_segments() if n.split("_")[3] in pids] == []


def _boxes(event: dict[str, Any]) -> npt.NDArray[np.float64]:
    xyxy = np.array([o["bbox"] for o in event["objects"]], dtype=np.float64).reshape(-1, 4)
    return xyxy[np.lexsort((xyxy[:, 1], xyxy[:, 0]))]


def test_the_daemon_detects_on_pictures_decoded_in_the_detector_as_on_the_cpus(
    scene: tuple[Path, Path],
    clips: dict[str, Path],
    person_model: Path,
    tmp_path: Path,
    fake_gpu_env: dict[str, str],
) -> None:
    """One real daemon, the real person detector at 320: the scene decoded in the detector
    (``decode_in: detector``) and the same scene decoded on the CPU give the same det
    events, frame by frame, boxes within 1 px; the camera's counters say what the detector
    decoded. An H.265 stream whose decoder fails in the detector at its 15th packet falls
    back to its camera's CPU (counted, published) while the others go on. An RTSP camera
    that stalls mid-stream reconnects: its decode session is closed in the detector (the
    pictures it held go with it) and nothing of it comes after the new session's frames;
    its live view is served from pictures copied back from the detector."""
    port = free_port()
    video, _ = scene
    # All at the scene's size: a batch of one size gets the same letterbox whatever mix of
    # streams is in it (mixed sizes go square), so the boxes compare frame by frame.
    x265 = f"log-level=error:keyint={GOP}:min-keyint={GOP}"
    hevc = _reencode(video, tmp_path / "scene-hevc.mp4", "-c:v", "libx265", "-preset",
                     "ultrafast", "-x265-params", x265)  # fmt: skip
    whole = [[0, 0], [640, 0], [640, 360], [0, 360]]  # snapshots: every picture comes back
    zone = {"name": "all", "polygon": whole, "alert_on": ["enter"], "snapshot": True}
    server = RtspServer(video).start()
    live = {"id": "live", "url": server.url(), "decode_in": "detector", "stall_timeout_s": 2,
            "open_timeout_s": 3, "reconnect": {"initial_s": 0.2, "max_s": 0.5}}  # fmt: skip
    streams: list[dict[str, Any]] = [
        {"id": "gpu", "url": str(video), "decode": "nvdec", "decode_in": "detector",
         "zones": [zone]},
        {"id": "cpu", "url": str(video), "decode": "cpu"},
        {"id": "dies", "url": str(hevc), "decode": "nvdec", "decode_in": "detector"},
        live,
    ]  # fmt: skip
    cfg = write_pipeline(tmp_path, person_model, port, streams)
    log = EventLog(f"tcp://127.0.0.1:{port}")
    env = {**fake_gpu_env, "FAKE_NVDEC_FAIL": "hevc:14"}
    daemon = start(cfg, tmp_path / "daemon.log", env=env)
    try:
        # The RTSP camera stalls mid-stream (the server stops sending), reconnects. First:
        # its clip lasts 4 s, and on a loaded machine the file streams take longer.
        assert log.wait_for(lambda _t, e: e.topic == "det.live" and e.payload["frame"] >= 5, 60)
        server.pause()
        stalled = log.wait_state("live", {"stalled"}, 15)
        assert stalled is not None and stalled[1]["reason"] == "no_frames"
        server.resume()
        again = log.wait_for(lambda t, e: e.topic == "status.live" and t > stalled[0]
                             and e.payload["state"] == "streaming", 30)  # fmt: skip
        assert again is not None
        after = log.wait_for(lambda t, e: e.topic == "det.live" and t > again[0] + 1.0, 30)
        assert after is not None
        # The live view of a stream decoded in the detector: its pictures come back to the
        # camera's process while it is watched.
        listen = json.loads(cfg.read_text())["http"]["listen"]
        with urllib.request.urlopen(f"http://{listen}/streams/live.jpg", timeout=20) as r:
            jpeg = r.read()
        view = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        for sid in ("gpu", "cpu", "dies"):
            assert log.wait_state(sid, {"ended"}, 120) is not None, (
                tmp_path / "daemon.log"
            ).read_text()[-3000:]
        m = scrape(cfg)
    finally:
        log.close()
        _stop(daemon)
        server.close()
    gpu, cpu = log.payloads("det.gpu"), log.payloads("det.cpu")
    assert len(gpu) == len(cpu) == SCENE  # every frame (block policy)
    assert [e["frame"] for e in gpu] == [e["frame"] for e in cpu] == list(range(SCENE))
    assert sum(len(e["objects"]) for e in cpu) >= SCENE  # two people walk through the scene
    for ours, theirs in zip(gpu, cpu, strict=True):
        a, b = _boxes(ours), _boxes(theirs)
        assert len(a) == len(b), (ours["frame"], ours["objects"], theirs["objects"])
        assert len(a) == 0 or float(np.abs(a - b).max()) <= 1.0, ours["frame"]
        assert (ours["width"], ours["height"]) == (theirs["width"], theirs["height"])
    assert view is not None and view.shape == (360, 640, 3)
    alerts = log.payloads("alert.gpu")  # the pictures came back: snapshots attached
    assert alerts and all(a["snapshot"] for a in alerts), alerts
    status = log.payloads("status.gpu")
    streaming = [p for p in status if p["state"] == "streaming"]
    assert streaming[0]["detail"] == "decode: nvdec (h264 on NVDEC in the detector process)"
    ended = status[-1]
    assert ended["state"] == "ended" and ended["counters"]["decoded"] == SCENE
    assert ended["counters"]["decode_errors"] == 0 and ended["counters"]["decode_fallbacks"] == 0
    assert sample(m, "streamd_frames_decoded_total", stream="gpu") == SCENE
    assert sample(m, "streamd_decoder", stream="gpu", decoder="nvdec") == 1
    # The H.265 stream: NVDEC's pictures before the failure, then its camera's CPU's from a
    # keyframe on.
    dies = log.payloads("status.dies")
    fell = [p for p in dies if p["reason"] == "decoder_fallback"]
    assert len(fell) == 1 and fell[0]["detail"].startswith(
        "decode: cpu (nvdec failed: CUDA_ERROR_LAUNCH_FAILED"
    ), dies
    assert dies[-1]["state"] == "ended" and dies[-1]["counters"]["decode_fallbacks"] == 1
    # Lost: the units in flight when it failed and the rest of their GOP (block policy:
    # the camera learns of the failure from the detector, and cannot rewind the file).
    analysed = len(log.payloads("det.dies"))
    assert SCENE // 2 <= analysed < SCENE
    assert dies[-1]["counters"]["decoded"] == analysed  # NVDEC's pictures, then the CPU's
    assert sample(m, "streamd_decode_fallbacks_total", stream="dies", cause="device_error") == 1
    # The reconnect: frames only go forward (latest policy: some may drop), none of the
    # stalled session's after the new one's began; det events resumed after it.
    frames = [e["frame"] for e in log.payloads("det.live")]
    assert frames == sorted(set(frames))
    before = [e.payload["frame"] for t, e in log.snapshot() if e.topic == "det.live"
              and t < again[0]]  # fmt: skip
    assert before and frames[-1] > max(before)
    assert again[1].payload["detail"] == "decode: nvdec (h264 on NVDEC in the detector process)"


# --- the real decoder (a GPU with PyNvVideoCodec) -------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(probe() is not None, reason=f"NVDEC unavailable: {probe()}")
def test_real_nvdec_device_pictures_give_the_cpus_boxes(
    scene: tuple[Path, Path],
    person_model: Path,
    lane_env: tuple[_Detector, Callable[..., DecodeLane]],
) -> None:
    """PyNvVideoCodec with usedevicememory through a decode thread: the pictures are CUDA
    tensors (no host copy), every one comes out with the CPU's pts, and the detector's boxes
    on them (NV12 letterboxed on the GPU) are within 1 px of its boxes on the CPU-decoded
    frames."""
    video, _ = scene
    detector, make = lane_env
    lane = make(load_backend())
    link = PacketLink(lane.endpoint)
    try:
        sent = _send_session(link, video, "s_nv1")
        detector.until(lambda: detector.final("s_nv1") is not None, 60)
    finally:
        link.close()
    cpu = _cpu_frames(video)
    held = detector.frames
    assert len(detector.refs) == sent == len(cpu) == len(held)
    assert [r.media_ts for r in detector.refs] == [t for t, _ in cpu]
    assert all(f.nv12.is_cuda for f in held)
    model = create_detector(ModelConfig(weights=str(person_model), imgsz=IMGSZ), 8)
    for i in range(0, len(cpu), 8):
        ours = model.detect(held[i : i + 8])
        theirs = model.detect([bgr for _, bgr in cpu[i : i + 8]])
        _within_a_pixel(ours, theirs)
