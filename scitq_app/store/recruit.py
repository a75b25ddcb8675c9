"""Recruiters, the machines scitq rents, and what recruiting reads (demand, live and idle
workers): plain functions over a transaction. The policy is in dispatch/recruit.py."""
from __future__ import annotations

import uuid
from typing import Any, Mapping, Sequence

from ..errors import Conflict, Invalid, NotFound
from ..models import (Caps, JobStatus, MachineStatus, Recruiter, RentedMachine, WorkerStatus, check_machine_transition,
                      machine_name, machine_spend)
from . import admin, batches
from .backend import Tx

RECRUITER_FIELDS = ("provider", "flavor", "region", "tasks_per_worker", "minimum_tasks", "maximum_workers",
                    "concurrency", "prefetch")


def recruiter(tx: Tx, recruiter_id: int) -> Recruiter:
    row = tx.one("recruiter_get", id=recruiter_id)
    if row is None:
        raise NotFound(f"no recruiter {recruiter_id}", recruiter_id=recruiter_id)
    return Recruiter.from_row(row)


def list_recruiters(tx: Tx) -> list[Recruiter]:
    return [Recruiter.from_row(r) for r in tx.all("recruiter_list")]


def create_recruiter(tx: Tx, fields: Mapping[str, Any], actor: str | None) -> Recruiter:
    """One recruiter for `fields['batch']` (created if missing) at `fields['rank']`; Conflict
    when that rank is taken."""
    bid = batches.batch_id(tx, fields["batch"], create=True)
    rank = fields.get("rank", 1)
    if tx.one("recruiter_find", batch_id=bid, rank=rank) is not None:
        raise Conflict(f"batch {fields['batch']!r} has a recruiter of rank {rank} already: update it or "
                       "use another rank", batch=fields["batch"], rank=rank)
    defaults = {"region": None, "tasks_per_worker": 1, "minimum_tasks": 0, "concurrency": 1, "prefetch": 0}
    rid = tx.insert("recruiter_insert", batch_id=bid, rank=fields.get("rank", 1), now=tx.now,
                    **{k: fields.get(k, defaults.get(k)) for k in RECRUITER_FIELDS})
    admin.event(tx, "recruiter.create", f"batch:{fields['batch']}", {"rank": rank}, actor)
    return recruiter(tx, rid)


def update_recruiter(tx: Tx, recruiter_id: int, changes: Mapping[str, Any], actor: str | None) -> Recruiter:
    row = dict(tx.one("recruiter_get", id=recruiter_id) or {})
    if not row:
        raise NotFound(f"no recruiter {recruiter_id}", recruiter_id=recruiter_id)
    unknown = set(changes) - set(RECRUITER_FIELDS)
    if unknown:
        raise Invalid("cannot be changed", field=sorted(unknown)[0])
    row.update(changes)
    tx.run("recruiter_update", id=recruiter_id, now=tx.now, **{k: row[k] for k in RECRUITER_FIELDS})
    admin.event(tx, "recruiter.update", f"batch:{row['batch']}", {"rank": row["rank"], **changes}, actor)
    return recruiter(tx, recruiter_id)


def delete_recruiter(tx: Tx, recruiter_id: int, actor: str | None) -> None:
    r = recruiter(tx, recruiter_id)
    tx.run("recruiter_delete", id=recruiter_id)
    admin.event(tx, "recruiter.delete", f"batch:{r.batch}", {"rank": r.rank}, actor)


# --- machines ---------------------------------------------------------------------------------
def machine(tx: Tx, machine_id: int) -> RentedMachine:
    row = tx.one("machine_get", id=machine_id)
    if row is None:
        raise NotFound(f"no machine {machine_id}", machine_id=machine_id)
    return RentedMachine.from_row(row)


def list_machines(tx: Tx, everything: bool = False) -> list[RentedMachine]:
    return [RentedMachine.from_row(r, spend=machine_spend(r["price"], r["created"], r["destroyed"], tx.now))
            for r in tx.all("machine_list_all" if everything else "machine_list_active")]


def add_machine(tx: Tx, name: str, provider: str, region: str, flavor: str, price: float, idem_key: str,
                recruiter_id: int | None, batch: str | None, concurrency: int = 1, prefetch: int = 0,
                requested: bool = False, actor: str | None = None) -> RentedMachine:
    """Record a machine about to be asked for (status creating), before the provider is: its
    idempotency key is what a retried create looks for first. `requested`: asked for by a
    person (status requested), the dispatcher creates it."""
    bid = batches.batch_id(tx, batch, create=True) if batch else None
    status = MachineStatus.REQUESTED if requested else MachineStatus.CREATING
    mid = tx.insert("machine_insert", name=name, provider=provider, region=region, flavor=flavor, price=price,
                    idem_key=idem_key, recruiter_id=recruiter_id, batch_id=bid, now=tx.now, status=status.value,
                    concurrency=concurrency, prefetch=prefetch)
    admin.event(tx, "machine.create", f"machine:{name}", {"provider": provider, "flavor": flavor,
                                                           "region": region}, actor)
    return machine(tx, mid)


def request_machines(tx: Tx, names: Sequence[str], provider: str, region: str, flavor: str, price: float,
                     batch: str | None, concurrency: int, prefetch: int, caps: Caps, actor: str | None
                     ) -> list[RentedMachine]:
    """Machines a person asks for (`worker deploy`), all or none: Conflict when the provider's
    caps on machines (all regions, or this region) leave no room for them all."""
    active = [m for m in list_machines(tx) if m.provider == provider]
    room = caps.room(len(active), sum(1 for m in active if m.region == region), region)
    if room is not None and room < len(names):
        raise Conflict(f"provider {provider} allows {caps.describe(region)}: {len(active)} machine(s) held now, "
                       f"room for {max(room, 0)}, {len(names)} asked", provider=provider, room=max(room, 0))
    return [add_machine(tx, name, provider, region, flavor, price, uuid.uuid4().hex, None, batch, concurrency,
                        prefetch, requested=True, actor=actor) for name in names]


def machine_by_name(tx: Tx, name: str) -> RentedMachine | None:
    row = tx.one("machine_by_name", name=name)
    return RentedMachine.from_row(row) if row is not None else None


def retry_job(tx: Tx, job_id: int, caps: Mapping[str, Caps], actor: str | None) -> dict[str, Any]:
    """Do a failed job again, where the server can: a destroy is asked again of the dispatcher
    (a new pending job on the same machine, still being given back), a deploy a person asked
    for becomes a new machine request like it. Conflict, saying what does it instead, for the
    rest: recruiters and reconciliation retry by themselves, a provision runs where its command
    runs. Returns {job, machine}: what was made."""
    from . import jobs
    job = jobs.get_job(tx, job_id)
    if job.status != JobStatus.FAILED.value:
        raise Conflict(f"job {job_id} is {job.status}: only a failed job can be retried", job_id=job_id,
                       status=job.status)
    if job.kind == "provision":
        raise Conflict(f"job {job_id} provisioned a host from a command: `scitq job retry {job_id}` runs it again "
                       "from where you are", job_id=job_id, kind=job.kind)
    if job.kind == "reconcile":
        raise Conflict(f"job {job_id} is a reconciliation: the dispatcher reconciles again by itself every "
                       "[recruit] reconcile seconds", job_id=job_id, kind=job.kind)
    m = machine_by_name(tx, job.target)
    if m is None:
        raise Conflict(f"job {job_id}: machine {job.target} is no longer known: nothing to retry", job_id=job_id)
    if job.kind == "destroy":
        if m.status != MachineStatus.DESTROYING.value:
            raise Conflict(f"job {job_id}: machine {m.name} is {m.status}, not being given back: nothing to retry",
                           job_id=job_id, status=m.status)
        return {"job": jobs.create_job(tx, "destroy", m.name, actor), "machine": m}
    if m.recruiter_id is not None:
        raise Conflict(f"job {job_id}: machine {m.name} was deployed by recruiter {m.recruiter_id}, which deploys "
                       "again by itself (after a pause of 30 s doubling up to 15 min; updating the recruiter ends "
                       "the pause)", job_id=job_id, recruiter_id=m.recruiter_id)
    name = machine_name(m.batch or "worker")
    again = request_machines(tx, [name], m.provider, m.region, m.flavor, m.price, m.batch, m.concurrency, m.prefetch,
                             caps.get(m.provider, Caps()), actor)
    return {"job": None, "machine": again[0]}


def update_machine(tx: Tx, machine_id: int, status: str | None = None, **fields: Any) -> RentedMachine:
    """Move a machine on (checked transition); `fields`: instance_id, address, worker_id, message."""
    m = machine(tx, machine_id)
    new = MachineStatus(status) if status is not None else MachineStatus(m.status)
    check_machine_transition(m.name, m.status, new)
    values = {k: fields.get(k, getattr(m, k)) for k in ("instance_id", "address", "worker_id", "message")}
    # a failed machine was given back too (its deploy destroys what it created): spend stops there
    ended = new in (MachineStatus.DESTROYED, MachineStatus.FAILED) and m.destroyed is None
    destroyed = tx.now if ended else m.destroyed
    tx.run("machine_update", id=machine_id, status=new.value, now=tx.now, destroyed=destroyed, **values)
    if new.value != m.status:
        admin.event(tx, f"machine.{new.value}", f"machine:{m.name}", {"message": values["message"]}
                    if values["message"] else None, None)
    return machine(tx, machine_id)


def attach_worker(tx: Tx, machine_id: int, worker_id: int, concurrency: int, prefetch: int) -> RentedMachine:
    """The machine's worker registered: it is a rented (non-permanent) worker of the machine's
    batch, flavor and provider, at the recruiter's concurrency."""
    m = machine(tx, machine_id)
    tx.run("worker_set_machine", id=worker_id, provider=m.provider, region=m.region, flavor=m.flavor,
           batch_id=tx.value("batch_id_by_name", name=m.batch) if m.batch else None, concurrency=concurrency,
           prefetch=prefetch, now=tx.now)
    return update_machine(tx, machine_id, MachineStatus.RUNNING.value, worker_id=worker_id)


def machine_gone(tx: Tx, machine_id: int, evicted: bool) -> list[int]:
    """The provider no longer has this machine (destroyed behind scitq's back, or a spot
    eviction): its worker is lost (evicted), its executions end as such and their tasks are
    requeued without spending a retry; the machine is destroyed. Returns the executions ended."""
    from ..models import ExecutionStatus, FailureClass
    from . import protocol
    from .tasks import lock_ended
    m = machine(tx, machine_id)
    ended = []
    if m.worker_id is not None:
        fclass = FailureClass.EVICTED if evicted else FailureClass.LOST
        for task, e in lock_ended(tx, tx.all("worker_active_executions", worker_id=m.worker_id)):
            protocol.end_execution(tx, task, e, ExecutionStatus.FAILED, fclass, {},
                                   message=f"machine {m.name} {'evicted' if evicted else 'gone'} at {m.provider}")
            ended.append(int(e["id"]))
        tx.run("worker_set_status", id=m.worker_id, now=tx.now,
               status=(WorkerStatus.EVICTED if evicted else WorkerStatus.LOST).value)
    if m.status != MachineStatus.DESTROYING.value:
        update_machine(tx, machine_id, MachineStatus.DESTROYING.value)
    update_machine(tx, machine_id, MachineStatus.DESTROYED.value,
                   message="evicted by the provider" if evicted else "gone at the provider")
    return ended


def worker_destroyed(tx: Tx, worker_id: int) -> None:
    tx.run("worker_set_status", id=worker_id, status=WorkerStatus.DESTROYED.value, now=tx.now)


# --- what recruiting reads ----------------------------------------------------------------------
def demand(tx: Tx) -> dict[str, Any]:
    """Every batch's pending tasks; per batch with recruiters, its live workers and machines on
    their way."""
    recruiters = list_recruiters(tx)
    names = sorted({r.batch for r in recruiters})
    pending = {b.name: int(dict(b.counts).get("pending", 0)) for b in batches.batches(tx, None)}
    live = {int(r["batch_id"]): int(r["n"]) for r in tx.all("recruit_live_workers")}
    machines = list_machines(tx)
    return {"recruiters": recruiters, "pending": pending,
            "live": {b: live.get(batches.batch_id(tx, b), 0) for b in names},
            "coming": {b: sum(1 for m in machines if m.batch == b and m.status in ("requested", "creating",
                                                                                    "provisioning"))
                       for b in names},
            "machines": machines}


def idle_workers(tx: Tx) -> list[dict[str, Any]]:
    """Workers with nothing under way: id, name, batch_id, batch, permanent, provider, flavor,
    machine_id (when scitq rents their machine) and idle_since."""
    out = []
    for r in tx.all("recruit_idle_workers"):
        since = max(x for x in (r["last_finished"], r["machine_since"], r["created"]) if x is not None)
        out.append({**r, "idle_since": float(since)})
    return out
