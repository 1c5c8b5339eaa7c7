"""``streamd bench``: measure the whole pipeline, and the detector alone, on this machine.

The pipeline run is the real daemon (a subprocess: supervisor, inference
worker, one source worker per stream) fed N synthetic live streams and
overloaded on purpose, so the detector never waits for frames. Its analysed
rate is compared with the detector's own throughput at the batch size the
pipeline actually used: the difference is pipeline overhead.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import psutil
import zmq

from streamd.config import ModelConfig
from streamd.metrics import STAGES


class DaemonExited(RuntimeError):
    """The daemon under measurement stopped before the run ended."""


@dataclass(frozen=True, slots=True)
class BenchSpec:
    streams: int = 2
    width: int = 640
    height: int = 360
    fps: int = 15
    duration_s: float = 30.0
    warmup_s: float = 5.0
    weights: str = "yolo11n.pt"
    imgsz: int = 320
    backend: str = "auto"
    precision: str = "auto"  # int8/auto: calibrated on the bench clip, guarded (see _calibration)
    device: str = "auto"
    max_batch: int = 8
    max_wait_ms: float = 10.0
    model_seconds: float = 8.0  # per batch size, detector alone
    port: int = 5599
    http_port: int = 8099
    viewers: int = 0  # live-view clients on the first stream, on and off in turns
    viewer_window_s: float = 10.0
    boxes: int = 10  # backend null: boxes per frame
    block: bool = False  # files read as fast as the pipeline takes them (drop_policy block)
    vs_ultralytics: bool = False  # then the plain ultralytics track() loop on the same clips
    decode_in: str = "camera"  # streams' decode_in (detector: NVDEC pictures stay on the GPU)


def _frames(spec: BenchSpec, workdir: Path, count: int) -> list[npt.NDArray[np.uint8]]:
    """Real scene frames (people in them), so NMS and tracking do real work."""
    clip = _clip(spec, workdir)
    with av.open(str(clip)) as c:
        out = [f.to_ndarray(format="bgr24") for f in itertools.islice(c.decode(video=0), count)]
    return [np.ascontiguousarray(f, dtype=np.uint8) for f in out]


def _clip(spec: BenchSpec, workdir: Path) -> Path:
    from streamd.synth import SceneSpec, write_scene

    # Read unpaced, a 6 s clip would be reopened several times a second: a longer one
    # keeps the figure about decoding and analysis, not about opening files.
    seconds = 30.0 if spec.block else 6.0
    clip = workdir / f"bench-{spec.width}x{spec.height}-{spec.fps}-{seconds:g}s.mp4"
    if not clip.exists():
        write_scene(clip, SceneSpec(width=spec.width, height=spec.height, fps=spec.fps,
                                    seconds=seconds, people=3, seed=7))  # fmt: skip
    return clip


CALIBRATION_FRAMES = 64  # from the bench clip; every fourth held out for the guard


def _calibration(spec: BenchSpec, workdir: Path) -> Path | None:
    """A calibration set from the bench clip (with its ground truth), as `streamd calibrate`
    would sample it from a pipeline of that clip; None where the precision needs none."""
    if spec.precision not in ("auto", "int8", "bf16") or spec.backend == "null":
        return None
    from streamd.calibrate import sample_stream, to_set
    from streamd.config.stream import StreamConfig

    clip = _clip(spec, workdir)
    sampled = sample_stream(StreamConfig(id="s0", url=str(clip)), CALIBRATION_FRAMES, 3600.0)
    folder = workdir / "bench.calibration"
    to_set(folder, [sampled], CALIBRATION_FRAMES, {"bench": clip.name})
    return folder


def model_only(spec: BenchSpec, batch_sizes: list[int]) -> dict[str, Any]:
    """Detector throughput (frames/s) per batch size, on the backend (and precision) the
    daemon would pick, with the accuracy guard's figures where one was taken."""
    from streamd.detect import create_detector

    with tempfile.TemporaryDirectory() as tmp:
        frames = _frames(spec, Path(tmp), max(batch_sizes))
        calibration = _calibration(spec, Path(tmp))
        detector = create_detector(_model_cfg(spec, calibration), spec.max_batch)
    results: dict[str, Any] = {}
    for b in batch_sizes:
        batch = [frames[i % len(frames)] for i in range(b)]
        detector.detect(batch)  # warm this shape
        calls, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < spec.model_seconds or calls < 3:
            detector.detect(batch)
            calls += 1
        elapsed = time.perf_counter() - t0
        results[str(b)] = {
            "fps": round(calls * b / elapsed, 2),
            "batch_ms": round(1000 * elapsed / calls, 2),
        }
    guards = [r.to_json() for r in getattr(detector, "guard_reports", [])]
    return {"backend": detector.backend, "imgsz": spec.imgsz,
            "precision": getattr(detector, "precision", None), "guard": guards,
            "by_batch": results}  # fmt: skip


def _model_cfg(spec: BenchSpec, calibration: Path | None = None) -> ModelConfig:
    return ModelConfig.model_validate(
        {
            "weights": spec.weights,
            "imgsz": spec.imgsz,
            "backend": spec.backend,
            "precision": spec.precision,
            "calibration": str(calibration) if calibration else None,
            "device": spec.device,
            "conf": 0.25,
            "null_boxes": spec.boxes,
        }
    )


class _ProcessSampler:
    """CPU % and RSS of the daemon's processes, once a second, on a thread."""

    def __init__(self, root_pid: int) -> None:
        self.root = psutil.Process(root_pid)
        # process name → [(monotonic time, cpu %, rss MiB)]
        self.samples: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        procs: dict[int, psutil.Process] = {}
        while not self._stop.wait(1.0):
            try:
                current = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for p in current:
                proc = procs.get(p.pid)
                if proc is None:
                    procs[p.pid] = p
                    p.cpu_percent(None)  # prime: the next call measures since now
                    continue
                try:
                    sample = (
                        time.monotonic(),
                        proc.cpu_percent(None),
                        proc.memory_info().rss / 2**20,
                    )
                    self.samples[_process_name(proc, self.root.pid)].append(sample)
                except psutil.NoSuchProcess:
                    pass

    def stop(self, since: float) -> dict[str, Any]:
        """Per process: mean CPU and RSS at the start and end of the measured window."""
        self._stop.set()
        self._thread.join(3)
        out: dict[str, Any] = {}
        for name, samples in self.samples.items():
            window = [s for s in samples if s[0] >= since]
            if window:
                out[name] = {
                    "cpu_percent_mean": round(statistics.fmean(s[1] for s in window), 1),
                    "rss_mib_start": round(window[0][2], 1),
                    "rss_mib_end": round(window[-1][2], 1),
                }
        return out


def _process_name(p: psutil.Process, root: int) -> str:
    if p.pid == root:
        return "supervisor"
    title = " ".join(p.cmdline()).strip()  # setproctitle pads the title
    return title.removeprefix("streamd: ") if title.startswith("streamd: ") else p.name()


def _gpu_utilisation(stop: threading.Event, out: list[float]) -> None:
    exe = shutil.which("nvidia-smi")
    while exe and not stop.wait(1.0):
        r = subprocess.run([exe, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, check=False)  # fmt: skip
        if r.returncode == 0 and r.stdout.strip():
            out.append(float(r.stdout.split()[0]))


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": math.nan, "p95": math.nan, "p99": math.nan}
    v = sorted(values)
    return {
        f"p{q}": round(v[min(len(v) - 1, int(q / 100 * (len(v) - 1)))], 1) for q in (50, 95, 99)
    }


def pipeline(spec: BenchSpec, workdir: Path) -> dict[str, Any]:
    """Run the real daemon on N paced synthetic streams; measure what comes out."""
    clip = _clip(spec, workdir)
    calibration = _calibration(spec, workdir)
    cfg = {
        "model": _model_cfg(spec, calibration).model_dump(exclude_none=True),
        "batching": {"max_batch": spec.max_batch, "max_wait_ms": spec.max_wait_ms},
        "publish": {"endpoint": f"tcp://127.0.0.1:{spec.port}", "hwm": 100_000},
        # --viewers beyond the default cap would measure 503s, not viewers
        "http": {"listen": f"127.0.0.1:{spec.http_port}", "max_viewers": max(16, spec.viewers)},
        "journal": {"path": str(workdir / "alerts.sqlite"), "endpoint": "tcp://127.0.0.1:*"},
        "streams": [
            {
                "id": f"s{i}",
                "url": str(clip),
                "loop": True,
                "realtime": not spec.block,
                "decode_in": spec.decode_in,
            }
            for i in range(spec.streams)
        ],
    }
    cfg_path = workdir / "bench.yaml"
    cfg_path.write_text(json.dumps(cfg))
    sub = _BenchSubscriber(f"tcp://127.0.0.1:{spec.port}")
    log = (workdir / "daemon.log").open("wb")
    daemon = subprocess.Popen([sys.executable, "-m", "streamd.cli", "run", str(cfg_path)],
                              stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    sampler = _ProcessSampler(daemon.pid)
    gpu: list[float] = []
    gpu_stop = threading.Event()
    threading.Thread(target=_gpu_utilisation, args=(gpu_stop, gpu), daemon=True).start()
    measured_from = [time.monotonic()]
    arrivals: list[float] = []
    toggler = _ViewerToggler(spec, measured_from) if spec.viewers else None
    try:
        window = _collect(sub, daemon, spec, measured_from, arrivals)
    except DaemonExited as e:  # the log goes with the temporary folder: show its end
        log.flush()
        tail = (workdir / "daemon.log").read_text(errors="replace")[-4000:]
        raise DaemonExited(f"{e}; the end of its log:\n{tail}") from None
    finally:
        if toggler is not None:
            toggler.stop()
        gpu_stop.set()
        processes = sampler.stop(since=measured_from[0])
        daemon.terminate()
        daemon.wait(15)
        sub.close()
        log.close()
    report = _summarise(spec, window, processes, gpu)
    if toggler is not None:
        report["viewers"] = toggler.summary(arrivals)
    return report


class _ViewerToggler:
    """N MJPEG clients on stream s0 for a window, none for the next, in turns: analysed
    fps with and without viewers compared within one run (this machine drifts between runs)."""

    def __init__(self, spec: BenchSpec, measured_from: list[float]) -> None:
        self.spec = spec
        self.measured_from = measured_from
        self.phases: list[tuple[float, float, bool]] = []
        self.frames = 0  # MJPEG parts the viewers received
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        launched = self.measured_from[0]  # moved to first det + warm-up once one arrives
        while self.measured_from[0] == launched or time.monotonic() < self.measured_from[0]:
            if self._halt.wait(0.2):
                return
        on = False
        while not self._halt.is_set():
            start = time.monotonic()
            watching = threading.Event()
            clients = [threading.Thread(target=self._watch, args=(watching,), daemon=True)
                       for _ in range(self.spec.viewers if on else 0)]  # fmt: skip
            watching.set()
            for c in clients:
                c.start()
            self._halt.wait(self.spec.viewer_window_s)
            watching.clear()
            for c in clients:
                c.join(5)
            self.phases.append((start, time.monotonic(), on))
            on = not on

    def _watch(self, watching: threading.Event) -> None:
        url = f"http://127.0.0.1:{self.spec.http_port}/streams/s0.mjpg"
        with urllib.request.urlopen(url, timeout=10) as r:
            while watching.is_set():
                chunk = r.read(65536)
                if not chunk:
                    return
                with self._lock:
                    self.frames += chunk.count(b"--streamd-frame")

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(self.spec.viewer_window_s + 10)

    def summary(self, arrivals: list[float]) -> dict[str, Any]:
        rates: dict[bool, list[float]] = {True: [], False: []}
        windows = []
        for start, end, on in self.phases:
            # Skip each window's first second: clients connecting, encoding starting.
            n = sum(1 for t in arrivals if start + 1.0 <= t < end)
            rates[on].append(n / max(1e-6, end - start - 1.0))
            windows.append({"viewers": self.spec.viewers if on else 0,
                            "analysed_fps": round(rates[on][-1], 2)})  # fmt: skip
        without = statistics.fmean(rates[False]) if rates[False] else 0.0
        with_v = statistics.fmean(rates[True]) if rates[True] else 0.0
        watched = sum(end - start for start, end, on in self.phases if on)
        return {
            "viewers": self.spec.viewers,
            "windows": len(self.phases),
            "analysed_fps_without": round(without, 2),
            "analysed_fps_with": round(with_v, 2),
            "ratio": round(with_v / without, 3) if without else 0.0,
            "view_fps_per_viewer": round(self.frames / max(1e-6, watched) / self.spec.viewers, 2),
            "by_window": windows,
        }


SAMPLE_EVERY = 8  # det events decoded for latency and batch figures; all are counted


class _BenchSubscriber:
    """A SUB socket that counts det events by topic and decodes one in SAMPLE_EVERY: at
    thousands of events a second, decoding them all would take the cores being measured."""

    def __init__(self, endpoint: str) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        self._sock.setsockopt(zmq.LINGER, 0)
        for topic in (b"det.", b"heartbeat"):
            self._sock.setsockopt(zmq.SUBSCRIBE, topic)
        self._sock.connect(endpoint)

    def recv(self, timeout_s: float) -> list[bytes] | None:
        if not self._sock.poll(int(timeout_s * 1000)):
            return None
        return self._sock.recv_multipart()

    def close(self) -> None:
        self._sock.close()
        self._ctx.term()


@dataclass(slots=True)
class _Window:
    """What arrived in the measured window."""

    counts: dict[str, int]
    sample: list[dict[str, Any]]  # decoded det events, one in SAMPLE_EVERY
    beats: list[dict[str, Any]]


def _collect(
    sub: _BenchSubscriber,
    daemon: subprocess.Popen[bytes],
    spec: BenchSpec,
    measured_from: list[float],
    arrivals: list[float],
) -> _Window:
    """Events of the measured window (after warm-up); sets ``measured_from[0]`` to its start."""
    start = time.monotonic()
    first: float | None = None
    window = _Window(defaultdict(int), [], [])
    while daemon.poll() is None and time.monotonic() - start < 600:
        parts = sub.recv(0.5)
        now = time.monotonic()
        if parts is None:
            continue
        if parts[0].startswith(b"det."):
            if first is None:
                first = now
                measured_from[0] = now + spec.warmup_s
            if now - first >= spec.warmup_s:
                stream = parts[0][4:].decode()
                window.counts[stream] += 1
                if len(arrivals) % SAMPLE_EVERY == 0:
                    window.sample.append(json.loads(parts[1]))
                arrivals.append(now)
        elif first is not None and now - first >= spec.warmup_s:
            window.beats.append(json.loads(parts[1]))
        if first is not None and now - first >= spec.warmup_s + spec.duration_s:
            break
    if daemon.poll() is not None:
        raise DaemonExited(f"the daemon exited with {daemon.returncode}")
    return window


def _summarise(
    spec: BenchSpec, window: _Window, processes: dict[str, Any], gpu: list[float]
) -> dict[str, Any]:
    per_stream, dets, beats = window.counts, window.sample, window.beats
    first, last = (beats[0], beats[-1]) if len(beats) >= 2 else ({}, {})
    drops: dict[str, int] = defaultdict(int)
    for sid, s in last.get("streams", {}).items():
        for cause, n in s["dropped"].items():
            # a cause (detector_error) or a stream may first appear inside the window
            drops[cause] += n - first["streams"].get(sid, {}).get("dropped", {}).get(cause, 0)
    batches = [d["batch"] for d in dets]
    fps_total = sum(per_stream.values()) / spec.duration_s
    cpu_percent = sum(p["cpu_percent_mean"] for p in processes.values())
    return {
        "cpu_percent_total": round(cpu_percent, 1),
        # All streamd processes together: the host cost of one analysed frame.
        "cpu_ms_per_frame": round(cpu_percent * 10.0 / fps_total, 3) if fps_total else None,
        "analysed_fps_total": round(fps_total, 2),
        "analysed_fps_per_stream": {
            s: round(n / spec.duration_s, 2) for s, n in sorted(per_stream.items())
        },
        "offered_fps_total": spec.streams * spec.fps,
        "batch_size_mean": round(statistics.fmean(batches), 2) if batches else 0.0,
        # From one det event in SAMPLE_EVERY.
        "latency_ms": {st: _percentiles([d["latency_ms"][st] for d in dets]) for st in STAGES},
        "dropped": dict(drops),
        "processes": processes,
        "gpu_utilisation_percent_mean": round(statistics.fmean(gpu), 1) if gpu else None,
        "backend": last.get("backend"),
    }


def machine() -> dict[str, Any]:
    import platform

    import torch

    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": psutil.cpu_count(logical=True),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def format_table(report: dict[str, Any]) -> str:
    lines = [f"machine: {json.dumps(report['machine'])}"]
    mo = report.get("model_only")
    if mo:
        lines.append(f"model only ({mo['backend']}, imgsz {mo['imgsz']}):")
        lines += [f"  guard: {_guard_words(g)}" for g in mo.get("guard", [])]
        lines += [f"  batch {b:>3}: {r['fps']:8.2f} frames/s  ({r['batch_ms']:.1f} ms/batch)"
                  for b, r in mo["by_batch"].items()]  # fmt: skip
    p = report.get("pipeline")
    if p:
        lines.append(
            f"pipeline: {p['analysed_fps_total']} analysed/s of {p['offered_fps_total']} offered, "
            f"batch mean {p['batch_size_mean']}, backend {p['backend']}"
        )
        lines.append(f"  per stream: {p['analysed_fps_per_stream']}")
        lines.append(
            f"  cpu: {p['cpu_percent_total']}% over all streamd processes = "
            f"{p['cpu_ms_per_frame']} ms per analysed frame (bench client "
            f"{p.get('bench_client_cpu_s')} s)"
        )
        lines.append(f"  dropped: {p['dropped']}")
        for st, q in p["latency_ms"].items():
            lines.append(
                f"  latency {st:>6}: p50 {q['p50']:7.1f}  p95 {q['p95']:7.1f}  "
                f"p99 {q['p99']:7.1f} ms"
            )
        for name, s in p["processes"].items():
            lines.append(
                f"  {name:<24} cpu {s['cpu_percent_mean']:6.1f}%  "
                f"rss {s['rss_mib_start']:.0f} → {s['rss_mib_end']:.0f} MiB"
            )
        if p["gpu_utilisation_percent_mean"] is not None:
            lines.append(f"  gpu utilisation mean {p['gpu_utilisation_percent_mean']}%")
        if "viewers" in p:
            v = p["viewers"]
            lines.append(
                f"  live view: analysed {v['analysed_fps_without']}/s without, "
                f"{v['analysed_fps_with']}/s with {v['viewers']} viewers ({v['ratio']:.3f}; "
                f"target ≥ 0.95) over {v['windows']} windows; {v['view_fps_per_viewer']} "
                "view frames/s each"
            )
    if "ultralytics" in report:
        u = report["ultralytics"]
        lines.append(
            f"ultralytics track() loop, {u['processes']} processes: {u['fps_total']} frames/s "
            f"{u['fps_per_process']}; streamd / loop = {u['streamd_ratio']:.2f}"
        )
    if "efficiency" in report:
        e = report["efficiency"]
        lines.append(
            f"efficiency: pipeline {e['pipeline_fps']} / model-only {e['model_only_fps']} at batch "
            f"{e['batch']} = {e['ratio']:.2f} (target ≥ 0.80)"
        )
    return "\n".join(lines)


# What a user would write instead of streamd: one process per clip, ultralytics' own
# predictor and ByteTrack on every frame (the .pt on torch), the clip read again at its end.
_ULTRALYTICS_LOOP = """
import sys, time, av
from ultralytics import YOLO
clip, weights, imgsz, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
model = YOLO(weights)
frames, warm, t0 = 0, 20, 0.0
while True:
    with av.open(clip) as c:
        for f in c.decode(video=0):
            model.track(f.to_ndarray(format="bgr24"), persist=True, tracker="bytetrack.yaml",
                        imgsz=imgsz, conf=0.25, verbose=False)
            warm -= 1
            if warm == 0:
                t0 = time.perf_counter()
            elif warm < 0:
                frames += 1
            if t0 and time.perf_counter() - t0 >= seconds:
                print(frames, time.perf_counter() - t0)
                sys.exit(0)
"""


def ultralytics_loop(spec: BenchSpec, workdir: Path) -> dict[str, Any]:
    """The plain ultralytics ``track()`` loop, one process per stream on the bench clip, all
    at once, for ``duration_s`` after 20 warm-up frames each: frames/s in all."""
    clip = _clip(spec, workdir)
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0"}
    procs = [subprocess.Popen([sys.executable, "-c", _ULTRALYTICS_LOOP, str(clip), spec.weights,
                               str(spec.imgsz), str(spec.duration_s)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=env)
             for _ in range(spec.streams)]  # fmt: skip
    per_process = []
    for p in procs:
        out, _ = p.communicate(timeout=spec.duration_s + 300)
        frames, elapsed = out.split()[-2:]
        per_process.append(int(frames) / float(elapsed))
    return {"processes": spec.streams, "fps_total": round(sum(per_process), 2),
            "fps_per_process": [round(f, 2) for f in per_process]}  # fmt: skip


def _guard_words(report: dict[str, Any]) -> str:
    from streamd.detect.guard import GuardReport

    return GuardReport.from_json(report).verdict(0.95, 0.95)[1]


def run(spec: BenchSpec, model_only_flag: bool, batch_sizes: list[int]) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": machine(), "spec": asdict(spec)}
    if model_only_flag:
        report["model_only"] = model_only(spec, batch_sizes)
        return report
    with tempfile.TemporaryDirectory(prefix="streamd-bench-") as tmp:
        client0 = psutil.Process().cpu_times()
        report["pipeline"] = pipeline(spec, Path(tmp))
        client1 = psutil.Process().cpu_times()
    # The subscriber in this process shares the machine: say what it cost.
    report["pipeline"]["bench_client_cpu_s"] = round(
        client1.user + client1.system - client0.user - client0.system, 2
    )
    if spec.vs_ultralytics:
        with tempfile.TemporaryDirectory(prefix="streamd-bench-") as tmp:
            report["ultralytics"] = ultra = ultralytics_loop(spec, Path(tmp))
        pipe = report["pipeline"]["analysed_fps_total"]
        ultra["streamd_ratio"] = round(pipe / ultra["fps_total"], 3) if ultra["fps_total"] else 0
    if spec.backend == "null":
        return report  # no model to compare with: the host path is the figure
    # Compare with the detector alone at the batch size the pipeline ran at.
    batch = max(1, round(report["pipeline"]["batch_size_mean"]))
    report["model_only"] = model_only(spec, [batch])
    mo_fps = report["model_only"]["by_batch"][str(batch)]["fps"]
    pipe_fps = report["pipeline"]["analysed_fps_total"]
    report["efficiency"] = {
        "batch": batch,
        "pipeline_fps": pipe_fps,
        "model_only_fps": mo_fps,
        "ratio": round(pipe_fps / mo_fps, 3) if mo_fps else 0.0,
    }
    return report
