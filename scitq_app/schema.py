"""Request bodies: one declaration per kind, used both to validate input and to
describe it in the OpenAPI document.

`validate(KIND, payload)` returns a cleaned dict or raises `Invalid` naming
the first bad field. Types are strict: `"4"` is not an int, `1` is not a bool.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Callable, Iterable, Iterator, Sequence, overload

from . import uris
from .errors import Invalid
from .models import (FailureClass, JobStatus, Shell, SignalAction, Stream, TaskStatus, WorkerStatus,
                     SETTABLE_WORKER_STATUSES, values_of)

MAX_TEXT = 1_000_000
MAX_STR = 10_000
MAX_TASK_NAME = 500
MAX_STATS_DEPTH = 8
MAX_STATS_SIZE = 64 * 1024
INT64_MIN, INT64_MAX = -2 ** 63, 2 ** 63 - 1
INT32_MAX = 2 ** 31 - 1  # INTEGER columns (timeouts, return codes, GPUs) are 32-bit in PostgreSQL
MAX_BULK = 100_000
MAX_B64 = (16 << 20) * 4 // 3 + 4
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@+-]{0,199}$")
CONDITION = r"(cpu|mem|disk|gpu|price)(>=|<=|==|>|<|=)[0-9]{1,9}(\.[0-9]{1,6})?"
# a flavor by name, or a filter of conditions joined by ':' (cloud/provider.py reads them)
FLAVOR_RE = re.compile(rf"^([A-Za-z0-9][A-Za-z0-9_.+-]{{0,199}}|{CONDITION}(:{CONDITION}){{0,9}})$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# JSON can carry lone UTF-16 surrogates (as \udXXX escapes): no database can store them as text
_SURROGATE = re.compile("[\ud800-\udfff]")
# Any character _check_text refuses in a text (but line breaks): a text without one skips its checks
# one by one, which a 100,000-task bulk request would run on each of its 300,000 texts.
_SUSPECT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
# The same rules as patterns, for the OpenAPI document (schemathesis checks the server against it):
# no control character but tab, LF and CR (one-line texts: but tab), and "not blank" where
# _check_text strips a value to test it (\s is str.isspace in Python's re, as strip() reads it).
_CTRL = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f"
_CTRL_LINE = r"\x00-\x08\x0a-\x1f\x7f"
STR_PATTERN = f"^[^{_CTRL}]*$"
TEXT_PATTERN = f"^[^{_CTRL}]*[^\\s{_CTRL}][^{_CTRL}]*$"
LINE_PATTERN = f"^[^{_CTRL_LINE}]*[^\\s{_CTRL_LINE}][^{_CTRL_LINE}]*$"


@dataclass(frozen=True)
class Field:
    kind: str                      # str, options, text, name, int, number, bool, enum, uris, resources, output,
                                   # ints, strs, requires, dict, list
    doc: str
    required: bool = False
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    default: Any = None
    item: str | None = None        # for 'list': the kind of its objects
    min_length: int | None = None  # for 'str': bounds on its length in characters
    max_length: int | None = None


def _err(name: str, msg: str) -> Invalid:
    return Invalid(msg, field=name)


def _check_text(name: str, v: Any, *, empty_ok: bool, limit: int = MAX_TEXT, multiline: bool = True) -> str:
    if not isinstance(v, str):
        raise _err(name, f"must be a string, not {_tname(v)}")
    if not empty_ok and not v.strip():
        raise _err(name, "must not be empty")
    if _SUSPECT.search(v) is None:  # the common case: one scan instead of three
        if len(v) > limit:
            raise _err(name, f"is longer than {limit} characters")
        if not multiline and ("\n" in v or "\r" in v):
            raise _err(name, "contains a control character")
        return v
    if "\x00" in v:
        raise _err(name, "contains a NUL byte")
    if len(v) > limit:
        raise _err(name, f"is longer than {limit} characters")
    if _CONTROL.search(v) or (not multiline and ("\n" in v or "\r" in v)):
        raise _err(name, "contains a control character")
    if _SURROGATE.search(v):
        raise _err(name, "is not valid Unicode (it holds a lone surrogate)")
    return v


def _no_surrogates(name: str, v: Any) -> Any:
    for i, x in enumerate(v if isinstance(v, list) else [v]):
        if isinstance(x, str) and _SURROGATE.search(x):
            raise _err(f"{name}[{i}]" if isinstance(v, list) else name, "is not valid Unicode (it holds a lone "
                       "surrogate)")
    return v


def check_stats(name: str, v: Any) -> dict[str, Any]:
    """A heartbeat's stats: an object of finite numbers, strings, booleans, nulls, arrays and
    objects, at most MAX_STATS_DEPTH levels deep and MAX_STATS_SIZE bytes as JSON. Python's json
    reads NaN and Infinity, which no JSON reader of `GET /workers` would accept back."""
    if not isinstance(v, dict):
        raise _err(name, f"must be an object, not {_tname(v)}")
    budget = [MAX_STATS_SIZE]

    def walk(x: Any, where: str, depth: int) -> None:
        if depth > MAX_STATS_DEPTH:
            raise _err(where, f"is nested more than {MAX_STATS_DEPTH} levels deep")
        budget[0] -= 8
        if isinstance(x, float) and not math.isfinite(x):
            raise _err(where, "must be a finite number (not NaN or Infinity)")
        if isinstance(x, str):
            budget[0] -= len(x)
            if _SURROGATE.search(x):
                raise _err(where, "is not valid Unicode (it holds a lone surrogate)")
        elif isinstance(x, dict):
            for key, item in x.items():
                budget[0] -= len(key)
                if _SURROGATE.search(key):
                    raise _err(where, "holds a key that is not valid Unicode")
                walk(item, f"{where}.{key}", depth + 1)
        elif isinstance(x, list):
            for i, item in enumerate(x):
                walk(item, f"{where}[{i}]", depth + 1)
        if budget[0] < 0:
            raise _err(name, f"is larger than {MAX_STATS_SIZE} bytes")

    walk(v, name, 1)
    return v


def _tname(v: Any) -> str:
    return "null" if v is None else {bool: "boolean", int: "integer", float: "number", str: "string",
                                     list: "array", dict: "object"}.get(type(v), type(v).__name__)


def _number(name: str, f: Field, v: Any, integer: bool) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float) if not integer else int):
        raise _err(name, f"must be {'an integer' if integer else 'a number'}, not {_tname(v)}")
    if isinstance(v, int) and not INT64_MIN <= v <= INT64_MAX:
        if integer:  # the databases store 64-bit integers at most
            raise _err(name, "is out of range (a 64-bit integer)")
        try:
            v = float(v)
        except OverflowError:
            raise _err(name, "must be a finite number") from None
    if not integer and v != v or v in (float("inf"), float("-inf")):
        raise _err(name, "must be a finite number")
    if f.minimum is not None and v < f.minimum:
        raise _err(name, f"must be at least {f.minimum:g}")
    if f.maximum is not None and v > f.maximum:
        raise _err(name, f"must be at most {f.maximum:g}")
    return v


def check_value(name: str, f: Field, v: Any, remotes: Iterable[str] | None = None,
                file_roots: Iterable[str] | None = None) -> Any:
    """Validate one value against its field; return the cleaned value. `remotes`, when
    given, are the storage remotes URIs may name, `file_roots` the folders file:// URIs
    may name (see `uris.parse`)."""
    if v is None:
        if f.nullable:
            return None
        raise _err(name, "must not be null")
    k = f.kind
    if k in ("str", "options"):  # options: the server checks them against its allow-list too
        _check_text(name, v, empty_ok=True, limit=f.max_length or MAX_STR)
        if f.min_length is not None and len(v) < f.min_length:
            raise _err(name, f"is shorter than {f.min_length} characters")
        return v
    if k == "stats":
        return check_stats(name, v)
    if k == "text":
        return _check_text(name, v, empty_ok=False)
    if k == "name":
        _check_text(name, v, empty_ok=False, limit=200, multiline=False)
        if not NAME_RE.match(v):
            raise _err(name, f"{v!r} is not a valid name (letters, digits, _ . : @ + -; at most 200)")
        return v
    if k == "provider":
        return check_value(name, Field("name", f.doc), v, remotes, file_roots)
    if k == "flavor":
        _check_text(name, v, empty_ok=False, limit=200, multiline=False)
        if not FLAVOR_RE.fullmatch(v):
            raise _err(name, f"{v!r} is neither a flavor name nor a filter such as cpu>=16:mem>=64 (keys cpu, mem, "
                             "disk, gpu, price)")
        return v
    if k == "b64":
        if not isinstance(v, str):
            raise _err(name, f"must be a base64 string, not {_tname(v)}")
        if len(v) > (f.max_length or MAX_B64):
            raise _err(name, f"is longer than {f.max_length or MAX_B64} characters")
        return v
    if k == "int":
        return _number(name, f, v, True)
    if k == "number":
        return _number(name, f, v, False)
    if k == "bool":
        if not isinstance(v, bool):
            raise _err(name, f"must be true or false, not {_tname(v)}")
        return v
    if k == "enum":
        if not isinstance(v, str) or v not in f.choices:
            raise _err(name, f"must be one of {', '.join(f.choices)}, not {v!r}")
        return v
    if k == "uris":
        return [u.raw for u in uris.parse_list(_no_surrogates(name, v), name, remotes=remotes,
                                               file_roots=file_roots)]
    if k == "resources":
        return [u.raw for u in uris.parse_list(_no_surrogates(name, v), name, allow_actions=True,
                                               remotes=remotes, file_roots=file_roots)]
    if k == "output":
        return uris.parse_output(_no_surrogates(name, v), name, remotes=remotes, file_roots=file_roots).raw
    if k == "ints":
        if not isinstance(v, list):
            raise _err(name, f"must be an array of integers, not {_tname(v)}")
        return [_number(f"{name}[{i}]", Field("int", "", minimum=f.minimum), x, True) for i, x in enumerate(v)]
    if k == "strs":
        if not isinstance(v, list):
            raise _err(name, f"must be an array of strings, not {_tname(v)}")
        if f.maximum is not None and len(v) > f.maximum:
            raise _err(name, f"holds {len(v)} items, at most {int(f.maximum)} are allowed")
        return [_check_text(f"{name}[{i}]", x, empty_ok=False, limit=4096) for i, x in enumerate(v)]
    if k == "requires":
        if not isinstance(v, list):
            raise _err(name, f"must be an array of task ids or refs, not {_tname(v)}")
        out: list[Any] = []
        for i, x in enumerate(v):
            if isinstance(x, str):
                out.append(_check_text(f"{name}[{i}]", x, empty_ok=False, limit=200, multiline=False))
            else:
                out.append(_number(f"{name}[{i}]", Field("int", "", minimum=1), x, True))
        return out
    if k == "dict":
        if not isinstance(v, dict):
            raise _err(name, f"must be an object, not {_tname(v)}")
        return v
    if k == "object":  # a body of its own kind (f.item), nested
        return validate(f.item or "", v, where=name, remotes=remotes, file_roots=file_roots)
    if k == "list":
        if not isinstance(v, list):
            raise _err(name, f"must be an array, not {_tname(v)}")
        if f.maximum is not None and len(v) > f.maximum:
            raise _err(name, f"holds {len(v)} items, at most {int(f.maximum)} are allowed")
        if f.item:
            return [validate(f.item, x, where=f"{name}[{i}]", remotes=remotes, file_roots=file_roots)
                    for i, x in enumerate(v)]
        return v
    raise AssertionError(k)


def validate(kind: str, payload: Any, *, partial: bool = False, where: str = "",
             remotes: Iterable[str] | None = None, file_roots: Iterable[str] | None = None) -> dict[str, Any]:
    """Validate a request body of `kind`; `partial` for updates (nothing required,
    defaults not filled in). Raises Invalid on the first bad or unknown field.
    `remotes` (the server's rclone remotes) refuses URIs naming any other remote;
    `file_roots` (the server's [server] file_roots) refuses file:// URIs outside them."""
    spec = SPECS[kind]
    prefix = f"{where}." if where else ""
    if not isinstance(payload, dict):
        raise Invalid(f"{where or 'body'} must be a JSON object, not {_tname(payload)}", field=where or None)
    for key in payload:
        if key not in spec:
            raise _err(prefix + str(key), f"unknown field (known: {', '.join(spec)})")
    out: dict[str, Any] = {}
    for key, f, required, default in _fields(kind):
        if key in payload:
            out[key] = check_value(prefix + key, f, payload[key], remotes, file_roots)
        elif partial:
            continue
        elif required:
            raise _err(prefix + key, "is required")
        elif default is not None:
            out[key] = default
    if partial and not out:
        raise Invalid(f"{where or 'body'} names no field to change")
    return out


@lru_cache(maxsize=None)
def _fields(kind: str) -> tuple[tuple[str, Field, bool, Any], ...]:
    """A body's fields with what `validate` reads of each, in the spec's order (read once: a bulk
    request validates 100,000 tasks)."""
    return tuple((key, f, f.required, f.default) for key, f in SPECS[kind].items())


class LazyItems(Sequence[dict[str, Any]]):
    """The items of a list field, validated as they are read: a bulk request's tasks stream
    into the store in chunks instead of being held as the parsed body plus its validated copy
    plus its rows all at once. Each read validates again (a retried transaction reads them
    again). `check`, if given, is called on each validated item with its field name (the
    server's configured refusals)."""

    def __init__(self, kind: str, raw: list[Any], where: str, *, remotes: Iterable[str] | None = None,
                 file_roots: Iterable[str] | None = None,
                 check: Callable[[dict[str, Any], str], None] | None = None) -> None:
        self.kind, self.raw, self.where, self.check = kind, raw, where, check
        self.remotes = None if remotes is None else frozenset(remotes)
        self.file_roots = None if file_roots is None else tuple(file_roots)

    def __len__(self) -> int:
        return len(self.raw)

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[dict[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> dict[str, Any] | Sequence[dict[str, Any]]:
        if isinstance(i, slice):
            return [self._one(j) for j in range(*i.indices(len(self.raw)))]
        return self._one(i if i >= 0 else len(self.raw) + i)

    def _one(self, i: int) -> dict[str, Any]:
        where = f"{self.where}[{i}]"
        item = validate(self.kind, self.raw[i], where=where, remotes=self.remotes, file_roots=self.file_roots)
        if self.check is not None:
            self.check(item, where)
        return item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self.raw)):
            yield self._one(i)


def validate_bulk(kind: str, payload: Any, list_field: str, *, remotes: Iterable[str] | None = None,
                  file_roots: Iterable[str] | None = None,
                  check: Callable[[dict[str, Any], str], None] | None = None) -> dict[str, Any]:
    """`validate` for a body whose `list_field` (a list of items) is checked lazily: the rest
    of the body now, the list's length now, each item as it is read (`LazyItems`)."""
    f = SPECS[kind][list_field]
    if not isinstance(payload, dict) or not isinstance(payload.get(list_field), list):
        return validate(kind, payload, remotes=remotes, file_roots=file_roots)  # its own refusal
    items = payload[list_field]
    if f.maximum is not None and len(items) > f.maximum:
        raise _err(list_field, f"holds {len(items)} items, at most {int(f.maximum)} are allowed")
    out = validate(kind, {**payload, list_field: []}, remotes=remotes, file_roots=file_roots)
    out[list_field] = LazyItems(f.item or "", items, list_field, remotes=remotes, file_roots=file_roots,
                                check=check)
    return out


def _f(kind: str, doc: str, **kw: Any) -> Field:
    return Field(kind, doc, **kw)


_TASK_FIELDS: dict[str, Field] = {
    "command": _f("text", "the command line", required=True),
    # PostgreSQL refuses an index entry over 2704 bytes (task_name): 500 characters are 2000 bytes at most.
    "name": _f("str", "a name for people and filters", nullable=True, max_length=MAX_TASK_NAME),
    "batch": _f("name", "batch name (created if missing)", default="Default"),
    "shell": _f("enum", "none: run the command as argv; sh or bash: run it with that shell",
                choices=tuple(values_of(Shell)), default="none"),
    "container": _f("str", "container image (runs without a container when null)", nullable=True),
    "container_options": _f("options", "extra options for the container engine's run: only those of the server's "
                            "[server] container_options (an allow-list; others are refused with 422)",
                            nullable=True),
    "inputs": _f("uris", "URIs downloaded into input/ before the command starts"),
    "resources": _f("resources", "shared read-only URIs (with |actions) linked into resource/"),
    "output": _f("output", "folder URI where output/ is uploaded", nullable=True),
    "priority": _f("int", "higher runs first", minimum=-1_000_000, maximum=1_000_000),
    "cpu": _f("number", "cores needed", nullable=True, minimum=0),
    "mem": _f("number", "memory needed, GiB", nullable=True, minimum=0),
    "gpu": _f("int", "GPUs needed", nullable=True, minimum=0, maximum=64),
    "disk": _f("number", "disk needed, GiB", nullable=True, minimum=0),
    "max_retries": _f("int", "failed attempts retried automatically", minimum=0, maximum=1000),
    "download_timeout": _f("int", "seconds allowed to stage inputs", nullable=True, minimum=1,
                           maximum=INT32_MAX),
    "run_timeout": _f("int", "seconds allowed to run; then killed and failed as 'timeout'",
                      nullable=True, minimum=1, maximum=INT32_MAX),
    "use_cache": _f("bool", "reuse an identical succeeded execution"),
}

SPECS: dict[str, dict[str, Field]] = {
    "task_create": {
        **_TASK_FIELDS,
        "requires": _f("requires", "task ids (or refs of tasks in the same bulk) that must succeed first"),
        "ref": _f("str", "a key other tasks of the same bulk request can list in requires"),
        "status": _f("enum", "pending (default) or paused", choices=("pending", "paused")),
    },
    # one task (POST /tasks): refs name tasks of the same bulk request, so requires holds ids only
    "task_single": {
        **_TASK_FIELDS,
        "requires": _f("ints", "ids of the tasks that must succeed first", minimum=1),
        "ref": _f("str", "accepted for symmetry with bulk requests; nothing can refer to it"),
        "status": _f("enum", "pending (default) or paused", choices=("pending", "paused")),
    },
    # an edit names only the fields it changes: none is required, none defaults
    "task_update": {k: replace(v, required=False, default=None) for k, v in _TASK_FIELDS.items()},
    "task_bulk": {"tasks": _f("list", "tasks to create, all or none", required=True, maximum=MAX_BULK,
                              item="task_create"),
                  "key": _f("str", "idempotency key, scoped to the token: a retried request with the same key "
                                   "and body creates nothing and returns the same ids; the same key with another "
                                   "body is refused (409)", nullable=True, min_length=8, max_length=100)},
    "task_signal": {"action": _f("enum", "pause, resume, stop (SIGTERM then SIGKILL) or kill", required=True,
                                 choices=("pause", "resume", "stop", "kill"))},
    "batch_create": {"name": _f("name", "batch name", required=True),
                     "priority": _f("int", "priority", minimum=-1_000_000, maximum=1_000_000)},
    "batch_update": {"priority": _f("int", "priority", minimum=-1_000_000, maximum=1_000_000)},
    "batch_action": {"signal": _f("enum", "also signal running executions",
                                  choices=("none", "pause", "resume", "term", "kill"), nullable=True)},
    "worker_update": {
        "concurrency": _f("int", "tasks run at once", minimum=0, maximum=10_000),
        "prefetch": _f("int", "tasks claimed ahead", minimum=0, maximum=10_000),
        "batch": _f("name", "only run tasks of this batch (null: any)", nullable=True),
        "status": _f("enum", "running, paused or draining",
                     choices=tuple(s.value for s in SETTABLE_WORKER_STATUSES)),
    },
    "worker_signal": {"action": _f("enum", "worker-level signal: clean (remove finished work dirs), upgrade "
                                          "(install the server's scitq.pyz, drain, restart on it)", required=True,
                                   choices=("clean", "upgrade"))},
    "register": {
        "name": _f("name", "worker name", required=True),
        "hostname": _f("str", "host name", nullable=True),
        "concurrency": _f("int", "tasks run at once", minimum=0, maximum=10_000),
        "prefetch": _f("int", "tasks claimed ahead", minimum=0, maximum=10_000),
        "batch": _f("name", "batch", nullable=True),
        "status": _f("enum", "status at start", choices=("running", "paused")),
        "cpu": _f("number", "cores", nullable=True, minimum=0),
        "mem": _f("number", "memory GiB", nullable=True, minimum=0),
        "gpu": _f("int", "GPUs", nullable=True, minimum=0, maximum=INT32_MAX),
        "version": _f("str", "worker software version", nullable=True),
    },
    "claim": {
        "slots": _f("int", "executions wanted", required=True, minimum=0, maximum=1000),
        "wait": _f("number", "seconds to long-poll when nothing is pending", minimum=0, maximum=60),
        "request": _f("str", "request id: a retried claim (its reply lost) with the same id gets the same "
                             "executions", nullable=True, min_length=8, max_length=100),
    },
    "heartbeat": {
        "stats": _f("stats", f"load, cpu, mem, disk, net, versions: JSON with finite numbers, nested "
                             f"{MAX_STATS_DEPTH} levels deep and {MAX_STATS_SIZE} bytes long at most"),
        "executions": _f("ints", "ids of the executions the worker still holds", minimum=1),
        "acks": _f("ints", "ids of the signals the worker has applied", minimum=1),
    },
    "report": {
        "phase": _f("enum", "running, uploading, succeeded or failed", required=True,
                    choices=("running", "uploading", "succeeded", "failed")),
        "return_code": _f("int", "exit code", nullable=True, minimum=-2**31, maximum=INT32_MAX),
        "failure_class": _f("enum", "why it failed", nullable=True, choices=tuple(values_of(FailureClass))),
        "output_files": _f("strs", "files uploaded"),
        "peak_mem": _f("int", "peak memory, bytes", nullable=True, minimum=0),
        "cpu_time": _f("number", "CPU seconds", nullable=True, minimum=0),
        "message": _f("str", "a short human explanation", nullable=True),
    },
    "output": {
        "stream": _f("enum", "stdout or stderr", required=True, choices=tuple(values_of(Stream))),
        "offset": _f("int", "byte offset of data in the stream", required=True, minimum=0, maximum=2 ** 62),
        "data": _f("b64", "base64 of the bytes (at most 16 MiB decoded)", required=True),
        "final": _f("bool", "this is the end of the stream"),
    },
    "outbox_item": {
        "type": _f("enum", "report or output", required=True, choices=("report", "output")),
        "execution_id": _f("int", "execution", required=True, minimum=1),
        "body": _f("dict", "a report or output body", required=True),
    },
    "outbox": {"items": _f("list", "reports and output, applied in order", required=True, maximum=10_000,
                           item="outbox_item")},
    "join_token_create": {
        "uses": _f("int", "workers it may register", minimum=1, maximum=10_000, default=1),
        "ttl": _f("number", "seconds it stays valid (at most 30 days)", minimum=1, maximum=30 * 86400,
                  default=3600),
        "batch": _f("name", "batch the workers it registers join", nullable=True),
        "name": _f("name", "the only worker name it registers", nullable=True),
    },
    "recruiter_create": {
        "batch": _f("name", "the batch it recruits for (created if missing)", required=True),
        "rank": _f("int", "order among the batch's recruiters (1 first)", minimum=1, maximum=1000, default=1),
        "provider": _f("provider", "a provider of [recruit] providers", required=True),
        "flavor": _f("flavor", "a flavor name, or a filter such as cpu>=16:mem>=64 (the cheapest match)",
                     required=True),
        "region": _f("str", "the provider's region (default: any)", nullable=True, max_length=200),
        "tasks_per_worker": _f("int", "one worker per this many pending tasks", minimum=1, maximum=1_000_000,
                               default=1),
        "minimum_tasks": _f("int", "pending tasks needed before any worker is recruited", minimum=0,
                            maximum=1_000_000, default=0),
        "maximum_workers": _f("int", "workers this recruiter keeps at most", required=True, minimum=1,
                              maximum=10_000),
        "concurrency": _f("int", "tasks each worker runs at once", minimum=1, maximum=10_000, default=1),
        "prefetch": _f("int", "tasks each worker claims ahead", minimum=0, maximum=10_000, default=0),
    },
    "recruiter_update": {
        "provider": _f("provider", "a provider of [recruit] providers"),
        "flavor": _f("flavor", "a flavor name or filter"),
        "region": _f("str", "the provider's region", nullable=True, max_length=200),
        "tasks_per_worker": _f("int", "one worker per this many pending tasks", minimum=1, maximum=1_000_000),
        "minimum_tasks": _f("int", "pending tasks needed first", minimum=0, maximum=1_000_000),
        "maximum_workers": _f("int", "workers kept at most", minimum=1, maximum=10_000),
        "concurrency": _f("int", "tasks each worker runs at once", minimum=1, maximum=10_000),
        "prefetch": _f("int", "tasks each worker claims ahead", minimum=0, maximum=10_000),
    },
    "job_create": {
        "kind": _f("enum", "what the job does", required=True, choices=("provision",)),
        "target": _f("str", "what it acts on: a host as HOST:PORT", required=True, max_length=300),
        "params": _f("object", "what it is started with, for `job retry` (never a secret)",
                     item="provision_params"),
    },
    "provision_params": {
        "host": _f("str", "the host's address", required=True, max_length=300),
        "port": _f("int", "its SSH port", minimum=1, maximum=65535, default=22),
        "user": _f("str", "the SSH user", max_length=100, default="root"),
        "name": _f("str", "the worker's name (null: the host's own)", nullable=True, max_length=200),
        "concurrency": _f("int", "tasks the worker runs at once", minimum=1, maximum=10_000, default=1),
        "batch": _f("str", "the batch it joins (null: any)", nullable=True, max_length=200),
    },
    "machine_deploy": {
        "provider": _f("provider", "a provider of [recruit] providers", required=True),
        "flavor": _f("flavor", "a flavor name, or a filter such as cpu>=16:mem>=64 (the cheapest match)",
                     required=True),
        "region": _f("str", "the provider's region (default: any)", nullable=True, max_length=200),
        "count": _f("int", "how many machines", minimum=1, maximum=1000, default=1),
        "batch": _f("name", "the batch their workers join (default: any)", nullable=True),
        "concurrency": _f("int", "tasks each worker runs at once", minimum=1, maximum=10_000, default=1),
        "prefetch": _f("int", "tasks each worker claims ahead", minimum=0, maximum=10_000, default=0),
    },
    "job_update": {
        "status": _f("enum", "running, then succeeded or failed", nullable=True, choices=tuple(values_of(JobStatus))),
        "step": _f("str", "the step under way, in words", nullable=True, max_length=300),
        "progress": _f("number", "how far, 0 to 1", nullable=True, minimum=0, maximum=1),
        "message": _f("text", "why it failed, in words", nullable=True),
    },
    "job_log_append": {"lines": _f("strs", "log lines, in order", required=True, maximum=1000)},
    "host_key_trust": {
        "host": _f("str", "HOST:PORT, or a provider's machine id", required=True, max_length=300),
        "key_type": _f("str", "e.g. ssh-ed25519", required=True, max_length=100),
        "key_data": _f("b64", "the public key blob, base64", required=True, max_length=4096),
    },
    "token_create": {"name": _f("name", "token name", required=True),
                     # worker tokens come from registration (POST /workers/register) only
                     "role": _f("enum", "admin or user", required=True, choices=("admin", "user"))},
}

_ALL_TASK_STATUSES = tuple(values_of(TaskStatus))
_ALL_WORKER_STATUSES = tuple(values_of(WorkerStatus))
_SIGNALS = tuple(values_of(SignalAction))


@dataclass(frozen=True)
class Context:
    """What the server's configuration adds to the rules: the remotes and file roots URIs may
    name (None: not checked), so that the document it serves states them too."""

    remotes: frozenset[str] | None = None
    file_roots: tuple[str, ...] | None = None
    container_options: str | None = None   # the pattern of the allow-list (container_policy)
    providers: tuple[str, ...] = ()        # the names of [recruit] providers


def json_schema(kind: str, context: Context | None = None) -> dict[str, Any]:
    """The JSON Schema (OpenAPI 3.0 dialect) of a request body kind."""
    ctx = context or Context()
    props: dict[str, Any] = {}
    required = []
    for key, f in SPECS[kind].items():
        props[key] = _field_schema(f, ctx)
        if f.required:
            required.append(key)
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


def _int_schema(f: Field) -> dict[str, Any]:
    # the databases store 64-bit integers at most: that is the range when the field names none
    return {"type": "integer", "minimum": INT64_MIN if f.minimum is None else f.minimum,
            "maximum": INT64_MAX if f.maximum is None else f.maximum}


def _uri(ctx: Context, actions: bool = False) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": uris.MAX_LENGTH,
            "pattern": uris.uri_pattern(allow_actions=actions, remotes=ctx.remotes, file_roots=ctx.file_roots)}


_SIMPLE: dict[str, Callable[[Field, Context], dict]] = {
    "str": lambda f, c: {"type": "string", "maxLength": f.max_length or MAX_STR, "pattern": STR_PATTERN,
                         **({"minLength": f.min_length} if f.min_length is not None else {})},
    "options": lambda f, c: {"type": "string", "maxLength": MAX_STR,
                             "pattern": c.container_options or STR_PATTERN},
    "stats": lambda f, c: {"type": "object"},
    "b64": lambda f, c: {"type": "string", "format": "byte", "maxLength": f.max_length or MAX_B64},
    # the configured providers, or a name when there are none (the server then answers 409: set them up)
    "provider": lambda f, c: ({"type": "string", "enum": list(c.providers)} if c.providers else
                              {"type": "string", "pattern": NAME_RE.pattern, "maxLength": 200}),
    "flavor": lambda f, c: {"type": "string", "pattern": FLAVOR_RE.pattern, "maxLength": 200},
    "text": lambda f, c: {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": TEXT_PATTERN},
    "name": lambda f, c: {"type": "string", "pattern": NAME_RE.pattern, "maxLength": 200},
    "int": lambda f, c: _int_schema(f),
    "number": lambda f, c: {"type": "number"},
    "bool": lambda f, c: {"type": "boolean"},
    # OpenAPI 3.0: a nullable enum lists null among its values, or null is not valid
    "enum": lambda f, c: {"type": "string", "enum": list(f.choices) + ([None] if f.nullable else [])},
    "uris": lambda f, c: {"type": "array", "items": _uri(c)},
    "resources": lambda f, c: {"type": "array", "items": _uri(c, actions=True)},
    "output": lambda f, c: _uri(c),
    "ints": lambda f, c: {"type": "array", "items": _int_schema(Field("int", "", minimum=f.minimum))},
    "strs": lambda f, c: {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 4096,
                                                     "pattern": TEXT_PATTERN},
                          **({"maxItems": int(f.maximum)} if f.maximum is not None else {})},
    "requires": lambda f, c: {"type": "array", "items": {"oneOf": [
        _int_schema(Field("int", "", minimum=1)),
        {"type": "string", "minLength": 1, "maxLength": 200, "pattern": LINE_PATTERN}]}},
    "dict": lambda f, c: {"type": "object"},
    "object": lambda f, c: {"allOf": [{"$ref": f"#/components/schemas/{f.item}"}]},
    "list": lambda f, c: {"type": "array", "items": ({"$ref": f"#/components/schemas/{f.item}"} if f.item
                                                     else {}),
                          **({"maxItems": int(f.maximum)} if f.maximum is not None else {})},
}


def _field_schema(f: Field, ctx: Context) -> dict[str, Any]:
    s = dict(_SIMPLE[f.kind](f, ctx))
    s["description"] = f.doc
    if f.minimum is not None and f.kind in ("int", "number"):
        s["minimum"] = f.minimum
    if f.maximum is not None and f.kind in ("int", "number"):
        s["maximum"] = f.maximum
    if f.nullable:
        s["nullable"] = True
    if f.default is not None:
        s["default"] = f.default
    return s
