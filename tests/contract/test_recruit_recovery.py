"""A dispatcher that takes over recruiting gives back the machines a previous one left being
created or provisioned (found by their idempotency key when their id was never recorded), so that
they no longer count as workers on their way; running machines are left alone."""
from __future__ import annotations

from typing import Mapping

from scitq_app.cloud.provider import TAG_KEY, TAG_SERVER, Flavor, Instance, Provider
from scitq_app.config import load_config
from scitq_app.dispatch.recruit import Recruiting


class Books(Provider):
    """A provider's books in memory."""

    def __init__(self) -> None:
        self.name = "cloud"
        self.instances: dict[str, Instance] = {}
        self.destroyed: list[str] = []

    def flavors(self) -> list[Flavor]:
        return [Flavor("cloud", "s4", "r1", 4, 16, price=0.2)]

    def list(self, tags: Mapping[str, str]) -> list[Instance]:
        return [i for i in self.instances.values() if all(i.tags.get(k) == v for k, v in tags.items())]

    def get(self, instance_id: str) -> Instance | None:
        return self.instances.get(instance_id)

    def destroy(self, instance_id: str) -> None:
        self.destroyed.append(instance_id)
        self.instances.pop(instance_id, None)


def test_machines_left_mid_deploy_are_given_back_and_stop_counting(store, register):
    books = Books()
    store.create_recruiter({"batch": "b", "rank": 1, "provider": "cloud", "flavor": "s4", "maximum_workers": 5})
    store.add_machine("b-1", "cloud", "r1", "s4", 0.2, "key-1", None, "b")  # created, id never recorded
    books.instances["i-1"] = Instance("i-1", "b-1", "10.0.0.1", "running", {TAG_KEY: "key-1"})
    provisioning = store.add_machine("b-2", "cloud", "r1", "s4", 0.2, "key-2", None, "b")
    store.update_machine(provisioning.id, "provisioning", instance_id="i-2")
    books.instances["i-2"] = Instance("i-2", "b-2", "10.0.0.2", "running", {TAG_KEY: "key-2"})
    store.add_machine("b-3", "cloud", "r1", "s4", 0.2, "key-3", None, "b")  # create never reached
    running = store.add_machine("b-4", "cloud", "r1", "s4", 0.2, "key-4", None, "b")
    store.update_machine(running.id, "provisioning", instance_id="i-4")
    store.attach_worker(running.id, register("b-4").id, 1, 0)
    books.instances["i-4"] = Instance("i-4", "b-4", "10.0.0.4", "running", {TAG_KEY: "key-4"})
    assert store.recruit_demand()["coming"] == {"b": 3}
    config = load_config(env={})
    recruiting = Recruiting(store, config, {"cloud": books})
    try:
        assert sorted(recruiting.recover()) == ["b-1", "b-2", "b-3"]
    finally:
        recruiting.close()
    assert sorted(books.destroyed) == ["i-1", "i-2"] and list(books.instances) == ["i-4"]
    status = {m.name: (m.status, m.message) for m in store.list_machines(everything=True)}
    assert status == {"b-1": ("failed", "interrupted: the dispatcher restarted"),
                      "b-2": ("failed", "interrupted: the dispatcher restarted"),
                      "b-3": ("failed", "interrupted: the dispatcher restarted"), "b-4": ("running", None)}
    assert store.recruit_demand()["coming"] == {"b": 0}, "nothing counts as on its way any more"


def test_reconcile_requeues_the_tasks_of_evicted_and_vanished_machines_unspent_and_destroys_orphans(store, register,
                                                                                                     start):
    books = Books()
    server = {TAG_SERVER: "scitq"}
    machines = {}
    for n, name in enumerate(("spot", "vanished", "healthy"), 1):
        m = store.add_machine(name, "cloud", "r1", "s4", 0.2, f"key-{n}", None, "b")
        store.update_machine(m.id, "provisioning", instance_id=f"i-{n}")
        w = register(name)
        store.attach_worker(m.id, w.id, 1, 0)
        machines[name] = (w, start("running", worker=w, max_retries=0, batch="b"))
        books.instances[f"i-{n}"] = Instance(f"i-{n}", name, f"10.0.0.{n}", "running", {**server, TAG_KEY: f"key-{n}"})
    books.instances["i-1"] = Instance("i-1", "spot", "10.0.0.1", "evicted", {**server, TAG_KEY: "key-1"})
    del books.instances["i-2"]  # destroyed behind scitq's back
    books.instances["i-9"] = Instance("i-9", "made-by-hand", "10.0.0.9", "running", {**server, TAG_KEY: "key-9"})
    books.instances["i-8"] = Instance("i-8", "booting", None, "pending", {**server, TAG_KEY: "key-8"})
    healthy_before = store.get_worker(machines["healthy"][0].id).status
    recruiting = Recruiting(store, load_config(env={}), {"cloud": books}, server_id="scitq")
    try:
        first = recruiting.reconcile()
        assert (sorted(first["gone"]), first["orphans"]) == (["spot", "vanished"], []), \
            "an unknown machine is destroyed only when seen twice (it may be a create under way)"
        second = recruiting.reconcile()
    finally:
        recruiting.close()
    assert second == {"orphans": ["i-9"], "gone": []}, "a booting unknown machine is left to its create"
    assert sorted(books.destroyed) == ["i-1", "i-9"], "the evicted VM is given back; the vanished one is gone already"
    seen = {name: (store.get_worker(w.id).status, store.get_task(e["task_id"]).status,
                   store.get_task(e["task_id"]).retries_used) for name, (w, e) in machines.items()}
    assert seen == {"spot": ("evicted", "pending", 0), "vanished": ("lost", "pending", 0),
                    "healthy": (healthy_before, "running", 0)}
    [ended] = [x for x in store.list_executions(machines["spot"][1]["task_id"])]
    assert (ended.status, ended.failure_class) == ("failed", "evicted")
    [ended] = [x for x in store.list_executions(machines["vanished"][1]["task_id"])]
    assert (ended.status, ended.failure_class) == ("failed", "lost")
    status = {m.name: m.status for m in store.list_machines(everything=True)}
    assert status == {"spot": "destroyed", "vanished": "destroyed", "healthy": "running"}
    jobs = sorted((j.target, j.status) for j in store.list_jobs(limit=100) if j.kind == "reconcile")
    assert jobs == [("cloud:i-1", "succeeded"), ("cloud:i-2", "succeeded"), ("cloud:i-9", "succeeded")]
