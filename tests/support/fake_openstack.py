"""A local OpenStack for the tests of the openstack provider: Keystone v3 password authentication
(POST /v3/auth/tokens, the token in X-Subject-Token, the service catalog in the body) and Nova
(GET /flavors/detail, POST /servers, GET /servers/{id}, GET /servers/detail paginated with
servers_links, DELETE /servers/{id}), as documented."""
from __future__ import annotations

import json
import re
import threading
from http.server import ThreadingHTTPServer
from typing import Any

from tests.support.json_http import JsonHandler

REGION = "GRA11"
FLAVORS = [{"id": "f-b2-7", "name": "b2-7", "vcpus": 2, "ram": 7168, "disk": 50},
           {"id": "f-c2-15", "name": "c2-15", "vcpus": 4, "ram": 15360, "disk": 100}]


class FakeOpenStack:
    """Keystone v3 and Nova, as documented, in one HTTP server; `fail` queues (method, path
    regex, status[, message]) answers given once instead of the real one."""

    def __init__(self, password: str = "secret") -> None:
        self.password = password
        self.requests: list[tuple[str, str, Any]] = []
        self.servers: dict[str, dict] = {}
        self.fail: list[tuple] = []
        self.page = 2  # servers per page of /servers/detail
        self.lock = threading.Lock()
        fake = self

        class Handler(JsonHandler):
            def _handle(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                with fake.lock:
                    fake.requests.append((self.command, self.path, body))
                    for i, (method, pattern, status, *message) in enumerate(fake.fail):
                        if method == self.command and re.search(pattern, self.path):
                            del fake.fail[i]
                            return self._reply(status, {"error": {"code": status,
                                                                  "message": message[0] if message else "injected"}})
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
            if pw["password"] != self.password:
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
