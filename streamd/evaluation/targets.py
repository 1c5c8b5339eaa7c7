"""The tracking targets (issue 15), judged from an eval-tracking report: each scene on
its own, and over all the scenes of the run (mean scores, summed ID switches), so both
readings of "on the project's own scenes" are printed side by side, never one for the
other."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

# Least score per load: every frame analysed, and max_fps 5.
BARS: dict[str, dict[str, float]] = {"every": {"idf1": 0.80, "hota": 0.65}, "fps5": {"idf1": 0.70}}


@dataclass(frozen=True, slots=True)
class Check:
    """One target on one scene (or all): the figure, the bar, and whether it is met."""

    scene: str  # a scene's name, or "all" for the mean (switches: the sum) over them
    load: str
    metric: str  # "idf1", "hota" or "idsw" (at most the ultralytics loop's)
    value: float
    bar: float
    met: bool


def judge(rows: Iterable[dict[str, Any]], kind: str) -> list[Check]:
    """Every target the report's rows can judge: the daemon's ``kind`` rows against the
    bars, and its ID switches against the ultralytics loop's on the same clip and load."""
    daemon = {(r["scene"], r["load"]): r for r in rows
              if r["source"] == "daemon" and r["tracker"] == kind}  # fmt: skip
    loop = {(r["scene"], r["load"]): r for r in rows if r["source"] == "ultralytics"}
    checks: list[Check] = []
    for load in sorted({load for _, load in daemon}):
        scenes = sorted(s for s, lo in daemon if lo == load)
        for metric, bar in BARS.get(load, {}).items():
            values = [float(daemon[s, load][metric]) for s in scenes]
            checks += [Check(s, load, metric, v, bar, v >= bar)
                       for s, v in zip(scenes, values, strict=True)]  # fmt: skip
            mean = statistics.fmean(values)
            checks.append(Check("all", load, metric, mean, bar, mean >= bar))
        both = [s for s in scenes if (s, load) in loop]
        switches = [(int(daemon[s, load]["idsw"]), int(loop[s, load]["idsw"])) for s in both]
        checks += [Check(s, load, "idsw", d, u, d <= u)
                   for s, (d, u) in zip(both, switches, strict=True)]  # fmt: skip
        if switches:
            d, u = sum(x for x, _ in switches), sum(y for _, y in switches)
            checks.append(Check("all", load, "idsw", d, u, d <= u))
    return checks


def as_json(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(c) for c in checks]


_NAMES = {"idf1": "IDF1", "hota": "HOTA", "idsw": "ID switches"}


def format_checks(checks: list[Check]) -> str:
    """A line per scene and load, then the line over all scenes; each says met or not."""
    lines = []
    for c in checks:
        name = _NAMES[c.metric]
        if c.metric == "idsw":
            figure = f"{name} {c.value:g} vs ultralytics {c.bar:g}"
        else:
            figure = f"{'mean ' if c.scene == 'all' else ''}{name} {c.value:.3f} (bar {c.bar:.2f})"
        where = "all scenes" if c.scene == "all" else c.scene
        lines.append(f"target {where}/{c.load}: {figure}: {'met' if c.met else 'NOT met'}")
    return "\n".join(lines)
