"""Commands about tasks: launch, task, execution."""
from __future__ import annotations

import time

from ..errors import UsageError
from .context import Context, float_arg, ids_arg, int_arg, merge_options, parse

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at every CLI start (bench/startup.py)
    from typing import Any

LAUNCH_DOC = """Submit one task.

Usage:
  scitq launch [options] [--input URI]... [--resource URI]... [--require ID]... [--] <command>...

Options:
  -b NAME, --batch NAME          batch (created if missing) [default: Default]
  -n NAME, --name NAME           task name
  -d IMAGE, --container IMAGE    run in this container image
  -O OPTS, --container-options OPTS  extra options for the container engine
  -i URI, --input URI            input downloaded into input/ (repeatable)
  -o URI, --output URI           folder where output/ is uploaded
  -r URI, --resource URI         shared resource, with optional |gunzip |untar |unzip |mv:DIR (repeatable)
  -R ID, --require ID            task id that must succeed first (repeatable)
  --retry N                      failed attempts retried automatically [default: 0]
  --run-timeout SECONDS          kill and fail the attempt after this long
  --download-timeout SECONDS     time allowed to stage inputs
  --shell SHELL                  none (argv), sh or bash; default: sh when the command is one
                                 argument holding shell syntax (| ; > $ ...), else none
  --priority N                   higher runs first [default: 0]
  --cpu N                        cores needed
  --mem GIB                      memory needed, GiB
  --gpu N                        GPUs needed
  --disk GIB                     disk needed, GiB
  --paused                       submit paused (start it with `scitq task resume`)
  --dry-run                      validate and print the task without submitting it
  --json                         print the created task as JSON

Several words after the options are an argv, quoted for you:
  scitq launch -- grep -c "a b" /input/file.txt
One word holding shell syntax runs with sh:
  scitq launch 'zcat /input/*.gz | wc -l > /output/count'
"""

TASK_DOC = """Inspect and steer tasks.

Usage:
  scitq task list [options] [--batch NAME] [--status S] [--name NAME] [--limit N] [--after ID] [--json]
  scitq task show [options] <id> [--json]
  scitq task counts [options] [--batch NAME] [--json]
  scitq task output [options] <id>... [--stderr] [--execution ID] [--follow] [--json]
  scitq task wait [options] (<id>... | --batch NAME) [--retry N] [--timeout SECONDS] [--interval SECONDS]
                  [--json]
  scitq task update [options] <id> [--command CMD] [--shell SHELL] [--container IMAGE]
                    [--container-options OPTS] [--input URI]... [--resource URI]... [--output URI]
                    [--batch NAME] [--name NAME] [--priority N] [--retry N] [--run-timeout SECONDS]
                    [--download-timeout SECONDS] [--json]
  scitq task relaunch [options] <id>...
  scitq task (pause | resume | stop | kill) [options] <id>...
  scitq task delete [options] <id>...

Options:
  --batch NAME          batch name
  --status S            statuses, comma-separated (waiting, pending, assigned, running, uploading,
                        succeeded, failed, paused, canceled)
  --name NAME           task name
  --limit N             at most N tasks [default: 100]
  --after ID            tasks with a larger id (next page)
  --stderr              the error stream instead of stdout
  --execution ID        a given execution instead of the latest (one <id> only)
  --follow              keep printing new output until the executions end
  --command CMD         new command
  --shell SHELL         none, sh or bash
  --container IMAGE     new container image ('' for none)
  --container-options OPTS  new container options
  --input URI           new inputs (repeat; replaces the list)
  --resource URI        new resources (repeat; replaces the list)
  --output URI          new output folder
  --priority N          new priority
  --retry N             update: new number of automatic retries; wait: relaunch each failed
                        task up to N more times
  --timeout SECONDS     wait: give up after this long (exit 1)
  --interval SECONDS    wait: seconds between two looks [default: 1]
  --run-timeout SECONDS     new run timeout
  --download-timeout SECONDS  new download timeout
  --json                machine-readable output (wait: progress events as JSON lines)

`output` of several tasks heads each with `==> task ID (NAME) <==`.
`wait` shows the run until every task is finished: a bar on a terminal, a
line every 10 s otherwise; it exits 0 when all succeeded, 1 when some did not.
pause/resume SIGSTOP/SIGCONT a running task (or hold/release a queued one);
stop sends SIGTERM then SIGKILL, kill sends SIGKILL; both cancel the task.
relaunch queues a finished, failed or canceled task again.
"""

EXECUTION_DOC = """Executions: the attempts of a task.

Usage:
  scitq execution list [options] <task_id> [--json]
  scitq execution show [options] <id> [--json]
  scitq execution output [options] <id> [--stderr] [--follow] [--json]

Options:
  --stderr      the error stream instead of stdout
  --follow      keep printing new output until the execution ends
  --json        machine-readable output
"""

# compiled where used: importing `re` is an eighth of `task --help`
_SHELL_SYNTAX = r"[|&;<>()$`*?\[\]~{}\n]|\s(&&|\|\|)\s"

# attempts: executions started (a stop or a lost worker adds one without spending a retry);
# retries: automatic retries spent of those allowed
TASK_COLUMNS = [("id", "id"), ("batch", "batch"), ("name", "name"), ("status", "status"),
                ("attempts", "attempts"), ("retries", "retries"), ("command", "command")]


def task_rows(tasks: list[dict]) -> list[dict]:
    return [dict(t, retries=f"{t.get('retries_used', 0)}/{t.get('max_retries', 0)}") for t in tasks]


def build_command(words: list[str], shell: str | None) -> tuple[str, str]:
    """(command text, shell) from the words after the options."""
    if not words:
        raise UsageError("a command is required")
    if len(words) == 1:
        text = words[0]
        if shell is None:
            import re
            shell = "sh" if re.search(_SHELL_SYNTAX, text) else "none"
    else:
        import shlex
        text = shlex.join(words)
        shell = shell or "none"
    return text, shell


def cmd_launch(ctx: Context, argv: list[str]) -> int:
    args = parse(LAUNCH_DOC, argv)
    merge_options(args, ctx)
    command, shell = build_command(args["<command>"], args["--shell"])
    spec: dict[str, Any] = {"command": command, "shell": shell, "batch": args["--batch"]}
    optional = {
        "name": args["--name"], "container": args["--container"],
        "container_options": args["--container-options"], "output": args["--output"],
        "max_retries": int_arg(args["--retry"], "--retry", 0),
        "run_timeout": int_arg(args["--run-timeout"], "--run-timeout", 1),
        "download_timeout": int_arg(args["--download-timeout"], "--download-timeout", 1),
        "priority": int_arg(args["--priority"], "--priority"),
        "cpu": float_arg(args["--cpu"], "--cpu", 0), "mem": float_arg(args["--mem"], "--mem", 0),
        "gpu": int_arg(args["--gpu"], "--gpu", 0), "disk": float_arg(args["--disk"], "--disk", 0),
    }
    spec.update({k: v for k, v in optional.items() if v is not None})
    if args["--input"]:
        spec["inputs"] = args["--input"]
    if args["--resource"]:
        spec["resources"] = args["--resource"]
    if args["--require"]:
        spec["requires"] = ids_arg(args["--require"], "--require")
    if args["--paused"]:
        spec["status"] = "paused"
    from ..schema import validate
    spec = validate("task_create", spec)  # bad URIs and values fail here, before any network
    if args["--dry-run"]:
        if args["--json"]:
            ctx.json(spec)
        else:
            for k, v in spec.items():
                ctx.say(f"{k}: {v}")
            ctx.warn("scitq: dry run, nothing submitted")
        return 0
    task = ctx.client().post("/tasks", spec)
    if args["--json"]:
        ctx.json(task)
    else:
        ctx.say(str(task["id"]))
        ctx.warn(f"scitq: task {task['id']} submitted to batch {task['batch']} ({task['status']})")
    return 0


def _show_task(ctx: Context, t: dict) -> None:
    from .display import fields
    shown = dict(t, retries=f"{t.get('retries_used', 0)} of {t.get('max_retries', 0)} spent")
    fields(ctx.say, shown, ("id", "name", "batch", "status", "command", "shell", "container", "container_options",
                            "inputs", "resources", "output", "priority", "attempts", "retries", "requires",
                            "blocked", "run_timeout", "download_timeout", "cpu", "mem", "gpu", "disk", "created",
                            "status_changed"), always=("id", "status", "command", "attempts", "retries"))


def print_output(ctx: Context, fetch: Any, stream: str, follow: bool, as_json: bool) -> None:
    """Print a stream, following it while the execution runs when asked."""
    print_outputs(ctx, [("", fetch)], stream, follow, as_json)


def print_outputs(ctx: Context, sources: list[tuple[str, Any]], stream: str, follow: bool, as_json: bool) -> None:
    """Print the streams of several sources, (header, fetch(stream, offset)) pairs; with
    several, each stretch of output is headed by its source's header (as `tail` does). With
    `follow`, keep polling the unfinished ones until they end."""
    offsets = [0] * len(sources)
    complete = [False] * len(sources)
    shown: int | None = None
    ends_with_newline = True
    parts: list[dict] = []
    while True:
        progressed = False
        for i, (header, fetch) in enumerate(sources):
            if complete[i]:
                continue
            part = fetch(stream, offsets[i])
            if as_json:
                parts.append(part if not header else dict(part, source=header))
                complete[i] = True
                continue
            text = "".join(f"\n[... {end - start} bytes not kept by the server ...]\n" for start, end in part["cuts"])
            text += part["data"]
            if not text and header and not follow and shown != i:
                text = "(no output)\n"
            if text and header and shown != i:
                # a blank line between sections, after a newline the output itself may lack
                ctx.out.write(("" if shown is None else "\n" if ends_with_newline else "\n\n")
                              + f"==> {header} <==\n")
                shown = i
            if text:
                ctx.out.write(text)
                ends_with_newline = text.endswith("\n")
                ctx.out.flush()
            offsets[i] = part["next_offset"]
            if part["complete"] or (not follow and offsets[i] >= part["size"]):
                complete[i] = True
            elif offsets[i] < part["size"]:
                progressed = True  # more is there already: the reply was capped
        if as_json:
            ctx.json(parts[0] if len(sources) == 1 else parts)
            return
        if all(complete):
            return
        if not progressed:
            time.sleep(0.5)


def cmd_task(ctx: Context, argv: list[str]) -> int:
    args = parse(TASK_DOC, argv)
    merge_options(args, ctx)
    client = ctx.client()
    if args["list"]:
        statuses = [s.strip() for s in args["--status"].split(",")] if args["--status"] else None
        tasks = list(client.tasks(batch=args["--batch"], status=statuses, name=args["--name"],
                                  after=int_arg(args["--after"], "--after", 0) or 0,
                                  limit=int_arg(args["--limit"], "--limit", 1)))
        if args["--json"]:
            ctx.json(tasks)
        else:
            ctx.table(task_rows(tasks), TASK_COLUMNS, empty="(no tasks)")
        return 0
    if args["counts"]:
        counts = client.counts(args["--batch"])
        if args["--json"]:
            ctx.json(counts)
        else:
            ctx.table([{"status": k, "tasks": v} for k, v in sorted(counts.items())],
                      [("status", "status"), ("tasks", "tasks")], empty="(no tasks)")
        return 0
    ids = ids_arg(args["<id>"])
    if args["show"]:
        if len(ids) > 1:
            raise UsageError("show takes one task id", usage_of="task show",
                             usage="  scitq task show [options] <id> [--json]")
        task = client.task(ids[0])
        ctx.json(task) if args["--json"] else _show_task(ctx, task)
        return 0
    if args["output"]:
        stream = "stderr" if args["--stderr"] else "stdout"
        if args["--execution"]:
            if len(ids) > 1:
                raise UsageError("--execution goes with one task id", usage_of="task output",
                                 usage="  scitq task output [options] <id>... [--stderr] [--execution ID] [--follow]")
            eid = int_arg(args["--execution"], "--execution", 1)
            sources = [("", lambda s, o: client.output(eid, s, o))]
        elif len(ids) == 1:
            sources = [("", lambda s, o: client.task_output(ids[0], s, o))]
        else:
            sources = [(f"task {t['id']}" + (f" ({t['name']})" if t.get("name") else ""),
                        (lambda tid: lambda s, o: client.task_output(tid, s, o))(t["id"]))
                       for t in (client.task(i) for i in ids)]
        print_outputs(ctx, sources, stream, bool(args["--follow"]), bool(args["--json"]))
        return 0
    if args["wait"]:
        return _wait(ctx, client, ids, args)
    if args["update"]:
        changes = _task_changes(args)
        task = client.update_task(ids[0], **changes)
        ctx.json(task) if args["--json"] else ctx.say(f"task {task['id']} updated ({task['status']})")
        return 0
    failures = 0
    for task_id in ids:
        try:
            if args["relaunch"]:
                t = client.relaunch(task_id)
                ctx.say(f"task {task_id} relaunched ({t['status']})")
            elif args["delete"]:
                client.delete_task(task_id)
                ctx.say(f"task {task_id} deleted")
            else:
                action = next(a for a in ("pause", "resume", "stop", "kill") if args[a])
                t = client.signal_task(task_id, action)
                ctx.say(f"task {task_id}: {action} ({t['status']})")
        except Exception as e:
            from ..errors import ScitqError
            if not isinstance(e, ScitqError) or len(ids) == 1:
                raise
            ctx.warn(f"scitq: task {task_id}: {e.message}")
            failures += 1
    return 1 if failures else 0


def _wait(ctx: Context, client: Any, ids: list[int], args: dict) -> int:
    from ..errors import NotFound
    from .progress import for_command
    if args["--batch"]:
        ids = [t["id"] for t in client.tasks(batch=args["--batch"])]
        if not ids:
            raise NotFound(f"batch {args['--batch']!r} has no tasks")
    retry = int_arg(args["--retry"], "--retry", 0) or 0
    timeout = float_arg(args["--timeout"], "--timeout", 0)
    interval = float_arg(args["--interval"], "--interval", 0.05) or 1.0
    with for_command(ctx, json=bool(args["--json"])) as progress:  # type: ignore[union-attr]
        try:
            counts = client.join(ids, retry=retry, interval=interval, on_event=progress, timeout=timeout)
        except TimeoutError as e:
            progress.close()
            ctx.warn(f"scitq: gave up waiting after {timeout:g} s: {e}")
            return 1
    return 0 if set(counts) <= {"succeeded"} else 1


def _task_changes(args: dict) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    simple = {"--command": "command", "--shell": "shell", "--container-options": "container_options",
              "--output": "output", "--batch": "batch", "--name": "name"}
    for flag, key in simple.items():
        if args[flag] is not None:
            changes[key] = args[flag]
    if args["--container"] is not None:
        changes["container"] = args["--container"] or None
    for flag, key, minimum in (("--priority", "priority", None), ("--retry", "max_retries", 0),
                               ("--run-timeout", "run_timeout", 1), ("--download-timeout", "download_timeout", 1)):
        if args[flag] is not None:
            changes[key] = int_arg(args[flag], flag, minimum)
    if args["--input"]:
        changes["inputs"] = args["--input"]
    if args["--resource"]:
        changes["resources"] = args["--resource"]
    if not changes:
        raise UsageError("nothing to update: give at least one of --command, --container, --input, ...")
    from ..schema import validate
    return validate("task_update", changes, partial=True)


EXECUTION_COLUMNS = [("id", "id"), ("attempt", "attempt"), ("worker_name", "worker"), ("status", "status"),
                     ("failure_class", "failure"), ("return_code", "rc"), ("started", "started"),
                     ("finished", "finished")]


def cmd_execution(ctx: Context, argv: list[str]) -> int:
    args = parse(EXECUTION_DOC, argv)
    merge_options(args, ctx)
    client = ctx.client()
    if args["list"]:
        executions = client.executions(int_arg(args["<task_id>"], "<task_id>", 1))
        ctx.json(executions) if args["--json"] else ctx.table(executions, EXECUTION_COLUMNS,
                                                              empty="(no executions yet)")
        return 0
    eid = int_arg(args["<id>"], "<id>", 1)
    if args["show"]:
        e = client.execution(eid)
        if args["--json"]:
            ctx.json(e)
        else:
            from .display import fields
            fields(ctx.say, e)
        return 0
    print_output(ctx, lambda s, o: client.output(eid, s, o), "stderr" if args["--stderr"] else "stdout",
                 bool(args["--follow"]), bool(args["--json"]))
    return 0


COMMANDS = {
    "launch": (LAUNCH_DOC, cmd_launch),
    "task": (TASK_DOC, cmd_task),
    "execution": (EXECUTION_DOC, cmd_execution),
}
