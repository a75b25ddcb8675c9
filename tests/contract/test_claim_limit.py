"""One worker's overlapping claims (a retried request, two server processes answering it) never
give it more than concurrency + prefetch executions, under any interleaving."""
from __future__ import annotations

import threading
from typing import Callable

from .scene import LEASE, task_spec

TRIALS = 20
CLAIMS = 6


def _at_once(claim: Callable[[], list[dict]]) -> list[list[dict]]:
    """CLAIMS threads released together, each making `claim`; their answers (any error raised)."""
    barrier = threading.Barrier(CLAIMS)
    got: list[list[dict]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(10)
            got.append(claim())
        except BaseException as e:  # reported below, not lost in a thread
            errors.append(e)
    threads = [threading.Thread(target=run) for _ in range(CLAIMS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    return got


def test_overlapping_claims_of_one_worker_never_exceed_concurrency_plus_prefetch(store, register):
    store.create_tasks([task_spec(command=f"echo {i}") for i in range(TRIALS * 3 * CLAIMS)])
    for trial in range(TRIALS):
        worker = register(f"overlap-{trial}", concurrency=2, prefetch=1)
        got = _at_once(lambda: store.claim(worker.id, 3, LEASE))
        claimed = [e["id"] for batch in got for e in batch]
        assert len(claimed) == 3, f"trial {trial}: the worker was given {len(claimed)} executions, limit 3"
        assert store.get_worker(worker.id).to_dict()["active"] == 3


def test_a_retry_racing_its_first_try_gets_what_that_one_took_and_nothing_more(store, register):
    # a worker's claim whose reply was slow, sent again while the first is still in flight: both
    # pass the prospect before either claimed, then take the worker's lock in turn; the second
    # must answer with the first's executions (read under the lock), not claim anew
    store.create_tasks([task_spec(command=f"echo {i}") for i in range(TRIALS * 2 * CLAIMS)])
    for trial in range(TRIALS):
        worker = register(f"retry-{trial}", concurrency=4)
        got = [sorted(e["id"] for e in answer)
               for answer in _at_once(lambda: store.claim(worker.id, 2, LEASE, request_id="once"))]
        assert len(got) == CLAIMS and len(got[0]) == 2, f"trial {trial}: {got}"
        assert all(answer == got[0] for answer in got), f"trial {trial}: {got}"
        assert store.get_worker(worker.id).to_dict()["active"] == 2
