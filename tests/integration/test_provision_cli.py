"""`scitq provision`, `job` and `host-key` refuse bad input with one line and the right exit code,
before any host is touched; a host that cannot be reached fails its own job, with a log, and the
command says which host and where the log is. (Provisioning real hosts: e2e/test_provision_machines.py.)"""
from __future__ import annotations

import socket
import zipfile

import pytest

from scitq_app.cloud.provision import Target
from scitq_app.errors import ProvisionError
from tests.integration.conftest import cli


def _env(srv) -> dict[str, str]:
    return {"SCITQ_SERVER": srv.url, "SCITQ_TOKEN": srv.admin}


@pytest.fixture
def pyz(tmp_path):
    """A stand-in pyz holding what provision reads from it."""
    path = tmp_path / "scitq.pyz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("__main__.py", "")
        z.writestr("scitq_app/install/install.sh", "#!/bin/sh\n")
        z.writestr("scitq_app/install/scitq-worker.service", "[Unit]\n")
    return str(path)


def test_targets_are_user_host_port(tmp_path):
    assert Target.parse("node1") == Target("node1", 22, "root")
    assert Target.parse("admin@10.0.0.5:2222", user="root", port=22) == Target("10.0.0.5", 2222, "admin")
    assert Target.parse("[fe80::1]:22").host == "fe80::1"
    assert str(Target.parse("h", port=2200)) == "h:2200"
    for bad in ("", "a b", "h:port", "@h", "h;rm -rf /"):
        with pytest.raises(ProvisionError, match="not a host"):
            Target.parse(bad)


def test_refusals_come_before_any_host_is_touched(servers, pyz):
    srv = servers.start("sqlite")
    env = _env(srv)
    url = ("--worker-url", "http://10.1.1.1:5000")
    cases = [
        (("--pyz", pyz, *url, "h1", "h1"), 2, "given twice"),
        (("--pyz", pyz, *url, "--name", "w", "h1", "h2"), 2, "--name names one worker"),
        (("--pyz", pyz, "h1"), 2, "workers cannot reach this server at http://127.0.0.1"),  # the CLI's own URL
        (("--pyz", pyz + ".missing", *url, "h1"), 1, "is not a scitq.pyz"),
        (("--pyz", pyz, *url, "--concurrency", "0", "h1"), 2, "--concurrency"),
        (("--pyz", pyz, *url, "not a host"), 1, "not a host"),
    ]
    for args, code, said in cases:
        r = cli("provision", *args, env=env)
        assert (r.code, len(r.err_lines) <= 2) == (code, True), (args, r)
        assert said in r.err and "Traceback" not in r.err, (args, r)
    assert srv.ok("GET", "/jobs")["jobs"] == [], "no job was started"


def test_an_unreachable_host_fails_its_job_with_a_log_and_the_command_says_where(servers, pyz):
    srv = servers.start("sqlite")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = cli("provision", "--pyz", pyz, "--rclone", "/bin/true", "--worker-url", "http://10.1.1.1:5000",
            f"127.0.0.1:{port}", env=_env(srv), timeout=120)
    assert r.code == 1, r.err
    [job] = srv.ok("GET", "/jobs")["jobs"]
    assert (job["status"], job["target"]) == ("failed", f"127.0.0.1:{port}")
    assert f"cannot connect to 127.0.0.1:{port}" in job["message"]
    assert f"127.0.0.1:{port}: failed" in r.err and f"scitq job log {job['id']}" in r.err
    assert "1 of 1 host(s) not provisioned" in r.err
    log = cli("job", "log", str(job["id"]), env=_env(srv))
    assert log.code == 0 and "== connect" in log.out and "failed: cannot connect" in log.out
    shown = cli("job", "show", str(job["id"]), env=_env(srv))
    assert shown.code == 0 and "failed" in shown.out and "cannot connect" in shown.out
    assert cli("job", "delete", str(job["id"]), env=_env(srv)).code == 0
    missing = cli("job", "show", str(job["id"]), env=_env(srv))
    assert missing.code == 4 and f"no job {job['id']}" in missing.err
    assert cli("job", "log", "x", env=_env(srv)).code == 2
    assert cli("host-key", "forget", "nowhere:22", env=_env(srv)).code == 4


def test_retry_of_a_failed_provision_runs_it_again_from_here_with_the_same_parameters(servers, pyz):
    srv = servers.start("sqlite")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = cli("provision", "--pyz", pyz, "--rclone", "/bin/true", "--worker-url", "http://10.1.1.1:5000", "--user",
            "admin", "--concurrency", "3", "--batch", "b7", "--name", "w7", f"127.0.0.1:{port}", env=_env(srv),
            timeout=120)
    assert r.code == 1
    [first] = srv.ok("GET", "/jobs")["jobs"]
    assert first["params"] == {"host": "127.0.0.1", "port": port, "user": "admin", "name": "w7", "concurrency": 3,
                               "batch": "b7"}
    from_source = cli("job", "retry", str(first["id"]), "--worker-url", "http://10.1.1.1:5000", env=_env(srv))
    assert (from_source.code, from_source.err.strip()) == (1, "scitq: this scitq runs from source: give the pyz to "
                                                               "install with --pyz PATH (build it with python3 "
                                                               "build_zipapp.py)"), from_source
    r = cli("job", "retry", str(first["id"]), "--pyz", pyz, "--rclone", "/bin/true", "--worker-url",
            "http://10.1.1.1:5000", env=_env(srv), timeout=120)
    assert r.code == 1 and f"127.0.0.1:{port}: failed" in r.err, r
    jobs = srv.ok("GET", "/jobs")["jobs"]
    assert [(j["kind"], j["status"], j["target"]) for j in jobs] == [("provision", "failed", f"127.0.0.1:{port}")] * 2
    assert jobs[1]["params"] == first["params"], "the same host, user, name, concurrency and batch"
    api = srv.call("POST", f"/jobs/{first['id']}/retry", {})
    assert api[0] == 409 and f"`scitq job retry {first['id']}` runs it again" in api[1]["detail"]
