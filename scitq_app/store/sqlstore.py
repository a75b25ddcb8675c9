"""What both SQL backends share: transactions over named queries, the schema
and its migrations, batches, tokens and events. Tasks live in `tasks.py`,
workers and the worker protocol in `protocol.py`; backends in `sqlite.py`
and `postgres.py` only supply connections and dialect details.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import secrets
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

from ..errors import Conflict, Invalid, NotFound, Unauthorized
from ..models import ApiToken, Batch, BatchStatus, Event, Identity, Role, SignalAction
from . import queries
from .contract import Store

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_BATCH = "Default"
FIRST_ADMIN = "admin"  # the admin token the initialisation of a database creates
TOKEN_PREFIX = "scitq_"
JOIN_PREFIX = TOKEN_PREFIX + "join_"  # join secrets say what they are, for people and the worker
MAX_JOIN_USES = 10_000
MAX_JOIN_TTL = 30 * 86400.0
LAST_USED_EVERY = 60.0  # seconds between two last_used writes for one token
WORKER_TOKEN_CACHE_SECONDS = 30.0
PEOPLE_TOKEN_CACHE_SECONDS = 2.0
EPOCH_EVERY = 1.0  # seconds between two reads of the revocation epoch (one query, whatever the load)


# A batch's signal to its executing tasks, as the per-task action it applies: term and kill
# interrupt the attempt without canceling the task (its canceled report requeues it).
_BATCH_ACTIONS = {SignalAction.PAUSE: "pause", SignalAction.RESUME: "resume", SignalAction.TERM: "stop",
                  SignalAction.KILL: "kill"}


def hash_secret(secret: str) -> str:
    # Tokens are 256-bit random strings: a fast hash is enough, no salt needed.
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class Tx:
    """One open transaction. Backends implement `_execute`, `insert` and `many`."""

    def __init__(self, sql: Mapping[str, str], now: float) -> None:
        self.sql = sql
        self.now = now

    def _execute(self, name: str, params: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int]:
        raise NotImplementedError

    def all(self, name: str, /, **params: Any) -> list[dict[str, Any]]:
        return self._execute(name, params)[0]

    def one(self, name: str, /, **params: Any) -> dict[str, Any] | None:
        rows = self._execute(name, params)[0]
        return rows[0] if rows else None

    def value(self, name: str, /, **params: Any) -> Any:
        row = self.one(name, **params)
        return None if row is None else next(iter(row.values()))

    def run(self, name: str, /, **params: Any) -> int:
        """Execute; return the number of rows changed."""
        return self._execute(name, params)[1]

    def insert(self, name: str, /, **params: Any) -> int:
        """Execute an INSERT of one row; return its new id."""
        raise NotImplementedError

    def many(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Execute one statement per row, as fast as the backend allows."""
        raise NotImplementedError

    def reserve_ids(self, table: str, n: int) -> list[int]:
        """n fresh ids for explicit inserts into `table` (task or execution)."""
        raise NotImplementedError

    def script(self, text: str) -> None:
        """Run DDL statements."""
        raise NotImplementedError


def write(fn: F) -> F:
    """Run the method in a write transaction, passing it the Tx after self."""
    @functools.wraps(fn)
    def wrapper(self: "SqlStore", *args: Any, **kwargs: Any) -> Any:
        return self._run(lambda tx: fn(self, tx, *args, **kwargs), write=True)
    return wrapper  # type: ignore[return-value]


def read(fn: F) -> F:
    """Run the method in a read-only transaction, passing it the Tx after self."""
    @functools.wraps(fn)
    def wrapper(self: "SqlStore", *args: Any, **kwargs: Any) -> Any:
        return self._run(lambda tx: fn(self, tx, *args, **kwargs), write=False)
    return wrapper  # type: ignore[return-value]


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class SqlStore(Store):
    """Shared implementation; subclasses provide `_transaction` and `_retryable`."""

    dialect = "sql"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.sql = queries.load(self.dialect)
        self._token_cache: dict[str, tuple[float, int, Identity | None]] = {}  # hash -> (at, epoch, identity)
        self._epoch = 0
        self._epoch_at = float("-inf")
        self._last_used: dict[int, float] = {}
        self._touched: dict[int, float] = {}  # token id -> last use not yet written
        self._touch_lock = threading.Lock()

    # --- transactions -------------------------------------------------------
    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Tx]:
        raise NotImplementedError
        yield  # pragma: no cover

    def _retryable(self, exc: BaseException) -> bool:
        return False

    def _run(self, fn: Callable[[Tx], Any], write: bool) -> Any:
        for attempt in range(8):
            try:
                with self._transaction(write) as tx:
                    return fn(tx)
            except Exception as exc:
                if attempt < 7 and self._retryable(exc):
                    # Deadlocks and serialization failures are normal under load: retry
                    # the whole transaction after a short, growing pause.
                    time.sleep(0.005 * (2 ** attempt))
                    continue
                raise
        raise AssertionError("unreachable")

    # --- schema -------------------------------------------------------------
    def _migrations(self) -> list[tuple[int, str]]:
        out = []
        for fname in queries.list_resources("sql", "migrations"):
            if fname.endswith(".sql"):
                out.append((int(fname.split("_", 1)[0]), fname[:-4]))
        return sorted(out)

    def _current_version(self, tx: Tx) -> int:
        if not tx.value("schema_has_versions"):
            return 0
        return int(tx.value("schema_version") or 0)

    @read
    def schema_status(self, tx: Tx) -> dict[str, Any]:
        current = self._current_version(tx)
        migrations = self._migrations()
        return {"current": current, "latest": migrations[-1][0] if migrations else 0,
                "pending": [name for v, name in migrations if v > current], "dialect": self.dialect}

    def init_schema(self, on_admin_secret: Callable[[str], None] | None = None) -> int:
        def do(tx: Tx) -> int:
            tx.run("schema_lock")
            if self._current_version(tx) or tx.value("schema_table_count"):
                raise Conflict("the database already has tables: use `db upgrade` or an empty database")
            tx.script(queries.ddl(queries.read_resource("sql", "schema.sql"), self.dialect))
            tx.script(queries.ddl(queries.read_resource("sql", "versions.sql"), self.dialect))
            for version, name in self._migrations():
                tx.run("schema_record", version=version, name=name, now=tx.now)
            self._ensure_default(tx)
            self._first_admin(tx, on_admin_secret)
            return self._migrations()[-1][0]
        return self._run(do, write=True)

    def upgrade_schema(self, on_admin_secret: Callable[[str], None] | None = None) -> list[str]:
        applied = []
        for version, name in self._migrations():
            def step(tx: Tx, version: int = version, name: str = name) -> bool:
                tx.run("schema_lock")
                current = self._current_version(tx)
                if current >= version:
                    return False
                if current == 0 and tx.value("schema_table_count"):
                    raise Conflict("the database has tables but no scitq schema version: use an empty database")
                tx.script(queries.ddl(queries.read_resource("sql", "versions.sql"), self.dialect))
                tx.script(queries.ddl(queries.read_resource("sql", "migrations", name + ".sql"), self.dialect))
                tx.run("schema_record", version=version, name=name, now=tx.now)
                self._ensure_default(tx)
                if current == 0:  # this transaction initialises the database: same as init_schema
                    self._first_admin(tx, on_admin_secret)
                return True
            if self._run(step, write=True):
                log.info("applied migration %s", name, extra={"action": "migrate"})
                applied.append(name)
        return applied

    @read
    def describe_schema(self, tx: Tx) -> dict[str, Any]:
        tables: dict[str, Any] = {}
        for row in tx.all("schema_columns"):
            t = tables.setdefault(row["tbl"], {"columns": [], "indexes": []})
            t["columns"].append((row["col"], str(row["type"]).upper(), bool(row["notnull"]),
                                 None if row["dflt"] is None else str(row["dflt"])))
        for row in tx.all("schema_indexes"):
            if row["tbl"] in tables:
                tables[row["tbl"]]["indexes"].append(" ".join(str(row["definition"]).split()))
        for t in tables.values():
            t["columns"].sort()
            t["indexes"].sort()
        return tables

    def _first_admin(self, tx: Tx, on_admin_secret: Callable[[str], None] | None) -> None:
        """The admin token of a database being initialised, in the initialising transaction:
        two processes initialising one database cannot both make one. The callback
        stores the secret (a file) before the commit, so a secret it cannot keep rolls
        everything back instead of leaving a database nobody can use."""
        if on_admin_secret is None:
            return
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        # token_insert's columns exist since the first migration, which may be this one
        tx.insert("token_insert", name=FIRST_ADMIN, role=Role.ADMIN.value, hash=hash_secret(secret), worker_id=None,
                  now=tx.now)
        self._event(tx, "token.create", f"token:{FIRST_ADMIN}", {"role": Role.ADMIN.value, "first": True}, "scitq")
        on_admin_secret(secret)

    def _ensure_default(self, tx: Tx) -> None:
        if tx.value("batch_id_by_name", name=DEFAULT_BATCH) is None:
            tx.insert("batch_insert", name=DEFAULT_BATCH, status=BatchStatus.RUNNING.value, priority=0,
                      now=tx.now)

    # --- events -------------------------------------------------------------
    def _event(self, tx: Tx, kind: str, target: str | None, detail: Mapping[str, Any] | None,
               actor: str | None) -> None:
        tx.run("event_insert", now=tx.now, actor=actor, kind=kind, target=target,
               detail=dumps(detail) if detail else None)

    @write
    def record_event(self, tx: Tx, kind: str, target: str | None, detail: Mapping[str, Any] | None = None,
                     actor: str | None = None) -> None:
        self._event(tx, kind, target, detail, actor)

    @read
    def list_events(self, tx: Tx, target: str | None = None, after: int = 0, limit: int = 100) -> list[Event]:
        return [Event.from_row(r) for r in tx.all("event_list", target=target, after=after, limit=limit)]

    # --- batches ------------------------------------------------------------
    def _batch_row(self, tx: Tx, name: str) -> dict[str, Any]:
        row = tx.one("batch_by_name", name=name)
        if row is None:
            raise NotFound(f"no batch named {name!r}", batch=name)
        return row

    def _batch_id(self, tx: Tx, name: str, create: bool = False) -> int:
        bid = tx.value("batch_id_by_name", name=name)
        if bid is None:
            if not create:
                raise NotFound(f"no batch named {name!r}", batch=name)
            # Submissions racing to create one batch: the losers' inserts wait for the
            # winner's commit and do nothing, then all read the same row (no 409).
            tx.run("batch_insert_missing", name=name, status=BatchStatus.RUNNING.value, priority=0, now=tx.now)
            bid = tx.value("batch_id_by_name", name=name)
        return int(bid)

    def _batches(self, tx: Tx, name: str | None) -> list[Batch]:
        rows = tx.all("batch_list", name=name)
        counts: dict[int, dict[str, int]] = {}
        for r in tx.all("batch_counts", name=name):
            counts.setdefault(r["batch_id"], {})[r["status"]] = int(r["n"])
        return [Batch.from_row(r, counts=counts.get(r["id"], {}), workers=int(r["workers"])) for r in rows]

    @write
    def create_batch(self, tx: Tx, name: str, priority: int = 0, actor: str | None = None) -> Batch:
        if tx.value("batch_id_by_name", name=name) is not None:
            raise Conflict(f"batch {name!r} already exists", batch=name)
        tx.insert("batch_insert", name=name, status=BatchStatus.RUNNING.value, priority=priority, now=tx.now)
        self._event(tx, "batch.create", f"batch:{name}", {"priority": priority}, actor)
        return self._batches(tx, name)[0]

    @read
    def get_batch(self, tx: Tx, name: str) -> Batch:
        self._batch_row(tx, name)
        return self._batches(tx, name)[0]

    @read
    def list_batches(self, tx: Tx) -> list[Batch]:
        return self._batches(tx, None)

    @write
    def update_batch(self, tx: Tx, name: str, priority: int, actor: str | None = None) -> Batch:
        self._batch_row(tx, name)
        tx.run("batch_set_priority", name=name, priority=priority, now=tx.now)
        self._event(tx, "batch.update", f"batch:{name}", {"priority": priority}, actor)
        return self._batches(tx, name)[0]

    @write
    def set_batch_status(self, tx: Tx, name: str, status: str, signal: str | None = None,
                         actor: str | None = None) -> Batch:
        status = BatchStatus(status).value
        row = self._batch_row(tx, name)
        bid = row["id"]
        tx.run("batch_set_status", id=bid, status=status, now=tx.now)
        signal = None if signal in (None, "none") else SignalAction(signal).value
        if signal is not None and SignalAction(signal) not in _BATCH_ACTIONS:
            raise Invalid(f"a batch cannot be sent {signal!r}", field="signal")
        if status == BatchStatus.RUNNING.value:
            # `go`: resume everything the batch holds paused.
            self._resume_batch_tasks(tx, bid)
        elif signal is not None:
            self._signal_batch(tx, bid, signal)
        self._event(tx, f"batch.{ {'running': 'go', 'paused': 'pause', 'stopped': 'stop'}[status] }",
                    f"batch:{name}", {"signal": signal} if signal else None, actor)
        return self._batches(tx, name)[0]

    def _signal_batch(self, tx: Tx, batch_id: int, action: str) -> None:
        # The batch's executing tasks, each changed by the per-task logic (the transition
        # check included) on rows locked tasks first, then executions, as every writer does:
        # the candidate list is read without locks and may be stale by the time a row is
        # locked (a report committed in between), so each row is judged as locked.
        ids = [int(r["id"]) for r in tx.all("batch_executing_tasks", batch_id=batch_id)]
        for row, execution in self._lock_with_executions(tx, ids):
            if execution is not None:  # queued tasks: the batch's status already keeps them unclaimed
                self._control(tx, row, execution, _BATCH_ACTIONS[SignalAction(action)], batch=True)

    def _resume_batch_tasks(self, tx: Tx, batch_id: int) -> None:
        ids = [int(r["id"]) for r in tx.all("batch_paused_tasks", batch_id=batch_id)]
        for row, execution in self._lock_with_executions(tx, ids):
            self._control(tx, row, execution, "resume", batch=True)

    @write
    def delete_batch(self, tx: Tx, name: str, actor: str | None = None) -> int:
        bid = self._batch_row(tx, name)["id"]
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
        if name != DEFAULT_BATCH:
            tx.run("batch_unset_workers", batch_id=bid, now=tx.now)
            tx.run("batch_delete", id=bid)
        self._event(tx, "batch.delete", f"batch:{name}", {"tasks": n}, actor)
        return n

    # implemented in tasks.py
    def _lock_with_executions(self, tx: Tx, task_ids: Sequence[int]
                              ) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
        raise NotImplementedError

    def _control(self, tx: Tx, row: Mapping[str, Any], execution: Mapping[str, Any] | None, action: str,
                 batch: bool = False) -> bool:
        raise NotImplementedError

    # --- tokens -------------------------------------------------------------
    def _new_token(self, tx: Tx, name: str, role: str, worker_id: int | None) -> tuple[ApiToken, str]:
        role = Role(role).value
        if tx.value("token_id_by_name", name=name) is not None:
            raise Conflict(f"a token named {name!r} already exists", token=name)
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        tid = tx.insert("token_insert", name=name, role=role, hash=hash_secret(secret), worker_id=worker_id,
                        now=tx.now)
        return ApiToken.from_row(tx.one("token_by_id", id=tid) or {}), secret

    @write
    def create_token(self, tx: Tx, name: str, role: str, worker_id: int | None = None,
                     actor: str | None = None) -> tuple[ApiToken, str]:
        if role == Role.WORKER.value and worker_id is None:
            raise Invalid("worker tokens are issued by worker registration", field="role")
        if role == Role.JOIN.value:
            raise Invalid("join tokens are made by create_join_token (they have uses and an expiry)", field="role")
        if worker_id is not None and tx.one("worker_get", id=worker_id) is None:
            raise NotFound(f"no worker {worker_id}", worker_id=worker_id)
        token, secret = self._new_token(tx, name, role, worker_id)
        self._event(tx, "token.create", f"token:{name}", {"role": role}, actor)
        return token, secret

    @write
    def create_join_token(self, tx: Tx, uses: int = 1, ttl: float = 3600.0, batch: str | None = None,
                          name: str | None = None, actor: str | None = None) -> tuple[ApiToken, str]:
        if isinstance(uses, bool) or not isinstance(uses, int) or not 1 <= uses <= MAX_JOIN_USES:
            raise Invalid(f"must be an integer from 1 to {MAX_JOIN_USES}", field="uses")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 1 <= ttl <= MAX_JOIN_TTL:
            raise Invalid(f"must be from 1 to {MAX_JOIN_TTL:.0f} seconds (30 days)", field="ttl")
        token_name = f"join:{secrets.token_hex(4)}"
        while tx.value("token_id_by_name", name=token_name) is not None:
            token_name = f"join:{secrets.token_hex(4)}"
        secret = JOIN_PREFIX + secrets.token_urlsafe(32)
        tid = tx.insert("token_insert_join", name=token_name, hash=hash_secret(secret), now=tx.now, uses=uses,
                        expires=tx.now + float(ttl), batch=batch, pinned_name=name)
        self._event(tx, "token.create", f"token:{token_name}",
                    {"role": Role.JOIN.value, "uses": uses, "ttl": ttl, "batch": batch, "name": name}, actor)
        return ApiToken.from_row(tx.one("token_by_id", id=tid) or {}), secret

    def _spend_join_use(self, tx: Tx, ident: Identity) -> None:
        """Spend one use of a join token in this transaction, or refuse (401)."""
        if not tx.run("token_use_join", id=ident.token_id, now=tx.now):
            raise Unauthorized("this join token is used up or expired", token=ident.name)

    @read
    def list_tokens(self, tx: Tx) -> list[ApiToken]:
        return [ApiToken.from_row(r) for r in tx.all("token_list")]

    @write
    def revoke_token(self, tx: Tx, name: str, actor: str | None = None) -> ApiToken:
        row = tx.one("token_by_name", name=name)
        if row is None:
            raise NotFound(f"no token named {name!r}", token=name)
        if row["revoked"] is None:
            if row["role"] == Role.ADMIN.value:
                admins = [int(r["id"]) for r in tx.all("token_admins_lock")]
                if admins == [int(row["id"])]:
                    raise Conflict(f"token {name!r} is the last admin token: revoking it would lock everyone out. "
                                   "Create another first (`scitq token create --role admin NAME` on the server "
                                   "host), then revoke this one", token=name)
            tx.run("token_revoke", id=row["id"], now=tx.now)
            self._event(tx, "token.revoke", f"token:{name}", None, actor)
        self._revoked(tx)
        return ApiToken.from_row(tx.one("token_by_id", id=row["id"]) or {})

    def _revoked(self, tx: Tx) -> None:
        """Make a revocation in `tx` (a token revoked, a worker's tokens deleted or replaced)
        visible to every process: each polls the epoch this bumps and drops its cache."""
        tx.run("token_epoch_bump")
        self._token_cache.clear()
        self._epoch_at = float("-inf")  # this process: read the epoch again at the next request

    def _token_epoch(self, now: float) -> int:
        """The revocation epoch, read from the database at most every EPOCH_EVERY seconds;
        the token cache is dropped when it changed."""
        if not 0 <= now - self._epoch_at < EPOCH_EVERY:
            epoch = int(self._run(lambda tx: tx.value("token_epoch_get") or 0, write=False))
            if epoch != self._epoch:
                self._token_cache.clear()
            self._epoch, self._epoch_at = epoch, now
        return self._epoch

    def authenticate(self, secret: str) -> Identity | None:
        if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
            return None
        now = self.clock()
        h = hash_secret(secret)
        # Read before the token: an entry is only as fresh as the epoch known before its row
        # was read, so a revocation committed after that read drops it at the next poll.
        epoch = self._token_epoch(now)
        cached = self._token_cache.get(h)
        # Worker tokens are cached for several heartbeat periods, so 2,000 heart-beating
        # workers do not cost a query each; people's tokens only briefly. A revocation
        # anywhere bumps the epoch, which drops every process's cache within EPOCH_EVERY.
        if cached is not None and cached[1] == epoch and 0 <= now - cached[0] < (
                WORKER_TOKEN_CACHE_SECONDS if cached[2] is not None and cached[2].role == Role.WORKER
                else PEOPLE_TOKEN_CACHE_SECONDS):
            ident = cached[2]
        else:
            row = self._run(lambda tx: tx.one("token_by_hash", hash=h), write=False)
            ident = None
            if row is not None and row["revoked"] is None and (
                    row["role"] != Role.JOIN.value or (int(row["uses_left"] or 0) > 0 and
                                                      row["expires"] is not None and row["expires"] > now)):
                ident = Identity(row["name"], Role(row["role"]), row["worker_id"], token_id=int(row["id"]),
                                 pinned_batch=row["pinned_batch"], pinned_name=row["pinned_name"])
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
            self._run(lambda tx: tx.many("token_touch", [{"id": i, "now": t} for i, t in touched.items()]),
                      write=True)

    @read
    def has_people_tokens(self, tx: Tx) -> bool:
        return bool(tx.value("token_people_count"))

    # --- dispatcher lock ----------------------------------------------------
    @write
    def acquire_lock(self, tx: Tx, name: str, holder: str, ttl: float) -> bool:
        # Both statements are atomic on their own: the insert loses quietly to a
        # concurrent one, and the update only takes a lock that is ours or expired.
        if tx.run("lock_insert", name=name, holder=holder, expires=tx.now + ttl):
            return True
        return tx.run("lock_take", name=name, holder=holder, expires=tx.now + ttl, now=tx.now) > 0

    @write
    def release_lock(self, tx: Tx, name: str, holder: str) -> None:
        tx.run("lock_delete", name=name, holder=holder)
