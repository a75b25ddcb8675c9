"""Idempotency keys scoped to their token, batches created by racing submissions, and
revocations seen by every store on one database within the epoch poll."""
from __future__ import annotations

import threading
import time

import pytest

from scitq_app.errors import Conflict
from scitq_app.store.sql import EPOCH_EVERY

from .scene import task_spec


def test_one_key_in_two_scopes_is_two_submissions(store):
    specs = [task_spec(name=f"s{i}") for i in range(3)]
    mine = store.create_tasks(specs, key="shared-key", scope="token:1")
    theirs = store.create_tasks(specs, key="shared-key", scope="token:2")
    assert len(set(mine) | set(theirs)) == 6
    assert store.create_tasks(specs, key="shared-key", scope="token:1") == mine
    assert store.create_tasks(specs, key="shared-key", scope="token:2") == theirs
    assert store.count_tasks() == {"pending": 6}


def test_the_same_key_with_another_body_is_a_conflict_that_says_so(store):
    ids = store.create_tasks([task_spec(name="a")], key="key-body-1", scope="token:1")
    for other in ([task_spec(name="b")], [task_spec(name="a"), task_spec(name="a")],
                  [task_spec(name="a", priority=1)]):
        with pytest.raises(Conflict) as e:
            store.create_tasks(other, key="key-body-1", scope="token:1")
        assert "'key-body-1' was already used by this token for a different request" in e.value.message
        assert e.value.data == {"key": "key-body-1"}
    assert store.count_tasks() == {"pending": 1}
    assert store.create_tasks([task_spec(name="a")], key="key-body-1", scope="token:1") == ids


def test_racing_submissions_create_one_new_batch_without_a_conflict(make_store, clock):
    stores = [make_store(clock) for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    results: list = []

    def submit(i: int) -> None:
        barrier.wait(10)
        try:
            results.append(stores[i].create_tasks([task_spec(batch="fresh-batch", name=f"r{i}")]))
        except Exception as e:  # noqa: BLE001 - reported below
            results.append(e)
    for round_ in range(3):  # a few rounds: the race must be lost and won, not only avoided
        results.clear()
        barrier.reset()
        threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(stores))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [r for r in results if isinstance(r, Exception)] == []
        assert len(results) == 8
        stores[0].delete_batch("fresh-batch")
    assert [b.name for b in stores[0].list_batches()] == ["Default"]


def _refused_within(store, secret: str, limit: float) -> float:
    """Seconds until `store` refuses `secret`, polled; fails after `limit`."""
    start = time.monotonic()
    while store.authenticate(secret) is not None:
        assert time.monotonic() - start < limit, f"still accepted after {limit} s"
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.mark.parametrize("role", ["user", "admin", "worker"])
def test_a_revocation_through_one_store_bites_on_another_within_the_epoch_poll(make_store, role):
    here, there = make_store(), make_store()  # real clocks: two server processes
    here.create_token("keeper", "admin")
    if role == "worker":
        worker, secret = here.register_worker({"name": "w-revoked"})
        name = next(t.name for t in here.list_tokens() if t.role == "worker")
    else:
        name = "victim"
        _, secret = here.create_token(name, role)
    assert there.authenticate(secret) is not None  # cached there now (10 min for a worker token)
    here.revoke_token(name)
    assert here.authenticate(secret) is None  # at once where it was revoked
    assert _refused_within(there, secret, 2.0) <= EPOCH_EVERY + 0.5


def test_deleting_or_re_registering_a_worker_bites_on_another_store(make_store):
    here, there = make_store(), make_store()
    worker, first = here.register_worker({"name": "w-again"})
    assert there.authenticate(first) is not None
    _, second = here.register_worker({"name": "w-again"}, identity=there.authenticate(first))
    _refused_within(there, first, 2.0)
    assert there.authenticate(second) is not None
    here.delete_worker(worker.id)
    _refused_within(there, second, 2.0)


def test_the_epoch_is_read_once_a_second_not_once_per_request(store, clock):
    _, secret = store.create_token("busy", "user")
    store.authenticate(secret)
    read_at = store._epoch_at
    clock.advance(EPOCH_EVERY / 2)
    for _ in range(200):
        assert store.authenticate(secret) is not None
    assert store._epoch_at == read_at  # served from the cache, the epoch not read again
    clock.advance(EPOCH_EVERY)
    store.authenticate(secret)
    assert store._epoch_at == clock.now


def test_a_worker_token_is_read_once_over_the_heartbeats_of_a_large_fleet(store, clock, monkeypatch):
    # 5,000 workers beat every 25 s (heartbeat_rate 200/s): each beat reading its token again
    # would add a query to nearly every request
    from scitq_app.store import admin
    _, secret = store.register_worker({"name": "w-busy"})
    reads = []
    read = admin.identity_by_hash
    monkeypatch.setattr(admin, "identity_by_hash", lambda tx, h: reads.append(h) or read(tx, h))
    for _ in range(20):  # 500 s of beats, the revocation epoch read at each
        assert store.authenticate(secret) is not None
        clock.advance(25.0)
    assert len(reads) == 1
