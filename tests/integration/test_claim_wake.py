"""Long-polling claims woken together (the server's Api over a real store, both databases): a wake
wakes every long-poll of the process; one read tells them which could claim, and those claim one
at a time, so a single new task costs two reads and one claim, not a read and a claim in vain
(a write transaction) for each long-poll."""
from __future__ import annotations

import threading
import time
from typing import Any

from scitq_app.beats import Notifier
from scitq_app.config import load_config
from scitq_app.errors import StoreUnavailable
from scitq_app.models import Identity, Role
from scitq_app.server import make_app

POLLERS = 8


class CountingStore:
    """The store, counting claims and looks (a poller's own, and the shared ones after a wake),
    its looks made slow enough (50 ms) that pollers woken together would all look before any
    claimed, were they not one at a time."""

    def __init__(self, store: Any, delay: float = 0.05) -> None:
        self._store = store
        self.delay = delay
        self.claims = 0
        self.looks = 0
        self.shared_looks = 0
        self.fail_next_look = False  # the next look fails as in an outage
        self.lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _slow_look(self) -> None:
        time.sleep(self.delay)
        with self.lock:
            fail, self.fail_next_look = self.fail_next_look, False
        if fail:
            raise StoreUnavailable("the database went away (test)")

    def has_claimable(self, worker_id: int) -> bool:
        self._slow_look()
        found = bool(self._store.has_claimable(worker_id))
        with self.lock:
            self.looks += 1  # looks made: once a poller's first is done, it waits to be woken
        return found

    def claimable_workers(self, worker_ids: Any) -> set[int]:
        self._slow_look()
        found = self._store.claimable_workers(worker_ids)
        with self.lock:
            self.shared_looks += 1
        return found

    def claim(self, *args: Any, **kw: Any) -> list:
        executions = self._store.claim(*args, **kw)
        with self.lock:
            self.claims += 1
        return executions


class QuietNotifier(Notifier):
    """A notifier whose long-polls never look again of themselves (a recheck longer than their
    wait): every look counted here follows a wake."""

    recheck = 30.0


def wait_until(check: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def start_pollers(make_store: Any) -> tuple[Any, CountingStore, Notifier, list, list[threading.Thread]]:
    """POLLERS long-polling claims (3 s) of workers of batch b, each waiting to be woken."""
    store = make_store()
    store.create_batch("b")
    workers = [store.register_worker({"name": f"w{i}", "concurrency": 1, "prefetch": 0, "batch": "b"})[0]
               for i in range(POLLERS)]
    counting = CountingStore(store)
    notifier = QuietNotifier()
    config = load_config("/dev/null", env={"SCITQ_SERVER_THREADS": str(4 * POLLERS)})
    api = make_app(counting, config, notifier=notifier).config["scitq.api"]
    admin = Identity(name="admin", role=Role.ADMIN)
    replies: list[Any] = []

    def poll(worker_id: int) -> None:
        try:
            replies.append(api.claim(admin, worker_id, {"slots": 1, "wait": 3.0}))
        except StoreUnavailable as e:
            replies.append(e)
    threads = [threading.Thread(target=poll, args=(w.id,)) for w in workers]
    for t in threads:
        t.start()
    # every poller has claimed once (nothing) and looked once (nothing): they wait now
    wait_until(lambda: counting.looks >= POLLERS and api.lookout.long_polls == POLLERS)
    assert counting.claims == POLLERS
    return store, counting, notifier, replies, threads


def test_a_wake_for_one_task_makes_one_long_poll_claim_it_and_none_claim_in_vain(make_store) -> None:
    store, counting, notifier, replies, threads = start_pollers(make_store)
    store.create_tasks([{"command": "true", "batch": "b"}])
    notifier.notify()
    for t in threads:
        t.join(30)
    taken = [e for r in replies for e in r["executions"]]
    assert len(replies) == POLLERS and len(taken) == 1
    assert counting.claims == POLLERS + 1, f"{counting.claims - POLLERS - 1} claims in vain after the wake"
    # one read said who could claim (all), one after the claim said none could: not one each
    assert counting.shared_looks == 2


def test_a_wake_that_brings_nothing_costs_one_read_for_all_long_polls(make_store) -> None:
    store, counting, notifier, replies, threads = start_pollers(make_store)
    looks = counting.looks
    notifier.notify()  # e.g. a slot freed on a worker not polling here
    wait_until(lambda: counting.shared_looks >= 1)
    notifier.notify()
    wait_until(lambda: counting.shared_looks >= 2)
    store.create_tasks([{"command": "true", "batch": "b"}])
    notifier.notify()
    for t in threads:
        t.join(30)
    assert counting.shared_looks == 4 and counting.claims == POLLERS + 1
    assert counting.looks == looks == POLLERS  # each poller's first look, its own; none since


def test_a_look_that_fails_after_a_wake_does_not_hold_up_the_other_long_polls(make_store) -> None:
    store, counting, notifier, replies, threads = start_pollers(make_store)
    store.create_tasks([{"command": "true", "batch": "b"}])
    counting.fail_next_look = True
    notifier.notify()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    failed = [r for r in replies if isinstance(r, StoreUnavailable)]
    taken = [e for r in replies if isinstance(r, dict) for e in r["executions"]]
    # the failing look's claim answers the error; another takes the task, the lock released
    assert len(replies) == POLLERS and len(failed) == 1 and len(taken) == 1


def test_woken_long_polls_beside_other_claims_heartbeats_and_reports_take_each_task_once(make_store) -> None:
    """The shared look under everything else at once: long-polls of this process (woken by
    submissions and by the successes they report), workers claiming directly as another process's
    would, heartbeats, and a look that fails midway; each task is taken once and all are done."""
    store = make_store()
    store.create_batch("b")
    pollers = [store.register_worker({"name": f"p{i}", "concurrency": 1, "prefetch": 0, "batch": "b"})[0]
               for i in range(8)]
    others = [store.register_worker({"name": f"o{i}", "concurrency": 2, "prefetch": 0, "batch": "b"})[0]
              for i in range(3)]
    counting = CountingStore(store, delay=0.0)
    notifier = Notifier()
    config = load_config("/dev/null", env={"SCITQ_SERVER_THREADS": "32"})
    api = make_app(counting, config, notifier=notifier).config["scitq.api"]
    admin = Identity(name="admin", role=Role.ADMIN)
    stop = threading.Event()
    errors: list[BaseException] = []
    taken: dict[str, list[int]] = {"polls": [], "others": []}

    def finish(executions: list[dict]) -> None:
        for e in executions:
            api.report(admin, e["id"], {"phase": "running"})
            stop.wait(0.05)  # the task runs a little: bursts larger than the pollers leave the others some
            api.report(admin, e["id"], {"phase": "succeeded", "return_code": 0})  # frees a slot: a wake

    def guarded(loop: Any) -> Any:
        def run() -> None:
            try:
                loop()
            except BaseException as e:  # the test fails on any
                errors.append(e)
        return run

    def poll(worker_id: int) -> None:
        while not stop.is_set():
            try:
                got = api.claim(admin, worker_id, {"slots": 1, "wait": 1.0})["executions"]
            except StoreUnavailable:
                continue  # the look made to fail, once: this poll answers the error, as a worker sees it
            taken["polls"].extend(e["task_id"] for e in got)
            finish(got)

    def claim_directly(worker_id: int) -> None:
        while not stop.is_set():
            got = store.claim(worker_id, 2, 30.0)
            taken["others"].extend(e["task_id"] for e in got)
            finish(got)
            stop.wait(0.01)

    def beat() -> None:
        while not stop.is_set():
            for w in pollers + others:
                api.heartbeat(admin, w.id, {"stats": {}, "executions": []})
            stop.wait(0.05)

    threads = [threading.Thread(target=guarded(lambda w=w: poll(w.id))) for w in pollers]
    threads += [threading.Thread(target=guarded(lambda w=w: claim_directly(w.id))) for w in others]
    threads.append(threading.Thread(target=guarded(beat)))
    for t in threads:
        t.start()
    ids: list[int] = []
    try:
        for burst in range(30):
            ids += store.create_tasks([{"command": "true", "batch": "b"} for _ in range(1 + burst % 3 * 6)])
            if burst == 15:
                counting.fail_next_look = True
            notifier.notify()
            time.sleep(0.02)  # submissions spread over time, as a submitter's
        wait_until(lambda: store.count_tasks(batch="b").get("succeeded", 0) == len(ids), 60)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == [] and not counting.fail_next_look  # (the failing look came, and was answered)
    assert sorted(taken["polls"] + taken["others"]) == sorted(ids)  # each task once
    assert all(len(store.list_executions(i)) == 1 for i in ids)  # and never a second attempt
    assert taken["polls"] and taken["others"] and counting.shared_looks > 0
