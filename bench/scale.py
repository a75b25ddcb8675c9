"""Fleet scale at the store: the worker protocol's, the dispatcher's and the listings' costs on a
database filled like a busy lab's, measured in-process (the store is what the server runs per
request; HTTP and JSON costs are the other benches').

Fill: TASKS tasks (90 % succeeded, 4 % failed, 4 % pending, 1 % waiting, 1 % running) in 20 batches, an execution
per started task plus earlier attempts up to EXECUTIONS, as many events as tasks, WORKERS workers
holding the running executions. Then, each op timed over many calls (wall p50/p99 and this
process's CPU per call):
- heartbeat: a worker's reply with its real execution list, and the recording of WORKERS beats in
  the server's batches of 500 (CPU per beat);
- idle claim: a worker of an empty batch claims (nothing for it: the common case of an idle fleet);
- claim: a worker (concurrency 4, as the fleet's) takes one pending task;
- dispatcher: one round (Dispatcher.tick);
- listings: running tasks page, counts by status, a task's events.

`--tree PATH` runs the same against another checkout of scitq (e.g. the code before a change):
the fill and the calls use only the store contract both share.

    python bench/scale.py sqlite --tasks 1000000
    python bench/scale.py postgres --tasks 1000000 --tree /path/to/old/checkout
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fill_statements(dialect: str, tasks: int, executions: int, workers: int) -> list[str]:
    series = ("WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) SELECT {cols} FROM s"
              if dialect == "sqlite" else "SELECT {cols} FROM generate_series(1, {n}) i")
    status = ("CASE WHEN i % 100 < 90 THEN 'succeeded' WHEN i % 100 < 94 THEN 'failed' "
              "WHEN i % 100 < 98 THEN 'pending' WHEN i % 100 = 98 THEN 'waiting' ELSE 'running' END")
    first_worker = "(SELECT MIN(id) FROM worker WHERE name LIKE 'sim-%')"
    now = int(time.time())  # events of the last `tasks` seconds: none is past its retention
    return [
        "INSERT INTO worker (name, status, setting, concurrency, prefetch, last_seen, created, modified) "
        + series.format(n=workers, cols="'sim-' || i, 'running', 'running', 4, 0, 0, 0, 0"),
        "INSERT INTO batch (name, status, priority, created, modified) "
        + series.format(n=20, cols="'b' || i, 'running', 0, 0, 0"),
        "INSERT INTO task (batch_id, name, command, status, priority, attempts, status_changed, created, modified) "
        + series.format(n=tasks, cols=f"(SELECT MIN(id) FROM batch WHERE name LIKE 'b%') + i % 20, 't' || i, "
                                      f"'true', {status}, 0, 1, i, i, i"),
        "INSERT INTO event (at, actor, kind, target, detail) "
        + series.format(n=tasks, cols=f"{now - tasks} + i, 'admin', 'task.update', 'task:' || i, NULL"),
        # the current attempt of every started task; running ones held by the simulated workers, dealt
        # in turn (1 % of 1 M tasks on 5,000 workers: 2 each, within their concurrency of 4)
        "INSERT INTO execution (task_id, attempt, worker_id, status, lease_expires, deadline, assigned, command, "
        "shell, inputs, resources, created, modified) "
        f"SELECT id, 1, {first_worker} + (ROW_NUMBER() OVER (ORDER BY CASE status WHEN 'running' THEN 0 ELSE 1 END, "
        f"id) - 1) % {workers}, CASE status WHEN 'running' THEN 'running' "
        "WHEN 'succeeded' THEN 'succeeded' ELSE 'failed' END, CASE status WHEN 'running' THEN 1e12 END, "
        "NULL, 0, 'true', 'none', '[]', '[]', 0, 0 FROM task WHERE status <> 'pending' AND name LIKE 't%' "
        f"ORDER BY CASE status WHEN 'running' THEN 0 ELSE 1 END, id LIMIT {executions}",
        # waiting tasks that stay waiting: each requires a failed task
        "INSERT INTO task_dependency (task_id, required_id) SELECT id, id - 6 FROM task WHERE status = 'waiting'",
        "UPDATE task SET current_execution_id = (SELECT MAX(e.id) FROM execution e WHERE e.task_id = task.id) "
        "WHERE status <> 'pending' AND name LIKE 't%'",
        "ANALYZE",
    ]


def run_sql(url: str, statements: list[str]) -> None:
    if url.startswith("sqlite:///"):
        import sqlite3
        con = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
        for s in statements:
            con.execute(s)
        con.close()
        return
    import pg8000.native

    from scitq_app.store.postgres import parse_url
    con = pg8000.native.Connection(**parse_url(url))
    for s in statements:
        con.run(s)
    con.close()


def timed(fn: Callable[[], Any], calls: int) -> dict[str, float]:
    walls = []
    cpu0 = time.process_time()
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
    cpu = (time.process_time() - cpu0) / calls
    walls.sort()
    return {"p50_ms": round(statistics.median(walls) * 1000, 3),
            "p99_ms": round(walls[min(len(walls) - 1, int(len(walls) * 0.99))] * 1000, 3),
            "cpu_ms": round(cpu * 1000, 3)}


def measure(url: str, tasks: int, executions: int, workers: int, calls: int) -> dict[str, Any]:
    from scitq_app.config import load_config
    from scitq_app.dispatch.loops import Dispatcher
    from scitq_app.store import open_store

    store = open_store(url)
    store.init_schema()
    t0 = time.perf_counter()
    run_sql(url, fill_statements(store.dialect, tasks, executions, workers))
    out: dict[str, Any] = {"fill_s": round(time.perf_counter() - t0, 1)}
    held: dict[int, list[int]] = {}
    for t in store.list_tasks(statuses=["running"], limit=100_000):
        e = store.get_execution(t.current_execution_id) \
            if len(held) < 200 and t.current_execution_id is not None else None
        if e is not None and e.worker_id is not None:
            held.setdefault(e.worker_id, []).append(e.id)
    some = sorted(held.items())[:50]
    lease = 30.0
    i = iter(range(10 ** 9))

    def beat_reply() -> None:
        w, ids = some[next(i) % len(some)]
        store.heartbeat_reply(w, ids, lease)
    out["heartbeat_reply"] = timed(beat_reply, calls)

    first = min(held)
    beats = [{"worker_id": first + k, "stats": {"load": 1.0}, "executions": held.get(first + k, []), "acks": []}
             for k in range(workers)]
    t0, cpu0 = time.perf_counter(), time.process_time()
    for start in range(0, len(beats), 500):
        store.record_heartbeats(beats[start:start + 500], lease)
    out["heartbeat_record_per_beat"] = {"wall_ms": round((time.perf_counter() - t0) * 1000 / workers, 3),
                                        "cpu_ms": round((time.process_time() - cpu0) * 1000 / workers, 3)}

    store.create_batch("empty")
    idle = store.register_worker({"name": "idle", "concurrency": 4, "prefetch": 0, "batch": "empty"})[0]
    # each claim with a request id of its own, as a worker sends (its retries reuse it)
    r = iter(range(10 ** 9))
    out["idle_claim"] = timed(lambda: store.claim(idle.id, 4, lease, request_id=f"i{next(r)}"), calls)
    # workers like the fleet's (concurrency 4), each claiming in turn until it is full: a claim's
    # cost grows with what its worker already runs, which a real worker keeps within its concurrency
    claims = min(calls, 2000)
    takers = [store.register_worker({"name": f"taker{k}", "concurrency": 4, "prefetch": 0})[0]
              for k in range(-(-(claims + 20) // 4))]
    j = iter(range(10 ** 9))
    taken: list[int] = []
    out["claim_one"] = timed(lambda: taken.extend(e["id"] for e in store.claim(takers[next(j) % len(takers)].id,
                                                                              1, lease, request_id=f"c{next(r)}")),
                             claims)
    assert len(taken) == claims, f"{claims - len(taken)} claims took nothing"

    config = load_config(os.devnull, env={})
    late = [0.0]  # past the grace of a dispatcher that just took the lock: every duty runs
    d = Dispatcher(store, config, holder="bench", clock=lambda: time.time() + late[0])
    d.tick()
    late[0] = 3600.0
    out["dispatcher_tick"] = timed(d.tick, max(5, calls // 50))
    out["list_running_page"] = timed(lambda: store.list_tasks(statuses=["running"], limit=100), max(20, calls // 10))
    out["count_by_status"] = timed(store.count_tasks, max(20, calls // 10))
    k = iter(range(10 ** 9))
    out["events_of_a_task"] = timed(lambda: store.list_events(target=f"task:{next(k) % tasks + 1}"),
                                    max(20, calls // 10))
    store.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("backend", choices=("sqlite", "postgres"))
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--executions", type=int, default=200_000)
    p.add_argument("--workers", type=int, default=5_000)
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--tree", default=ROOT, help="the scitq checkout whose store to measure (default: this one)")
    a = p.parse_args()
    sys.path.insert(0, ROOT)  # the harness (throwaway PostgreSQL) is this checkout's
    from bench.harness import database
    sys.path.insert(0, os.path.abspath(a.tree))
    for m in [m for m in sys.modules if m == "scitq_app" or m.startswith("scitq_app.")]:
        del sys.modules[m]
    with tempfile.TemporaryDirectory(prefix="scitq-scale-") as workdir:
        with database(a.backend, workdir) as url:
            result = measure(url, a.tasks, a.executions, a.workers, a.calls)
    print(json.dumps({"backend": a.backend, "tree": os.path.abspath(a.tree), "tasks": a.tasks, **result}))


if __name__ == "__main__":
    main()
