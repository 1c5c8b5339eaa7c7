"""`streamd bench` runs end to end and writes numbers that make sense (a smoke run, no speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .util import free_port

pytestmark = pytest.mark.e2e


def bench(tmp: Path, model: Path, *args: str) -> dict:  # type: ignore[type-arg]
    out = tmp / "bench.json"
    cmd = [sys.executable, "-m", "streamd.cli", "bench", "--weights", str(model),
           "--model-seconds", "1", "--port", str(free_port()), "--http-port", str(free_port()),
           "--out", str(out), *args]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "wrote" in r.stdout
    report: dict = json.loads(out.read_text())  # type: ignore[type-arg]
    return report


def test_bench_pipeline_and_model_only(tmp_path: Path, person_model: Path) -> None:
    report = bench(tmp_path, person_model, "--streams", "2", "--fps", "10", "--width", "320",
                   "--height", "180", "--duration", "8", "--warmup", "2", "--viewers", "2",
                   "--viewer-window", "2")  # fmt: skip
    p = report["pipeline"]
    assert report["machine"]["cores"] >= 1
    assert p["analysed_fps_total"] > 0 and set(p["analysed_fps_per_stream"]) == {"s0", "s1"}
    assert p["offered_fps_total"] == 20
    for stage in ("decode", "queue", "infer", "track", "total"):
        q = p["latency_ms"][stage]
        assert 0 <= q["p50"] <= q["p95"] <= q["p99"]
    assert p["latency_ms"]["total"]["p50"] >= p["latency_ms"]["infer"]["p50"]
    assert {"supervisor", "inference", "source s0", "source s1"} <= set(p["processes"])
    assert set(p["dropped"]) == {"queue_full", "stale", "sampled"}
    v = p["viewers"]  # live-view clients on and off in 2 s turns
    assert v["windows"] >= 3 and {w["viewers"] for w in v["by_window"]} == {0, 2}
    assert v["analysed_fps_with"] > 0 and v["analysed_fps_without"] > 0
    assert v["view_fps_per_viewer"] > 1  # the viewers really got frames
    e = report["efficiency"]
    assert e["ratio"] == pytest.approx(e["pipeline_fps"] / e["model_only_fps"], abs=1e-3)
    # The detector alone, as the comparison ran it; `bench --model-only --batch-sizes 1,2`
    # (its own run, several batch sizes) is tests/test_gpucheck.py's model-only step.
    only = report["model_only"]["by_batch"]
    assert set(only) == {str(e["batch"])} and only[str(e["batch"])]["fps"] == e["model_only_fps"]
    assert e["model_only_fps"] > 0


def test_bench_null_backend_measures_the_host_path(tmp_path: Path, person_model: Path) -> None:
    """`--backend null --block`: files as fast as the host path takes them, no model;
    the report has the host figures (their size is a benchmark's business, not a test's)."""
    report = bench(tmp_path, person_model, "--backend", "null", "--boxes", "5", "--block",
                   "--streams", "2", "--width", "320", "--height", "180", "--duration", "4",
                   "--warmup", "2")  # fmt: skip
    p = report["pipeline"]
    assert p["backend"] == "null"
    assert p["analysed_fps_total"] > p["offered_fps_total"]  # unpaced: more than live rate
    assert p["cpu_ms_per_frame"] > 0 and p["cpu_percent_total"] > 0
    assert {"supervisor", "inference", "source s0", "source s1"} <= set(p["processes"])
    assert "efficiency" not in report and "model_only" not in report  # no model to compare
