"""`scitq provision` onto fresh Debian 12 machines (systemd as PID 1, sshd, no rclone, no route
out), from a server on this host: three hosts at once become workers and run a batch; a host
without python3, one whose sshd is stopped and one whose disk is too small each give a failed job
with a readable log, no worker row, and the host as it was; a host whose key changed is refused.

The server listens on the machines' bridge; the CLI runs here with a throwaway HOME (so no
known_hosts of this machine's user decides anything) and the machines' root key.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
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
LEDGER = "/var/tmp/scitq-ledger"
UPGRADE_VERSION = "2.0.0a1+fleet.test"


class Fleet:
    def __init__(self, machines: Machines, server: ServerProcess, pyz: Path, home: Path, offered: Path) -> None:
        self.machines = machines
        self.server = server
        self.pyz = pyz
        self.home = home
        self.offered = offered  # the server's [server] pyz: what `worker upgrade` hands out
        assert server.admin_token
        self.client = Server(server.url, server.admin_token)

    def provision(self, *hosts: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        env = {**os.environ, "HOME": str(self.home), "SCITQ_SERVER": self.server.url,
               "SCITQ_TOKEN": self.server.admin_token or "", "PYTHONPATH": str(ROOT)}
        env.pop("SCITQ_CONFIG", None)
        return subprocess.run([sys.executable, "-m", "scitq_app", "provision", "--key", str(self.machines.key),
                               "--pyz", str(self.pyz), "--rclone", rclone_binary(), "--concurrency", "2",
                               *(() if "--worker-url" in extra else ("--worker-url", self.server.url)),
                               *extra, *hosts],
                              capture_output=True, text=True, timeout=600, env=env, cwd=str(self.home))

    def job_of(self, host: str) -> dict:
        """The latest job on `host`."""
        jobs = [j for j in self.client.jobs(limit=1000) if j["target"] == f"{host}:22"]
        assert jobs, f"no job for {host}"
        return jobs[-1]

    def log_of(self, job: dict) -> str:
        return "\n".join(ln["line"] for ln in self.client.job_log(job["id"]))


@pytest.fixture(scope="module")
def fleet(machines: Machines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("provision")
    pyz = build_pyz(tmp / "scitq.pyz")
    offered = tmp / "offered" / "scitq.pyz"
    server = ServerProcess(f"sqlite:///{tmp}/scitq.db", str(tmp), listen=machines.bridge,
                           env={"SCITQ_DISPATCHER_LEASE": "10", "SCITQ_SERVER_PYZ": str(offered)}).start()
    home = tmp / "home"
    home.mkdir()
    try:
        yield Fleet(machines, server, pyz, home, offered)
    finally:
        server.stop()


def _state(m: Machine) -> str:
    """What provisioning may change on a host: units, files, users."""
    return m.run("systemctl list-unit-files 'scitq*' --no-legend | sort; ls /usr/local/bin /usr/local/lib "
                 "/etc/scitq.conf /var/lib/scitq /var/tmp 2>&1 | sort; getent passwd scitq-task || true").stdout


def test_three_hosts_at_once_become_workers_and_run_a_batch(fleet: Fleet) -> None:
    hosts = fleet.machines.boot_many(["p1", "p2", "p3"])
    r = fleet.provision(*(m.addr for m in hosts))
    assert r.returncode == 0, r.stdout + r.stderr
    for m in hosts:
        assert f"{m.addr}:22: worker {m.name}" in r.stderr, r.stderr
        job = fleet.job_of(m.addr)
        assert (job["status"], job["progress"], job["kind"]) == ("succeeded", 1.0, "provision")
        log = fleet.log_of(job)
        for step in ("== connect", "== check", "== upload", "== install", "== register"):
            assert step in log, log
        assert "uploading rclone" in log, "the hosts have no rclone: it is uploaded"
        assert m.run("ls /var/tmp").stdout.count("scitq-provision") == 0, "the uploaded files are removed"
        key = fleet.client.host_key(f"{m.addr}:22")
        assert key["fingerprint"].startswith("SHA256:"), "the key was recorded at first contact"
    workers = {w["name"]: w for w in fleet.client.workers()}
    assert set(workers) == {m.name for m in hosts}, "named after the hosts"
    assert {w["concurrency"] for w in workers.values()} == {2}
    ids = fleet.client.submit_many([{"command": f"echo t{i} >> {LEDGER}", "shell": "sh", "name": f"t{i}",
                                     "batch": "fleet"} for i in range(12)])
    fleet.client.join(ids, timeout=120)
    assert {t["status"] for t in fleet.client.tasks(batch="fleet", limit=100)} == {"succeeded"}
    done = sum(len(m.run(f"cat {LEDGER} 2>/dev/null || true").stdout.split()) for m in hosts)
    assert done == 12


def test_a_host_whose_key_changed_is_refused_naming_both_keys(fleet: Fleet) -> None:
    m = next(x for x in fleet.machines.booted if x.name.endswith("p1"))
    known = fleet.client.host_key(f"{m.addr}:22")["fingerprint"]
    m.run("rm -f /etc/ssh/ssh_host_* && ssh-keygen -A >/dev/null && systemctl restart ssh")
    jobs_before = len(fleet.client.jobs(limit=1000))
    r = fleet.provision(m.addr)
    assert r.returncode == 1
    job = fleet.job_of(m.addr)
    assert len(fleet.client.jobs(limit=1000)) == jobs_before + 1
    assert job["status"] == "failed" and "changed" in job["message"], job
    key_type = fleet.client.host_key(f"{m.addr}:22")["key_type"]
    kind = "ed25519" if "ed25519" in key_type else "ecdsa" if "ecdsa" in key_type else "rsa"
    offered = m.run(f"ssh-keygen -lf /etc/ssh/ssh_host_{kind}_key.pub").stdout.split()[1]
    assert known in job["message"] and offered in job["message"], job["message"]
    assert fleet.client.host_key(f"{m.addr}:22")["fingerprint"] == known, "the recorded key is kept"
    assert f"{m.addr}:22: failed" in r.stderr and "scitq job log" in r.stderr


def test_broken_hosts_fail_with_a_readable_log_no_worker_and_the_host_as_it_was(fleet: Fleet) -> None:
    [m] = fleet.machines.boot_many(["broken"])
    before = _state(m)
    # (what, how to break the host, how to repair it, what the job's message says, extra options)
    cases = [
        ("no python3", "mv /usr/bin/python3 /usr/bin/python3.hidden", "mv /usr/bin/python3.hidden /usr/bin/python3",
         "python3 is not installed", ()),
        ("a small disk", "mount -t tmpfs -o size=8m tmpfs /var/tmp", "umount /var/tmp", "not enough disk space", ()),
        # installed, then the worker cannot reach the server: everything installed is removed again
        ("an unreachable server", "true", "true", "did not register", ("--worker-url", "http://192.0.2.1:9")),
    ]
    for what, breaks, repair, said, extra in cases:
        m.run(breaks)
        r = fleet.provision(m.addr, extra=extra)
        assert r.returncode == 1, (what, r.stdout + r.stderr)
        job = fleet.job_of(m.addr)
        assert job["status"] == "failed" and said in job["message"], (what, job)
        log = fleet.log_of(job)
        assert said in log and "failed:" in log, (what, log)
        assert said in r.stderr, (what, r.stderr)
        assert m.name not in {w["name"] for w in fleet.client.workers()}, f"{what}: no worker row"
        m.run(repair)
        assert _state(m) == before, f"{what}: the host is as it was"
    assert "undo: uninstalling what was installed" in log
    # sshd stopped (from inside: this test reaches the machine over ssh too), then rebooted
    m.run("systemd-run --on-active=1 systemctl stop ssh.service ssh.socket")
    wait_until("sshd to stop", lambda: m.run("true", check=False).returncode != 0, 30)
    r = fleet.provision(m.addr)
    assert r.returncode == 1
    job = fleet.job_of(m.addr)
    assert job["status"] == "failed" and "cannot connect" in job["message"], job
    assert "cannot connect" in fleet.log_of(job)
    m.stop()
    m.boot()
    # repaired, the same host provisions
    r = fleet.provision(m.addr)
    assert r.returncode == 0, r.stdout + r.stderr
    assert m.name in {w["name"] for w in fleet.client.workers()}


def test_debian_s_paramiko_2_12_provisions_from_the_installed_pyz(fleet: Fleet) -> None:
    # The production path: the installed scitq (the pyz under /usr/bin/python3) on a Debian 12 host
    # with python3-paramiko from apt, uploading itself (the pyz it runs from) and its host's rclone.
    src = next(x for x in fleet.machines.booted if x.name.endswith("broken"))
    [target] = fleet.machines.boot_many(["viadeb"])
    src.use_local_apt()
    src.run("apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
            "--no-install-recommends python3-paramiko >/dev/null", timeout=600)
    assert src.run("python3 -c 'import paramiko; print(paramiko.__version__)'").stdout.startswith("2.12")
    src.put(fleet.machines.key, "/root/provision-key", mode=0o600)
    r = src.run(f"mkdir -p /root/h && HOME=/root/h SCITQ_SERVER={fleet.server.url} "
                f"SCITQ_TOKEN={fleet.server.admin_token} scitq provision --key /root/provision-key "
                f"--worker-url {fleet.server.url} {target.addr}", check=False, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert target.name in {w["name"] for w in fleet.client.workers()}
    assert fleet.job_of(target.addr)["status"] == "succeeded"


def test_the_fleet_upgrades_from_one_place_while_a_batch_runs_and_every_task_succeeds_once(fleet: Fleet) -> None:
    workers = {w["name"]: w for w in fleet.client.workers()}
    hosts = [m for m in fleet.machines.booted if m.name in workers]
    assert len(hosts) == 5
    fleet.offered.parent.mkdir()
    build_pyz(fleet.offered, version=UPGRADE_VERSION)
    names = [f"u{i}" for i in range(20)]
    ids = fleet.client.submit_many([{"command": f"sleep 2; echo {n} >> {LEDGER}", "shell": "sh", "name": n,
                                     "batch": "upgrade"} for n in names])
    wait_until("tasks running", lambda: sum(t["status"] == "running" for t in fleet.client.tasks(ids=ids)) >= 3, 60,
               0.2)
    r = _cli(fleet, "worker", "upgrade", "--all")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(f"upgrade to {UPGRADE_VERSION} sent") == 5, r.stdout
    fleet.client.join(ids, timeout=300)
    assert {t["status"] for t in fleet.client.tasks(ids=ids)} == {"succeeded"}
    ledger = " ".join(m.run(f"cat {LEDGER} 2>/dev/null || true").stdout for m in hosts).split()
    assert {n: ledger.count(n) for n in names} == {n: 1 for n in names}, "each task ran once"

    def upgraded() -> bool:
        return {(w.get("stats") or {}).get("version") for w in fleet.client.workers()} == {UPGRADE_VERSION}
    wait_until("every worker on the new version", upgraded, 180, 2.0)
    after = {w["name"]: w for w in fleet.client.workers()}
    assert {n: w["id"] for n, w in after.items()} == {n: w["id"] for n, w in workers.items()}, "same workers"
    for m in hosts:
        assert m.run("readlink /usr/local/lib/scitq/scitq.pyz").stdout.strip().startswith(
            "/usr/local/lib/scitq/releases/scitq-")
        assert m.run("/usr/local/bin/scitq --version").stdout.strip() == f"scitq {UPGRADE_VERSION}"


def _cli(fleet: Fleet, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(fleet.home), "SCITQ_SERVER": fleet.server.url,
           "SCITQ_TOKEN": fleet.server.admin_token or "", "PYTHONPATH": str(ROOT)}
    env.pop("SCITQ_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "scitq_app", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def test_jobs_are_listed_shown_and_logged_by_the_cli(fleet: Fleet) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return _cli(fleet, *args)
    listed = json.loads(cli("job", "list", "--json").stdout)
    assert listed and {j["kind"] for j in listed} == {"provision"}
    failed = [j for j in listed if j["status"] == "failed"]
    r = cli("job", "show", str(failed[0]["id"]))
    assert r.returncode == 0 and "message" in r.stdout and "failed" in r.stdout
    r = cli("job", "log", str(failed[0]["id"]))
    assert r.returncode == 0 and "== connect" in r.stdout
    r = cli("job", "list", "--status", "finished")
    assert r.returncode == 2 and "--status" in r.stderr
