"""Join tokens (register workers only: limited uses, an expiry, optional pins) and
the one-identity-per-live-worker rule of registration."""
from __future__ import annotations

import threading
from typing import Any

import pytest

from scitq_app.errors import Conflict, Forbidden, Invalid, ScitqError, Unauthorized
from scitq_app.models import Role
from scitq_app.schema import validate


def body(name: str, **fields: Any) -> dict[str, Any]:
    return validate("register", {"name": name, **fields})


def join(store, **kw: Any):
    """(token, identity) of a new join token."""
    token, secret = store.create_join_token(**kw)
    ident = store.authenticate(secret)
    assert ident is not None
    return token, secret, ident


def test_a_join_token_is_listed_with_its_uses_expiry_and_pins(store, clock):
    token, secret, ident = join(store, uses=3, ttl=600, batch="b1", name="node7", actor="alice")
    assert secret.startswith("scitq_join_")
    assert (token.role, token.uses_left, token.expires, token.pinned_batch, token.pinned_name) == (
        "join", 3, clock() + 600, "b1", "node7")
    assert token.name.startswith("join:")
    assert (ident.role, ident.worker_id, ident.pinned_batch, ident.pinned_name) == (Role.JOIN, None, "b1", "node7")
    [listed] = store.list_tokens()
    assert listed == token
    d = listed.to_dict()
    assert d["uses_left"] == 3 and d["expires"].endswith("Z") and d["role"] == "join"
    assert store.has_people_tokens() is False, "a join token is nobody's login"
    assert [(e.kind, e.actor) for e in store.list_events()] == [("token.create", "alice")]


@pytest.mark.parametrize("kw, field", [({"uses": 0}, "uses"), ({"uses": 10_001}, "uses"), ({"ttl": 0}, "ttl"),
                                       ({"ttl": 30 * 86400 + 1}, "ttl")])
def test_uses_and_ttl_out_of_range_are_invalid(store, kw, field):
    with pytest.raises(Invalid) as e:
        store.create_join_token(**kw)
    assert e.value.data["field"] == field
    assert store.list_tokens() == []


def test_join_tokens_are_not_made_by_create_token(store):
    with pytest.raises(Invalid):
        store.create_token("j", "join")


def test_a_single_use_token_registers_one_worker_then_authenticates_nobody(store):
    token, secret, ident = join(store)
    w, worker_secret = store.register_worker(body("node1"), actor=ident.name, identity=ident)
    assert store.authenticate(worker_secret).worker_id == w.id
    assert store.list_tokens()[0].uses_left == 0
    assert store.authenticate(secret) is None
    # an identity obtained before the last use was spent is refused at registration, and nothing is made
    with pytest.raises(Unauthorized, match="this join token is used up or expired"):
        store.register_worker(body("node2"), identity=ident)
    assert [x.name for x in store.list_workers()] == ["node1"]
    assert [e.actor for e in store.list_events() if e.kind == "worker.register"] == [token.name]


def test_racing_registrations_on_a_single_use_token_one_wins(make_store, clock):
    stores = [make_store(clock) for _ in range(2)]
    _, _, ident = join(stores[0])
    outcomes = race(stores, ident, 2)
    assert sorted(o if isinstance(o, str) else "ok" for o in outcomes) == ["ok", "unauthorized"]
    assert len(stores[0].list_workers()) == 1
    assert stores[0].list_tokens()[0].uses_left == 0


def test_an_n_use_token_raced_by_8_registrations_registers_exactly_n(make_store, clock):
    stores = [make_store(clock) for _ in range(8)]
    _, _, ident = join(stores[0], uses=3)
    outcomes = race(stores, ident, 8)
    assert sum(1 for o in outcomes if not isinstance(o, str)) == 3
    assert sorted(o for o in outcomes if isinstance(o, str)) == ["unauthorized"] * 5
    assert len(stores[0].list_workers()) == 3
    token = [t for t in stores[0].list_tokens() if t.role == "join"][0]
    assert token.uses_left == 0


def race(stores: list, ident, n: int) -> list:
    """n registrations of distinct names with one join identity, started together;
    each outcome is the Worker or the error kind."""
    barrier = threading.Barrier(n)
    outcomes: list[Any] = [None] * n

    def one(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = stores[i % len(stores)].register_worker(body(f"racer{i}"), identity=ident)[0]
        except ScitqError as e:
            outcomes[i] = e.kind
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(o is not None for o in outcomes), outcomes
    return outcomes


def test_an_expired_join_token_is_refused(store, clock):
    _, secret, ident = join(store, uses=5, ttl=60)
    clock.advance(59)
    store.register_worker(body("early"), identity=ident)
    clock.advance(1)
    with pytest.raises(Unauthorized, match="used up or expired"):
        store.register_worker(body("late"), identity=ident)
    clock.advance(5)  # past the authentication cache too
    assert store.authenticate(secret) is None
    assert [w.name for w in store.list_workers()] == ["early"]
    assert store.list_tokens()[0].uses_left == 4


def test_a_revoked_join_token_is_refused(store):
    token, secret, ident = join(store, uses=5)
    store.revoke_token(token.name)
    assert store.authenticate(secret) is None
    with pytest.raises(Unauthorized):
        store.register_worker(body("node1"), identity=ident)
    assert store.list_workers() == []
    assert store.list_tokens()[0].uses_left == 5


def test_a_pinned_name_registers_only_that_worker_and_a_refusal_spends_nothing(store):
    _, _, ident = join(store, uses=2, name="node7")
    with pytest.raises(Forbidden, match="only a worker named 'node7'"):
        store.register_worker(body("node8"), identity=ident)
    assert store.list_tokens()[0].uses_left == 2
    w, _ = store.register_worker(body("node7"), identity=ident)
    assert w.name == "node7"
    assert store.list_tokens()[0].uses_left == 1


def test_a_pinned_batch_is_the_workers_batch_whatever_it_asks(store, clock):
    _, _, ident = join(store, uses=2, batch="rnaseq")
    w, _ = store.register_worker(body("node1", batch="other"), identity=ident)
    assert w.batch == "rnaseq"
    store.update_worker(w.id, {"batch": None})
    clock.advance(120)
    store.mark_offline(60)
    again, _ = store.register_worker(body("node1"), identity=ident)  # re-attached: back in its pinned batch
    assert (again.id, again.batch) == (w.id, "rnaseq")


def test_registering_the_name_of_a_live_worker_is_a_conflict_naming_it(store, clock):
    _, _, ident = join(store, uses=2)
    w, own = store.register_worker(body("node1", hostname="host-a"), identity=ident)
    clock.advance(7)
    for identity in (ident, None):  # a join token, an admin (or open mode): not that worker's own token
        with pytest.raises(Conflict) as e:
            store.register_worker(body("node1", hostname="host-b"), identity=identity)
        msg = e.value.message
        assert "'node1'" in msg and "host-a" in msg and "last seen 7 s ago" in msg
        assert "[worker] name" in msg and "scitq worker delete node1" in msg
    assert store.list_tokens()[0].uses_left == 1, "the refused registration spent nothing"
    assert store.authenticate(own).worker_id == w.id, "the live worker keeps its token"


def test_a_worker_token_re_registers_its_own_live_worker_only(store):
    w, own = store.register_worker(body("node1"))
    other, _ = store.register_worker(body("node2"))
    ident = store.authenticate(own)
    with pytest.raises(Forbidden):
        store.register_worker(body("node2"), identity=ident)
    again, fresh = store.register_worker(body("node1"), identity=ident)
    assert again.id == w.id and fresh != own
    assert store.authenticate(own) is None and store.authenticate(fresh).worker_id == w.id


def test_an_offline_worker_is_re_attached_by_a_new_agent_and_its_old_token_revoked(store, clock):
    _, _, ident = join(store, uses=2)
    w, old = store.register_worker(body("node1"), identity=ident)
    clock.advance(120)
    assert store.mark_offline(60) == [w.id]
    again, new = store.register_worker(body("node1"), identity=ident)
    assert again.id == w.id and again.status == "running"
    assert store.authenticate(old) is None and store.authenticate(new).worker_id == w.id
    assert store.list_tokens()[0].uses_left == 0


def test_a_deleted_worker_s_name_registers_a_new_worker(store):
    _, _, ident = join(store, uses=2)
    w, old = store.register_worker(body("node1"), identity=ident)
    store.delete_worker(w.id)
    assert store.authenticate(old) is None
    again, _ = store.register_worker(body("node1"), identity=ident)
    assert again.id != w.id
