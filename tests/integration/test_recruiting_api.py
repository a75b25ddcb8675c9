"""Recruiters over the API and the CLI, flavors from the configured providers, and a provider
that refuses every machine: the deploys fail with the reason in their jobs, nothing is left
half-made, and the recruiter backs off instead of asking at every round."""
from __future__ import annotations

import time

from tests.integration.conftest import assert_error, cli
from tests.support.static_provider import providers_file


def _env(srv) -> dict[str, str]:
    return {"SCITQ_SERVER": srv.url, "SCITQ_TOKEN": srv.admin}


def test_recruiters_and_flavors_through_the_cli(servers, tmp_path):
    srv = servers.start("sqlite", env={"SCITQ_RECRUIT_PROVIDERS": providers_file(str(tmp_path / "p.yaml"))})
    env = _env(srv)
    r = cli("flavor", "list", "--filter", "cpu>=8", env=env)
    assert r.code == 0 and "b16" in r.out and "s4" not in r.out
    assert cli("flavor", "list", "--filter", "cpu>>8", env=env).code == 2
    r = cli("recruiter", "create", "rb", "--provider", "none", "--flavor", "cpu>=4:mem>=16", "--maximum-workers",
            "2", "--tasks-per-worker", "10", env=env)
    assert r.code == 0 and "up to 2 cpu>=4:mem>=16 worker(s) from none, one per 10 pending task(s)" in r.out, r
    r = cli("recruiter", "create", "rb", "--provider", "none", "--flavor", "s4", "--maximum-workers", "1", env=env)
    assert r.code == 5 and "rank 1" in r.err, "one recruiter per batch and rank"
    r = cli("recruiter", "create", "rb", "--provider", "elsewhere", "--flavor", "s4", "--maximum-workers", "1",
            "--rank", "2", env=env)
    assert r.code == 2 and "unknown provider 'elsewhere'" in r.err
    r = cli("recruiter", "create", "rb", "--provider", "none", "--flavor", "cpu>=x", "--maximum-workers", "1",
            "--rank", "2", env=env)
    assert r.code == 2 and "flavor" in r.err
    [rec] = srv.ok("GET", "/recruiters")["recruiters"]
    assert cli("recruiter", "update", str(rec["id"]), "--maximum-workers", "5", env=env).code == 0
    assert srv.ok("GET", "/recruiters")["recruiters"][0]["maximum_workers"] == 5
    assert cli("recruiter", "update", str(rec["id"]), env=env).code == 2, "nothing to update"
    r = cli("recruiter", "list", env=env)
    assert r.code == 0 and "rb" in r.out and "cpu>=4:mem>=16" in r.out
    assert cli("recruiter", "delete", str(rec["id"]), env=env).code == 0
    assert srv.ok("GET", "/recruiters")["recruiters"] == []


def test_without_providers_recruiting_is_refused_with_the_setting_to_use(servers):
    srv = servers.start("sqlite")
    reply = srv.call("POST", "/recruiters", {"batch": "b", "provider": "any", "flavor": "s4", "maximum_workers": 1})
    assert_error(reply, 409, "server_config")
    assert "[recruit] providers" in reply[1]["detail"]
    assert srv.ok("GET", "/flavors") == {"flavors": [], "errors": {}}


def test_a_provider_that_refuses_fails_its_deploys_and_the_recruiter_backs_off(servers, tmp_path):
    srv = servers.start("sqlite", env={"SCITQ_RECRUIT_PROVIDERS": providers_file(str(tmp_path / "p.yaml")),
                                       "SCITQ_RECRUIT_INTERVAL": "0.2", "SCITQ_DISPATCHER_INTERVAL": "0.1",
                                       "SCITQ_SERVER_PUBLIC_URL": "http://10.9.9.9:5000"})
    srv.ok("POST", "/tasks/bulk", {"tasks": [{"command": "true", "batch": "nowhere"} for _ in range(5)]}, status=201)
    srv.ok("POST", "/recruiters", {"batch": "nowhere", "provider": "none", "flavor": "s4", "maximum_workers": 2,
                                   "tasks_per_worker": 1}, status=201)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        machines = srv.ok("GET", "/machines?all=true")["machines"]
        if len(machines) >= 2 and all(m["status"] == "failed" for m in machines):
            break
        time.sleep(0.1)
    assert [m["status"] for m in machines] == ["failed", "failed"], machines
    assert all("creates no machine" in m["message"] for m in machines)
    jobs = srv.ok("GET", "/jobs")["jobs"]
    assert [(j["kind"], j["status"]) for j in jobs] == [("deploy", "failed")] * 2
    assert "creates no machine" in jobs[0]["message"]
    time.sleep(3)  # 15 rounds: a recruiter asking at each round would have made ~30 more
    assert len(srv.ok("GET", "/machines?all=true")["machines"]) == 2, "backed off"
