"""`SqlStore`: the `Store` contract composed from a backend and the operation modules.

Each method opens one transaction on the backend (a write one when it changes anything)
and calls one operation function with it; deadlocks and serialization failures rerun the
whole transaction. Nothing here writes SQL or decides anything about tasks: that is in
`admin`, `batches`, `tasks`, `protocol` and `dispatcher`.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from ..models import (ApiToken, Batch, Caps, Event, Execution, HostKey, Identity, Job, JobLogLine, OutputSlice,
                      Recruiter, RentedMachine, Role, Task, Worker)
from . import admin, batches, dispatcher, jobs, protocol, recruit, tasks
from .backend import Backend, Tx
from .contract import Store

T = TypeVar("T")

LAST_USED_EVERY = 60.0  # seconds between two last_used writes for one token
# A worker token's identity is read again after this long at most: revocations, deletions and
# re-registrations reach every process sooner, through the epoch (EPOCH_EVERY); this bounds only
# changes made to the database behind scitq's back. Longer than the heartbeat period of a large
# fleet (25 s at 5,000 workers): with 30 s here, nearly every beat read its token again.
WORKER_TOKEN_CACHE_SECONDS = 600.0
PEOPLE_TOKEN_CACHE_SECONDS = 2.0
EPOCH_EVERY = 1.0  # seconds between two reads of the revocation epoch (one query, whatever the load)
RETRIES = 8


class SqlStore(Store):
    """The store over one SQL backend (SQLite or PostgreSQL)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.dialect = backend.dialect
        self.clock = backend.clock
        self._token_cache: dict[str, tuple[float, int, Identity | None]] = {}  # hash -> (at, epoch, identity)
        self._epoch = 0
        self._epoch_at = float("-inf")
        self._last_used: dict[int, float] = {}
        self._touched: dict[int, float] = {}  # token id -> last use not yet written
        self._touch_lock = threading.Lock()

    # --- transactions -------------------------------------------------------
    def _retryable(self, exc: BaseException) -> bool:
        return self.backend.retryable(exc)

    def _run(self, fn: Callable[[Tx], T], write: bool) -> T:
        for attempt in range(RETRIES):
            try:
                with self.backend.transaction(write) as tx:
                    return fn(tx)
            except Exception as exc:
                if attempt < RETRIES - 1 and self._retryable(exc):
                    # Deadlocks and serialization failures are normal under load: retry
                    # the whole transaction after a short, growing pause.
                    time.sleep(0.005 * (2 ** attempt))
                    continue
                raise
        raise AssertionError("unreachable")

    def _read(self, fn: Callable[[Tx], T]) -> T:
        return self._run(fn, write=False)

    def _write(self, fn: Callable[[Tx], T]) -> T:
        return self._run(fn, write=True)

    def close(self) -> None:
        self.backend.close()

    # --- schema -------------------------------------------------------------
    def schema_status(self) -> dict[str, Any]:
        return self._read(admin.schema_status)

    def init_schema(self, on_admin_secret: Callable[[str], None] | None = None) -> int:
        return self._write(lambda tx: admin.init_schema(tx, on_admin_secret))

    def upgrade_schema(self, on_admin_secret: Callable[[str], None] | None = None) -> list[str]:
        applied = []
        for version, name in admin.migrations():
            def step(tx: Tx, version: int = version, name: str = name) -> bool:
                return admin.apply_migration(tx, version, name, on_admin_secret)
            if self._write(step):
                admin.log.info("applied migration %s", name, extra={"action": "migrate"})
                applied.append(name)
        return applied

    def describe_schema(self) -> dict[str, Any]:
        return self._read(admin.describe_schema)

    # --- batches ------------------------------------------------------------
    def create_batch(self, name: str, priority: int = 0, actor: str | None = None) -> Batch:
        return self._write(lambda tx: batches.create_batch(tx, name, priority, actor))

    def get_batch(self, name: str) -> Batch:
        return self._read(lambda tx: batches.get_batch(tx, name))

    def list_batches(self) -> list[Batch]:
        return self._read(lambda tx: batches.batches(tx, None))

    def update_batch(self, name: str, priority: int, actor: str | None = None) -> Batch:
        return self._write(lambda tx: batches.update_batch(tx, name, priority, actor))

    def set_batch_status(self, name: str, status: str, signal: str | None = None,
                         actor: str | None = None) -> Batch:
        return self._write(lambda tx: tasks.set_batch_status(tx, name, status, signal, actor))

    def delete_batch(self, name: str, actor: str | None = None) -> int:
        return self._write(lambda tx: batches.delete_batch(tx, name, actor))

    # --- tasks --------------------------------------------------------------
    def create_tasks(self, specs: Sequence[Mapping[str, Any]], actor: str | None = None,
                     key: str | None = None, scope: str = "") -> list[int]:
        try:
            return self._write(lambda tx: tasks.create_tasks(tx, specs, actor, key, scope))
        except tasks.Resubmitted as e:  # rolled back: a concurrent first try of this request won
            return e.ids

    def get_task(self, task_id: int) -> Task:
        return self._read(lambda tx: tasks.get_task(tx, task_id))

    def list_tasks(self, *, batch: str | None = None, statuses: Sequence[str] | None = None,
                   name: str | None = None, ids: Sequence[int] | None = None, after: int = 0,
                   limit: int = 100) -> list[Task]:
        return self._read(lambda tx: tasks.list_tasks(tx, batch=batch, statuses=statuses, name=name, ids=ids,
                                                      after=after, limit=limit))

    def count_tasks(self, batch: str | None = None) -> dict[str, int]:
        return self._read(lambda tx: tasks.count_tasks(tx, batch))

    def update_task(self, task_id: int, changes: Mapping[str, Any], actor: str | None = None) -> Task:
        return self._write(lambda tx: tasks.update_task(tx, task_id, changes, actor))

    def relaunch_task(self, task_id: int, actor: str | None = None) -> Task:
        return self._write(lambda tx: tasks.relaunch_task(tx, task_id, actor))

    def delete_task(self, task_id: int, actor: str | None = None) -> None:
        self._write(lambda tx: tasks.delete_task(tx, task_id, actor))

    def signal_task(self, task_id: int, action: str, actor: str | None = None) -> Task:
        return self._write(lambda tx: tasks.signal_task(tx, task_id, action, actor))

    # --- executions and output ---------------------------------------------
    def list_executions(self, task_id: int) -> list[Execution]:
        return self._read(lambda tx: tasks.list_executions(tx, task_id))

    def get_execution(self, execution_id: int) -> Execution:
        return self._read(lambda tx: tasks.get_execution(tx, execution_id))

    def read_output(self, execution_id: int, stream: str, offset: int = 0,
                    limit: int = 1 << 20) -> OutputSlice:
        return self._read(lambda tx: tasks.read_output(tx, execution_id, stream, offset, limit))

    # --- workers (people's side) -------------------------------------------
    def get_worker(self, worker_id: int) -> Worker:
        return self._read(lambda tx: protocol.get_worker(tx, worker_id))

    def list_workers(self, batch: str | None = None, after: int = 0, limit: int | None = None) -> list[Worker]:
        return self._read(lambda tx: protocol.list_workers(tx, batch, after, limit))

    def update_worker(self, worker_id: int, changes: Mapping[str, Any], actor: str | None = None) -> Worker:
        return self._write(lambda tx: protocol.update_worker(tx, worker_id, changes, actor))

    def delete_worker(self, worker_id: int, actor: str | None = None) -> None:
        self._write(lambda tx: protocol.delete_worker(tx, worker_id, actor))
        self._forget_tokens()

    def signal_worker(self, worker_id: int, action: str, actor: str | None = None) -> None:
        self._write(lambda tx: protocol.signal_worker(tx, worker_id, action, actor))

    # --- the worker protocol ------------------------------------------------
    def register_worker(self, fields: Mapping[str, Any], actor: str | None = None,
                        identity: Identity | None = None) -> tuple[Worker, str]:
        registered = self._write(lambda tx: protocol.register_worker(tx, fields, actor, identity))
        self._forget_tokens()
        return registered

    def claim(self, worker_id: int, slots: int, lease: float, request_id: str | None = None
              ) -> list[dict[str, Any]]:
        # Idle workers claim often and mostly find nothing: that answer costs a read, no write
        # (no lock on the worker's row, no transaction on SQLite's single writer).
        prospect = self._read(lambda tx: protocol.claim_prospect(tx, worker_id, request_id))
        if prospect["retried"]:  # a retry whose reply was lost: what its first try gave
            return self._read(lambda tx: protocol.claimed_by_request(tx, worker_id, str(request_id)))
        if not protocol.could_claim(prospect):
            return []
        # (a retry racing its first try is answered by the write, which reads under the worker's lock)
        return self._write(lambda tx: protocol.claim(tx, worker_id, slots, lease, request_id, prospect))

    def has_claimable(self, worker_id: int) -> bool:
        return self._read(lambda tx: protocol.has_claimable(tx, worker_id))

    def claimable_workers(self, worker_ids: Iterable[int]) -> set[int]:
        return self._read(lambda tx: protocol.claimable_workers(tx, worker_ids))

    def announce_claimable(self) -> None:
        self.backend.announce("claimable_notify")

    def listen_claimable(self, wake: Callable[[], None], stop: threading.Event,
                         listening: Callable[[bool], None]) -> None:
        self.backend.listen("claimable_listen", wake, stop, listening)

    def fleet_size(self) -> int:
        return self._read(protocol.fleet_size)

    def heartbeat(self, worker_id: int, stats: Mapping[str, Any], execution_ids: Iterable[int],
                  acks: Iterable[int], lease: float) -> dict[str, Any]:
        return self._write(lambda tx: protocol.heartbeat(tx, worker_id, stats, execution_ids, acks, lease))

    def heartbeat_reply(self, worker_id: int, execution_ids: Iterable[int], lease: float) -> dict[str, Any]:
        return self._read(lambda tx: protocol.heartbeat_reply(tx, worker_id, execution_ids, lease))

    def record_heartbeats(self, beats: Sequence[Mapping[str, Any]], lease: float) -> None:
        self._write(lambda tx: protocol.record_heartbeats(tx, beats, lease))

    def report(self, execution_id: int, worker_id: int | None, body: Mapping[str, Any]) -> Execution:
        return self._write(lambda tx: protocol.report(tx, execution_id, worker_id, body))

    def append_output(self, execution_id: int, worker_id: int | None, stream: str, offset: int,
                      data: bytes, final: bool, head: int, tail: int) -> int:
        return self._write(lambda tx: protocol.append_output(tx, execution_id, worker_id, stream, offset, data,
                                                             final, head, tail))

    def apply_outbox(self, worker_id: int | None, items: Sequence[tuple[str, int, Mapping[str, Any]]],
                     head: int, tail: int) -> list[Any]:
        return self._write(lambda tx: protocol.apply_outbox(tx, worker_id, items, head, tail))

    # --- dispatcher ---------------------------------------------------------
    def acquire_lock(self, name: str, holder: str, ttl: float) -> bool:
        return self._write(lambda tx: admin.acquire_lock(tx, name, holder, ttl))

    def release_lock(self, name: str, holder: str) -> None:
        self._write(lambda tx: admin.release_lock(tx, name, holder))

    def expire_leases(self) -> list[int]:
        return self._write(dispatcher.expire_leases)

    def enforce_deadlines(self, grace: float) -> list[int]:
        return self._write(lambda tx: dispatcher.enforce_deadlines(tx, grace))

    def release_waiting(self) -> int:
        return self._write(dispatcher.release_waiting)

    def prune(self, event_before: float, submission_before: float, batch: int = 500) -> dict[str, int]:
        # Small transactions, each quick: pruning never holds the protocol's locks for long.
        done = {"events": self._write(lambda tx: dispatcher.prune_events(tx, event_before, batch)),
                "submissions": self._write(lambda tx: dispatcher.prune_submissions(tx, submission_before, batch))}
        if done["events"] or done["submissions"]:
            self.backend.reclaim_space()
        return done

    def fold_task_counts(self) -> None:
        self._write(dispatcher.fold_task_counts)

    def release_after(self, since: float) -> int:
        return self._write(lambda tx: dispatcher.release_after(tx, since))

    def mark_offline(self, offline_after: float) -> list[int]:
        return self._write(lambda tx: dispatcher.mark_offline(tx, offline_after))

    # --- tokens and events --------------------------------------------------
    def create_token(self, name: str, role: str, worker_id: int | None = None,
                     actor: str | None = None) -> tuple[ApiToken, str]:
        return self._write(lambda tx: admin.create_token(tx, name, role, worker_id, actor))

    def create_join_token(self, uses: int = 1, ttl: float = 3600.0, batch: str | None = None,
                          name: str | None = None, actor: str | None = None) -> tuple[ApiToken, str]:
        return self._write(lambda tx: admin.create_join_token(tx, uses, ttl, batch, name, actor))

    def list_tokens(self) -> list[ApiToken]:
        return self._read(admin.list_tokens)

    def revoke_token(self, name: str, actor: str | None = None) -> ApiToken:
        token = self._write(lambda tx: admin.revoke_token(tx, name, actor))
        self._forget_tokens()
        return token

    def has_people_tokens(self) -> bool:
        return self._read(admin.has_people_tokens)

    def record_event(self, kind: str, target: str | None, detail: Mapping[str, Any] | None = None,
                     actor: str | None = None) -> None:
        self._write(lambda tx: admin.event(tx, kind, target, detail, actor))

    def list_events(self, target: str | None = None, after: int = 0, limit: int = 100) -> list[Event]:
        return self._read(lambda tx: admin.list_events(tx, target, after, limit))

    # --- recruitment ------------------------------------------------------------
    def create_recruiter(self, fields: Mapping[str, Any], actor: str | None = None) -> Recruiter:
        return self._write(lambda tx: recruit.create_recruiter(tx, fields, actor))

    def list_recruiters(self) -> list[Recruiter]:
        return self._read(recruit.list_recruiters)

    def update_recruiter(self, recruiter_id: int, changes: Mapping[str, Any], actor: str | None = None) -> Recruiter:
        return self._write(lambda tx: recruit.update_recruiter(tx, recruiter_id, changes, actor))

    def delete_recruiter(self, recruiter_id: int, actor: str | None = None) -> None:
        self._write(lambda tx: recruit.delete_recruiter(tx, recruiter_id, actor))

    def add_machine(self, name: str, provider: str, region: str, flavor: str, price: float, idem_key: str,
                    recruiter_id: int | None = None, batch: str | None = None, concurrency: int = 1,
                    prefetch: int = 0) -> RentedMachine:
        return self._write(lambda tx: recruit.add_machine(tx, name, provider, region, flavor, price, idem_key,
                                                          recruiter_id, batch, concurrency, prefetch))

    def request_machines(self, names: Sequence[str], provider: str, region: str, flavor: str, price: float,
                         batch: str | None, concurrency: int, prefetch: int, caps: Caps,
                         actor: str | None = None) -> list[RentedMachine]:
        return self._write(lambda tx: recruit.request_machines(tx, names, provider, region, flavor, price, batch,
                                                               concurrency, prefetch, caps, actor))

    def retry_job(self, job_id: int, caps: Mapping[str, Caps], actor: str | None = None) -> dict[str, Any]:
        return self._write(lambda tx: recruit.retry_job(tx, job_id, caps, actor))

    def update_machine(self, machine_id: int, status: str | None = None, **fields: Any) -> RentedMachine:
        return self._write(lambda tx: recruit.update_machine(tx, machine_id, status, **fields))

    def attach_worker(self, machine_id: int, worker_id: int, concurrency: int, prefetch: int) -> RentedMachine:
        return self._write(lambda tx: recruit.attach_worker(tx, machine_id, worker_id, concurrency, prefetch))

    def list_machines(self, everything: bool = False) -> list[RentedMachine]:
        return self._read(lambda tx: recruit.list_machines(tx, everything))

    def machine_gone(self, machine_id: int, evicted: bool = False) -> list[int]:
        return self._write(lambda tx: recruit.machine_gone(tx, machine_id, evicted))

    def worker_destroyed(self, worker_id: int) -> None:
        self._write(lambda tx: recruit.worker_destroyed(tx, worker_id))

    def recruit_demand(self) -> dict[str, Any]:
        return self._read(recruit.demand)

    def idle_workers(self) -> list[dict[str, Any]]:
        return self._read(recruit.idle_workers)

    # --- jobs and host keys ---------------------------------------------------
    def create_job(self, kind: str, target: str, actor: str | None = None,
                   params: Mapping[str, Any] | None = None) -> Job:
        return self._write(lambda tx: jobs.create_job(tx, kind, target, actor, params))

    def get_job(self, job_id: int) -> Job:
        return self._read(lambda tx: jobs.get_job(tx, job_id))

    def list_jobs(self, status: str | None = None, after: int = 0, limit: int = 100) -> list[Job]:
        return self._read(lambda tx: jobs.list_jobs(tx, status, after, limit))

    def update_job(self, job_id: int, status: str | None = None, step: str | None = None,
                   progress: float | None = None, message: str | None = None) -> Job:
        return self._write(lambda tx: jobs.update_job(tx, job_id, status, step, progress, message))

    def append_job_log(self, job_id: int, lines: Sequence[str]) -> int:
        return self._write(lambda tx: jobs.append_job_log(tx, job_id, lines))

    def read_job_log(self, job_id: int, after: int = 0, limit: int = 1000) -> list[JobLogLine]:
        return self._read(lambda tx: jobs.read_job_log(tx, job_id, after, limit))

    def delete_job(self, job_id: int, actor: str | None = None) -> None:
        self._write(lambda tx: jobs.delete_job(tx, job_id, actor))

    def trust_host_key(self, host: str, key_type: str, key_data: str, actor: str | None = None) -> HostKey:
        return self._write(lambda tx: jobs.trust_host_key(tx, host, key_type, key_data, actor))

    def get_host_key(self, host: str) -> HostKey:
        return self._read(lambda tx: jobs.get_host_key(tx, host))

    def forget_host_key(self, host: str, actor: str | None = None) -> None:
        self._write(lambda tx: jobs.forget_host_key(tx, host, actor))

    # --- authentication: a cache in front of the token table -----------------
    def _forget_tokens(self) -> None:
        """After this process revoked something (it bumped the epoch): drop the cache now, and
        read the epoch again at the next request."""
        self._token_cache.clear()
        self._epoch_at = float("-inf")

    def _token_epoch(self, now: float) -> int:
        """The revocation epoch, read from the database at most every EPOCH_EVERY seconds;
        the token cache is dropped when it changed."""
        if not 0 <= now - self._epoch_at < EPOCH_EVERY:
            epoch = self._read(admin.token_epoch)
            if epoch != self._epoch:
                self._token_cache.clear()
            self._epoch, self._epoch_at = epoch, now
        return self._epoch

    def authenticate(self, secret: str) -> Identity | None:
        if not secret.startswith(admin.TOKEN_PREFIX) or len(secret) > 200:
            return None
        now = self.clock()
        h = admin.hash_secret(secret)
        # Read before the token: an entry is only as fresh as the epoch known before its row
        # was read, so a revocation committed after that read drops it at the next poll.
        epoch = self._token_epoch(now)
        cached = self._token_cache.get(h)
        # Worker tokens are cached for many heartbeat periods, so thousands of heart-beating
        # workers do not cost a query each; people's tokens only briefly. A revocation
        # anywhere bumps the epoch, which drops every process's cache within EPOCH_EVERY.
        ident: Identity | None
        if cached is not None and cached[1] == epoch and 0 <= now - cached[0] < (
                WORKER_TOKEN_CACHE_SECONDS if cached[2] is not None and cached[2].role == Role.WORKER
                else PEOPLE_TOKEN_CACHE_SECONDS):
            ident = cached[2]
        else:
            ident = self._read(lambda tx: admin.identity_by_hash(tx, h))
            if len(self._token_cache) > 10_000:
                self._token_cache.clear()
            self._token_cache[h] = (now, epoch, ident)
        if ident is not None and ident.token_id is not None:
            with self._touch_lock:
                if now - self._last_used.get(ident.token_id, 0.0) > LAST_USED_EVERY:
                    self._last_used[ident.token_id] = now
                    self._touched[ident.token_id] = now
        return ident

    def flush_token_use(self) -> None:
        with self._touch_lock:
            touched, self._touched = self._touched, {}
        if touched:
            self._write(lambda tx: admin.touch_tokens(tx, touched))
