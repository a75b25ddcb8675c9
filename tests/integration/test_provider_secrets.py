"""A provider's credentials never leave the providers file: with an OpenStack whose errors echo the
password back (as a careless API might), nothing the server, the dispatcher or the CLI shows or
logs carries it — flavors, recruiters, machines, jobs and their logs over the API, the CLI's
commands on them, `worker deploy`'s terminal, the processes' logs — while the error itself is said,
masked."""
from __future__ import annotations

import json
import os
import time

from tests.integration.conftest import cli
from tests.support.fake_openstack import REGION, FakeOpenStack

PASSWORD = "pw-Leak-4711-zq"


def test_the_password_is_never_shown_nor_logged_even_when_the_provider_echoes_it(servers, tmp_path):
    fake = FakeOpenStack(password=PASSWORD)
    path = tmp_path / "providers.yaml"
    path.write_text(json.dumps([{"name": "ovh", "type": "openstack", "auth_url": fake.url, "username": "user-1",
                                 "password": PASSWORD, "project": "p1", "region": REGION, "image": "img-debian12",
                                 "key_name": "scitq", "prices": {"b2-7": 0.0568}}]))
    os.chmod(path, 0o600)
    echo = f"Invalid request: password {PASSWORD} is not allowed to create servers here"
    fake.fail += [("POST", r"/v2.1/servers$", 400, echo)] * 3
    try:
        srv = servers.start("sqlite", env={"SCITQ_RECRUIT_PROVIDERS": str(path), "SCITQ_RECRUIT_INTERVAL": "0.2",
                                           "SCITQ_DISPATCHER_INTERVAL": "0.1",
                                           "SCITQ_SERVER_PUBLIC_URL": "http://10.9.9.9:5000"})
        env = {"SCITQ_SERVER": srv.url, "SCITQ_TOKEN": srv.admin}
        shown: list[str] = []
        flavors = srv.ok("GET", "/flavors")
        assert sorted(f["name"] for f in flavors["flavors"]) == ["b2-7", "c2-15"], "the provider answers"
        shown.append(json.dumps(flavors))
        deploy = cli("worker", "deploy", "--provider", "ovh", "--flavor", "b2-7", env=env, timeout=60)
        assert deploy.code == 1, deploy
        shown += [deploy.out, deploy.err]
        srv.ok("POST", "/tasks/bulk", {"tasks": [{"command": "true", "batch": "b"}]}, status=201)
        srv.ok("POST", "/recruiters", {"batch": "b", "provider": "ovh", "flavor": "b2-7", "maximum_workers": 1},
               status=201)
        deadline = time.monotonic() + 30
        while len([j for j in srv.ok("GET", "/jobs")["jobs"] if j["status"] == "failed"]) < 2:
            assert time.monotonic() < deadline, srv.ok("GET", "/jobs")
            time.sleep(0.1)
        jobs = srv.ok("GET", "/jobs")["jobs"]
        assert {(j["kind"], j["status"]) for j in jobs} == {("deploy", "failed")}
        for j in jobs:
            assert "password *** is not allowed" in j["message"], "the error is said, the password masked"
            shown += [json.dumps(srv.ok("GET", f"/jobs/{j['id']}")), json.dumps(srv.ok("GET", f"/jobs/{j['id']}/log"))]
            for command in (("job", "show", str(j["id"])), ("job", "log", str(j["id"]))):
                r = cli(*command, env=env)
                assert r.code == 0, r
                shown += [r.out, r.err]
        for path_ in ("/recruiters", "/machines?all=true", "/jobs"):
            shown.append(json.dumps(srv.ok("GET", path_)))
        for command in (("job", "list"), ("recruiter", "list"), ("flavor", "list"), ("worker", "list")):
            r = cli(*command, env=env)
            assert r.code == 0, r
            shown += [r.out, r.err]
        assert "password *** is not allowed" in srv.log(), "the processes' logs say it too"
        shown.append(srv.log())
    finally:
        fake.close()
    leaks = [text[max(0, text.find(PASSWORD) - 200):text.find(PASSWORD) + 50] for text in shown if PASSWORD in text]
    assert leaks == []
    sent_to = {p for m, p, b in fake.requests if b is not None and PASSWORD in json.dumps(b)}
    assert sent_to == {"/v3/auth/tokens"}, "the password goes to Keystone only"
