"""Commands about batches and workers (and running the worker agent)."""
from __future__ import annotations


from ..errors import NotFound, UsageError
from .context import Context, int_arg, merge_options, parse

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at every CLI start (bench/startup.py)
    from typing import Any

BATCH_DOC = """Inspect and steer batches.

Usage:
  scitq batch list [options] [--json]
  scitq batch show [options] <name> [--json]
  scitq batch create [options] <name> [--priority N]
  scitq batch pause [options] <name>... [--suspend]
  scitq batch go [options] <name>...
  scitq batch stop [options] <name>... [--kill | --no-signal]
  scitq batch delete [options] <name>...

Options:
  --priority N    batch priority [default: 0]
  --suspend       also SIGSTOP the batch's running tasks (go continues them)
  --kill          stop running tasks with SIGKILL instead of SIGTERM
  --no-signal     leave running tasks alone, only stop claiming
  --json          machine-readable output

pause stops claiming the batch's tasks; go resumes the batch and its paused tasks;
stop ends its running tasks (they go back to pending, no retry spent) and stops
claiming; delete removes a batch and all its tasks (stop it first).
"""

WORKER_DOC = """Run the worker agent (`worker run`), or inspect and steer workers.

Usage:
  scitq worker run [options] [--name NAME] [--batch NAME] [--concurrency N] [--prefetch N]
                   [--workdir DIR] [--status STATUS] [--once]
  scitq worker list [options] [--batch NAME] [--json]
  scitq worker show [options] <worker> [--json]
  scitq worker update [options] <worker> [--concurrency N] [--prefetch N] [--batch NAME | --no-batch]
                      [--status STATUS] [--json]
  scitq worker delete [options] <worker>...
  scitq worker clean [options] <worker>...
  scitq worker upgrade [options] (--all | <worker>...)
  scitq worker deploy [options] --provider NAME --flavor FLAVOR [--region REGION] [--count N]
                      [--batch NAME] [--concurrency N] [--prefetch N] [--no-wait] [--json]
  scitq worker join-token [options] [--uses N] [--ttl DURATION] [--batch NAME] [--name NAME] [--json]

Options:
  --name NAME         worker name (env SCITQ_WORKER_NAME; default: host name);
                      join-token: the only worker name the token registers
  --batch NAME        only run tasks of this batch; join-token: the batch its workers join
  --no-batch          run tasks of any running batch
  --uses N            join-token: how many workers it may register, 1 to 10000 [default: 1]
  --ttl DURATION      join-token: how long it stays valid: 90s, 30m, 1h, 2d or seconds,
                      at most 30 days [default: 1h]
  --concurrency N     tasks run at once
  --prefetch N        tasks claimed ahead of free slots
  --workdir DIR       where work dirs are made (env SCITQ_WORKER_WORKDIR)
  --status STATUS     running, paused or draining (draining: finish, then exit)
  --once              (run) claim, run and report one round, then exit
  --all               upgrade: every worker the server hears from
  --provider NAME     deploy: a provider of [recruit] providers
  --flavor FLAVOR     deploy: a flavor name, or a filter: cpu>=16:mem>=64 (the cheapest match)
  --region REGION     deploy: the provider's region (default: any)
  --count N           deploy: how many machines [default: 1]
  --no-wait           deploy: return once asked, without following the deploys
  --json              machine-readable output

<worker> is a worker id or name. Changes made with `update` reach the worker at
its next heartbeat; `delete` requeues its executions; `clean` removes the work
dirs of its finished executions.

`upgrade` (admin token) makes workers installed by install.sh or `provision`
fetch the server's scitq.pyz ([server] pyz, else the one the server runs) over
their own authenticated channel, check its sha256, install it as their release,
finish their running tasks (at most [worker] upgrade_deadline seconds, then hand
them back) and restart on it. `worker show` says what each did (stats: upgrade).

`deploy` (admin token) rents machines now, without a recruiter: the dispatcher
creates each at the provider and provisions it (`scitq job list`), within the
provider's caps (max_machines, max_machines_per_region). They are rented workers
like a recruiter's: given back once idle for [recruit] idle_release while their
batch has nothing pending. Exits 0 when every one became a worker.

`join-token` (admin token) mints the credential a new worker registers with:
give it as [worker] join_token (or `install.sh worker --join-token`). It
carries the sha256 of the server's TLS certificate ([server] tls_certificate),
which the worker then pins. The token alone goes to stdout; the rest to stderr.
Workers refuse admin and user tokens.
"""

WORKER_COLUMNS = [("id", "id"), ("name", "name"), ("status", "status"), ("batch", "batch"),
                  ("concurrency", "conc"), ("prefetch", "pref"), ("active", "active"),
                  ("last_seen", "last seen"), ("hostname", "host"), ("version", "version")]


def cmd_batch(ctx: Context, argv: list[str]) -> int:
    args = parse(BATCH_DOC, argv)
    merge_options(args, ctx)
    client = ctx.client()
    if args["list"]:
        batches = client.batches()
        if args["--json"]:
            ctx.json(batches)
        else:
            from .display import counts
            # `Default` exists from the start: listed once something is in it
            shown = [dict(b, tasks=counts(b["counts"])) for b in batches
                     if not (b["name"] == "Default" and not b["counts"] and not b["workers"])]
            columns = [("name", "name"), ("status", "status"), ("priority", "prio"), ("workers", "workers"),
                       ("tasks", "tasks")]
            if any(b.get("spend") for b in shown):  # machines were rented: what they cost so far
                columns.append(("spend", "spend"))
            ctx.table(shown, columns, empty="(no batches)")
        return 0
    names = args["<name>"]
    if args["show"]:
        b = client.batch(names[0])
        if args["--json"]:
            ctx.json(b)
        else:
            from .display import counts, fields
            fields(ctx.say, dict(b, tasks=counts(b["counts"])), ("name", "status", "priority", "workers", "tasks",
                                                                  "created"), always=("name", "workers", "tasks"))
        return 0
    if args["create"]:
        b = client.create_batch(names[0], int_arg(args["--priority"], "--priority") or 0)
        ctx.say(f"batch {b['name']} created")
        return 0
    for name in names:
        if args["pause"]:
            client.pause_batch(name, "pause" if args["--suspend"] else None)
            ctx.say(f"batch {name} paused" + (" (running tasks suspended)" if args["--suspend"] else ""))
        elif args["go"]:
            client.go_batch(name)
            ctx.say(f"batch {name} running")
        elif args["stop"]:
            signal = None if args["--no-signal"] else "kill" if args["--kill"] else "term"
            client.stop_batch(name, signal)
            ctx.say(f"batch {name} stopped" + (f" (running tasks sent {signal})" if signal else ""))
        else:
            n = client.delete_batch(name)["tasks"]
            ctx.say(f"batch {name} deleted ({n} tasks)")
    return 0


def resolve_worker(client: Any, ref: str) -> int:
    """A worker id from an id or a name."""
    if ref.isdigit():
        return int(ref)
    for w in client.workers():
        if w["name"] == ref:
            return int(w["id"])
    raise NotFound(f"no worker named {ref!r}")


def cmd_worker(ctx: Context, argv: list[str]) -> int:
    args = parse(WORKER_DOC, argv)
    merge_options(args, ctx)
    if args["join-token"]:
        return _join_token(ctx, args)
    if args["upgrade"]:
        return _upgrade(ctx, args)
    if args["deploy"]:
        from .provision import deploy_workers
        return deploy_workers(ctx, args)
    if args["run"]:
        from ..worker import run_worker
        cfg = ctx.config(worker_name=args["--name"], worker_batch=args["--batch"],
                         worker_concurrency=args["--concurrency"], worker_prefetch=args["--prefetch"],
                         worker_workdir=args["--workdir"], worker_status=args["--status"])
        return run_worker(cfg, once=bool(args["--once"]), log=ctx.warn)
    client = ctx.client()
    if args["list"]:
        workers = client.workers(args["--batch"])
        if args["--json"]:
            ctx.json(workers)
        else:
            for w in workers:  # a worker short of disk claims nothing: its status says why
                w["version"] = (w.get("stats") or {}).get("version")
                short = (w.get("stats") or {}).get("short_of")
                if short and w.get("status") == "running":
                    w["status"] = f"running, short of {short.split(' (')[0]}"  # details: worker show
            rented = [("price", "price/h"), ("spend", "spend")] if any(w.get("price") for w in workers) else []
            ctx.table(workers, WORKER_COLUMNS + rented, empty="(no workers)")
        return 0
    refs = args["<worker>"]
    if args["show"]:
        w = client.worker(resolve_worker(client, refs[0]))
        if args["--json"]:
            ctx.json(w)
        else:
            from .display import fields, stats
            fields(ctx.say, w, formats={"stats": stats})
        return 0
    if args["update"]:
        changes: dict[str, Any] = {}
        for flag, key in (("--concurrency", "concurrency"), ("--prefetch", "prefetch")):
            if args[flag] is not None:
                changes[key] = int_arg(args[flag], flag, 0)
        if args["--batch"] is not None:
            changes["batch"] = args["--batch"]
        if args["--no-batch"]:
            changes["batch"] = None
        if args["--status"] is not None:
            changes["status"] = args["--status"]
        if not changes:
            raise UsageError("nothing to update: give --concurrency, --prefetch, --batch, --no-batch or --status")
        w = client.update_worker(resolve_worker(client, refs[0]), **changes)
        if args["--json"]:
            ctx.json(w)
        else:
            ctx.say(f"worker {w['name']} updated: concurrency {w['concurrency']}, prefetch {w['prefetch']}, "
                    f"batch {w['batch'] or '(any)'}, status {w['status']}")
        return 0
    for ref in refs:
        wid = resolve_worker(client, ref)
        if args["delete"]:
            client.delete_worker(wid)
            ctx.say(f"worker {ref} deleted")
        else:
            client.signal_worker(wid, "clean")
            ctx.say(f"worker {ref}: clean queued")
    return 0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_arg(value: str, name: str) -> float:
    """Seconds from `90s`, `30m`, `1h`, `2d` or a plain number of seconds; UsageError otherwise."""
    text = value.strip().lower()
    unit = _UNITS.get(text[-1:], None) if text else None
    number = text[:-1] if unit else text
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise UsageError(f"{name} must be a duration like 90s, 30m, 1h, 2d or a number of seconds, not {value!r}")
    return seconds


def _join_token(ctx: Context, args: dict[str, Any]) -> int:
    uses = int_arg(args["--uses"], "--uses", 1)
    ttl = duration_arg(args["--ttl"], "--ttl")
    client = ctx.client()
    reply = client.create_join_token(uses=uses, ttl=ttl, batch=args["--batch"], name=args["--name"])
    if args["--json"]:
        ctx.json(reply)
        return 0
    token = reply["token"]
    ctx.say(reply["join_token"])
    scope = "".join([f", batch {token['pinned_batch']}" if token.get("pinned_batch") else "",
                     f", only for a worker named {token['pinned_name']}" if token.get("pinned_name") else ""])
    uses_left = token.get("uses_left")
    ctx.warn(f"scitq: join token {token['name']}: registers {uses_left} worker{'s' if uses_left != 1 else ''}"
             f"{scope}; expires {token['expires']} (revoke: scitq token revoke {token['name']})")
    if reply.get("fingerprint"):
        ctx.warn(f"scitq: it pins the server's TLS certificate, sha256 {reply['fingerprint']}")
    ctx.warn("scitq: on the new host, run:")
    ctx.warn(f"  install.sh worker --server {reply.get('server_url') or client.url} --join-token {reply['join_token']}")
    return 0


def _upgrade(ctx: Context, args: dict[str, Any]) -> int:
    client = ctx.client()
    offered = client.pyz_info()  # refused (403, 409) before any worker is told anything
    live = ("starting", "running", "paused", "draining")
    if args["--all"]:
        targets = [w for w in client.workers() if w["status"] in live]
    else:
        targets = [client.worker(resolve_worker(client, ref)) for ref in args["<worker>"]]
    if not targets:
        ctx.warn("scitq: no live worker to upgrade")
        return 0
    for w in targets:
        client.signal_worker(int(w["id"]), "upgrade")
        now = (w.get("stats") or {}).get("version")
        ctx.say(f"worker {w['name']}: upgrade to {offered['version']} sent" + (f" (runs {now})" if now else ""))
    ctx.warn(f"scitq: the workers fetch scitq {offered['version']} (sha256 {str(offered['sha256'])[:16]}...) at "
             "their next heartbeat and restart on it once their running tasks end; `scitq worker list` shows "
             "their versions")
    return 0


COMMANDS = {
    "batch": (BATCH_DOC, cmd_batch),
    "worker": (WORKER_DOC, cmd_worker),
}
