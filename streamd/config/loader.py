"""Safe YAML loading of a pipeline file: no tags, no duplicate keys, ``${ENV}`` substitution,
validation errors as (key path, reason), and paths resolved against the file's folder.

Bounded, so a hostile file costs a second, not the host: at most ``MAX_CONFIG_BYTES``
are read, and a document that would hold more than ``MAX_VALUES`` values once its
aliases are expanded is refused before anything is built from it (a few hundred
bytes of nested anchors, "billion laughs", expand to billions of values), and
``${ENV}`` substitution builds at most ``MAX_CONFIG_BYTES`` characters.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from streamd.config.base import ConfigError, source_kind
from streamd.config.model import default_calibration_dir
from streamd.config.outputs import resolve_tls_paths
from streamd.config.pipeline import PipelineConfig
from streamd.config.security import resolve_key_paths
from streamd.config.stream import StreamConfig
from streamd.config.suggest import did_you_mean
from streamd.runtime.redact import redact_url, register_secrets

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MAX_CONFIG_BYTES = 1024 * 1024
# Every value (mapping, list, scalar) counted once per place it appears after aliases
# are expanded: a pipeline of hundreds of streams with zones has a few ten thousand.
MAX_VALUES = 100_000


class _Unbounded(yaml.YAMLError):
    """A document past the loader's bounds."""


class _Bounded(Composer, SafeConstructor):
    """Composes and constructs a document, refusing one that would expand past
    ``MAX_VALUES`` values; the parser is the subclass's."""

    _composed = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        # Counted while composing, so a file of a million tiny values stops early too.
        self._composed += 1
        if self._composed > MAX_VALUES:
            raise _Unbounded(_too_many())
        return super().compose_node(parent, index)

    def get_single_data(self) -> Any:
        # BaseConstructor.get_single_data, with the size checked between composing
        # (aliases are shared nodes: cheap) and constructing (where sharing ends).
        node = self.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set())
        return self.construct_document(node)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """Values under ``node`` with aliases expanded; each distinct node is visited once."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise _Unbounded("a YAML alias refers to a node that contains it (recursive alias)")
    open_.add(key)
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, open_)
        if total > MAX_VALUES:
            raise _Unbounded(_too_many())
    open_.discard(key)
    sizes[key] = total
    return total


def _too_many() -> str:
    return (
        f"more than {MAX_VALUES} values, counting each YAML alias expanded (an alias "
        "bomb?): refused to bound time and memory"
    )


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


class _PyLoader(_Bounded, yaml.SafeLoader):
    """SafeLoader, bounded: PyYAML's own scanner and parser, in Python."""


_Loader: type[_Bounded] = _PyLoader
if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _CLoader(_Bounded, CParser, Resolver):
        """SafeLoader, bounded, over libyaml's scanner and parser: several times faster
        to reach the value bound (a flat file of ``MAX_VALUES`` values is refused in
        0.3 s rather than 1.4 s). Composing stays in Python, where the bound is counted."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _Bounded.__init__(self)  # Composer's anchors
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    _Loader = _CLoader

# Both refuse duplicate mapping keys instead of keeping the last.
_Bounded.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _EnvSubstitution:
    """``${NAME}`` and ``${NAME:-default}`` replaced in every string value.

    Bounded like the YAML: each distinct value is substituted once (an alias is the
    same object as its anchor, so they share the result instead of each building a
    copy), and the strings built may hold at most ``MAX_CONFIG_BYTES`` characters in
    all, counted as they are built: a few kB of aliased ``${X}`` would otherwise
    build hundreds of MB.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.problems: list[tuple[str, str]] = []
        self._left = MAX_CONFIG_BYTES
        self._done: dict[int, Any] = {}  # id(value) → its substitute; the values outlive it

    def __call__(self, node: Any, path: str = "") -> Any:
        key = id(node)
        if key not in self._done:
            self._done[key] = self._substitute(node, path)
        return self._done[key]

    def _substitute(self, node: Any, path: str) -> Any:
        if isinstance(node, dict):
            return {k: self(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [self(v, f"{path}.{i}") for i, v in enumerate(node)]
        if not isinstance(node, str) or "${" not in node:
            return node
        self._spend(len(node))
        return _ENV_REF.sub(lambda m: self._value(m, path), node)

    def _value(self, m: re.Match[str], path: str) -> str:
        name, default = m.group(1), m.group(2)
        if name in self._env:
            value = self._env[name]
        elif default is not None:
            value = default
        else:
            self.problems.append((path, f"environment variable {name} is not set"))
            value = ""
        self._spend(len(value))
        return value

    def _spend(self, chars: int) -> None:
        self._left -= chars
        if self._left < 0:
            raise _Unbounded(
                f"${{ENV}} substitution builds more than {MAX_CONFIG_BYTES} characters "
                "(aliases of a value holding ${VAR}?): refused to bound time and memory"
            )


def expand_env(
    data: Any, path: str = "", env: Mapping[str, str] | None = None
) -> tuple[Any, list[tuple[str, str]]]:
    """``data`` with ``${NAME}`` substituted as in a pipeline file, and the problems
    (key, reason): a stream given to the API, or read back from the overlay, is
    expanded like one written in the file."""
    substitute = _EnvSubstitution(os.environ if env is None else env)
    try:
        return substitute(data, path), substitute.problems
    except _Unbounded as e:
        return data, [(path, str(e))]


def raw_streams(path: Path) -> dict[str, dict[str, Any]]:
    """The pipeline file's streams as written (``${NAME}`` kept), by id: what the
    overlay of runtime changes saves, so no secret taken from the environment is
    written to disk and a rotated one is used at the next start. Read after
    :func:`load_config` accepted the file; anything unreadable gives ``{}``."""
    try:
        raw = _load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, _Unbounded, RecursionError):
        return {}
    streams = raw.get("streams") if isinstance(raw, dict) else None
    out: dict[str, dict[str, Any]] = {}
    for body in streams if isinstance(streams, list) else []:
        if isinstance(body, dict):
            expanded, _ = expand_env(body.get("id"))
            if isinstance(expanded, str):
                out[expanded] = copy.deepcopy(body)  # YAML aliases: no shared objects
    return out


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc)


def parse_config(
    text: str, source: str = "<string>", env: Mapping[str, str] | None = None
) -> PipelineConfig:
    """Parse and validate pipeline YAML; raise :class:`ConfigError` on any problem."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(source, [("", _too_big(f"{len(text)} characters"))])
    try:
        return _parse(text, source, env)
    except RecursionError:
        raise ConfigError(source, [("", "nested too deeply")]) from None


def _too_big(what: str) -> str:
    return f"{what}: too large; the limit for a pipeline file is {MAX_CONFIG_BYTES} bytes"


def _load_yaml(text: str) -> Any:
    loader = _Loader(text)  # type: ignore[call-arg]  # each loader class takes the text
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()  # type: ignore[attr-defined]  # the parser's


def _parse(text: str, source: str, env: Mapping[str, str] | None) -> PipelineConfig:
    try:
        raw = _load_yaml(text)
    except _Unbounded as e:
        raise ConfigError(source, [("", str(e))]) from None
    except yaml.constructor.ConstructorError as e:
        where = f"line {e.problem_mark.line + 1}" if e.problem_mark else ""
        reason = e.problem or str(e)
        if "could not determine a constructor" in reason:
            reason = f"YAML tags that are not plain data are refused ({reason})"
        raise ConfigError(source, [(where, reason)]) from None
    except yaml.YAMLError as e:
        if "maximum nesting depth" in str(e):  # libyaml's own bound (1000 levels)
            raise ConfigError(source, [("", "nested too deeply")]) from None
        raise ConfigError(source, [("", f"invalid YAML: {e}")]) from None
    if not isinstance(raw, dict):
        raise ConfigError(source, [("", "the file must be a mapping with at least 'streams'")])
    substitute = _EnvSubstitution(os.environ if env is None else env)
    try:
        data = substitute(raw)
    except _Unbounded as e:
        raise ConfigError(source, [("", str(e))]) from None
    if substitute.problems:
        raise ConfigError(source, substitute.problems)
    _register_stream_secrets(data)  # before a refusal's message could quote them
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        errs = [(_loc_to_path(err["loc"]), _redacted_reason(err)) for err in e.errors()]
        raise ConfigError(source, errs) from None


def _register_stream_secrets(data: dict[str, Any]) -> None:
    """The streams' URL credentials, redacted wherever this process writes them."""
    streams = data.get("streams")
    for s in streams if isinstance(streams, list) else []:
        if isinstance(s, dict) and isinstance(s.get("url"), str):
            register_secrets(s["url"])


def _redacted_reason(err: Any, root: type[BaseModel] = PipelineConfig) -> str:
    """``root``: the model ``err``'s location starts from (a stream alone for the API)."""
    # pydantic echoes the input in some messages; a URL may carry a password.
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        return "unknown key" + did_you_mean(root, err["loc"])
    if err["type"] == "missing":
        return "required key is missing"
    return redact_url(msg.removeprefix("Value error, "))


def resolve_paths(cfg: PipelineConfig, base_dir: Path, name: str = "pipeline") -> PipelineConfig:
    """Resolve file URLs, weights, the journal, the CURVE key files and the outputs' TLS
    files relative to the pipeline file's folder (``~`` expanded in key paths)."""
    streams = [
        resolve_clips_dir(
            s.model_copy(update={"url": _resolve_file_url(s.url, base_dir)}), base_dir
        )
        for s in cfg.streams
    ]
    model = cfg.model.model_copy(
        update={
            "weights": _relative_to(cfg.model.weights, base_dir),
            "calibration": _calibration(cfg.model.calibration, base_dir, name),
        }
    )
    journal = cfg.journal.model_copy(
        update={"path": _journal_path(cfg.journal.path, base_dir, name)}
    )
    security = resolve_key_paths(cfg.security, base_dir)
    outputs = resolve_tls_paths(cfg.outputs, base_dir)
    update = {"streams": streams, "model": model, "journal": journal, "security": security}
    return cfg.model_copy(update={**update, "outputs": outputs})


def resolve_clips_dir(stream: StreamConfig, base_dir: Path) -> StreamConfig:
    """``clips.dir`` relative to the pipeline file's folder (``~`` expanded)."""
    folder = stream.clips.dir
    if folder is None or Path(folder).is_absolute():
        return stream
    path = Path(folder).expanduser()
    resolved = path if path.is_absolute() else (base_dir / path).resolve()
    clips = stream.clips.model_copy(update={"dir": str(resolved)})
    return stream.model_copy(update={"clips": clips})


def _journal_path(path: str | None, base_dir: Path, name: str) -> str:
    if path is not None:
        return str((base_dir / path).resolve()) if not Path(path).is_absolute() else path
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(state) / "streamd" / f"{name}.alerts.sqlite")


def _calibration(path: str | None, base_dir: Path, name: str) -> str | None:
    # Unset: the folder `streamd calibrate` writes beside the pipeline file, once it exists.
    if path is not None:
        return path if Path(path).is_absolute() else str((base_dir / path).resolve())
    default = default_calibration_dir(base_dir / f"{name}.yaml")
    return str(default.resolve()) if default.is_dir() else None


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


def load_config(path: str | Path, all_shards: bool = False) -> PipelineConfig:
    """Load, validate and resolve a pipeline file; with ``shard``, only the streams of
    this instance's shard (``all_shards``: every stream, as written)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_CONFIG_BYTES:  # refused unread
                raise ConfigError(str(p), [("", _too_big(f"{size} bytes"))])
            data = f.read(MAX_CONFIG_BYTES + 1)  # a pipe or device has no size: read bounded
    except OSError as e:
        raise ConfigError(str(p), [("", f"cannot read file: {e.strerror}")]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(str(p), [("", _too_big(f"more than {MAX_CONFIG_BYTES} bytes"))])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(str(p), [("", f"not UTF-8 text (byte {e.start})")]) from None
    cfg = resolve_paths(parse_config(text, source=str(p)), p.parent, p.stem)
    return cfg if all_shards else own_shard(cfg, str(p))


def own_shard(cfg: PipelineConfig, source: str) -> PipelineConfig:
    """``cfg`` with the streams its ``shard`` owns; ConfigError if that is none of them
    (an instance with nothing to do is a fleet sized wrong, said at once)."""
    if cfg.shard is None:
        return cfg
    mine = [s for s in cfg.streams if cfg.shard.owns(s.id)]
    if not mine:
        reason = (
            f"shard {cfg.shard} owns none of the file's {len(cfg.streams)} stream(s): "
            "fewer shards, or more streams (see `streamd shards FILE --count N`)"
        )
        raise ConfigError(source, [("shard", reason)])
    return cfg.model_copy(update={"streams": mine})
