"""What single steps cannot interleave: batch and task signals racing reports, heartbeat
flushes and the dispatcher's repairs in threads on one database. On PostgreSQL every
transaction takes its row locks in one order (tasks, executions, workers; ascending ids), so
none deadlocks another, and every status change is judged on locked rows, so no task that
exited 0 is paused, canceled or run again (issue 9)."""
from __future__ import annotations

import random
import threading
from typing import Any, Callable

from scitq_app.errors import Conflict, Fenced

from .scene import LEASE, task_spec

ROUNDS = 6
TASKS = 16
WORKERS = 3


def _race(*jobs: Callable[[], None]) -> list[BaseException]:
    """Run the jobs in threads released together; return what they raised."""
    barrier = threading.Barrier(len(jobs))
    errors: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        try:
            barrier.wait(30)
            job()
        except BaseException as e:  # collected for the test, not lost in a thread
            errors.append(e)
    threads = [threading.Thread(target=run, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread is still blocked: a lock wait that never ends"
    return errors


def test_signals_racing_reports_heartbeats_and_the_dispatcher_never_deadlock_or_rerun(store, register):
    retried: list[BaseException] = []
    judge = store._retryable

    def spy(exc: BaseException) -> bool:
        # Deadlocks are retried silently by the store: record them, the test wants none.
        if judge(exc):
            retried.append(exc)
        return judge(exc)
    store._retryable = spy
    workers = [register(f"stress-{i}", concurrency=TASKS * ROUNDS) for i in range(WORKERS)]
    silent = register("stress-silent", concurrency=TASKS * ROUNDS)
    exited_0: set[int] = set()
    for rnd in range(ROUNDS):
        batch = f"b{rnd}"
        rng = random.Random(rnd)
        ids = store.create_tasks([task_spec(batch=batch, command=f"echo {rnd}-{i}") for i in range(TASKS)])
        held: dict[int, list[dict[str, Any]]] = {w.id: [] for w in workers}
        for i in range(TASKS - 4):
            w = workers[i % WORKERS]
            [e] = store.claim(w.id, 1, LEASE)
            store.report(e["id"], w.id, {"phase": "running"})
            held[w.id].append(e)
        # A silent worker's attempts: leases already lapsed, so the dispatcher ends them meanwhile.
        lapsed = store.claim(silent.id, 4, -1.0)
        assert len(lapsed) == 4
        done = threading.Event()

        def reporter() -> None:
            mine = [(w, e) for w, es in held.items() for e in es]
            rng.shuffle(mine)
            try:
                for n, (w, e) in enumerate(mine):
                    if n % 3 == 0:  # the outbox path: output then the report, in one transaction
                        store.apply_outbox(w, [("output", e["id"], {"stream": "stdout", "offset": 0,
                                                                     "data": b"ok\n", "final": True}),
                                               ("report", e["id"], {"phase": "succeeded", "return_code": 0})],
                                           1024, 1024)
                    else:
                        store.report(e["id"], w, {"phase": "succeeded", "return_code": 0})
                    exited_0.add(e["task_id"])
            finally:
                done.set()

        def controller() -> None:
            for status, signal in (("paused", "pause"), ("running", None), ("stopped", "term"),
                                   ("paused", "pause"), ("running", None)):
                store.set_batch_status(batch, status, signal=signal)

        def stopper() -> None:
            for task_id in sorted(ids, reverse=True)[::3]:
                try:
                    store.signal_task(task_id, rng.choice(["stop", "pause", "resume"]))
                except Conflict:
                    pass  # it finished first: nothing to signal

        def beats() -> None:
            # The server's flush: every worker's beat in one transaction, executions listed
            # highest first, as unordered as a real buffer can hand them over.
            while not done.is_set():
                store.record_heartbeats([{"worker_id": w, "stats": {}, "acks": [],
                                          "executions": sorted((e["id"] for e in es), reverse=True)}
                                         for w, es in sorted(held.items(), reverse=True)], LEASE)

        def dispatcher() -> None:
            while not done.is_set():
                store.expire_leases()
                store.enforce_deadlines(LEASE)

        errors = _race(reporter, controller, stopper, beats, dispatcher)
        # A report refused because a stop or the dispatcher got there first is the protocol
        # working; anything else is a failure.
        assert [e for e in errors if not isinstance(e, Fenced)] == []
        store.set_batch_status(batch, "running")
        for task_id in ids:
            execs = store.list_executions(task_id)
            task = store.get_task(task_id)
            if task_id in exited_0:
                # Its attempt exited 0 and the server took the report: the task is done,
                # whatever signal crossed it, and is never handed out again.
                assert (task.status, execs[0].status) == ("succeeded", "succeeded"), task_id
            if any(e.status == "succeeded" for e in execs):
                assert task.status == "succeeded", task_id
    assert retried == [], f"{len(retried)} transaction(s) retried after a deadlock: {retried[:3]}"
    # Nothing that succeeded is claimable again; whatever is claimed now never succeeded.
    again = store.claim(workers[0].id, TASKS * ROUNDS, LEASE)
    assert {e["task_id"] for e in again} & exited_0 == set()
