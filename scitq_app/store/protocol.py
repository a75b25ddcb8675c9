"""Workers and the worker protocol (register, claim, heartbeat, report, output), as plain
functions over a transaction."""
from __future__ import annotations

import json
import secrets
from typing import Any, Iterable, Mapping, Sequence

from ..errors import Conflict, Fenced, Forbidden, NotFound
from ..models import (
    ACTIVE_EXECUTION_STATUSES,
    machine_spend,
    COUNTED_FAILURES,
    GONE_WORKER_STATUSES,
    Execution,
    ExecutionStatus,
    FailureClass,
    Identity,
    Role,
    SignalAction,
    TaskStatus,
    Worker,
    WorkerStatus,
    check_execution_transition,
    iso,
)
from . import admin, batches, tasks
from .backend import Tx, dumps

_ACTIVE_EXEC = {s.value for s in ACTIVE_EXECUTION_STATUSES}
UNCOUNTED_ATTEMPTS_LIMIT = 25
_PHASE_ORDER = {"assigned": 0, "running": 1, "uploading": 2, "succeeded": 3, "failed": 3}
_ONLINE = {WorkerStatus.STARTING.value, WorkerStatus.RUNNING.value, WorkerStatus.PAUSED.value,
           WorkerStatus.DRAINING.value}
_GONE = {s.value for s in GONE_WORKER_STATUSES}


# --- workers, people's side ---------------------------------------------
def worker_row(tx: Tx, worker_id: int) -> dict[str, Any]:
    row = tx.one("worker_get", id=worker_id)
    if row is None:
        raise NotFound(f"no worker {worker_id}", worker_id=worker_id)
    return row

def get_worker(tx: Tx, worker_id: int) -> Worker:
    return _with_costs(tx, [worker_row(tx, worker_id)])[0]

def list_workers(tx: Tx, batch: str | None = None, after: int = 0, limit: int | None = None) -> list[Worker]:
    batch_id = batches.batch_id(tx, batch) if batch is not None else None
    # no limit: every worker (both databases take a bound LIMIT; none is as large as this)
    rows = tx.all("worker_list", batch_id=batch_id, after=after, limit=limit if limit is not None else 2 ** 62)
    return _with_costs(tx, rows)

def _with_costs(tx: Tx, rows: Sequence[dict[str, Any]]) -> list[Worker]:
    """Workers, the rented ones with their price per hour and what their machines cost so far."""
    costs: dict[int, tuple[float, float]] = {}
    if any(not r["permanent"] for r in rows):
        for m in tx.all("machine_costs"):
            if m["worker_id"] is not None:
                _, spent = costs.get(m["worker_id"], (0.0, 0.0))
                costs[m["worker_id"]] = (float(m["price"]), spent + machine_spend(m["price"], m["created"],
                                                                                  m["destroyed"], tx.now))
    return [Worker.from_row(r, price=costs[r["id"]][0], spend=round(costs[r["id"]][1], 4))
            if r["id"] in costs else Worker.from_row(r) for r in rows]

def update_worker(tx: Tx, worker_id: int, changes: Mapping[str, Any], actor: str | None = None) -> Worker:
    row = dict(worker_row(tx, worker_id))
    if "concurrency" in changes:
        row["concurrency"] = changes["concurrency"]
    if "prefetch" in changes:
        row["prefetch"] = changes["prefetch"]
    if "batch" in changes:
        row["batch_id"] = None if changes["batch"] is None else batches.batch_id(tx, changes["batch"], create=True)
    if "status" in changes:
        row["setting"] = WorkerStatus(changes["status"]).value
        if row["status"] in _ONLINE:
            row["status"] = row["setting"]
    tx.run("worker_update", id=worker_id, concurrency=row["concurrency"], prefetch=row["prefetch"],
           batch_id=row["batch_id"], setting=row["setting"], status=row["status"], now=tx.now)
    admin.event(tx, "worker.update", f"worker:{row['name']}", dict(changes), actor)
    return Worker.from_row(worker_row(tx, worker_id))

def delete_worker(tx: Tx, worker_id: int, actor: str | None = None) -> None:
    row = worker_row(tx, worker_id)
    for task, e in tasks.lock_ended(tx, tx.all("worker_active_executions", worker_id=worker_id)):
        if e["status"] in _ACTIVE_EXEC:
            end_execution(tx, task, e, ExecutionStatus.FAILED, FailureClass.LOST, {},
                                message="worker deleted")
    tx.run("worker_delete", id=worker_id)  # its tokens go with it (ON DELETE CASCADE)
    admin.bump_epoch(tx)
    admin.event(tx, "worker.delete", f"worker:{row['name']}", None, actor)

def signal_worker(tx: Tx, worker_id: int, action: str, actor: str | None = None) -> None:
    row = worker_row(tx, worker_id)
    tx.run("signal_insert", worker_id=worker_id, execution_id=None, action=SignalAction(action).value,
           now=tx.now)
    admin.event(tx, f"worker.{action}", f"worker:{row['name']}", None, actor)

# --- registration ---------------------------------------------------------
def register_worker(tx: Tx, fields: Mapping[str, Any], actor: str | None = None,
                    identity: Identity | None = None) -> tuple[Worker, str]:
    name = fields["name"]
    fields = dict(fields)
    if identity is not None and identity.role == Role.JOIN:
        # Spent first: registrations racing on one token queue on its row here.
        admin.spend_join_use(tx, identity)
        if identity.pinned_name is not None and identity.pinned_name != name:
            raise Forbidden(f"this join token registers only a worker named {identity.pinned_name!r}, not "
                            f"{name!r}: set [worker] name = {identity.pinned_name} on that host",
                            pinned_name=identity.pinned_name)
        if identity.pinned_batch is not None:
            fields["batch"] = identity.pinned_batch
    row = tx.one("worker_by_name", name=name)
    own = identity is not None and identity.role == Role.WORKER
    if identity is not None and own and (row is None or row["id"] != identity.worker_id):
        raise Forbidden(f"a worker token registers only its own worker (worker {identity.worker_id}), "
                        f"not {name!r}")
    if row is not None and not own and row["status"] not in _GONE:
        raise Conflict(live_name_message(tx, row), worker=name, worker_id=row["id"],
                       last_seen=iso(row["last_seen"]))
    setting = fields.get("status") or WorkerStatus.RUNNING.value
    if row is None:
        batch_id = batches.batch_id(tx, fields["batch"], create=True) if fields.get("batch") else None
        worker_id = tx.insert(
            "worker_insert", name=name, hostname=fields.get("hostname"), status=setting, setting=setting,
            batch_id=batch_id, concurrency=fields.get("concurrency", 1), prefetch=fields.get("prefetch", 0),
            cpu=fields.get("cpu"), mem=fields.get("mem"), gpu=fields.get("gpu"),
            version=fields.get("version"), now=tx.now)
        admin.event(tx, "worker.register", f"worker:{name}", {"hostname": fields.get("hostname")}, actor)
    else:
        # A known worker re-attaches: what people changed on the server since
        # (concurrency, prefetch, batch, status) wins over its own config.
        worker_id = row["id"]
        tx.run("worker_reattach", id=worker_id, hostname=fields.get("hostname"), cpu=fields.get("cpu"),
               mem=fields.get("mem"), gpu=fields.get("gpu"), version=fields.get("version"), now=tx.now)
        tx.run("token_revoke_worker", worker_id=worker_id, now=tx.now)
        admin.bump_epoch(tx)
        if identity is not None and identity.role == Role.JOIN and identity.pinned_batch is not None:
            tx.run("worker_set_batch", id=worker_id, batch_id=batches.batch_id(tx, identity.pinned_batch,
                                                                               create=True), now=tx.now)
        admin.event(tx, "worker.reattach", f"worker:{name}", {"hostname": fields.get("hostname")}, actor)
    _, secret = admin.new_token(tx, f"worker:{name}:{secrets.token_hex(4)}", Role.WORKER.value, worker_id)
    return Worker.from_row(worker_row(tx, worker_id)), secret

def live_name_message(tx: Tx, row: Mapping[str, Any]) -> str:
    seen = row["last_seen"]
    when = "never seen" if seen is None else \
        f"last seen {max(0.0, tx.now - seen):.0f} s ago, at {iso(seen)}"
    host = f" on host {row['hostname']}" if row["hostname"] else ""
    return (f"worker {row['name']!r}{host} is live ({row['status']}, {when}): another agent already uses "
            f"this name. Give this agent another [worker] name, or, if the old one is gone for good, "
            f"`scitq worker delete {row['name']}` first")

# --- claim ----------------------------------------------------------------
def _claimed(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [Execution.from_row(dict(r)).to_dict() | {"task_name": r["task_name"], "batch": r["batch"],
                                                      "cpu_request": r["cpu_request"]} for r in rows]


def claimed_by_request(tx: Tx, worker_id: int, request_id: str) -> list[dict[str, Any]]:
    """The executions an earlier claim of this worker with this request id created."""
    return _claimed(tx.all("claim_by_request", worker_id=worker_id, request_id=request_id))


def claim(tx: Tx, worker_id: int, slots: int, lease: float, request_id: str | None,
          prospect: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Up to `slots` tasks for the worker, as many as its room allows (claim_room), once for a
    request id (a retry gets what its first try took). `prospect`: the worker as claim_prospect
    read it, whose batch and resources pick the tasks. NotFound for an unknown worker."""
    # A claim is a sign of life, and this write comes first for a reason: it locks the worker's
    # row, so overlapping claims of one worker take turns, and its room, read next by a statement
    # of its own, counts what the previous one just gave it (on PostgreSQL, reading first let two
    # claims both see free slots: concurrency + prefetch exceeded).
    return _CLAIMS[tx.dialect](tx, worker_id, slots, tx.now + lease, request_id, prospect)


def _claim_in_one_round_trip(tx: Tx, worker_id: int, slots: int, lease_expires: float, request_id: str | None,
                             prospect: Mapping[str, Any]) -> list[dict[str, Any]]:
    """PostgreSQL: the lock, what an earlier try of this request took, and the claim statement
    (room, pick with SKIP LOCKED, marks, executions: claim_all), sent with COMMIT."""
    batch = prospect["batch_id"]
    claim_params = {"id": worker_id, "request_id": request_id, "n": slots, "lease_expires": lease_expires,
                    "now": tx.now, "batch_id": batch, "cpu": prospect["cpu"], "mem": prospect["mem"],
                    "gpu": prospect["gpu"]}
    retry = [("claim_by_request", {"worker_id": worker_id, "request_id": request_id})] if request_id else []
    (_, seen), *earlier, (taken, _) = tx.finish(("worker_seen", {"id": worker_id, "now": tx.now}), *retry,
                                                ("claim_all" if batch is None else "claim_all_batch", claim_params))
    if not seen:
        raise NotFound(f"no worker {worker_id}", worker_id=worker_id)
    if earlier and earlier[0][0]:  # a retry racing its first try: what that one took (this took none)
        return _claimed(earlier[0][0])
    return _claimed(taken)


def _claim_in_steps(tx: Tx, worker_id: int, slots: int, lease_expires: float, request_id: str | None,
                    prospect: Mapping[str, Any]) -> list[dict[str, Any]]:
    """SQLite (no data-modifying CTE): the same in steps, under its one write lock."""
    _, (found, _) = tx.pipeline(("worker_seen", {"id": worker_id, "now": tx.now}),
                                ("claim_worker", {"id": worker_id, "request_id": request_id}))
    if not found:
        raise NotFound(f"no worker {worker_id}", worker_id=worker_id)
    w = found[0]
    if w["retried"]:  # a retry racing its first try
        return claimed_by_request(tx, worker_id, str(request_id))
    n = min(slots, int(w["room"]))
    if n <= 0:
        return []
    pick = {"batch_id": w["batch_id"], "cpu": w["cpu"], "mem": w["mem"], "gpu": w["gpu"], "n": n}
    # named indexes (sqlite.sql): a worker of one batch reads that batch's pending tasks only
    ids = [int(r["id"]) for r in tx.all("claim_pick" if pick["batch_id"] is None else "claim_pick_batch", **pick)]
    if not ids:
        return []
    p = {"ids": dumps(ids), "now": tx.now}
    tx.run("claim_mark", **p)
    tx.run("claim_executions", worker_id=worker_id, lease_expires=lease_expires, request_id=request_id, **p)
    tx.run("claim_link", **p)
    return _claimed(tx.all("claim_result", ids=p["ids"]))


_CLAIMS = {"postgres": _claim_in_one_round_trip, "sqlite": _claim_in_steps}


def has_claimable(tx: Tx, worker_id: int) -> bool:
    """Could a claim of this worker get something now (False for an unknown worker)? One read."""
    w = tx.one("claim_prospect", id=worker_id, request_id=None)
    return w is not None and could_claim(w)


def claimable_workers(tx: Tx, worker_ids: Iterable[int]) -> set[int]:
    """Those of these workers that could claim something now (has_claimable for each), in one read."""
    ids = sorted(set(worker_ids))
    return {int(p["id"]) for p in tx.all("claim_prospects", ids=dumps(ids)) if could_claim(p)} if ids else set()


def claim_prospect(tx: Tx, worker_id: int, request_id: str | None) -> dict[str, Any]:
    """Before a claim, in one read: the worker, its `room` (claim_room), whether a task it could
    take is `waiting`, and whether an earlier try of this claim (its request id) already claimed
    (`retried`). NotFound for an unknown worker."""
    w = tx.one("claim_prospect", id=worker_id, request_id=request_id)
    if w is None:
        raise NotFound(f"no worker {worker_id}", worker_id=worker_id)
    return w


def could_claim(prospect: Mapping[str, Any]) -> bool:
    """Whether a claim with this prospect would get something now (else, a long poll would spin)."""
    return int(prospect["room"]) > 0 and bool(prospect["waiting"])


def fleet_size(tx: Tx) -> int:
    return int(tx.value("workers_live_count") or 0)


# --- heartbeat ------------------------------------------------------------
def heartbeat_reply(tx: Tx, worker_id: int, execution_ids: Iterable[int], lease: float) -> dict[str, Any]:
    held = sorted(set(execution_ids))
    w = tx.one("heartbeat_reply", id=worker_id, ids=dumps(held))  # one statement: it is every worker's
    if w is None:
        raise NotFound(f"no worker {worker_id}", worker_id=worker_id)
    valid = {int(i) for i in json.loads(w["current"])}
    fenced = [i for i in held if i not in valid]
    signals = [{"id": int(i), "execution_id": e, "action": a} for i, e, a in sorted(json.loads(w["signals"]))]
    return {"settings": {"concurrency": int(w["concurrency"]), "prefetch": int(w["prefetch"]),
                         "status": w["setting"], "batch": w["batch"], "lease": lease},
            "signals": signals, "fenced": fenced, "server_time": tx.now}

def record_heartbeats(tx: Tx, beats: Sequence[Mapping[str, Any]], lease: float) -> None:
    # Executions, then workers, each locked in ascending id over the whole flush (the lock
    # order in tasks.py), and no task: a flush of many workers' beats holds execution locks
    # that reports, signals and the dispatcher wait for, so it must never wait in a cycle.
    leases = sorted(({"worker_id": b["worker_id"], "id": e, "lease_expires": b.get("at", tx.now) + lease}
                     for b in beats for e in set(b.get("executions") or ())), key=lambda r: r["id"])
    if leases:
        tx.all("executions_lock_ids", ids=dumps([r["id"] for r in leases]))
        tx.many("lease_renew_one", leases)
    tx.all("workers_lock_ids", ids=dumps(sorted({b["worker_id"] for b in beats})))
    tx.many("worker_heartbeat", sorted(({"id": b["worker_id"], "stats": dumps(dict(b.get("stats") or {})),
                                         "now": b.get("at", tx.now)} for b in beats), key=lambda r: r["id"]))
    acks = [{"worker_id": b["worker_id"], "id": a} for b in beats for a in b.get("acks") or ()]
    if acks:
        tx.many("signal_ack_one", acks)

def heartbeat(tx: Tx, worker_id: int, stats: Mapping[str, Any], execution_ids: Iterable[int],
              acks: Iterable[int], lease: float) -> dict[str, Any]:
    held = list(execution_ids)
    record_heartbeats(tx, [{"worker_id": worker_id, "stats": stats, "executions": held, "acks": list(acks)}], lease)
    return heartbeat_reply(tx, worker_id, held, lease)

# --- report and output ----------------------------------------------------
def own_execution(tx: Tx, execution_id: int, worker_id: int | None) -> dict[str, Any]:
    e = tx.one("execution_get", id=execution_id)
    if e is None:
        raise NotFound(f"no execution {execution_id}", execution_id=execution_id)
    if worker_id is not None and e["worker_id"] != worker_id:
        raise Forbidden(f"execution {execution_id} belongs to another worker", execution_id=execution_id)
    return e

def apply_outbox(tx: Tx, worker_id: int | None, items: Sequence[tuple[str, int, Mapping[str, Any]]],
                 head: int, tail: int) -> list[Any]:
    # Reports lock a task, then its execution, and output locks an execution: take every
    # task, then every execution, up front (the lock order in tasks.py), so that no item
    # waits for a task while an earlier one holds an execution.
    reported = [execution_id for kind, execution_id, _ in items if kind == "report"]
    if reported:
        tasks.lock_tasks(tx, [int(r["task_id"]) for r in tx.all("executions_task_ids", ids=dumps(reported))])
    tasks.lock_executions(tx, [execution_id for _, execution_id, _ in items])
    out: list[Any] = []
    for kind, execution_id, body in items:
        if kind == "report":
            out.append(report(tx, execution_id, worker_id, body))
        else:
            out.append(append_output(tx, execution_id, worker_id, body["stream"], body["offset"],
                                           body["data"], bool(body.get("final")), head, tail))
    return out

def report(tx: Tx, execution_id: int, worker_id: int | None, body: Mapping[str, Any]) -> Execution:
    # Two queries lock the task, then the execution (always in that order: see
    # signal_task), and no more reads follow: reports are the hottest write path.
    task = tx.one("task_lock_by_execution", id=execution_id)
    e = tx.one("execution_lock", id=execution_id) if task is not None else None
    if task is None or e is None:
        raise NotFound(f"no execution {execution_id}", execution_id=execution_id)
    if worker_id is not None and e["worker_id"] != worker_id:
        raise Forbidden(f"execution {execution_id} belongs to another worker", execution_id=execution_id)
    phase, current = body["phase"], e["status"]
    if current not in _ACTIVE_EXEC:
        if e["failure_class"] != FailureClass.LOST.value and (
                phase == current or _PHASE_ORDER[phase] < _PHASE_ORDER[current]):
            return Execution.from_row(e)  # a replayed final report, or a late one of a phase passed
        raise Fenced(f"execution {execution_id} was already ended ({current}"
                     f"{'/' + e['failure_class'] if e['failure_class'] else ''}) by the server",
                     execution_id=execution_id, status=current)
    if task["current_execution_id"] != e["id"]:
        raise Fenced(f"execution {execution_id} is not the current attempt of task {task['id']}",
                     execution_id=execution_id)
    if _PHASE_ORDER[phase] <= _PHASE_ORDER[current]:
        return Execution.from_row(e)  # a late duplicate of an earlier phase
    check_execution_transition(execution_id, current, phase)
    if phase in (ExecutionStatus.RUNNING.value, ExecutionStatus.UPLOADING.value):
        deadline = (tx.now + e["run_timeout"]) if (phase == "running" and e["run_timeout"]) else e["deadline"]
        tx.run("execution_phase", id=execution_id, status=phase, now=tx.now, deadline=deadline)
        if task["status"] not in (TaskStatus.PAUSED.value, TaskStatus.CANCELED.value):
            tasks.set_status(tx, task, TaskStatus(phase))
        return Execution.from_row({**e, "status": phase, "started": e["started"] or tx.now,
                                   "deadline": deadline, "modified": tx.now})
    fclass = None
    if phase == ExecutionStatus.FAILED.value:
        fclass = FailureClass(body.get("failure_class") or FailureClass.APP.value)
    end_execution(tx, task, e, ExecutionStatus(phase), fclass, body)
    return Execution.from_row({**e, "status": phase, "failure_class": fclass.value if fclass else None,
                               "return_code": body.get("return_code"),
                               "output_files": list(body.get("output_files") or []),
                               "peak_mem": body.get("peak_mem"), "cpu_time": body.get("cpu_time"),
                               "started": e["started"] or tx.now, "finished": tx.now, "lease_expires": None,
                               "modified": tx.now})

def end_execution(tx: Tx, task: Mapping[str, Any], e: Mapping[str, Any], status: ExecutionStatus,
                   fclass: FailureClass | None, body: Mapping[str, Any], message: str | None = None) -> None:
    """Close an execution and move its task on: succeeded, retried or failed."""
    tx.run("execution_end", id=e["id"], status=status.value, now=tx.now,
           failure_class=fclass.value if fclass else None, return_code=body.get("return_code"),
           output_files=dumps(list(body.get("output_files") or [])), peak_mem=body.get("peak_mem"),
           cpu_time=body.get("cpu_time"), message=message or body.get("message"))
    if task["current_execution_id"] != e["id"]:
        return
    if task["status"] == TaskStatus.CANCELED.value and status != ExecutionStatus.SUCCEEDED:
        # People canceled the task: it stays canceled whatever the attempt did, unless the
        # command exited 0 before the stop reached it: that success is recorded below.
        return
    paused = task["status"] == TaskStatus.PAUSED.value
    if status == ExecutionStatus.SUCCEEDED:
        tasks.set_status(tx, task, TaskStatus.SUCCEEDED)
        dependents = [int(r["task_id"]) for r in tx.all("task_dependents", id=task["id"])]
        if dependents:
            tx.run("release_waiting", ids=dumps(dependents), now=tx.now)
        return
    retries = int(task["retries_used"])
    if fclass in COUNTED_FAILURES:
        if retries >= int(task["max_retries"]):
            tasks.set_status(tx, task, TaskStatus.FAILED)
            return
        retries += 1
    elif int(task["attempts"]) - retries >= UNCOUNTED_ATTEMPTS_LIMIT:
        # Lost, evicted or canceled attempts spend no retry, but a task that keeps
        # killing its worker must not loop forever.
        tasks.set_status(tx, task, TaskStatus.FAILED)
        return
    tasks.set_status(tx, task, TaskStatus.PAUSED if paused else TaskStatus.PENDING, retries_used=retries)

def append_output(tx: Tx, execution_id: int, worker_id: int | None, stream: str, offset: int,
                   data: bytes, final: bool, head: int, tail: int) -> int:
    e = own_execution(tx, execution_id, worker_id)
    if e["failure_class"] == FailureClass.LOST.value or e["current_id"] != e["id"]:
        raise Fenced(f"execution {execution_id} is no longer current", execution_id=execution_id)
    end = offset + len(data)
    pieces = []
    if offset < head:
        pieces.append((offset, data[:head - offset]))
    rest_start = max(offset, head)
    rest = data[rest_start - offset:]
    if rest:
        if len(rest) > tail:
            rest_start, rest = end - tail, rest[-tail:]
        pieces.append((rest_start, rest))
    if offset < int(e[f"{stream}_size"]):
        # A resend: a restarted worker ships its logs from 0 again, maybe cut into other chunks
        # than before. Keep only the bytes no stored chunk holds yet (chunks conflict by pos).
        held = [(int(c["pos"]), int(c["pos"]) + len(bytes(c["data"])))
                for c in tx.all("output_read", execution_id=execution_id, stream_name=stream, offset=offset)]
        pieces = _uncovered(pieces, held)
    for pos, piece in pieces:
        if piece:
            tx.run("output_insert", execution_id=execution_id, stream_name=stream, pos=pos, size=len(piece),
                   data=piece)
    size = max(int(e[f"{stream}_size"]), end)
    tx.run(f"output_size_{stream}", id=execution_id, size=size, done=1 if final else 0)
    if size - tail > head:
        cut = size - tail
        tx.run("output_trim", execution_id=execution_id, stream_name=stream, head=head, cut=cut)
        # A chunk across the cut keeps only its bytes after it: never more than `tail` are kept.
        for c in tx.all("output_across_cut", execution_id=execution_id, stream_name=stream, head=head,
                        cut=cut):
            piece = bytes(c["data"])[cut - int(c["pos"]):]
            tx.run("output_delete_chunk", execution_id=execution_id, stream_name=stream, pos=c["pos"])
            tx.run("output_insert", execution_id=execution_id, stream_name=stream, pos=cut, size=len(piece),
                   data=piece)
    return size

def _uncovered(pieces: list[tuple[int, bytes]], held: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
    """The parts of (pos, data) pieces outside the [start, end) ranges already held."""
    out = []
    for pos, data in pieces:
        cursor, end = pos, pos + len(data)
        for start, stop in sorted(held):
            if stop <= cursor or start >= end:
                continue
            if start > cursor:
                out.append((cursor, data[cursor - pos:start - pos]))
            cursor = max(cursor, stop)
        if cursor < end:
            out.append((cursor, data[cursor - pos:]))
    return out
