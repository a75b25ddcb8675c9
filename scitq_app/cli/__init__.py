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
  provision     turn SSH-reachable hosts into workers (admin)
  job           list, show, follow the log of, or delete background jobs (admin)
  host-key      show or forget the SSH host keys scitq trusts (admin)
  recruiter     list, create, update or delete recruiters (cloud workers per batch)
  flavor        list the flavors the configured providers offer

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

import sys

from .. import __version__
from ..bytecode import short_lived

# Start-up time is part of the interface (bench/startup.py): `--help`, `--version` and
# `COMMAND --help` load this module and the command's own module only; everything else
# (config, client, docopt, typing...) is imported where it is used.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Mapping, Sequence, TextIO

    from .context import Context

# command -> the cli module that holds its usage doc and handler (its COMMANDS table)
COMMAND_MODULES = {"server": "admin", "dispatcher": "admin", "db": "admin", "token": "admin", "config": "admin",
                   "batch": "fleet", "worker": "fleet", "launch": "tasks", "task": "tasks", "execution": "tasks",
                   "fetch": "fetch", "provision": "provision", "job": "provision", "host-key": "provision",
                   "recruiter": "provision", "flavor": "provision"}

COMMON_OPTIONS = """
Common options:
  -c PATH, --config PATH   configuration file (env SCITQ_CONFIG)
  -s URL, --server URL     scitq server URL (env SCITQ_SERVER)
  -t TOKEN, --token TOKEN  API token (env SCITQ_TOKEN)
  --log-level LEVEL        debug, info, warning or error
  -h, --help               show this help
"""

INTERNAL_ERROR = 70


def wants_help(argv: Sequence[str]) -> bool:
    """-h or --help among the options (not after `--`, where the words are a task's command)."""
    words = list(argv)
    words = words[:words.index("--")] if "--" in words else words
    return "-h" in words or "--help" in words


def commands() -> dict[str, tuple[str, Callable[[Context, list[str]], int]]]:
    """command -> (usage doc, handler), for every command."""
    return {name: command(name) for name in COMMAND_MODULES}


def command(name: str) -> tuple[str, Callable[[Context, list[str]], int]]:
    """(usage doc, handler) of one command, importing its module only."""
    import importlib
    return importlib.import_module(f".{COMMAND_MODULES[name]}", __name__).COMMANDS[name]


def run(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None,
        env: Mapping[str, str] | None = None) -> int:
    """Run the CLI; return the exit code (tests call this, `main` exits with it)."""
    out = out or sys.stdout
    err = err or sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    # the fast paths: nothing to parse, nothing else to import
    if argv == ["--version"]:
        print(f"scitq {__version__}", file=out)
        return 0
    if argv in (["-h"], ["--help"]):
        print(__doc__.strip(), file=out)
        return 0
    if short_lived(argv):
        from ..bytecode import install
        install()  # done by the archive's __main__.py already; here for `python -m scitq_app`
    if argv and argv[0] in COMMAND_MODULES and wants_help(argv[1:]):
        print(command(argv[0])[0].strip() + "\n" + COMMON_OPTIONS.rstrip(), file=out)
        return 0
    from ..errors import ScitqError, UsageError
    try:
        if not argv:
            raise UsageError("a command is required", usage=_command_list())
        from .context import Context, _docopt, cached_docopt
        _, DocoptExit = _docopt()
        try:
            top = cached_docopt(__doc__, argv, options_first=True)
        except DocoptExit as e:
            from .usage import explain_top
            raise explain_top(__doc__, argv, str(e), _command_list()) from None
        if top["--version"]:
            print(f"scitq {__version__}", file=out)
            return 0
        name = top["<command>"]
        if top["--help"]:
            print(__doc__.strip(), file=out)
            return 0
        if name is None:
            raise UsageError("a command is required", usage=_command_list())
        if name not in COMMAND_MODULES:
            from .usage import unknown_command
            raise unknown_command(name, list(COMMAND_MODULES))
        doc, handler = command(name)
        args = [name] + top["<args>"]
        if wants_help(args):
            print(doc.strip() + "\n" + COMMON_OPTIONS.rstrip(), file=out)
            return 0
        ctx = Context(top, out, err, env, configure_logging=not short_lived(args))
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
        import logging
        logging.getLogger(__name__).debug("internal error", exc_info=True)
        print(f"scitq: internal error: {type(e).__name__}: {e} (run with --log-level debug for details)", file=err)
        return INTERNAL_ERROR


def _command_list() -> str:
    """The top-level usage and command list (the help without its options)."""
    return __doc__.split("Usage:", 1)[1].split("\nOptions:", 1)[0].strip("\n")


def main() -> int:
    return run()


