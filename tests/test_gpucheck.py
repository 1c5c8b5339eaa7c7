"""``make gpu-check``: the steps it would run on a GPU, its refusal without one, and the
harness itself run for real at toy scale on the CPU (the same steps, subprocesses,
JSON and markdown as on the GPU machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_lists_every_step_of_the_issue() -> None:
    r = subprocess.run(["make", "-s", "gpu-check", "DRY_RUN=1"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "pytest -q -m gpu" in out
    assert "--model-only --backend torch --device cuda:0" in out
    assert "--batch-sizes 1,2,4,8,16,32,64,128" in out
    for threads in (1, 2, 4, 8, 16):
        for step in ("cpu-worker", "nvdec-worker", "nvdec-inference"):
            assert f"decode-{step}-{threads}:" in out
    for streams in (25, 50, 100):
        assert f"--streams {streams} --width 1920 --height 1080 --fps 30 --duration 60.0" in out


def test_without_cuda_it_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "streamd.gpucheck", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, check=False)  # fmt: skip
    assert r.returncode == 2
    assert r.stdout.strip().count("\n") == 0 and "no CUDA device" in r.stdout
    assert not list(tmp_path.iterdir())  # nothing run, nothing written


def test_the_harness_runs_its_steps_and_merges_a_later_subset(tmp_path: Path) -> None:
    def check(only: str) -> dict[str, dict[str, object]]:
        r = subprocess.run([sys.executable, "-m", "streamd.gpucheck", "--cpu", "--out",
                            str(tmp_path), "--only", only], cwd=ROOT, capture_output=True,
                           text=True, timeout=300, check=False)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        steps: dict[str, dict[str, object]] = json.loads((tmp_path / "gpu-check.json").read_text())[
            "steps"
        ]
        return steps

    steps = check("model-only,e2e,decode-cpu")
    assert set(steps) == {"model-only", "e2e-2", "decode-cpu-worker-1"}
    assert steps["decode-cpu-worker-1"]["figures"]["fps_total"] > 0  # type: ignore[index]
    model = steps["model-only"]["figures"]["model_only"]  # type: ignore[index]
    assert set(model["by_batch"]) == {"1", "2"}
    assert all(r["fps"] > 0 for r in model["by_batch"].values())
    pipeline = steps["e2e-2"]["figures"]["pipeline"]  # type: ignore[index]
    assert pipeline["analysed_fps_total"] > 0 and pipeline["offered_fps_total"] == 20

    steps = check("gpu-tests")  # a later invocation adds to what is there
    assert set(steps) == {"model-only", "e2e-2", "decode-cpu-worker-1", "gpu-tests"}
    tests = steps["gpu-tests"]["tests"]
    assert tests["failed"] == 0 and tests["skipped"] >= 2  # type: ignore[index]
    table = (tmp_path / "gpu-check.md").read_text()
    assert "| model-only | ok | best " in table and "| gpu-tests | ok | " in table
