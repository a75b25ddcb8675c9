"""Every query of the worker protocol, the dispatcher and the listings is index-backed: on a
database filled like a busy lab's (100 k tasks: 90 % succeeded, 4 % failed, 5 % pending,
1 % running; an execution per started task; 100 k events), after ANALYZE, no query whose
filter selects under 5 % of the rows scans `task`, `execution` or `event` whole."""
from __future__ import annotations

import json
import re
import sqlite3
from typing import Any, Iterator

import pytest

from scitq_app.store import queries

from .scene import task_spec

TASKS = 100_000
BATCHES = 20  # a batch holds 5 % of the tasks
SCANNED = ("task", "execution", "event")
PARTIAL = set(re.findall(r"CREATE INDEX (\w+) ON \w+ \([^)]*\)\s+WHERE", queries.read_resource("sql", "schema.sql")))

FILL_SQLITE = [
    """INSERT INTO batch (name, status, priority, created, modified)
       WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {batches})
       SELECT 'b' || i, 'running', 0, 0, 0 FROM s""",
    """INSERT INTO task (batch_id, name, command, status, priority, status_changed, created, modified)
       WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {tasks})
       SELECT (SELECT MIN(id) FROM batch WHERE name LIKE 'b%') + i % {batches}, 't' || i, 'true',
              CASE WHEN i % 100 < 90 THEN 'succeeded' WHEN i % 100 < 94 THEN 'failed'
                   WHEN i % 100 < 99 THEN 'pending' ELSE 'running' END, 0, i, i, i FROM s""",
    """INSERT INTO event (at, actor, kind, target, detail)
       WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {tasks})
       SELECT i, 'admin', 'task.update', 'task:' || i, NULL FROM s""",
]
FILL_POSTGRES = [
    """INSERT INTO batch (name, status, priority, created, modified)
       SELECT 'b' || i, 'running', 0, 0, 0 FROM generate_series(1, {batches}) i""",
    """INSERT INTO task (batch_id, name, command, status, priority, status_changed, created, modified)
       SELECT (SELECT MIN(id) FROM batch WHERE name LIKE 'b%') + i % {batches}, 't' || i, 'true',
              CASE WHEN i % 100 < 90 THEN 'succeeded' WHEN i % 100 < 94 THEN 'failed'
                   WHEN i % 100 < 99 THEN 'pending' ELSE 'running' END, 0, i, i, i
       FROM generate_series(1, {tasks}) i""",
    """INSERT INTO event (at, actor, kind, target, detail)
       SELECT i, 'admin', 'task.update', 'task:' || i, NULL FROM generate_series(1, {tasks}) i""",
]
FILL_BOTH = [
    """INSERT INTO execution (task_id, attempt, worker_id, status, lease_expires, deadline, assigned, command, shell,
                              inputs, resources, created, modified)
       SELECT id, 1, (SELECT MIN(id) FROM worker),
              CASE status WHEN 'running' THEN 'running' WHEN 'succeeded' THEN 'succeeded' ELSE 'failed' END,
              CASE status WHEN 'running' THEN 1e12 END, CASE status WHEN 'running' THEN 1e12 END,
              0, 'true', 'none', '[]', '[]', 0, 0
       FROM task WHERE status <> 'pending' AND name LIKE 't%'""",
    "UPDATE task SET current_execution_id = (SELECT MAX(e.id) FROM execution e WHERE e.task_id = task.id) "
    "WHERE status <> 'pending'",
]


class Explainer:
    """EXPLAIN through the database's own driver, planned for the values (as the store does)."""

    def __init__(self, url: str) -> None:
        self.sqlite = url.startswith("sqlite:///")
        if self.sqlite:
            self.con: Any = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
        else:
            import pg8000.native

            from scitq_app.store.postgres import parse_url
            self.con = pg8000.native.Connection(**parse_url(url))
            self.con.run("SET plan_cache_mode = force_custom_plan")

    def script(self, statements: list[str]) -> None:
        for s in statements:
            s = s.format(tasks=TASKS, batches=BATCHES)
            if self.sqlite:
                self.con.execute(s)
            else:
                self.con.run(s)
        if self.sqlite:
            self.con.execute("ANALYZE")
        else:
            self.con.run("ANALYZE")

    def scans(self, sql: str, params: dict[str, Any], generic: bool = False) -> list[str]:
        """The whole-table scans of `task`, `execution` and `event` in the query's plan: a
        sequential scan, a full scan of an index over every row, or a walk of the primary key
        from the start that filters every row it meets. `generic` (PostgreSQL): in the plan made
        once for all values rather than for these."""
        if self.sqlite:
            details = [r[3] for r in self.con.execute("EXPLAIN QUERY PLAN " + sql, params)]
            # SCAN names the table or its alias; a SEARCH is by an index or the rowid
            aliases = {m.group(2) or m.group(1): m.group(1)
                       for m in re.finditer(r"\b(task|execution|event)\b(?:\s+(?:AS\s+)?([a-z]\b))?", sql)}
            out = []
            for d in details:
                m = re.match(r"(?:SCAN (\w+)(?: USING (?:COVERING )?INDEX (\w+))?"
                             r"|SEARCH (\w+) USING INTEGER PRIMARY KEY \(rowid>\?\)$)", d)
                if not m or (m.group(2) in PARTIAL):  # a partial index holds only the rows selected
                    continue
                if aliases.get(m.group(1) or m.group(3), m.group(1) or m.group(3)) in SCANNED:
                    out.append(d)
            return out
        if generic:  # the plan PostgreSQL keeps for every run once it prefers one (plan_cache_mode auto)
            from pg8000.native import to_statement
            text, values = to_statement(sql)
            literals = ["NULL" if v is None else "'" + v.replace("'", "''") + "'" if isinstance(v, str) else repr(v)
                        for v in values(params)]  # EXECUTE's arguments cannot be bound
            self.con.run("DEALLOCATE ALL")
            self.con.run("PREPARE generic_plan AS " + text)
            self.con.run("SET plan_cache_mode = force_generic_plan")
            try:
                lines = [r[0] for r in self.con.run(f"EXPLAIN EXECUTE generic_plan({', '.join(literals)})")]
            finally:
                self.con.run("SET plan_cache_mode = force_custom_plan")
        else:
            lines = [r[0] for r in self.con.run("EXPLAIN " + sql, **params)]
        out = [ln.strip() for ln in lines if re.search(r"Seq Scan on (?:%s)\b" % "|".join(SCANNED), ln)]
        for i, ln in enumerate(lines):
            if re.search(r"Index Scan using (?:%s)_pkey" % "|".join(SCANNED), ln):
                conds = [c.strip() for c in lines[i + 1:i + 3] if "Index Cond:" in c]
                if conds and re.fullmatch(r"Index Cond: \(\w+\.?id > .*\)", conds[0]):
                    out.append(ln.strip() + " / " + conds[0])
        return out

    def value(self, sql: str) -> Any:
        return (self.con.execute(sql).fetchone() if self.sqlite else self.con.run(sql)[0])[0]

    def close(self) -> None:
        self.con.close()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend(request) -> str:
    """Module-wide here: the database is filled once per backend for all the plans."""
    return request.param


@pytest.fixture(scope="module")
def filled(backend, tmp_path_factory, pg_databases) -> Iterator[tuple[Any, Explainer, dict]]:
    from scitq_app.store import open_store

    from .conftest import _empty_database
    with _empty_database(backend, f"{tmp_path_factory.mktemp('plans')}/scitq.db", pg_databases) as url:
        store = open_store(url)
        store.init_schema()
        worker = store.register_worker({"name": "w1", "concurrency": 4, "prefetch": 0})[0]
        ex = Explainer(url)
        ex.script(FILL_SQLITE + FILL_BOTH if backend == "sqlite" else FILL_POSTGRES + FILL_BOTH)
        running = [t.current_execution_id for t in store.list_tasks(statuses=["running"], limit=3)]
        pinned = store.register_worker({"name": "w2", "concurrency": 4, "prefetch": 0, "batch": "b4"})[0]
        some = {"worker": worker.id, "batch_id": int(ex.value("SELECT id FROM batch WHERE name = 'b4'")),
                "running": running, "pinned": pinned.id}
        try:
            yield store, ex, some
        finally:
            ex.close()
            store.close()


def _cases(dialect: str, some: dict) -> dict[str, dict[str, Any]]:
    w, running = some["worker"], some["running"]
    pick = {"batch_id": None, "cpu": None, "mem": None, "gpu": None}
    cases: dict[str, dict[str, Any]] = {
        # worker protocol
        "claim_prospect": {"id": w, "request_id": "r-1"},
        "claim_prospect_batch": {"id": some["pinned"], "request_id": None},  # a worker of one batch
        "claim_prospects": {"ids": json.dumps([w, some["pinned"]])},  # the long-polls' shared look
        "worker_get": {"id": w},
        "heartbeat_reply": {"id": w, "ids": json.dumps(running)},
        "lease_renew_one": {"id": running[0], "worker_id": w, "lease_expires": 1e12},
        "task_lock_by_execution": {"id": running[0]},
        "execution_lock": {"id": running[0]},
        "claim_by_request": {"worker_id": w, "request_id": "r-1"},
        "worker_active_executions": {"worker_id": w},
        # dispatcher
        "leases_expired": {"now": 1.0},
        "deadlines_passed": {"now": 1.0},
        "release_after": {"since": 1e12, "now": 1e12},
        "release_waiting": {"ids": json.dumps([1, 2, 3]), "now": 1.0},
        "task_dependents": {"id": 5},
        # listings
        "task_list_by_one_status": {"batch_id": None, "statuses": json.dumps(["running"]), "status": "running",
                                    "name": None, "ids": None, "after": 0, "limit": 100},
        "task_list_by_batch_one_status": {"batch_id": some["batch_id"], "status": "pending", "after": 0,
                                          "limit": 100},
        "task_list_by_batch": {"batch_id": some["batch_id"], "statuses": None, "name": None, "ids": None,
                               "after": 0, "limit": 100},
        "task_list_by_name": {"batch_id": None, "statuses": None, "name": "t77", "ids": None, "after": 0, "limit": 100},
        "task_list_by_ids": {"batch_id": None, "statuses": None, "name": None, "ids": json.dumps([5, 6, 7]),
                          "after": 0, "limit": 100},
        "task_counts": {"batch_id": None},
        "batch_counts": {"name": None},
        "event_list_target": {"target": "task:77", "after": 0, "limit": 100},
        "execution_list": {"task_id": 77},
        "batch_executing_tasks": {"batch_id": some["batch_id"]},
        "batch_paused_tasks": {"batch_id": some["batch_id"]},
        "batch_active_count": {"batch_id": some["batch_id"]},
    }
    if dialect == "postgres":  # the claim's one statement (pick, marks, executions)
        claim = {**pick, "n": 4, "id": w, "lease_expires": 1.0, "now": 1.0, "request_id": None}
        cases["claim_all"] = claim
        cases["claim_all_batch"] = {**claim, "id": some["pinned"], "batch_id": some["batch_id"]}
    else:
        cases["claim_pick"] = {**pick, "n": 4}
        cases["claim_pick_batch"] = {**pick, "batch_id": some["batch_id"], "n": 4}
    return cases


def test_no_selective_query_scans_a_big_table(filled, backend):
    store, ex, some = filled
    loaded = queries.load(backend)
    scans = {}
    for case, params in _cases(backend, some).items():
        name = next(n for n in (case, case.rsplit("_", 1)[0], case.rsplit("_", 2)[0]) if n in loaded)
        found = ex.scans(loaded[name], params)
        if found:
            scans[case] = found
    assert scans == {}


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_no_selective_query_scans_a_big_table_with_the_plan_made_once(filled, backend):
    # the statements the store lets PostgreSQL plan once for all runs (all but those with an
    # optional filter, PostgresBackend.custom): their generic plan is as selective
    store, ex, some = filled
    loaded = queries.load(backend)
    scans, planned_once = {}, 0
    for case, params in _cases(backend, some).items():
        name = next(n for n in (case, case.rsplit("_", 1)[0], case.rsplit("_", 2)[0]) if n in loaded)
        if name in store.backend.custom:
            continue
        planned_once += 1
        found = ex.scans(loaded[name], params, generic=True)
        if found:
            scans[case] = found
    assert planned_once >= 15
    assert scans == {}


def test_a_page_of_a_batch_s_tasks_of_one_status_reads_only_the_rows_it_returns(filled, backend):
    # b4 has no pending task, b16 a thousand: through the index of one status, a page of b4's
    # would read every pending task of the other batches to return none
    store, ex, some = filled
    sql = queries.load(backend)["task_list_by_batch_one_status"]
    for name, pending in (("b4", 0), ("b16", 1_000)):
        batch_id = int(ex.value(f"SELECT id FROM batch WHERE name = '{name}'"))
        params = {"batch_id": batch_id, "status": "pending", "after": 0, "limit": 100}
        if backend == "sqlite":
            details = [r[3] for r in ex.con.execute("EXPLAIN QUERY PLAN " + sql, params)]
            assert any("USING INDEX task_batch_status (batch_id=? AND status=? AND id>?)" in d for d in details), details
        else:
            plan = [r[0] for r in ex.con.run("EXPLAIN (ANALYZE) " + sql, **params)]
            node, thrown = "", 0
            for ln in plan:  # the task rows a node of `task` read and threw away
                node = ln if "->" in ln or ln is plan[0] else node
                m = re.search(r"Rows Removed by Filter: (\d+)", ln)
                if m and re.search(r" on task t\b", node):
                    thrown += int(m.group(1))
            assert any("Index Scan using task_batch_status on task t" in ln for ln in plan), "\n".join(plan)
            assert thrown == 0 and not any("Sort" in ln for ln in plan), "\n".join(plan)
        assert ex.value(f"SELECT COUNT(*) FROM task WHERE batch_id = {batch_id} AND status = 'pending'") == pending
        page = store.list_tasks(batch=name, statuses=["pending"], limit=100)
        assert len(page) == min(pending, 100) and {(t.batch, t.status) for t in page} <= {(name, "pending")}
        assert [t.id for t in page] == sorted(t.id for t in page)


def test_the_counts_are_exact_on_the_filled_database(filled):
    store, _, _ = filled
    counts = store.count_tasks()
    assert {k: counts[k] for k in ("succeeded", "failed", "pending", "running")} == {
        "succeeded": 90_000, "failed": 4_000, "pending": 5_000, "running": 1_000}
    store.create_tasks([task_spec(batch="b1")])
    store.fold_task_counts()
    assert store.count_tasks()["pending"] == 5_001


def test_a_worker_of_one_batch_reads_none_of_the_tasks_of_it_that_have_run(filled, backend):
    # A batch created after the statistics were taken, then 5,000 of its tasks ran (as in a busy
    # fleet: ANALYZE does not come back before a tenth of the table changed). Its workers' probe and
    # pick must find its one pending task without reading the others.
    store, ex, some = filled
    store.create_batch("young")
    young = int(ex.value("SELECT id FROM batch WHERE name = 'young'"))
    series = ("WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 5001) SELECT {cols} FROM s"
              if backend == "sqlite" else "SELECT {cols} FROM generate_series(1, 5001) i")
    insert = ("INSERT INTO task (batch_id, name, command, status, priority, status_changed, created, modified) "
              + series.format(cols=f"{young}, 'y' || i, 'true', CASE WHEN i = 5001 THEN 'pending' "
                                   "ELSE 'succeeded' END, 0, i, i, i"))
    ex.con.execute(insert) if backend == "sqlite" else ex.con.run(insert)  # no ANALYZE after it
    worker = store.register_worker({"name": "young-w", "concurrency": 4, "prefetch": 0, "batch": "young"})[0]
    try:
        pick = {"batch_id": young, "cpu": None, "mem": None, "gpu": None}
        prospect = {"id": worker.id, "request_id": None}
        loaded = queries.load(backend)
        if backend == "sqlite":
            for name, params in (("claim_prospect", prospect), ("claim_pick_batch", {**pick, "n": 4})):
                details = [r[3] for r in ex.con.execute("EXPLAIN QUERY PLAN " + loaded[name], params)]
                assert any("USING INDEX task_batch_pending" in d for d in details), (name, details)
            return
        read = {}
        for name, params in (("claim_prospect", prospect),
                             ("claim_all_batch", {**pick, "n": 4, "id": worker.id, "lease_expires": 1.0,
                                                  "now": 1.0, "request_id": None})):
            ex.con.run("BEGIN")  # claim_all claims: analysed, then rolled back
            try:
                plan = [r[0] for r in ex.con.run("EXPLAIN (ANALYZE) " + loaded[name], **params)]
            finally:
                ex.con.run("ROLLBACK")
            node, read[name] = "", 0
            for ln in plan:  # the task rows a node of `task` read and threw away
                if "->" in ln or ln is plan[0]:
                    node = ln
                m = re.search(r"Rows Removed by Filter: (\d+)", ln)
                if m and re.search(r" on task t\b", node):
                    read[name] += int(m.group(1))
            # the pick reads them in claim order (that index); the prospect's EXISTS in any order: a
            # condition on the batch and the pending status is as good (task_batch_status)
            assert any("task_batch_pending" in ln or (name == "claim_prospect" and "Index Cond" in ln
                                                      and "batch_id = " in ln and "status = 'pending'" in ln)
                       for ln in plan), (name, "\n".join(plan))
        assert read == {"claim_prospect": 0, "claim_all_batch": 0}
    finally:
        store.delete_worker(worker.id)
        store.delete_batch("young")
