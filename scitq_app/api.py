"""The route registry: each API route is declared once, with its roles, body
kind and query parameters, so that the server, the OpenAPI document and the
tests all read the same table."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from . import __version__
from .errors import Invalid
from .schema import CONDITION, Context, INT64_MAX, INT64_MIN, json_schema, SPECS

PEOPLE = ("admin", "user")
ADMIN = ("admin",)
WORKER = ("admin", "worker")
REGISTER = ("admin", "join", "worker")   # a worker token only for its own worker's name
ANY_TOKEN = ("admin", "user", "worker", "join")
PUBLIC: tuple[str, ...] = ()


@dataclass(frozen=True)
class Query:
    name: str
    kind: str  # int, str, csv, csv_int, bool, filter (a flavor filter)
    doc: str
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    method: str
    path: str                 # bottle syntax, e.g. /tasks/<id:int>
    handler: str              # name of the Api method
    summary: str
    roles: tuple[str, ...]
    body: str | None = None   # schema kind
    query: tuple[Query, ...] = ()
    status: int = 200
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def openapi_path(self) -> str:
        return re.sub(r"<(\w+)(:\w+)?>", r"{\1}", self.path)


# Query values as the document states them (ASCII digits: int() would also read "+1", " 1", "1_0", "١"):
_INT_RE = "^-?[0-9]+$"
_ID_LIST_RE = "^([1-9][0-9]{0,17}(,[1-9][0-9]{0,17})*)?$"   # ids below 10**18, as far as they go
_NO_NUL_RE = "^[^\\x00]*$"
_FILTER_RE = f"^{CONDITION}(:{CONDITION}){{0,9}}$"   # a flavor filter: cpu>=16:mem>=64


def _choices_re(choices: tuple[str, ...]) -> str:
    one = "(" + "|".join(re.escape(c) for c in choices) + ")"
    return f"^({one}(,{one})*)?$"


def query_schema(q: Query) -> dict[str, Any]:
    """The JSON Schema of a query parameter: exactly what parse_query accepts."""
    if q.kind == "int":
        return {"type": "integer", "minimum": INT64_MIN if q.minimum is None else q.minimum,
                "maximum": INT64_MAX if q.maximum is None else q.maximum}
    if q.kind == "bool":
        return {"type": "boolean"}
    if q.kind == "csv_int":
        return {"type": "string", "pattern": _ID_LIST_RE}
    if q.kind == "csv":
        return {"type": "string", "pattern": _choices_re(q.choices)} if q.choices else \
            {"type": "string", "pattern": _NO_NUL_RE}
    if q.kind == "filter":
        return {"type": "string", "pattern": _FILTER_RE}
    if q.choices:
        return {"type": "string", "enum": list(q.choices)}
    return {"type": "string", "pattern": _NO_NUL_RE}


def parse_query(route: Route, params: dict[str, str]) -> dict[str, Any]:
    """Validate a route's query string; unknown parameters are refused."""
    known = {q.name: q for q in route.query}
    out: dict[str, Any] = {}
    for key, raw in params.items():
        q = known.get(key)
        if q is None:
            raise Invalid(f"unknown query parameter (known: {', '.join(known) or 'none'})", field=key)
        if "\x00" in raw:
            raise Invalid("contains a NUL byte", field=key)
        if q.kind in ("int", "csv_int"):
            if q.kind == "csv_int" and q.minimum == 1 and not re.match(_ID_LIST_RE, raw):
                raise Invalid(f"must be comma-separated ids (positive integers), not {raw!r}", field=key)
            items = raw.split(",") if q.kind == "csv_int" else [raw]
            if not all(re.match(_INT_RE, x) for x in items if x != "" or q.kind == "int"):
                raise Invalid(f"must be {'comma-separated integers' if q.kind == 'csv_int' else 'an integer'}, "
                              f"not {raw!r}", field=key)
            ints = [int(x) for x in items if x != ""]
            # ids and offsets are 64-bit in the databases: that is the range when none is given
            low = -2 ** 63 if q.minimum is None else q.minimum
            high = 2 ** 63 - 1 if q.maximum is None else q.maximum
            for n in ints:
                if n < low or n > high:
                    raise Invalid(f"must be between {low} and {high}", field=key)
            out[key] = ints if q.kind == "csv_int" else ints[0] if ints else None
        elif q.kind == "csv":
            if q.choices and not re.match(_choices_re(q.choices), raw):
                raise Invalid(f"must be comma-separated values among {', '.join(q.choices)}, not {raw!r}",
                              field=key)
            vals = [x.strip() for x in raw.split(",") if x.strip()]
            for v in vals:
                if q.choices and v not in q.choices:
                    raise Invalid(f"must be among {', '.join(q.choices)}, not {v!r}", field=key)
            out[key] = vals
        elif q.kind == "filter":
            if not re.match(_FILTER_RE, raw):
                raise Invalid(f"not a flavor filter: {raw!r} (expected e.g. cpu>=16:mem>=64; keys cpu, mem, disk, "
                              "gpu, price)", field=key)
            out[key] = raw
        elif q.kind == "bool":
            if raw.lower() not in ("1", "0", "true", "false"):
                raise Invalid(f"must be true or false, not {raw!r}", field=key)
            out[key] = raw.lower() in ("1", "true")
        else:
            if q.choices and raw not in q.choices:
                raise Invalid(f"must be one of {', '.join(q.choices)}, not {raw!r}", field=key)
            out[key] = raw
    return out


_TASK_STATUSES = ("waiting", "pending", "assigned", "running", "uploading", "succeeded", "failed", "paused",
                  "canceled")
_LIMIT = Query("limit", "int", "page size (default 100)", 1, 10_000)
_STREAM = Query("stream", "str", "stdout (default) or stderr", choices=("stdout", "stderr"))
_OFFSET = Query("offset", "int", "byte offset to read from (negative: from the end)", -(1 << 62), 1 << 62)
_OLIMIT = Query("limit", "int", "bytes to return at most (default 1 MiB)", 1, 16 << 20)

R = Route
ROUTES: tuple[Route, ...] = (
    R("GET", "/health", "health", "liveness and version", PUBLIC, tags=("meta",)),
    R("GET", "/openapi.json", "openapi", "this document", PUBLIC, tags=("meta",)),
    R("GET", "/whoami", "whoami", "the calling token: its name, role and worker (null but for worker tokens)",
      ANY_TOKEN, tags=("meta",)),
    # tasks
    R("GET", "/tasks", "list_tasks", "list tasks (keyset pagination: pass next as after)", PEOPLE,
      query=(Query("batch", "str", "batch name"), Query("status", "csv", "statuses", choices=_TASK_STATUSES),
             Query("name", "str", "task name"), Query("ids", "csv_int", "task ids", 1),
             Query("after", "int", "return tasks with a larger id", 0), _LIMIT), tags=("tasks",)),
    R("POST", "/tasks", "create_task", "submit one task", PEOPLE, body="task_single", status=201, tags=("tasks",)),
    R("POST", "/tasks/bulk", "create_tasks", "submit many tasks at once, all or none", PEOPLE, body="task_bulk",
      status=201, tags=("tasks",)),
    R("GET", "/tasks/counts", "count_tasks", "number of tasks by status", PEOPLE,
      query=(Query("batch", "str", "batch name"),), tags=("tasks",)),
    R("GET", "/tasks/<id:int>", "get_task", "one task", PEOPLE, tags=("tasks",)),
    R("PATCH", "/tasks/<id:int>", "update_task", "edit a task", PEOPLE, body="task_update", tags=("tasks",)),
    R("DELETE", "/tasks/<id:int>", "delete_task", "delete a task", PEOPLE, tags=("tasks",)),
    R("POST", "/tasks/<id:int>/relaunch", "relaunch_task", "queue a finished task again", PEOPLE,
      tags=("tasks",)),
    R("POST", "/tasks/<id:int>/signal", "signal_task", "pause, resume, stop or kill a task", PEOPLE,
      body="task_signal", tags=("tasks",)),
    R("GET", "/tasks/<id:int>/executions", "list_executions", "a task's executions, latest first", PEOPLE,
      tags=("executions",)),
    R("GET", "/tasks/<id:int>/output", "task_output", "output of the task's latest execution", PEOPLE,
      query=(_STREAM, _OFFSET, _OLIMIT), tags=("executions",)),
    R("GET", "/executions/<id:int>", "get_execution", "one execution", PEOPLE, tags=("executions",)),
    R("GET", "/executions/<id:int>/output", "execution_output", "an execution's output from a byte offset",
      PEOPLE, query=(_STREAM, _OFFSET, _OLIMIT), tags=("executions",)),
    # batches
    R("GET", "/batches", "list_batches", "batches with counts by status and workers", PEOPLE, tags=("batches",)),
    R("POST", "/batches", "create_batch", "create a batch", PEOPLE, body="batch_create", status=201,
      tags=("batches",)),
    R("GET", "/batches/<name>", "get_batch", "one batch", PEOPLE, tags=("batches",)),
    R("PATCH", "/batches/<name>", "update_batch", "change a batch's priority", PEOPLE, body="batch_update",
      tags=("batches",)),
    R("POST", "/batches/<name>/pause", "pause_batch", "stop claiming the batch's tasks (signal: pause SIGSTOPs "
      "running ones)", PEOPLE, body="batch_action", tags=("batches",)),
    R("POST", "/batches/<name>/go", "go_batch", "resume a paused or stopped batch", PEOPLE, body="batch_action",
      tags=("batches",)),
    R("POST", "/batches/<name>/stop", "stop_batch", "stop the batch (signal: term or kill its running tasks, "
      "which go back to pending)", PEOPLE, body="batch_action", tags=("batches",)),
    R("DELETE", "/batches/<name>", "delete_batch", "delete a batch and its tasks", PEOPLE, tags=("batches",)),
    # workers
    R("GET", "/workers", "list_workers", "workers in id order; a page of them with `limit` (then `next`, the "
      "`after` of the next page, is set while more may follow)", PEOPLE,
      query=(Query("batch", "str", "batch name"), Query("after", "int", "return workers with a larger id", 0),
             Query("limit", "int", "page size (default: every worker)", 1, 10_000)), tags=("workers",)),
    R("GET", "/workers/<id:int>", "get_worker", "one worker", PEOPLE, tags=("workers",)),
    R("PATCH", "/workers/<id:int>", "update_worker", "change concurrency, prefetch, batch or status", PEOPLE,
      body="worker_update", tags=("workers",)),
    R("DELETE", "/workers/<id:int>", "delete_worker", "forget a worker (its executions are requeued)", PEOPLE,
      tags=("workers",)),
    R("POST", "/workers/<id:int>/signal", "signal_worker", "worker-level signal (clean)", PEOPLE,
      body="worker_signal", tags=("workers",)),
    # worker protocol
    R("POST", "/workers/register", "register", "register a worker; returns its id and token. With a join "
      "token: spends one use, honours its pinned name and batch. Refused (409) under the name of a live worker "
      "unless with that worker's own token", REGISTER, body="register", status=201, tags=("protocol",)),
    R("POST", "/workers/<id:int>/claim", "claim", "claim executions (long-polls when none is pending)", WORKER,
      body="claim", tags=("protocol",)),
    R("POST", "/workers/<id:int>/heartbeat", "heartbeat", "stats in; settings, signals and fenced executions "
      "out; renews leases", WORKER, body="heartbeat", tags=("protocol",)),
    R("POST", "/workers/<id:int>/outbox", "outbox", "deliver buffered reports and output in order", WORKER,
      body="outbox", tags=("protocol",)),
    R("GET", "/workers/<id:int>/rclone-config", "worker_rclone_config", "the rclone config this worker stages "
      "data with (a secret; a worker token gets only its own); refetch when the heartbeat's rclone_config hash "
      "changes", WORKER, tags=("protocol",)),
    R("GET", "/pyz/info", "pyz_info", "the scitq.pyz workers upgrade to: version, sha256, size (409 when this "
      "server has none: it runs from source and [server] pyz is unset)", WORKER, tags=("protocol",)),
    R("GET", "/pyz", "pyz_download", "that scitq.pyz itself, base64 in `data`, with its version and sha256",
      WORKER, tags=("protocol",)),
    R("POST", "/executions/<id:int>/report", "report", "report an execution's phase (idempotent)", WORKER,
      body="report", tags=("protocol",)),
    R("POST", "/executions/<id:int>/output", "append_output", "append output bytes at an offset (idempotent)",
      WORKER, body="output", tags=("protocol",)),
    # administration
    R("GET", "/tokens", "list_tokens", "API tokens (never their secrets)", ADMIN, tags=("admin",)),
    R("POST", "/tokens", "create_token", "create an API token; its secret is shown once", ADMIN,
      body="token_create", status=201, tags=("admin",)),
    R("DELETE", "/tokens/<name>", "revoke_token", "revoke a token", ADMIN, tags=("admin",)),
    R("POST", "/join-tokens", "create_join_token", "mint a join token for new workers (uses, ttl, optional "
      "batch and worker name); join_token is its secret, followed by '.' and the sha256 of the server's TLS "
      "certificate when [server] tls_certificate is set", ADMIN, body="join_token_create", status=201,
      tags=("admin",)),
    R("GET", "/rclone-config", "rclone_config", "the server's rclone config (a secret), for `scitq config rclone "
      "--install` on another machine", ADMIN, tags=("admin",)),
    R("GET", "/recruiters", "list_recruiters", "recruiters, by batch and rank", PEOPLE, tags=("recruiting",)),
    R("POST", "/recruiters", "create_recruiter", "recruit workers for a batch from a provider (admin: it spends)",
      ADMIN, body="recruiter_create", status=201, tags=("recruiting",)),
    R("PATCH", "/recruiters/<id:int>", "update_recruiter", "change a recruiter", ADMIN, body="recruiter_update",
      tags=("recruiting",)),
    R("DELETE", "/recruiters/<id:int>", "delete_recruiter", "stop recruiting (workers already rented stay until "
      "idle)", ADMIN, tags=("recruiting",)),
    R("GET", "/machines", "list_machines", "machines rented for scitq, with their price per hour", PEOPLE,
      query=(Query("all", "bool", "also the destroyed ones"),), tags=("recruiting",)),
    R("POST", "/machines", "deploy_machines", "rent `count` machines of a flavor from a provider now and make "
      "them workers (the dispatcher creates and provisions them: deploy jobs); 409 when the provider's caps "
      "leave no room", ADMIN, body="machine_deploy", status=201, tags=("recruiting",)),
    R("GET", "/flavors", "list_flavors", "flavors the providers offer, cheapest first", PEOPLE,
      query=(Query("provider", "str", "one provider"), Query("region", "str", "one region"),
             Query("filter", "filter", "e.g. cpu>=16:mem>=64")), tags=("recruiting",)),
    R("GET", "/jobs", "list_jobs", "background jobs (provision...), by id", ADMIN,
      query=(Query("status", "str", "pending, running, succeeded or failed",
                   choices=("pending", "running", "succeeded", "failed")),
             Query("after", "int", "job id", 0), _LIMIT), tags=("jobs",)),
    R("POST", "/jobs", "create_job", "record a job a command runs (its steps follow with PATCH and its log "
      "with POST /jobs/{id}/log)", ADMIN, body="job_create", status=201, tags=("jobs",)),
    R("GET", "/jobs/<id:int>", "get_job", "one job", ADMIN, tags=("jobs",)),
    R("PATCH", "/jobs/<id:int>", "update_job", "move a job on: status, step, progress, message (409 once it "
      "ended)", ADMIN, body="job_update", tags=("jobs",)),
    R("POST", "/jobs/<id:int>/retry", "retry_job", "do a failed job again where the server can (a destroy; a "
      "deploy a person asked for): the job or machine made; 409 saying what retries it otherwise", ADMIN,
      tags=("jobs",)),
    R("DELETE", "/jobs/<id:int>", "delete_job", "delete an ended job and its log", ADMIN, tags=("jobs",)),
    R("GET", "/jobs/<id:int>/log", "job_log", "a job's log lines numbered after `after`", ADMIN,
      query=(Query("after", "int", "line number", 0), _LIMIT), tags=("jobs",)),
    R("POST", "/jobs/<id:int>/log", "append_job_log", "append lines to a job's log (409 once it ended)", ADMIN,
      body="job_log_append", tags=("jobs",)),
    R("POST", "/host-keys", "trust_host_key", "trust on first use: the SSH host key recorded for host, this one "
      "if none was; 409 naming both keys when another is recorded", ADMIN, body="host_key_trust", tags=("admin",)),
    R("GET", "/host-keys/<host>", "get_host_key", "the SSH host key recorded for a host", ADMIN, tags=("admin",)),
    R("DELETE", "/host-keys/<host>", "forget_host_key", "forget a host's key: the next contact trusts anew",
      ADMIN, tags=("admin",)),
    R("GET", "/events", "list_events", "the audit log", PEOPLE,
      query=(Query("target", "str", "e.g. task:12, batch:b1"), Query("after", "int", "event id", 0), _LIMIT),
      tags=("admin",)),
)

PREFIX = "/api/v1"

# Bodies a valid document can still see refused, by the server's configuration: say which keys decide.
_CONTAINER_422 = ("invalid field; also a container_options option outside the server's allow-list "
                  "([server] container_options), or one that is not an option; or a file:// URI (inputs, "
                  "resources, output) outside the server's [server] file_roots (default none: every file:// "
                  "URI is refused)")
CONFIGURED_422 = {"task_single": _CONTAINER_422, "task_bulk": _CONTAINER_422, "task_update": _CONTAINER_422}


def openapi_document(context: Context | None = None) -> dict[str, Any]:
    """The OpenAPI 3 document of every route in ROUTES; `context` (the server's remotes and
    file roots) narrows the URI patterns to what that server accepts."""
    paths: dict[str, Any] = {}
    for r in ROUTES:
        op: dict[str, Any] = {"summary": r.summary, "operationId": r.handler, "tags": list(r.tags),
                              "responses": {str(r.status): {"description": "success",
                                                            "content": {"application/json": {}}}}}
        for code, text in ((400, "malformed JSON"), (401, "no valid token"), (403, "role not allowed"),
                           (404, "unknown id"), (409, "illegal transition"), (413, "body too large"),
                           (415, "not JSON"), (422, "invalid field")):
            op["responses"][str(code)] = {"description": text,
                                          "content": {"application/json": {"schema": {
                                              "$ref": "#/components/schemas/Error"}}}}
        if r.body in CONFIGURED_422:
            op["responses"]["422"]["description"] = CONFIGURED_422[r.body]
        if r.body == "task_bulk":
            op["responses"]["409"]["description"] = "the idempotency key was used by this token for another body"
        if r.body in ("task_single", "task_bulk"):
            op["responses"]["404"]["description"] = "unknown id, or a task named in requires does not exist"
        params = [{"name": m.group(1), "in": "path", "required": True,
                   "schema": {"type": "integer" if m.group(2) == ":int" else "string"}}
                  for m in re.finditer(r"<(\w+)(:\w+)?>", r.path)]
        for q in r.query:
            params.append({"name": q.name, "in": "query", "required": False, "description": q.doc,
                           "schema": query_schema(q)})
        if params:
            op["parameters"] = params
        if r.body:
            # an edit (PATCH) must name a field, so it needs a body even though no field is required
            op["requestBody"] = {"required": bool(json_schema(r.body).get("required")) or r.method == "PATCH",
                                 "content": {"application/json": {"schema": {
                                     "$ref": f"#/components/schemas/{r.body}"}}}}
        if r.roles:
            op["security"] = [{"bearer": []}]
            op["description"] = "roles: " + ", ".join(r.roles)
        else:
            op["security"] = []
        paths.setdefault(PREFIX + r.openapi_path, {})[r.method.lower()] = op
    schemas = {kind: json_schema(kind, context) for kind in SPECS}
    for r in ROUTES:
        if r.method == "PATCH" and r.body:  # validated as partial: an edit must name a field (server.py)
            schemas[r.body]["minProperties"] = 1
    schemas["Error"] = {"type": "object", "required": ["error", "detail"],
                        "properties": {"error": {"type": "string"}, "detail": {"type": "string"},
                                       "data": {"type": "object"}}}
    return {"openapi": "3.0.3",
            "info": {"title": "scitq API", "version": __version__,
                     "description": "Tasks, batches, workers and the worker protocol of scitq."},
            "paths": paths,
            "components": {"schemas": schemas,
                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}]}


HandlerFn = Callable[..., Any]
