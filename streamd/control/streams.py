"""Streams changed while the daemon runs: the REST API's changes and SIGHUP reloads.

Requests arrive on HTTP threads; they are validated there (the same schema as
the pipeline file) and then handed to the supervisor's thread, which alone
starts and stops processes: :meth:`StreamChanges.apply_pending` runs each one
on that thread, in order, and the caller waits for its outcome. What changed
is a :class:`StreamDiff` (also what a reload computes), so the API and SIGHUP
apply changes the same way.

The running list of streams is persisted after every change to an overlay
file next to the pipeline file (``<name>.streams.yaml``, written atomically:
temporary file, fsync, rename), which replaces the file's ``streams`` at the
next start; a SIGHUP reload makes the pipeline file the truth again and
removes it. Each stream is saved as it was written (in the pipeline file or
the request), ``${NAME}`` references kept: a password taken from the
environment never reaches the overlay, and a rotated one is used at the next
start. A ``PUT`` whose URL is the redacted one a ``GET`` answered
(``rtsp://***@host/...``) keeps the stream's real URL (and its reference). A
request may not hold ``${NAME}`` itself: that would let an API client read the
daemon's environment.

A request that times out waiting for the supervisor is withdrawn if it has not
started: a 503 means nothing was applied. The supervisor applies one request
per turn of its loop, so a burst of changes does not starve the watchdog.
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from streamd.config import ConfigError, PipelineConfig, StreamConfig, source_kind
from streamd.config.loader import _redacted_reason, expand_env, raw_streams, resolve_clips_dir
from streamd.config.shard import ShardConfig, shard_of
from streamd.control.admin import AdminError
from streamd.runtime.redact import redact_whole_url, register_secrets

log = logging.getLogger(__name__)

APPLY_TIMEOUT_S = 30.0  # a change waits this long for the supervisor's thread


@dataclass(frozen=True, slots=True)
class StreamDiff:
    """How one list of streams becomes another."""

    added: tuple[StreamConfig, ...] = ()
    removed: tuple[str, ...] = ()
    restarted: tuple[StreamConfig, ...] = ()  # source options changed: a new process
    regions: tuple[StreamConfig, ...] = ()  # only zones/lines changed: same process

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.restarted or self.regions)


class ApplyError(Exception):
    """Some of a change could not be applied (a stream could not be added; undone):
    ``running`` is the list of streams that runs now."""

    def __init__(self, running: list[StreamConfig], reason: str) -> None:
        super().__init__(reason)
        self.running = running


def only_regions_differ(old: StreamConfig, new: StreamConfig) -> bool:
    """Zones and lines are applied in the running process; anything else restarts it."""
    keep = {"zones", "lines"}
    return old.model_dump(exclude=keep) == new.model_dump(exclude=keep)


def diff_streams(old: list[StreamConfig], new: list[StreamConfig]) -> StreamDiff:
    before = {s.id: s for s in old}
    after = {s.id: s for s in new}
    changed = [s for s in new if s.id in before and s != before[s.id]]
    return StreamDiff(
        added=tuple(s for s in new if s.id not in before),
        removed=tuple(sid for sid in before if sid not in after),
        restarted=tuple(s for s in changed if not only_regions_differ(before[s.id], s)),
        regions=tuple(s for s in changed if only_regions_differ(before[s.id], s)),
    )


def _problems(e: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    return [
        (prefix + ".".join(str(p) for p in err["loc"]), _redacted_reason(err, StreamConfig))
        for err in e.errors()
    ]


def resolve_url(stream: StreamConfig, base_dir: Path) -> StreamConfig:
    """A file URL relative to the pipeline file's folder, as the loader resolves it."""
    if source_kind(stream.url) != "file":
        return stream
    path = Path(stream.url.removeprefix("file://").removeprefix("file:"))
    return stream.model_copy(update={"url": str((base_dir / path).resolve())})


Body = dict[str, Any]  # one stream as written: ``${NAME}`` not yet substituted


def parse_stream(body: object, base_dir: Path, prefix: str = "") -> StreamConfig:
    """One stream's JSON validated as ``streams[i]`` is (``${NAME}`` substituted from
    the environment, as in the file); AdminError 422 naming each key."""
    if not isinstance(body, dict):
        raise AdminError(422, [(prefix.rstrip("."), "a stream must be a JSON object")])
    expanded, problems = expand_env(body, prefix.rstrip("."))
    if problems:
        raise AdminError(422, problems)
    try:
        stream = resolve_url(StreamConfig.model_validate(expanded), base_dir)
        register_secrets(stream.url)  # valid: it may be opened, and its errors logged
        return resolve_clips_dir(stream, base_dir)
    except ValidationError as e:
        raise AdminError(422, _problems(e, prefix)) from None


def _refuse_from_a_request(stream: StreamConfig, current: StreamConfig | None) -> None:
    """What the file's checks refuse (a missing file), and what only the pipeline file's
    author may set: ``clips.dir`` (the daemon makes the folder private and prunes it: from
    a request, any folder it can write). AdminError 422 naming the key."""
    problems = []
    if source_kind(stream.url) == "file" and not Path(stream.url).is_file():
        problems.append(("url", f"no such file: {stream.url}"))
    if stream.clips.dir is not None and stream.clips.dir != (current and current.clips.dir):
        problems.append(("clips.dir", "set in the pipeline file only, not from a request"))
    if problems:
        raise AdminError(422, problems)


def _refuse_env_references(body: object, path: str = "") -> None:
    """``${NAME}`` is the pipeline file's (its author's): from a request it would let an
    API client read the daemon's environment (a token, a broker password) back through
    the stream's URL, or send it to a host of its choosing. AdminError 422 naming the key."""
    if isinstance(body, dict):
        for k, v in body.items():
            _refuse_env_references(v, f"{path}.{k}" if path else str(k))
    elif isinstance(body, list):
        for i, v in enumerate(body):
            _refuse_env_references(v, f"{path}.{i}")
    elif isinstance(body, str) and "${" in body:
        raise AdminError(422, [(path, "${...} environment references are taken from the "
                                      "pipeline file only, not from a request")])  # fmt: skip


def _dumped(stream: StreamConfig) -> Body:
    return stream.model_dump(mode="json", exclude_defaults=True)


class StreamsFile:
    """The overlay of streams next to the pipeline file — or, under systemd, in the
    unit's state directory (``$STATE_DIRECTORY``: /etc is read-only there)."""

    def __init__(self, pipeline: Path) -> None:
        self.pipeline = pipeline
        state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        folder = Path(state) if state else pipeline.parent
        self.path = folder / (pipeline.stem + ".streams.yaml")

    def apply(self, cfg: PipelineConfig) -> PipelineConfig:
        """``cfg`` with the overlay's streams, if there is one; ConfigError naming the key."""
        return self.load(cfg)[0]

    def load(self, cfg: PipelineConfig) -> tuple[PipelineConfig, dict[str, Body]]:
        """:meth:`apply`, and each stream as written (the overlay's or the pipeline
        file's), by id."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return cfg, raw_streams(self.pipeline)
        except OSError as e:
            raise ConfigError(str(self.path), [("", f"cannot read file: {e.strerror}")]) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(str(self.path), [("", f"invalid YAML: {e}")]) from None
        raw = data.get("streams") if isinstance(data, dict) else None
        if not isinstance(raw, list) or not raw:
            raise ConfigError(str(self.path), [("streams", "a list of at least one stream")])
        streams, problems, bodies = [], [], {}
        for i, body in enumerate(raw):
            try:
                streams.append(parse_stream(body, self.pipeline.parent, f"streams.{i}."))
            except AdminError as e:
                problems += e.problems
            else:
                bodies[streams[-1].id] = body
        ids = [s.id for s in streams]
        problems += [("streams", f"duplicate stream id {d!r}") for d in sorted(
            {d for d in ids if ids.count(d) > 1})]  # fmt: skip
        if problems:
            raise ConfigError(str(self.path), problems)
        log.warning("streams from %s (changed at runtime) replace those of %s",
                    self.path, self.pipeline)  # fmt: skip
        if cfg.shard is not None:  # shard.count changed since: the others' are theirs now
            streams = _owned(streams, cfg.shard, self.path)
            if not streams:
                raise ConfigError(str(self.path), [("streams", f"none is shard {cfg.shard}'s")])
        return cfg.model_copy(update={"streams": streams}), bodies

    def save(self, streams: list[Body]) -> None:
        """Atomically: a reader (or a crash) sees the old file or the new one, never half."""
        data = {"streams": streams}
        text = (f"# Written by streamd: the streams as changed at runtime; they replace the\n"
                f"# streams of {self.pipeline.name} at start. A SIGHUP reload removes this file.\n"
                + yaml.safe_dump(data, sort_keys=False))  # fmt: skip
        fd, tmp = tempfile.mkstemp(prefix=self.path.name, suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:  # mkstemp: 0600, URLs may hold credentials
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.path.parent)

    def remove(self) -> None:
        if self.path.exists():
            self.path.unlink()
            _fsync_dir(self.path.parent)
            log.info("removed %s: %s is the truth again", self.path, self.pipeline)


def _owned(streams: list[StreamConfig], shard: ShardConfig, path: Path) -> list[StreamConfig]:
    """The streams ``shard`` owns; the others are logged and left to their shards."""
    for s in streams:
        if not shard.owns(s.id):
            log.warning("%s: stream %s belongs to shard %d of %d, not this one (%s): not run",
                        path, s.id, shard_of(s.id, shard.count), shard.count, shard)  # fmt: skip
    return [s for s in streams if shard.owns(s.id)]


def refuse_other_shard(stream_id: str, shard: ShardConfig | None) -> None:
    """AdminError 421 (Misdirected Request) naming the shard that owns ``stream_id``: the
    request may be fine, this instance is the wrong one to send it to (an add, an update
    or a removal)."""
    if shard is None or shard.owns(stream_id):
        return
    owner = shard_of(stream_id, shard.count)
    raise AdminError(421, [("id", f"stream {stream_id!r} belongs to shard {owner} of "
                             f"{shard.count} (rendezvous hash of its id); this instance is "
                             f"shard {shard}: add it there")])  # fmt: skip


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


Kind = Literal["add", "update", "remove"]


@dataclass(slots=True)
class _Request:
    kind: Kind
    stream_id: str
    config: StreamConfig | None
    body: Body | None = None  # as written, saved to the overlay
    done: Future[StreamConfig | None] = field(default_factory=Future)


class StreamChanges:
    """The :class:`~streamd.control.admin.StreamAdmin` the HTTP layer calls.

    ``apply`` (the supervisor's) starts, stops or reconfigures processes for a
    diff; it runs on the supervisor's thread only, from :meth:`apply_pending`.
    """

    def __init__(
        self,
        streams: list[StreamConfig],
        base_dir: Path,
        file: StreamsFile | None,
        bodies: dict[str, Body] | None = None,
        shard: ShardConfig | None = None,
    ) -> None:
        self.streams = list(streams)  # the running configuration, in order
        self._shard = shard  # a stream added here must be this shard's
        self._bodies = dict(bodies or {})  # stream id → as written (what is saved)
        self._base_dir = base_dir
        self._file = file
        self._requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()

    # -- called on HTTP threads --------------------------------------------------------

    def list_streams(self) -> list[StreamConfig]:
        return list(self.streams)

    def get_stream(self, stream_id: str) -> StreamConfig | None:
        return next((s for s in self.streams if s.id == stream_id), None)

    def add_stream(self, body: dict[str, Any]) -> StreamConfig:
        _refuse_env_references(body)
        stream = parse_stream(body, self._base_dir)
        refuse_other_shard(stream.id, self._shard)
        _refuse_from_a_request(stream, None)
        return self._submit(_Request("add", stream.id, stream, body))

    def update_stream(self, stream_id: str, body: dict[str, Any]) -> StreamConfig:
        refuse_other_shard(stream_id, self._shard)
        _refuse_env_references(body)
        if isinstance(body, dict) and body.get("id", stream_id) != stream_id:
            raise AdminError(422, [("id", "cannot change; remove the stream and add it")])
        if isinstance(body, dict):
            body = self._unredacted({**body, "id": stream_id})
        stream = parse_stream(body, self._base_dir)
        _refuse_from_a_request(stream, self.get_stream(stream_id))
        return self._submit(_Request("update", stream_id, stream, body))

    def _unredacted(self, body: Body) -> Body:
        """A URL sent back as a GET showed it (``rtsp://***@host/...?pwd=***``): the stream's own,
        so that reading a stream and writing it back does not make ``***`` its password."""
        current = self.get_stream(str(body["id"]))
        url = body.get("url")
        # The query's secrets are shown as *** too (?user=***&pwd=***), not only userinfo.
        if current is None or not isinstance(url, str):
            return body
        if url != redact_whole_url(current.url) or url == current.url:
            return body
        written = self._bodies.get(current.id, {}).get("url", current.url)
        return {**body, "url": written}

    def remove_stream(self, stream_id: str) -> None:
        refuse_other_shard(stream_id, self._shard)
        self._submit(_Request("remove", stream_id, None))

    def _submit(self, request: _Request) -> StreamConfig:
        self._requests.put(request)
        try:
            result = request.done.result(APPLY_TIMEOUT_S)  # AdminError raised here
        except TimeoutError:
            if request.done.cancel():  # not started: withdrawn, nothing applied
                raise
            # Being applied now (stopping processes takes a few seconds): its outcome, however
            # long, so that a 503 always means "not applied".
            result = request.done.result()
        assert result is not None or request.kind == "remove"
        return result  # type: ignore[return-value]  # None only for remove

    # -- called on the supervisor's thread ----------------------------------------------

    def apply_pending(self, apply: Callable[[StreamDiff, list[StreamConfig]], None]) -> bool:
        """Apply the next queued request fully (processes, then the overlay file); one
        per call, so the supervisor's loop (its watchdog) turns between changes. True if
        one was taken."""
        while True:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                return False
            if request.done.set_running_or_notify_cancel():
                break  # else: withdrawn by its caller's timeout; the next one
        try:
            new = self._after(request)
            apply(diff_streams(self.streams, new), new)
            self._commit(request, new)
        except AdminError as e:
            request.done.set_exception(e)
        except Exception as e:  # the HTTP thread answers 500 with it
            log.exception("stream change %s %s failed", request.kind, request.stream_id)
            request.done.set_exception(e)
        else:
            request.done.set_result(request.config)
        return True

    def _commit(self, request: _Request, new: list[StreamConfig]) -> None:
        self.streams = new
        if request.kind == "remove":
            self._bodies.pop(request.stream_id, None)
        elif request.body is not None:
            self._bodies[request.stream_id] = request.body
        if self._file is None:
            return
        try:
            self._file.save([self._bodies.get(s.id) or _dumped(s) for s in new])
        except OSError as e:  # a full or read-only disk: what runs is still the truth
            raise RuntimeError(f"applied, but not saved to {self._file.path} ({e.strerror}): "
                               "the change is lost at the next restart") from None  # fmt: skip

    def _after(self, request: _Request) -> list[StreamConfig]:
        """The list of streams once ``request`` is applied; AdminError 404/409/422."""
        ids = [s.id for s in self.streams]
        sid = request.stream_id
        if request.kind == "add":
            if sid in ids:
                raise AdminError(409, [("id", f"stream {sid!r} exists")])
            assert request.config is not None
            return [*self.streams, request.config]
        if sid not in ids:
            raise AdminError(404, [("", f"no stream {sid!r}")])
        if request.kind == "remove":
            if len(ids) == 1:
                raise AdminError(422, [("", "the last stream cannot be removed")])
            return [s for s in self.streams if s.id != sid]
        assert request.config is not None
        return [request.config if s.id == sid else s for s in self.streams]

    def reloaded(self, new: list[StreamConfig], bodies: dict[str, Body]) -> None:
        """A reload applied ``new`` (from the pipeline file): it is the truth again."""
        self.streams = list(new)
        self._bodies = dict(bodies)
        if self._file is not None:
            self._file.remove()
