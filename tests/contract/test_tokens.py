"""API tokens and worker registration."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from scitq_app.errors import Conflict, Invalid, NotFound
from scitq_app.models import Role

from .scene import dump_database


def test_create_list_and_authenticate(store, clock):
    token, secret = store.create_token("alice", "admin")
    assert (token.name, token.role, token.worker_id, token.created, token.revoked) == (
        "alice", "admin", None, clock(), None)
    _, bob_secret = store.create_token("bob", "user")
    assert secret != bob_secret
    assert [t.name for t in store.list_tokens()] == ["alice", "bob"]
    ident = store.authenticate(secret)
    assert (ident.name, ident.role, ident.worker_id) == ("alice", Role.ADMIN, None)
    assert ident.is_admin()
    assert store.authenticate(bob_secret).role == Role.USER


def test_authentication_records_last_use_at_most_once_a_minute_when_flushed(store, clock):
    _, secret = store.create_token("alice", "user")
    clock.advance(5)
    used = clock()
    store.authenticate(secret)
    assert store.list_tokens()[0].last_used is None, "noted in memory, not written per request"
    store.flush_token_use()
    assert store.list_tokens()[0].last_used == used
    clock.advance(30)
    store.authenticate(secret)
    store.flush_token_use()
    assert store.list_tokens()[0].last_used == used, "not rewritten within a minute"
    clock.advance(31)
    store.authenticate(secret)
    store.flush_token_use()
    assert store.list_tokens()[0].last_used == clock()


@pytest.mark.parametrize("secret", ["", "scitq_", "scitq_wrong", "nonsense", "scitq_" + "x" * 500])
def test_unknown_secrets_authenticate_nobody(store, secret):
    store.create_token("alice", "admin")
    assert store.authenticate(secret) is None


def test_a_revoked_token_authenticates_nobody(store, clock):
    _, secret = store.create_token("alice", "user")
    assert store.authenticate(secret) is not None
    t = store.revoke_token("alice")
    assert t.revoked == clock()
    assert store.authenticate(secret) is None
    clock.advance(10)
    assert store.revoke_token("alice").revoked == t.revoked  # revoking again changes nothing
    assert store.authenticate(secret) is None
    assert [x.revoked for x in store.list_tokens()] == [t.revoked]


def test_token_names_are_unique(store):
    store.create_token("alice", "admin")
    with pytest.raises(Conflict):
        store.create_token("alice", "user")


def test_revoking_an_unknown_token_is_not_found(store):
    with pytest.raises(NotFound):
        store.revoke_token("ghost")


def test_worker_tokens_come_from_registration_only(store):
    with pytest.raises(Invalid):
        store.create_token("w", "worker")
    assert store.list_tokens() == []


def test_secrets_are_stored_hashed(store, database_url):
    _, secret = store.create_token("alice", "admin")
    _, worker_secret = store.register_worker({"name": "w1"})
    store.authenticate(secret)
    text = dump_database(database_url, sorted(store.describe_schema()))
    assert "alice" in text  # the dump does see the token rows
    assert secret not in text and secret[len("scitq_"):] not in text
    assert worker_secret not in text and worker_secret[len("scitq_"):] not in text
    if database_url.startswith("sqlite:///"):  # not even in a free page or the write-ahead log
        path = database_url[len("sqlite:///"):]
        raw = b"".join(Path(p).read_bytes() for p in (path, path + "-wal") if os.path.exists(p))
        assert b"alice" in raw
        for s in (secret, worker_secret):
            assert s[len("scitq_"):].encode() not in raw


def test_the_last_admin_token_cannot_be_revoked(store):
    store.create_token("alice", "admin")
    store.create_token("bob", "user")
    with pytest.raises(Conflict) as e:
        store.revoke_token("alice")
    assert "last admin token" in e.value.message and "token create --role admin" in e.value.message
    assert store.list_tokens()[0].revoked is None
    store.revoke_token("bob")  # other roles: no such rule
    store.create_token("carol", "admin")
    assert store.revoke_token("alice").revoked is not None, "a second admin token makes the first revocable"
    with pytest.raises(Conflict):
        store.revoke_token("carol")
    assert store.revoke_token("alice").revoked is not None, "revoking a revoked token again changes nothing"


def test_concurrent_revocations_never_revoke_every_admin_token(make_store):
    import threading
    stores = [make_store() for _ in range(2)]
    for round_ in range(5):
        names = [f"a{round_}-{i}" for i in range(2)]
        for n in names:
            stores[0].create_token(n, "admin")
        results: list[object] = []
        barrier = threading.Barrier(2)

        def revoke(i: int) -> None:
            barrier.wait()
            try:
                results.append(stores[i].revoke_token(names[i]))
            except Conflict as e:
                results.append(e)
        threads = [threading.Thread(target=revoke, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        live = [t for t in stores[0].list_tokens() if t.role == "admin" and t.revoked is None]
        assert len(live) >= 1, results
        for t in live[1:]:  # back to one live admin token before the next round
            stores[0].revoke_token(t.name)


def test_initialising_a_database_creates_its_first_admin_token_in_the_same_transaction(make_store):
    kept: list[str] = []
    store = make_store(init=False)
    store.init_schema(kept.append)
    [token] = store.list_tokens()
    assert (token.name, token.role, token.revoked) == ("admin", "admin", None)
    assert store.authenticate(kept[0]).name == "admin"
    with pytest.raises(Conflict):
        store.init_schema(kept.append)
    assert len(kept) == 1 and len(store.list_tokens()) == 1


def test_concurrent_initialisations_of_one_database_make_one_admin_token(make_store):
    import threading
    stores = [make_store(init=False) for _ in range(4)]
    kept: list[str] = []
    outcomes: list[object] = []
    barrier = threading.Barrier(len(stores))

    def init(s, upgrade: bool) -> None:
        barrier.wait(10)
        try:
            outcomes.append(s.upgrade_schema(kept.append) if upgrade else s.init_schema(kept.append))
        except Conflict as e:
            outcomes.append(e)
    threads = [threading.Thread(target=init, args=(s, i % 2 == 1)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(outcomes) == 4, outcomes
    assert len(kept) == 1, outcomes
    assert [(t.name, t.role) for t in stores[0].list_tokens()] == [("admin", "admin")]
    assert stores[0].authenticate(kept[0]) is not None
    assert stores[0].schema_status()["pending"] == []


def test_a_secret_the_callback_cannot_keep_rolls_the_initialisation_back(make_store):
    from scitq_app.errors import ConfigError
    store = make_store(init=False)

    def cannot_write(secret: str) -> None:
        raise ConfigError("cannot write the admin token file /nope/admin.token")
    with pytest.raises(ConfigError):
        store.init_schema(cannot_write)
    assert store.schema_status()["current"] == 0, "nothing was created"
    with pytest.raises(ConfigError):
        store.upgrade_schema(cannot_write)
    assert store.schema_status()["current"] == 0
    kept: list[str] = []
    assert store.upgrade_schema(kept.append)
    assert [t.name for t in store.list_tokens()] == ["admin"] and store.authenticate(kept[0]) is not None


def test_people_tokens_ignore_worker_tokens(store):
    assert store.has_people_tokens() is False
    store.register_worker({"name": "w1"})
    assert store.has_people_tokens() is False
    store.create_token("bob", "user")
    assert store.has_people_tokens() is True
    store.revoke_token("bob")
    assert store.has_people_tokens() is False
    store.create_token("alice", "admin")
    assert store.has_people_tokens() is True


def test_register_creates_a_worker_and_its_token(store, clock):
    w, secret = store.register_worker({"name": "node1", "hostname": "node1.lab", "concurrency": 3,
                                       "prefetch": 1, "batch": "b", "cpu": 8, "mem": 32, "gpu": 1})
    assert (w.name, w.hostname, w.status, w.batch, w.concurrency, w.prefetch) == (
        "node1", "node1.lab", "running", "b", 3, 1)
    assert (w.cpu, w.mem, w.gpu, w.last_seen, w.active) == (8, 32, 1, clock(), 0)
    ident = store.authenticate(secret)
    assert (ident.role, ident.worker_id) == (Role.WORKER, w.id)
    assert store.get_batch("b").workers == 1
    assert [t.role for t in store.list_tokens()] == ["worker"]


def test_re_attaching_revokes_the_previous_worker_token(store, clock):
    w, first = store.register_worker({"name": "node1", "concurrency": 2})
    assert store.authenticate(first) is not None
    store.update_worker(w.id, {"concurrency": 6})
    clock.advance(60)
    assert store.mark_offline(30) == [w.id]  # its agent went away: the name is free to re-attach
    again, second = store.register_worker({"name": "node1", "hostname": "new-host", "concurrency": 1,
                                           "cpu": 16})
    assert again.id == w.id and second != first
    assert store.authenticate(first) is None
    assert store.authenticate(second).worker_id == w.id
    # what people changed on the server wins over the worker's own config; facts are refreshed
    assert (again.concurrency, again.hostname, again.cpu, again.last_seen) == (6, "new-host", 16, clock())
    tokens = store.list_tokens()
    assert [t.revoked is None for t in tokens] == [False, True]
    assert len(store.list_workers()) == 1


def test_events_record_who_changed_what(store):
    store.create_batch("b", actor="alice")
    store.create_tasks([{"command": "true", "batch": "b"}], actor="bob")
    events = store.list_events()
    assert [(e.kind, e.actor) for e in events] == [("batch.create", "alice"), ("task.create", "bob")]
    assert store.list_events(target="batch:b")[0].kind == "batch.create"
    assert store.list_events(after=events[0].id) == events[1:]


def test_a_token_for_an_unknown_worker_is_not_found(store):
    with pytest.raises(NotFound):
        store.create_token("t", "worker", worker_id=9_999)
    assert store.list_tokens() == []


def test_an_extra_token_for_a_known_worker_authenticates_as_that_worker(store):
    w, _ = store.register_worker({"name": "w1"})
    _, secret = store.create_token("w1-spare", "worker", worker_id=w.id)
    assert store.authenticate(secret).worker_id == w.id
