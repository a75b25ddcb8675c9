"""heartbeat: liveness, lease renewal, settings, fencing, signals."""
from __future__ import annotations

import pytest

from scitq_app.errors import NotFound

from .scene import LEASE, task_spec


def test_heartbeat_records_the_worker_alive_with_its_stats(store, register, clock):
    w = register()
    clock.advance(7)
    reply = store.heartbeat(w.id, {"load": 1.5, "disk": {"free": 10}}, [], [], LEASE)
    assert reply["server_time"] == clock()
    w2 = store.get_worker(w.id)
    assert (w2.last_seen, w2.stats) == (clock(), {"load": 1.5, "disk": {"free": 10}})


def test_heartbeats_every_10s_keep_listed_leases_alive_and_unlisted_ones_expire(store, register, clock):
    w = register(concurrency=2)
    store.create_tasks([task_spec(), task_spec()])
    kept, dropped = store.claim(w.id, 2, LEASE)
    expired = []
    for _ in range(int(3 * LEASE / 10)):
        clock.advance(10)
        reply = store.heartbeat(w.id, {}, [kept["id"]], [], LEASE)
        assert reply["fenced"] == []
        assert store.get_execution(kept["id"]).lease_expires == clock() + LEASE
        expired += store.expire_leases()
    assert expired == [dropped["id"]]
    assert store.get_execution(kept["id"]).status == "assigned"
    assert store.get_task(kept["task_id"]).status == "assigned"
    x = store.get_execution(dropped["id"])
    assert (x.status, x.failure_class) == ("failed", "lost")
    assert store.get_task(dropped["task_id"]).status == "pending"


def test_a_lease_expires_only_once_it_is_past(store, start, clock):
    e = start("running")
    clock.advance(LEASE)
    assert store.expire_leases() == []
    clock.advance(0.5)
    assert store.expire_leases() == [e["id"]]
    assert store.expire_leases() == []


def test_heartbeat_returns_the_settings_people_changed(store, register, clock):
    w = register(concurrency=2)
    s = store.heartbeat(w.id, {}, [], [], LEASE)["settings"]
    assert (s["concurrency"], s["prefetch"], s["status"], s["batch"]) == (2, 0, "running", None)
    store.update_worker(w.id, {"concurrency": 5, "prefetch": 3, "status": "paused", "batch": "b7"})
    s = store.heartbeat(w.id, {}, [], [], LEASE)["settings"]
    assert (s["concurrency"], s["prefetch"], s["status"], s["batch"], s["lease"]) == (5, 3, "paused", "b7", LEASE)
    store.update_worker(w.id, {"status": "draining", "batch": None})
    s = store.heartbeat(w.id, {}, [], [], LEASE)["settings"]
    assert (s["status"], s["batch"]) == ("draining", None)
    assert store.get_worker(w.id).status == "draining"


def test_heartbeat_lists_executions_the_worker_must_stop(store, start, register, clock):
    w = register(concurrency=5)
    lost = start("running", worker=w)
    good = start("running", worker=w)
    other = start("running")  # another worker's
    clock.advance(LEASE + 1)
    store.heartbeat(w.id, {}, [good["id"]], [], LEASE)
    store.heartbeat(other["worker_id"], {}, [other["id"]], [], LEASE)
    assert store.expire_leases() == [lost["id"]]
    clock.advance(5)
    reply = store.heartbeat(w.id, {}, [lost["id"], good["id"], other["id"], 987_654], [], LEASE)
    assert reply["fenced"] == sorted([lost["id"], other["id"], 987_654])
    # a heartbeat renews only what the worker holds
    assert store.get_execution(good["id"]).lease_expires == clock() + LEASE
    assert store.get_execution(other["id"]).lease_expires == clock() - 5 + LEASE
    assert store.get_execution(lost["id"]).status == "failed"


def test_a_finished_execution_listed_in_a_heartbeat_is_fenced(store, start):
    e = start("running")
    store.report(e["id"], e["worker_id"], {"phase": "succeeded", "return_code": 0})
    assert store.heartbeat(e["worker_id"], {}, [e["id"]], [], LEASE)["fenced"] == [e["id"]]


def test_signals_are_repeated_until_acknowledged(store, start):
    e = start("running")
    w = e["worker_id"]
    store.signal_task(e["task_id"], "pause")
    first = store.heartbeat(w, {}, [e["id"]], [], LEASE)["signals"]
    assert [(s["execution_id"], s["action"]) for s in first] == [(e["id"], "pause")]
    assert store.heartbeat(w, {}, [e["id"]], [], LEASE)["signals"] == first
    store.signal_task(e["task_id"], "resume")
    both = store.heartbeat(w, {}, [e["id"]], [first[0]["id"]], LEASE)["signals"]
    assert [(s["execution_id"], s["action"]) for s in both] == [(e["id"], "resume")]
    assert store.heartbeat(w, {}, [e["id"]], [both[0]["id"]], LEASE)["signals"] == []


def test_a_worker_cannot_acknowledge_another_workers_signals(store, start, register):
    e = start("running")
    store.signal_task(e["task_id"], "stop")
    [sig] = store.heartbeat(e["worker_id"], {}, [], [], LEASE)["signals"]
    intruder = register()
    assert store.heartbeat(intruder.id, {}, [], [sig["id"]], LEASE)["signals"] == []
    assert store.heartbeat(e["worker_id"], {}, [], [], LEASE)["signals"] == [sig]


def test_worker_level_signals_reach_the_worker(store, register):
    w = register()
    store.signal_worker(w.id, "clean")
    [sig] = store.heartbeat(w.id, {}, [], [], LEASE)["signals"]
    assert (sig["execution_id"], sig["action"]) == (None, "clean")


def test_a_heartbeat_brings_an_offline_worker_back(store, register, clock):
    w = register()
    store.update_worker(w.id, {"status": "paused"})
    clock.advance(120)
    assert store.mark_offline(60) == [w.id]
    assert store.get_worker(w.id).status == "offline"
    store.heartbeat(w.id, {}, [], [], LEASE)
    assert store.get_worker(w.id).status == "paused"


def test_heartbeat_of_an_unknown_worker_is_not_found(store):
    with pytest.raises(NotFound):
        store.heartbeat(4040, {}, [], [], LEASE)
