"""Concurrent claims: 8 separate processes, each with its own store and worker,
race over 2,000 tasks on the same database. Every task must be claimed
exactly once and none lost."""
from __future__ import annotations

import multiprocessing
import random
import time
import traceback
from typing import Any

import pytest

from .scene import task_spec

CLAIMERS = 8
TASKS = 2_000


def claimer(url: str, index: int, start: Any, results: Any) -> None:
    """A process: open a store, register a worker, claim(slots=1..10) until nothing is left."""
    from scitq_app.store import open_store
    try:
        store = open_store(url)
        try:
            worker, _ = store.register_worker({"name": f"claimer-{index}", "concurrency": 10_000})
            rng = random.Random(index)
            got: list[tuple[int, int]] = []
            start.wait(60)
            while True:
                executions = store.claim(worker.id, rng.randint(1, 10), 3600.0)
                got.extend((e["id"], e["task_id"]) for e in executions)
                # SKIP LOCKED may hide rows another claimer holds but has not committed
                # yet; stop only once nothing claimable is left at all.
                if not executions and not store.has_claimable(worker.id):
                    break
            results.put((index, worker.id, got, None))
        finally:
            store.close()
    except BaseException:  # reported to the test instead of dying silently
        results.put((index, None, [], traceback.format_exc()))


@pytest.mark.slow
def test_concurrent_claimers_claim_every_task_exactly_once(store, database_url):
    ids = store.create_tasks([task_spec(name=f"c{i}", priority=i % 7) for i in range(TASKS)])
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(CLAIMERS)
    results = ctx.Queue()
    procs = [ctx.Process(target=claimer, args=(database_url, i, start, results), daemon=True)
             for i in range(CLAIMERS)]
    for p in procs:
        p.start()
    reports = []
    deadline = time.monotonic() + 240
    try:
        while len(reports) < CLAIMERS:
            reports.append(results.get(timeout=max(1.0, deadline - time.monotonic())))
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = [r[3] for r in reports if r[3]]
    assert not errors, "\n".join(errors)
    assert all(p.exitcode == 0 for p in procs)

    claimed_tasks = [task_id for _, _, got, _ in reports for _, task_id in got]
    claimed_executions = [eid for _, _, got, _ in reports for eid, _ in got]
    assert len(claimed_tasks) == len(set(claimed_tasks)), "a task was claimed twice"
    assert set(claimed_tasks) == set(ids), "a task was lost"
    assert len(set(claimed_executions)) == TASKS
    # more than one claimer took part, else this proved nothing about concurrency
    assert sum(1 for r in reports if r[2]) > 1

    owner = {task_id: (eid, worker_id) for _, worker_id, got, _ in reports for eid, task_id in got}
    assert store.count_tasks() == {"assigned": TASKS}
    after = 0
    while page := store.list_tasks(after=after, limit=500):
        for t in page:
            executions = store.list_executions(t.id) if t.id % 50 == 0 else None
            assert t.status == "assigned" and t.attempts == 1
            assert t.current_execution_id == owner[t.id][0]
            if executions is not None:
                assert [(e.id, e.worker_id, e.attempt) for e in executions] == [(*owner[t.id], 1)]
        after = page[-1].id
    assert sum(w.active for w in store.list_workers()) == TASKS
    assert sorted(w.active for w in store.list_workers()) == sorted(len(r[2]) for r in reports)
