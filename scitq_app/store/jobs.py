"""Jobs (background operations on hosts: their status, step, progress and log) and the SSH host
keys scitq trusts: plain functions over a transaction."""
from __future__ import annotations

import base64
import json
from typing import Any, Mapping, Sequence

from ..errors import Conflict, Invalid, NotFound
from ..models import JOB_FINAL, HostKey, Job, JobLogLine, JobStatus, check_job_transition, key_fingerprint
from . import admin
from .backend import Tx

MAX_LOG_LINE = 4096     # characters kept of one log line
MAX_LOG_BATCH = 1000    # lines appended in one call


MAX_PARAMS = 2000       # characters of a job's parameters, as JSON


def create_job(tx: Tx, kind: str, target: str, actor: str | None, params: Mapping[str, Any] | None = None) -> Job:
    text = json.dumps(dict(params), sort_keys=True) if params else None
    if text is not None and len(text) > MAX_PARAMS:
        raise Invalid(f"at most {MAX_PARAMS} characters as JSON", field="params")
    job_id = tx.insert("job_insert", kind=kind, target=target, actor=actor, now=tx.now, params=text)
    admin.event(tx, "job.create", f"job:{job_id}", {"kind": kind, "target": target}, actor)
    return get_job(tx, job_id)


def get_job(tx: Tx, job_id: int) -> Job:
    row = tx.one("job_get", id=job_id)
    if row is None:
        raise NotFound(f"no job {job_id}", job_id=job_id)
    return Job.from_row(row)


def list_jobs(tx: Tx, status: str | None = None, after: int = 0, limit: int = 100) -> list[Job]:
    if status is not None:
        rows = tx.all("job_list_status", status=JobStatus(status).value, after=after, limit=limit)
    else:
        rows = tx.all("job_list", after=after, limit=limit)
    return [Job.from_row(r) for r in rows]


def update_job(tx: Tx, job_id: int, status: str | None = None, step: str | None = None,
               progress: float | None = None, message: str | None = None) -> Job:
    """Move a job on: its status (checked transition), current step, progress (0..1, never
    backwards within a status) and message. A finished job changes no more."""
    row = tx.one("job_lock", id=job_id)
    if row is None:
        raise NotFound(f"no job {job_id}", job_id=job_id)
    old = JobStatus(row["status"])
    new = JobStatus(status) if status is not None else old
    if old in JOB_FINAL:
        raise Conflict(f"job {job_id} is {old.value}: it changes no more", job_id=job_id, status=old.value)
    check_job_transition(job_id, old, new)
    if progress is not None and not 0.0 <= progress <= 1.0:
        raise Invalid("must be between 0 and 1", field="progress")
    finished = tx.now if new in JOB_FINAL else None
    tx.run("job_update", id=job_id, status=new.value, step=step if step is not None else row["step"],
           progress=1.0 if new == JobStatus.SUCCEEDED else (progress if progress is not None else row["progress"]),
           message=message if message is not None else row["message"], now=tx.now, finished=finished)
    if new != old and new in JOB_FINAL:
        admin.event(tx, f"job.{new.value}", f"job:{job_id}", {"kind": row["kind"], "target": row["target"]},
                    None)
    return get_job(tx, job_id)


def append_job_log(tx: Tx, job_id: int, lines: Sequence[str]) -> int:
    """Append lines to a running or pending job's log; return the number of lines it now has."""
    if len(lines) > MAX_LOG_BATCH:
        raise Invalid(f"at most {MAX_LOG_BATCH} lines at once", field="lines")
    row = tx.one("job_lock", id=job_id)
    if row is None:
        raise NotFound(f"no job {job_id}", job_id=job_id)
    if JobStatus(row["status"]) in JOB_FINAL:
        raise Conflict(f"job {job_id} is {row['status']}: its log is closed", job_id=job_id, status=row["status"])
    first = int(row["log_lines"])
    tx.many("job_log_insert", [{"job_id": job_id, "seq": first + i + 1, "at": tx.now, "line": line[:MAX_LOG_LINE]}
                               for i, line in enumerate(lines)])
    tx.run("job_log_count", id=job_id, n=len(lines), now=tx.now)
    return first + len(lines)


def read_job_log(tx: Tx, job_id: int, after: int = 0, limit: int = 1000) -> list[JobLogLine]:
    get_job(tx, job_id)  # NotFound for an unknown job
    return [JobLogLine.from_row(r) for r in tx.all("job_log_read", job_id=job_id, after=after, limit=limit)]


def delete_job(tx: Tx, job_id: int, actor: str | None) -> None:
    job = get_job(tx, job_id)
    if JobStatus(job.status) not in JOB_FINAL:
        raise Conflict(f"job {job_id} is {job.status}: only a finished job can be deleted", job_id=job_id,
                       status=job.status)
    tx.run("job_delete", id=job_id)
    admin.event(tx, "job.delete", f"job:{job_id}", {"kind": job.kind, "target": job.target}, actor)


# --- host keys ----------------------------------------------------------------
def _host_key(key_type: str, key_data: str) -> None:
    try:
        base64.b64decode(key_data, validate=True)
    except ValueError:
        raise Invalid("must be a base64 public key blob", field="key_data") from None


def trust_host_key(tx: Tx, host: str, key_type: str, key_data: str, actor: str | None) -> HostKey:
    """Trust on first use: the key recorded for `host`, recording this one if there is none.
    Conflict, naming both fingerprints, when another key is recorded (never replaced here:
    `forget_host_key` first, once the change is understood)."""
    _host_key(key_type, key_data)
    fp = key_fingerprint(key_data)
    if tx.run("host_key_insert", host=host, key_type=key_type, key_data=key_data, fingerprint=fp, now=tx.now):
        admin.event(tx, "host_key.trust", f"host:{host}", {"key_type": key_type, "fingerprint": fp}, actor)
    row = tx.one("host_key_get", host=host)
    assert row is not None
    known = HostKey.from_row(row)
    if (known.key_type, known.key_data) != (key_type, key_data):
        raise Conflict(f"the host key of {host} changed: scitq knows {known.key_type} {known.fingerprint}, the "
                       f"host offers {key_type} {fp}. If the host was reinstalled, forget the old key with "
                       f"`scitq host-key forget {host}`; else someone may be in the middle",
                       host=host, known=known.fingerprint, offered=fp)
    return known


def get_host_key(tx: Tx, host: str) -> HostKey:
    row = tx.one("host_key_get", host=host)
    if row is None:
        raise NotFound(f"no host key recorded for {host}", host=host)
    return HostKey.from_row(row)


def forget_host_key(tx: Tx, host: str, actor: str | None) -> None:
    key = get_host_key(tx, host)
    tx.run("host_key_delete", host=host)
    admin.event(tx, "host_key.forget", f"host:{host}", {"fingerprint": key.fingerprint}, actor)
