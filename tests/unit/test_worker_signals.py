"""A worker's heartbeat never waits for one of its jobs: the signals a reply carries are applied by
their own thread, in order, and acked only once applied. (A job holds its lock while its supervisor
starts, which takes seconds on a loaded host; a heartbeat held that long let leases expire and the
server run the same task twice.)"""
from __future__ import annotations

import threading

import pytest

from scitq_app.config import load_config
from scitq_app.job import Job, Slots, Stager
from scitq_app.outbox import Outbox
from scitq_app.runner import Runner
from scitq_app.worker import Worker


class FakeServer:
    """The heartbeat endpoint as the server answers it: pending signals until acked."""

    def __init__(self) -> None:
        self.pending: list[dict] = []
        self.acked: list[int] = []
        self.fingerprint = None
        self.token = None
        self.url = "http://fake"

    def heartbeat(self, worker_id, stats, executions, acks=()):
        self.acked += list(acks)
        self.pending = [s for s in self.pending if s["id"] not in self.acked]
        return {"settings": {"concurrency": 1, "prefetch": 0, "status": "running", "batch": None},
                "signals": list(self.pending)}


def _worker(tmp_path, server: FakeServer) -> Worker:
    config = load_config(env={"SCITQ_WORKER_WORKDIR": str(tmp_path / "work"), "SCITQ_WORKER_TASK_USER": "root",
                              "SCITQ_WORKER_NAME": "w"})
    worker = Worker(config, client=server, runner=Runner(), stager=Stager())  # type: ignore[arg-type]
    worker.worker_id = 1
    return worker


def _job(worker: Worker, execution_id: int) -> Job:
    job = Job({"id": execution_id, "command": "true"}, root=worker.root, runner=worker.runner,
              stager=worker.stager, outbox=Outbox(str(worker.root) + "/outbox-test"), slots=Slots(1),
              cpu_per_slot=lambda: 1, head=10, tail=10, on_done=lambda job: None)
    worker.jobs[execution_id] = job
    return job


def test_a_heartbeat_returns_while_a_job_holds_its_lock_and_the_signals_follow_in_order(tmp_path):
    server = FakeServer()
    worker = _worker(tmp_path, server)
    job = _job(worker, 7)
    server.pending = [{"id": 1, "execution_id": 7, "action": "pause"},
                      {"id": 2, "execution_id": 7, "action": "resume"},
                      {"id": 3, "execution_id": 7, "action": "pause"}]
    with job._lock:  # the job is starting its supervisor
        beat = threading.Thread(target=worker._heartbeat)
        beat.start()
        beat.join(10)
        assert not beat.is_alive(), "the heartbeat waited for the job"
        worker._heartbeat()  # the same signals again (not acked yet): queued once
        assert job.resumed.is_set(), "nothing applied while the job held its lock"
        assert server.acked == []
        applier = threading.Thread(target=worker.apply_orders)
        applier.start()
    applier.join(10)
    assert not applier.is_alive()
    assert not job.resumed.is_set(), "pause, resume, pause: the job ends paused"
    assert worker.apply_orders(block=False) == 0, "each signal was queued once"
    worker._heartbeat()
    assert server.acked == [1, 2, 3]
    assert server.pending == []


def test_a_signal_applied_but_not_acked_is_acked_after_a_failed_heartbeat(tmp_path):
    server = FakeServer()
    worker = _worker(tmp_path, server)
    job = _job(worker, 8)
    server.pending = [{"id": 5, "execution_id": 8, "action": "pause"}]
    worker._heartbeat()
    assert worker.apply_orders(block=False) == 1
    assert not job.resumed.is_set()

    def unreachable(*args, **kw):
        raise ConnectionError("down")
    beat = server.heartbeat
    server.heartbeat = unreachable  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        worker._heartbeat()
    server.heartbeat = beat  # type: ignore[method-assign]
    assert server.acked == []
    worker._heartbeat()
    assert server.acked == [5], "the ack kept through the failed heartbeat"
    assert worker.apply_orders(block=False) == 0
