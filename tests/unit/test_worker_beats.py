"""A worker's heartbeats are spread: each waits the server's interval +-10 %, so workers whose
replies came together (after the server paused, or as it started) do not beat together ever after,
in bursts that make the server pause again (seen in bench/fleet.py: stalls 25 s apart)."""
from __future__ import annotations

from scitq_app.config import load_config
from scitq_app.job import Stager
from scitq_app.runner import Runner
from scitq_app.worker import Worker


class CountedWaits:
    """The worker's stop event, as its heartbeat loop sees it: records each wait, stops after `n`."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.asked: list[float] = []

    def wait(self, timeout: float) -> bool:
        self.asked.append(timeout)
        return len(self.asked) > self.n


def test_each_heartbeat_waits_the_interval_give_or_take_a_tenth_and_never_twice_the_same(tmp_path):
    config = load_config("/dev/null", env={"SCITQ_WORKER_WORKDIR": str(tmp_path / "work"),
                                           "SCITQ_WORKER_TASK_USER": "root", "SCITQ_WORKER_NAME": "w",
                                           "SCITQ_WORKER_SERVER": "http://127.0.0.1:9"})
    worker = Worker(config, runner=Runner(), stager=Stager())
    worker.heartbeat_every = 25.0
    waits = CountedWaits(200)
    worker._done = waits  # type: ignore[assignment]
    worker._heartbeat_loop()  # not registered: it only waits
    beats = waits.asked[:200]
    assert all(22.5 <= t <= 27.5 for t in beats)
    assert len(set(beats)) == 200
    assert min(beats) < 23.5 and max(beats) > 26.5  # spread over the whole +-10 %
