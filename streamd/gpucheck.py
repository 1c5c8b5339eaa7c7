"""``make gpu-check``: everything a GPU machine should verify and measure, in one command.

GPU time comes unannounced and short (45 minutes a session, 10 minutes a
command), so the work is written before the GPU is there: this runs the GPU
tests and the benchmarks in order, each step a subprocess with its own time
limit, log and JSON under ``build/gpu-check/``, and writes ``gpu-check.json``
and ``gpu-check.md`` (the table for docs/benchmarks.md) from whatever steps
have run so far, so a session cut short still leaves figures. ``--only``
runs some steps (one command each within the 10-minute limit); ``--dry-run``
prints the steps and runs nothing (CI runs it); without CUDA it exits 2 with
one line. ``--cpu`` runs the same steps at toy scale on the CPU: the harness
itself is tested that way.

The throughput model is YOLO11n built from the yaml shipped inside ultralytics
with random weights (no internet on the GPU machine: no trained YOLO11n can
be fetched there). Its speed is YOLO11n's; its boxes mean nothing, so the
steps that look at boxes use the project's trained person model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

NO_CUDA = 2
STEP_LIMIT_S = 540  # under the GPU machine's 10 minutes a command, with room to write
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128)
STREAM_COUNTS = (1, 25, 50, 100)  # 1: the one-stream latency target (p50 ≤ 15 ms)
DECODE_THREADS = (1, 2, 4, 8, 16)
PERSON_MODEL = "models/person-yolov8s.pt"
THROUGHPUT_MODEL = "build/gpu/yolo11n-random.pt"


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    what: str
    argv: tuple[str, ...]
    json_out: bool = True  # the command writes <name>.json (--out)


@dataclass(frozen=True, slots=True)
class Scale:
    """What the steps run at: the GPU's figures, or toy ones for the CPU test."""

    batches: tuple[int, ...] = BATCHES
    streams: tuple[int, ...] = STREAM_COUNTS
    threads: tuple[int, ...] = DECODE_THREADS
    width: int = 1920
    height: int = 1080
    fps: int = 30
    duration_s: float = 60.0
    imgsz: int = 640
    backend: str = "torch"
    device: str = "cuda:0"
    model_seconds: float = 8.0
    throughput_model: str = THROUGHPUT_MODEL
    extra_pytest: tuple[str, ...] = field(default_factory=tuple)


CPU_TOY = Scale(batches=(1, 2), streams=(2,), threads=(1,), width=320, height=180, fps=10,
                duration_s=3.0, imgsz=160, backend="null", device="cpu", model_seconds=1.0,
                throughput_model=PERSON_MODEL)  # fmt: skip


def steps(out: Path, scale: Scale) -> list[Step]:
    """The checks in the order they run."""
    py = (sys.executable, "-m", "streamd.cli")
    s = scale
    model_backend = "torch" if s.backend == "null" else s.backend
    run: list[Step] = [
        Step("deps", "every module the daemon needs imports",
             (sys.executable, "-m", "streamd.gpucheck", "deps"), json_out=False),
        Step("gpu-tests", "the tests marked gpu (CUDA, FP16, CUDA graphs, TensorRT, NVDEC)",
             (sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
              "--continue-on-collection-errors",  # one module failing to import there
              f"--junitxml={out / 'gpu-tests.xml'}", *gpu_test_files(), *s.extra_pytest),
             json_out=False),
        Step("model-only", f"detector alone, {model_backend}, batch sizes {_csv(s.batches)}",
             (*py, "bench", "--model-only", "--backend", model_backend, "--device", s.device,
              "--weights", s.throughput_model, "--imgsz", str(s.imgsz), "--batch-sizes",
              _csv(s.batches), "--model-seconds", str(s.model_seconds),
              "--out", str(out / "model-only.json"))),
    ]  # fmt: skip
    for t in s.threads:
        for decoder, where in (("cpu", "worker"), ("nvdec", "worker"), ("nvdec", "inference")):
            name = f"decode-{decoder}-{where}-{t}"
            run.append(Step(name, f"decode only, {decoder} in the {where} process(es), {t} at once",
                            (*py, "bench", "--decode-only", "--decoder", decoder, "--threads",
                             str(t), "--decode-in", where, "--decode-size",
                             f"{s.width}x{s.height}", "--duration", str(min(s.duration_s, 20.0)),
                             "--out", str(out / f"{name}.json"))))  # fmt: skip
    for n in s.streams:
        run.append(Step(f"e2e-{n}", f"{n} live {s.width}x{s.height}@{s.fps} streams, every frame",
                        (*py, "bench", "--streams", str(n), "--width", str(s.width),
                         "--height", str(s.height), "--fps", str(s.fps), "--duration",
                         str(s.duration_s), "--warmup", str(min(10.0, s.duration_s / 2)),
                         "--backend", s.backend, "--device", s.device, "--weights",
                         PERSON_MODEL, "--imgsz", str(s.imgsz), "--max-batch",
                         str(max(s.batches)), "--port", str(5700 + n), "--http-port",
                         str(8700 + n), "--out", str(out / f"e2e-{n}.json"))))  # fmt: skip
    for n in s.streams:  # the same with decode_in: detector (NVDEC pictures stay on the GPU)
        run.append(Step(f"frames-on-gpu-{n}", f"{n} live streams as e2e-{n}, decoded in the "
                        "detector process (decode_in: detector)",
                        (*py, "bench", "--streams", str(n), "--width", str(s.width),
                         "--height", str(s.height), "--fps", str(s.fps), "--duration",
                         str(s.duration_s), "--warmup", str(min(10.0, s.duration_s / 2)),
                         "--backend", s.backend, "--device", s.device, "--weights",
                         PERSON_MODEL, "--imgsz", str(s.imgsz), "--max-batch",
                         str(max(s.batches)), "--decode-in", "inference", "--port",
                         str(5800 + n), "--http-port", str(8800 + n), "--out",
                         str(out / f"frames-on-gpu-{n}.json"))))  # fmt: skip
    return run


def gpu_test_files() -> list[str]:
    """The test modules holding gpu-marked tests: collecting every module would need the
    test-only packages (jsonschema...) the GPU machine lacks for tests that don't run."""
    return sorted(str(p) for p in Path("tests").glob("test_*.py")
                  if "pytest.mark.gpu" in p.read_text())  # fmt: skip


def _csv(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values)


def cuda_device() -> str | None:
    """The first CUDA device's name, or None."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def environment() -> dict[str, Any]:
    """What this machine has that the GPU path may use (a missing piece is a finding)."""
    from streamd.bench import machine

    env: dict[str, Any] = {"machine": machine()}
    for module in ("tensorrt", "PyNvVideoCodec", "onnxruntime"):
        try:
            mod = __import__(module)
        except Exception as e:  # ImportError, or a library that fails to load
            env[module] = f"absent ({type(e).__name__})"
        else:
            env[module] = str(getattr(mod, "__version__", "present"))
    return env


def run_step(step: Step, out: Path, limit_s: float = STEP_LIMIT_S) -> dict[str, Any]:
    """One step as a subprocess; its outcome (and its JSON, if it wrote one)."""
    log = out / f"{step.name}.log"
    t0 = time.monotonic()
    with log.open("wb") as f:
        try:
            code = subprocess.run(step.argv, stdout=f, stderr=subprocess.STDOUT,
                                  timeout=limit_s, check=False).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            code = -1
    result: dict[str, Any] = {"step": step.name, "what": step.what, "exit": code,
                              "seconds": round(time.monotonic() - t0, 1),
                              "command": " ".join(step.argv), "log": str(log)}  # fmt: skip
    result["status"] = {0: "ok", NO_CUDA: "unavailable", -1: "timed out"}.get(code, "failed")
    figures = out / f"{step.name}.json"
    if step.json_out and code == 0 and figures.exists():
        result["figures"] = json.loads(figures.read_text())
    junit = out / f"{step.name}.xml"
    if junit.exists():
        result["tests"] = _junit(junit)
    elif not step.json_out:
        lines = log.read_text(errors="replace").strip().splitlines()
        result["said"] = lines[-1] if lines else ""
    return result


def _junit(path: Path) -> dict[str, int]:
    """pytest's counts: passed, failed, skipped."""
    import xml.etree.ElementTree as ET

    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = n["failures"] + n["errors"]
    return {"passed": n["tests"] - failed - n["skipped"], "failed": failed,
            "skipped": n["skipped"]}  # fmt: skip


def summary(out: Path, env: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """Merge with the steps of earlier invocations (``--only``), write JSON and markdown."""
    path = out / "gpu-check.json"
    earlier = json.loads(path.read_text())["steps"] if path.exists() else {}
    merged = {**earlier, **{r["step"]: r for r in results}}
    path.write_text(json.dumps({"environment": env, "steps": merged}, indent=2) + "\n")
    md = markdown(env, list(merged.values()))
    (out / "gpu-check.md").write_text(md)
    return md


def markdown(env: dict[str, Any], results: list[dict[str, Any]]) -> str:
    gpu = env["machine"].get("gpu", "no GPU")
    lines = [f"### gpu-check on {gpu}", "", f"machine: `{json.dumps(env['machine'])}`", "",
             "| step | status | figure | seconds |", "|---|---|---|---|"]  # fmt: skip
    for r in results:
        lines.append(f"| {r['step']} | {r['status']} | {_figure(r)} | {r['seconds']} |")
    return "\n".join(lines) + "\n"


def _figure(result: dict[str, Any]) -> str:
    """The headline number of a step's JSON."""
    f = result.get("figures") or {}
    if "said" in result:
        return str(result["said"]).replace("|", "/")
    if "tests" in result:
        t = result["tests"]
        return f"{t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped"
    if "pipeline" in f:  # a live run also holds a model-only figure at its batch
        p = f["pipeline"]
        total = p.get("latency_ms", {}).get("total", {})
        return (f"{p['analysed_fps_total']} of {p['offered_fps_total']} frames/s analysed, "
                f"capture→publish p50 {total.get('p50')}, p99 {total.get('p99')} ms")  # fmt: skip
    if "model_only" in f:
        best = max(f["model_only"]["by_batch"].items(), key=lambda kv: kv[1]["fps"])
        return f"best {best[1]['fps']:.0f} img/s at batch {best[0]}"
    if "fps_total" in f:
        return f"{f['fps_total']:.0f} frames/s decoded ({f.get('fps_per_decoder')} per decoder)"
    return "-"


# What the GPU machine (PyTorch, numpy and opencv-headless installed; no internet) lacks:
# the project's dependencies but those, fetched here as wheels for its Python and carried
# with the tree (at most 64 MiB of ignored paths travel: `make gpu-wheels` says the size).
GPU_MACHINE_HAS = ("torch", "torchvision", "numpy", "opencv-python")
CARRY_LIMIT_MIB = 64


# What our dependencies need that the GPU machine lacks (pip's --no-deps leaves them out):
# pydantic's compiled part and helpers; supervision's and trackers' pydeprecate and
# defusedxml (imported at import time), ultralytics' thop.
TRANSITIVE = ("pydantic-core", "annotated-types", "typing-inspection", "pydeprecate",
              "defusedxml", "ultralytics-thop")  # fmt: skip
# Modules the daemon and the checks import, by import name (a missing one: its wheel).
NEEDED = ("torch", "numpy", "cv2", "ultralytics", "supervision", "trackers", "zmq", "av",
          "pydantic", "yaml", "prometheus_client", "setproctitle", "psutil", "PIL", "scipy",
          "matplotlib", "requests")  # fmt: skip


def fetch_wheels(python: str) -> int:
    """``pip download`` the wheels the GPU machine lacks for ``python`` (e.g. 3.12):
    build/wheels (the daemon's), build/wheels-nvdec (PyNvVideoCodec, 26 MB): carried in
    separate calls, each under the 64 MiB a call carries."""
    import tomllib

    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    wanted = [
        r
        for r in project["dependencies"]
        if r.split("<")[0].split(">")[0].split("=")[0].strip() not in GPU_MACHINE_HAS
    ]
    code = _download(Path("build/wheels"), python, [*wanted, *TRANSITIVE])
    nvdec = project["optional-dependencies"].get("nvdec", [])
    return code or (_download(Path("build/wheels-nvdec"), python, nvdec) if nvdec else 0)


def _download(dest: Path, python: str, wanted: Sequence[str]) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    platforms = ("manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64")
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--only-binary=:all:", "--python-version", python, "--dest", str(dest),
            *(f"--platform={p}" for p in platforms), *wanted]  # fmt: skip
    code = subprocess.run(argv, check=False).returncode
    size = sum(f.stat().st_size for f in dest.iterdir()) / 2**20
    print(f"{dest}: {len(list(dest.iterdir()))} wheels, {size:.1f} MiB "
          f"(one call carries at most {CARRY_LIMIT_MIB} MiB)")  # fmt: skip
    return code


def missing_modules() -> list[str]:
    """What of :data:`NEEDED` does not import here."""
    import importlib

    out = []
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except Exception:  # ImportError, or a binary that does not load
            out.append(name)
    return out


def throughput_model(path: Path) -> None:
    """YOLO11n from the yaml inside ultralytics, random weights (see the module doc)."""
    from ultralytics.models import YOLO

    path.parent.mkdir(parents=True, exist_ok=True)
    YOLO("yolo11n.yaml").save(str(path))
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): YOLO11n, random weights")


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["wheels"]:  # here, with PyPI: `make gpu-wheels`
        return fetch_wheels(args_in[1] if len(args_in) > 1 else "3.12")
    if args_in[:1] == ["deps"]:  # in the GPU venv: what is still missing
        missing = missing_modules()
        print(f"missing: {', '.join(missing)}" if missing else "every module imports")
        return 1 if missing else 0
    if args_in[:1] == ["model"]:
        throughput_model(Path(THROUGHPUT_MODEL))
        return 0
    if args_in[:1] == ["probe"]:  # before a venv is made for nothing
        if cuda_device() is None:
            print("gpu-check: no CUDA device here (torch.cuda.is_available() is False); "
                  "nothing run")  # fmt: skip
            return NO_CUDA
        return 0
    return check(args_in)


def check(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="gpu-check", description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="print the steps, run nothing")
    ap.add_argument("--only", help="comma-separated step names (or prefixes: decode, e2e)")
    ap.add_argument("--out", default="build/gpu-check")
    ap.add_argument("--cpu", action="store_true", help="toy scale on the CPU (tests the harness)")
    ap.add_argument("--duration", type=float, help="seconds each live run measures (default 60)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    scale = CPU_TOY if args.cpu else Scale()
    if args.duration:  # a short device lease: fewer seconds per run, the same runs
        scale = replace(scale, duration_s=args.duration)
    todo = [s for s in steps(out, scale) if _wanted(s.name, args.only)]
    if args.dry_run:
        for s in todo:
            print(f"{s.name}: {s.what}\n  {' '.join(s.argv)}")
        return 0
    device = cuda_device()
    if device is None and not args.cpu:
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False); nothing run")
        return NO_CUDA
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    results = []
    for s in todo:
        print(f"== {s.name}: {s.what}", flush=True)
        results.append(run_step(s, out))
        print(f"   {results[-1]['status']} in {results[-1]['seconds']} s: {_figure(results[-1])}")
    print(summary(out, env, results))
    return 0 if all(r["status"] in ("ok", "unavailable") for r in results) else 1


def _wanted(name: str, only: str | None) -> bool:
    return only is None or any(name == o or name.startswith(o + "-") for o in only.split(","))


if __name__ == "__main__":
    sys.exit(main())
