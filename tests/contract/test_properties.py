"""A stateful property test of the store (issue 9): random interleavings of submissions,
claims, reports, heartbeats, lease expiry, task and batch signals, relaunches and deletions,
with the invariants checked after every step. Fixed seed (derandomize) and bounded steps, so
CI runs the same sequences every time; threads, which steps cannot interleave, are in
test_lock_order.py."""
from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)

from scitq_app.errors import Conflict, Fenced, NotFound
from scitq_app.store import open_store
from tests.conftest import FakeClock

from .scene import LEASE, task_spec

BATCHES = ("b1", "b2")
MAX_TASKS = 8
WORKERS = 2  # concurrency 2 + prefetch 1 each: the limit is reached often
ACTIVE = {"assigned", "running", "uploading"}
SETTINGS = settings(max_examples=40, stateful_step_count=60, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
                    print_blob=False)


class StoreMachine(RuleBasedStateMachine):
    """One fresh database per example; the model keeps only what the invariants need."""

    new_database: Any = None  # set by the test: () -> (url, give_back)

    def __init__(self) -> None:
        super().__init__()
        self.url, self.give_back = self.new_database()
        self.clock = FakeClock()
        self.store = open_store(self.url, clock=self.clock)
        self.store.init_schema()
        self.workers = [self.store.register_worker({"name": f"w{i}", "concurrency": 2, "prefetch": 1})[0].id
                        for i in range(WORKERS)]
        self.tasks: list[int] = []  # ever submitted (deleted ones stay: their calls are NotFound)
        self.executions: list[tuple[int, int]] = []  # (execution id, worker id), ever claimed
        self.claimed: list[tuple[int, str]] = []  # (task id, batch) of each claim, latest last
        self.succeeded: dict[int, int] = {}  # task -> its execution count when seen succeeded
        self.canceled: dict[int, tuple[int | None, int]] = {}  # task -> (current execution, count)
        self.deleted: set[int] = set()
        self.relaunched: dict[int, int | None] = {}  # task -> its current execution when relaunched

    def teardown(self) -> None:
        self.store.close()
        self.give_back()

    # --- rules -----------------------------------------------------------
    @initialize(n=st.integers(2, 5))
    def some_tasks(self, n: int) -> None:
        # every example starts with work to claim, in both batches
        self.tasks += self.store.create_tasks([task_spec(batch=BATCHES[i % 2], max_retries=1) for i in range(n)])

    @precondition(lambda self: len(self.tasks) < MAX_TASKS)
    @rule(batch=st.sampled_from(BATCHES), paused=st.sampled_from([False, False, False, True]),
          require=st.integers(0, 3 * MAX_TASKS))
    def submit(self, batch: str, paused: bool, require: int) -> None:
        requires = [self.tasks[require]] if require < len(self.tasks) and self.tasks[require] not in self.deleted \
            else []
        self.tasks += self.store.create_tasks([task_spec(batch=batch, requires=requires, max_retries=1,
                                                         **({"status": "paused"} if paused else {}))])

    @rule(worker=st.integers(0, WORKERS - 1), slots=st.integers(1, 3))
    def claim(self, worker: int, slots: int) -> None:
        w = self.workers[worker]
        got = self.store.claim(w, slots, LEASE)
        self.executions += [(e["id"], w) for e in got]
        self.claimed += [(e["task_id"], e["batch"]) for e in got]

    @rule(worker=st.integers(0, WORKERS - 1))
    def claim_one(self, worker: int) -> None:
        # claims twice as likely as other steps: most paths worth attacking start with one
        self.claim(worker, 1)

    @precondition(lambda self: self.executions)
    @rule(pick=st.integers(0, 10_000), phase=st.sampled_from(
        ["running", "uploading", "succeeded", "succeeded", "failed-app", "failed-canceled"]))
    def report(self, pick: int, phase: str) -> None:
        recent = self.executions[-4:]  # mostly attempts still running; older ones test fencing
        eid, w = recent[pick % len(recent)] if pick % 5 else self.executions[pick % len(self.executions)]
        body: dict[str, Any] = {"phase": phase.split("-")[0], "return_code": 0 if phase == "succeeded" else 1}
        if phase.startswith("failed"):
            body["failure_class"] = phase.split("-")[1]
        try:
            self.store.report(eid, w, body)
        except (Fenced, Conflict, NotFound):
            pass  # a late, fenced or out-of-order report: refused, which is the protocol working

    @rule(worker=st.integers(0, WORKERS - 1))
    def heartbeat(self, worker: int) -> None:
        w = self.workers[worker]
        reply = self.store.heartbeat_reply(w, [], LEASE)
        self.store.record_heartbeats([{"worker_id": w, "stats": {}, "acks": [s["id"] for s in reply["signals"]],
                                       "executions": [e for e, ew in self.executions if ew == w]}], LEASE)

    @rule(seconds=st.sampled_from([1.0, LEASE / 2, LEASE + 1]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)
        # a dispatcher round: counts folded too (they must stay exact before and after)
        self.store.expire_leases()
        self.store.release_after(self.clock() - 2 * LEASE)
        self.store.fold_task_counts()

    @precondition(lambda self: self.tasks)
    @rule(pick=st.integers(0, 10_000), action=st.sampled_from(["pause", "resume", "stop", "kill"]))
    def signal_task(self, pick: int, action: str) -> None:
        try:
            # half the time a task just claimed: signals matter most to executing tasks
            recent = [t for t, _ in self.claimed[-3:]]
            self.store.signal_task(recent[pick % len(recent)] if recent and pick % 2 else
                                   self.tasks[pick % len(self.tasks)], action)
        except (Conflict, NotFound):
            pass

    @rule(batch=st.sampled_from(BATCHES + ("latest",)), change=st.sampled_from(
        [("paused", None), ("paused", "pause"), ("paused", "resume"), ("stopped", "term"), ("stopped", "kill"),
         ("running", None), ("running", None), ("running", None)]))
    def batch_signal(self, batch: str, change: tuple[str, str | None]) -> None:
        if batch == "latest":  # the batch of the task claimed last
            batch = self.claimed[-1][1] if self.claimed else BATCHES[0]
        try:
            self.store.set_batch_status(batch, change[0], signal=change[1])
        except NotFound:
            pass  # no task was submitted to it yet

    @precondition(lambda self: self.tasks)
    @rule(pick=st.integers(0, 10_000))
    def relaunch(self, pick: int) -> None:
        task_id = self.tasks[pick % len(self.tasks)]
        try:
            self.store.relaunch_task(task_id)
        except (Conflict, NotFound):
            return
        self.succeeded.pop(task_id, None)  # the one way a succeeded or canceled task runs again
        self.canceled.pop(task_id, None)
        self.relaunched[task_id] = self.store.get_task(task_id).current_execution_id

    @precondition(lambda self: self.tasks)
    @rule(pick=st.integers(0, 10_000))
    def delete(self, pick: int) -> None:
        task_id = self.tasks[pick % len(self.tasks)]
        try:
            self.store.delete_task(task_id)
        except (Conflict, NotFound):
            return
        self.deleted.add(task_id)

    # --- invariants ------------------------------------------------------
    @invariant()
    def the_rules_hold(self) -> None:
        tasks = {t.id: t for t in self.store.list_tasks(limit=1000)}
        assert set(tasks) == set(self.tasks) - self.deleted
        for task_id, t in tasks.items():
            execs = self.store.list_executions(task_id)  # newest first
            active = [e for e in execs if e.status in ACTIVE]
            assert len(active) <= 1, f"task {task_id} has {len(active)} current executions"
            current = next((e for e in execs if e.id == t.current_execution_id), None)
            if t.status in ACTIVE:
                assert current is not None and current.status == t.status, (task_id, t.status)
            if t.status == "succeeded":
                assert current is not None and current.status == "succeeded", task_id
            if current is not None and current.status == "succeeded" and self.relaunched.get(task_id) != current.id:
                # an attempt that exited 0 is the task's outcome, whatever signal crossed it
                assert t.status == "succeeded", (task_id, t.status)
            if task_id in self.succeeded:
                assert (t.status, len(execs)) == ("succeeded", self.succeeded[task_id]), \
                    f"task {task_id} succeeded and ran again without a relaunch"
            elif t.status == "succeeded":
                self.succeeded[task_id] = len(execs)
            if task_id in self.canceled:
                at_cancel, count = self.canceled[task_id]
                assert len(execs) == count, f"canceled task {task_id} ran again"
                # stays canceled; only the attempt current at the stop may yet record that it exited 0
                if t.status == "succeeded":
                    assert current is not None and current.id == at_cancel, (task_id, current)
                else:
                    assert t.status == "canceled", (task_id, t.status)
            elif t.status == "canceled":
                self.canceled[task_id] = (t.current_execution_id, len(execs))
        for w in self.store.list_workers():
            d = w.to_dict()
            assert d["active"] <= d["concurrency"] + d["prefetch"], d
        assert self.store.count_tasks() == dict(Counter(t.status for t in tasks.values()))
        by_batch = {b.name: b.counts for b in self.store.list_batches()}
        for name in BATCHES:
            assert by_batch.get(name, {}) == dict(Counter(t.status for t in tasks.values() if t.batch == name))


@pytest.mark.slow
def test_no_task_lost_run_twice_or_resurrected(backend, tmp_path, pg_databases):
    if backend == "sqlite":
        counter = iter(range(1_000_000))

        def new_database() -> tuple[str, Any]:
            return f"sqlite:///{tmp_path}/p{next(counter)}.db", lambda: None
    else:
        if pg_databases is None:
            from tests.conftest import no_postgres
            no_postgres()

        def new_database() -> tuple[str, Any]:
            name = pg_databases.take()
            return pg_databases.url(name), lambda: pg_databases.give_back(name)

    machine = type("Machine", (StoreMachine,), {"new_database": staticmethod(new_database)})
    run_state_machine_as_test(machine, settings=SETTINGS)
