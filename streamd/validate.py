"""``streamd validate``'s checks beyond the schema: the files a run would open exist, and
``model.classes`` are classes the model has (read from the file where that is quick).

Kept out of ``streamd.config``: reading a checkpoint needs ultralytics or onnx, and the
schema must not import the stages it configures. ``run`` checks the same things as it
starts (the detector refuses unknown classes); ``validate`` says so before that.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

from streamd.config import PipelineConfig, source_kind
from streamd.config.outputs import TlsConfig
from streamd.runtime.logs import adopt_ultralytics

log = logging.getLogger(__name__)

Problem = tuple[str, str]  # (key path, reason), as in ConfigError


def check_files(cfg: PipelineConfig) -> list[Problem]:
    """Missing stream files, model weights and TLS files, each under its key."""
    problems: list[Problem] = []
    for i, stream in enumerate(cfg.streams):
        if source_kind(stream.url) == "file" and not Path(stream.url).is_file():
            problems.append((f"streams.{i}.url", f"no such file: {stream.url}"))
    weights = cfg.model.weights
    # A bare name ("yolo11n.pt") that is not here is fetched by ultralytics where there
    # is internet; a path names a file that must be there.
    if cfg.model.backend != "null" and "/" in weights and not Path(weights).is_file():
        problems.append(("model.weights", f"no such file: {weights}"))
    return problems + _tls_files(cfg)


def _tls_files(cfg: PipelineConfig) -> list[Problem]:
    """The outputs' TLS files (an output whose file is missing would not start)."""
    problems: list[Problem] = []
    for name, out in (("mqtt", cfg.outputs.mqtt), ("nats", cfg.outputs.nats)):
        tls = None if out is None else out.tls
        if isinstance(tls, TlsConfig):
            for key in ("ca_file", "cert_file", "key_file"):
                path = getattr(tls, key)
                if path is not None and not Path(path).is_file():
                    problems.append((f"outputs.{name}.tls.{key}", f"no such file: {path}"))
    return problems


def check_classes(cfg: PipelineConfig) -> list[Problem]:
    """``model.classes``, and the ``classes`` of zones and lines, that the model does not
    detect (a .pt or .onnx file; others unread): a zone counting a class never detected
    never fires."""
    regions = [(f"streams.{i}.{kind}.{j}.classes", r.classes)
               for i, s in enumerate(cfg.streams)
               for kind, rs in (("zones", s.zones), ("lines", s.lines))
               for j, r in enumerate(rs) if r.classes]  # fmt: skip
    weights = Path(cfg.model.weights)
    if not (cfg.model.classes or regions) or cfg.model.backend == "null" or not weights.is_file():
        return []
    try:
        names = model_class_names(weights)
    except Exception as e:  # a damaged or foreign file: ultralytics and onnx raise many kinds
        return [("model.weights", f"cannot read the model's classes: {e}")]
    if names is None:
        return []
    problems = _not_in("model.classes", cfg.model.classes or [], names, "the model's classes")
    detected = set(cfg.model.classes or names)
    what = "model.classes" if cfg.model.classes else "the model's classes"
    for key, classes in regions:
        problems += _not_in(key, classes or [], detected, what)
    return problems


def _not_in(key: str, wanted: list[str], have: set[str], what: str) -> list[Problem]:
    unknown = [c for c in wanted if c not in have]
    return [(key, f"{unknown} not in {what} {sorted(have)}")] if unknown else []


def model_class_names(weights: Path) -> set[str] | None:
    """The class names a checkpoint or ONNX export carries; None for other formats."""
    if weights.suffix == ".onnx":
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(weights), load_external_data=False)
                .metadata_props}  # fmt: skip
        if "names" not in meta:
            return None
        return {str(v) for v in ast.literal_eval(meta["names"]).values()}  # ultralytics' dict
    if weights.suffix == ".pt":
        from ultralytics.models import YOLO

        adopt_ultralytics()
        return {str(v) for v in YOLO(str(weights), task="detect").names.values()}
    return None
