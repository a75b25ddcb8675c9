"""The scitq.pyz a server hands its workers for `scitq worker upgrade`: worker and admin tokens
only, its sha256 and version with it; a server with none says so (409), and so does the CLI
before telling any worker anything; only an admin may send the upgrade."""
from __future__ import annotations

import base64
import hashlib

from tests.integration.conftest import assert_error, cli, unique
from tests.unit.test_release import pyz


def test_workers_fetch_the_server_s_pyz_with_its_hash_and_others_are_refused(servers, tmp_path):
    data = pyz("9.9.9")
    (tmp_path / "offered.pyz").write_bytes(data)
    srv = servers.start("sqlite", env={"SCITQ_SERVER_PYZ": str(tmp_path / "offered.pyz")})
    wid, worker = srv.register()
    info = srv.ok("GET", "/pyz/info", token=worker)
    assert info == {"version": "9.9.9", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    got = srv.ok("GET", "/pyz", token=worker)
    assert base64.b64decode(got["data"]) == data and got["sha256"] == info["sha256"]
    user = srv.ok("POST", "/tokens", {"name": unique("u"), "role": "user"}, status=201)["secret"]
    for path in ("/pyz", "/pyz/info"):
        assert_error(srv.call("GET", path, token=user), 403, "forbidden")
    assert_error(srv.call("POST", f"/workers/{wid}/signal", {"action": "upgrade"}, token=user), 403, "forbidden")
    srv.ok("POST", f"/workers/{wid}/signal", {"action": "upgrade"})
    assert [s["action"] for s in srv.ok("POST", f"/workers/{wid}/heartbeat", {"stats": {}, "executions": []},
                                        token=worker)["signals"]] == ["upgrade"]
    # a new file offered: the next request sees it
    (tmp_path / "offered.pyz").write_bytes(pyz("9.9.10"))
    assert srv.ok("GET", "/pyz/info", token=worker)["version"] == "9.9.10"


def test_a_server_run_from_source_has_no_pyz_to_offer_and_the_cli_says_so_first(servers):
    srv = servers.start("sqlite")
    wid, worker = srv.register(name="w-src")
    reply = srv.call("GET", "/pyz/info")
    assert_error(reply, 409, "conflict")
    assert "runs from source" in reply[1]["detail"]
    r = cli("worker", "upgrade", "--all", env={"SCITQ_SERVER": srv.url, "SCITQ_TOKEN": srv.admin})
    assert r.code == 5 and "runs from source" in r.err and len(r.err_lines) == 1
    beat = srv.ok("POST", f"/workers/{wid}/heartbeat", {"stats": {}, "executions": []}, token=worker)
    assert beat["signals"] == [], "no worker was told anything"
