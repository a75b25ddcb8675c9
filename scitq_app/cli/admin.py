"""Commands run on the server host: server, dispatcher, db, token, config (and `config rclone`, anywhere)."""
from __future__ import annotations

import logging
import os
import signal
from typing import Any, Callable

from ..errors import Conflict, ConfigError, UsageError
from .context import Context, merge_options, parse

log = logging.getLogger(__name__)

SERVER_DOC = """Run the scitq HTTP API (and, unless told not to, the dispatcher).

Usage:
  scitq server [options] [--listen ADDR] [--port PORT] [--database URL] [--threads N] [--no-dispatcher]

Options:
  --listen ADDR     address to listen on (env SCITQ_SERVER_LISTEN) [default from config: 127.0.0.1]
  --port PORT       TCP port (env SCITQ_SERVER_PORT) [default from config: 5000]
  --database URL    sqlite:///PATH or postgresql://USER:PASS@HOST:PORT/DB (env SCITQ_SERVER_DATABASE)
  --threads N       HTTP worker threads (env SCITQ_SERVER_THREADS)
  --no-dispatcher   do not run the dispatcher loops in this process (run `scitq dispatcher`)

An empty database is initialised at start, with a first admin token named
`admin` whose secret goes to [server] token_file (default ./admin.token, mode
600); an outdated database must be upgraded with `scitq db upgrade` first.
The `scitq` CLI of the same user on this host finds that token by itself.
Requests whose Host is a DNS name other than localhost, this host's names and
[server] server_names are refused (421).
"""

DISPATCHER_DOC = """Run the dispatcher loops alone: lease expiry, deadlines, dependencies, offline workers.

Usage:
  scitq dispatcher [options] [--database URL] [--once]

Options:
  --database URL    database URL (env SCITQ_SERVER_DATABASE)
  --once            run one round and exit

Only one dispatcher acts at a time (a lock in the database); others stand by.
"""

DB_DOC = """Manage the database schema.

Usage:
  scitq db init [options] [--database URL]
  scitq db upgrade [options] [--database URL]
  scitq db status [options] [--database URL] [--json]

Options:
  --database URL    database URL (env SCITQ_SERVER_DATABASE)
  --json            machine-readable output

init creates the schema in an empty database; upgrade applies pending
migrations one by one (an empty database is built migration by migration).
Initialising a database also creates its first admin token, `admin`, whose
secret is written to [server] token_file (default ./admin.token, mode 600).
"""

TOKEN_DOC = """Manage API tokens (run on the server host: talks to the database directly).

Usage:
  scitq token create [options] --role ROLE <name> [--database URL] [--json]
  scitq token list [options] [--database URL] [--json]
  scitq token revoke [options] <name> [--database URL]

Options:
  --role ROLE       admin (everything) or user (tasks, batches, workers; no tokens)
  --database URL    database URL (env SCITQ_SERVER_DATABASE)
  --json            machine-readable output

A token's secret is printed once at creation and stored only as a hash.
Give it to clients as SCITQ_TOKEN or [client] token. The last admin token
cannot be revoked: create another first (this is also how to recover a lost
admin token, or rotate one). Workers never get these:
they register with a join token (`scitq worker join-token`), which `list`
shows with its uses left and expiry, and `revoke` revokes by its name.
"""

CONFIG_DOC = """Show the effective configuration; install the server's rclone config on this machine.

Usage:
  scitq config show [options] [--json]
  scitq config rclone (--install | --show) [options] [--path PATH]

Options:
  --json            machine-readable output
  --install         write the server's rclone config to --path (mode 600), e.g. for `scitq fetch`
  --show            print the server's rclone config (it holds credentials: mind where it goes)
  --path PATH       where --install writes it [default: /etc/rclone.conf]

`config show` lists every option, its value and where it came from; secrets
(tokens, database passwords) are masked. `config rclone` needs an admin token
(-t or SCITQ_TOKEN): the rclone config is the server's [server] rclone_config,
the one it hands to its workers.
"""


def _admin_secret_writer(ctx: Context) -> Callable[[str], None]:
    """The callback that keeps the first admin token's secret in [server] token_file, inside
    the transaction initialising the database (a file it cannot write rolls it back)."""
    from ..tokenfiles import write_secret_file

    def write(secret: str) -> None:
        path = write_secret_file(ctx.config().server.token_file, secret)
        log.info("created the admin token 'admin'; its secret is in %s (mode 600)", path,
                 extra={"action": "first_admin"})
    return write


def _open_ready_store(ctx: Context, database: str | None) -> Any:
    store = ctx.store(database)
    status = store.schema_status()
    if status["current"] == 0:
        try:
            version = store.init_schema(_admin_secret_writer(ctx))
            ctx.warn(f"scitq: initialised an empty {store.dialect} database (schema version {version})")
        except Conflict:
            # Another process initialised it between our look and our turn: use its schema.
            status = store.schema_status()
            if status["current"] == 0:
                raise
    if status["pending"] and status["current"]:
        raise ConfigError(f"the database schema is at version {status['current']} but this scitq needs "
                          f"{status['latest']}: run `scitq db upgrade` first")
    return store


def _sigterm_exits() -> None:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


def cmd_server(ctx: Context, argv: list[str]) -> int:
    args = parse(SERVER_DOC, argv)
    merge_options(args, ctx)
    ctx.config(server_listen=args["--listen"], server_port=args["--port"], server_database=args["--database"],
               server_threads=args["--threads"])
    from ..server import bind_listener, check_server_config, serve
    cfg = ctx.config()
    check_server_config(cfg)  # before the database: a bad setting must not initialise one
    try:
        # the port first: a busy port must not initialise a database or start a dispatcher
        listener = bind_listener(cfg.server.listen, cfg.server.port)
    except OSError as e:
        raise ConfigError(f"cannot listen on {cfg.server.listen}:{cfg.server.port}: {e.strerror or e}") from None
    try:
        store = _open_ready_store(ctx, args["--database"])
    except BaseException:
        listener.close()
        raise
    _sigterm_exits()
    try:
        serve(store, cfg, dispatcher=False if args["--no-dispatcher"] else None, listener=listener,
              ready=lambda url: ctx.warn(f"scitq: server listening on {url} ({store.dialect})"))
    except KeyboardInterrupt:
        ctx.warn("scitq: server stopped")
    except OSError as e:
        raise ConfigError(f"cannot listen on {cfg.server.listen}:{cfg.server.port}: {e.strerror or e}") from None
    finally:
        listener.close()
        store.close()
    return 0


def cmd_dispatcher(ctx: Context, argv: list[str]) -> int:
    args = parse(DISPATCHER_DOC, argv)
    merge_options(args, ctx)
    store = _open_ready_store(ctx, args["--database"])
    from ..dispatch.loops import Dispatcher
    d = Dispatcher(store, ctx.config(), on_change=store.announce_claimable)  # wakes the API processes' claims
    _sigterm_exits()
    try:
        d.run(once=bool(args["--once"]))
    except KeyboardInterrupt:
        ctx.warn("scitq: dispatcher stopped")
    finally:
        store.close()
    return 0


def cmd_db(ctx: Context, argv: list[str]) -> int:
    args = parse(DB_DOC, argv)
    merge_options(args, ctx)
    store = ctx.store(args["--database"])
    try:
        if args["init"]:
            version = store.init_schema(_admin_secret_writer(ctx))
            ctx.say(f"initialised the {store.dialect} database at schema version {version}; admin token in "
                    f"{os.path.abspath(ctx.config().server.token_file)}")
        elif args["upgrade"]:
            applied = store.upgrade_schema(_admin_secret_writer(ctx))
            if applied:
                for name in applied:
                    ctx.say(f"applied {name}")
            else:
                ctx.say("the database is up to date")
        else:
            status = store.schema_status()
            if args["--json"]:
                ctx.json(status)
            else:
                state = "empty" if status["current"] == 0 else \
                    "up to date" if not status["pending"] else f"{len(status['pending'])} migration(s) pending"
                ctx.say(f"{status['dialect']} schema version {status['current']} of {status['latest']}: {state}")
                for name in status["pending"]:
                    ctx.say(f"  pending: {name}")
    finally:
        store.close()
    return 0


def cmd_token(ctx: Context, argv: list[str]) -> int:
    args = parse(TOKEN_DOC, argv)
    merge_options(args, ctx)
    store = ctx.store(args["--database"])
    try:
        if store.schema_status()["current"] == 0:
            raise ConfigError("the database has no schema yet: run `scitq db init` (or start the server) first")
        if args["create"]:
            role = args["--role"]
            if role not in ("admin", "user"):
                raise UsageError(f"--role must be admin or user, not {role!r}")
            from ..schema import validate
            validate("token_create", {"name": args["<name>"], "role": role})
            token, secret = store.create_token(args["<name>"], role, actor="cli")
            if args["--json"]:
                ctx.json({"token": token.to_dict(), "secret": secret})
            else:
                ctx.say(secret)
                ctx.warn(f"scitq: created {role} token {token.name!r}; keep the secret above safe, "
                         "it is not shown again")
        elif args["list"]:
            tokens = [t.to_dict() for t in store.list_tokens()]
            if args["--json"]:
                ctx.json(tokens)
            else:
                ctx.table(tokens, [("name", "name"), ("role", "role"), ("worker_id", "worker"),
                                   ("created", "created"), ("last_used", "last used"), ("revoked", "revoked"),
                                   ("uses_left", "uses left"), ("expires", "expires")])
        else:
            token = store.revoke_token(args["<name>"], actor="cli")
            ctx.say(f"revoked token {token.name!r}")
    finally:
        store.close()
    return 0


def _mask(key: tuple[str, str], value: Any) -> Any:
    from ..config import OPTIONS
    if not OPTIONS[key].secret or not value:
        return value
    if isinstance(value, str) and "://" in value:
        # USER:PASSWORD@HOST: the password may be empty-usered or hold '@' or '/' (up to the last '@')
        scheme, _, rest = value.partition("://")
        userinfo, at, hostpart = rest.rpartition("@")
        if at and ":" in userinfo and not userinfo.startswith("/"):
            return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{hostpart}"
        return value
    return "***"


def _install_rclone_config(ctx: Context, path: str) -> None:
    import os
    import tempfile
    reply = ctx.client().rclone_config()
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".rclone-", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:  # mkstemp makes it 600
                f.write(reply["config"])
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None
    remotes = reply.get("remotes") or []
    ctx.warn(f"scitq: wrote {path} (mode 600) with {len(remotes)} remote(s)"
             + (f": {', '.join(remotes)}" if remotes else " (the server has no rclone config)"))


def cmd_config(ctx: Context, argv: list[str]) -> int:
    args = parse(CONFIG_DOC, argv)
    merge_options(args, ctx)
    if args["rclone"]:
        if args["--install"]:
            _install_rclone_config(ctx, args["--path"])
        else:
            ctx.out.write(ctx.client().rclone_config()["config"])
        return 0
    cfg = ctx.config()
    rows = [{"option": f"{s}.{k}", "value": _mask((s, k), v), "from": cfg.origins[(s, k)]}
            for (s, k), v in cfg.items()]
    if args["--json"]:
        ctx.json({"file": cfg.path, "options": rows})
    else:
        ctx.say(f"config file: {cfg.path or '(none)'}")
        ctx.table(rows, [("option", "option"), ("value", "value"), ("from", "from")])
    return 0


COMMANDS = {
    "server": (SERVER_DOC, cmd_server),
    "dispatcher": (DISPATCHER_DOC, cmd_dispatcher),
    "db": (DB_DOC, cmd_db),
    "token": (TOKEN_DOC, cmd_token),
    "config": (CONFIG_DOC, cmd_config),
}
