"""A worker beats at the interval its server sets, longer than its own `[worker] heartbeat` too:
that interval grows with the fleet (beats.rhythm) so that the server's load stays bounded as
workers are added; a worker that kept its own shorter one sent a 5,000-worker fleet's server five
times the beats it asked for. (A real server process; the worker in this process, its real client.)"""
from __future__ import annotations

from scitq_app.config import load_config
from scitq_app.job import Stager
from scitq_app.runner import Runner
from scitq_app.worker import Worker

from .conftest import unique


def _worker(srv, tmp_path, heartbeat: str) -> Worker:
    join = srv.ok("POST", "/join-tokens", {"uses": 1}, status=201)["join_token"]
    config = load_config("/dev/null", env={
        "SCITQ_WORKER_SERVER": srv.url, "SCITQ_WORKER_JOIN_TOKEN": join, "SCITQ_WORKER_NAME": unique("beat"),
        "SCITQ_WORKER_WORKDIR": str(tmp_path / "work"), "SCITQ_WORKER_TASK_USER": "root",
        "SCITQ_WORKER_HEARTBEAT": heartbeat})
    return Worker(config, runner=Runner(), stager=Stager())


def test_a_worker_beats_at_its_servers_interval_when_the_fleet_makes_it_longer_than_its_own(servers, tmp_path):
    # The server takes 1 beat a second from the whole fleet, from 0.2 s between beats at least: a
    # fleet of one (counted as this worker registers) beats every second, leases last 3 beats.
    srv = servers.start("sqlite", env={"SCITQ_SERVER_HEARTBEAT_RATE": "1", "SCITQ_WORKER_HEARTBEAT": "0.2",
                                       "SCITQ_DISPATCHER_LEASE": "2"})
    worker = _worker(srv, tmp_path, heartbeat="0.5")
    worker.register()  # its reply sets the pace
    assert (worker.heartbeat_every, worker.lease.seconds) == (1.0, 3.0)
    worker.heartbeat_every = 0.5
    worker._heartbeat()  # and so does every heartbeat's
    assert (worker.heartbeat_every, worker.lease.seconds) == (1.0, 3.0)


def test_a_worker_beats_at_its_servers_interval_when_shorter_than_its_own(servers, tmp_path):
    srv = servers.start("sqlite", env={"SCITQ_WORKER_HEARTBEAT": "0.5"})
    worker = _worker(srv, tmp_path, heartbeat="2")
    worker.register()
    assert worker.heartbeat_every == 0.5
