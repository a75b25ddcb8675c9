"""The OpenStack provider (through apache-libcloud) against a local HTTP server answering the
documented calls: Keystone v3 password authentication (POST /v3/auth/tokens, the token in
X-Subject-Token, the service catalog in the body) and Nova (GET /flavors/detail, POST /servers,
GET /servers/{id}, GET /servers/detail paginated with servers_links, DELETE /servers/{id}).
It asserts the requests made, and what 401, 404, 429 and 5xx become."""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from scitq_app.cloud.provider import TAG_KEY, TAG_SERVER, Flavor, load_providers
from scitq_app.errors import ConfigError, ProvisionError


REGION = "GRA11"
FLAVORS = [{"id": "f-b2-7", "name": "b2-7", "vcpus": 2, "ram": 7168, "disk": 50},
           {"id": "f-c2-15", "name": "c2-15", "vcpus": 4, "ram": 15360, "disk": 100}]


class FakeOpenStack:
    """Keystone v3 and Nova, as documented, in one HTTP server; `fail` queues (method, path
    regex, status) answers given once instead of the real one."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.servers: dict[str, dict] = {}
        self.fail: list[tuple[str, str, int]] = []
        self.page = 2  # servers per page of /servers/detail
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _reply(self, status: int, body: Any = None, headers: dict | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                with fake.lock:
                    fake.requests.append((self.command, self.path, body))
                    for i, (method, pattern, status) in enumerate(fake.fail):
                        if method == self.command and re.search(pattern, self.path):
                            del fake.fail[i]
                            return self._reply(status, {"error": {"code": status, "message": "injected"}})
                    return fake.answer(self, body)

            do_GET = do_POST = do_DELETE = _handle

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def server_json(self, sid: str) -> dict:
        s = self.servers[sid]
        return {"id": sid, "name": s["name"], "status": s["status"], "hostId": "h", "tenant_id": "p1",
                "user_id": "u1", "metadata": s["metadata"], "created": "2026-12-03T09:00:00Z",
                "updated": "2026-12-03T09:00:00Z", "image": {"id": s["imageRef"]}, "flavor": {"id": s["flavorRef"]},
                "key_name": s["key_name"], "links": [{"rel": "self", "href": f"{self.url}/v2.1/servers/{sid}"}],
                "addresses": {"Ext-Net": [{"addr": s["ip"], "version": 4, "OS-EXT-IPS:type": "fixed"}]}}

    def answer(self, h: Any, body: Any) -> None:
        path = h.path.split("?")[0]
        if h.command == "POST" and path == "/v3/auth/tokens":
            pw = body["auth"]["identity"]["password"]["user"]
            if pw["password"] != "secret":
                return h._reply(401, {"error": {"code": 401, "message": "The request you have made requires "
                                                                       "authentication."}})
            catalog = [{"type": "compute", "name": "nova", "id": "c1", "endpoints": [
                {"id": "e1", "interface": "public", "region": REGION, "region_id": REGION, "url": f"{self.url}/v2.1"}]}]
            return h._reply(201, {"token": {"expires_at": "2099-01-01T00:00:00.000000Z", "methods": ["password"],
                                            "catalog": catalog, "roles": [{"id": "r1", "name": "member"}],
                                            "user": {"id": "u1", "name": pw["name"]}}},
                            {"X-Subject-Token": "tok-1"})
        if h.headers.get("X-Auth-Token") != "tok-1":
            return h._reply(401, {"error": {"code": 401, "message": "no token"}})
        if h.command == "GET" and path == "/v2.1/flavors/detail":
            return h._reply(200, {"flavors": [{**f, "links": [], "OS-FLV-EXT-DATA:ephemeral": 0, "swap": "",
                                               "rxtx_factor": 1.0} for f in FLAVORS]})
        if h.command == "POST" and path == "/v2.1/servers":
            s = body["server"]
            sid = f"srv-{len(self.servers) + 1}"
            self.servers[sid] = {**s, "status": "BUILD", "ip": f"51.0.0.{len(self.servers) + 1}",
                                 "metadata": s.get("metadata", {})}
            return h._reply(202, {"server": {"id": sid, "adminPass": "pw", "links": []}})
        m = re.fullmatch(r"/v2.1/servers/(srv-\d+)", path)
        if m and h.command == "GET":
            if m.group(1) not in self.servers:
                return h._reply(404, {"itemNotFound": {"code": 404, "message": "Instance could not be found"}})
            return h._reply(200, {"server": self.server_json(m.group(1))})
        if m and h.command == "DELETE":
            self.servers.pop(m.group(1), None)
            return h._reply(204)
        if h.command == "GET" and path == "/v2.1/servers/detail":
            marker = (re.search(r"marker=([^&]+)", h.path) or [None, None])[1]
            ids = sorted(self.servers)
            start = ids.index(marker) + 1 if marker in ids else 0
            page = ids[start:start + self.page]
            reply: dict[str, Any] = {"servers": [self.server_json(i) for i in page]}
            if start + self.page < len(ids):
                reply["servers_links"] = [{"rel": "next",
                                           "href": f"{self.url}/v2.1/servers/detail?marker={page[-1]}"}]
            return h._reply(200, reply)
        return h._reply(404, {"itemNotFound": {"code": 404, "message": f"no route {h.command} {path}"}})

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def cloud(tmp_path):
    fake = FakeOpenStack()
    path = tmp_path / "providers.yaml"

    def provider(password: str = "secret"):
        path.write_text(json.dumps([{"name": "ovh", "type": "openstack", "auth_url": fake.url,
                                     "username": "user-1", "password": password, "project": "p1", "domain": "Default",
                                     "region": REGION, "image": "img-debian12", "key_name": "scitq",
                                     "ssh_user": "debian", "prices": {"b2-7": 0.0568}}]))
        path.chmod(0o600)
        return load_providers(str(path))["ovh"]
    yield fake, provider
    fake.close()


def test_flavors_come_from_nova_with_the_prices_the_settings_give(cloud):
    fake, provider = cloud
    flavors = provider().flavors()
    assert [(f.name, f.cpu, f.mem, f.disk, f.price, f.region) for f in flavors] == [
        ("b2-7", 2, 7.0, 50.0, 0.0568, REGION), ("c2-15", 4, 15.0, 100.0, 0.0, REGION)]
    assert [(m, p.split("?")[0]) for m, p, _ in fake.requests] == [("POST", "/v3/auth/tokens"),
                                                                   ("GET", "/v2.1/flavors/detail")]
    auth = fake.requests[0][2]["auth"]
    assert auth["identity"]["password"]["user"]["name"] == "user-1"
    assert auth["scope"]["project"]["name"] == "p1"


def test_a_server_is_created_tagged_listed_across_pages_and_destroyed(cloud):
    fake, provider = cloud
    p = provider()
    flavor = Flavor("ovh", "b2-7", REGION, 2, 7.0)
    made = [p.create(f"w{i}", flavor, {TAG_SERVER: "https://scitq.example.org", TAG_KEY: f"k{i}"}) for i in range(3)]
    assert [(i.id, i.state, i.address, i.ssh_user) for i in made] == [
        ("srv-1", "pending", "51.0.0.1", "debian"), ("srv-2", "pending", "51.0.0.2", "debian"),
        ("srv-3", "pending", "51.0.0.3", "debian")]
    posted = [b["server"] for m, path, b in fake.requests if m == "POST" and path == "/v2.1/servers"]
    assert posted[0]["name"] == "w0" and posted[0]["flavorRef"] == "f-b2-7" and posted[0]["imageRef"] == "img-debian12"
    assert posted[0]["key_name"] == "scitq" and posted[0]["metadata"][TAG_KEY] == "k0"
    fake.servers["srv-1"]["status"] = "ACTIVE"
    fake.servers["srv-9"] = {"name": "not ours", "status": "ACTIVE", "imageRef": "i", "flavorRef": "f", "key_name": "x",
                             "ip": "51.0.0.9", "metadata": {}}
    listed = p.list({TAG_SERVER: "https://scitq.example.org"})
    assert [i.id for i in listed] == ["srv-1", "srv-2", "srv-3"], "three pages of two, the foreign one left out"
    assert sum(1 for m, path, _ in fake.requests if path.startswith("/v2.1/servers/detail")) == 2
    assert p.get("srv-1").state == "running"
    p.destroy("srv-2")
    assert ("DELETE", "/v2.1/servers/srv-2") in [(m, path) for m, path, _ in fake.requests]
    assert p.get("srv-2") is None, "404: gone"
    p.destroy("srv-2")  # destroying one already gone is not an error
    assert [m for m, path, _ in fake.requests if path == "/v2.1/servers/srv-2"].count("DELETE") == 1


def test_refused_credentials_busy_and_failing_apis_are_said_in_words(cloud):
    fake, provider = cloud
    with pytest.raises(ConfigError, match="credentials were refused") as e:
        provider(password="wrong").flavors()
    assert "wrong" not in str(e.value), "never the password"
    p = provider()
    fake.fail.append(("GET", r"/flavors/detail", 429))
    with pytest.raises(ProvisionError, match="HTTP 429") as e:
        p.flavors()
    assert e.value.data["retry"] is True
    fake.fail.append(("POST", r"/v2.1/servers$", 503))
    with pytest.raises(ProvisionError, match="HTTP 503") as e:
        p.create("w", Flavor("ovh", "b2-7", REGION, 2, 7.0), {})
    assert e.value.data["retry"] is True and fake.servers == {}, "nothing created"
    fake.fail.append(("POST", r"/v2.1/servers$", 400))
    with pytest.raises(ProvisionError, match="HTTP 400") as e:
        p.create("w", Flavor("ovh", "b2-7", REGION, 2, 7.0), {})
    assert e.value.data["retry"] is False
    with pytest.raises(ProvisionError, match="no flavor z9"):
        p.create("w", Flavor("ovh", "z9", REGION, 2, 7.0), {})


def test_missing_settings_are_named_without_the_secrets(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps([{"name": "ovh", "type": "openstack", "password": "s3cr3t", "auth_url": "https://x"}]))
    path.chmod(0o600)
    with pytest.raises(ConfigError) as e:
        load_providers(str(path))
    assert "username" in str(e.value) and "s3cr3t" not in str(e.value)
