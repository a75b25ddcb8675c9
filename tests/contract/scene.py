"""Plain functions shared by the contract tests (fixtures are in conftest.py)."""
from __future__ import annotations

import sqlite3
from typing import Any

from scitq_app.schema import validate

LEASE = 30.0


def task_spec(**fields: Any) -> dict[str, Any]:
    """A validated 'task_create' body (command `true` unless given)."""
    return validate("task_create", {"command": "true", **fields})


def status_of(store: Any, task_id: int) -> str:
    return store.get_task(task_id).status


def pg_run(dsn: str, sql: str) -> None:
    """Run one statement on PostgreSQL in its own connection."""
    import pg8000.native

    from scitq_app.store.postgres import parse_url
    con = pg8000.native.Connection(**parse_url(dsn))
    try:
        con.run(sql)
    finally:
        con.close()


def dump_database(database_url: str, tables: list[str]) -> str:
    """Every row of `tables`, as text, read with the database's own driver."""
    out = []
    if database_url.startswith("sqlite:///"):
        con = sqlite3.connect(database_url[len("sqlite:///"):])
        try:
            for t in tables:
                out.extend(repr(r) for r in con.execute(f'SELECT * FROM "{t}"'))
        finally:
            con.close()
    else:
        import pg8000.native
        from scitq_app.store.postgres import parse_url
        con = pg8000.native.Connection(**parse_url(database_url))
        try:
            for t in tables:
                out.extend(repr(r) for r in con.run(f'SELECT * FROM "{t}"'))
        finally:
            con.close()
    return "\n".join(out)
