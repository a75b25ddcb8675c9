"""The schema and its migrations, the audit log, API tokens and the dispatcher's lock:
plain functions over a transaction."""
from __future__ import annotations

import hashlib
import logging
import secrets
from typing import Any, Callable, Mapping

from ..errors import Conflict, Invalid, NotFound, Unauthorized
from ..models import ApiToken, BatchStatus, Event, Identity, Role
from . import queries
from .backend import Tx, dumps

log = logging.getLogger(__name__)

DEFAULT_BATCH = "Default"
FIRST_ADMIN = "admin"  # the admin token the initialisation of a database creates
TOKEN_PREFIX = "scitq_"
JOIN_PREFIX = TOKEN_PREFIX + "join_"  # join secrets say what they are, for people and the worker
MAX_JOIN_USES = 10_000
MAX_JOIN_TTL = 30 * 86400.0


def hash_secret(secret: str) -> str:
    # Tokens are 256-bit random strings: a fast hash is enough, no salt needed.
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


# --- schema -----------------------------------------------------------------
def migrations() -> list[tuple[int, str]]:
    """(version, name) of every migration shipped, in order."""
    out = []
    for fname in queries.list_resources("sql", "migrations"):
        if fname.endswith(".sql"):
            out.append((int(fname.split("_", 1)[0]), fname[:-4]))
    return sorted(out)


def current_version(tx: Tx) -> int:
    if not tx.value("schema_has_versions"):
        return 0
    return int(tx.value("schema_version") or 0)


def schema_status(tx: Tx) -> dict[str, Any]:
    current = current_version(tx)
    shipped = migrations()
    return {"current": current, "latest": shipped[-1][0] if shipped else 0,
            "pending": [name for v, name in shipped if v > current], "dialect": tx.dialect}


def init_schema(tx: Tx, on_admin_secret: Callable[[str], None] | None) -> int:
    tx.run("schema_lock")
    if current_version(tx) or tx.value("schema_table_count"):
        raise Conflict("the database already has tables: use `db upgrade` or an empty database")
    tx.script(queries.ddl(queries.read_resource("sql", "schema.sql"), tx.dialect))
    tx.script(queries.ddl(queries.read_resource("sql", "versions.sql"), tx.dialect))
    for version, name in migrations():
        tx.run("schema_record", version=version, name=name, now=tx.now)
    ensure_default_batch(tx)
    first_admin(tx, on_admin_secret)
    return migrations()[-1][0]


def apply_migration(tx: Tx, version: int, name: str, on_admin_secret: Callable[[str], None] | None) -> bool:
    """Apply one migration unless the database has it already; True if applied."""
    tx.run("schema_lock")
    current = current_version(tx)
    if current >= version:
        return False
    if current == 0 and tx.value("schema_table_count"):
        raise Conflict("the database has tables but no scitq schema version: use an empty database")
    tx.script(queries.ddl(queries.read_resource("sql", "versions.sql"), tx.dialect))
    tx.script(queries.ddl(queries.read_resource("sql", "migrations", name + ".sql"), tx.dialect))
    tx.run("schema_record", version=version, name=name, now=tx.now)
    ensure_default_batch(tx)
    if current == 0:  # this transaction initialises the database: same as init_schema
        first_admin(tx, on_admin_secret)
    return True


def describe_schema(tx: Tx) -> dict[str, Any]:
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


def first_admin(tx: Tx, on_admin_secret: Callable[[str], None] | None) -> None:
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
    event(tx, "token.create", f"token:{FIRST_ADMIN}", {"role": Role.ADMIN.value, "first": True}, "scitq")
    on_admin_secret(secret)


def ensure_default_batch(tx: Tx) -> None:
    if tx.value("batch_id_by_name", name=DEFAULT_BATCH) is None:
        tx.insert("batch_insert", name=DEFAULT_BATCH, status=BatchStatus.RUNNING.value, priority=0, now=tx.now)


# --- events -----------------------------------------------------------------
def event(tx: Tx, kind: str, target: str | None, detail: Mapping[str, Any] | None, actor: str | None) -> None:
    """Append to the audit log."""
    tx.run("event_insert", now=tx.now, actor=actor, kind=kind, target=target,
           detail=dumps(detail) if detail else None)


def list_events(tx: Tx, target: str | None, after: int, limit: int) -> list[Event]:
    if target is None:
        return [Event.from_row(r) for r in tx.all("event_list", after=after, limit=limit)]
    return [Event.from_row(r) for r in tx.all("event_list_target", target=target, after=after, limit=limit)]


# --- tokens -----------------------------------------------------------------
def new_token(tx: Tx, name: str, role: str, worker_id: int | None) -> tuple[ApiToken, str]:
    role = Role(role).value
    if tx.value("token_id_by_name", name=name) is not None:
        raise Conflict(f"a token named {name!r} already exists", token=name)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    tid = tx.insert("token_insert", name=name, role=role, hash=hash_secret(secret), worker_id=worker_id, now=tx.now)
    return ApiToken.from_row(tx.one("token_by_id", id=tid) or {}), secret


def create_token(tx: Tx, name: str, role: str, worker_id: int | None, actor: str | None) -> tuple[ApiToken, str]:
    if role == Role.WORKER.value and worker_id is None:
        raise Invalid("worker tokens are issued by worker registration", field="role")
    if role == Role.JOIN.value:
        raise Invalid("join tokens are made by create_join_token (they have uses and an expiry)", field="role")
    if worker_id is not None and tx.one("worker_get", id=worker_id) is None:
        raise NotFound(f"no worker {worker_id}", worker_id=worker_id)
    token, secret = new_token(tx, name, role, worker_id)
    event(tx, "token.create", f"token:{name}", {"role": role}, actor)
    return token, secret


def create_join_token(tx: Tx, uses: int, ttl: float, batch: str | None, name: str | None,
                      actor: str | None) -> tuple[ApiToken, str]:
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
    event(tx, "token.create", f"token:{token_name}",
          {"role": Role.JOIN.value, "uses": uses, "ttl": ttl, "batch": batch, "name": name}, actor)
    return ApiToken.from_row(tx.one("token_by_id", id=tid) or {}), secret


def spend_join_use(tx: Tx, ident: Identity) -> None:
    """Spend one use of a join token in this transaction, or refuse (401)."""
    if not tx.run("token_use_join", id=ident.token_id, now=tx.now):
        raise Unauthorized("this join token is used up or expired", token=ident.name)


def list_tokens(tx: Tx) -> list[ApiToken]:
    return [ApiToken.from_row(r) for r in tx.all("token_list")]


def revoke_token(tx: Tx, name: str, actor: str | None) -> ApiToken:
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
        event(tx, "token.revoke", f"token:{name}", None, actor)
    bump_epoch(tx)
    return ApiToken.from_row(tx.one("token_by_id", id=row["id"]) or {})


def bump_epoch(tx: Tx) -> None:
    """Make a revocation in `tx` (a token revoked, a worker's tokens deleted or replaced)
    visible to every process: each polls the epoch this bumps and drops its token cache."""
    tx.run("token_epoch_bump")


def token_epoch(tx: Tx) -> int:
    return int(tx.value("token_epoch_get") or 0)


def identity_by_hash(tx: Tx, h: str) -> Identity | None:
    """The identity of the valid, unrevoked token with this hash, or None."""
    row = tx.one("token_by_hash", hash=h)
    if row is None or row["revoked"] is not None:
        return None
    if row["role"] == Role.JOIN.value and not (int(row["uses_left"] or 0) > 0 and row["expires"] is not None
                                               and row["expires"] > tx.now):
        return None
    return Identity(row["name"], Role(row["role"]), row["worker_id"], token_id=int(row["id"]),
                    pinned_batch=row["pinned_batch"], pinned_name=row["pinned_name"])


def touch_tokens(tx: Tx, touched: Mapping[int, float]) -> None:
    tx.many("token_touch", [{"id": i, "now": t} for i, t in sorted(touched.items())])


def has_people_tokens(tx: Tx) -> bool:
    return bool(tx.value("token_people_count"))


# --- the dispatcher's lock --------------------------------------------------
def acquire_lock(tx: Tx, name: str, holder: str, ttl: float) -> bool:
    # Both statements are atomic on their own: the insert loses quietly to a
    # concurrent one, and the update only takes a lock that is ours or expired.
    if tx.run("lock_insert", name=name, holder=holder, expires=tx.now + ttl):
        return True
    return tx.run("lock_take", name=name, holder=holder, expires=tx.now + ttl, now=tx.now) > 0


def release_lock(tx: Tx, name: str, holder: str) -> None:
    tx.run("lock_delete", name=name, holder=holder)
