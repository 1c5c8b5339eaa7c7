"""Safe YAML loading of a pipeline file: no tags, no duplicate keys, ``${ENV}`` substitution,
validation errors as (key path, reason), and paths resolved against the file's folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from streamd.config.base import ConfigError, source_kind
from streamd.config.pipeline import PipelineConfig
from streamd.runtime.redact import redact_url

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of keeping the last."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        out[key] = loader.construct_object(value_node)
    return out


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _substitute_env(
    node: Any, path: str, env: Mapping[str, str], problems: list[tuple[str, str]]
) -> Any:
    if isinstance(node, dict):
        return {
            k: _substitute_env(v, f"{path}.{k}" if path else str(k), env, problems)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_substitute_env(v, f"{path}.{i}", env, problems) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append((path, f"environment variable {name} is not set"))
        return ""

    return _ENV_REF.sub(repl, node)


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc)


def parse_config(
    text: str, source: str = "<string>", env: Mapping[str, str] | None = None
) -> PipelineConfig:
    """Parse and validate pipeline YAML; raise :class:`ConfigError` on any problem."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.constructor.ConstructorError as e:
        where = f"line {e.problem_mark.line + 1}" if e.problem_mark else ""
        reason = e.problem or str(e)
        if "could not determine a constructor" in reason:
            reason = f"YAML tags that are not plain data are refused ({reason})"
        raise ConfigError(source, [(where, reason)]) from None
    except yaml.YAMLError as e:
        raise ConfigError(source, [("", f"invalid YAML: {e}")]) from None
    if not isinstance(raw, dict):
        raise ConfigError(source, [("", "the file must be a mapping with at least 'streams'")])
    problems: list[tuple[str, str]] = []
    data = _substitute_env(raw, "", os.environ if env is None else env, problems)
    if problems:
        raise ConfigError(source, problems)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        errs = [(_loc_to_path(err["loc"]), _redacted_reason(err)) for err in e.errors()]
        raise ConfigError(source, errs) from None


def _redacted_reason(err: Any) -> str:
    # pydantic echoes the input in some messages; a URL may carry a password.
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    return redact_url(msg.removeprefix("Value error, "))


def resolve_paths(cfg: PipelineConfig, base_dir: Path, name: str = "pipeline") -> PipelineConfig:
    """Resolve file URLs, weights and the journal relative to the pipeline file's folder."""
    streams = [
        s.model_copy(update={"url": _resolve_file_url(s.url, base_dir)}) for s in cfg.streams
    ]
    model = cfg.model.model_copy(
        update={
            "weights": _relative_to(cfg.model.weights, base_dir),
            "calibration": cfg.model.calibration and _relative_to(cfg.model.calibration, base_dir),
        }
    )
    journal = cfg.journal.model_copy(
        update={"path": _journal_path(cfg.journal.path, base_dir, name)}
    )
    return cfg.model_copy(update={"streams": streams, "model": model, "journal": journal})


def _journal_path(path: str | None, base_dir: Path, name: str) -> str:
    if path is not None:
        return str((base_dir / path).resolve()) if not Path(path).is_absolute() else path
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(state) / "streamd" / f"{name}.alerts.sqlite")


def _relative_to(path: str, base_dir: Path) -> str:
    # A name that is not there (e.g. "yolo11n.pt") is left for ultralytics to fetch.
    candidate = base_dir / path
    return str(candidate.resolve()) if not Path(path).is_absolute() and candidate.exists() else path


def _resolve_file_url(url: str, base_dir: Path) -> str:
    if source_kind(url) != "file":
        return url
    path = Path(url.removeprefix("file://").removeprefix("file:"))
    if not path.is_absolute():
        path = base_dir / path
    return str(path.resolve())


def load_config(path: str | Path) -> PipelineConfig:
    """Load, validate and resolve a pipeline file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(p), [("", f"cannot read file: {e.strerror}")]) from None
    return resolve_paths(parse_config(text, source=str(p)), p.parent, p.stem)
