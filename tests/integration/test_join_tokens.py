"""Join tokens over HTTP and the CLI: minting them (POST /join-tokens, `scitq worker
join-token`), registering with them, /whoami, and the live-name rule."""
from __future__ import annotations

import pytest

from tests.support.tls import make_certificate, openssl_available
from tests.support.system import need

from .conftest import assert_error, cli, unique, wait_for


@pytest.fixture(scope="module")
def srv(module_servers):
    return module_servers.start("sqlite", tokens=(("admin", "admin"), ("bob", "user")))


def mint(srv, status: int = 201, **body):
    return srv.ok("POST", "/join-tokens", body, status=status)


def test_minting_a_join_token_gives_its_secret_and_the_token_record(srv):
    reply = mint(srv, uses=3, ttl=120, batch="jb", name=unique("pinned"))
    assert set(reply) == {"token", "join_token", "fingerprint", "server_url"}
    assert reply["join_token"].startswith("scitq_join_") and "." not in reply["join_token"]
    assert reply["fingerprint"] is None and reply["server_url"] is None  # no certificate, no public URL set
    token = reply["token"]
    assert (token["role"], token["uses_left"], token["pinned_batch"]) == ("join", 3, "jb")
    assert token["expires"].endswith("Z") and token["name"].startswith("join:")
    listed = {t["name"]: t for t in srv.ok("GET", "/tokens")["tokens"]}
    assert listed[token["name"]] == token
    defaults = mint(srv)["token"]
    assert defaults["uses_left"] == 1 and defaults["pinned_batch"] is None and defaults["pinned_name"] is None


@pytest.mark.parametrize("body, field", [({"uses": 0}, "uses"), ({"uses": 10_001}, "uses"), ({"uses": "2"}, "uses"),
                                         ({"ttl": 0}, "ttl"), ({"ttl": 30 * 86400 + 1}, "ttl"),
                                         ({"batch": "a b"}, "batch"), ({"name": ""}, "name"),
                                         ({"role": "admin"}, "role")])
def test_bad_join_token_requests_are_422_naming_the_field(srv, body, field):
    reply = assert_error(srv.call("POST", "/join-tokens", body), 422, "invalid")
    assert reply["data"]["field"] == field


def test_only_admins_mint_join_tokens(srv):
    join_token = mint(srv)["join_token"]
    _, worker_token = srv.register()
    for token in (srv.tokens["bob"], worker_token, join_token):
        assert_error(srv.call("POST", "/join-tokens", {}, token=token), 403, "forbidden")
    assert_error(srv.call("POST", "/join-tokens", {}, token=None), 401, "unauthorized")


def test_whoami_names_every_kind_of_token(srv):
    assert srv.ok("GET", "/whoami") == {"name": "admin", "role": "admin", "worker_id": None}
    assert srv.ok("GET", "/whoami", token=srv.tokens["bob"])["role"] == "user"
    name = unique("w")
    wid, worker_token = srv.register(name)
    me = srv.ok("GET", "/whoami", token=worker_token)
    assert (me["role"], me["worker_id"], me["worker_name"]) == ("worker", wid, name)
    reply = mint(srv)
    assert srv.ok("GET", "/whoami", token=reply["join_token"]) == {
        "name": reply["token"]["name"], "role": "join", "worker_id": None}
    assert_error(srv.call("GET", "/whoami", token=None), 401, "unauthorized")
    assert_error(srv.call("GET", "/whoami", token="scitq_nope"), 401, "unauthorized")


def test_a_join_token_registers_once_and_reaches_nothing_else(srv):
    secret = mint(srv)["join_token"]
    for method, path, body in (("GET", "/tasks", None), ("GET", "/tokens", None), ("POST", "/tasks", {"command": "x"}),
                               ("POST", "/join-tokens", {})):
        assert_error(srv.call(method, path, body, token=secret), 403, "forbidden")
    name = unique("w")
    reply = srv.ok("POST", "/workers/register", {"name": name}, token=secret)
    worker_token = reply["token"]
    assert worker_token != secret and reply["worker"]["name"] == name
    srv.ok("POST", f"/workers/{reply['worker']['id']}/heartbeat", {}, token=worker_token)
    body = assert_error(srv.call("POST", "/workers/register", {"name": unique("w")}, token=secret), 401,
                        "unauthorized")
    assert "used up or expired" in body["detail"]


def test_an_expired_join_token_is_401(srv):
    secret = mint(srv, ttl=1, uses=1000)["join_token"]
    # expiry is on the server's clock: wait for it, registering fresh names meanwhile
    wait_for(lambda: srv.call("POST", "/workers/register", {"name": unique("w")}, token=secret)[0] == 401, 10, 0.1,
             "the join token to expire")
    body = assert_error(srv.call("POST", "/workers/register", {"name": unique("w")}, token=secret), 401,
                        "unauthorized")
    assert "expired" in body["detail"]


def test_a_revoked_join_token_is_401(srv):
    reply = mint(srv, uses=5)
    srv.ok("DELETE", f"/tokens/{reply['token']['name']}")
    assert_error(srv.call("POST", "/workers/register", {"name": unique("w")}, token=reply["join_token"]), 401,
                 "unauthorized")


def test_pinned_name_and_batch_are_enforced(srv):
    name, batch = unique("node"), unique("jb")
    secret = mint(srv, uses=2, name=name, batch=batch)["join_token"]
    body = assert_error(srv.call("POST", "/workers/register", {"name": unique("other")}, token=secret), 403,
                        "forbidden")
    assert name in body["detail"]
    reply = srv.ok("POST", "/workers/register", {"name": name, "batch": "elsewhere"}, token=secret)
    assert reply["worker"]["batch"] == batch
    tokens = {t["name"]: t for t in srv.ok("GET", "/tokens")["tokens"]}
    assert [t["uses_left"] for t in tokens.values() if t.get("pinned_name") == name] == [1]


def test_a_live_worker_s_name_is_refused_with_a_409_that_says_what_to_do(srv):
    name = unique("live")
    wid, own = srv.register(name, hostname="host-a")
    for token in (mint(srv)["join_token"], "admin"):
        body = assert_error(srv.call("POST", "/workers/register", {"name": name}, token=token), 409, "conflict")
        assert name in body["detail"] and "host-a" in body["detail"] and "last seen" in body["detail"]
        assert "[worker] name" in body["detail"] and f"scitq worker delete {name}" in body["detail"]
    # its own token may re-register it; another worker's token may not take it
    _, other = srv.register()
    assert_error(srv.call("POST", "/workers/register", {"name": name}, token=other), 403, "forbidden")
    assert srv.ok("POST", "/workers/register", {"name": name}, token=own)["worker"]["id"] == wid
    # once deleted, the name is free
    srv.ok("DELETE", f"/workers/{wid}")
    assert srv.ok("POST", "/workers/register", {"name": name})["worker"]["id"] != wid


def test_a_worker_without_a_credential_cannot_register_even_on_loopback(servers):
    srv = servers.start("sqlite", tokens=())  # no open mode, not even with no token in the database
    assert_error(srv.call("POST", "/workers/register", {"name": unique("w")}, token=None), 401, "unauthorized")


def test_the_join_token_carries_the_certificate_fingerprint_and_the_public_url(servers, tmp_path):
    need(openssl_available(), "needs the openssl command")
    cert, _, fingerprint = make_certificate(str(tmp_path))
    srv = servers.start("sqlite", env={"SCITQ_SERVER_TLS_CERTIFICATE": cert,
                                       "SCITQ_SERVER_PUBLIC_URL": "https://scitq.example.org"})
    reply = mint(srv)
    secret, _, suffix = reply["join_token"].rpartition(".")
    assert suffix == fingerprint == reply["fingerprint"] and len(suffix) == 64
    assert reply["server_url"] == "https://scitq.example.org"
    # the suffix is the worker's business: the secret alone authenticates
    assert srv.ok("GET", "/whoami", token=secret)["role"] == "join"
    # the certificate is read at each request: renewed, it shows in the next token
    _, _, renewed = make_certificate(str(tmp_path))
    assert renewed != fingerprint
    assert mint(srv)["join_token"].rpartition(".")[2] == renewed


def test_an_unreadable_certificate_is_a_clear_409_not_a_500(servers, tmp_path):
    missing = str(tmp_path / "nowhere.crt")
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate\n")
    for path, words in ((missing, "cannot read"), (str(garbage), "holds no PEM certificate")):
        srv = servers.start("sqlite", env={"SCITQ_SERVER_TLS_CERTIFICATE": path})
        body = assert_error(srv.call("POST", "/join-tokens", {}), 409, "server_config")
        assert words in body["detail"] and path in body["detail"] and "tls_certificate" in body["detail"]
        assert [t["role"] for t in srv.ok("GET", "/tokens")["tokens"]] == ["admin"], "no join token was made"


# --- the CLI -----------------------------------------------------------------------------

def test_cli_join_token_prints_the_token_alone_on_stdout_and_the_install_command(srv):
    env = {"SCITQ_SERVER": srv.url, "SCITQ_TOKEN": srv.admin}
    batch = unique("jb")
    r = cli("worker", "join-token", "--uses", "2", "--ttl", "30m", "--batch", batch, env=env)
    assert r.code == 0, r
    secret = r.out.strip()
    assert r.out == secret + "\n" and secret.startswith("scitq_join_")
    assert f"install.sh worker --server {srv.url} --join-token {secret}" in r.err
    assert "registers 2 workers" in r.err and batch in r.err
    me = srv.ok("GET", "/whoami", token=secret)
    listed = {t["name"]: t for t in srv.ok("GET", "/tokens")["tokens"]}[me["name"]]
    assert (listed["uses_left"], listed["pinned_batch"]) == (2, batch)
    j = cli("worker", "join-token", "--ttl", "90", "--name", "node9", "--json", env=env)
    assert j.code == 0, j
    assert j.json()["token"]["pinned_name"] == "node9" and j.json()["join_token"].startswith("scitq_join_")


@pytest.mark.parametrize("args, words", [(["--ttl", "5x"], "--ttl must be a duration"),
                                         (["--ttl", "0"], "--ttl must be a duration"),
                                         (["--uses", "many"], "--uses must be an integer"),
                                         (["--uses", "0"], "--uses must be at least 1"),
                                         (["--ttl", "31d"], "ttl: must be at most")])
def test_cli_join_token_bad_arguments_are_one_line_exit_2(srv, args, words):
    r = cli("worker", "join-token", *args, env={"SCITQ_SERVER": srv.url, "SCITQ_TOKEN": srv.admin})
    assert r.code == 2, r
    assert len(r.err_lines) == 1 and words in r.err_lines[0] and r.out == "", r


def test_cli_join_token_needs_an_admin(srv):
    r = cli("worker", "join-token", env={"SCITQ_SERVER": srv.url, "SCITQ_TOKEN": srv.tokens["bob"]})
    assert r.code == 6 and len(r.err_lines) == 1, r


def test_token_list_shows_join_tokens_uses_left_and_expiry(servers):
    srv = servers.start("sqlite")
    env = {"SCITQ_SERVER_DATABASE": srv.database}
    secret = cli("worker", "join-token", "--uses", "4", env={"SCITQ_SERVER": srv.url, "SCITQ_TOKEN": srv.admin})
    assert secret.code == 0, secret
    r = cli("token", "list", env=env)
    assert r.code == 0, r
    header, *rows = r.out.splitlines()
    assert "USES LEFT" in header and "EXPIRES" in header
    [row] = [ln for ln in rows if ln.startswith("join:")]
    assert " join " in row and " 4 " in row
    name = row.split()[0]
    assert cli("token", "revoke", name, env=env).code == 0
    assert_error(srv.call("POST", "/workers/register", {"name": unique("w")}, token=secret.out.strip()), 401)
