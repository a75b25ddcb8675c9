"""Batches: names, priorities, counts and deletion, as plain functions over a transaction.
(A batch's pause / go / stop changes its tasks: that is task control, in tasks.py.)"""
from __future__ import annotations

from typing import Any

from ..errors import Conflict, NotFound
from ..models import Batch, BatchStatus, machine_spend
from . import admin
from .backend import Tx


def batch_row(tx: Tx, name: str) -> dict[str, Any]:
    row = tx.one("batch_by_name", name=name)
    if row is None:
        raise NotFound(f"no batch named {name!r}", batch=name)
    return row


def batch_id(tx: Tx, name: str, create: bool = False) -> int:
    """The id of batch `name`; NotFound, or with `create` a new running batch."""
    bid = tx.value("batch_id_by_name", name=name)
    if bid is None:
        if not create:
            raise NotFound(f"no batch named {name!r}", batch=name)
        # Submissions racing to create one batch: the losers' inserts wait for the
        # winner's commit and do nothing, then all read the same row (no 409).
        tx.run("batch_insert_missing", name=name, status=BatchStatus.RUNNING.value, priority=0, now=tx.now)
        bid = tx.value("batch_id_by_name", name=name)
    return int(bid)


def batches(tx: Tx, name: str | None) -> list[Batch]:
    """Every batch (or the one named), with its task counts by status and number of workers."""
    rows = tx.all("batch_list", name=name)
    counts: dict[int, dict[str, int]] = {}
    for r in tx.all("batch_counts", name=name):
        if int(r["n"]):
            counts.setdefault(r["batch_id"], {})[r["status"]] = int(r["n"])
    spend: dict[int, float] = {}
    for m in tx.all("machine_costs"):
        if m["batch_id"] is not None:
            spend[m["batch_id"]] = spend.get(m["batch_id"], 0.0) + machine_spend(m["price"], m["created"],
                                                                                  m["destroyed"], tx.now)
    return [Batch.from_row(r, counts=counts.get(r["id"], {}), workers=int(r["workers"]),
                           spend=round(spend.get(r["id"], 0.0), 4)) for r in rows]


def create_batch(tx: Tx, name: str, priority: int, actor: str | None) -> Batch:
    if tx.value("batch_id_by_name", name=name) is not None:
        raise Conflict(f"batch {name!r} already exists", batch=name)
    tx.insert("batch_insert", name=name, status=BatchStatus.RUNNING.value, priority=priority, now=tx.now)
    admin.event(tx, "batch.create", f"batch:{name}", {"priority": priority}, actor)
    return batches(tx, name)[0]


def get_batch(tx: Tx, name: str) -> Batch:
    batch_row(tx, name)
    return batches(tx, name)[0]


def update_batch(tx: Tx, name: str, priority: int, actor: str | None) -> Batch:
    batch_row(tx, name)
    tx.run("batch_set_priority", name=name, priority=priority, now=tx.now)
    admin.event(tx, "batch.update", f"batch:{name}", {"priority": priority}, actor)
    return batches(tx, name)[0]


def delete_batch(tx: Tx, name: str, actor: str | None) -> int:
    bid = batch_row(tx, name)["id"]
    active = tx.value("batch_active_count", batch_id=bid)
    if active:
        raise Conflict(f"batch {name!r} has {active} executing task(s): stop it first", batch=name)
    # Like delete_task: deleting a requirement would silently release its dependents.
    dependents = [int(r["task_id"]) for r in tx.all("batch_outside_dependents", batch_id=bid)]
    if dependents:
        shown = ", ".join(map(str, dependents[:10])) + (" ..." if len(dependents) > 10 else "")
        raise Conflict(f"unfinished task(s) {shown} of other batches require tasks of batch {name!r}: "
                       "delete or stop those first", batch=name, dependents=dependents)
    n = tx.run("batch_delete_tasks", batch_id=bid)
    if name != admin.DEFAULT_BATCH:
        tx.run("batch_unset_workers", batch_id=bid, now=tx.now)
        tx.run("batch_delete", id=bid)
    admin.event(tx, "batch.delete", f"batch:{name}", {"tasks": n}, actor)
    return n
