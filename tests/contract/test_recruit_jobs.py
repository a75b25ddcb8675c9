"""The fleet's jobs done again: a give-back that failed is tried again after a pause (and at once
when a person retries its job), machines a person asks for (`worker deploy`) are deployed by the
dispatcher within the provider's caps, a failed one is requested again by `job retry`, a
recruiter's pause after failed deploys ends when a person updates it; and what `job retry`
refuses, saying what retries instead. On both databases."""
from __future__ import annotations

import threading
import time
from typing import Mapping

import pytest

from scitq_app.cloud.provider import Flavor, Instance, Provider
from scitq_app.config import load_config
from scitq_app.dispatch.recruit import BACKOFF_FIRST, Recruiting
from scitq_app.errors import Conflict, Invalid, ProvisionError
from scitq_app.models import Caps


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Refusing(Provider):
    """Offers one flavor, creates nothing (quota), and destroys only once `destroys_left_failing`
    attempts have failed."""

    def __init__(self, destroys_left_failing: int = 0) -> None:
        self.name = "cloud"
        self.failing = destroys_left_failing
        self.creates: list[str] = []
        self.destroys: list[str] = []
        self.offered = [Flavor("cloud", "s4", "r1", 4, 16, price=0.2)]

    def flavors(self) -> list[Flavor]:
        return list(self.offered)

    def create(self, name: str, flavor: Flavor, tags: Mapping[str, str]) -> Instance:
        self.creates.append(name)
        raise ProvisionError("quota exceeded (a test provider)", retry=True)

    def list(self, tags: Mapping[str, str]) -> list[Instance]:
        return []

    def get(self, instance_id: str) -> Instance | None:
        return None

    def destroy(self, instance_id: str) -> None:
        self.destroys.append(instance_id)
        if self.failing > 0:
            self.failing -= 1
            raise ProvisionError("503 Service Unavailable (a test provider)", retry=True)


def recruiting(store, provider: Provider, clock: Clock) -> Recruiting:
    config = load_config(env={"SCITQ_RECRUIT_RECONCILE": "1000000", "SCITQ_SERVER_PUBLIC_URL": "http://10.9.9.9:1"})
    return Recruiting(store, config, {"cloud": provider}, clock=clock)


def round_(r: Recruiting) -> None:
    r.tick(force=True)
    assert r.wait_idle(30), "the round's jobs ended"


def jobs(store, kind: str) -> list[tuple[str, str]]:
    return [(j.status, j.target) for j in store.list_jobs(limit=1000) if j.kind == kind]


def test_a_failed_give_back_is_tried_again_after_a_pause_and_at_once_when_retried(store):
    provider, clock = Refusing(destroys_left_failing=2), Clock()
    m = store.add_machine("b-1", "cloud", "r1", "s4", 0.2, "key-1", None, "b")
    store.update_machine(m.id, "provisioning", instance_id="i-1")
    store.update_machine(m.id, "destroying", message="idle")
    r = recruiting(store, provider, clock)
    try:
        round_(r)
        assert provider.destroys == ["i-1"] and jobs(store, "destroy") == [("failed", "b-1")]
        [failed] = store.list_jobs(status="failed")
        assert "503" in (failed.message or "")
        clock.now += BACKOFF_FIRST - 1
        round_(r)
        assert provider.destroys == ["i-1"], "not before its pause is over"
        clock.now += 2
        round_(r)
        assert provider.destroys == ["i-1", "i-1"], "after it, by itself"
        assert jobs(store, "destroy") == [("failed", "b-1"), ("failed", "b-1")]
        clock.now += 1  # the pause is now twice as long: only a person's retry brings the next try now
        made = store.retry_job(store.list_jobs(status="failed")[-1].id, {})
        assert made["job"].kind == "destroy" and made["job"].status == "pending"
        round_(r)
    finally:
        r.close()
    assert provider.destroys == ["i-1"] * 3
    assert jobs(store, "destroy") == [("failed", "b-1"), ("failed", "b-1"), ("succeeded", "b-1")]
    assert store.get_job(made["job"].id).status == "succeeded", "the retried job is the one that ran"
    [machine] = store.list_machines(everything=True)
    assert machine.status == "destroyed"


def test_machines_asked_for_are_deployed_and_a_failed_one_is_asked_again_by_retry(store):
    provider, clock = Refusing(), Clock()
    asked = store.request_machines(["w-1", "w-2"], "cloud", "r1", "s4", 0.2, "b", 4, 2, Caps(machines=3))
    assert [(m.status, m.concurrency, m.prefetch, m.recruiter_id) for m in asked] == [("requested", 4, 2, None)] * 2
    assert store.recruit_demand()["machines"][0].status == "requested"
    r = recruiting(store, provider, clock)
    try:
        round_(r)
        assert sorted(provider.creates) == ["w-1", "w-2"], "the dispatcher created what was asked"
        status = {m.name: (m.status, m.message) for m in store.list_machines(everything=True)}
        assert status == {"w-1": ("failed", "quota exceeded (a test provider)"),
                          "w-2": ("failed", "quota exceeded (a test provider)")}
        assert sorted(jobs(store, "deploy")) == [("failed", "w-1"), ("failed", "w-2")]
        clock.now += 1
        round_(r)
        assert len(provider.creates) == 2, "a person's machine is not asked again by itself"
        deploy = next(j for j in store.list_jobs(status="failed") if j.target == "w-1")
        made = store.retry_job(deploy.id, {"cloud": Caps(machines=3)})
        again = made["machine"]
        assert made["job"] is None and again.name.startswith("b-") and again.status == "requested"
        assert (again.provider, again.region, again.flavor, again.batch, again.concurrency, again.prefetch) == \
            ("cloud", "r1", "s4", "b", 4, 2)
        provider.offered = []  # the flavor is gone by the time the dispatcher reads the flavors again
        clock.now += 301
        round_(r)
        assert len(provider.creates) == 2
        gone = next(m for m in store.list_machines(everything=True) if m.name == again.name)
        assert (gone.status, gone.message) == ("failed", "provider cloud offers no flavor s4 in r1 now")
    finally:
        r.close()


class FailingToBoot(Refusing):
    """Creates machines that the provider then shows failed (an Azure VM whose provisioning
    failed, a Nova server in ERROR)."""

    def create(self, name: str, flavor: Flavor, tags: Mapping[str, str]) -> Instance:
        self.creates.append(name)
        return Instance(id=f"i-{name}", name=name, address=None, state="pending", tags=dict(tags))

    def get(self, instance_id: str) -> Instance | None:
        return Instance(id=instance_id, name=instance_id[2:], address=None, state="gone")


def test_a_machine_the_provider_shows_failed_while_booting_fails_at_once_and_is_given_back(store):
    provider, clock = FailingToBoot(), Clock()
    store.request_machines(["w-1"], "cloud", "r1", "s4", 0.2, "b", 1, 0, Caps())
    r = recruiting(store, provider, clock)
    try:
        round_(r)  # not the 10 minutes a machine has to boot
    finally:
        r.close()
    [m] = store.list_machines(everything=True)
    assert (m.status, m.message) == ("failed", "machine i-w-1 failed while booting")
    assert provider.destroys == ["i-w-1"]


def test_machines_asked_for_fit_the_provider_caps_all_or_none(store):
    store.request_machines(["a-1", "a-2"], "cloud", "r1", "s4", 0.2, None, 1, 0, Caps(machines=5))
    with pytest.raises(Conflict) as e:
        store.request_machines(["a-3", "a-4"], "cloud", "r1", "s4", 0.2, None, 1, 0,
                               Caps(machines=5, per_region={"r1": 3}))
    assert e.value.message == ("provider cloud allows 5 machine(s) in all and 3 in r1: 2 machine(s) held now, "
                               "room for 1, 2 asked")
    assert [m.name for m in store.list_machines()] == ["a-1", "a-2"], "none of them recorded"
    store.request_machines(["c-1"], "cloud", "r2", "s4", 0.2, None, 1, 0, Caps(machines=5, per_region={"r1": 2}))
    store.request_machines(["o-1"], "other", "r1", "s4", 0.2, None, 1, 0, Caps(machines=1))
    with pytest.raises(Conflict):
        store.request_machines(["c-2"], "cloud", "r1", "s4", 0.2, None, 1, 0, Caps(per_region={"*": 2}))
    assert len(store.list_machines()) == 4


def test_a_recruiters_pause_after_failed_deploys_ends_when_a_person_updates_it(store, submit):
    provider, clock = Refusing(), Clock()
    submit(batch="b")
    rec = store.create_recruiter({"batch": "b", "rank": 1, "provider": "cloud", "flavor": "s4",
                                  "maximum_workers": 1})
    r = recruiting(store, provider, clock)
    try:
        round_(r)
        assert len(provider.creates) == 1
        clock.now += 5
        round_(r)
        assert len(provider.creates) == 1, "paused"
        store.update_recruiter(rec.id, {"flavor": "cpu>=4"})
        clock.now += 1
        round_(r)
        assert len(provider.creates) == 2, "updated: asked again at once"
    finally:
        r.close()


def test_retry_refuses_what_it_cannot_do_and_says_what_does(store):
    running = store.create_job("destroy", "x-1")
    with pytest.raises(Conflict) as e:
        store.retry_job(running.id, {})
    assert e.value.message == f"job {running.id} is pending: only a failed job can be retried"
    for kind, says in (("provision", "`scitq job retry"), ("reconcile", "reconciles again by itself")):
        job = store.create_job(kind, "10.0.0.9:22")
        store.update_job(job.id, status="failed", message="boom")
        with pytest.raises(Conflict) as e:
            store.retry_job(job.id, {})
        assert says in e.value.message
    rec = store.create_recruiter({"batch": "b", "rank": 1, "provider": "cloud", "flavor": "s4",
                                  "maximum_workers": 1})
    m = store.add_machine("b-9", "cloud", "r1", "s4", 0.2, "key-9", rec.id, "b")
    store.update_machine(m.id, "failed", message="quota")
    deploy = store.create_job("deploy", "b-9")
    store.update_job(deploy.id, status="failed", message="quota")
    with pytest.raises(Conflict) as e:
        store.retry_job(deploy.id, {})
    assert f"deployed by recruiter {rec.id}, which deploys again by itself" in e.value.message
    destroy = store.create_job("destroy", "b-9")
    store.update_job(destroy.id, status="failed", message="503")
    with pytest.raises(Conflict) as e:
        store.retry_job(destroy.id, {})
    assert e.value.message == f"job {destroy.id}: machine b-9 is failed, not being given back: nothing to retry"
    assert len(store.list_jobs(limit=100)) == 5, "no job made by a refused retry"


def test_a_job_keeps_the_parameters_it_was_started_with(store):
    job = store.create_job("provision", "10.0.0.5:22", params={"host": "10.0.0.5", "port": 22, "batch": None})
    assert store.get_job(job.id).params == {"host": "10.0.0.5", "port": 22, "batch": None}
    assert store.create_job("provision", "10.0.0.6:22").params == {}
    with pytest.raises(Invalid):
        store.create_job("provision", "10.0.0.7:22", params={"host": "x" * 3000})
    assert [j.target for j in store.list_jobs()] == ["10.0.0.5:22", "10.0.0.6:22"]


class Slow(Refusing):
    """Creates nothing, slowly: each create waits until the test lets it go, so the test sees how
    many run at once."""

    def __init__(self) -> None:
        super().__init__()
        self.running = 0
        self.most = 0
        self.go = threading.Event()
        self.lock = threading.Lock()

    def create(self, name: str, flavor: Flavor, tags: Mapping[str, str]) -> Instance:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            assert self.go.wait(30)
            return super().create(name, flavor, tags)
        finally:
            with self.lock:
                self.running -= 1


def test_no_more_jobs_run_at_once_than_recruit_jobs(store):
    provider, clock = Slow(), Clock()
    store.request_machines([f"w-{i}" for i in range(5)], "cloud", "r1", "s4", 0.2, "b", 1, 0, Caps())
    config = load_config(env={"SCITQ_RECRUIT_RECONCILE": "1000000", "SCITQ_RECRUIT_JOBS": "2",
                              "SCITQ_SERVER_PUBLIC_URL": "http://10.9.9.9:1"})
    r = Recruiting(store, config, {"cloud": provider}, clock=clock)
    try:
        r.tick(force=True)
        deadline = time.monotonic() + 30
        while provider.running < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert provider.running == 2
        assert [s for s, _ in jobs(store, "deploy")] == ["running"] * 2
        assert len(store.list_machines(everything=True)) == 5, "the other three wait their turn"
        provider.go.set()
        assert r.wait_idle(30)
    finally:
        r.close()
    assert (provider.most, sorted(provider.creates)) == (2, [f"w-{i}" for i in range(5)])
    assert [s for s, _ in jobs(store, "deploy")] == ["failed"] * 5
