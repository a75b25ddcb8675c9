"""The dispatcher loop with a fake clock: the singleton lock and the grace period after it starts."""
from __future__ import annotations

import pytest

from scitq_app.dispatch.loops import Dispatcher


@pytest.fixture
def fast(config):
    return config.with_values(dispatcher_lease=30, dispatcher_lock_ttl=15)


def _running(store, clock):
    [tid] = store.create_tasks([{"command": "true"}])
    w, _ = store.register_worker({"name": "w"})
    [e] = store.claim(w.id, 1, 30)
    store.report(e["id"], w.id, {"phase": "running"})
    return tid, e["id"]


def test_a_fresh_dispatcher_waits_one_lease_before_expiring_anything(store, clock, fast, backend):
    tid, eid = _running(store, clock)
    clock.advance(31)  # the lease is over: the worker would have to be considered lost...
    d = Dispatcher(store, fast, clock=clock, holder="a")
    assert d.tick()["lost"] == []  # ...but this dispatcher just started: workers get one lease to re-attach
    clock.advance(29)
    assert d.tick()["lost"] == []
    clock.advance(2)
    assert d.tick()["lost"] == [eid]
    assert store.get_task(tid).status == "pending"


def test_only_the_lock_holder_acts_and_a_standby_takes_over_when_it_lapses(store, clock, fast, backend):
    tid, eid = _running(store, clock)
    a = Dispatcher(store, fast, clock=clock, holder="a")
    b = Dispatcher(store, fast, clock=clock, holder="b")
    assert a.tick()["active"] and not b.tick()["active"]
    clock.advance(10)
    assert a.tick()["active"] and not b.tick()["active"], "a renews its lock"
    clock.advance(16)   # a died (it ticks no more): its lock lapses
    assert b.tick()["active"]
    clock.advance(31)
    assert b.tick()["lost"] == [eid], "the new dispatcher acts after its own grace"


def test_run_once_releases_the_lock_so_a_restart_is_not_blocked(store, clock, fast, backend):
    a = Dispatcher(store, fast, clock=clock, holder="a")
    a.run(once=True)
    b = Dispatcher(store, fast, clock=clock, holder="b")
    assert b.tick()["active"]


def test_a_round_that_cannot_reach_the_database_starts_the_grace_again(store, clock, fast, backend, monkeypatch):
    from scitq_app.errors import StoreUnavailable
    tid, eid = _running(store, clock)
    d = Dispatcher(store, fast, clock=clock, holder="a")
    d.tick()
    clock.advance(25)
    real = store.fleet_size

    def away() -> int:
        raise StoreUnavailable("the database is unreachable")
    monkeypatch.setattr(store, "fleet_size", away)  # the database goes away for a while
    for _ in range(40):
        d.run(once=True)
        clock.advance(1)
    monkeypatch.setattr(store, "fleet_size", real)
    # 65 s since the last heartbeat, past the lease and offline_after: none of it is the worker's fault
    done = d.tick()
    assert (done["lost"], done["offline"]) == ([], [])
    clock.advance(29)
    assert d.tick()["lost"] == [], "the worker gets a whole lease to be heard again"
    clock.advance(2)
    assert d.tick()["lost"] == [eid]
    assert store.get_task(tid).status == "pending"


def test_workers_are_marked_offline_only_after_the_grace(store, clock, fast, backend):
    store.register_worker({"name": "quiet"})
    clock.advance(120)  # well past offline_after with no heartbeat
    d = Dispatcher(store, fast, clock=clock, holder="a")
    assert d.tick()["offline"] == []
    clock.advance(fast.dispatcher.offline_after)
    assert len(d.tick()["offline"]) == 1
