"""Real installs: install.sh on fresh Debian 12 machines with systemd as PID 1 (nspawn), no route out.

One server machine and two worker machines are installed once for the module; the tests then run in
file order against that installation (each names the state it leaves): a batch over TLS with a pinned
self-signed certificate, join-token refusals, a worker machine rebooted mid-batch, a no-op re-run,
an upgrade of everything while a batch runs, the units under `systemd-analyze verify`, uninstall.
The machines reach only the test bridge; their apt source is the session's local repository.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.support.machines import Machine, Machines

pytestmark = [pytest.mark.xdist_group("machines")]

ROOT = Path(__file__).resolve().parents[2]
SRC = "/root/scitq"   # where each machine gets install.sh, systemd/ and the pyz
PYZ = "/usr/local/lib/scitq/scitq.pyz"
LEDGER = "/var/tmp/scitq-ledger"  # each task's command appends its name here when it completes
NEW_VERSION = "2.0.0a1+upgrade.test"


def build_pyz(out: Path, version: str | None = None) -> Path:
    """Build scitq.pyz from this tree (with another __version__ when asked) into `out`."""
    src = ROOT
    if version is not None:
        src = out.parent / "src-upgrade"
        shutil.copytree(ROOT / "scitq_app", src / "scitq_app", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "build_zipapp.py", src)
        shutil.copy(ROOT / "install.sh", src)
        shutil.copytree(ROOT / "systemd", src / "systemd")
        init = src / "scitq_app" / "__init__.py"
        init.write_text(init.read_text().replace('__version__ = "', f'__version__ = "{version}"  # was "', 1))
    done = subprocess.run(["python3", str(src / "build_zipapp.py"), "-o", str(out),
                           "--lock", str(ROOT / "requirements" / "pyz.txt"),
                           "--cache", str(ROOT / ".cache" / "pyz-wheels")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def wait_until(what: str, check: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
    """Poll `check` (over ssh: each call costs a round trip) until it returns a true value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


class Install:
    """The installation under test: a server machine, two worker machines, and ways to drive them."""

    def __init__(self, srv: Machine, workers: list[Machine], tmp: Path) -> None:
        self.srv = srv
        self.workers = workers
        self.tmp = tmp
        self.url = f"https://{srv.addr}"
        self.fingerprint = ""

    def ship(self, m: Machine, pyz: Path) -> None:
        for path in (ROOT / "install.sh", *sorted((ROOT / "systemd").iterdir())):
            m.put(path, f"{SRC}/{path.relative_to(ROOT)}")
        m.put(pyz, f"{SRC}/scitq.pyz")

    def api(self, code: str) -> Any:
        """Run Python `code` on the server host with `s`, a client of the local API holding the admin
        token install.sh wrote; `code` leaves its answer in `out`, returned decoded from JSON."""
        script = ("import json, sys\n"
                  f"sys.path.insert(0, {PYZ!r})\n"
                  "from scitq_app.client import Server\n"
                  "s = Server('http://127.0.0.1:5000', open('/var/lib/scitq/admin.token').read().strip())\n"
                  f"{code}\n"
                  "print(json.dumps(out))\n")
        return json.loads(self.srv.run("python3 -", input=script).stdout)

    def join_token(self, *args: str) -> str:
        return self.srv.run("scitq worker join-token " + " ".join(args) + " 2>/dev/null").stdout.strip()

    def submit(self, names: list[str], command: str) -> list[int]:
        """Tasks that run `command` (sh; {name} replaced) and then append their name to the ledger."""
        tasks = [{"command": command.format(name=n) + f"; echo {n} >> {LEDGER}", "shell": "sh", "name": n,
                  "batch": "machines"} for n in names]
        return self.api(f"out = s.submit_many({json.dumps(tasks)})")

    def tasks(self, ids: list[int]) -> dict[int, dict]:
        return {t["id"]: t for t in self.api(f"out = s.get('/tasks', ids={ids}, limit=1000)['tasks']")}

    def wait_succeeded(self, ids: list[int], timeout: float) -> dict[int, dict]:
        def done() -> dict[int, dict] | None:
            tasks = self.tasks(ids)
            final = [t for t in tasks.values() if t["status"] in ("succeeded", "failed", "canceled")]
            return tasks if len(final) == len(ids) else None
        tasks = wait_until(f"{len(ids)} tasks to finish", done, timeout, 2.0)
        assert {t["status"] for t in tasks.values()} == {"succeeded"}, tasks
        return tasks

    def ledger(self) -> list[str]:
        lines: list[str] = []
        for m in self.workers:
            lines += m.run(f"cat {LEDGER} 2>/dev/null || true").stdout.split()
        return lines

    def assert_each_ran_once(self, names: list[str]) -> None:
        ledger = self.ledger()
        counts = {n: ledger.count(n) for n in names}
        assert counts == {n: 1 for n in names}, f"completions per task: {counts}"

    def workers_by_name(self) -> dict[str, dict]:
        return {w["name"]: w for w in self.api("out = s.workers()")}

    def main_pids(self, m: Machine, units: list[str]) -> dict[str, str]:
        out = m.run("systemctl show -p MainPID --value " + " ".join(units)).stdout.split()
        return dict(zip(units, out))


@pytest.fixture(scope="module")
def install(machines: Machines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    tmp = tmp_path_factory.mktemp("install")
    pyz = build_pyz(tmp / "scitq.pyz")
    srv, *workers = machines.boot_many(["srv", "w1", "w2"])
    inst = Install(srv, workers, tmp)
    for m in (srv, *workers):
        m.use_local_apt()
        inst.ship(m, pyz)
    yield inst


def test_install_server_on_a_fresh_machine(install: Install) -> None:
    srv = install.srv
    done = srv.run(f"bash {SRC}/install.sh server", timeout=600)
    assert "the API answers through TLS" in done.stdout
    assert srv.run("systemctl is-active scitq-server scitq-dispatcher scitq.target nginx postgresql").stdout.split() \
        == ["active"] * 5
    assert srv.run("systemctl is-enabled scitq-server scitq-dispatcher scitq.target").stdout.split() == ["enabled"] * 3
    # PostgreSQL holds the data; the admin token is the server user's and root's alone
    assert "database = postgresql://scitq:" in srv.read("/etc/scitq.conf")
    assert srv.run("stat -c '%a %U' /var/lib/scitq/admin.token /etc/scitq.conf /etc/scitq/tls/scitq.key").stdout.split() \
        == ["600", "scitq", "640", "root", "600", "root"]
    assert "scitq: server listening on http://127.0.0.1:5000 (postgres)" in \
        srv.run("journalctl -u scitq-server --no-pager").stdout  # logs go to the journal
    install.fingerprint = srv.run("openssl x509 -in /etc/scitq/tls/scitq.crt -outform DER | sha256sum").stdout.split()[0]
    assert install.fingerprint in done.stdout
    # one admin token, made with the schema; the CLI on the server host uses it through the API with
    # no configuration (it reads the token file)
    assert [(t["name"], t["role"]) for t in json.loads(srv.run("scitq token list --json").stdout)] == \
        [("admin", "admin")]
    assert srv.run("scitq batch list --json").returncode == 0


def test_the_api_behind_tls_needs_a_token_even_from_loopback_through_the_proxy(install: Install) -> None:
    w1 = install.workers[0]
    probe = (
        "import hashlib, http.client, json, ssl, sys\n"
        "ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
        f"c = http.client.HTTPSConnection({install.srv.addr!r}, 443, context=ctx, timeout=10); c.connect()\n"
        "fp = hashlib.sha256(c.sock.getpeercert(True)).hexdigest()\n"
        "c.request('GET', '/api/v1/health'); h = c.getresponse(); h.read()\n"
        "c.request('POST', '/api/v1/tokens', body=json.dumps({'name': 'x', 'role': 'admin'}),"
        " headers={'Content-Type': 'application/json'})\n"
        "t = c.getresponse(); t.read()\n"
        "print(fp, h.status, t.status)\n")
    fp, health, tokens = w1.run("python3 -", input=probe).stdout.split()
    assert (fp, health, tokens) == (install.fingerprint, "200", "401")


def test_install_workers_with_join_tokens_and_run_a_batch_over_tls(install: Install) -> None:
    for i, m in enumerate(install.workers):
        token = install.join_token()
        assert token.endswith("." + install.fingerprint), "the join token carries the certificate's fingerprint"
        done = m.run(f"bash {SRC}/install.sh worker --server {install.url} --join-token {token} --concurrency 2",
                     timeout=600)
        assert "the worker is registered" in done.stdout
        assert m.run("systemctl is-active scitq-worker; systemctl is-enabled scitq-worker").stdout.split() \
            == ["active", "enabled"]
        assert token not in m.run("journalctl -u scitq-worker --no-pager").stdout
        # the join token was spent; the worker keeps its own credential, pinned to the certificate
        state = json.loads(m.read("/var/lib/scitq/work/.scitq/state.json"))
        assert state["fingerprint"] == install.fingerprint and state["token"] != token.split(".")[0]
    workers = install.workers_by_name()
    assert {m.name for m in install.workers} <= set(workers)
    assert all(workers[m.name]["status"] == "running" for m in install.workers)
    names = [f"tls{i}" for i in range(20)]
    ids = install.submit(names, "sleep 0.5")
    install.wait_succeeded(ids, 120)
    install.assert_each_ran_once(names)


def test_a_user_token_s_task_on_an_installed_worker_reads_none_of_its_secrets(install: Install) -> None:
    user = json.loads(install.srv.run("scitq token create --role user attacker --json").stdout)["secret"]
    # whichever worker claims it: its agent is the oldest `worker run` process of that machine
    attack = ("id -un; cat /etc/scitq.conf; cat /var/lib/scitq/work/.scitq/state.json; "
              "cat /proc/$(pgrep -o -f 'scitq.pyz worker run')/environ; ls /var/lib/scitq/work; "
              "touch /etc/scitq-owned || true; echo done")
    tid = install.api(f"s.token = {user!r}\n"
                      f"out = s.submit({attack!r}, shell='sh', name='attack', batch='attack')['ids'][0]")
    task = install.wait_succeeded([tid], 120)[tid]
    stdout, stderr = install.api(f"out = [s.task_output({tid})['data'], s.task_output({tid}, 'stderr')['data']]")
    assert stdout == "scitq-task\ndone\n", stdout
    lines = stderr.splitlines()
    assert re.fullmatch(r"cat: /proc/[0-9]+/environ: Permission denied", lines.pop(2)), stderr
    assert lines == [
        "cat: /etc/scitq.conf: Permission denied", "cat: /var/lib/scitq/work/.scitq/state.json: Permission denied",
        "ls: cannot open directory '/var/lib/scitq/work': Permission denied",
        "touch: cannot touch '/etc/scitq-owned': Permission denied"], stderr
    out = stdout + stderr
    for m in install.workers:
        state = json.loads(m.read("/var/lib/scitq/work/.scitq/state.json"))
        join_line = [ln for ln in m.read("/etc/scitq.conf").splitlines() if ln.startswith("join_token")][0]
        for secret in (state["token"], join_line.split("=", 1)[1].strip()):
            assert secret not in out
        assert m.run("test -e /etc/scitq-owned; echo $?").stdout.strip() == "1"
    assert install.srv.read("/var/lib/scitq/admin.token").strip() not in out
    assert task["status"] == "succeeded"


EVIL_TAR = """import io, tarfile
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as t:
    for name, target in (("sub/l", ".."), ("sub/l/l2", "..")):
        info = tarfile.TarInfo(name); info.type = tarfile.SYMTYPE; info.linkname = target; t.addfile(info)
    data = b"pwned"
    info = tarfile.TarInfo("sub/l/l2/x"); info.size = len(data); t.addfile(info, io.BytesIO(data))
open("/root/evil/evil.tar", "wb").write(buf.getvalue())
"""


def test_on_installed_machines_file_uris_host_mounts_and_escaping_archives_are_refused(install: Install) -> None:
    user = json.loads(install.srv.run("scitq token create --role user attacker2 --json").stdout)["secret"]

    def refused(**fields: Any) -> str:
        out = install.api(f"s.token = {user!r}\ntry:\n    s.submit('true', **{fields!r})\n    out = 'accepted'\n"
                          "except Exception as e:\n    out = type(e).__name__ + ': ' + e.message")
        assert out.startswith("Invalid: "), out
        return out
    # an installed server has no file roots: every file:// URI is refused at submission
    assert "[server] file_roots" in refused(inputs=["file:///etc/scitq.conf"])
    assert "[server] file_roots" in refused(output="file:///root/.ssh/")
    assert "[server] container_options" in refused(container="busybox", container_options="-v /:/host")
    # an archive that escapes its folder through chained symlinks, served over HTTP from the server
    srv = install.srv
    srv.run("mkdir -p /root/evil && python3 -", input=EVIL_TAR)
    srv.run(f"systemd-run --unit scitq-evil-http python3 -m http.server 8765 --bind {srv.addr} "
            "--directory /root/evil")
    try:
        wait_until("the archive server", lambda: srv.run(f"timeout 2 bash -c 'exec 3<>/dev/tcp/{srv.addr}/8765'",
                                                         check=False).returncode == 0, 30)
        tid = install.api(f"s.token = {user!r}\nout = s.submit('ls -R $RESOURCE', shell='sh', batch='attack', "
                          f"resources=['http://{srv.addr}:8765/evil.tar|untar'])['ids'][0]")
        task = wait_until("the archive task to end", lambda: (t := install.tasks([tid])[tid])["status"] in (
            "succeeded", "failed") and t, 120, 2.0)
        assert task["status"] == "failed"
        assert install.api(f"out = s.executions({tid})[0]['failure_class']") == "staging"
        stderr = install.api(f"out = s.task_output({tid}, 'stderr')['data']")
        assert "member 'sub/l/l2' goes through a link made earlier" in stderr, stderr
        for m in install.workers:
            written = m.run("find /var/lib/scitq /tmp /root -xdev -name x -type f -exec grep -lx pwned {} + || true")
            assert written.stdout.strip() == "", f"the archive wrote {written.stdout} on {m.name}"
    finally:
        srv.run("systemctl stop scitq-evil-http", check=False)


def test_join_tokens_are_refused_used_expired_or_for_a_live_name_and_admin_tokens_never_register(
        install: Install) -> None:
    w1 = install.workers[0]
    agent = (f"SCITQ_CONFIG=/dev/null SCITQ_WORKER_SERVER={install.url} SCITQ_WORKER_WORKDIR=/tmp/agent-$RANDOM "
             "timeout {limit} scitq worker run --name {name} 2>&1")

    def second_agent(name: str, limit: int = 60, **env: str) -> subprocess.CompletedProcess:
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        return w1.run(f"{prefix} {agent.format(name=name, limit=limit)}", check=False, timeout=90)

    used = install.join_token()
    first = second_agent("extra-1", 6, SCITQ_WORKER_JOIN_TOKEN=used, SCITQ_WORKER_STATUS="paused")
    # a 1-use token: the first agent registered with it (then ran until `timeout` ended it)
    assert "registered as worker" in first.stdout, first.stdout
    again = second_agent("extra-2", SCITQ_WORKER_JOIN_TOKEN=used)
    assert again.returncode == 2 and "used up, expired or revoked" in again.stdout, again.stdout

    short = install.join_token("--ttl", "1s")
    time.sleep(2)  # the server's clock must pass the token's expiry: nothing to wait on but time
    late = second_agent("extra-3", SCITQ_WORKER_JOIN_TOKEN=short)
    assert late.returncode == 2 and "used up, expired or revoked" in late.stdout, late.stdout

    admin = install.srv.read("/var/lib/scitq/admin.token").strip()
    refused = second_agent("extra-4", SCITQ_WORKER_TOKEN=admin, SCITQ_WORKER_FINGERPRINT=install.fingerprint)
    assert refused.returncode == 2 and "join token" in refused.stdout, refused.stdout
    assert admin not in refused.stdout

    unpinned = second_agent("extra-5", SCITQ_WORKER_JOIN_TOKEN=install.join_token().split(".")[0])
    assert unpinned.returncode == 6 and "is not trusted (self-signed certificate)" in unpinned.stdout, unpinned.stdout

    live = second_agent(w1.name, SCITQ_WORKER_JOIN_TOKEN=install.join_token())
    assert live.returncode == 2 and f"worker '{w1.name}' on host {w1.name} is live" in live.stdout, live.stdout
    assert "another agent already uses this name" in live.stdout
    # the live worker itself is untouched
    assert install.workers_by_name()[w1.name]["status"] == "running"
    install.api("out = [s.delete_worker(w['id']) for w in s.workers() if w['name'].startswith('extra-')]")


def test_a_worker_machine_rebooted_mid_batch_comes_back_by_itself_with_no_task_lost(install: Install) -> None:
    w1 = install.workers[0]
    names = [f"reboot{i}" for i in range(8)]
    ids = install.submit(names, "sleep 6")
    wait_until("tasks running on the first worker", lambda: any(
        t["status"] == "running" for t in install.tasks(ids).values()), 60)
    pid_before = w1.run("systemctl show -p MainPID --value scitq-worker").stdout.strip()
    w1.stop()
    w1.boot()
    wait_until("the worker to run again", lambda: w1.run("systemctl is-active scitq-worker", check=False)
               .stdout.strip() == "active", 60)
    assert w1.run("systemctl show -p MainPID --value scitq-worker").stdout.strip() != pid_before
    install.wait_succeeded(ids, 240)
    install.assert_each_ran_once(names)
    wait_until("the rebooted worker to be running", lambda: install.workers_by_name()[w1.name]["status"] == "running",
               60)


def test_running_install_sh_again_changes_nothing(install: Install) -> None:
    server_units = ["scitq-server", "scitq-dispatcher", "nginx"]
    before = install.main_pids(install.srv, server_units)
    again = install.srv.run(f"bash {SRC}/install.sh server", timeout=300)
    acted = [ln for ln in again.stdout.splitlines() if ln.startswith("+ ")]
    assert acted == [], f"a re-run did: {acted}"
    assert install.main_pids(install.srv, server_units) == before
    for m in install.workers:
        pid = install.main_pids(m, ["scitq-worker"])
        again = m.run(f"bash {SRC}/install.sh worker", timeout=300)
        acted = [ln for ln in again.stdout.splitlines() if ln.startswith("+ ")]
        assert acted == [], f"a re-run did: {acted}"
        assert install.main_pids(m, ["scitq-worker"]) == pid


def test_a_newer_pyz_upgrades_server_and_workers_while_a_batch_runs_and_every_task_succeeds_once(
        install: Install) -> None:
    new = build_pyz(install.tmp / "new" / "scitq.pyz", NEW_VERSION)
    ids_before = {name: w["id"] for name, w in install.workers_by_name().items()}
    names = [f"upgrade{i}" for i in range(24)]
    ids = install.submit(names, "sleep 3")
    wait_until("the batch to be running", lambda: any(
        t["status"] == "running" for t in install.tasks(ids).values()), 60)
    install.ship(install.srv, new)
    done = install.srv.run(f"bash {SRC}/install.sh server", timeout=600)
    assert "+ systemctl restart scitq.target scitq-server scitq-dispatcher" in done.stdout
    assert NEW_VERSION in install.srv.run("scitq --version").stdout
    for m in install.workers:
        install.ship(m, new)
        done = m.run(f"bash {SRC}/install.sh worker", timeout=600)
        assert "systemctl kill --kill-who=main --signal=SIGUSR1 scitq-worker" in done.stdout
    install.wait_succeeded(ids, 300)
    install.assert_each_ran_once(names)
    wait_until("both workers to run the new version", lambda: all(
        install.workers_by_name()[m.name]["stats"].get("version") == NEW_VERSION for m in install.workers), 120, 2.0)
    # the workers kept their identity and state (their join tokens were spent long ago)
    assert {m.name: install.workers_by_name()[m.name]["id"] for m in install.workers} == \
        {m.name: ids_before[m.name] for m in install.workers}
    for m in install.workers:
        log = m.run("journalctl -u scitq-worker --no-pager").stdout
        assert "drained for the upgrade" in log
        assert "re-attached as worker" in log
        assert m.run("systemctl is-active scitq-worker").stdout.strip() == "active"


def test_the_units_pass_systemd_analyze_verify(install: Install) -> None:
    units = " ".join(f"/etc/systemd/system/{u}" for u in
                     ("scitq-server.service", "scitq-dispatcher.service", "scitq.target"))
    done = install.srv.run(f"systemd-analyze verify {units} 2>&1", check=False)
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout
    done = install.workers[1].run("systemd-analyze verify /etc/systemd/system/scitq-worker.service 2>&1", check=False)
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout


def test_two_api_processes_behind_nginx_and_one_dispatcher_serve_a_batch_together(install: Install) -> None:
    srv = install.srv
    done = srv.run(f"bash {SRC}/install.sh server --api-processes 2", timeout=300)
    assert "+ systemctl enable --quiet scitq-server@5001.service" in done.stdout
    assert srv.run("systemctl is-active scitq-server scitq-server@5001 scitq-dispatcher").stdout.split() \
        == ["active"] * 3
    verify = srv.run("systemd-analyze verify scitq-server@5001.service 2>&1", check=False)
    assert (verify.returncode, verify.stdout.strip()) == (0, "")
    # each process hears what is submitted through the other (PostgreSQL LISTEN/NOTIFY)
    for port in (5000, 5001):
        health = json.loads(srv.run(f"python3 -c 'import urllib.request; print(urllib.request.urlopen("
                                    f"\"http://127.0.0.1:{port}/api/v1/health\").read().decode())'").stdout)
        assert health["hears_other_processes"] is True, (port, health)
    srv.run(": > /var/log/nginx/scitq.access.log")
    names = [f"two{i}" for i in range(30)]
    ids = install.submit(names, "sleep 0.3")  # through the process on port 5000
    install.wait_succeeded(ids, 180)
    install.assert_each_ran_once(names)
    # the workers' claims went through nginx to both processes, and so do their heartbeats (a few
    # seconds apart: waited for)
    def served(path: str) -> dict[int, int]:
        log = srv.read("/var/log/nginx/scitq.access.log").splitlines()
        return {port: sum(1 for ln in log if path in ln and f"upstream=127.0.0.1:{port} " in ln)
                for port in (5000, 5001)}
    assert min(served("/claim ").values()) > 0, f"claims per API process: {served('/claim ')}"
    wait_until("heartbeats through both API processes", lambda: min(served("/heartbeat ").values()) > 0, 60)
    # a re-run keeps both; --api-processes 1 stops the second and takes it out of nginx
    again = srv.run(f"bash {SRC}/install.sh server", timeout=300)
    assert [ln for ln in again.stdout.splitlines() if ln.startswith("+ ")] == []
    done = srv.run(f"bash {SRC}/install.sh server --api-processes 1", timeout=300)
    assert "+ systemctl disable --now --quiet scitq-server@5001.service" in done.stdout
    assert srv.run("systemctl is-active scitq-server@5001", check=False).stdout.strip() == "inactive"
    assert "127.0.0.1:5001" not in srv.read("/etc/nginx/sites-available/scitq")
    assert "the API answers through TLS" in done.stdout


def test_the_admin_s_own_certificate_replaces_the_self_signed_one_and_join_tokens_carry_it(install: Install) -> None:
    srv = install.srv
    srv.run("openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=scitq.lab.example "
            f"-addext subjectAltName=DNS:scitq.lab.example,IP:{srv.addr} -keyout /root/lab.key -out /root/lab.crt "
            "2>/dev/null")
    fingerprint = srv.run("openssl x509 -in /root/lab.crt -outform DER | sha256sum").stdout.split()[0]
    assert fingerprint != install.fingerprint
    done = srv.run(f"bash {SRC}/install.sh server --cert /root/lab.crt --key /root/lab.key", timeout=300)
    assert f"certificate sha256 {fingerprint}" in done.stdout and "the API answers through TLS" in done.stdout
    assert install.join_token().endswith("." + fingerprint)


def test_uninstall_keeps_the_data_and_purge_removes_it(install: Install) -> None:
    w2 = install.workers[1]
    done = w2.run(f"bash {SRC}/install.sh uninstall", timeout=300)
    assert "kept /etc/scitq.conf" in done.stdout
    assert w2.run("systemctl cat scitq-worker >/dev/null 2>&1; echo $?").stdout.strip() != "0"
    present = "for p in /usr/local/bin/scitq /usr/local/lib/scitq /etc/scitq.conf /var/lib/scitq/work/.scitq/state.json; " \
              "do test -e $p && echo yes || echo no; done"
    assert w2.run(present).stdout.split() == ["no", "no", "yes", "yes"]
    done = w2.run(f"bash {SRC}/install.sh uninstall --purge", timeout=300)
    assert w2.run(present).stdout.split() == ["no", "no", "no", "no"]
    assert w2.run("id scitq >/dev/null 2>&1; echo $?").stdout.strip() != "0"


def test_without_systemd_as_pid_1_it_installs_everything_and_starts_nothing(
        machines: Machines, tmp_path: Path) -> None:
    """A container: the image booted as a plain command (systemd-nspawn without --boot)."""
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "-xf", str(machines.image)], check=True, timeout=300)
    src = tmp_path / "src"
    (src / "systemd").mkdir(parents=True)
    shutil.copy(ROOT / "install.sh", src)
    for unit in (ROOT / "systemd").iterdir():
        shutil.copy(unit, src / "systemd")
    build_pyz(src / "scitq.pyz")
    script = ("rm -f /etc/apt/sources.list.d/* && echo 'deb [trusted=yes] file:/repo ./' > /etc/apt/sources.list && "
              "bash /src/install.sh worker --server https://10.0.0.1 --join-token t0ken && "
              "test -x /usr/local/bin/scitq && test -f /etc/systemd/system/scitq-worker.service && "
              "scitq --version")
    try:
        done = subprocess.run(["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "--pipe", "-D", str(root),
                               f"--bind-ro={machines.repo}:/repo", f"--bind-ro={src}:/src", "bash", "-c", script],
                              capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(root)  # 250 MB this test extracted
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "systemd is not running here (a container?): unit installed, nothing started" in done.stdout
    assert "start by hand as root in /var/lib/scitq: scitq worker run" in done.stdout
    assert "systemctl" not in "".join(ln for ln in done.stdout.splitlines() if ln.startswith("+ "))
