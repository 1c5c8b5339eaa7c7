"""Runtime stream changes when things go wrong: a stream that cannot be started, a
request that times out, a route the detector never got, secrets in the overlay.

The daemon test runs the real daemon (``null`` backend, looping clips); the others
drive the real :class:`StreamChanges`, :class:`StreamsFile` and :class:`Routes`
with real files and ZeroMQ sockets, the supervisor's side played by the test.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from .daemon import running_daemon, write_pipeline
from .test_runtime_streams import NULL_MODEL, _api, _listen, _live, _pids, _wait_streaming
from .test_runtime_streams import clip as clip  # the module's clip fixture
from .util import free_port


def test_a_stream_whose_process_cannot_start_is_undone_and_a_retry_adds_it(
    clip: Path, tmp_path: Path
) -> None:
    """Out of file descriptors while a stream is added: 500, nothing of it stays (no row,
    no route, not in the list or the overlay), the other stream goes on; once descriptors
    are back, the same request adds it once."""
    cfg = write_pipeline(tmp_path, Path("unused.pt"), free_port(), [_live("a", clip)],
                         model=NULL_MODEL)  # fmt: skip
    with running_daemon(cfg, ("a",)) as d:
        log, daemon = d.log, d.proc
        code, body = _add_with_descriptors_short(daemon.pid, cfg, _live("c", clip))
        assert code == 500, body
        assert "could not add c" in body["error"] and "Too many open files" in body["error"]
        assert list(_pids(cfg)) == ["a"]
        assert [s["id"] for s in _api(cfg, "GET", "/api/streams")[1]["streams"]] == ["a"]
        assert not cfg.with_name("pipeline.streams.yaml").exists()

        t_retry = time.time()
        assert _api(cfg, "POST", "/api/streams", _live("c", clip))[0] == 201
        _wait_streaming(log, "c", t_retry)
        assert list(_pids(cfg)) == ["a", "c"]
        saved = cfg.with_name("pipeline.streams.yaml").read_text()
        assert saved.count("id: c") == 1
        assert log.payloads("det.a", t_retry), "the other stream stopped"
        assert daemon.poll() is None
    text = (tmp_path / "daemon.log").read_text()
    assert "stream c could not be added (undone)" in text
    assert "did not confirm the route" not in text


def test_a_reload_stops_hung_cameras_together_within_one_grace_period(
    clip: Path, tmp_path: Path
) -> None:
    """Three cameras removed by SIGHUP whose processes are hung (SIGSTOP: SIGTERM does
    nothing): stopped together, one 3 s grace period and SIGKILL, not 3 s each — one after
    another, eight of them would outlast the systemd watchdog (30 s)."""
    streams = [_live(sid, clip) for sid in ("a", "b", "c", "d")]
    cfg = write_pipeline(tmp_path, Path("unused.pt"), free_port(), streams, model=NULL_MODEL)
    with running_daemon(cfg, "abcd") as d:
        log, daemon = d.log, d.proc
        pids = _pids(cfg)
        for sid in "bcd":
            os.kill(pids[sid], signal.SIGSTOP)
        data = json.loads(cfg.read_text())
        data["streams"] = [_live("a", clip)]
        cfg.write_text(json.dumps(data))
        t_hup = time.monotonic()
        daemon.send_signal(signal.SIGHUP)
        for sid in "bcd":
            assert log.wait_state(sid, {"ended"}, 20) is not None
        took = time.monotonic() - t_hup
        assert took < 6.0, f"three hung cameras took {took:.1f}s to remove"
        for sid in "bcd":
            assert (
                not psutil.pid_exists(pids[sid]) or psutil.Process(pids[sid]).status() == "zombie"
            )
        assert list(_pids(cfg)) == ["a"]


def test_a_burst_of_changes_is_capped_so_health_keeps_its_workers(
    clip: Path, tmp_path: Path
) -> None:
    """While the supervisor stops a hung camera (3 s), at most 4 changes wait for it; the
    rest get 503 at once and are never applied; /healthz answers meanwhile."""
    cfg = write_pipeline(tmp_path, Path("unused.pt"), free_port(),
                         [_live("a", clip), _live("b", clip)], model=NULL_MODEL)  # fmt: skip
    with running_daemon(cfg, ("a", "b")):
        os.kill(_pids(cfg)["b"], signal.SIGSTOP)  # its removal takes the 3 s grace period
        answers: dict[str, int] = {}
        removing = threading.Thread(target=lambda: answers.update(
            b=_api(cfg, "DELETE", "/api/streams/b")[0]))  # fmt: skip
        removing.start()
        time.sleep(0.5)
        adds = [threading.Thread(target=lambda sid=sid: answers.update(
                {sid: _api(cfg, "POST", "/api/streams", _live(sid, clip))[0]}))
                for sid in ("c1", "c2", "c3", "c4", "c5")]  # fmt: skip
        for t in adds:
            t.start()
        t0 = time.monotonic()
        with urllib.request.urlopen(f"http://{_listen(cfg)}/healthz", timeout=5) as r:
            assert r.status in (200, 503)
        assert time.monotonic() - t0 < 1.0
        for t in [removing, *adds]:
            t.join(30)
        refused = sorted(sid for sid, code in answers.items() if code == 503)
        assert answers["b"] == 200 and len(refused) == 2, answers
        listed = {s["id"] for s in _api(cfg, "GET", "/api/streams")[1]["streams"]}
        assert listed == {"a", "c1", "c2", "c3", "c4", "c5"} - set(refused)


def _add_with_descriptors_short(pid: int, cfg: Path, body: dict[str, Any]) -> tuple[int, Any]:
    """POST with the supervisor's descriptor limit just above what it has open: the
    connection is accepted, the new process's pipes are refused (EMFILE)."""
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (psutil.Process(pid).num_fds() + 3, hard))
    try:
        return _api(cfg, "POST", "/api/streams", body)
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


# -- the stream API's requests, the supervisor played by the test ---------------------


@pytest.fixture
def changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from streamd.config import load_config
    from streamd.control.streams import StreamChanges, StreamsFile

    monkeypatch.setenv("CAM_PASS", "s3cret-one")
    pipeline = tmp_path / "cams.yaml"
    pipeline.write_text(
        "streams:\n"
        "  - {id: a, url: 'rtsp://admin:${CAM_PASS}@127.0.0.1:8554/a'}\n"
        "  - {id: b, url: 'rtsp://127.0.0.1:8554/b'}\n"
    )
    file = StreamsFile(pipeline)
    cfg, bodies = file.load(load_config(pipeline))
    yield StreamChanges(cfg.streams, tmp_path, file, bodies)


class _Supervisor:
    """Applies the queued requests on a thread of its own, as the daemon's loop does."""

    def __init__(self, changes: Any, apply_s: float = 0.0) -> None:
        self.changes = changes
        self.applied: list[Any] = []
        self._apply_s = apply_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _apply(self, diff: Any, _streams: Any) -> None:
        time.sleep(self._apply_s)
        self.applied.append(diff)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.changes.apply_pending(self._apply)
            time.sleep(0.01)

    def __enter__(self) -> _Supervisor:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_the_overlay_keeps_env_references_and_a_get_put_round_trip_keeps_the_url(
    changes: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamd.config import load_config
    from streamd.control.admin import AdminError
    from streamd.control.api import shown
    from streamd.control.streams import StreamsFile

    zone = {"name": "door", "polygon": [[0, 0], [10, 0], [10, 10]]}
    with _Supervisor(changes):
        seen = shown(changes.get_stream("a"))
        assert seen["url"] == "rtsp://***@127.0.0.1:8554/a"
        changes.update_stream("a", {**seen, "zones": [zone]})  # read, change a zone, write
        assert changes.get_stream("a").url == "rtsp://admin:s3cret-one@127.0.0.1:8554/a"
        # A request naming the daemon's environment would read it back through GET.
        for body in ({"id": "c", "url": "rtsp://cam:${CAM_PASS}@10.0.0.9/c"},
                     {"id": "c", "url": "rtsp://10.0.0.9/${HOME}"}):  # fmt: skip
            with pytest.raises(AdminError) as refused:
                changes.add_stream(body)
            assert refused.value.status == 422 and refused.value.problems[0][0] == "url"
        with pytest.raises(AdminError) as in_zone:
            changes.update_stream("b", {"url": "rtsp://127.0.0.1:8554/b",
                                        "zones": [{**zone, "name": "${CAM_PASS}"}]})  # fmt: skip
        assert in_zone.value.problems[0][0] == "zones.0.name"
        changes.add_stream({"id": "c", "url": "rtsp://cam:given@10.0.0.9/c"})
        assert changes.get_stream("c").url == "rtsp://cam:given@10.0.0.9/c"
        # Credentials in the query are shown as *** too, and written back they stay.
        query = "http://10.0.0.9/video.cgi?user=admin&pwd=hunter22"
        changes.add_stream({"id": "q", "url": query})
        seen = shown(changes.get_stream("q"))
        assert seen["url"] == "http://10.0.0.9/video.cgi?user=***&pwd=***"
        changes.update_stream("q", {**seen, "zones": [zone]})
        assert changes.get_stream("q").url == query
    saved = (tmp_path / "cams.streams.yaml").read_text()
    assert "s3cret-one" not in saved and "***" not in saved
    assert saved.count("${CAM_PASS}") == 1

    # The password rotated: the next start uses the new one.
    monkeypatch.setenv("CAM_PASS", "s3cret-two")
    cfg = StreamsFile(tmp_path / "cams.yaml").apply(load_config(tmp_path / "cams.yaml"))
    urls = {s.id: s.url for s in cfg.streams}
    assert urls["a"] == "rtsp://admin:s3cret-two@127.0.0.1:8554/a"
    assert urls["c"] == "rtsp://cam:given@10.0.0.9/c"
    assert [z.name for z in cfg.streams[0].zones] == ["door"]


def test_a_request_that_timed_out_is_withdrawn_and_never_applied(
    changes: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streamd.control.streams as streams

    monkeypatch.setattr(streams, "APPLY_TIMEOUT_S", 0.2)
    with pytest.raises(TimeoutError):  # the supervisor is busy: nobody takes it
        changes.remove_stream("b")
    applied: list[Any] = []
    assert changes.apply_pending(lambda diff, _s: applied.append(diff)) is False
    assert applied == [] and [s.id for s in changes.streams] == ["a", "b"]

    # Taken before the timeout but slow to apply (processes stopping): its outcome, however
    # long it takes, never a 503 for a change that then happens.
    monkeypatch.setattr(streams, "APPLY_TIMEOUT_S", 0.5)
    with _Supervisor(changes, apply_s=1.5) as sup:
        changes.remove_stream("b")
    assert [d.removed for d in sup.applied] == [("b",)]


def test_the_supervisor_applies_one_change_per_turn(changes: Any) -> None:
    results: list[str] = []
    bodies = [{"id": sid, "url": f"rtsp://h/{sid}"} for sid in ("x", "y", "z")]
    threads = [
        threading.Thread(target=lambda b=b: results.append(changes.add_stream(b).id))
        for b in bodies
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while changes._requests.qsize() < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    applied: list[Any] = []
    for turn in range(3):
        assert changes.apply_pending(lambda diff, _s: applied.append(diff)) is True
        assert len(applied) == turn + 1  # one per call: the loop (its watchdog) turns between
    assert changes.apply_pending(lambda diff, _s: applied.append(diff)) is False
    for t in threads:
        t.join(5)
    assert sorted(results) == ["x", "y", "z"]
    assert [s.id for s in changes.streams][:2] == ["a", "b"] and len(changes.streams) == 5


def test_a_route_the_detector_did_not_confirm_is_sent_again(tmp_path: Path) -> None:
    from streamd.control.routes import Routes
    from streamd.runtime.channel import Inbox
    from streamd.types import RouteUpdate

    endpoint = f"ipc://{tmp_path}/inbox"
    inbox = Inbox(endpoint)  # the detector's
    acks: set[int] = set()

    def take_acks() -> set[int]:
        taken = set(acks)
        acks.clear()
        return taken

    def received(n: int) -> list[RouteUpdate]:
        got: list[Any] = []
        deadline = time.monotonic() + 5
        while len(got) < n and time.monotonic() < deadline:
            if inbox.poll(0.1):
                got += inbox.drain()
        assert len(got) == n
        return got

    routes = Routes(endpoint, take_acks, resend_s=1.0)
    try:
        routes.send(RouteUpdate("a", "ipc://results-a"))
        routes.send(RouteUpdate("b", "ipc://results-b"))
        first = received(2)
        acks.add(first[1].seq)  # the detector applied b's; a's was lost on the way
        assert routes.check() == 0 and routes.pending() == ["a"]
        time.sleep(1.05)
        assert routes.check() == 1
        (again,) = received(1)
        assert again == first[0]  # the same update, the same seq
        acks.add(again.seq)
        assert routes.check() == 0 and routes.pending() == []

        # A newer route of a stream supersedes the older: that one is never sent again.
        routes.send(RouteUpdate("a", None))
        routes.send(RouteUpdate("a", "ipc://results-a2"))
        received(2)
        time.sleep(1.05)
        assert routes.check() == 1
        (resent,) = received(1)
        assert resent.endpoint == "ipc://results-a2"
    finally:
        routes.close()
        inbox.close()


def test_frames_that_reach_the_detector_before_their_route_wait_for_it(tmp_path: Path) -> None:
    """A new stream's first frames can be read before its route (they come from another
    sender): kept and batched once the route comes, not dropped with their ring slot held;
    those whose route never comes are released (a blocking writer waits for the slot)."""
    import streamd.inference as inference
    from streamd.config import parse_config
    from streamd.detect import create_detector
    from streamd.frames.ring import FrameRing
    from streamd.runtime.channel import Inbox, Outbox, ResultRouter
    from streamd.types import RouteUpdate

    cfg = parse_config("streams: [{id: a, url: a.mp4}]\nmodel: {backend: null, imgsz: 320}\n")
    ep = f"ipc://{tmp_path}"
    worker = inference.InferenceWorker(cfg, create_detector(cfg.model, max_batch=4),
                                       Inbox(f"{ep}/inbox"), ResultRouter({}),
                                       Outbox(f"{ep}/control"))  # fmt: skip
    ring = FrameRing(f"streamd_test_{os.getpid()}_route", 4, 8, 8, skip_claimed=False)
    try:
        refs = [_ref(ring, "b", seq) for seq in range(3)] + [_ref(ring, "c", 3)]
        worker._ingest(refs)
        assert worker.batcher.pending == 0  # no route for b or c yet
        worker._ingest([RouteUpdate("b", f"{ep}/results-b", "block")])
        assert worker.batcher.pending == 3  # b's three frames, in order
        assert [r.seq for r in worker.batcher.take(time.time() + 1)] == [0, 1, 2]
        worker._expire_unrouted(time.monotonic() + inference.UNROUTED_HOLD_S + 1)
        assert worker._unrouted == {}
        assert ring.header[1] == 4  # c's frame (seq 3) handed back unread
    finally:
        worker.close()
        ring.close()


def _ref(ring: Any, stream: str, seq: int) -> Any:
    from streamd.types import FrameRef

    now = time.time()
    return FrameRef(stream, ring.name, 4, 8, 8, seq % 4, seq, now, seq / 10, 1.0, now)
