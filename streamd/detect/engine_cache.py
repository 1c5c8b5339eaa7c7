"""On-disk cache of compiled TensorRT engines, keyed by everything that invalidates one.

An engine is only valid for the exact checkpoint, GPU architecture, TensorRT
version, precision, batch profile and input size it was built for; any change
means a rebuild (minutes), anything else means a cache hit. This module is
pure Python so the key logic is tested on every machine, TensorRT or not.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

Precision = Literal["fp16", "int8", "fp32"]


class CacheKey(Protocol):
    """A frozen dataclass naming everything a cached build depends on."""

    def filename(self, stem: str) -> str: ...


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class EngineKey:
    model_sha256: str  # of the checkpoint's bytes, not its name
    compute_capability: str  # e.g. "9.0" (H100)
    tensorrt_version: str
    precision: Precision
    min_batch: int
    opt_batch: int
    max_batch: int
    imgsz: int
    calibration_sha256: str = ""  # int8: of the calibration set; a new set means a rebuild

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError("batch profile must satisfy 1 <= min <= opt <= max")

    def digest(self) -> str:
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def filename(self, stem: str) -> str:
        # Readable parts for people listing the folder; the digest is what matches.
        return (
            f"{stem}-{self.imgsz}-{self.precision}-b{self.max_batch}"
            f"-sm{self.compute_capability.replace('.', '')}-trt{self.tensorrt_version}"
            f"-{self.digest()}.engine"
        )


class EngineCache:
    """Builds in ``root`` (TensorRT engines, quantised ONNX models, OpenVINO IR), each with a
    ``.json`` sidecar holding its full key. ``companions``: suffixes of files a build writes
    beside its main file (OpenVINO's ``.bin`` weights), moved and checked with it."""

    def __init__(self, root: Path, companions: tuple[str, ...] = ()) -> None:
        self.root = root
        self.companions = companions

    def path_for(self, key: CacheKey, stem: str) -> Path:
        return self.root / key.filename(stem)

    def lookup(self, key: CacheKey, stem: str) -> Path | None:
        path = self.path_for(key, stem)
        sidecar = path.with_suffix(".json")
        try:
            stored = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            return None
        files = [path, *(path.with_suffix(c) for c in self.companions)]
        return path if stored == _fields(key) and all(f.is_file() for f in files) else None

    def get_or_build(
        self, key: CacheKey, stem: str, build: Callable[[Path], None]
    ) -> tuple[Path, bool]:
        """The cached engine, or one built now by ``build(tmp_path)``; (path, built)."""
        hit = self.lookup(key, stem)
        if hit is not None:
            return hit, False
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path_for(key, stem)
        suffix = path.suffix
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".building-", suffix=suffix)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            build(tmp)
            if tmp.stat().st_size == 0:
                raise RuntimeError("the engine builder wrote nothing")
            for c in self.companions:  # first: the main file's name means all are there
                os.replace(tmp.with_suffix(c), path.with_suffix(c))
            os.replace(tmp, path)  # atomic: a crash mid-build never leaves a bad engine
        finally:
            tmp.unlink(missing_ok=True)
            for c in self.companions:
                tmp.with_suffix(c).unlink(missing_ok=True)
        path.with_suffix(".json").write_text(json.dumps(_fields(key), sort_keys=True))
        return path, True


def _fields(key: CacheKey) -> dict[str, Any]:
    fields: dict[str, Any] = asdict(key)  # type: ignore[call-overload]
    return fields
