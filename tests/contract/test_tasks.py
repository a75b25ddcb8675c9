"""Tasks as people see them: create, list, count, edit, relaunch, delete."""
from __future__ import annotations

from contextlib import closing

import pytest

from scitq_app.errors import Conflict, Invalid, NotFound
from scitq_app.store.postgres import COPY_MIN
from scitq_app.store.sqlite import UNCOUNTED_INSERT_MIN, count_insert_trigger

from .scene import LEASE, status_of, task_spec

# --- create ----------------------------------------------------------------


def test_create_one_task_stores_every_field(store):
    spec = task_spec(name="align", command="bwa mem ref.fa r1.fq", shell="bash", container="biocontainers/bwa",
                     container_options="--cpus 4", inputs=["s3://bucket/r1.fq"],
                     resources=["s3://bucket/ref.tar.gz|untar"], output="s3://bucket/out", priority=5,
                     cpu=4, mem=8.5, gpu=1, disk=20, max_retries=3, download_timeout=600, run_timeout=3600,
                     use_cache=True, batch="b1")
    [task_id] = store.create_tasks([spec])
    t = store.get_task(task_id)
    assert (t.id, t.batch, t.name, t.command, t.shell, t.status) == (task_id, "b1", "align", spec["command"],
                                                                     "bash", "pending")
    assert (t.container, t.container_options) == ("biocontainers/bwa", "--cpus 4")
    assert t.inputs == ("s3://bucket/r1.fq",)
    assert t.resources == ("s3://bucket/ref.tar.gz|untar",)
    assert t.output == "s3://bucket/out/"
    assert (t.priority, t.cpu, t.mem, t.gpu, t.disk) == (5, 4, 8.5, 1, 20)
    assert (t.max_retries, t.retries_used, t.attempts) == (3, 0, 0)
    assert (t.download_timeout, t.run_timeout, t.use_cache) == (600, 3600, True)
    assert t.requires == () and t.blocked is False and t.current_execution_id is None
    assert t.created == t.modified == t.status_changed == store.clock()
    assert store.get_batch("b1").counts == {"pending": 1}


def test_a_large_bulk_stores_every_field_where_a_single_task_does(store):
    # a large insert binds its rows another way on SQLite (positionally, the trigger set aside)
    fields = dict(name="align", command="bwa mem ref.fa r1.fq", shell="bash", container="biocontainers/bwa",
                  container_options="--cpus 4", inputs=["s3://bucket/r1.fq"], resources=["s3://bucket/ref.tar.gz|untar"],
                  output="s3://bucket/out", priority=5, cpu=4, mem=8.5, gpu=1, disk=20, max_retries=3,
                  download_timeout=600, run_timeout=3600, use_cache=True, batch="b1")
    [single] = store.create_tasks([task_spec(**fields)])
    bulk = store.create_tasks([task_spec(**fields)] + [task_spec(batch="b1") for _ in range(UNCOUNTED_INSERT_MIN)])
    one, other = store.get_task(single).to_dict(), store.get_task(bulk[0]).to_dict()
    assert other.pop("id") == bulk[0] and one.pop("id") == single
    assert other == one
    assert store.get_task(bulk[-1]).command == "true"


def test_a_large_bulk_stores_texts_exactly(store):
    # a large insert is a COPY on PostgreSQL, whose text format gives tabs, line ends, backslashes
    # and `\N` a meaning of their own
    texts = ["printf 'a\\tb\\n' | tr '\t' ' '", "line one\nline two\r\n", "\\.", "\\N", "C:\\dir\\", "été ✓ 𝄞"]
    specs = [task_spec(command=texts[i % len(texts)], name=f"n{i}", container_options="" if i % 2 else None)
             for i in range(max(COPY_MIN, UNCOUNTED_INSERT_MIN) + 1)]
    ids = store.create_tasks(specs)
    tasks = {t.id: t for t in store.list_tasks(limit=10_000)}
    assert [(tasks[i].command, tasks[i].name, tasks[i].container_options) for i in ids] == \
        [(s["command"], s["name"], s.get("container_options")) for s in specs]


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_large_bulk_leaves_its_connection_in_the_session_plan_mode(store):
    # plans are made once for all runs where PostgreSQL finds it as good (the foreign-key check
    # of each row a COPY inserts included), and for each run only around the statements with
    # optional filters: a bulk, committed or not, leaves the connection as it found it
    def mode() -> str:
        with store.backend.transaction(write=False) as tx:  # the pool's last used connection
            return tx.con.run("SHOW plan_cache_mode")[0][0]
    store.create_tasks([task_spec() for _ in range(COPY_MIN)])
    assert mode() == "auto"
    with pytest.raises(NotFound):  # refused after its tasks went in
        store.create_tasks([task_spec() for _ in range(COPY_MIN)] + [task_spec(requires=["no-such-ref"])])
    assert mode() == "auto"
    assert store.count_tasks() == {"pending": COPY_MIN}


def test_create_returns_ids_in_request_order(store):
    ids = store.create_tasks([task_spec(name=f"t{i}") for i in range(5)])
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert [store.get_task(i).name for i in ids] == [f"t{i}" for i in range(5)]


def test_create_nothing_returns_nothing(store):
    assert store.create_tasks([]) == []
    assert store.count_tasks() == {}


def test_create_paused_when_asked(store):
    [task_id] = store.create_tasks([task_spec(status="paused")])
    assert status_of(store, task_id) == "paused"


def test_bulk_of_ten_thousand_in_one_call(store):
    ids = store.create_tasks([task_spec(name=f"n{i}", batch="big") for i in range(10_000)])
    assert len(ids) == len(set(ids)) == 10_000
    assert ids == sorted(ids)
    assert store.count_tasks("big") == {"pending": 10_000}
    assert store.get_task(ids[-1]).name == "n9999"


def test_counts_stay_exact_across_bulk_and_single_submissions_and_a_failed_bulk(store):
    # a large insert counts its rows itself on SQLite (UNCOUNTED_INSERT_MIN, the per-row trigger set
    # aside in its transaction), small ones through the trigger: a mix of batches and statuses above
    # and below that size, a refused large bulk that rolls back, then single tasks
    size = UNCOUNTED_INSERT_MIN + 100
    specs = [task_spec(name=f"m{i}", batch="even" if i % 2 else "odd", **({"status": "paused"} if i % 3 == 0 else {}))
             for i in range(size)]
    first = store.create_tasks(specs)
    # and tasks waiting on others (a third status), fewer than the threshold
    store.create_tasks([task_spec(batch="odd", requires=[first[i]]) for i in range(60)])
    bad = [task_spec(batch="even") for _ in range(size - 1)] + [task_spec(requires=[123_456_789])]
    with pytest.raises(NotFound):
        store.create_tasks(bad)
    store.create_tasks([task_spec(batch="even")])
    store.create_tasks([task_spec(batch="odd", status="paused")])
    store.create_tasks([task_spec(batch="even", requires=[first[0]]) for _ in range(size)])
    tasks = store.list_tasks(limit=10_000)
    for batch in ("even", "odd"):
        statuses = [t.status for t in tasks if t.batch == batch]
        assert store.count_tasks(batch) == {s: statuses.count(s) for s in set(statuses)}
    assert sum(store.count_tasks().values()) == len(tasks) == 2 * size + 62
    assert store.count_tasks("odd")["waiting"] == 60
    assert store.count_tasks("even")["waiting"] == size


def test_a_large_bulk_leaves_the_schema_as_it_was(store, database_url, backend):
    """On SQLite the count trigger is set aside for a large insert and put back in the same
    transaction: the schema after (triggers included) is the schema before, and a single task
    inserted after is counted by the trigger again."""
    def schema() -> list[tuple[str, str]]:
        if backend == "sqlite":
            import sqlite3
            with closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as con:
                return sorted(con.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall())
        import pg8000.native

        from scitq_app.store.postgres import parse_url
        pg = pg8000.native.Connection(**parse_url(database_url))
        try:
            return sorted((name, sql) for name, sql in pg.run(
                "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal"))
        finally:
            pg.close()

    before = schema()
    triggers = [name for name, _ in before if name.startswith("task_count")]
    assert len(triggers) >= 3, before
    if backend == "sqlite":
        assert ("task_count_insert", count_insert_trigger()) in before
    store.create_tasks([task_spec(batch="big") for _ in range(UNCOUNTED_INSERT_MIN * 3)])
    with pytest.raises(NotFound):
        store.create_tasks([task_spec(batch="big") for _ in range(UNCOUNTED_INSERT_MIN)] +
                           [task_spec(requires=[123_456_789])])
    assert schema() == before
    store.create_tasks([task_spec(batch="big")])
    assert store.count_tasks("big") == {"pending": UNCOUNTED_INSERT_MIN * 3 + 1}


@pytest.mark.parametrize("bad", [123_456_789, "no-such-ref"])
def test_bulk_is_all_or_nothing_when_the_last_item_has_a_bad_requirement(store, bad):
    specs = [task_spec(batch="fresh" if i == 0 else "Default", name=f"n{i}") for i in range(10_000)]
    specs[9_999] = task_spec(requires=[bad])
    with pytest.raises(NotFound) as info:  # a requirement names no task: 404, as the API documents
        store.create_tasks(specs)
    assert "tasks[9999].requires" in str(info.value)
    assert store.count_tasks() == {}
    assert store.list_tasks(limit=10) == []
    with pytest.raises(NotFound):
        store.get_batch("fresh")  # created for item 0, rolled back with the rest


def test_missing_batches_are_created_running(store):
    store.create_tasks([task_spec(batch="new1"), task_spec(batch="new2")])
    assert {b.name: b.status for b in store.list_batches()} == {"Default": "running", "new1": "running",
                                                              "new2": "running"}


# --- requirements ----------------------------------------------------------


def test_a_task_requiring_an_unfinished_task_waits(store, submit):
    a = submit()
    b = submit(requires=[a])
    t = store.get_task(b)
    assert t.status == "waiting" and t.requires == (a,) and t.blocked is False


def test_a_task_requiring_only_succeeded_tasks_is_pending(store, start):
    e = start()
    store.report(e["id"], e["worker_id"], {"phase": "succeeded", "return_code": 0})
    [b] = store.create_tasks([task_spec(requires=[e["task_id"]])])
    assert status_of(store, b) == "pending"


def test_refs_link_tasks_of_one_request(store):
    ids = store.create_tasks([task_spec(ref="a"), task_spec(ref="b", requires=["a"]),
                              task_spec(requires=["a", "b", "a"])])
    a, b, c = (store.get_task(i) for i in ids)
    assert a.status == "pending" and a.requires == ()
    assert b.status == "waiting" and b.requires == (a.id,)
    assert c.status == "waiting" and c.requires == (a.id, b.id)


def test_refs_and_ids_mix(store, submit):
    old = submit()
    ids = store.create_tasks([task_spec(ref="x"), task_spec(requires=["x", old])])
    assert store.get_task(ids[1]).requires == tuple(sorted((ids[0], old)))


@pytest.mark.parametrize("specs", [
    [{"ref": "a", "requires": ["a"]}],
    [{"ref": "a", "requires": ["b"]}, {"ref": "b", "requires": ["a"]}],
    [{"ref": "a", "requires": ["c"]}, {"ref": "b", "requires": ["a"]}, {"ref": "c", "requires": ["b"]}],
], ids=["self", "two", "three"])
def test_a_cycle_among_refs_is_refused(store, specs):
    with pytest.raises(Invalid) as info:
        store.create_tasks([task_spec(**s) for s in specs])
    assert "cycle" in str(info.value)
    assert store.count_tasks() == {}


def test_an_unknown_required_id_is_refused(store, submit):
    a = submit()
    with pytest.raises(NotFound) as info:
        store.create_tasks([task_spec(requires=[a, a + 1000])])
    assert str(a + 1000) in str(info.value)
    assert store.count_tasks() == {"pending": 1}


def test_an_unknown_ref_is_refused(store):
    with pytest.raises(NotFound):
        store.create_tasks([task_spec(ref="a"), task_spec(requires=["b"])])
    assert store.count_tasks() == {}


def test_a_ref_used_twice_is_refused(store):
    with pytest.raises(Invalid):
        store.create_tasks([task_spec(ref="a"), task_spec(ref="a")])
    assert store.count_tasks() == {}


# --- reading ---------------------------------------------------------------


def test_get_unknown_task_is_not_found(store):
    with pytest.raises(NotFound):
        store.get_task(987_654)


def test_list_filters_by_batch_status_name_and_ids(store, submit):
    a = submit(batch="x", name="align")
    b = submit(batch="x", name="call", status="paused")
    c = submit(batch="y", name="align")
    d = submit(requires=[a])
    ids = lambda tasks: [t.id for t in tasks]  # noqa: E731
    assert ids(store.list_tasks()) == [a, b, c, d]
    assert ids(store.list_tasks(batch="x")) == [a, b]
    assert ids(store.list_tasks(statuses=["pending"])) == [a, c]
    assert ids(store.list_tasks(statuses=["paused", "waiting"])) == [b, d]
    assert ids(store.list_tasks(name="align")) == [a, c]
    assert ids(store.list_tasks(ids=[d, a, 999_999])) == [a, d]
    assert ids(store.list_tasks(ids=[])) == []
    assert ids(store.list_tasks(batch="x", statuses=["pending"], name="align", ids=[a, b, c])) == [a]
    assert ids(store.list_tasks(batch="y", name="call")) == []
    assert store.list_tasks(ids=[d])[0].requires == (a,)
    with pytest.raises(NotFound):
        store.list_tasks(batch="nope")


def test_keyset_pagination_has_no_duplicates_or_gaps(store):
    ids = store.create_tasks([task_spec(name=f"p{i % 3}") for i in range(250)])
    seen, after, pages = [], 0, 0
    while True:
        page = store.list_tasks(after=after, limit=40)
        if not page:
            break
        pages += 1
        assert len(page) <= 40
        seen.extend(t.id for t in page)
        after = page[-1].id
    assert pages == 7
    assert seen == ids
    # with a filter, pages still follow each other exactly
    seen, after = [], 0
    while page := store.list_tasks(name="p1", after=after, limit=7):
        seen.extend(t.id for t in page)
        after = page[-1].id
    assert seen == [i for n, i in enumerate(ids) if n % 3 == 1]


def test_tasks_created_between_pages_are_not_lost(store):
    first = store.create_tasks([task_spec() for _ in range(5)])
    page = store.list_tasks(limit=3)
    later = store.create_tasks([task_spec() for _ in range(2)])
    rest = store.list_tasks(after=page[-1].id, limit=100)
    assert [t.id for t in page + rest] == first + later


def test_counts_by_status_for_all_and_one_batch(store, submit):
    a = submit(batch="x")
    submit(batch="x", requires=[a])
    submit(batch="y")
    submit(batch="y", status="paused")
    assert store.count_tasks() == {"pending": 2, "waiting": 1, "paused": 1}
    assert store.count_tasks("x") == {"pending": 1, "waiting": 1}
    assert store.count_tasks("y") == {"pending": 1, "paused": 1}
    assert store.count_tasks("Default") == {}
    with pytest.raises(NotFound):
        store.count_tasks("nope")


# --- update ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["pending", "waiting", "paused"])
def test_definition_fields_change_while_no_worker_holds_the_task(store, submit, how):
    a = submit()
    task_id = {"pending": lambda: a, "waiting": lambda: submit(requires=[a]),
               "paused": lambda: submit(status="paused")}[how]()
    t = store.update_task(task_id, {"command": "echo new", "container": "alpine", "inputs": ["s3://b/x"],
                                    "cpu": 2, "use_cache": True, "batch": "moved"})
    assert (t.command, t.container, t.inputs, t.cpu, t.use_cache, t.batch) == (
        "echo new", "alpine", ("s3://b/x",), 2, True, "moved")
    assert t.status == how
    assert store.get_task(task_id) == t


@pytest.mark.parametrize("phase", ["assigned", "running", "uploading"])
def test_definition_fields_are_refused_while_a_worker_holds_the_task(store, start, phase):
    e = start(phase)
    before = store.get_task(e["task_id"])
    for field, value in [("command", "rm -rf /"), ("container", "x"), ("inputs", []), ("batch", "other")]:
        with pytest.raises(Conflict):
            store.update_task(e["task_id"], {field: value})
    assert store.get_task(e["task_id"]) == before


def test_definition_fields_are_refused_while_paused_but_executing(store, start):
    e = start("running")
    store.signal_task(e["task_id"], "pause")
    with pytest.raises(Conflict):
        store.update_task(e["task_id"], {"command": "other"})
    assert store.get_task(e["task_id"]).command == "true"


@pytest.mark.parametrize("phase", ["assigned", "running"])
def test_name_priority_and_max_retries_change_at_any_time(store, start, phase):
    e = start(phase)
    t = store.update_task(e["task_id"], {"name": "renamed", "priority": -3, "max_retries": 7})
    assert (t.name, t.priority, t.max_retries, t.status) == ("renamed", -3, 7, phase)


def test_update_of_an_unknown_field_is_invalid(store, submit):
    task_id = submit()
    with pytest.raises(Invalid):
        store.update_task(task_id, {"status": "succeeded"})
    assert status_of(store, task_id) == "pending"


def test_update_of_an_unknown_task_is_not_found(store):
    with pytest.raises(NotFound):
        store.update_task(424_242, {"name": "x"})


# --- relaunch --------------------------------------------------------------


def _finish(store, e, phase, failure_class=None):
    body = {"phase": phase, "return_code": 0 if phase == "succeeded" else 1}
    if failure_class:
        body["failure_class"] = failure_class
    store.report(e["id"], e["worker_id"], body)


@pytest.mark.parametrize("end", ["succeeded", "failed", "canceled"])
def test_relaunch_sends_a_finished_task_back_to_pending(store, start, end):
    e = start("running")
    if end == "canceled":
        store.signal_task(e["task_id"], "kill")
        _finish(store, e, "failed", "canceled")
    else:
        _finish(store, e, end)
    assert status_of(store, e["task_id"]) == end
    t = store.relaunch_task(e["task_id"])
    assert t.status == "pending" and t.retries_used == 0
    again = store.claim(e["worker_id"], 1, LEASE)
    assert [x["task_id"] for x in again] == [e["task_id"]] and again[0]["attempt"] == 2


def test_relaunch_of_a_task_with_unmet_requirements_makes_it_wait(store, submit, start):
    e = start("running")
    _finish(store, e, "failed")
    b = submit(requires=[e["task_id"]])
    c = submit(requires=[b], status="paused")
    assert store.relaunch_task(c).status == "waiting"
    assert store.get_task(b).blocked is True


def test_relaunch_of_a_paused_queued_task(store, submit):
    task_id = submit(status="paused")
    assert store.relaunch_task(task_id).status == "pending"


@pytest.mark.parametrize("phase", ["assigned", "running", "uploading"])
def test_relaunch_is_refused_while_executing(store, start, phase):
    e = start(phase)
    with pytest.raises(Conflict):
        store.relaunch_task(e["task_id"])
    assert status_of(store, e["task_id"]) == phase


def test_relaunch_is_refused_while_paused_but_executing(store, start):
    e = start("running")
    store.signal_task(e["task_id"], "pause")
    with pytest.raises(Conflict):
        store.relaunch_task(e["task_id"])
    assert status_of(store, e["task_id"]) == "paused"


def test_relaunch_is_refused_while_a_canceled_attempt_still_runs(store, start):
    e = start("running", max_retries=0)
    store.signal_task(e["task_id"], "stop")
    with pytest.raises(Conflict):
        store.relaunch_task(e["task_id"])
    # the attempt ends as the worker honours the stop: its report cannot touch a new attempt
    store.report(e["id"], e["worker_id"], {"phase": "failed", "failure_class": "app", "return_code": 143})
    t = store.relaunch_task(e["task_id"])
    assert (t.status, t.retries_used) == ("pending", 0)
    assert store.heartbeat(e["worker_id"], {}, [e["id"]], [], LEASE)["fenced"] == [e["id"]]


@pytest.mark.parametrize("state", ["pending", "waiting"])
def test_relaunch_is_refused_for_a_queued_task(store, submit, state):
    a = submit()
    task_id = a if state == "pending" else submit(requires=[a])
    with pytest.raises(Conflict):
        store.relaunch_task(task_id)


def test_relaunch_gives_a_fresh_retry_budget(store, start):
    e = start("running", max_retries=1)
    w, task_id = e["worker_id"], e["task_id"]
    _finish(store, e, "failed", "app")
    assert store.get_task(task_id).retries_used == 1
    [e2] = store.claim(w, 1, LEASE)
    _finish(store, e2, "failed", "app")
    t = store.get_task(task_id)
    assert (t.status, t.retries_used) == ("failed", 1)
    assert store.relaunch_task(task_id).retries_used == 0
    [e3] = store.claim(w, 1, LEASE)
    _finish(store, e3, "failed", "app")
    assert (status_of(store, task_id), store.get_task(task_id).retries_used) == ("pending", 1)


def test_relaunch_unknown_task_is_not_found(store):
    with pytest.raises(NotFound):
        store.relaunch_task(55_555)


# --- delete ----------------------------------------------------------------


def test_delete_removes_the_task_its_executions_and_output(store, start):
    e = start("running")
    store.append_output(e["id"], e["worker_id"], "stdout", 0, b"hello", False, 100, 100)
    _finish(store, e, "succeeded")
    store.delete_task(e["task_id"])
    with pytest.raises(NotFound):
        store.get_task(e["task_id"])
    with pytest.raises(NotFound):
        store.get_execution(e["id"])
    with pytest.raises(NotFound):
        store.read_output(e["id"], "stdout")


@pytest.mark.parametrize("phase", ["assigned", "running", "uploading"])
def test_delete_is_refused_while_executing(store, start, phase):
    e = start(phase)
    with pytest.raises(Conflict):
        store.delete_task(e["task_id"])
    assert status_of(store, e["task_id"]) == phase


def test_delete_is_refused_while_canceled_but_still_executing(store, start):
    e = start("running")
    store.signal_task(e["task_id"], "stop")
    with pytest.raises(Conflict):
        store.delete_task(e["task_id"])
    _finish(store, e, "failed", "canceled")
    store.delete_task(e["task_id"])


def test_delete_is_refused_while_unfinished_tasks_require_it(store, submit):
    a = submit()
    b = submit(requires=[a])
    with pytest.raises(Conflict) as info:
        store.delete_task(a)
    assert str(b) in str(info.value)
    assert status_of(store, a) == "pending"
    store.delete_task(b)
    store.delete_task(a)
    assert store.count_tasks() == {}


def test_delete_is_allowed_when_dependents_are_finished(store, submit):
    a = submit()
    b = submit(requires=[a])
    store.signal_task(b, "stop")
    store.delete_task(a)
    t = store.get_task(b)
    assert t.status == "canceled" and t.requires == ()


def test_delete_unknown_task_is_not_found(store):
    with pytest.raises(NotFound):
        store.delete_task(31_337)


# --- idempotent submission -------------------------------------------------


def test_a_retried_submission_with_the_same_key_creates_nothing(store):
    specs = [task_spec(name=f"k{i}") for i in range(3)]
    ids = store.create_tasks(specs, key="submit-1")
    assert store.create_tasks(specs, key="submit-1") == ids
    assert store.count_tasks() == {"pending": 3}
    other = store.create_tasks(specs, key="submit-2")
    assert len(set(other) | set(ids)) == 6
    assert len(store.create_tasks(specs)) == 3  # no key: no idempotency


def test_a_refused_submission_does_not_use_up_its_key(store):
    with pytest.raises(NotFound):
        store.create_tasks([task_spec(requires=[99_999])], key="k")
    assert store.count_tasks() == {}
    ids = store.create_tasks([task_spec()], key="k")
    assert store.create_tasks([task_spec()], key="k") == ids


def test_concurrent_submissions_with_one_key_create_the_tasks_once(make_store, clock):
    import threading
    stores = [make_store(clock) for _ in range(4)]
    specs = [task_spec(name=f"c{i}") for i in range(200)]
    results: list = []
    barrier = threading.Barrier(len(stores))

    def submit(s) -> None:
        barrier.wait(10)
        try:
            results.append(s.create_tasks(specs, key="same"))
        except Exception as e:  # noqa: BLE001 - reported below
            results.append(e)
    threads = [threading.Thread(target=submit, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 4 and all(r == results[0] for r in results), results
    assert len(results[0]) == 200
    assert stores[0].count_tasks() == {"pending": 200}
