"""`scitq worker deploy` and `scitq job retry` over the API and the CLI, with a provider that offers
flavors and creates nothing: machines asked for are created by the dispatcher (and fail here,
with the provider's reason in their deploy jobs and on the command's terminal), the provider's
caps refuse what does not fit with nothing recorded, a flavor it does not offer is refused, and a
failed deploy is asked again by `job retry`. (Deploys that become workers: e2e/test_recruit_machines.py.)"""
from __future__ import annotations

import json
import os

from tests.integration.conftest import assert_error, cli


def _env(srv) -> dict[str, str]:
    return {"SCITQ_SERVER": srv.url, "SCITQ_TOKEN": srv.admin}


def providers(path: str) -> str:
    with open(path, "w") as f:
        json.dump([{"name": "none", "type": "tests.support.static_provider:StaticProvider", "max_machines": 3,
                    "flavors": [{"name": "s4", "region": "r1", "cpu": 4, "mem": 16, "price": 0.2},
                                {"name": "b16", "region": "r1", "cpu": 16, "mem": 64, "price": 0.9}]}], f)
    os.chmod(path, 0o600)
    return path


def test_machines_deployed_by_hand_fail_with_the_providers_reason_and_are_asked_again_by_retry(servers, tmp_path):
    srv = servers.start("sqlite", env={"SCITQ_RECRUIT_PROVIDERS": providers(str(tmp_path / "p.yaml")),
                                       "SCITQ_RECRUIT_INTERVAL": "0.2", "SCITQ_DISPATCHER_INTERVAL": "0.1",
                                       "SCITQ_SERVER_PUBLIC_URL": "http://10.9.9.9:5000"})
    env = _env(srv)
    r = cli("worker", "deploy", "--provider", "none", "--flavor", "cpu>=8", "--count", "2", "--batch", "b1",
            "--concurrency", "4", env=env, timeout=60)
    assert r.code == 1, r
    machines = srv.ok("GET", "/machines?all=true")["machines"]
    assert [(m["flavor"], m["batch"], m["concurrency"], m["status"]) for m in machines] == \
        [("b16", "b1", 4, "failed")] * 2, "the cheapest flavor matching, the batch and concurrency asked"
    assert "2 b16 machine(s) asked of none in r1 (0.9/h each)" in r.err
    for m in machines:
        assert f"{m['name']}: failed: provider none creates no machine (a test provider)" in r.err
    jobs = srv.ok("GET", "/jobs")["jobs"]
    assert sorted((j["kind"], j["status"], j["target"]) for j in jobs) == \
        sorted(("deploy", "failed", m["name"]) for m in machines)

    r = cli("job", "retry", str(jobs[0]["id"]), env=env)
    assert r.code == 0 and "requested again" in r.out, r
    again = [m for m in srv.ok("GET", "/machines?all=true")["machines"] if m["name"] not in
             {x["name"] for x in machines}]
    assert [(m["flavor"], m["batch"], m["concurrency"]) for m in again] == [("b16", "b1", 4)]

    r = cli("worker", "deploy", "--provider", "none", "--flavor", "s4", "--no-wait", "--json", env=env)
    assert r.code == 0 and [m["status"] for m in json.loads(r.out)] == ["requested"], r


def test_what_does_not_fit_or_is_not_offered_is_refused_and_nothing_is_recorded(servers, tmp_path):
    srv = servers.start("sqlite", env={"SCITQ_RECRUIT_PROVIDERS": providers(str(tmp_path / "p.yaml"))})
    env = _env(srv)  # no dispatcher: machines asked for stay requested
    srv.ok("POST", "/machines", {"provider": "none", "flavor": "s4", "count": 2}, status=201)
    reply = srv.call("POST", "/machines", {"provider": "none", "flavor": "s4", "count": 2})
    assert_error(reply, 409, "conflict")
    assert "provider none allows 3 machine(s) in all: 2 machine(s) held now, room for 1, 2 asked" in reply[1]["detail"]
    not_offered = srv.call("POST", "/machines", {"provider": "none", "flavor": "gpu>=1"})
    assert_error(not_offered, 409, "conflict")  # what a provider offers changes: not a malformed request
    assert not_offered[1]["detail"] == "provider none offers no available flavor 'gpu>=1' now (see `scitq flavor list`)"
    assert_error(srv.call("POST", "/machines", {"provider": "elsewhere", "flavor": "s4"}), 422, "invalid")
    assert_error(srv.call("POST", "/machines", {"provider": "none", "flavor": "s4", "count": 0}), 422, "invalid")
    assert len(srv.ok("GET", "/machines")["machines"]) == 2
    r = cli("worker", "deploy", "--provider", "none", "--flavor", "s4", "--region", "r9", env=env)
    assert (r.code, r.err.strip()) == (5, "scitq: provider none offers no available flavor 's4' in r9 now (see "
                                          "`scitq flavor list`)"), r
    r = cli("worker", "deploy", "--provider", "none", "--flavor", "s4", "--count", "x", env=env)
    assert r.code == 2 and "--count" in r.err
    user = srv.ok("POST", "/tokens", {"name": "u", "role": "user"}, status=201)["secret"]
    r = cli("worker", "deploy", "--provider", "none", "--flavor", "s4", env={"SCITQ_SERVER": srv.url,
                                                                           "SCITQ_TOKEN": user})
    assert (r.code, r.err.strip()) == (6, "scitq: a user token may not POST /machines"), "deploying spends: admin only"
    assert len(srv.ok("GET", "/machines")["machines"]) == 2
