"""The CLI as people run it: `python -m scitq_app ...` subprocesses talking to a
real server over HTTP (or to the database directly, for db/token/config)."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import threading

import pytest

from scitq_app import __version__
from scitq_app.cli import commands, run
from tests.integration.conftest import cli, unique
from tests.support.postgres import free_port

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="module", params=BACKENDS)
def srv(request, module_servers):
    return module_servers.start(request.param)


def env_for(srv) -> dict[str, str]:
    return {"SCITQ_SERVER": srv.url, "SCITQ_TOKEN": srv.admin}


# --- help and version ---------------------------------------------------------------

def _help_argvs() -> list[list[str]]:
    """`CMD --help` for every command, and `CMD VERB --help` for every verb of its usage."""
    argvs = []
    for name, (doc, _) in sorted(commands().items()):
        argvs.append([name, "--help"])
        for verb in sorted(set(re.findall(rf"^\s*scitq {name} \[?(\w+)", doc, re.M))):
            if verb != "options":
                argvs.append([name, verb, "--help"])
    return argvs


HELP_ARGVS = _help_argvs()


@pytest.mark.parametrize("argv", HELP_ARGVS, ids=[" ".join(a) for a in HELP_ARGVS])
def test_every_command_has_working_help(argv):
    # in-process (cli.run is what `python -m scitq_app` calls): the subprocess cost adds nothing here
    out, err = io.StringIO(), io.StringIO()
    code = run(argv, out, err, env={"SCITQ_CONFIG": os.devnull})
    assert code == 0, err.getvalue()
    assert "Usage:" in out.getvalue() and f"scitq {argv[0]}" in out.getvalue(), out.getvalue()
    assert err.getvalue() == ""


def test_help_works_in_a_real_process_without_any_server_or_database():
    for argv in (["task", "--help"], ["server", "-h"], ["token", "create", "--help"]):
        r = cli(*argv, env={"SCITQ_SERVER": "http://127.0.0.1:1", "SCITQ_SERVER_DATABASE": "postgresql://x@h:1/db"})
        assert r.code == 0 and "Usage:" in r.out and r.err == "", r


def test_top_level_help_and_version():
    r = cli("--help")
    assert r.code == 0 and "Usage:" in r.out and r.err == "", r
    for name in commands():
        assert name in r.out, f"`scitq --help` does not mention {name}"
    r = cli("--version")
    assert r.code == 0 and r.out.strip() == f"scitq {__version__}", r
    r = cli()  # no command: a usage error, then the command list
    assert r.code == 2 and r.err_lines[0] == "scitq: a command is required" and r.out == "", r
    for name in commands():
        assert any(line.strip().startswith(name + " ") for line in r.err_lines), (name, r)


def test_unknown_command_and_bad_arguments_exit_2_with_one_line_and_the_usage():
    # (tests/integration/test_usage.py walks every command in-process; this is the real process)
    for argv, first in ((["frobnicate"], "scitq: unknown command 'frobnicate'; `scitq --help` lists the commands"),
                        (["task", "frobnicate"], "scitq task: unknown subcommand 'frobnicate'"),
                        (["task", "list", "--limit", "x"], "scitq: --limit must be an integer, not 'x'"),
                        (["task", "show"], "scitq task show: missing arguments")):
        r = cli(*argv)
        assert r.code == 2, r
        assert r.err_lines[0] == first, r
        assert r.err_lines[1:2] == (["Usage:"] if len(argv) > 1 and "--limit" not in argv else []), r
        assert "Traceback" not in r.err


# --- failures before and without a server ---------------------------------------------

def test_task_list_against_a_down_server_prints_one_line_and_exits_3():
    port = free_port()  # nothing listens there
    r = cli("task", "list", env={"SCITQ_SERVER": f"http://127.0.0.1:{port}"})
    assert r.code == 3, r
    assert len(r.err_lines) == 1, r
    assert f"127.0.0.1:{port}" in r.err and "Traceback" not in r.err
    assert r.out == ""


class CountingListener:
    """A TCP port that counts the connections made to it (and closes them)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self.thread.join(5)


def test_launch_with_a_bad_uri_exits_2_before_any_network_call():
    listener = CountingListener()
    try:
        env = {"SCITQ_SERVER": f"http://127.0.0.1:{listener.port}"}
        for bad in (["-i", "s3://b/../x"], ["-o", "http://u:p@h/x/"], ["-r", "s3://b/r.tgz|explode"]):
            r = cli("launch", *bad, "--", "echo", "hi", env=env)
            assert r.code == 2, r
            assert len(r.err_lines) == 1 and "Traceback" not in r.err, r
        assert listener.connections == 0
        # the listener does see a launch that gets as far as the network
        r = cli("launch", "--", "echo", "hi", env=env)
        assert r.code == 3, r
        assert listener.connections >= 1
    finally:
        listener.close()


# --- launch ---------------------------------------------------------------------------

def test_launch_dry_run_validates_and_prints_without_submitting(srv):
    batch = unique("dry")
    r = cli("launch", "--dry-run", "-b", batch, "-i", "s3://bucket/a.fq", "--cpu", "2", "--", "wc", "-l",
            "/input/a.fq", env=env_for(srv))
    assert r.code == 0, r
    assert "command: wc -l /input/a.fq" in r.out and f"batch: {batch}" in r.out
    assert "dry run" in r.err
    r = cli("launch", "--dry-run", "--json", "-b", batch, "echo $HOME", env=env_for(srv))
    assert r.code == 0, r
    assert r.json()["command"] == "echo $HOME" and r.json()["shell"] == "sh"
    assert srv.call("GET", f"/batches/{batch}")[0] == 404  # nothing reached the server


def test_launch_quotes_an_argv_and_picks_sh_for_shell_syntax(srv):
    batch = unique("lau")
    r = cli("launch", "--json", "-b", batch, "--", "echo", "a b", env=env_for(srv))
    assert r.code == 0, r
    t = srv.ok("GET", f"/tasks/{r.json()['id']}")
    assert (t["command"], t["shell"], t["batch"]) == ("echo 'a b'", "none", batch)
    r = cli("launch", "-b", batch, "a | b", env=env_for(srv))
    assert r.code == 0, r
    task_id = int(r.out.strip())  # without --json: the id alone on stdout
    t = srv.ok("GET", f"/tasks/{task_id}")
    assert (t["command"], t["shell"]) == ("a | b", "sh")
    r = cli("launch", "-b", batch, "--paused", "--retry", "2", "--name", "one", "true", env=env_for(srv))
    assert r.code == 0, r
    t = srv.ok("GET", f"/tasks/{int(r.out)}")
    assert (t["command"], t["shell"], t["status"], t["max_retries"], t["name"]) == ("true", "none", "paused", 2,
                                                                                   "one")


# --- lists, show, output ----------------------------------------------------------------

def test_list_commands_print_json_that_parses(srv):
    batch = unique("js")
    ids = srv.ok("POST", "/tasks/bulk", {"tasks": [{"command": f"echo {i}", "batch": batch} for i in range(3)]})["ids"]
    wid, _ = srv.register(batch=batch)
    r = cli("task", "list", "--batch", batch, "--json", env=env_for(srv))
    assert r.code == 0, r
    assert [t["id"] for t in r.json()] == ids
    r = cli("task", "list", "--batch", batch, "--limit", "2", "--json", env=env_for(srv))
    assert [t["id"] for t in r.json()] == ids[:2]
    r = cli("batch", "list", "--json", env=env_for(srv))
    assert r.code == 0, r
    assert {b["name"]: b["counts"] for b in r.json()}[batch] == {"pending": 3}
    r = cli("worker", "list", "--batch", batch, "--json", env=env_for(srv))
    assert r.code == 0, r
    assert [w["id"] for w in r.json()] == [wid]
    r = cli("task", "counts", "--batch", batch, "--json", env=env_for(srv))
    assert r.code == 0 and r.json() == {"pending": 3}, r
    r = cli("task", "show", str(ids[1]), "--json", env=env_for(srv))
    assert r.code == 0 and r.json()["command"] == "echo 1", r
    # and the human tables name the same things
    r = cli("task", "list", "--batch", batch, env=env_for(srv))
    assert r.code == 0 and r.out.splitlines()[0].split()[:2] == ["ID", "BATCH"], r
    assert len(r.out.splitlines()) == 4


def test_task_show_of_an_unknown_task_exits_4(srv):
    r = cli("task", "show", "987654321", env=env_for(srv))
    assert r.code == 4, r
    assert r.err_lines == ["scitq: no task 987654321"], r


def test_task_output_prints_the_output_of_a_task(srv):
    batch = unique("tout")
    t = srv.ok("POST", "/tasks", {"command": "run", "batch": batch})
    wid, token = srv.register(batch=batch)
    eid = srv.ok("POST", f"/workers/{wid}/claim", {"slots": 1}, token=token)["executions"][0]["id"]
    srv.ok("POST", f"/executions/{eid}/report", {"phase": "running"}, token=token)
    out, err = "hello\nwörld\n", "oops\n"
    for stream, text in (("stdout", out), ("stderr", err)):
        srv.ok("POST", f"/executions/{eid}/output", {"stream": stream, "offset": 0, "final": True,
                                                     "data": base64.b64encode(text.encode()).decode()}, token=token)
    srv.ok("POST", f"/executions/{eid}/report", {"phase": "succeeded", "return_code": 0}, token=token)
    r = cli("task", "output", str(t["id"]), env=env_for(srv))
    assert r.code == 0, r
    assert r.out == out
    r = cli("task", "output", str(t["id"]), "--stderr", env=env_for(srv))
    assert r.code == 0 and r.out == err, r
    r = cli("execution", "output", str(eid), env=env_for(srv))
    assert r.code == 0 and r.out == out, r
    r = cli("execution", "list", str(t["id"]), "--json", env=env_for(srv))
    assert r.code == 0 and [e["id"] for e in r.json()] == [eid], r


def test_task_steering_verbs(srv):
    batch = unique("steer")
    t = srv.ok("POST", "/tasks", {"command": "echo one", "batch": batch, "shell": "sh"})
    tid = str(t["id"])
    r = cli("task", "update", tid, "--command", "echo two", env=env_for(srv))
    assert r.code == 0, r
    after = srv.ok("GET", f"/tasks/{tid}")
    assert (after["command"], after["shell"], after["batch"]) == ("echo two", "sh", batch)
    assert cli("task", "pause", tid, env=env_for(srv)).code == 0
    assert srv.ok("GET", f"/tasks/{tid}")["status"] == "paused"
    assert cli("task", "resume", tid, env=env_for(srv)).code == 0
    r = cli("task", "relaunch", tid, env=env_for(srv))
    assert r.code == 5 and len(r.err_lines) == 1, r  # pending: nothing to relaunch
    assert cli("task", "stop", tid, env=env_for(srv)).code == 0
    assert srv.ok("GET", f"/tasks/{tid}")["status"] == "canceled"
    assert cli("task", "relaunch", tid, env=env_for(srv)).code == 0
    assert cli("task", "delete", tid, env=env_for(srv)).code == 0
    assert srv.call("GET", f"/tasks/{tid}")[0] == 404
    assert cli("batch", "pause", batch, env=env_for(srv)).code == 0
    assert srv.ok("GET", f"/batches/{batch}")["status"] == "paused"
    assert cli("batch", "go", batch, env=env_for(srv)).code == 0
    assert cli("batch", "delete", batch, env=env_for(srv)).code == 0
    assert srv.call("GET", f"/batches/{batch}")[0] == 404


def test_a_token_is_needed_once_tokens_exist(srv):
    r = cli("task", "list", env={"SCITQ_SERVER": srv.url})
    assert r.code == 6 and len(r.err_lines) == 1, r
    r = cli("task", "list", env={"SCITQ_SERVER": srv.url, "SCITQ_TOKEN": "scitq_wrong"})
    assert r.code == 6 and len(r.err_lines) == 1, r


# --- on the server host: db, token, config ------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_db_status_init_and_upgrade(backend, databases, tmp_path):
    token_file = tmp_path / "first" / "admin.token"
    env = {"SCITQ_SERVER_DATABASE": databases.new(backend), "SCITQ_SERVER_TOKEN_FILE": str(token_file)}
    r = cli("db", "status", env=env)
    assert r.code == 0 and "empty" in r.out, r
    status = cli("db", "status", "--json", env=env).json()
    assert status["current"] == 0 and status["latest"] >= 1 and len(status["pending"]) == status["latest"]
    r = cli("db", "init", env=env)
    assert r.code == 0 and f"version {status['latest']}" in r.out and str(token_file) in r.out, r
    secret = token_file.read_text().strip()
    assert (token_file.stat().st_mode & 0o777) == 0o600 and secret not in r.out + r.err
    after = cli("db", "status", "--json", env=env).json()
    assert (after["current"], after["pending"]) == (status["latest"], [])
    r = cli("db", "upgrade", env=env)
    assert r.code == 0 and "up to date" in r.out, r
    r = cli("db", "init", env=env)  # not twice
    assert r.code != 0 and r.err_lines[-1].startswith("scitq: ") and "Traceback" not in r.err, r
    assert token_file.read_text().strip() == secret, "a refused init leaves the token file alone"
    # an empty database is built migration by migration by `upgrade`, with its first admin token too
    env2 = {"SCITQ_SERVER_DATABASE": databases.new(backend), "SCITQ_SERVER_TOKEN_FILE": str(tmp_path / "t2")}
    r = cli("db", "upgrade", env=env2)
    assert r.code == 0, r
    assert [t["name"] for t in cli("token", "list", "--json", env=env2).json()] == ["admin"]
    assert (tmp_path / "t2").stat().st_mode & 0o777 == 0o600
    assert [ln.split()[-1] for ln in r.out.splitlines() if ln.startswith("applied")] == status["pending"]
    assert cli("db", "status", "--json", env=env2).json()["pending"] == []
    # --database works like the variable
    r = cli("db", "status", "--database", env2["SCITQ_SERVER_DATABASE"])
    assert r.code == 0 and "up to date" in r.out, r


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_create_list_revoke(backend, databases, tmp_path):
    env = {"SCITQ_SERVER_DATABASE": databases.new(backend), "SCITQ_SERVER_TOKEN_FILE": str(tmp_path / "t")}
    r = cli("token", "create", "--role", "admin", "early", env=env)
    assert r.code == 2 and "db init" in r.err, r  # no schema yet
    assert cli("db", "init", env=env).code == 0
    r = cli("token", "create", "--role", "admin", "alice", env=env)
    assert r.code == 0, r
    secret = r.out.strip()
    assert re.fullmatch(r"scitq_\S{20,}", secret) and "alice" in r.err
    r = cli("token", "create", "--role", "user", "bob", "--json", env=env)
    assert r.code == 0 and r.json()["token"]["role"] == "user" and r.json()["secret"].startswith("scitq_"), r
    assert cli("token", "create", "--role", "admin", "alice", env=env).code == 5  # name taken
    assert cli("token", "create", "--role", "worker", "w", env=env).code == 2
    assert cli("token", "create", "--role", "admin", "bad name", env=env).code == 2
    listed = cli("token", "list", "--json", env=env).json()
    assert [(t["name"], t["role"], t["revoked"]) for t in listed] == [
        ("admin", "admin", None), ("alice", "admin", None), ("bob", "user", None)]
    text = cli("token", "list", "--json", env=env).out + cli("token", "list", env=env).out
    assert secret not in text and "hash" not in text
    r = cli("token", "revoke", "bob", env=env)
    assert r.code == 0 and "bob" in r.out, r
    assert {t["name"]: t["revoked"] is not None for t in cli("token", "list", "--json", env=env).json()} == \
        {"admin": False, "alice": False, "bob": True}
    r = cli("token", "revoke", "nobody", env=env)
    assert r.code == 4 and len(r.err_lines) == 1, r


SECRET_URLS = [
    "postgresql://scitq:s3cr3t-pw@db.example:5432/scitq",
    "postgresql://:s3cr3t-pw@db.example/scitq",
    "postgresql://scitq:s3cr3t@pw@db.example/scitq",
    "postgresql://scitq:s3cr3t%40pw@db.example/scitq",
]


@pytest.mark.parametrize("url", SECRET_URLS)
def test_config_show_masks_secrets(url, tmp_path):
    password = url.split(":")[2].rsplit("@", 1)[0]
    conf = tmp_path / "scitq.conf"
    conf.write_text(f"[server]\ndatabase = {url}\n[worker]\ntoken = scitq_workersecret123\n")
    env = {"SCITQ_TOKEN": "scitq_clientsecret456"}
    for args in (["config", "show"], ["config", "show", "--json"]):
        r = cli("-c", str(conf), *args, env=env)
        assert r.code == 0, r
        for secret in (password, "s3cr3t", "pw@", "workersecret123", "clientsecret456"):
            assert secret not in r.out + r.err, (secret, r)
    rows = {row["option"]: row for row in json.loads(cli("-c", str(conf), "config", "show", "--json",
                                                         env=env).out)["options"]}
    assert "db.example" in rows["server.database"]["value"]  # masked, not hidden
    assert rows["server.database"]["from"] == str(conf) and rows["client.token"]["from"] == "SCITQ_TOKEN"
    # the same URL given in the environment is masked too
    r = cli("config", "show", env={"SCITQ_SERVER_DATABASE": url})
    assert r.code == 0 and password not in r.out and "s3cr3t" not in r.out, r


def test_config_errors_name_the_key_and_file_and_exit_2(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("[server]\nport = 5000\nbogus_key = 1\n")
    for argv in (["-c", str(conf), "task", "list"], ["config", "show", "-c", str(conf)],
                 ["-c", str(conf), "db", "status"]):
        r = cli(*argv)
        assert r.code == 2, r
        assert len(r.err_lines) == 1, r
        assert "bogus_key" in r.err and str(conf) in r.err and "Traceback" not in r.err
    conf.write_text("[server]\nport = many\n")
    r = cli("-c", str(conf), "config", "show")
    assert r.code == 2 and len(r.err_lines) == 1 and "server.port" in r.err and str(conf) in r.err, r
    conf.write_text("[nosuchsection]\nx = 1\n")
    r = cli("-c", str(conf), "config", "show")
    assert r.code == 2 and len(r.err_lines) == 1 and "nosuchsection" in r.err, r
    r = cli("-c", str(tmp_path / "missing.conf"), "config", "show")
    assert r.code == 2 and len(r.err_lines) == 1 and "missing.conf" in r.err, r
    r = cli("config", "show", env={"SCITQ_SERVER_PORT": "x"})
    assert r.code == 2 and "SCITQ_SERVER_PORT" in r.err, r
