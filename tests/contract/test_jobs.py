"""Jobs (a background operation's status, step, progress and numbered log) and the SSH host keys
scitq trusts on first use, on both databases."""
from __future__ import annotations

import base64
import threading

import pytest

from scitq_app.errors import Conflict, Invalid, NotFound

KEY_A = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519" + b"A" * 36).decode()
KEY_B = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519" + b"B" * 36).decode()


def test_a_job_goes_from_pending_to_running_to_an_end_and_then_changes_no_more(store, clock):
    job = store.create_job("provision", "10.0.0.7:22", actor="alice")
    assert (job.status, job.progress, job.log_lines, job.finished) == ("pending", 0.0, 0, None)
    job = store.update_job(job.id, status="running", step="check the host", progress=0.1)
    assert (job.status, job.step, job.progress) == ("running", "check the host", 0.1)
    job = store.update_job(job.id, step="upload scitq.pyz", progress=0.4)
    assert (job.status, job.step) == ("running", "upload scitq.pyz"), "the status stays when not given"
    job = store.update_job(job.id, status="succeeded")
    assert (job.status, job.progress, job.finished) == ("succeeded", 1.0, clock())
    with pytest.raises(Conflict, match="changes no more"):
        store.update_job(job.id, status="failed")
    with pytest.raises(Conflict, match="changes no more"):
        store.update_job(job.id, step="again")
    assert [e.kind for e in store.list_events()] == ["job.create", "job.succeeded"]


def test_a_job_cannot_skip_running_to_succeed_and_bad_progress_is_refused(store):
    job = store.create_job("provision", "h:22")
    with pytest.raises(Conflict, match="cannot become succeeded"):
        store.update_job(job.id, status="succeeded")
    with pytest.raises(Invalid) as e:
        store.update_job(job.id, progress=1.5)
    assert e.value.data["field"] == "progress"
    assert store.get_job(job.id).status == "pending", "nothing applied"
    assert store.update_job(job.id, status="failed", message="no route to host").message == "no route to host"


def test_a_job_log_is_numbered_in_order_read_from_an_offset_and_closed_at_the_end(store):
    job = store.create_job("provision", "h:22")
    assert store.append_job_log(job.id, ["connect", "check"]) == 2
    assert store.append_job_log(job.id, ["x" * 10_000]) == 3
    lines = store.read_job_log(job.id)
    assert [(ln.seq, ln.line[:7]) for ln in lines] == [(1, "connect"), (2, "check"), (3, "xxxxxxx")]
    assert len(lines[2].line) == 4096, "one line is bounded"
    assert [ln.seq for ln in store.read_job_log(job.id, after=1)] == [2, 3]
    assert store.get_job(job.id).log_lines == 3
    store.update_job(job.id, status="failed")
    with pytest.raises(Conflict, match="log is closed"):
        store.append_job_log(job.id, ["late"])
    with pytest.raises(NotFound):
        store.read_job_log(job.id + 1)


def test_concurrent_log_appends_lose_and_double_no_line(store):
    job = store.create_job("provision", "h:22")
    errors: list[BaseException] = []

    def append(who: int) -> None:
        try:
            for i in range(20):
                store.append_job_log(job.id, [f"{who}-{i}"])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=append, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    lines = store.read_job_log(job.id, limit=1000)
    assert [ln.seq for ln in lines] == list(range(1, 81))
    assert sorted(ln.line for ln in lines) == sorted(f"{w}-{i}" for w in range(4) for i in range(20))


def test_jobs_are_listed_by_status_and_only_ended_ones_deleted(store):
    a = store.create_job("provision", "a:22")
    b = store.create_job("provision", "b:22")
    store.update_job(b.id, status="running")
    assert [j.id for j in store.list_jobs()] == [a.id, b.id]
    assert [j.id for j in store.list_jobs(status="running")] == [b.id]
    assert [j.id for j in store.list_jobs(after=a.id)] == [b.id]
    with pytest.raises(Conflict, match="only a finished job"):
        store.delete_job(b.id)
    store.append_job_log(b.id, ["one"])
    store.update_job(b.id, status="succeeded")
    store.delete_job(b.id, actor="alice")
    with pytest.raises(NotFound):
        store.get_job(b.id)
    with pytest.raises(NotFound):
        store.read_job_log(b.id)


def test_a_host_key_is_trusted_on_first_use_and_a_changed_one_refused_naming_both(store):
    first = store.trust_host_key("10.0.0.7:22", "ssh-ed25519", KEY_A, actor="alice")
    assert first.fingerprint.startswith("SHA256:") and "=" not in first.fingerprint
    assert store.trust_host_key("10.0.0.7:22", "ssh-ed25519", KEY_A) == first
    with pytest.raises(Conflict) as e:
        store.trust_host_key("10.0.0.7:22", "ssh-ed25519", KEY_B)
    other = store.trust_host_key("10.0.0.8:22", "ssh-ed25519", KEY_B)
    assert first.fingerprint in str(e.value) and other.fingerprint in str(e.value)
    assert store.get_host_key("10.0.0.7:22") == first, "the known key is kept"
    store.forget_host_key("10.0.0.7:22")
    assert store.trust_host_key("10.0.0.7:22", "ssh-ed25519", KEY_B).key_data == KEY_B
    with pytest.raises(Invalid):
        store.trust_host_key("h:22", "ssh-ed25519", "not base64!")


def test_two_first_contacts_racing_trust_one_key(store):
    results: list[object] = []

    def contact(key: str) -> None:
        try:
            results.append(store.trust_host_key("race:22", "ssh-ed25519", key).key_data)
        except Conflict:
            results.append("refused")
    threads = [threading.Thread(target=contact, args=(k,)) for k in (KEY_A, KEY_B) * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kept = store.get_host_key("race:22").key_data
    assert sorted(results, key=str) == sorted([kept] * 3 + ["refused"] * 3, key=str)
