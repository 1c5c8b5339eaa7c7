"""Memory, delay and speed of one CPU decoder by its ffmpeg frame-thread count
(docs/benchmarks.md, "Decoder threads on the 2-core CPU machine"): decodes 120 frames
of a clip to BGR through streamd's own ``open_source``.

    .venv/bin/python docs/benchmarks/decode_threads.py CLIP THREADS
"""

from __future__ import annotations

import sys
import time

import psutil

from streamd.sources.reader import OpenOptions, open_source

FRAMES = 120


def measure(clip: str, threads: int) -> str:
    process = psutil.Process()
    base = process.memory_info().rss
    decoded, fed, first = 0, 0, None
    t0 = time.perf_counter()
    with open_source(OpenOptions(clip, threads=threads)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            fed += 1
            for frame in packet.decode():
                decoded += 1
                first = fed if first is None else first
                frame.to_ndarray(format="bgr24")
            if decoded >= FRAMES:
                break
    seconds = time.perf_counter() - t0
    grown = (process.memory_info().rss - base) / 2**20
    return (f"threads {threads}: rss +{grown:.0f} MiB, first picture after {first} packets, "
            f"{decoded / seconds:.0f} frames/s, {psutil.cpu_count()} cpus")  # fmt: skip


if __name__ == "__main__":
    print(measure(sys.argv[1], int(sys.argv[2])))
