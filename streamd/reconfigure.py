"""The supervisor's side of runtime changes: cameras added, removed, re-configured or
re-zoned while the others run (the stream API's requests and SIGHUP reloads).

:class:`Reconfigure` is a part of :class:`~streamd.app.Daemon` (a mixin: the
daemon's state is one, and only the supervisor's thread touches it). Each
change touches the affected stream only: a new stream gets a fresh ring index,
a route to its results (confirmed by the detector, :mod:`streamd.control.routes`)
and its process; a removed one is stopped, its route and its shared memory go;
a changed source restarts that process alone; changed zones and lines go to the
running process, which keeps its tracks. Adding a stream that fails part way
(no process could be started: file descriptors or memory exhausted) is undone,
so a retry starts clean.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from multiprocessing.context import SpawnProcess
from typing import TYPE_CHECKING

from prometheus_client.multiprocess import mark_process_dead

from streamd.config import ConfigError, PipelineConfig, StreamConfig, load_config
from streamd.config.loader import raw_streams
from streamd.control.streams import ApplyError, StreamChanges, StreamDiff, diff_streams
from streamd.frames.ring import sweep_segments
from streamd.runtime.channel import Outbox
from streamd.sources.worker import SourceSpec, source_spec
from streamd.types import RegionsUpdate, RouteUpdate, SourceState

if TYPE_CHECKING:
    from streamd.analysis import AnalysisSpec
    from streamd.control import StatusBoard
    from streamd.control.plane import ControlPlane
    from streamd.control.routes import Routes
    from streamd.control.streams import StreamsFile
    from streamd.view.overlay import LiveView

log = logging.getLogger(__name__)

TERM_GRACE_S = 3.0
RETRY_START_S = 1.0  # a re-configured stream whose process could not start: tried again


@dataclass(slots=True)
class Source:
    """One stream's process, as the supervisor keeps it."""

    spec: SourceSpec
    process: SpawnProcess | None = None
    restarts: int = 0
    # Which process of this stream id runs (or is to come): only ever grows within a run,
    # across restarts and a removal and re-adding, so a superseded process's late words
    # are told apart (StatusUpdate/StreamRow carry it).
    generation: int = 0
    recent: list[float] = field(default_factory=list)  # monotonic times of recent restarts
    restart_at: float | None = None
    resumed_since: float = 0.0


class Reconfigure:
    """Runtime changes, applied on the supervisor's thread (see the module's doc)."""

    if TYPE_CHECKING:  # the daemon's, set in its __init__
        cfg: PipelineConfig
        changes: StreamChanges
        sources: dict[str, Source]
        board: StatusBoard
        view: LiveView | None
        run_id: str
        epoch: int
        log_level: str
        _file: StreamsFile | None
        _plane: ControlPlane | None
        _routes: Routes | None
        _metrics_dir: str
        _next_index: int
        _next_generation: dict[str, int]
        _watching: dict[str, float]
        _watch_lock: threading.Lock
        _watch_outboxes: dict[str, Outbox]

        def _endpoint(self, name: str) -> str: ...
        def _analysis_spec(self, index: int, epoch: int) -> AnalysisSpec: ...
        def _start_source(self, source: Source) -> None: ...
        def _say(self, stream: str, state: SourceState, reason: str, detail: str,
                 attempt: int, retry_in_s: float | None = None, *, generation: int,
                 final: bool = False) -> float: ...  # fmt: skip

    def _reload_file(self) -> None:
        """SIGHUP: the pipeline file's streams, applied as a difference; the rest of the
        file needs a restart. An invalid file changes nothing; a failure while applying
        is logged and the daemon goes on with what runs."""
        try:
            self._reload_streams()
        except Exception:
            log.exception("SIGHUP: reload failed part way; the daemon goes on")

    def _reload_streams(self) -> None:
        if self._file is None:
            log.warning("SIGHUP ignored: no pipeline file to reload")
            return
        try:
            new = load_config(self._file.pipeline)  # its own streams: the overlay is undone
        except ConfigError as e:
            log.error("SIGHUP: reload refused, the running configuration is kept: %s", e)
            return
        outside = [k for k in PipelineConfig.model_fields
                   if k != "streams" and getattr(new, k) != getattr(self.cfg, k)]  # fmt: skip
        if outside:
            log.warning("SIGHUP: %s changed: needs a restart, not applied", ", ".join(outside))
        diff = diff_streams(self.changes.streams, new.streams)
        running = new.streams
        try:
            self._apply(diff, new.streams)
        except ApplyError as e:
            log.error("SIGHUP: %s", e)
            running = e.running
        except Exception:
            self.changes.reloaded(self.changes.streams, raw_streams(self._file.pipeline))
            raise
        self.changes.reloaded(running, raw_streams(self._file.pipeline))
        log.info("SIGHUP: reloaded %s: %d added, %d removed, %d restarted, %d re-zoned",
                 self._file.pipeline, len(diff.added), len(diff.removed), len(diff.restarted),
                 len(diff.regions))  # fmt: skip

    def _apply(self, diff: StreamDiff, streams: list[StreamConfig]) -> None:
        """Start, stop or reconfigure the affected cameras only (supervisor thread).
        ApplyError if a stream could not be added (undone; the others are applied)."""
        before = self.cfg.streams
        self.cfg = self.cfg.model_copy(update={"streams": streams})
        try:
            self._apply_diff(diff, streams)
        except ApplyError:
            raise
        except Exception:
            # What runs is the truth: the next change must not trip over a half-applied one.
            self.changes.streams = self._running(before, streams)
            raise

    def _running(self, before: list[StreamConfig], after: list[StreamConfig]) -> list[StreamConfig]:
        now = [s for s in after if s.id in self.sources]
        ids = {s.id for s in now}
        return now + [s for s in before if s.id in self.sources and s.id not in ids]

    def _apply_diff(self, diff: StreamDiff, streams: list[StreamConfig]) -> None:
        # Every process to go is stopped at once: one grace period in all, not one each
        # (eight hung cameras one after another would outlast the systemd watchdog).
        going = [*diff.removed, *(s.id for s in diff.restarted)]
        self._end_processes([self.sources[sid] for sid in going if sid in self.sources])
        for sid in diff.removed:
            self._remove_source(sid)
        for stream in diff.restarted:
            self._reconfigure_source(stream)
        for stream in diff.regions:
            self._send_regions(stream)
        failed: list[str] = []
        for stream in diff.added:
            try:
                self._add_source(stream)
            except Exception as e:
                log.error("stream %s could not be added (undone): %s", stream.id, e)
                failed.append(f"{stream.id}: {e}")
        if failed:
            running = [s for s in streams if s.id in self.sources]
            self.cfg = self.cfg.model_copy(update={"streams": running})
            raise ApplyError(running, f"could not add {'; '.join(failed)}")

    def _route(self, stream: StreamConfig, index: int) -> None:
        """Tell the detector where the stream's results go, before its process starts: the
        spawn takes far longer than this message, so its first frame finds the route (one
        lost is sent again: :mod:`streamd.control.routes`)."""
        assert self._routes is not None
        limit = None if stream.max_latency_ms is None else stream.max_latency_ms / 1000.0
        self._routes.send(RouteUpdate(stream.id, self._endpoint(f"results-{index}"),
                                      stream.effective_drop_policy, limit))  # fmt: skip

    def _add_source(self, stream: StreamConfig) -> None:
        index, self._next_index = self._next_index, self._next_index + 1
        generation = self._next_generation.get(stream.id, 0)
        try:
            self._register(stream, index, generation)
        except BaseException:
            self._unregister(stream.id, generation)
            raise
        log.info("stream %s added (index %d)", stream.id, index)

    def _register(self, stream: StreamConfig, index: int, generation: int) -> None:
        assert self._plane is not None
        self._plane.add_stream(stream.id, generation)
        self.board.add_stream(stream.id)
        if self.view is not None:
            self.view.set_stream(stream)
        self._route(stream, index)
        analysis = self._analysis_spec(index, int(time.time() * 1000))  # a new publisher
        spec = source_spec(stream, index, self.run_id, self._endpoint("inbox"), analysis,
                           self.log_level)  # fmt: skip
        self.sources[stream.id] = Source(spec, generation=generation)
        self._start_source(self.sources[stream.id])

    def _unregister(self, sid: str, generation: int) -> None:
        """Undo what :meth:`_register` did before it failed; nothing of the stream stays."""
        # Above anything a process of this attempt may still say, should it be added again.
        self._next_generation[sid] = generation + 1
        source = self.sources.pop(sid, None)
        try:
            if source is not None:
                self._end_process(source, on_board=False)  # its row goes below
            assert self._routes is not None and self._plane is not None
            self._routes.send(RouteUpdate(sid, None))
            self._forget_viewers(sid)
            self.board.remove_stream(sid)
            if self.view is not None:
                self.view.remove_stream(sid)
            self._plane.drop_stream(sid)
        except Exception:
            log.exception("undoing the adding of stream %s failed part way", sid)

    def _remove_source(self, sid: str) -> None:
        source = self.sources[sid]
        self._end_process(source)
        assert self._routes is not None
        self._routes.send(RouteUpdate(sid, None))
        # Said for the process that will never come, so the stopped one's last words are
        # stale; final: the control plane forgets the stream once it is out.
        self._say(sid, SourceState.ENDED, "removed", "removed at runtime", source.restarts,
                  generation=source.generation + 1, final=True)  # fmt: skip
        # Added again later: above that final word too (it is held a moment, then
        # dropped as superseded rather than forgetting the new stream).
        self._next_generation[sid] = source.generation + 2
        del self.sources[sid]
        self._forget_viewers(sid)
        self.board.remove_stream(sid)
        if self.view is not None:
            self.view.remove_stream(sid)
        log.info("stream %s removed", sid)

    def _forget_viewers(self, sid: str) -> None:
        with self._watch_lock:
            outbox = self._watch_outboxes.pop(sid, None)
            self._watching.pop(sid, None)
        if outbox is not None:
            outbox.close()

    def _reconfigure_source(self, stream: StreamConfig) -> None:
        """Source options changed: a new process for this stream only, like a restart."""
        source = self.sources[stream.id]
        self._end_process(source)
        index = source.spec.index
        self._route(stream, index)
        if self.view is not None:
            self.view.set_stream(stream)
        source.restarts += 1
        source.generation += 1
        source.resumed_since = self._say(
            stream.id, SourceState.RECONNECTING, "reconfigured", "configuration changed",
            source.restarts, 0.0, generation=source.generation,
        )  # fmt: skip
        analysis = self._analysis_spec(index, self.epoch)  # _start_source gives a new epoch
        source.spec = source_spec(stream, index, self.run_id, self._endpoint("inbox"), analysis,
                                  self.log_level)  # fmt: skip
        try:
            self._start_source(source)
        except Exception as e:  # its configuration stands; the loop starts it when it can
            log.error("stream %s: its process could not start (%s); again in %.0fs",
                      stream.id, e, RETRY_START_S)  # fmt: skip
            source.restart_at = time.monotonic() + RETRY_START_S
            return
        log.info("stream %s restarted with its new configuration", stream.id)

    def _send_regions(self, stream: StreamConfig) -> None:
        """Zones or lines changed: the running process takes them; its tracks go on."""
        source = self.sources[stream.id]
        # A later restart of the process starts with them too.
        analysis = replace(source.spec.analysis, pipeline=self.cfg)
        source.spec = replace(source.spec, analysis=analysis)
        if self.view is not None:
            self.view.set_stream(stream)
        with self._watch_lock:
            outbox = self._watch_outboxes.get(stream.id)
            if outbox is not None:
                outbox.send(RegionsUpdate(stream.id, tuple(stream.zones), tuple(stream.lines)))
        log.info("stream %s: zones and lines changed in place", stream.id)

    def _reclaim(self, index: int, pid: int | None) -> list[str]:
        """A gone process's live gauges and shared memory; what fails (out of descriptors)
        is logged, never raised: the supervisor's lists must stay as they are."""
        try:
            if pid is not None:
                # Its live gauges go; its counters stay in the sums.
                mark_process_dead(pid, self._metrics_dir)  # type: ignore[no-untyped-call]
            return sweep_segments(self.run_id, f"{index}_{pid}_")
        except OSError as e:
            log.error("could not reclaim what process %s left (%s); its shared memory goes "
                      "at shutdown", pid, e)  # fmt: skip
            return []

    def _end_process(self, source: Source, on_board: bool = True) -> None:
        """Stop a camera's process on purpose (not a crash: no restart follows here)."""
        self._end_processes([source], on_board)

    def _end_processes(self, sources: list[Source], on_board: bool = True) -> None:
        """SIGTERM them all, wait one grace period, SIGKILL the rest; their shared memory
        and live gauges go."""
        stopping = [(s, s.process) for s in sources if s.process is not None]
        for source in sources:
            source.process, source.restart_at = None, None
        for _, proc in stopping:
            proc.terminate()
        deadline = time.monotonic() + TERM_GRACE_S
        for _, proc in stopping:
            proc.join(max(0.0, deadline - time.monotonic()))
        for _, proc in stopping:
            if proc.is_alive():
                log.warning("worker %s did not stop within %.0fs; killing", proc.name,
                            TERM_GRACE_S)  # fmt: skip
                proc.kill()
        deadline = time.monotonic() + 1.0
        for source, proc in stopping:
            proc.join(max(0.0, deadline - time.monotonic()))
            self._reclaim(source.spec.index, proc.pid)
            if on_board:
                self.board.set_worker(source.spec.stream, None, source.restarts)
