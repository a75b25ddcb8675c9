"""Statuses, records and the legal transitions between statuses.

Status enums are `str` Enums whose values are the strings stored in the
database. Records are frozen dataclasses built from store rows with
`from_row()`; `to_dict()` gives their JSON form (times as ISO 8601 UTC).
Every status change of a task or an execution is checked here, in
`check_task_transition` / `check_execution_transition`, and nowhere else.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Iterable, Mapping

from .errors import Conflict


class TaskStatus(str, Enum):
    WAITING = "waiting"
    PENDING = "pending"
    ASSIGNED = "assigned"
    RUNNING = "running"
    UPLOADING = "uploading"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PAUSED = "paused"
    CANCELED = "canceled"


class ExecutionStatus(str, Enum):
    ASSIGNED = "assigned"
    RUNNING = "running"
    UPLOADING = "uploading"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class FailureClass(str, Enum):
    APP = "app"
    TIMEOUT = "timeout"
    OOM = "oom"
    LOST = "lost"
    EVICTED = "evicted"
    STAGING = "staging"
    INFRA = "infra"
    CANCELED = "canceled"


class WorkerStatus(str, Enum):
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    DRAINING = "draining"
    OFFLINE = "offline"
    LOST = "lost"
    EVICTED = "evicted"
    DESTROYED = "destroyed"


# A worker in one of these has no agent behind it any more: another agent may take its name.
GONE_WORKER_STATUSES = frozenset({WorkerStatus.OFFLINE, WorkerStatus.LOST, WorkerStatus.EVICTED,
                                  WorkerStatus.DESTROYED})


class BatchStatus(str, Enum):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


class Role(str, Enum):
    ADMIN = "admin"
    USER = "user"
    WORKER = "worker"
    JOIN = "join"      # registers workers only, a limited number of times, until it expires


class Shell(str, Enum):
    NONE = "none"
    SH = "sh"
    BASH = "bash"


class Stream(str, Enum):
    STDOUT = "stdout"
    STDERR = "stderr"


class SignalAction(str, Enum):
    """What a worker is told to do with one of its executions (or itself)."""

    PAUSE = "pause"    # SIGSTOP the process group / pause the container
    RESUME = "resume"  # SIGCONT / unpause
    TERM = "term"      # SIGTERM, SIGKILL after a grace period
    KILL = "kill"      # SIGKILL
    CLEAN = "clean"    # worker level: remove work dirs of finished executions
    UPGRADE = "upgrade"  # worker level: install the server's scitq.pyz, drain, restart on it


# Worker statuses a person may set; the others are set by the system.
SETTABLE_WORKER_STATUSES = (WorkerStatus.RUNNING, WorkerStatus.PAUSED, WorkerStatus.DRAINING)

ACTIVE_TASK_STATUSES = (TaskStatus.ASSIGNED, TaskStatus.RUNNING, TaskStatus.UPLOADING)
FINAL_TASK_STATUSES = (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED)
ACTIVE_EXECUTION_STATUSES = (ExecutionStatus.ASSIGNED, ExecutionStatus.RUNNING, ExecutionStatus.UPLOADING)
FINAL_EXECUTION_STATUSES = (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED)

# Failure classes that spend one of the task's retries. A lost or evicted
# worker, a worker out of disk, descriptors or processes (infra), or an attempt
# canceled by a person or a worker shutdown, is not the task's fault and must
# not use up its budget (UNCOUNTED_ATTEMPTS_LIMIT still bounds such attempts).
COUNTED_FAILURES = frozenset({FailureClass.APP, FailureClass.TIMEOUT, FailureClass.OOM,
                              FailureClass.STAGING})

_T = TaskStatus
TASK_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    _T.WAITING: frozenset({_T.PENDING, _T.PAUSED, _T.CANCELED}),
    _T.PENDING: frozenset({_T.ASSIGNED, _T.WAITING, _T.PAUSED, _T.CANCELED}),
    _T.ASSIGNED: frozenset({_T.RUNNING, _T.UPLOADING, _T.SUCCEEDED, _T.FAILED, _T.PENDING,
                            _T.PAUSED, _T.CANCELED}),
    _T.RUNNING: frozenset({_T.UPLOADING, _T.SUCCEEDED, _T.FAILED, _T.PENDING, _T.PAUSED, _T.CANCELED}),
    _T.UPLOADING: frozenset({_T.SUCCEEDED, _T.FAILED, _T.PENDING, _T.CANCELED}),
    # A paused task may still hold an execution (SIGSTOPped, or finishing the
    # very moment it was paused), so its execution's outcome must land.
    _T.PAUSED: frozenset({_T.PENDING, _T.WAITING, _T.ASSIGNED, _T.RUNNING, _T.UPLOADING,
                          _T.SUCCEEDED, _T.FAILED, _T.CANCELED}),
    _T.SUCCEEDED: frozenset({_T.PENDING, _T.WAITING}),
    _T.FAILED: frozenset({_T.PENDING, _T.WAITING}),
    # Succeeded: the attempt current when people stopped the task had already exited 0 (the
    # stop reached its worker too late); the work is done and is recorded, not run again.
    _T.CANCELED: frozenset({_T.PENDING, _T.WAITING, _T.SUCCEEDED}),
}

_E = ExecutionStatus
EXECUTION_TRANSITIONS: dict[ExecutionStatus, frozenset[ExecutionStatus]] = {
    _E.ASSIGNED: frozenset({_E.RUNNING, _E.UPLOADING, _E.SUCCEEDED, _E.FAILED}),
    _E.RUNNING: frozenset({_E.UPLOADING, _E.SUCCEEDED, _E.FAILED}),
    _E.UPLOADING: frozenset({_E.SUCCEEDED, _E.FAILED}),
    _E.SUCCEEDED: frozenset(),
    _E.FAILED: frozenset(),
}

class JobStatus(str, Enum):
    """A background operation: provision (a host), deploy, destroy (a rented machine), reconcile."""
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


_J = JobStatus
JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    _J.PENDING: frozenset({_J.RUNNING, _J.FAILED}),
    _J.RUNNING: frozenset({_J.SUCCEEDED, _J.FAILED}),
    _J.SUCCEEDED: frozenset(),
    _J.FAILED: frozenset(),
}
JOB_FINAL = frozenset({_J.SUCCEEDED, _J.FAILED})


def check_job_transition(job_id: int, old: JobStatus | str, new: JobStatus | str) -> None:
    """Raise Conflict unless a job may go from `old` to `new` (staying put is allowed)."""
    old, new = JobStatus(old), JobStatus(new)
    if old != new and new not in JOB_TRANSITIONS[old]:
        raise Conflict(f"job {job_id} is {old.value}: it cannot become {new.value}", job_id=job_id,
                       status=old.value)


class MachineStatus(str, Enum):
    """A machine scitq rented: asked for, provisioned, working, given back."""
    REQUESTED = "requested"    # asked for by a person (`worker deploy`): the dispatcher creates it
    CREATING = "creating"
    PROVISIONING = "provisioning"
    RUNNING = "running"
    DESTROYING = "destroying"
    DESTROYED = "destroyed"
    FAILED = "failed"          # never became a worker; destroyed at the provider


_M = MachineStatus
MACHINE_TRANSITIONS: dict[MachineStatus, frozenset[MachineStatus]] = {
    _M.REQUESTED: frozenset({_M.CREATING, _M.FAILED}),
    _M.CREATING: frozenset({_M.PROVISIONING, _M.FAILED, _M.DESTROYING}),
    _M.PROVISIONING: frozenset({_M.RUNNING, _M.FAILED, _M.DESTROYING}),
    _M.RUNNING: frozenset({_M.DESTROYING}),
    _M.DESTROYING: frozenset({_M.DESTROYED}),
    _M.DESTROYED: frozenset(),
    _M.FAILED: frozenset(),
}


@dataclass(frozen=True)
class Caps:
    """How many machines a provider may hold for scitq at once: `machines` in all (None: no
    cap), `per_region` in one region (the key "*" for regions not named)."""
    machines: int | None = None
    per_region: Mapping[str, int] = field(default_factory=dict)

    def room(self, held: int, held_in_region: int, region: str) -> int | None:
        """How many more may be created in `region` (None: no cap applies)."""
        rooms = [] if self.machines is None else [self.machines - held]
        in_region = self.region_cap(region)
        if in_region is not None:
            rooms.append(in_region - held_in_region)
        return min(rooms) if rooms else None

    def region_cap(self, region: str) -> int | None:
        return self.per_region.get(region, self.per_region.get("*"))

    def describe(self, region: str) -> str:
        parts = [f"{self.machines} machine(s) in all"] if self.machines is not None else []
        if self.region_cap(region) is not None:
            parts.append(f"{self.region_cap(region)} in {region}")
        return " and ".join(parts) or "any number of machines"


def machine_name(prefix: str) -> str:
    """A new rented machine's name (its worker's): the batch it is for and a random suffix, in
    the characters host names allow."""
    import uuid
    return f"{prefix}-{uuid.uuid4().hex[:6]}".lower().replace("_", "-")[:40]


def check_machine_transition(name: str, old: MachineStatus | str, new: MachineStatus | str) -> None:
    old, new = MachineStatus(old), MachineStatus(new)
    if old != new and new not in MACHINE_TRANSITIONS[old]:
        raise Conflict(f"machine {name} is {old.value}: it cannot become {new.value}", machine=name,
                       status=old.value)


# Fields of a task a person may edit, and the statuses where editing them is
# safe: what defines the work cannot change under a worker holding a copy.
TASK_DEFINITION_FIELDS = frozenset({
    "command", "shell", "container", "container_options", "inputs", "resources", "output",
    "cpu", "mem", "gpu", "disk", "download_timeout", "run_timeout", "use_cache", "batch",
})
TASK_ANYTIME_FIELDS = frozenset({"name", "priority", "max_retries"})
TASK_EDITABLE_STATUSES = frozenset({_T.WAITING, _T.PENDING, _T.PAUSED, _T.SUCCEEDED, _T.FAILED,
                                    _T.CANCELED})


def check_task_transition(task_id: int, old: TaskStatus | str, new: TaskStatus | str) -> None:
    """Raise Conflict unless a task may go from `old` to `new`."""
    old, new = TaskStatus(old), TaskStatus(new)
    if old == new:
        return
    if new not in TASK_TRANSITIONS[old]:
        raise Conflict(f"task {task_id} cannot go from {old.value} to {new.value}",
                       task_id=task_id, status=old.value)


def check_execution_transition(execution_id: int, old: ExecutionStatus | str,
                               new: ExecutionStatus | str) -> None:
    """Raise Conflict unless an execution may go from `old` to `new`."""
    old, new = ExecutionStatus(old), ExecutionStatus(new)
    if old == new:
        return
    if new not in EXECUTION_TRANSITIONS[old]:
        raise Conflict(f"execution {execution_id} cannot go from {old.value} to {new.value}",
                       execution_id=execution_id, status=old.value)


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> ISO 8601 UTC with milliseconds, or None."""
    if ts is None:
        return None
    # isoformat, not strftime: a quarter less CPU, and a page of workers or tasks formats thousands
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"


def _json_list(value: Any) -> list:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return json.loads(value)


def _json_dict(value: Any) -> dict:
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return value
    return json.loads(value)


class Record:
    """Shared behaviour of the frozen records: build from a row, dump to JSON."""

    _times: tuple[str, ...] = ()
    _lists: tuple[str, ...] = ()
    _dicts: tuple[str, ...] = ()
    _bools: tuple[str, ...] = ()
    _names_cache: dict[type, tuple[str, ...]] = {}

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        names = Record._names_cache.get(cls)
        if names is None:
            names = Record._names_cache[cls] = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
        return names

    @classmethod
    def from_row(cls, row: dict[str, Any], **extra: Any):
        values = {k: row[k] for k in cls._names() if k in row}
        values.update(extra)
        for k in cls._lists:
            if k in values:
                values[k] = tuple(_json_list(values[k]))
        for k in cls._dicts:
            if k in values:
                values[k] = _json_dict(values[k])
        for k in cls._bools:
            if k in values and values[k] is not None:
                values[k] = bool(values[k])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies every value, and listing pages
        # of thousands of tasks made it the slowest part of the API.
        d = {k: getattr(self, k) for k in self._names()}
        for k in self._times:
            d[k] = iso(d[k])
        for k in self._lists:
            d[k] = list(d[k])
        for k in self._dicts:
            d[k] = dict(d[k])
        for k, v in d.items():
            if isinstance(v, Enum):
                d[k] = v.value
        return d


@dataclass(frozen=True)
class Batch(Record):
    id: int
    name: str
    status: str
    priority: int = 0
    created: float | None = None
    modified: float | None = None
    counts: dict = field(default_factory=dict)
    workers: int = 0
    spend: float = 0.0  # what the machines rented for it cost so far (time held x price per hour)
    _times = ("created", "modified")


@dataclass(frozen=True)
class Task(Record):
    id: int
    batch: str
    name: str | None
    command: str
    status: str
    shell: str = "none"
    container: str | None = None
    container_options: str | None = None
    inputs: tuple = ()
    resources: tuple = ()
    output: str | None = None
    priority: int = 0
    cpu: float | None = None
    mem: float | None = None
    gpu: int | None = None
    disk: float | None = None
    max_retries: int = 0
    retries_used: int = 0
    attempts: int = 0
    download_timeout: int | None = None
    run_timeout: int | None = None
    use_cache: bool = False
    current_execution_id: int | None = None
    status_changed: float | None = None
    created: float | None = None
    modified: float | None = None
    requires: tuple = ()
    blocked: bool = False
    _times = ("status_changed", "created", "modified")
    _lists = ("inputs", "resources", "requires")
    _bools = ("use_cache", "blocked")


@dataclass(frozen=True)
class Execution(Record):
    id: int
    task_id: int
    attempt: int
    worker_id: int | None
    status: str
    failure_class: str | None = None
    return_code: int | None = None
    lease_expires: float | None = None
    assigned: float | None = None
    started: float | None = None
    finished: float | None = None
    command: str = ""
    shell: str = "none"
    container: str | None = None
    container_options: str | None = None
    inputs: tuple = ()
    resources: tuple = ()
    output: str | None = None
    run_timeout: int | None = None
    download_timeout: int | None = None
    output_files: tuple = ()
    stdout_size: int = 0
    stderr_size: int = 0
    peak_mem: int | None = None
    cpu_time: float | None = None
    message: str | None = None  # why it ended so, in words (the worker's or the server's)
    worker_name: str | None = None
    created: float | None = None
    modified: float | None = None
    _times = ("lease_expires", "assigned", "started", "finished", "created", "modified")
    _lists = ("inputs", "resources", "output_files")


@dataclass(frozen=True)
class Worker(Record):
    id: int
    name: str
    hostname: str | None
    status: str
    batch: str | None = None
    concurrency: int = 1
    prefetch: int = 0
    cpu: float | None = None
    mem: float | None = None
    gpu: int | None = None
    permanent: bool = True
    provider: str | None = None
    region: str | None = None
    flavor: str | None = None
    address: str | None = None
    last_seen: float | None = None
    stats: dict = field(default_factory=dict)
    created: float | None = None
    modified: float | None = None
    active: int = 0
    price: float | None = None   # per hour, when scitq rents its machine
    spend: float | None = None   # what its machines cost so far (time held x price, idle included)
    _times = ("last_seen", "created", "modified")
    _dicts = ("stats",)
    _bools = ("permanent",)


@dataclass(frozen=True)
class ApiToken(Record):
    id: int
    name: str
    role: str
    worker_id: int | None = None
    created: float | None = None
    last_used: float | None = None
    revoked: float | None = None
    uses_left: int | None = None       # join tokens: registrations still allowed
    expires: float | None = None       # join tokens: refused from this time on
    pinned_batch: str | None = None    # join tokens: the batch the workers it registers join
    pinned_name: str | None = None     # join tokens: the only worker name it registers
    _times = ("created", "last_used", "revoked", "expires")


@dataclass(frozen=True)
class Event(Record):
    id: int
    at: float
    actor: str | None
    kind: str
    target: str | None
    detail: dict = field(default_factory=dict)
    _times = ("at",)
    _dicts = ("detail",)


@dataclass(frozen=True)
class Job(Record):
    """A background operation (kind provision, deploy, destroy or reconcile) on a target (a host,
    a machine), with its current step, progress (0..1), once ended a message saying why it failed,
    and the parameters it was started with (what `job retry` does again)."""
    id: int
    kind: str
    target: str
    status: str
    params: dict[str, Any] = field(default_factory=dict)
    step: str | None = None
    progress: float = 0.0
    message: str | None = None
    actor: str | None = None
    log_lines: int = 0
    created: float | None = None
    modified: float | None = None
    finished: float | None = None
    _times = ("created", "modified", "finished")
    _dicts = ("params",)


@dataclass(frozen=True)
class JobLogLine(Record):
    job_id: int
    seq: int
    at: float
    line: str
    _times = ("at",)


def key_fingerprint(key_b64: str) -> str:
    """OpenSSH's `SHA256:...` fingerprint of a base64 public key blob (no padding)."""
    import base64
    import hashlib
    digest = hashlib.sha256(base64.b64decode(key_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class HostKey(Record):
    """An SSH host key scitq trusts for `host` (an address:port, or a provider's machine id)."""
    host: str
    key_type: str
    key_data: str
    fingerprint: str
    created: float | None = None
    _times = ("created",)


@dataclass(frozen=True)
class Recruiter(Record):
    """For `batch`, at `rank`: workers of `flavor` (a name or a filter such as cpu>=16:mem>=64)
    from `provider`, one per `tasks_per_worker` pending tasks once at least `minimum_tasks`
    are pending, at most `maximum_workers`, each running `concurrency` tasks."""
    id: int
    batch: str
    rank: int
    provider: str
    flavor: str
    region: str | None
    tasks_per_worker: int
    minimum_tasks: int
    maximum_workers: int
    concurrency: int
    prefetch: int
    created: float | None = None
    modified: float | None = None
    _times = ("created", "modified")


@dataclass(frozen=True)
class RentedMachine(Record):
    """A machine a provider created for scitq, and the worker it became."""
    id: int
    name: str
    provider: str
    region: str
    flavor: str
    price: float
    status: str
    idem_key: str
    instance_id: str | None = None
    address: str | None = None
    recruiter_id: int | None = None
    batch: str | None = None
    concurrency: int = 1         # of its worker
    prefetch: int = 0
    worker_id: int | None = None
    message: str | None = None
    created: float | None = None
    modified: float | None = None
    destroyed: float | None = None
    spend: float = 0.0  # time held x price per hour, so far
    _times = ("created", "modified", "destroyed")


def machine_spend(price: float, created: float, destroyed: float | None, now: float) -> float:
    """What a machine cost: the hours it was held (to now while it is) times its price."""
    return round(float(price) * max(0.0, (destroyed if destroyed is not None else now) - float(created)) / 3600, 4)


@dataclass(frozen=True)
class Identity:
    """Who is calling: the token's name and role, its worker for worker tokens, and
    for join tokens their scope (the batch and worker name they pin, if any)."""

    name: str
    role: Role
    worker_id: int | None = None
    token_id: int | None = None
    pinned_batch: str | None = None
    pinned_name: str | None = None

    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


@dataclass(frozen=True)
class OutputSlice:
    """A piece of an execution's stream: bytes from `offset` to `next_offset`.

    `cuts` lists (start, end) byte ranges inside the slice that the server did
    not keep (the middle of a huge log); `size` is the stream's total length
    as reported by the worker so far.
    """

    execution_id: int
    stream: str
    offset: int
    next_offset: int
    data: bytes
    cuts: tuple = ()
    size: int = 0
    complete: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"execution_id": self.execution_id, "stream": self.stream, "offset": self.offset,
                "next_offset": self.next_offset, "size": self.size, "complete": self.complete,
                "data": self.data.decode("utf-8", "replace"),
                "cuts": [list(c) for c in self.cuts]}


def values_of(enum: type[Enum]) -> list[str]:
    return [e.value for e in enum]


def parse_enum(enum: type[Enum], value: Any, name: str) -> Any:
    """Return enum(value) or raise Invalid naming the field and the choices."""
    from .errors import Invalid
    try:
        return enum(value)
    except ValueError:
        raise Invalid(f"must be one of {', '.join(values_of(enum))}, not {value!r}", field=name) from None


def unique(items: Iterable[Any]) -> list[Any]:
    seen: set[Any] = set()
    out = []
    for x in items:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out
