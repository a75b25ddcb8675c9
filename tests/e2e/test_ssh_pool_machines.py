"""The `ssh-pool` provider on real hosts: two nspawn machines (Debian 12, systemd, sshd, no rclone,
no route out) listed in a pool, their keys learned at first contact. A recruiter lends both for a
batch; once idle they are given back clean (the worker uninstalled: no unit running, no config
left) and the hosts stay up; a second batch borrows a host again and is served."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import pytest

from scitq_app.client import Server
from tests.e2e.test_install_machines import build_pyz, wait_until
from tests.support.machines import Machine, Machines
from tests.support.processes import ServerProcess
from tests.support.storage import rclone_binary

pytestmark = [pytest.mark.xdist_group("machines")]

ROOT = Path(__file__).resolve().parents[2]


class Pool:
    def __init__(self, server: ServerProcess, hosts: list[Machine], state: Path) -> None:
        self.server = server
        self.hosts = hosts
        self.state = state
        assert server.admin_token
        self.client = Server(server.url, server.admin_token)

    def lent(self) -> dict:
        return json.loads(self.state.read_text())["lent"] if self.state.exists() else {}


@pytest.fixture(scope="module")
def pool(machines: Machines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    tmp = tmp_path_factory.mktemp("pool")
    pyz = build_pyz(tmp / "scitq.pyz")
    hosts = machines.boot_many(["pool0", "pool1"])
    state = tmp / "lab.json"
    providers = tmp / "providers.yaml"
    providers.write_text(json.dumps([{"name": "lab", "type": "ssh-pool", "ssh_key": str(machines.key),
                                      "state": str(state), "hosts": [{"address": h.addr, "cpu": 2, "mem": 2}
                                                                     for h in hosts]}]))
    os.chmod(providers, 0o600)
    server = ServerProcess(f"sqlite:///{tmp}/scitq.db", str(tmp), listen=machines.bridge)
    server.extra_env = {
        "SCITQ_RECRUIT_PROVIDERS": str(providers), "SCITQ_RECRUIT_INTERVAL": "1",
        "SCITQ_RECRUIT_IDLE_RELEASE": "3", "SCITQ_RECRUIT_RECONCILE": "5",
        "SCITQ_SERVER_PUBLIC_URL": server.url, "SCITQ_SERVER_PYZ": str(pyz), "SCITQ_DISPATCHER_LEASE": "10",
        "PATH": f"{os.path.dirname(rclone_binary())}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    server.start()
    try:
        yield Pool(server, hosts, state)
    finally:
        server.stop()


def _all_given_back(c: Server) -> bool:
    return {m["status"] for m in c.get("/machines", all=True)["machines"]} == {"destroyed"}


def test_a_pool_lends_its_hosts_to_a_batch_and_gets_them_back_clean_for_the_next(pool: Pool) -> None:
    c = pool.client
    assert [(f["name"], f["available"]) for f in c.get("/flavors")["flavors"]] == [("host", True)]
    ids = c.submit_many([{"command": "sleep 1", "batch": "pooled"} for _ in range(20)])
    c.post("/recruiters", {"batch": "pooled", "provider": "lab", "flavor": "host", "tasks_per_worker": 10,
                           "maximum_workers": 2, "concurrency": 2})
    c.join(ids, timeout=300)
    assert {t["status"] for t in c.tasks(ids=ids)} == {"succeeded"}
    machines = c.get("/machines", all=True)["machines"]
    assert sorted(m["instance_id"] for m in machines) == sorted(f"{h.addr}:22" for h in pool.hosts)
    assert {e["worker_name"] for t in ids for e in c.executions(t)} == {m["name"] for m in machines}
    learned = json.loads(pool.state.read_text())["keys"]
    for h in pool.hosts:
        offered = {tuple(line.split()[:2]) for line in h.run("cat /etc/ssh/ssh_host_*_key.pub").stdout.splitlines()}
        assert tuple(learned[f"{h.addr}:22"]) in offered, "the host's own key, learned at first contact"

    wait_until("the hosts given back", lambda: _all_given_back(c), 120, 1.0)
    assert pool.lent() == {}
    for h in pool.hosts:
        assert h.run("systemctl is-active scitq-worker", check=False).stdout.strip() == "inactive"
        assert h.run("test -e /etc/scitq.conf || test -e /usr/local/lib/scitq", check=False).returncode == 1, \
            "nothing of the worker left"
        assert h.run("rclone version").returncode == 0, "rclone stays"
    assert {j["status"] for j in c.jobs(limit=1000)} == {"succeeded"}

    again = c.submit_many([{"command": "hostname", "batch": "again"} for _ in range(5)])
    c.post("/recruiters", {"batch": "again", "provider": "lab", "flavor": "host", "tasks_per_worker": 10,
                           "maximum_workers": 1})
    c.join(again, timeout=300)
    assert {t["status"] for t in c.tasks(ids=again)} == {"succeeded"}
    [second] = [m for m in c.get("/machines", all=True)["machines"] if m["batch"] == "again"]
    assert second["instance_id"] in {f"{h.addr}:22" for h in pool.hosts}, "a host lent a second time"
    wait_until("given back again", lambda: _all_given_back(c), 120, 1.0)
    assert pool.lent() == {}
