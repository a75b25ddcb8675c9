"""scitq — a distributed task queue for scientific computing.

Usage:
  scitq [options] <command> [<args>...]
  scitq (-h | --help)
  scitq --version

Roles:
  server        run the HTTP API (with the dispatcher unless --no-dispatcher)
  dispatcher    run the dispatcher loops alone (leases, deadlines, dependencies)
  worker        run the worker agent (`worker run`), or list/show/update/delete workers

Management (over the HTTP API):
  launch        submit one task
  task          list, show, output, update, relaunch, pause, resume, stop, kill, delete tasks
  batch         list, show, create, pause, go, stop, delete batches
  execution     list a task's executions, show one, print its output
  fetch         copy, list, sync or delete data by URI (rclone remotes, http, ftp, file)

On the server host (direct database access):
  db            init, upgrade or show the database schema
  token         create, list or revoke API tokens
  config        show the effective configuration; install the server's rclone config

Options:
  -c PATH, --config PATH   configuration file (default /etc/scitq.conf if present; env SCITQ_CONFIG)
  -s URL, --server URL     scitq server URL (env SCITQ_SERVER)
  -t TOKEN, --token TOKEN  API token (env SCITQ_TOKEN)
  --log-level LEVEL        debug, info, warning or error (env SCITQ_LOG_LEVEL)
  -h, --help               show this help; `scitq COMMAND --help` for a command's
  --version                print the version

Every command exits 0 on success, 2 on a usage or configuration error, 3 when the
server or database is unreachable, 4 when an object is not found, 5 on a
conflict with the object's state, 6 on an authentication error, 1 otherwise.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Callable, Iterable, Mapping, Sequence, TextIO

from .. import __version__
from ..config import Config, load_config
from ..errors import MissingDependency, ScitqError, UsageError

COMMON_OPTIONS = """
Common options:
  -c PATH, --config PATH   configuration file (env SCITQ_CONFIG)
  -s URL, --server URL     scitq server URL (env SCITQ_SERVER)
  -t TOKEN, --token TOKEN  API token (env SCITQ_TOKEN)
  --log-level LEVEL        debug, info, warning or error
  -h, --help               show this help
"""

INTERNAL_ERROR = 70


def _docopt() -> Any:
    try:
        from docopt import DocoptExit, docopt
    except ImportError:
        raise MissingDependency("the CLI needs docopt-ng: pip install docopt-ng (bundled in scitq.pyz)") from None
    return docopt, DocoptExit


class Context:
    """What a command needs: configuration, a client, a store, and where to print."""

    def __init__(self, options: Mapping[str, Any], out: TextIO, err: TextIO,
                 env: Mapping[str, str] | None = None) -> None:
        self.options = dict(options)
        self.out = out
        self.err = err
        self.env = os.environ if env is None else env
        self._config: Config | None = None

    def flag(self, name: str) -> Any:
        return self.options.get(name)

    def config(self, **flags: Any) -> Config:
        if self._config is None:
            server, token = self.flag("--server"), self.flag("--token")
            merged = {"client_server": server, "worker_server": server, "client_token": token,
                      "worker_token": token, "log_level": self.flag("--log-level")}
            merged.update(flags)
            self._config = load_config(self.flag("--config"), self.env, merged,
                                       flag_names={"log_level": "--log-level"})
            level = self._config.log.level.upper()
            logging.basicConfig(level=getattr(logging, level), stream=self.err,
                                format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return self._config

    def client(self) -> Any:
        from ..client import Server
        cfg = self.config()
        token = cfg.client.token or local_token(cfg.client.server, cfg.client.token_file, self.env)
        return Server(cfg.client.server, token, fingerprint=cfg.client.fingerprint.strip() or None,
                      timeout=cfg.client.timeout)

    def store(self, database: str | None = None) -> Any:
        from ..store import open_store
        cfg = self.config(server_database=database)
        return open_store(cfg.server.database, pool_size=cfg.server.pool_size)

    # --- output -----------------------------------------------------------------
    def say(self, text: str = "") -> None:
        print(text, file=self.out)

    def warn(self, text: str) -> None:
        print(text, file=self.err)

    def json(self, value: Any) -> None:
        print(json.dumps(value, indent=2, default=str), file=self.out)

    def table(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]],
              empty: str = "(none)") -> None:
        """Print rows as aligned columns; columns are (key, header)."""
        if not rows:
            self.say(empty)
            return
        cells = [[_cell(r.get(k)) for k, _ in columns] for r in rows]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(columns)]
        widths[-1] = 0  # the last column is not padded
        self.say("  ".join(h.upper().ljust(w) for (_, h), w in zip(columns, widths)).rstrip())
        for c in cells:
            self.say("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip())


def local_token(server: str, path: str, env: Mapping[str, str] | None = None) -> str | None:
    """For a server on this host when no token is given: the admin token its registry entry
    points to, else [client] token_file (see `tokenfiles`); None when neither is readable."""
    from ..tokenfiles import local_token as find
    return find(server, path, env)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v)) or "-"
    if isinstance(v, dict):
        return " ".join(f"{k}:{n}" for k, n in v.items()) or "-"
    text = str(v).replace("\n", " ")
    if len(text) == 24 and text.endswith("Z") and text[10] == "T":
        return text[:19].replace("T", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def parse(doc: str, argv: Sequence[str]) -> dict[str, Any]:
    """Parse a command's argv (command first) against its usage doc (plus the common options);
    a mismatch is a UsageError naming the command, with its usage (see `usage.explain`)."""
    docopt, DocoptExit = _docopt()
    full = doc.rstrip() + "\n" + COMMON_OPTIONS
    try:
        return docopt(full, argv=list(argv), default_help=False, version=None)
    except DocoptExit as e:
        from .usage import explain
        raise explain(full, argv, str(e)) from None


def wants_help(argv: Sequence[str]) -> bool:
    return "-h" in argv or "--help" in argv


def commands() -> dict[str, tuple[str, Callable[[Context, list[str]], int]]]:
    """command -> (usage doc, handler)."""
    from . import admin, fetch, fleet, tasks
    table: dict[str, tuple[str, Callable[[Context, list[str]], int]]] = {}
    for module in (admin, fleet, tasks, fetch):
        table.update(module.COMMANDS)
    return table


def run(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None,
        env: Mapping[str, str] | None = None) -> int:
    """Run the CLI; return the exit code (tests call this, `main` exits with it)."""
    out = out or sys.stdout
    err = err or sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv:
            raise UsageError("a command is required", usage=_command_list())
        docopt, DocoptExit = _docopt()
        try:
            top = docopt(__doc__, argv=argv, default_help=False, version=None, options_first=True)
        except DocoptExit as e:
            from .usage import explain_top
            raise explain_top(__doc__, argv, str(e), _command_list()) from None
        if top["--version"]:
            print(f"scitq {__version__}", file=out)
            return 0
        table = commands()
        command = top["<command>"]
        if top["--help"]:
            print(__doc__.strip(), file=out)
            return 0
        if command is None:
            raise UsageError("a command is required", usage=_command_list())
        if command not in table:
            from .usage import unknown_command
            raise unknown_command(command, list(table))
        doc, handler = table[command]
        args = [command] + top["<args>"]
        if wants_help(args):
            print(doc.strip() + "\n" + COMMON_OPTIONS.rstrip(), file=out)
            return 0
        ctx = Context(top, out, err, env)
        return handler(ctx, args) or 0
    except ScitqError as e:
        where = e.data.get("usage_of") if isinstance(e, UsageError) else None
        print(f"scitq {where}: {e.message}" if where else f"scitq: {e.message}", file=err)
        if isinstance(e, UsageError) and e.data.get("usage"):
            print("Usage:\n" + e.data["usage"].rstrip(), file=err)
            if e.data.get("usage_of"):
                print(f"`scitq {e.data['usage_of']} --help` explains every option", file=err)
        return e.exit_code
    except KeyboardInterrupt:
        print("scitq: interrupted", file=err)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug: one line for people, the traceback in debug logs
        logging.getLogger(__name__).debug("internal error", exc_info=True)
        print(f"scitq: internal error: {type(e).__name__}: {e} (run with --log-level debug for details)", file=err)
        return INTERNAL_ERROR


def _command_list() -> str:
    """The top-level usage and command list (the help without its options)."""
    return __doc__.split("Usage:", 1)[1].split("\nOptions:", 1)[0].strip("\n")


def main() -> int:
    return run()


def merge_options(args: Mapping[str, Any], into: Context) -> None:
    """Common options given after the command behave as if given before it."""
    for key in ("--config", "--server", "--token", "--log-level"):
        if args.get(key) and not into.options.get(key):
            into.options[key] = args[key]


def int_arg(value: Any, name: str, minimum: int | None = None) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be an integer, not {value!r}") from None
    if minimum is not None and n < minimum:
        raise UsageError(f"{name} must be at least {minimum}")
    return n


def float_arg(value: Any, name: str, minimum: float | None = None) -> float | None:
    if value is None:
        return None
    try:
        n = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number, not {value!r}") from None
    if minimum is not None and n < minimum:
        raise UsageError(f"{name} must be at least {minimum:g}")
    return n


def ids_arg(values: Iterable[str], name: str = "<id>") -> list[int]:
    return [int_arg(v, name, 1) for v in values]  # type: ignore[misc]


