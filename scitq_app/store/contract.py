"""The store contract: everything scitq keeps, and the only door to the database.

Every method that changes something is atomic: it applies all of its change or
none of it. Reads are not snapshot-consistent across their statements on
PostgreSQL (each statement sees the latest committed state). Unless
said otherwise, methods raise `NotFound` for an unknown id or name, `Conflict`
for a change the object's current status does not allow (nothing is applied
then), and `StoreUnavailable` when the database cannot be reached. Times are
epoch seconds taken from the store's clock (the server's, never a worker's).

Two backends implement it (SQLite and PostgreSQL); `tests/contract` runs one
suite against both.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..models import (ApiToken, Batch, Caps, Event, Execution, HostKey, Identity, Job, JobLogLine, OutputSlice,
                      Recruiter, RentedMachine, Task, Worker)


class Store:
    """Abstract store. Subclasses set `dialect` and implement every method."""

    dialect = "abstract"

    # --- schema -------------------------------------------------------------
    def schema_status(self) -> dict[str, Any]:
        """{'current': int, 'latest': int, 'pending': [migration names]}; current 0 = empty DB."""
        raise NotImplementedError

    def init_schema(self, on_admin_secret: Callable[[str], None] | None = None) -> int:
        """Create the current schema in an empty database; return its version.
        Raise Conflict if the database already has a schema (also when another process
        initialised it meanwhile: schema changes take turns on a database-wide lock).

        With `on_admin_secret` (every command that initialises a database passes it),
        the same transaction creates the first admin token, named `admin`, and hands its
        secret to the callback before committing: if the callback raises, nothing is
        created. Without it the schema has no token (tests, libraries)."""
        raise NotImplementedError

    def upgrade_schema(self, on_admin_secret: Callable[[str], None] | None = None) -> list[str]:
        """Apply pending migrations in order, each in its own transaction; return their names.
        On an empty database the first migration's transaction also creates the first admin
        token, exactly as `init_schema` does."""
        raise NotImplementedError

    def describe_schema(self) -> dict[str, Any]:
        """A normalised description of tables, columns and indexes (for migration tests)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""
        raise NotImplementedError

    # --- batches ------------------------------------------------------------
    def create_batch(self, name: str, priority: int = 0, actor: str | None = None) -> Batch:
        """Create a running batch. Conflict if the name is taken."""
        raise NotImplementedError

    def get_batch(self, name: str) -> Batch:
        """One batch with its task counts by status and its number of workers."""
        raise NotImplementedError

    def list_batches(self) -> list[Batch]:
        """All batches, by name, with counts by status and number of workers."""
        raise NotImplementedError

    def update_batch(self, name: str, priority: int, actor: str | None = None) -> Batch:
        raise NotImplementedError

    def set_batch_status(self, name: str, status: str, signal: str | None = None,
                         actor: str | None = None) -> Batch:
        """Pause, go (running) or stop a batch. Only a running batch's tasks are claimed.

        `signal` also acts on executions in progress: `pause` SIGSTOPs them (their
        tasks become paused), `resume` continues them, `term`/`kill` ends them (their
        tasks go back to pending without spending a retry). `go` resumes the
        batch's paused tasks. Each task is changed as `signal_task` would change it, on
        its locked row: finished and canceled tasks are never touched, uploads are not
        paused. Invalid for a worker-level signal (`clean`)."""
        raise NotImplementedError

    def delete_batch(self, name: str, actor: str | None = None) -> int:
        """Delete a batch's tasks (and the batch itself unless it is Default); return
        the number of tasks deleted. Conflict while any of its tasks is executing or
        is required by an unfinished task of another batch."""
        raise NotImplementedError

    # --- tasks --------------------------------------------------------------
    def create_tasks(self, specs: Sequence[Mapping[str, Any]], actor: str | None = None,
                     key: str | None = None, scope: str = "") -> list[int]:
        """Create tasks (validated dicts, see schema 'task_create'); return their ids in order.

        `key` makes the call idempotent within `scope` (the token that sent it): if
        tasks were already created with this key and the same specs, their ids are
        returned and nothing is created; with other specs it is a Conflict naming
        the key. The same key in another scope is another submission. Concurrent
        calls with one key create the tasks once.

        All or nothing. Missing batches are created. `requires` lists task ids, or
        the `ref` of another task in the same call; a task with unmet
        requirements is `waiting`, else `pending` (or `paused` if asked).
        NotFound for an unknown required id or ref; Invalid for a cycle among refs."""
        raise NotImplementedError

    def get_task(self, task_id: int) -> Task:
        raise NotImplementedError

    def list_tasks(self, *, batch: str | None = None, statuses: Sequence[str] | None = None,
                   name: str | None = None, ids: Sequence[int] | None = None, after: int = 0,
                   limit: int = 100) -> list[Task]:
        """Tasks by increasing id, after id `after` (keyset pagination)."""
        raise NotImplementedError

    def count_tasks(self, batch: str | None = None) -> dict[str, int]:
        """{status: number of tasks} for all tasks or one batch."""
        raise NotImplementedError

    def update_task(self, task_id: int, changes: Mapping[str, Any], actor: str | None = None) -> Task:
        """Edit a task. Definition fields (command, container, inputs, ...) may change
        only while no worker holds the task (Conflict otherwise); name, priority
        and max_retries may change at any time."""
        raise NotImplementedError

    def relaunch_task(self, task_id: int, actor: str | None = None) -> Task:
        """Send a finished (succeeded, failed, canceled) or paused task back to
        pending (waiting if its requirements are unmet), with a fresh retry budget.
        Conflict while a paused or canceled task's attempt has not ended yet."""
        raise NotImplementedError

    def delete_task(self, task_id: int, actor: str | None = None) -> None:
        """Delete a task, its executions and output. Conflict while it executes or
        while unfinished tasks require it."""
        raise NotImplementedError

    def signal_task(self, task_id: int, action: str, actor: str | None = None) -> Task:
        """pause / resume / stop / kill a task, queueing a signal for its worker if it
        is executing. stop and kill make it canceled; Conflict for a finished or
        canceled task, and for pausing an upload. If the canceled task's attempt then
        reports success (its command exited 0 before the stop reached it), the task
        is succeeded: the work is recorded, not run again."""
        raise NotImplementedError

    # --- executions and output ---------------------------------------------
    def list_executions(self, task_id: int) -> list[Execution]:
        """A task's executions, latest first."""
        raise NotImplementedError

    def get_execution(self, execution_id: int) -> Execution:
        raise NotImplementedError

    def read_output(self, execution_id: int, stream: str, offset: int = 0,
                    limit: int = 1 << 20) -> OutputSlice:
        """Up to `limit` bytes of a stream from `offset`; ranges the server did not
        keep are skipped and listed in `cuts`."""
        raise NotImplementedError

    # --- workers (people's side) -------------------------------------------
    def get_worker(self, worker_id: int) -> Worker:
        raise NotImplementedError

    def list_workers(self, batch: str | None = None, after: int = 0, limit: int | None = None) -> list[Worker]:
        """Workers in id order (of one batch, when given): those after id `after`, `limit` of
        them at most (None: all). Unknown batch: NotFound."""
        raise NotImplementedError

    def update_worker(self, worker_id: int, changes: Mapping[str, Any], actor: str | None = None) -> Worker:
        """Change concurrency, prefetch, batch (name or None) or status setting; the
        worker applies them at its next heartbeat."""
        raise NotImplementedError

    def delete_worker(self, worker_id: int, actor: str | None = None) -> None:
        """Forget a worker: its executions are fenced as lost (their tasks go back
        to pending without spending a retry) and its tokens stop working."""
        raise NotImplementedError

    def signal_worker(self, worker_id: int, action: str, actor: str | None = None) -> None:
        """Queue a worker-level signal (clean)."""
        raise NotImplementedError

    # --- the worker protocol ------------------------------------------------
    def register_worker(self, fields: Mapping[str, Any], actor: str | None = None,
                        identity: Identity | None = None) -> tuple[Worker, str]:
        """Create the worker, or re-attach one of the same name; return it and a new
        worker token (its previous tokens are revoked).

        `identity` is the caller's credential (None: an admin's, or open mode):
        - a `join` token spends exactly one use, in the same transaction (two
          registrations racing for its last use: one wins, the other is
          Unauthorized "this join token is used up or expired", also once it
          expired or was revoked); its pinned name must be `fields['name']`
          (Forbidden otherwise) and its pinned batch, if any, is the worker's batch;
        - a `worker` token may only register its own worker's name (Forbidden).
        One identity per live worker: registering the name of a worker whose status
        is not offline, lost, evicted or destroyed is a Conflict naming the worker
        and when it was last seen, unless the credential is that worker's own token.
        Nothing is spent or changed when registration is refused."""
        raise NotImplementedError

    def claim(self, worker_id: int, slots: int, lease: float, request_id: str | None = None
              ) -> list[dict[str, Any]]:
        """Atomically assign up to `slots` pending tasks to the worker, never more
        than its concurrency + prefetch allows, highest priority then oldest first,
        from running batches (and the worker's batch if it has one) whose needs fit
        its capacity. Each gets a new execution holding a frozen copy of the task,
        leased until now + `lease`. A task is never held by two current executions.
        Returns the executions' dicts (with task_name and batch).

        When nothing can be claimed the call writes nothing. A claim that repeats the
        `request_id` of an earlier one of the same worker (its reply was lost) returns
        the executions that one created, as they are now, and creates none."""
        raise NotImplementedError

    def has_claimable(self, worker_id: int) -> bool:
        """Cheap read-only check: could `claim` return something for this worker now?"""
        raise NotImplementedError

    def claimable_workers(self, worker_ids: Iterable[int]) -> set[int]:
        """`has_claimable` for many workers in one read: those among `worker_ids` that could
        claim something now (unknown ids are left out)."""
        raise NotImplementedError

    def announce_claimable(self) -> None:
        """Tell every server process on this database that tasks may have become claimable
        (a submission, a requeue, a freed slot), so that their long-polling claims look at
        once. Nothing on SQLite, which one server process serves."""
        raise NotImplementedError

    def listen_claimable(self, wake: Callable[[], None], stop: threading.Event,
                         listening: Callable[[bool], None]) -> None:
        """Call `wake` whenever a process announces claimable tasks (`announce_claimable`),
        until `stop` is set, on a database connection of its own (reopened when lost); calls
        `listening(True)` once it hears them, `listening(False)` when it lost the connection.
        Returns at once where announcements do not cross processes (SQLite)."""
        raise NotImplementedError

    def fleet_size(self) -> int:
        """The number of live workers (starting, running, paused or draining)."""
        raise NotImplementedError

    def heartbeat(self, worker_id: int, stats: Mapping[str, Any], execution_ids: Iterable[int],
                  acks: Iterable[int], lease: float) -> dict[str, Any]:
        """Record the worker alive and its stats; renew the leases of the listed
        executions it still legitimately holds; delete the acknowledged signals.
        Returns {'settings': {...}, 'signals': [...], 'fenced': [execution ids the
        worker must stop: no longer its current attempt]}."""
        raise NotImplementedError

    def heartbeat_reply(self, worker_id: int, execution_ids: Iterable[int], lease: float) -> dict[str, Any]:
        """The read half of `heartbeat`: settings, pending signals, fenced executions. Writes nothing."""
        raise NotImplementedError

    def record_heartbeats(self, beats: Sequence[Mapping[str, Any]], lease: float) -> None:
        """The write half of `heartbeat`, for many beats in one transaction. Each beat is
        {worker_id, stats, executions, acks, at}; `at` (the server time the beat arrived,
        default now) sets last_seen and the renewed leases (at + lease). Unknown workers
        and executions no longer theirs are skipped."""
        raise NotImplementedError

    def report(self, execution_id: int, worker_id: int | None, body: Mapping[str, Any]) -> Execution:
        """Apply a worker's report (schema 'report') to an execution and its task.

        Idempotent: a phase already reached is accepted without change. Fenced (409)
        when the execution is not its task's current attempt or was ended by the
        server (lost, timed out). A failed attempt sends the task back to pending
        while it has retries left for counted failure classes; a success releases
        the tasks that were waiting for it (and ends a canceled task succeeded)."""
        raise NotImplementedError

    def append_output(self, execution_id: int, worker_id: int | None, stream: str, offset: int,
                      data: bytes, final: bool, head: int, tail: int) -> int:
        """Store bytes of a stream at `offset`; idempotent by offset. Keeps at most
        `head` bytes from the start and `tail` bytes from the end. Fenced like
        `report`. Returns the stream size known to the server."""
        raise NotImplementedError

    def apply_outbox(self, worker_id: int | None, items: Sequence[tuple[str, int, Mapping[str, Any]]],
                     head: int, tail: int) -> list[Any]:
        """Apply a worker's buffered items — ("report", execution_id, body) or ("output",
        execution_id, {stream, offset, data: bytes, final}) — in order, in ONE transaction,
        returning each one's result (an Execution, or the stream size). All or nothing:
        the first refused item raises and nothing is applied (the caller then retries
        them one by one to learn which failed)."""
        raise NotImplementedError

    # --- dispatcher ---------------------------------------------------------
    def acquire_lock(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew the named singleton lock for `holder` until now + ttl.
        False when another holder's lock has not expired."""
        raise NotImplementedError

    def release_lock(self, name: str, holder: str) -> None:
        raise NotImplementedError

    def expire_leases(self) -> list[int]:
        """End executions whose lease expired as `lost` (their tasks back to
        pending, no retry spent); return their ids."""
        raise NotImplementedError

    def enforce_deadlines(self, grace: float) -> list[int]:
        """Fail as `timeout` the running executions past run_timeout + grace and
        signal their workers to kill them; return their ids."""
        raise NotImplementedError

    def release_waiting(self) -> int:
        """Move waiting tasks whose requirements all succeeded to pending; return how many.
        Looks at every waiting task: a repair, not a periodic duty (see release_after)."""
        raise NotImplementedError

    def prune(self, event_before: float, submission_before: float, batch: int = 500) -> dict[str, int]:
        """Delete up to `batch` events older than `event_before` and forget up to `batch`
        idempotency keys created before `submission_before` (their tasks stay; the key reused
        later creates new tasks), in short transactions; return {'events': n, 'submissions': n}.
        The dispatcher calls it until nothing is left. (Output goes with its task at once.)"""
        raise NotImplementedError

    def fold_task_counts(self) -> None:
        """Fold the task count changes recorded since the last fold into the counts (which
        stay exact without it: this keeps reading them cheap). The dispatcher's duty."""
        raise NotImplementedError

    def release_after(self, since: float) -> int:
        """Move to pending the waiting tasks whose requirements all succeeded, among those
        requiring a task that succeeded at `since` or later; return how many. A success
        releases its dependents itself; this repairs the release two concurrent successes
        can both miss (and a submission racing its requirement's success), at a cost that
        follows the completions, not the number of waiting tasks."""
        raise NotImplementedError

    def mark_offline(self, offline_after: float) -> list[int]:
        """Mark workers silent for `offline_after` seconds offline; return their ids."""
        raise NotImplementedError

    # --- tokens and events --------------------------------------------------
    def create_token(self, name: str, role: str, worker_id: int | None = None,
                     actor: str | None = None) -> tuple[ApiToken, str]:
        """Create a token; return it and its secret (shown once, stored hashed)."""
        raise NotImplementedError

    def create_join_token(self, uses: int = 1, ttl: float = 3600.0, batch: str | None = None,
                          name: str | None = None, actor: str | None = None) -> tuple[ApiToken, str]:
        """Create a join token (role `join`, named `join:HEX`): it registers at most
        `uses` workers (1..10000) until now + `ttl` seconds (1 s..30 days), in
        `batch` if given, and only under the worker name `name` if given. Return it
        and its secret (shown once, stored hashed). Invalid for uses or ttl out of range."""
        raise NotImplementedError

    def list_tokens(self) -> list[ApiToken]:
        """Every token, by id; join tokens carry uses_left, expires and their pins."""
        raise NotImplementedError

    def revoke_token(self, name: str, actor: str | None = None) -> ApiToken:
        """Revoke a token by name (again: no change). Conflict when it is the last
        unrevoked admin token: that would lock everyone out (checked in the revoking
        transaction, so two concurrent revocations cannot both pass)."""
        raise NotImplementedError

    def authenticate(self, secret: str) -> Identity | None:
        """The identity of a valid, unrevoked token, or None. A join token is valid
        only while unexpired with uses left; its Identity carries its pins."""
        raise NotImplementedError

    def flush_token_use(self) -> None:
        """Write the `last_used` times `authenticate` noted in memory (at most one a
        minute per token), in one transaction."""
        raise NotImplementedError

    def has_people_tokens(self) -> bool:
        """True when at least one unrevoked admin or user token exists."""
        raise NotImplementedError

    def record_event(self, kind: str, target: str | None, detail: Mapping[str, Any] | None = None,
                     actor: str | None = None) -> None:
        raise NotImplementedError

    def list_events(self, target: str | None = None, after: int = 0, limit: int = 100) -> list[Event]:
        raise NotImplementedError

    # --- recruitment ------------------------------------------------------------
    def create_recruiter(self, fields: Mapping[str, Any], actor: str | None = None) -> Recruiter:
        """A recruiter for fields['batch'] (created if missing) at fields['rank'] (Conflict when
        taken), with provider, flavor, region, tasks_per_worker, minimum_tasks, maximum_workers,
        concurrency and prefetch."""
        raise NotImplementedError

    def list_recruiters(self) -> list[Recruiter]:
        raise NotImplementedError

    def update_recruiter(self, recruiter_id: int, changes: Mapping[str, Any], actor: str | None = None) -> Recruiter:
        raise NotImplementedError

    def delete_recruiter(self, recruiter_id: int, actor: str | None = None) -> None:
        raise NotImplementedError

    def add_machine(self, name: str, provider: str, region: str, flavor: str, price: float, idem_key: str,
                    recruiter_id: int | None = None, batch: str | None = None, concurrency: int = 1,
                    prefetch: int = 0) -> RentedMachine:
        """Record a machine about to be created (status creating); Conflict on a name or key reused."""
        raise NotImplementedError

    def request_machines(self, names: Sequence[str], provider: str, region: str, flavor: str, price: float,
                         batch: str | None, concurrency: int, prefetch: int, caps: Caps,
                         actor: str | None = None) -> list[RentedMachine]:
        """Machines a person asks for (status requested: the dispatcher creates them), all or
        none: Conflict when `caps` leave no room for them all next to the provider's machines."""
        raise NotImplementedError

    def retry_job(self, job_id: int, caps: Mapping[str, Caps], actor: str | None = None) -> dict[str, Any]:
        """Do a failed job again where the server can: {job, machine} made (a pending destroy job
        on a machine still being given back; a new request like a failed deploy a person asked
        for). Conflict saying what retries it otherwise (recruiters, reconciliation, a command)."""
        raise NotImplementedError

    def update_machine(self, machine_id: int, status: str | None = None, **fields: Any) -> RentedMachine:
        """Move a machine along MACHINE_TRANSITIONS; fields: instance_id, address, worker_id, message."""
        raise NotImplementedError

    def attach_worker(self, machine_id: int, worker_id: int, concurrency: int, prefetch: int) -> RentedMachine:
        """The machine's worker registered: mark it rented (not permanent), in the machine's batch."""
        raise NotImplementedError

    def list_machines(self, everything: bool = False) -> list[RentedMachine]:
        """Machines rented now: not destroyed nor failed (all of them with `everything`)."""
        raise NotImplementedError

    def machine_gone(self, machine_id: int, evicted: bool = False) -> list[int]:
        """The provider no longer has the machine: its worker lost (or evicted), its executions
        ended so, their tasks requeued without spending retries; the machine destroyed."""
        raise NotImplementedError

    def worker_destroyed(self, worker_id: int) -> None:
        """Its machine is given back: the worker is destroyed (its name free again)."""
        raise NotImplementedError

    def recruit_demand(self) -> dict[str, Any]:
        """{recruiters, pending: {batch: n}, live: {batch: workers}, coming: {batch: machines on their
        way}, machines} for the batches that have recruiters."""
        raise NotImplementedError

    def idle_workers(self) -> list[dict[str, Any]]:
        """Workers with nothing under way, with idle_since and machine_id (None: not rented)."""
        raise NotImplementedError

    # --- jobs and host keys ---------------------------------------------------
    def create_job(self, kind: str, target: str, actor: str | None = None,
                   params: Mapping[str, Any] | None = None) -> Job:
        """A pending job of `kind` (provision...) on `target` (a host), started with `params`."""
        raise NotImplementedError

    def get_job(self, job_id: int) -> Job:
        raise NotImplementedError

    def list_jobs(self, status: str | None = None, after: int = 0, limit: int = 100) -> list[Job]:
        """Jobs by id after `after`, of one status if given."""
        raise NotImplementedError

    def update_job(self, job_id: int, status: str | None = None, step: str | None = None,
                   progress: float | None = None, message: str | None = None) -> Job:
        """Change what is given; the status only along JOB_TRANSITIONS, and nothing once the
        job has ended (Conflict). Progress is 0..1 (Invalid otherwise); success sets it to 1."""
        raise NotImplementedError

    def append_job_log(self, job_id: int, lines: Sequence[str]) -> int:
        """Append lines (numbered from 1, on the server's clock) to a job that has not ended;
        return how many it now has. Conflict once it has ended."""
        raise NotImplementedError

    def read_job_log(self, job_id: int, after: int = 0, limit: int = 1000) -> list[JobLogLine]:
        """A job's log lines numbered after `after`."""
        raise NotImplementedError

    def delete_job(self, job_id: int, actor: str | None = None) -> None:
        """Delete an ended job and its log (Conflict while it runs)."""
        raise NotImplementedError

    def trust_host_key(self, host: str, key_type: str, key_data: str, actor: str | None = None) -> HostKey:
        """Trust on first use, atomically: the key recorded for `host`, this one when none was.
        Conflict, naming both fingerprints, when another key is recorded."""
        raise NotImplementedError

    def get_host_key(self, host: str) -> HostKey:
        raise NotImplementedError

    def forget_host_key(self, host: str, actor: str | None = None) -> None:
        """Forget the key recorded for `host` (NotFound when none): the next contact trusts anew."""
        raise NotImplementedError
