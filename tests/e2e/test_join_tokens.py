"""Workers join with join tokens, never with people's rights; one agent per live
worker name; TLS pinning through a real TLS-terminating proxy. Real server and
worker processes throughout."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from typing import Any, Iterator

import pytest

from scitq_app.client import Server
from scitq_app.errors import ServerUnreachable, TlsUntrusted
from scitq_app.store import open_store
from tests.support.cluster import Cluster
from tests.support.processes import WorkerProcess, read_text, scitq_env, wait_for
from tests.support.tls import TlsProxy, make_certificate, openssl_available
from tests.support.system import need



def secure_cluster(database_url: str, workdir: str, env: dict[str, str] | None = None) -> tuple[Cluster, str]:
    """A cluster whose server has an admin token (so no open mode): (cluster, admin secret)."""
    store = open_store(database_url)
    try:
        store.init_schema()
        _, admin = store.create_token("ops", "admin")
    finally:
        store.close()
    c = Cluster(database_url, workdir, env=env).start()
    assert c.client is not None
    c.client.token = admin
    return c, admin


@pytest.fixture
def secure(database_url, tmp_path) -> Iterator[tuple[Cluster, str]]:
    c, admin = secure_cluster(database_url, str(tmp_path))
    try:
        yield c, admin
    except BaseException:
        print(c.diagnostics())
        raise
    finally:
        c.stop()


class TlsSetup:
    """A secure cluster behind a TLS-terminating proxy whose self-signed certificate is
    [server] tls_certificate; `other` is the fingerprint of a second, unrelated certificate."""

    def __init__(self, database_url: str, tmp_path: Any) -> None:
        cert, key, self.fingerprint = make_certificate(str(tmp_path), "real")
        _, _, self.other = make_certificate(str(tmp_path), "other")
        self.cluster, self.admin = secure_cluster(database_url, str(tmp_path),
                                                  env={"SCITQ_SERVER_TLS_CERTIFICATE": cert})
        self.proxy = TlsProxy(cert, key, ("127.0.0.1", self.cluster.server.port)).start()
        assert self.cluster.client is not None
        self.client: Server = self.cluster.client

    def worker(self, name: str, join_token: str) -> WorkerProcess:
        w = WorkerProcess(self.proxy.url, os.path.join(self.cluster.workdir, name), name, join_token=join_token)
        self.cluster.workers.append(w)
        return w.start()


@pytest.fixture
def tls(database_url, tmp_path) -> Iterator[TlsSetup]:
    need(openssl_available(), "needs the openssl command")
    setup = TlsSetup(database_url, tmp_path)
    try:
        yield setup
    except BaseException:
        print(setup.cluster.diagnostics())
        raise
    finally:
        setup.cluster.stop()
        setup.proxy.stop()


def error_lines(w: WorkerProcess) -> list[str]:
    """The lines the CLI printed for the error that stopped the worker."""
    return [ln for ln in w.log().splitlines() if ln.startswith("scitq: ")]


def exits_with(w: WorkerProcess, code: int, *words: str) -> str:
    assert w.wait(60) == code, w.log()
    log = w.log()
    assert "Traceback" not in log, log
    lines = error_lines(w)
    assert len(lines) == 1, log
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scitq_app", *args], env=scitq_env(**env), capture_output=True,
                          text=True, timeout=60)


def state_of(w: WorkerProcess) -> dict:
    return json.loads(read_text(os.path.join(w.workdir, ".scitq", "state.json")))


def run_one_task(c: Cluster, batch: str, command: str = "echo joined") -> dict:
    assert c.client is not None
    tid = c.client.submit(command, shell="sh", batch=batch)["ids"][0]
    task = c.wait_final([tid], timeout=60)[tid]
    assert task["status"] == "succeeded", task
    return task


def test_a_worker_joins_with_a_join_token_runs_a_task_and_the_used_token_stops_the_next(secure):
    c, admin = secure
    assert c.client is not None
    reply = c.client.create_join_token(uses=1, batch="joined")
    w = c.worker("newcomer", join_token=reply["join_token"])
    task = run_one_task(c, "joined")
    assert c.client.executions(task["id"])[0]["worker_name"] == "newcomer"
    state = state_of(w)
    assert state["name"] == "newcomer" and state["token"] != reply["join_token"]
    assert stat.S_IMODE(os.stat(os.path.join(w.workdir, ".scitq", "state.json")).st_mode) == 0o600
    with Server(c.server.url, state["token"]) as own:
        assert own.whoami()["role"] == "worker"
    [worker] = c.client.workers()
    assert worker["batch"] == "joined"
    assert [t["uses_left"] for t in c.client.tokens() if t["role"] == "join"] == [0]
    # the same token on a second host: refused at start, one line saying what to do
    late = c.worker("latecomer", join_token=reply["join_token"])
    exits_with(late, 2, "join token", "used up, expired or revoked", "scitq worker join-token")
    assert [x["name"] for x in c.client.workers()] == ["newcomer"]


def test_a_worker_given_only_an_admin_token_refuses_to_start(secure):
    c, admin = secure
    assert c.client is not None
    w = c.worker("overpowered", token=admin)
    exits_with(w, 2, "admin token", "join token", "scitq worker join-token", "[worker] join_token")
    assert c.client.workers() == []


def test_a_second_agent_under_the_name_of_a_live_worker_is_refused(secure, tmp_path):
    c, _ = secure
    assert c.client is not None
    join = c.client.create_join_token(uses=2)["join_token"]
    c.worker("twin", join_token=join)
    wait_for(lambda: [w["status"] for w in c.client.workers()] == ["running"], 30, what="the first twin")
    second = WorkerProcess(c.server.url, str(tmp_path / "twin-2"), "twin", join_token=join)
    c.workers.append(second)
    second.start()
    exits_with(second, 2, "'twin'", "is live", "last seen", "[worker] name", "scitq worker delete twin")
    assert [t["uses_left"] for t in c.client.tokens() if t["role"] == "join"] == [1], "the refusal spent nothing"
    run_one_task(c, "Default")


def test_a_registered_worker_restarted_with_a_leftover_admin_token_re_attaches_with_one_warning(secure):
    c, admin = secure
    assert c.client is not None
    join = c.client.create_join_token(uses=1)["join_token"]
    w = c.worker("veteran", join_token=join)
    run_one_task(c, "Default", "echo first")
    w.stop()
    # a config edited since: an admin token was added; the join token is used up
    again = WorkerProcess(c.server.url, w.workdir, "veteran", token=admin, join_token=join)
    c.workers.append(again)
    again.start()
    run_one_task(c, "Default", "echo second")
    log = again.log()
    assert "re-attached as worker" in log
    assert log.count("[worker] token is ignored") == 1, log
    assert [x["name"] for x in c.client.workers()] == ["veteran"]


def test_a_worker_pins_the_certificate_its_join_token_carries(tls):
    reply = tls.client.create_join_token(uses=1)
    assert reply["join_token"].endswith("." + tls.fingerprint)
    w = tls.worker("pinned", reply["join_token"])
    task = run_one_task(tls.cluster, "Default", "echo through-tls")
    assert tls.cluster.output(task["id"]) == "through-tls\n"
    assert state_of(w)["fingerprint"] == tls.fingerprint
    # the library and the CLI pin the same way
    with Server(tls.proxy.url, tls.admin, fingerprint=tls.fingerprint) as pinned:
        assert pinned.whoami()["role"] == "admin"
    with Server(tls.proxy.url, tls.admin) as unpinned, pytest.raises(TlsUntrusted) as e:
        unpinned.whoami()  # self-signed: normal verification refuses it, and no retry can help
    assert "is not trusted (self-signed certificate)" in str(e.value)
    assert not isinstance(e.value, ServerUnreachable)


def test_a_wrong_pin_is_refused_with_one_line_naming_both_fingerprints(tls):
    secret = tls.client.create_join_token(uses=1)["join_token"].rpartition(".")[0]
    w = tls.worker("fooled", f"{secret}.{tls.other}")
    line = exits_with(w, 6, tls.fingerprint, tls.other, "pinned")
    assert "retrying" not in w.log()
    assert tls.client.workers() == []
    assert [t["uses_left"] for t in tls.client.tokens() if t["role"] == "join"] == [1], "nothing was sent"
    assert line.startswith("scitq: the TLS certificate")
    r = cli("task", "list", SCITQ_SERVER=tls.proxy.url, SCITQ_TOKEN=tls.admin, SCITQ_CLIENT_FINGERPRINT=tls.other)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 6 and len(lines) == 1 and tls.fingerprint in lines[0] and tls.other in lines[0], r
    # openssl's colon-separated upper-case form is accepted too
    colons = ":".join(tls.fingerprint[i:i + 2] for i in range(0, 64, 2)).upper()
    ok = cli("task", "list", SCITQ_SERVER=tls.proxy.url, SCITQ_TOKEN=tls.admin, SCITQ_CLIENT_FINGERPRINT=colons)
    assert ok.returncode == 0, ok


def test_an_unpinned_self_signed_certificate_stops_the_worker_and_the_cli_with_one_line(tls):
    secret = tls.client.create_join_token(uses=1)["join_token"].rpartition(".")[0]
    w = tls.worker("unpinned", secret)
    line = exits_with(w, 6, "not trusted", "[worker] fingerprint")
    assert "retrying" not in w.log(), "an untrusted certificate is no outage to wait out"
    assert line.startswith("scitq: the TLS certificate of " + tls.proxy.url)
    r = cli("task", "list", SCITQ_SERVER=tls.proxy.url, SCITQ_TOKEN=tls.admin)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 6 and len(lines) == 1 and "not trusted" in lines[0], r
    assert [t["uses_left"] for t in tls.client.tokens() if t["role"] == "join"] == [1], "nothing was sent"


def test_a_worker_stopped_before_it_could_register_exits_at_once(database_url, tmp_path):
    w = WorkerProcess("http://127.0.0.1:9", str(tmp_path / "early"), "early")  # nothing listens on port 9
    w.start()
    try:
        wait_for(lambda: "retrying" in w.log(), 20, what="the worker to wait for its server")
        w.signal(signal.SIGTERM)
        assert w.wait(10) == 0, w.log()
    finally:
        w.stop()


def test_a_worker_deleted_on_the_server_rejoins_while_its_join_token_has_uses_then_stops(secure):
    c, _ = secure
    assert c.client is not None
    join = c.client.create_join_token(uses=2)["join_token"]
    w = c.worker("phoenix", join_token=join)
    first = wait_for(lambda: c.client.workers(), 30, what="the worker to register")[0]
    c.client.delete_worker(first["id"])
    second = wait_for(lambda: [x for x in c.client.workers() if x["id"] != first["id"]], 30,
                      what="the worker to register again")[0]
    assert second["name"] == "phoenix"
    run_one_task(c, "Default", "echo reborn")
    c.client.delete_worker(second["id"])  # no use left: it stops, saying why
    exits_with(w, 2, "join token", "used up, expired or revoked")
