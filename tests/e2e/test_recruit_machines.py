"""Recruiting with a cloud whose machines are real: the tests' provider (tests/support/
nspawn_provider.py, loaded by the server as a plugin) boots nspawn machines (Debian 12, systemd,
sshd, no rclone, no route out) into namespaces set aside here. A recruiter (at most 3 workers, one
per 20 pending tasks) on a batch of 60 tasks: 3 machines created, provisioned, the tasks done,
the machines given back once idle, nothing left. And `scitq worker deploy`: a machine rented by
hand becomes a worker of the batch asked, runs its tasks, and is given back once idle."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from scitq_app.client import Server
from tests.e2e.test_install_machines import build_pyz, wait_until
from scitq_app.cloud.provider import TAG_NAME, TAG_SERVER, Flavor
from tests.support.machines import NSPAWN_SCRIPT, Machines
from tests.support.nspawn_provider import NspawnProvider
from tests.support.processes import ServerProcess
from tests.support.storage import rclone_binary

pytestmark = [pytest.mark.xdist_group("machines")]

ROOT = Path(__file__).resolve().parents[2]
SLOTS = 5  # the provider's quota: the recruiter's 3, a replacement, an orphan


class Cloud:
    def __init__(self, server: ServerProcess, registry: Path, slots: list[str], state: Path,
                 console: NspawnProvider) -> None:
        self.server = server
        self.console = console  # the provider's own console: what people do behind scitq's back
        self.registry = registry
        self.slots = slots
        self.state = state  # where the recipe keeps each machine's root file system
        assert server.admin_token
        self.client = Server(server.url, server.admin_token)

    def rented(self) -> dict:
        return json.loads(self.registry.read_text()) if self.registry.exists() else {}


def start_cloud(machines: Machines, tmp: Path, slots: int = SLOTS, idle_release: float = 8) -> Cloud:
    """A server on the machines' bridge recruiting from the tests' provider, `slots` machines at most
    (their namespaces set aside here: teardown removes any machine left)."""
    pyz = build_pyz(tmp / "scitq.pyz")
    names = [f"{machines.prefix}-cloud{i}" for i in range(slots)]
    reserved = [[name, machines._take_namespace(name)] for name in names]  # removed at teardown if left
    registry = tmp / "rented.json"
    providers = tmp / "providers.yaml"
    settings = {"slots": reserved, "script": str(NSPAWN_SCRIPT), "env": machines.env, "key": str(machines.key),
                "registry": str(registry), "flavors": [{"name": "n1", "region": "lab", "cpu": 2, "mem": 2, "price": 0.05},
                                                       {"name": "n2", "region": "lab", "cpu": 4, "mem": 8, "price": 0.2}]}
    providers.write_text(json.dumps([{"name": "nspawn", "type": "tests.support.nspawn_provider:NspawnProvider",
                                      **settings}]))  # JSON is YAML
    os.chmod(providers, 0o600)
    server = ServerProcess(f"sqlite:///{tmp}/scitq.db", str(tmp), listen=machines.bridge)
    server.extra_env = {
        "SCITQ_RECRUIT_PROVIDERS": str(providers), "SCITQ_RECRUIT_INTERVAL": "1",
        "SCITQ_RECRUIT_IDLE_RELEASE": str(idle_release), "SCITQ_RECRUIT_RECONCILE": "2",
        "SCITQ_SERVER_PUBLIC_URL": server.url, "SCITQ_SERVER_PYZ": str(pyz),
        "SCITQ_DISPATCHER_LEASE": "10", "PYTHONPATH": str(ROOT),
        "PATH": f"{os.path.dirname(rclone_binary())}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    server.start()
    return Cloud(server, registry, names, machines.state, NspawnProvider("nspawn", settings))


@pytest.fixture(scope="module")
def cloud(machines: Machines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    c = start_cloud(machines, tmp_path_factory.mktemp("recruit"))
    try:
        yield c
    finally:
        c.server.stop()


def test_a_recruiter_rents_three_machines_runs_the_batch_and_gives_them_back(cloud: Cloud) -> None:
    c = cloud.client
    ids = c.submit_many([{"command": "sleep 2", "batch": "cloud", "name": f"c{i}"} for i in range(60)])
    flavors = c.get("/flavors", filter="cpu>=2")["flavors"]
    assert [f["name"] for f in flavors] == ["n1", "n2"], "cheapest first"
    started = time.monotonic()
    c.post("/recruiters", {"batch": "cloud", "provider": "nspawn", "flavor": "cpu>=2:mem>=2",
                           "tasks_per_worker": 20, "maximum_workers": 3, "concurrency": 4})
    wait_until("a task running on a rented worker",
               lambda: any(t["status"] in ("running", "succeeded") for t in c.tasks(ids=ids)), 180, 0.5)
    first_running = time.monotonic() - started

    # a machine destroyed behind scitq's back, mid-batch: its worker is lost and its tasks requeued
    def busy_machines() -> list[dict]:
        ms = c.get("/machines")["machines"]
        return [m for m in ms if m["status"] == "running"] if len(ms) == 3 else []
    wait_until("three rented workers", lambda: len(busy_machines()) == 3, 180, 0.5)
    victim = busy_machines()[0]
    wait_until("tasks on the victim", lambda: any(e["worker_name"] == victim["name"] and e["status"] == "running"
                                                   for t in ids for e in c.executions(t)), 60, 0.5)
    cloud.console.kill(victim["instance_id"])
    # and a machine billed with this server's tag that scitq never asked for: an orphan
    orphan = cloud.console.create("stray", Flavor("nspawn", "n1", "lab", 2, 2),
                                  {TAG_SERVER: cloud.server.url, TAG_NAME: "stray"})
    c.join(ids, timeout=300)
    assert {t["status"] for t in c.tasks(ids=ids)} == {"succeeded"}
    lost = [e for t in ids for e in c.executions(t) if e["worker_name"] == victim["name"] and e["status"] == "failed"]
    assert lost and {e["failure_class"] for e in lost} == {"lost"}, lost
    assert all("gone at nspawn" in e["message"] for e in lost)
    assert c.worker(victim["worker_id"])["status"] == "lost"
    wait_until("the orphan reconciled away", lambda: orphan.id not in cloud.rented(), 60, 1.0)

    machines = c.get("/machines", all=True)["machines"]
    assert {(m["flavor"], m["price"]) for m in machines} == {("n1", 0.05)}, "the cheapest matching flavor"
    ran_on = {e["worker_name"] for tid in ids for e in c.executions(tid)}
    assert ran_on <= {m["name"] for m in machines}, "the batch ran on the rented workers"
    # idle for [recruit] idle_release with nothing pending: given back
    wait_until("the machines given back",
               lambda: {m["status"] for m in c.get("/machines", all=True)["machines"]} == {"destroyed"}, 120, 1.0)
    machines = c.get("/machines", all=True)["machines"]
    assert [m["name"] for m in machines if m["message"] == "gone at the provider"] == [victim["name"]]
    assert cloud.rented() == {}, "nothing left at the provider"
    assert [s for s in cloud.slots if (cloud.state / s).exists()] == [], "their disks are deleted"
    workers = {w["name"]: w for w in c.workers()}
    assert {workers[m["name"]]["status"] for m in machines if m["name"] != victim["name"]} == {"destroyed"}
    jobs = c.jobs(limit=1000)
    assert {j["status"] for j in jobs} == {"succeeded"}, [j for j in jobs if j["status"] != "succeeded"]
    kinds = [j["kind"] for j in jobs]
    assert kinds.count("deploy") == kinds.count("provision") == len(machines) and kinds.count("reconcile") == 2
    assert kinds.count("destroy") == len(machines) - 1, "each machine still there when idle is destroyed once"
    for m in machines:
        key = c.host_key(f"nspawn:{m['instance_id']}")
        assert key["fingerprint"].startswith("SHA256:"), "keyed by the provider's machine id"
    print(f"\nrecruiter create -> first task running: {first_running:.1f} s")


def test_worker_deploy_rents_a_machine_that_becomes_a_worker_and_is_given_back_when_idle(
        cloud: Cloud, tmp_path: Path) -> None:
    c = cloud.client
    before = {m["name"] for m in c.get("/machines", all=True)["machines"]}
    env = {**os.environ, "HOME": str(tmp_path), "SCITQ_SERVER": cloud.server.url,
           "SCITQ_TOKEN": cloud.server.admin_token or "", "PYTHONPATH": str(ROOT)}
    env.pop("SCITQ_CONFIG", None)
    r = subprocess.run([sys.executable, "-m", "scitq_app", "worker", "deploy", "--provider", "nspawn", "--flavor",
                        "n2", "--batch", "byhand", "--concurrency", "3"], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    [m] = [m for m in c.get("/machines", all=True)["machines"] if m["name"] not in before]
    assert (m["status"], m["flavor"], m["batch"], m["recruiter_id"]) == ("running", "n2", "byhand", None)
    assert f"{m['name']}: worker {m['worker_id']} running" in r.stderr
    worker = c.worker(m["worker_id"])
    assert (worker["concurrency"], worker["batch"], worker["permanent"]) == (3, "byhand", False)
    ids = c.submit_many([{"command": "echo done", "batch": "byhand"} for _ in range(6)])
    c.join(ids, timeout=120)
    assert {e["worker_name"] for t in ids for e in c.executions(t)} == {m["name"]}
    wait_until("the machine given back once idle", lambda: next(
        x for x in c.get("/machines", all=True)["machines"] if x["name"] == m["name"])["status"] == "destroyed",
        120, 1.0)
    assert m["instance_id"] not in cloud.rented()
