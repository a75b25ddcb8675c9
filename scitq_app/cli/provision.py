"""Commands of the fleet's background work: `provision` (SSH hosts into workers), `job` (what
such work did, step by step) and `host-key` (the SSH keys scitq trusts)."""
from __future__ import annotations

from ..errors import ProvisionError, UsageError
from .context import Context, int_arg, merge_options, parse

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at every CLI start (bench/startup.py)
    from typing import Any

PROVISION_DOC = """Turn SSH-reachable hosts into workers of this server (admin token).

Usage:
  scitq provision [options] [--user USER] [--key FILE] [--port N] [--concurrency N] [--batch NAME]
                  [--name NAME] [--jobs N] [--worker-url URL] [--pyz PATH] [--rclone PATH] [--json]
                  <host>...

Options:
  --user USER        SSH user: root, or one with password-less sudo [default: root]
  --key FILE         SSH private key (default: your keys and ssh-agent)
  --port N           SSH port of hosts given without :PORT [default: 22]
  --concurrency N    tasks each new worker runs at once [default: 1]
  --batch NAME       the batch the new workers join (default: any batch)
  --name NAME        the worker's name, for one host (default: the host's own name)
  --jobs N           hosts provisioned at once [default: 8]
  --worker-url URL   the URL workers reach this server at (default: [server] public_url,
                     else the server URL this command uses)
  --pyz PATH         the scitq.pyz to install (default: the one running this command)
  --rclone PATH      rclone uploaded to hosts that have none (default: rclone on PATH)
  --json             progress as JSON lines on stdout

<host> is [USER@]HOST[:PORT]. For each host, one job (`scitq job list`): connect (the
host key checked against known_hosts, else the key scitq recorded at first contact),
check the host (python3 3.10+, systemd, disk, clock), upload the pyz (and rclone),
run its install.sh with a join token minted for that host, wait until the worker
registers. A failure puts the host back as it was and the job's log says why.
Exits 0 when every host became a worker, 1 otherwise.
"""

JOB_DOC = """Background jobs (provisioning...): their steps, progress and logs (admin token).

Usage:
  scitq job list [options] [--status STATUS] [--json]
  scitq job show [options] <id> [--json]
  scitq job log [options] <id> [--follow]
  scitq job retry [options] <id> [--key FILE] [--worker-url URL] [--pyz PATH] [--rclone PATH]
  scitq job delete [options] <id>...

Options:
  --status STATUS    pending, running, succeeded or failed
  --follow           keep printing new lines until the job ends
  --json             machine-readable output
  --key FILE         retry of a provision: the SSH private key (default: your keys and ssh-agent)
  --worker-url URL   retry of a provision: the URL workers reach this server at
  --pyz PATH         retry of a provision: the scitq.pyz to install
  --rclone PATH      retry of a provision: rclone for hosts that have none

`retry` does a failed job again: a provision runs again from here, on the same
host with the same user, port, name, concurrency and batch (the key and files as
`scitq provision` takes them); a destroy is asked of the dispatcher at once (it
also retries by itself, after 30 s doubling up to 15 min); a deploy of
`worker deploy` is requested again. A recruiter's deploys and reconciliations
are retried by the dispatcher by itself.
"""

HOST_KEY_DOC = """The SSH host keys scitq trusts (admin token).

Usage:
  scitq host-key show [options] <host>
  scitq host-key forget [options] <host>

A host's key is recorded at first contact (trust on first use) unless known_hosts
or a provider gives it; a host offering another key is refused. After a host was
reinstalled, `forget` its old key: the next contact records the new one.
<host> is HOST:PORT as job targets show it.
"""

RECRUITER_DOC = """Recruiters: rent workers for a batch from a cloud provider (create, update, delete: admin).

Usage:
  scitq recruiter list [options] [--json]
  scitq recruiter create [options] <batch> --provider NAME --flavor FLAVOR --maximum-workers N [--rank N]
                         [--region REGION] [--tasks-per-worker N] [--minimum-tasks N] [--concurrency N]
                         [--prefetch N] [--json]
  scitq recruiter update [options] <id> [--provider NAME] [--flavor FLAVOR] [--maximum-workers N]
                         [--region REGION] [--tasks-per-worker N] [--minimum-tasks N] [--concurrency N]
                         [--prefetch N] [--json]
  scitq recruiter delete [options] <id>...

Options:
  --provider NAME         a provider of [recruit] providers
  --flavor FLAVOR         a flavor name, or a filter: cpu>=16:mem>=64 (the cheapest match)
  --maximum-workers N     workers this recruiter keeps at most
  --rank N                order among the batch's recruiters, 1 first (default 1)
  --region REGION         the provider's region (default: any)
  --tasks-per-worker N    one worker per N pending tasks (default 1)
  --minimum-tasks N       pending tasks needed before recruiting (default 0)
  --concurrency N         tasks each worker runs at once (default 1)
  --prefetch N            tasks each worker claims ahead (default 0)
  --json                  machine-readable output

The dispatcher recruits every [recruit] interval: for each batch, by rank, one
worker per tasks-per-worker pending tasks, at most maximum-workers; idle rented
workers of batches with nothing pending are recycled first, machines are created
and provisioned for the rest (`scitq job list`), and a rented worker idle for
[recruit] idle_release while its batch has nothing pending is given back.
"""

FLAVOR_DOC = """Flavors the configured providers offer, cheapest first.

Usage:
  scitq flavor list [options] [--provider NAME] [--region REGION] [--filter FILTER] [--json]

Options:
  --provider NAME    one provider
  --region REGION    one region
  --filter FILTER    e.g. cpu>=16:mem>=64 (keys cpu, mem, disk, gpu, price)
  --json             machine-readable output
"""

JOB_COLUMNS = [("id", "id"), ("kind", "kind"), ("target", "target"), ("status", "status"),
               ("progress", "done"), ("step", "step"), ("modified", "changed")]


def cmd_provision(ctx: Context, argv: list[str]) -> int:
    args = parse(PROVISION_DOC, argv)
    merge_options(args, ctx)
    from ..cloud.provision import Target
    port = int_arg(args["--port"], "--port", 1) or 22
    targets = [Target.parse(h, user=args["--user"], port=port) for h in args["<host>"]]
    if len({str(t) for t in targets}) != len(targets):
        raise UsageError("a host is given twice", usage_of="provision")
    if args["--name"] and len(targets) > 1:
        raise UsageError("--name names one worker: give one host with it", usage_of="provision")
    concurrency = int_arg(args["--concurrency"], "--concurrency", 1) or 1
    jobs = int_arg(args["--jobs"], "--jobs", 1) or 8
    return _provision(ctx, args, targets, args["--name"], concurrency, args["--batch"], jobs)


def _provision(ctx: Context, args: dict, targets: list[Any], name: str | None, concurrency: int,
               batch: str | None, jobs: int) -> int:
    """Provision `targets` (`jobs` at a time) with the files, key and URL `args` give."""
    from ..cloud.provision import Provisioner, install_files
    cfg = ctx.config()
    client = ctx.client()
    url = args["--worker-url"] or cfg.server.public_url or client.url
    if any(h in url for h in ("//127.", "//localhost", "//[::1]")):
        raise UsageError(f"workers cannot reach this server at {url}: give --worker-url URL (or set [server] "
                         "public_url)", usage_of="provision")
    files = install_files(args["--pyz"], args["--rclone"])
    from .progress import for_command
    progress = for_command(ctx, json=bool(args.get("--json")), every=5.0)
    assert progress is not None  # progress is always shown
    with progress:
        p = Provisioner(client, files, url, key_file=args["--key"], on_event=_serialized(progress))
        results = _each(targets, jobs, lambda t: p.provision(t, name=name, concurrency=concurrency, batch=batch))
    failed = 0
    for target, (worker, error) in zip(targets, results):
        if error is None:
            ctx.warn(f"{target}: worker {worker['name']} (id {worker['id']}) registered")
        else:
            failed += 1
            ctx.warn(f"{target}: failed: {error.message}" + (f" (log: scitq job log {error.data['job']})"
                                                             if error.data.get("job") else ""))
    if failed:
        ctx.warn(f"scitq: {failed} of {len(targets)} host(s) not provisioned")
    return 1 if failed else 0


def _serialized(progress: Any) -> Any:
    """Progress events from several threads, rendered one at a time."""
    import threading
    lock = threading.Lock()

    def on_event(event: dict) -> None:
        with lock:
            progress(dict(event, name=event["what"].split(" ", 1)[-1]))
    return on_event


def _each(targets: list[Any], jobs: int, fn: Any) -> list[tuple[Any, Any]]:
    """fn(target) for each target, `jobs` at a time: (result, None) or (None, the ProvisionError)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(t: Any) -> tuple[Any, Any]:
        try:
            return fn(t), None
        except ProvisionError as e:
            return None, e
    with ThreadPoolExecutor(max_workers=min(jobs, len(targets))) as pool:
        return list(pool.map(one, targets))


def cmd_job(ctx: Context, argv: list[str]) -> int:
    args = parse(JOB_DOC, argv)
    merge_options(args, ctx)
    client = ctx.client()
    if args["list"]:
        status = args["--status"]
        if status is not None and status not in ("pending", "running", "succeeded", "failed"):
            raise UsageError(f"--status must be pending, running, succeeded or failed, not {status!r}",
                             usage_of="job")
        jobs = client.jobs(status=status, limit=1000)
        if args["--json"]:
            ctx.json(jobs)
        else:
            ctx.table([dict(j, progress=f"{round(100 * j['progress'])}%") for j in jobs], JOB_COLUMNS,
                      empty="(no jobs)")
        return 0
    ids = [_job_id(x) for x in args["<id>"]]
    if args["show"]:
        job = client.job(ids[0])
        if args["--json"]:
            ctx.json(job)
        else:
            from .display import fields
            fields(ctx.say, dict(job, progress=f"{round(100 * job['progress'])}%"),
                   ("id", "kind", "target", "status", "step", "progress", "message", "actor", "log_lines",
                    "created", "modified", "finished"), always=("id", "kind", "target", "status"))
        return 0
    if args["log"]:
        return _log(ctx, client, ids[0], bool(args["--follow"]))
    if args["retry"]:
        return _retry(ctx, client, args, ids[0])
    for job_id in ids:
        client.delete_job(job_id)
        ctx.say(f"job {job_id} deleted")
    return 0


def _retry(ctx: Context, client: Any, args: dict, job_id: int) -> int:
    job = client.job(job_id)
    if job["kind"] != "provision":
        made = client.retry_job(job_id)
        if made.get("job"):
            ctx.say(f"job {job_id}: retried as job {made['job']['id']} ({made['job']['kind']} {made['job']['target']})")
        else:
            ctx.say(f"job {job_id}: machine {made['machine']['name']} requested again (`scitq job list` follows "
                    "its deploy)")
        return 0
    from ..errors import Conflict
    if job["status"] != "failed":
        raise Conflict(f"job {job_id} is {job['status']}: only a failed job can be retried")
    params = job.get("params") or {}
    if job.get("actor") == "recruiter" or not params.get("host"):
        raise Conflict(f"job {job_id} provisioned a machine the dispatcher deployed: its recruiter deploys again by "
                       "itself")
    from ..cloud.provision import Target
    target = Target(str(params["host"]), int(params.get("port") or 22), str(params.get("user") or "root"))
    return _provision(ctx, args, [target], params.get("name"), int(params.get("concurrency") or 1),
                      params.get("batch"), 1)


def deploy_workers(ctx: Context, args: dict) -> int:
    """`worker deploy`: ask for machines, then follow them (unless --no-wait) with a bar each
    until they are workers or failed."""
    body: dict[str, Any] = {"provider": args["--provider"], "flavor": args["--flavor"],
                            "count": int_arg(args["--count"], "--count", 1) or 1}
    for flag, key, minimum in (("--concurrency", "concurrency", 1), ("--prefetch", "prefetch", 0)):
        if args[flag] is not None:
            body[key] = int_arg(args[flag], flag, minimum)
    for flag, key in (("--region", "region"), ("--batch", "batch")):
        if args[flag] is not None:
            body[key] = args[flag]
    client = ctx.client()
    machines = client.post("/machines", body)["machines"]
    names = [m["name"] for m in machines]
    ctx.warn(f"{len(names)} {machines[0]['flavor']} machine(s) asked of {machines[0]['provider']} in "
             f"{machines[0]['region']} ({machines[0]['price']}/h each): {', '.join(names)}")
    if args["--no-wait"]:
        if args["--json"]:
            ctx.json(machines)
        return 0
    return _follow_machines(ctx, client, names, bool(args["--json"]))


_MACHINE_STEPS = ("requested", "creating", "provisioning", "running")


def _follow_machines(ctx: Context, client: Any, names: list[str], json: bool, timeout: float = 1800.0) -> int:
    import time

    from .progress import for_command
    progress = for_command(ctx, json=json, every=5.0)
    assert progress is not None
    seen: dict[str, str] = {}
    started = time.monotonic()
    deadline = started + timeout
    hinted = False
    with progress:
        while True:
            now = {m["name"]: m for m in client.get("/machines", all=True)["machines"] if m["name"] in names}
            for name in names:
                m = now.get(name)
                status = m["status"] if m else "failed"
                if seen.get(name) == status:
                    continue
                seen[name] = status
                ended = status not in _MACHINE_STEPS[:-1]
                done = _MACHINE_STEPS.index(status) if status in _MACHINE_STEPS else len(_MACHINE_STEPS) - 1
                progress({"event": "done" if ended else "progress", "what": f"deploy {name}", "name": name,
                          "unit": "steps", "done": done, "total": len(_MACHINE_STEPS) - 1,
                          "note": status + (f": {m['message']}" if m and m.get("message") else "")})
            if all(s not in _MACHINE_STEPS[:-1] for s in seen.values()) or time.monotonic() > deadline:
                break
            if not hinted and time.monotonic() - started > 60 and set(seen.values()) == {"requested"}:
                hinted = True
                progress({"event": "message", "what": "deploy", "text": "still requested after a minute: is the "
                          "dispatcher running (`scitq dispatcher`, or the scitq-dispatcher service)?"})
            time.sleep(1.0)
    failed = [n for n in names if seen.get(n) != "running"]
    for name in names:
        m = now.get(name) or {}
        if seen.get(name) == "running":
            ctx.warn(f"{name}: worker {m.get('worker_id')} running")
        else:
            ctx.warn(f"{name}: {seen.get(name)}" + (f": {m['message']}" if m.get("message") else "") +
                     " (`scitq job list` has its deploy's log)")
    return 1 if failed else 0


def _job_id(text: str) -> int:
    return _number(text, "job")


def _log(ctx: Context, client: Any, job_id: int, follow: bool) -> int:
    import time
    after = 0
    while True:
        lines = client.job_log(job_id, after=after)
        for ln in lines:
            ctx.say(ln["line"])
        if lines:
            after = lines[-1]["seq"]
            continue
        if not follow or client.job(job_id)["status"] in ("succeeded", "failed"):
            if follow:  # lines written just before it ended
                for ln in client.job_log(job_id, after=after):
                    ctx.say(ln["line"])
            return 0
        time.sleep(0.5)


def cmd_host_key(ctx: Context, argv: list[str]) -> int:
    args = parse(HOST_KEY_DOC, argv)
    merge_options(args, ctx)
    client = ctx.client()
    host = args["<host>"]
    if args["show"]:
        from .display import fields
        fields(ctx.say, client.host_key(host), ("host", "key_type", "fingerprint", "created"),
               always=("host",))
        return 0
    client.forget_host_key(host)
    ctx.say(f"host key of {host} forgotten: the next contact records the key it offers")
    return 0


_RECRUITER_INTS = (("--rank", "rank", 1), ("--maximum-workers", "maximum_workers", 1),
                   ("--tasks-per-worker", "tasks_per_worker", 1), ("--minimum-tasks", "minimum_tasks", 0),
                   ("--concurrency", "concurrency", 1), ("--prefetch", "prefetch", 0))
RECRUITER_COLUMNS = [("id", "id"), ("batch", "batch"), ("rank", "rank"), ("provider", "provider"),
                     ("flavor", "flavor"), ("region", "region"), ("tasks_per_worker", "tasks/worker"),
                     ("minimum_tasks", "min tasks"), ("maximum_workers", "max workers"),
                     ("concurrency", "conc")]


def cmd_recruiter(ctx: Context, argv: list[str]) -> int:
    args = parse(RECRUITER_DOC, argv)
    merge_options(args, ctx)
    client = ctx.client()
    if args["list"]:
        recruiters = client.get("/recruiters")["recruiters"]
        if args["--json"]:
            ctx.json(recruiters)
        else:
            ctx.table(recruiters, RECRUITER_COLUMNS, empty="(no recruiters)")
        return 0
    if args["delete"]:
        for rid in args["<id>"]:
            client.delete(f"/recruiters/{_number(rid, 'recruiter')}")
            ctx.say(f"recruiter {rid} deleted")
        return 0
    body: dict[str, Any] = {}
    for flag, key, minimum in _RECRUITER_INTS:
        if flag in args and args[flag] is not None:
            body[key] = int_arg(args[flag], flag, minimum)
    for flag, key in (("--provider", "provider"), ("--flavor", "flavor"), ("--region", "region")):
        if args[flag] is not None:
            body[key] = args[flag]
    if args["create"]:
        r = client.post("/recruiters", {"batch": args["<batch>"], **body})
    else:
        if not body:
            raise UsageError("nothing to update: give an option to change", usage_of="recruiter")
        r = client.patch(f"/recruiters/{_number(args['<id>'][0], 'recruiter')}", body)
    if args["--json"]:
        ctx.json(r)
    else:
        ctx.say(f"recruiter {r['id']}: batch {r['batch']} rank {r['rank']}: up to {r['maximum_workers']} "
                f"{r['flavor']} worker(s) from {r['provider']}, one per {r['tasks_per_worker']} pending task(s)")
    return 0


def _number(text: str, what: str) -> int:
    if not text.isdigit():
        raise UsageError(f"a {what} id is a number, not {text!r}", usage_of=what)
    return int(text)


def cmd_flavor(ctx: Context, argv: list[str]) -> int:
    args = parse(FLAVOR_DOC, argv)
    merge_options(args, ctx)
    reply = ctx.client().get("/flavors", provider=args["--provider"], region=args["--region"],
                             filter=args["--filter"])
    if args["--json"]:
        ctx.json(reply["flavors"])
    else:
        ctx.table(reply["flavors"], [("provider", "provider"), ("name", "flavor"), ("region", "region"),
                                     ("cpu", "cpu"), ("mem", "mem GiB"), ("disk", "disk GiB"), ("gpu", "gpu"),
                                     ("price", "price/h")], empty="(no flavors)")
    for name, error in sorted(reply.get("errors", {}).items()):
        ctx.warn(f"scitq: provider {name}: {error}")
    return 0


COMMANDS = {
    "recruiter": (RECRUITER_DOC, cmd_recruiter),
    "flavor": (FLAVOR_DOC, cmd_flavor),
    "provision": (PROVISION_DOC, cmd_provision),
    "job": (JOB_DOC, cmd_job),
    "host-key": (HOST_KEY_DOC, cmd_host_key),
}
