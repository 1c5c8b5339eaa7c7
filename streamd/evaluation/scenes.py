"""The benchmark's scenes and loads."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from streamd.synth import SceneSpec, write_scene

# crowd: 6 people of different sizes and speeds crossing, occluding, entering and
# leaving, light dimming by 40 % and back, sensor noise; 960x540 at 25 fps for 12 s
# (300 frames: about a minute per daemon pass with the person model at 640 on 2 CPU
# cores). crowd2: another draw of the same; the tracker defaults were chosen on these
# two. crowd3: a third draw, held out until its failures shaped the split of a track that
# jumped to another person (tracker.appearance.split_similarity); crowd4-6: drawn after
# that, held out until crowd5 and crowd6's losses shaped the showing of identities on
# unconfirmed boxes (tracker.appearance.unconfirmed); crowd7-8: drawn after that, held
# out. short: what the tests run.
_CROWD = SceneSpec(width=960, height=540, fps=25, seconds=12.0, people=6, kind="crowd",
                   noise=6.0, light=0.4, seed=1)  # fmt: skip
SCENES: dict[str, SceneSpec] = {
    "crowd": _CROWD,
    "crowd2": replace(_CROWD, people=7, seed=7),
    "crowd3": replace(_CROWD, seed=11),
    "crowd4": replace(_CROWD, seed=13),
    "crowd5": replace(_CROWD, people=7, seed=17),
    "crowd6": replace(_CROWD, seed=19),
    "crowd7": replace(_CROWD, seed=23),
    "crowd8": replace(_CROWD, people=7, seed=29),
    "short": SceneSpec(width=480, height=270, fps=15, seconds=3.0, people=3, kind="crowd",
                       noise=4.0, light=0.3, seed=3),
}  # fmt: skip

# How the stream is read, as stream keys of the pipeline file.
LOADS: dict[str, dict[str, Any]] = {
    # A file read as fast as the detector goes: every frame analysed.
    "every": {},
    # Sampling by media time: 5 frames a second analysed.
    "fps5": {"max_fps": 5},
    # Paced at the file's own rate with the live policy: the newest frame replaces one
    # not yet taken, so where the detector is slower than the camera frames are dropped
    # irregularly (on a 2-core CPU at 640 about 2 of 3; on a GPU the load is no overload).
    "overload": {"realtime": True, "drop_policy": "latest", "buffer": 2},
}


def make_scene(name: str, folder: Path) -> tuple[Path, list[list[dict[str, Any]]]]:
    """The scene's clip (written once, kept while its spec is unchanged) and its truth."""
    spec = SCENES[name]
    video = folder / f"{name}.mp4"
    truth = video.with_suffix(".truth.json")
    stamp = video.with_suffix(".spec.json")
    wanted = json.dumps(asdict(spec), sort_keys=True)
    if not (video.exists() and truth.exists() and stamp.exists() and stamp.read_text() == wanted):
        write_scene(video, spec, truth)
        stamp.write_text(wanted)
    frames: list[list[dict[str, Any]]] = json.loads(truth.read_text())["frames"]
    return video, frames
