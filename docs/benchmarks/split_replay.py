"""Parts of the appearance cue (issue 15), on many scenes: the split of a track that
went on with somebody else, and identities shown on unconfirmed boxes.

Replays the default tracker, and the same without ``tracker.appearance.split_similarity``
and without ``tracker.appearance.unconfirmed``,
on the det frames that ``precision_tracking.py`` kept (``<work>/<scene>/<run>/frames.json``,
FP32 and INT8 runs of the real daemon), scores each against the scene's truth, writes
the scores as JSON and prints each part's effect and INT8 against FP32 with each
tracker (mean, standard error, 95 % t-interval over the scenes).

    .venv/bin/python docs/benchmarks/split_replay.py /tmp/ev5 out.json
"""

from __future__ import annotations

import json
import statistics as st
import sys
from pathlib import Path
from typing import Any

from streamd.config import TrackerConfig
from streamd.evaluation.metrics import TrackedFrame, score
from streamd.evaluation.offline import replay

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "nosplit": {"appearance": {"split_similarity": 0}},
    "nounconfirmed": {"appearance": {"unconfirmed": False}},
}
PARTS = {"split": "nosplit", "unconfirmed": "nounconfirmed"}
RUNS = ("fp32", "int8")


def scores(work: Path) -> dict[str, dict[str, dict[str, float | int]]]:
    out: dict[str, dict[str, dict[str, float | int]]] = {}
    for scene in sorted(p.name for p in work.iterdir() if p.is_dir()):
        truth = json.loads((work / scene / f"{scene}.truth.json").read_text())["frames"]
        for run in RUNS:
            kept = work / scene / run / "frames.json"
            if not kept.exists():
                continue
            frames = [TrackedFrame.from_dict(d) for d in json.loads(kept.read_text())]
            for name, cfg in CONFIGS.items():
                tracked = replay(frames, TrackerConfig.model_validate(cfg),
                                 work / scene / f"{scene}.mp4")  # fmt: skip
                out.setdefault(scene, {})[f"{run}-{name}"] = score(truth, tracked).as_dict()
        print(scene, {k: round(float(v["idf1"]), 3) for k, v in out[scene].items()}, flush=True)
    return out


def spread(values: list[float]) -> str:
    m, se = st.mean(values), st.stdev(values) / len(values) ** 0.5
    return (f"mean {m:+.4f} se {se:.4f} t95 [{m - 2.05 * se:+.4f}, {m + 2.05 * se:+.4f}] "
            f"min {min(values):+.3f} max {max(values):+.3f} n {len(values)}")  # fmt: skip


def report(out: dict[str, dict[str, dict[str, float | int]]]) -> None:
    full = [s for s, r in out.items() if len(r) == len(RUNS) * len(CONFIGS)]

    def diff(a: str, b: str, metric: str = "idf1") -> list[float]:
        return [float(out[s][a][metric]) - float(out[s][b][metric]) for s in full]

    for run in RUNS:
        for part, without in PARTS.items():
            for metric in ("idf1", "hota"):
                effect = diff(f"{run}-default", f"{run}-{without}", metric)
                print(f"{part} effect {metric} ({run}):", spread(effect))
            before = sum(int(out[s][f"{run}-{without}"]["idsw"]) for s in full)
            after = sum(int(out[s][f"{run}-default"]["idsw"]) for s in full)
            print(f"ID switches without {part} -> default ({run}): {before} -> {after}")
    for name in CONFIGS:
        change = diff(f"int8-{name}", f"fp32-{name}")
        print(
            f"INT8 - FP32 IDF1 ({name}):",
            spread(change),
            f"median {st.median(change):+.4f}; lose > 0.02: {sum(x < -0.02 for x in change)}",
        )
    for metric in ("hota", "mota"):
        print(f"INT8 - FP32 {metric} (default):",
              spread(diff("int8-default", "fp32-default", metric)))  # fmt: skip


if __name__ == "__main__":
    result = scores(Path(sys.argv[1]))
    Path(sys.argv[2]).write_text(json.dumps(result, indent=1))
    report(result)
