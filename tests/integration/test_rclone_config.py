"""The server's rclone config: handed to each worker (its own token only) and to admins,
never shown anywhere else; its remotes are the URI schemes tasks may use; a server
without one accepts the built-in schemes only; `config rclone --install/--show`."""
from __future__ import annotations

import hashlib
import os
import stat

import pytest

from tests.integration.conftest import assert_error, cli, unique

SECRET = "AKIA-secret-value-0123456789"
CONFIG = f"[lab]\ntype = s3\nprovider = Other\naccess_key_id = key\nsecret_access_key = {SECRET}\n\n[nas]\ntype = sftp\n"


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "rclone.conf"
    path.write_text(CONFIG)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_each_worker_gets_the_config_with_its_own_token_only_and_its_hash_with_each_heartbeat(backend, servers,
                                                                                              conf):
    srv = servers.start(backend, tokens=(("admin", "admin"), ("alice", "user")),
                        env={"SCITQ_SERVER_RCLONE_CONFIG": str(conf)})
    w1, t1 = srv.register()
    w2, t2 = srv.register()
    digest = hashlib.sha256(CONFIG.encode()).hexdigest()
    assert srv.ok("GET", f"/workers/{w1}/rclone-config", token=t1) == {"config": CONFIG, "hash": digest}
    assert_error(srv.call("GET", f"/workers/{w2}/rclone-config", token=t1), 403, "forbidden")
    assert_error(srv.call("GET", f"/workers/{w1}/rclone-config", token=srv.tokens["alice"]), 403, "forbidden")
    assert_error(srv.call("GET", f"/workers/{w1}/rclone-config", token=None), 401, "unauthorized")
    assert_error(srv.call("GET", "/rclone-config", token=t1), 403, "forbidden")
    assert_error(srv.call("GET", "/rclone-config", token=srv.tokens["alice"]), 403, "forbidden")
    beat = srv.ok("POST", f"/workers/{w1}/heartbeat", {"stats": {}}, token=t1)
    assert beat["rclone_config"] == digest
    # a change of the file is seen at once (a new hash for the workers)
    conf.write_text(CONFIG + "\n[more]\ntype = local\n")
    beat = srv.ok("POST", f"/workers/{w1}/heartbeat", {"stats": {}}, token=t1)
    assert beat["rclone_config"] != digest
    admin = srv.ok("GET", "/rclone-config")
    assert admin["remotes"] == ["lab", "more", "nas"] and SECRET in admin["config"]
    # nowhere else
    for path in ("/workers", f"/workers/{w1}", "/events", "/openapi.json", "/tasks"):
        assert SECRET not in str(srv.ok("GET", path)), path
    assert SECRET not in srv.log()


def test_uris_are_checked_against_the_remotes_of_the_config(servers, conf):
    srv = servers.start("sqlite", env={"SCITQ_SERVER_RCLONE_CONFIG": str(conf)})
    batch = unique("uri")
    ok = srv.ok("POST", "/tasks", {"command": "true", "batch": batch, "inputs": ["lab://bucket/r1.fq.gz"],
                                   "resources": ["nas://refs/hg38.tar.gz|untar"], "output": "lab://bucket/out/"})
    assert ok["output"] == "lab://bucket/out/"
    body = assert_error(srv.call("POST", "/tasks", {"command": "true", "inputs": ["s3://bucket/r1.fq.gz"]}),
                        422, "invalid")
    assert body["data"]["field"] == "inputs[0]" and "unknown storage remote 's3'" in body["detail"]
    body = assert_error(srv.call("POST", "/tasks/bulk", {"tasks": [{"command": "true", "output": "LAB://b/o/"}]}),
                        422, "invalid")
    assert body["data"]["field"] == "tasks[0].output", "remote names are case-sensitive, as in rclone"
    body = assert_error(srv.call("PATCH", f"/tasks/{ok['id']}", {"resources": ["gcs://x/y"]}), 422, "invalid")
    assert body["data"]["field"] == "resources[0]"


def test_a_server_without_rclone_config_accepts_only_the_built_in_schemes(servers, tmp_path):
    srv = servers.start("sqlite", env={"SCITQ_SERVER_RCLONE_CONFIG": str(tmp_path / "absent.conf"),
                                       "SCITQ_SERVER_FILE_ROOTS": "/data"})
    for uri in ("https://example.org/r1.fq.gz", "http://example.org/dir/", "ftp://ftp.example.org/pub/x",
                "file:///data/r1.fq.gz"):
        srv.ok("POST", "/tasks", {"command": "true", "inputs": [uri]})
    body = assert_error(srv.call("POST", "/tasks", {"command": "true", "inputs": ["file:///etc/scitq.conf"]}), 422)
    assert "[server] file_roots: /data" in body["detail"]
    body = assert_error(srv.call("POST", "/tasks", {"command": "true", "output": "s3://bucket/out/"}), 422)
    assert "not in the server's rclone config" in body["detail"]
    w, t = srv.register()
    assert srv.ok("GET", f"/workers/{w}/rclone-config", token=t) == \
        {"config": "", "hash": hashlib.sha256(b"").hexdigest()}


def test_config_rclone_install_writes_the_servers_config_mode_600_and_show_prints_it(servers, conf, tmp_path):
    srv = servers.start("sqlite", tokens=(("admin", "admin"), ("alice", "user")),
                        env={"SCITQ_SERVER_RCLONE_CONFIG": str(conf)})
    env = {"SCITQ_SERVER": srv.url, "SCITQ_TOKEN": srv.admin}
    target = tmp_path / "etc" / "rclone.conf"
    r = cli("config", "rclone", "--install", "--path", str(target), env=env)
    assert r.code == 0, r
    assert target.read_text() == CONFIG and stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert "2 remote(s): lab, nas" in r.err and SECRET not in r.err + r.out
    r = cli("config", "rclone", "--show", env=env)
    assert r.code == 0 and r.out == CONFIG, r
    r = cli("config", "rclone", "--show", env={**env, "SCITQ_TOKEN": srv.tokens["alice"]})
    assert r.code == 6 and len(r.err_lines) == 1, r
    r = cli("config", "show", "--json", env={**env, "SCITQ_SERVER_RCLONE_CONFIG": str(conf)})
    assert r.code == 0 and {"option": "server.rclone_config", "value": str(conf),
                            "from": "SCITQ_SERVER_RCLONE_CONFIG"} in r.json()["options"], r
    assert SECRET not in r.out
