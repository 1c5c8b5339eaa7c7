"""NVDEC decode (issue 18): the adapter on the CPU against a fake decoder
(tests/fake_nvdec.py), the choice of decoder, the fallbacks, the start-up refusal,
and the real PyNvVideoCodec under the ``gpu`` marker."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from streamd import metrics
from streamd.config import ConfigError, parse_config
from streamd.sources.nvdec import (
    DecoderChoice,
    NvBackend,
    NvdecBitstreamError,
    NvdecDecoder,
    NvdecUnavailable,
    choose,
    open_nvdec,
    probe,
    start_refusals,
)
from streamd.sources.reader import (
    CpuDecoder,
    DecodeCounters,
    DecodedFrame,
    FrameDecoder,
    OpenOptions,
    decode_frames,
    open_source,
)

from .daemon import (
    EventLog,
    http_status,
    sample,
    scrape,
    start,
    stop_and_check_own_clean,
    write_pipeline,
)
from .fake_nvdec import FakeBackend, FakeDeviceBackend, FakeSession
from .util import free_port

FPS, GOP, FRAMES = 15, 10, 30


def _ffmpeg(out: Path, *args: str) -> Path:
    exe = shutil.which("ffmpeg")
    assert exe, "ffmpeg missing: `make system-deps` installs it"
    subprocess.run([exe, "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=320x240:rate={FPS}", "-frames:v", str(FRAMES), *args,
                    str(out)], check=True)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """H.264 with B-frames in MP4 (length-prefixed, avcC) and in MPEG-TS (Annex B already),
    and H.265 in MP4 (hvcC): keyframes every GOP frames."""
    d = tmp_path_factory.mktemp("nvdec")
    h264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-bf", "2", "-g", str(GOP),
            "-keyint_min", str(GOP), "-sc_threshold", "0"]  # fmt: skip
    hevc = ["-c:v", "libx265", "-pix_fmt", "yuv420p", "-preset", "ultrafast",
            "-x265-params", f"log-level=error:keyint={GOP}:min-keyint={GOP}:bframes=2"]  # fmt: skip
    ipp = [*h264[:5], "0", *h264[6:]]  # -bf 0: what most cameras send
    return {
        "h264.mp4": _ffmpeg(d / "h264.mp4", *h264),
        "h264.ts": _ffmpeg(d / "h264.ts", *h264),
        "h264-ipp.ts": _ffmpeg(d / "h264-ipp.ts", *ipp),
        "hevc.mp4": _ffmpeg(d / "hevc.mp4", *hevc),
    }


def _decode(
    path: Path, make: Callable[[av.VideoStream], FrameDecoder], stop_after: int | None = None
) -> tuple[list[DecodedFrame], DecodeCounters, FrameDecoder]:
    counters = DecodeCounters()
    with open_source(OpenOptions(str(path))) as container:
        decoder = make(container.streams.video[0])
        frames = []
        for frame in decode_frames(container, counters, 10.0, None, decoder):
            frame.image()  # converted while the container is open, as the worker does
            frames.append(frame)
            if stop_after is not None and len(frames) == stop_after:
                break
        decoder.close()
    return frames, counters, decoder


def _cpu(path: Path) -> list[DecodedFrame]:
    return _decode(path, lambda _: CpuDecoder())[0]


def _nvdec(backend: NvBackend) -> Callable[[av.VideoStream], FrameDecoder]:
    return lambda stream: open_nvdec(backend, stream)


@pytest.mark.parametrize("name", ["h264.mp4", "h264.ts", "h264-ipp.ts", "hevc.mp4"])
def test_nvdec_frames_match_cpu_frames_pts_and_pixels(clips: dict[str, Path], name: str) -> None:
    """Annex B for MP4's length-prefixed packets (pass-through for TS), every frame out in
    display order with its pts, and the last ones out of the flush at the end."""
    cpu = _cpu(clips[name])
    backend = FakeBackend()
    frames, counters, _ = _decode(clips[name], _nvdec(backend))
    assert len(cpu) == FRAMES and len(frames) == FRAMES and counters.decode_errors == 0
    assert [f.pts_s for f in frames] == [f.pts_s for f in cpu]
    assert all(b > a for a, b in zip([f.pts_s or 0 for f in frames][:-1],
                                     [f.pts_s or 0 for f in frames][1:], strict=True))  # fmt: skip
    for ours, theirs in zip(frames, cpu, strict=True):
        assert (ours.width, ours.height) == (320, 240)
        diff = np.abs(ours.image().astype(np.int16) - theirs.image().astype(np.int16))
        assert int(diff.max()) <= 1  # NV12 and I420 through the same BT.601 conversion
    (session,) = backend.sessions
    assert session.flushes == 1  # the size-0 packet at the end: B-frames held back came out
    fed_pts = [pts for _, pts in session.fed]
    if name == "h264-ipp.ts":  # no B-frames: NVDEC's low-latency mode
        assert session.low_latency and fed_pts == sorted(fed_pts)
    else:  # fed in decode order; frames came out in display order
        assert not session.low_latency and fed_pts != sorted(fed_pts)


def test_without_annexb_conversion_the_decoder_gets_nothing_it_can_use(
    clips: dict[str, Path],
) -> None:
    """The fake is as strict as NVDEC's parser: MP4's packets as they are decode to nothing."""
    session = FakeSession("h264")
    out, refused = [], 0
    with av.open(str(clips["h264.mp4"])) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.size:
                try:
                    out += session.decode(bytes(packet), packet.pts or 0)
                except NvdecBitstreamError:
                    refused += 1
    assert out == [] and refused > 0


def test_a_reconnect_drops_the_session_and_the_next_starts_fresh(clips: dict[str, Path]) -> None:
    backend = FakeBackend()
    choice = DecoderChoice("cam", "auto", loader=lambda: backend, prober=lambda: None)
    first, _, decoder = _decode(clips["h264.mp4"], choice.open, stop_after=12)
    assert decoder.name == "nvdec" and len(first) == 12
    old = backend.sessions[0]
    assert old.closed and old.flushes == 0  # held pictures of a dead session are not served
    second, _, _ = _decode(clips["h264.ts"], choice.open)
    assert len(backend.sessions) == 2 and backend.sessions[1].flushes == 1
    assert [f.pts_s for f in second] == [f.pts_s for f in _cpu(clips["h264.ts"])]
    assert choice.fallbacks == 0 and choice.describe() == "decode: nvdec (h264 on NVDEC)"


@pytest.mark.parametrize(
    ("mode", "codec", "unavailable", "expected"),
    [
        ("auto", "h264", None, "nvdec"),
        ("auto", "hevc", None, "nvdec"),
        ("auto", "mjpeg", None, "cpu"),
        ("auto", "h264", "no CUDA device 0 (0 found)", "cpu"),
        ("cpu", "h264", None, "cpu"),
        ("nvdec", "h264", None, "nvdec"),
        ("nvdec", "vp9", None, "cpu"),
        ("nvdec", "h264", "PyNvVideoCodec is not installed", "cpu"),
    ],
)
def test_which_decoder_a_stream_gets(
    mode: Any, codec: str, unavailable: str | None, expected: str
) -> None:
    name, reason = choose(mode, codec, unavailable)
    assert name == expected
    if unavailable is not None:
        assert unavailable in reason


def _fallbacks(stream: str, cause: str) -> float:
    return metrics.DECODE_FALLBACKS.labels(stream, cause)._value.get()


def test_auto_without_nvdec_here_decodes_on_the_cpu_quietly(clips: dict[str, Path]) -> None:
    def load() -> NvBackend:
        raise AssertionError("auto must not load a backend the probe said is missing")

    choice = DecoderChoice("quiet", "auto", loader=load, prober=lambda: "no NVIDIA driver")
    frames, _, decoder = _decode(clips["h264.mp4"], choice.open)
    assert decoder.name == "cpu" and len(frames) == FRAMES
    assert choice.fallbacks == 0 and _fallbacks("quiet", "unavailable") == 0
    assert choice.describe() == "decode: cpu (nvdec unavailable: no NVIDIA driver)"
    assert probe() is not None  # this machine: no PyNvVideoCodec or no GPU


@pytest.mark.parametrize("failure", ["import", "open"])
def test_nvdec_that_does_not_load_or_open_falls_back_counted(
    clips: dict[str, Path], failure: str
) -> None:
    backend = FakeBackend(open_error="CreateDecoder(h264) failed: CUDA_ERROR_NO_DEVICE")
    loads: list[int] = []

    def load() -> NvBackend:
        loads.append(1)
        if failure == "import":
            raise NvdecUnavailable("PyNvVideoCodec does not import: driver too old")
        return backend

    stream = f"fb-{failure}"
    choice = DecoderChoice(stream, "nvdec", loader=load, prober=lambda: None)
    for _ in range(2):  # a reconnect does not try again: one fallback per process
        frames, _, decoder = _decode(clips["h264.mp4"], choice.open)
        assert decoder.name == "cpu" and len(frames) == FRAMES
    assert loads == [1] and choice.fallbacks == 1
    assert _fallbacks(stream, "unavailable") == 1
    assert choice.describe().startswith("decode: cpu (nvdec unavailable: ")
    assert metrics.DECODER.labels(stream, "cpu")._value.get() == 1
    assert metrics.DECODER.labels(stream, "nvdec")._value.get() == 0


def test_a_device_that_fails_mid_stream_hands_over_to_the_cpu_at_the_next_keyframe(
    clips: dict[str, Path],
) -> None:
    told: list[str] = []
    backend = FakeBackend(device_error_at=14)  # dies in the second GOP
    choice = DecoderChoice("dev", "auto", loader=lambda: backend, prober=lambda: None,
                           on_fallback=told.append)  # fmt: skip
    frames, counters, decoder = _decode(clips["h264.mp4"], choice.open)
    cpu = _cpu(clips["h264.mp4"])
    assert isinstance(decoder, NvdecDecoder) and decoder.on_cpu
    assert backend.sessions[0].closed
    assert counters.decode_errors == 0  # lost references are not corrupt packets
    pts = [f.pts_s for f in frames]
    # Nothing twice, in order, and everything from the third keyframe on (the CPU's part).
    assert pts == sorted(set(pts)) and pts[-(FRAMES - 2 * GOP) :] == [
        f.pts_s for f in cpu[2 * GOP :]
    ]
    assert len(told) == 1 and told[0].startswith("decode: cpu (nvdec failed: CUDA_ERROR")
    assert choice.fallbacks == 1 and _fallbacks("dev", "device_error") == 1
    # The next session (a reconnect) goes straight to the CPU.
    _, _, again = _decode(clips["h264.mp4"], choice.open)
    assert again.name == "cpu" and len(backend.sessions) == 1


def test_a_packet_nvdec_refuses_is_counted_and_skipped(clips: dict[str, Path]) -> None:
    class Refusing(FakeSession):
        def decode(self, data: bytes, pts: int) -> list[Any]:
            if len(self.fed) == 5:
                self.fed.append((0, pts))
                raise NvdecBitstreamError("bad slice (fake)")
            return super().decode(data, pts)

    frames, counters, _ = _decode(clips["h264.mp4"], lambda s: NvdecDecoder(s, Refusing("h264")))
    assert counters.decode_errors == 1 and 0 < len(frames) < FRAMES


def test_decode_key_is_strict_and_named() -> None:
    base = 'model: {weights: x.pt}\nstreams:\n  - {id: a, url: "rtsp://cam/s", decode: %s}\n'
    assert parse_config(base % "nvdec", env={}).streams[0].decode == "nvdec"
    assert parse_config(base % "auto", env={}).streams[0].decode == "auto"
    with pytest.raises(ConfigError) as info:
        parse_config(base % "gpu", env={})
    ((key, reason),) = info.value.problems
    assert key == "streams.0.decode" and "auto" in reason and "nvdec" in reason


def test_nvdec_asked_for_where_it_is_unavailable_refuses_start_naming_the_key(
    tmp_path: Path,
) -> None:
    cfg = parse_config(
        "model: {weights: x.pt}\nstreams:\n  - {id: a, url: a.mp4}\n"
        "  - {id: b, url: b.mp4, decode: nvdec}\n  - {id: c, url: c.mp4, decode: cpu}\n",
        env={},
    )
    assert start_refusals(cfg.streams, lambda: "no CUDA device 0 (0 found)") == [
        "streams.1.decode: nvdec is unavailable: no CUDA device 0 (0 found)"
    ]
    assert start_refusals(cfg.streams, lambda: None) == []
    # The command line: exit 2 before anything starts, one line naming the key.
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        json.dumps(
            {
                "model": {"weights": "x.pt"},
                "streams": [{"id": "b", "url": "b.mp4", "decode": "nvdec"}],
            }
        )
    )
    done = subprocess.run([sys.executable, "-m", "streamd.cli", "run", str(pipeline)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "streams.0.decode: nvdec is unavailable: " in done.stderr


# --- the real decoder (a GPU with PyNvVideoCodec) -------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(probe() is not None, reason=f"NVDEC unavailable: {probe()}")
def test_boxes_on_nvdec_frames_are_within_a_pixel_of_cpu_frames(
    person_model: Path, scene: tuple[Path, Path]
) -> None:
    """PyNvVideoCodec itself (the shim): same frames, same pts, boxes within 1 px."""
    from streamd.config import ModelConfig
    from streamd.detect import create_detector
    from streamd.sources.nvdec import load_backend

    video, _ = scene
    backend = load_backend()
    nv, _, decoder = _decode(video, _nvdec(backend))
    cpu = _cpu(video)
    assert decoder.name == "nvdec" and len(nv) == len(cpu) > 0
    assert [f.pts_s for f in nv] == [f.pts_s for f in cpu]
    detector = create_detector(ModelConfig(weights=str(person_model), imgsz=640), 8)
    for i in range(0, len(cpu), 8):
        ours = detector.detect([f.image() for f in nv[i : i + 8]])
        theirs = detector.detect([f.image() for f in cpu[i : i + 8]])
        for a, b in zip(ours, theirs, strict=True):
            assert len(a) == len(b)
            if len(a):  # the same boxes, in x1, y1 order
                pa = a.xyxy[np.lexsort((a.xyxy[:, 1], a.xyxy[:, 0]))]
                pb = b.xyxy[np.lexsort((b.xyxy[:, 1], b.xyxy[:, 0]))]
                assert np.abs(pa - pb).max() <= 1.0


# --- the decode benchmark ---------------------------------------------------------------------


def test_decode_bench_counts_frames_of_each_decoder_in_one_window(
    clips: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamd import decode_bench
    from streamd.decode_bench import DecodeBenchSpec, format_line, run_decode

    spec = DecodeBenchSpec(decoder="cpu", threads=2, decode_in="inference",
                           clip=str(clips["h264.mp4"]), duration_s=1.0)  # fmt: skip
    report = run_decode(spec, tmp_path)
    assert len(report["frames"]) == 2 and all(n > FRAMES for n in report["frames"])  # looped
    assert report["fps_total"] == pytest.approx(sum(report["frames"]), rel=0.01)
    assert "decode cpu x2 (inference), h264 320x240 to BGR: " in format_line(report)
    # NVDEC in the inference shape decodes as the detector's decode threads do: pictures
    # kept in device memory (here over the fake, torch tensors on the CPU).
    backend = FakeDeviceBackend()
    monkeypatch.setattr(decode_bench, "probe", lambda: None)
    monkeypatch.setattr(decode_bench, "load_backend", lambda: backend)
    nv_spec = DecodeBenchSpec(decoder="nvdec", threads=1, decode_in="inference",
                              clip=str(clips["hevc.mp4"]), duration_s=0.5)  # fmt: skip
    nv = run_decode(nv_spec, tmp_path)
    assert nv["frames"][0] > 0 and nv["clip"]["codec"] == "hevc" and backend.device_sessions
    assert nv["pictures_in"] == "device memory" and "to RGB on the device" in format_line(nv)


def test_decode_bench_command_line(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "decode.json"
    base = [sys.executable, "-m", "streamd.cli", "bench", "--decode-only", "--duration", "0.5",
            "--clip", str(clips["h264.ts"]), "--out", str(out)]  # fmt: skip
    done = subprocess.run([*base, "--decoder", "nvdec"], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("nvdec unavailable: ") and not out.exists()
    done = subprocess.run([*base, "--threads", "2"], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "decode cpu x2 (worker), h264 320x240 to BGR: " in done.stdout
    report = json.loads(out.read_text())
    assert report["fps_total"] > 0 and len(report["frames"]) == 2


# --- through the daemon (this machine: no NVDEC) ----------------------------------------------


def test_the_daemon_says_which_decoder_each_stream_uses(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    port = free_port()
    clip = str(clips["h264.ts"])
    live = {"url": clip, "loop": True, "realtime": True}
    streams = [{"id": "auto", **live}, {"id": "cpu", **live, "decode": "cpu"}]
    cfg = write_pipeline(tmp_path, Path("unused.pt"), port, streams,
                         model={"backend": "null", "null_boxes": 1, "imgsz": 320})  # fmt: skip
    log = EventLog(f"tcp://127.0.0.1:{port}")
    daemon = start(cfg, tmp_path / "daemon.log")
    try:
        auto = log.wait_state("auto", {"streaming"}, 60)
        cpu = log.wait_state("cpu", {"streaming"}, 60)
        assert auto is not None and cpu is not None, (tmp_path / "daemon.log").read_text()
        assert auto[1]["detail"].startswith("decode: cpu (nvdec unavailable: ")
        assert cpu[1]["detail"] == "decode: cpu (asked for)"
        assert auto[1]["counters"]["decode_fallbacks"] == 0  # auto without NVDEC: no fallback
        rows = http_status(cfg)["streams"]
        assert rows["auto"]["detail"] == auto[1]["detail"]
        m = scrape(cfg)
        for sid in ("auto", "cpu"):
            assert sample(m, "streamd_decoder", stream=sid, decoder="cpu") == 1
            assert sample(m, "streamd_decoder", stream=sid, decoder="nvdec") == 0
    finally:
        log.close()
        if daemon.poll() is None:
            stop_and_check_own_clean(daemon, signal.SIGTERM)


# --- the shim and the daemon's NVDEC path, over a fake PyNvVideoCodec -------------------------

FAKE_PYNV = Path(__file__).parent / "fake_pynv"
STUB_LIBCUDA = """
int cuInit(unsigned int flags) { (void)flags; return 0; }
int cuDeviceGetCount(int *count) { *count = 1; return 0; }
"""


def _fake_pynv() -> Any:
    import importlib.util

    init = FAKE_PYNV / "PyNvVideoCodec" / "__init__.py"
    spec = importlib.util.spec_from_file_location("fake_PyNvVideoCodec", init)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pynvvideocodec_shim_over_the_fake_library(clips: dict[str, Path]) -> None:
    """PyNvBackend as written (PacketData from bytes, host pointers copied out, pts)."""
    from streamd.sources.nvdec import PyNvBackend

    backend = PyNvBackend(_fake_pynv())
    for name in ("h264.mp4", "h264-ipp.ts", "hevc.mp4"):
        frames, counters, _ = _decode(clips[name], _nvdec(backend))
        cpu = _cpu(clips[name])
        assert [f.pts_s for f in frames] == [f.pts_s for f in cpu] and counters.decode_errors == 0
        assert all(np.array_equal(a.image(), b.image()) or
                   int(np.abs(a.image().astype(int) - b.image()).max()) <= 1
                   for a, b in zip(frames, cpu, strict=True))  # fmt: skip


@pytest.fixture(scope="module")
def fake_gpu_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment in which a daemon finds a CUDA device (a stub libcuda with the two calls
    the probe makes) and PyNvVideoCodec (the fake): its whole NVDEC path runs on the CPU."""
    import os

    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler for the stub libcuda")
    d = tmp_path_factory.mktemp("stub-cuda")
    (d / "cuda.c").write_text(STUB_LIBCUDA)
    subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o",
                    str(d / "libcuda.so.1"), str(d / "cuda.c")], check=True)  # fmt: skip
    return {
        "LD_LIBRARY_PATH": os.pathsep.join(
            p for p in (str(d), os.environ.get("LD_LIBRARY_PATH")) if p
        ),
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(FAKE_PYNV), os.environ.get("PYTHONPATH")) if p
        ),
    }


def test_a_device_failing_mid_stream_in_the_daemon_is_published_and_frames_go_on(
    clips: dict[str, Path], tmp_path: Path, fake_gpu_env: dict[str, str]
) -> None:
    port = free_port()
    streams = [{"id": "ok", "url": str(clips["h264.mp4"]), "decode": "nvdec"},
               {"id": "dies", "url": str(clips["hevc.mp4"]), "decode": "nvdec"}]  # fmt: skip
    cfg = write_pipeline(tmp_path, Path("unused.pt"), port, streams,
                         model={"backend": "null", "null_boxes": 1, "imgsz": 320})  # fmt: skip
    log = EventLog(f"tcp://127.0.0.1:{port}")
    env = {**fake_gpu_env, "FAKE_NVDEC_FAIL": "hevc:14"}  # the H.265 decoder dies at packet 14
    daemon = start(cfg, tmp_path / "daemon.log", env=env)
    try:
        for sid in ("ok", "dies"):
            ended = log.wait_state(sid, {"ended"}, 60)
            assert ended is not None, (tmp_path / "daemon.log").read_text()
        m = scrape(cfg)
    finally:
        log.close()
        if daemon.poll() is None:
            stop_and_check_own_clean(daemon, signal.SIGTERM)
    for sid, codec in (("ok", "h264"), ("dies", "hevc")):
        states = [(p["state"], p["reason"], p["detail"]) for p in log.payloads(f"status.{sid}")]
        assert ("streaming", "first_frame", f"decode: nvdec ({codec} on NVDEC)") in states, states
    ok = log.payloads("status.ok")
    assert not [p for p in ok if p["reason"] == "decoder_fallback"]
    assert ok[-1]["state"] == "ended" and ok[-1]["counters"]["decode_fallbacks"] == 0
    assert len(log.payloads("det.ok")) == FRAMES  # every frame, from NVDEC (block policy)
    dies = log.payloads("status.dies")
    fell = [p for p in dies if p["reason"] == "decoder_fallback"]
    assert len(fell) == 1 and fell[0]["state"] == "streaming" == fell[0]["prev_state"]
    assert fell[0]["detail"].startswith("decode: cpu (nvdec failed: CUDA_ERROR_LAUNCH_FAILED")
    assert dies[-1]["state"] == "ended" and dies[-1]["counters"]["decode_fallbacks"] == 1
    # NVDEC's frames before the failure, then the CPU's from the next keyframe (20) on.
    assert FRAMES - GOP <= len(log.payloads("det.dies")) < FRAMES
    assert sample(m, "streamd_decode_fallbacks_total", stream="dies", cause="device_error") == 1
    assert sample(m, "streamd_decoder", stream="dies", decoder="cpu") == 1
    assert sample(m, "streamd_decoder", stream="ok", decoder="nvdec") == 1
