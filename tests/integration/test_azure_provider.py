"""The Azure provider (through apache-libcloud's ARM driver) against a local HTTPS server answering
the documented calls: Azure AD client-credentials sign-in (POST /{tenant}/oauth2/token) and Resource
Manager (VM sizes of a location; PUT of a public IP, a NIC and a VM; GET of a VM, its instance view,
a NIC and a public IP; the resource group's VMs paginated with nextLink; DELETE of a VM, NIC, disk
and public IP). It asserts the requests made, and what 401, 404, 429 and 5xx become.

libcloud reaches both services on port 443 only, so the server listens on 443 of a loopback
address of its own (127.77.x.y), with a certificate for that address made here and given to
libcloud as its CA bundle: that needs root (tests/run.sh, CI)."""
from __future__ import annotations

import datetime
import importlib.util
import ipaddress
import json
import os
import random
import re
import ssl
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from scitq_app.cloud.provider import TAG_KEY, TAG_SERVER, Flavor, load_providers
from scitq_app.errors import ConfigError, ProvisionError
from tests.support.json_http import JsonHandler
from tests.support.system import need

SUB = "00000000-0000-0000-0000-00000000000a"
TENANT = "00000000-0000-0000-0000-00000000000b"
RG = "scitq"
SECRET = "s3cr3t-Client~Value"
SIZES = [{"name": "Standard_D2s_v5", "numberOfCores": 2, "osDiskSizeInMB": 1047552, "resourceDiskSizeInMB": 0,
          "memoryInMB": 8192, "maxDataDiskCount": 4},
         {"name": "Standard_F8s_v2", "numberOfCores": 8, "osDiskSizeInMB": 1047552, "resourceDiskSizeInMB": 65536,
          "memoryInMB": 16384, "maxDataDiskCount": 16}]


def certificate(address: str, directory: str) -> tuple[str, str]:
    """A self-signed certificate for an IP address: (cert file, key file)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = os.path.join(directory, "arm.pem"), os.path.join(directory, "arm.key")
    with open(cert_file, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_file, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_file, key_file


class FakeAzure:
    """Azure AD's token endpoint and Resource Manager, as documented, in one HTTPS server;
    `fail` queues (method, path regex, status) answers given once instead of the real one."""

    def __init__(self, directory: str) -> None:
        self.requests: list[tuple[str, str, dict[str, list[str]], Any]] = []
        self.vms: dict[str, dict] = {}        # name -> VM resource
        self.deleting: dict[str, int] = {}    # name -> GETs still answered before the VM is gone
        self.power: dict[str, str] = {}       # name -> PowerState
        self.nics: dict[str, dict] = {}
        self.ips: dict[str, dict] = {}
        self.disks: set[str] = set()
        self.fail: list[tuple[str, str, int]] = []
        self.page = 2
        self.tokens = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(JsonHandler):
            def _handle(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n).decode() if n else ""
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                body = (parse_qs(raw) if "x-www-form-urlencoded" in (self.headers.get("Content-Type") or "")
                        else json.loads(raw) if raw else None)
                with fake.lock:
                    fake.requests.append((self.command, url.path, query, body))
                    for i, (method, pattern, status) in enumerate(fake.fail):
                        if method == self.command and re.search(pattern, url.path):
                            del fake.fail[i]
                            return self._reply(status, {"error": {"code": "Injected", "message": f"injected {status}"}})
                    return fake.answer(self, url.path, query, body)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.address = ""
        for _ in range(20):  # a loopback address of our own: several test runs may share the machine
            address = f"127.77.{random.randint(1, 254)}.{random.randint(1, 254)}"
            try:
                self.http = ThreadingHTTPServer((address, 443), Handler)
            except OSError:
                continue
            self.address = address
            break
        assert self.address, "no free loopback address for the fake Azure"
        self.cert, key = certificate(self.address, directory)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.http.socket = context.wrap_socket(self.http.socket, server_side=True)
        self.url = f"https://{self.address}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def rg(self, kind: str, name: str) -> str:
        return f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/{kind}/{name}"

    def not_found(self, h: Any, what: str) -> None:
        h._reply(404, {"error": {"code": "ResourceNotFound", "message": f"The Resource '{what}' under resource group "
                                                                       f"'{RG}' was not found."}})

    def answer(self, h: Any, path: str, query: dict, body: Any) -> None:
        if h.command == "POST" and path == f"/{TENANT}/oauth2/token":
            if body.get("client_secret") != [SECRET] or body.get("client_id") != ["app-1"]:
                return h._reply(401, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client "
                                      "secret provided. Ensure the secret being sent in the request is the client "
                                      "secret value, not the client secret ID."})
            assert body["grant_type"] == ["client_credentials"] and body["resource"] == [f"{self.url}/"]
            self.tokens += 1
            return h._reply(200, {"token_type": "Bearer", "expires_in": "3599", "resource": body["resource"][0],
                                  "expires_on": str(int(time.time()) + 3600), "access_token": "tok-az"})
        if h.headers.get("Authorization") != "Bearer tok-az":
            return h._reply(401, {"error": {"code": "AuthenticationFailed", "message": "no bearer token"}})
        if not query.get("api-version"):
            return h._reply(400, {"error": {"code": "MissingApiVersionParameter", "message": "The api-version query "
                                                                                             "parameter is required"}})
        prefix = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/"
        if h.command == "GET" and path == f"/subscriptions/{SUB}/providers/Microsoft.Compute/locations/westeurope/vmSizes":
            return h._reply(200, {"value": SIZES})
        if path == prefix + "Microsoft.Compute/virtualMachines" and h.command == "GET":
            names = sorted(self.vms)
            start = int(query.get("$skiptoken", ["0"])[0])
            reply: dict[str, Any] = {"value": [self.vms[n] for n in names[start:start + self.page]]}
            if start + self.page < len(names):
                reply["nextLink"] = (f"{self.url}{path}?api-version={query['api-version'][0]}"
                                     f"&$skiptoken={start + self.page}")
            return h._reply(200, reply)
        m = re.fullmatch(re.escape(prefix) + r"([\w.]+/[\w]+)/([\w.-]+)(/instanceview)?", path, re.I)
        if not m:
            return self.not_found(h, path)
        kind, name, view = m.group(1), m.group(2), m.group(3)
        if kind == "Microsoft.Network/publicIPAddresses":
            if h.command == "PUT":
                self.ips[name] = {"id": path, "name": name, "location": body["location"], "properties": {
                    "publicIPAllocationMethod": body["properties"]["publicIPAllocationMethod"],
                    "provisioningState": "Succeeded"}}
                return h._reply(201, self.ips[name])
            return self.resource(h, self.ips, name, path)
        if kind == "Microsoft.Network/networkInterfaces":
            if h.command == "PUT":
                conf = body["properties"]["ipConfigurations"][0]["properties"]
                self.nics[name] = {"id": path, "name": name, "location": body["location"], "properties": {
                    "provisioningState": "Succeeded", "ipConfigurations": [{"name": "ip1", "properties": {
                        **conf, "privateIPAddress": f"10.0.0.{len(self.nics) + 4}",
                        "privateIPAllocationMethod": "Dynamic"}}]}}
                return h._reply(201, self.nics[name])
            return self.resource(h, self.nics, name, path)
        if kind == "Microsoft.Compute/disks" and h.command == "DELETE":
            if name not in self.disks:
                return h._reply(204)
            self.disks.discard(name)
            return h._reply(202)
        if kind != "Microsoft.Compute/virtualMachines":
            return self.not_found(h, path)
        if h.command == "PUT":
            props = body["properties"]
            props["storageProfile"]["osDisk"]["managedDisk"] = {
                **props["storageProfile"]["osDisk"].get("managedDisk", {}), "id": self.rg("Microsoft.Compute/disks",
                                                                                          name)}
            self.vms[name] = {"id": path, "name": name, "type": body["type"], "location": body["location"],
                              "tags": body.get("tags") or {}, "properties": {**props, "provisioningState": "Creating",
                                                                             "vmId": f"vm-{len(self.vms)}"}}
            self.disks.add(name)
            self.power[name] = "starting"
            return h._reply(201, self.vms[name])
        if name not in self.vms:
            return self.not_found(h, path)
        if h.command == "DELETE":
            self.deleting.setdefault(name, 2)
            self.vms[name]["properties"]["provisioningState"] = "Deleting"
            return h._reply(202)
        if name in self.deleting:
            self.deleting[name] -= 1
            if self.deleting[name] < 0:
                del self.vms[name], self.deleting[name]
                return self.not_found(h, path)
        if view:
            state = "deleting" if name in self.deleting else "succeeded"
            return h._reply(200, {"statuses": [{"code": f"ProvisioningState/{state}", "level": "Info"},
                                               {"code": f"PowerState/{self.power[name]}", "level": "Info"}]})
        return h._reply(200, self.vms[name])

    def resource(self, h: Any, table: dict, name: str, path: str) -> None:
        if h.command == "GET":
            return h._reply(200, table[name]) if name in table else self.not_found(h, path)
        if h.command == "DELETE":
            return h._reply(200) if table.pop(name, None) is not None else h._reply(204)
        return self.not_found(h, path)

    def boot(self, name: str, public_ip: str) -> None:
        self.power[name] = "running"
        self.vms[name]["properties"]["provisioningState"] = "Succeeded"
        if f"{name}-ip" in self.ips:
            self.ips[f"{name}-ip"]["properties"]["ipAddress"] = public_ip

    def calls(self, method: str | None = None) -> list[tuple[str, str]]:
        return [(m, p) for m, p, _, _ in self.requests if method is None or m == method]

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def cloud(tmp_path, monkeypatch):
    need(os.geteuid() == 0, "the fake Azure listens on port 443 (libcloud's only port for Azure): needs root")
    need(importlib.util.find_spec("libcloud") is not None, "apache-libcloud is not installed (tests/run.sh installs it)")
    import libcloud.security
    fake = FakeAzure(str(tmp_path))
    monkeypatch.setattr(libcloud.security, "CA_CERTS_PATH", fake.cert)
    (tmp_path / "id.pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHj0dVJpY2tldHNjaXRx scitq@server\n")
    path = tmp_path / "providers.yaml"

    def provider(secret: str = SECRET, **more: Any):
        path.write_text(json.dumps([{
            "name": "azure-we", "type": "azure", "tenant_id": TENANT, "subscription_id": SUB, "client_id": "app-1",
            "client_secret": secret, "resource_group": RG, "region": "westeurope", "network": "scitq-vnet",
            "image": "Debian:debian-12:12:latest", "ssh_public_key": str(tmp_path / "id.pub"), "disk": 64,
            "prices": {"Standard_F8s_v2": 0.338}, "poll_wait": 0.01,
            "cloud_environment": {"resourceManagerEndpointUrl": f"{fake.url}/",
                                  "activeDirectoryEndpointUrl": fake.url,
                                  "activeDirectoryResourceId": f"{fake.url}/", "storageEndpointSuffix": ".example"},
            **more}]))
        path.chmod(0o600)
        return load_providers(str(path))["azure-we"]
    yield fake, provider
    fake.close()


def test_sizes_come_from_the_location_with_the_prices_the_settings_give(cloud):
    fake, provider = cloud
    flavors = provider().flavors()
    assert [(f.name, f.cpu, f.mem, f.disk, f.price, f.region) for f in flavors] == [
        ("Standard_D2s_v5", 2, 8.0, 0.0, 0.0, "westeurope"), ("Standard_F8s_v2", 8, 16.0, 64.0, 0.338, "westeurope")]
    assert fake.calls() == [("POST", f"/{TENANT}/oauth2/token"),
                            ("GET", f"/subscriptions/{SUB}/providers/Microsoft.Compute/locations/westeurope/vmSizes")]
    assert all(q.get("api-version") for m, _, q, _ in fake.requests[1:])


def test_a_vm_is_created_tagged_with_its_ip_and_nic_listed_across_pages_and_destroyed_whole(cloud):
    fake, provider = cloud
    p = provider()
    flavor = Flavor("azure-we", "Standard_F8s_v2", "westeurope", 8, 16.0)
    made = [p.create(f"w{i}", flavor, {TAG_SERVER: "https://scitq.example.org", TAG_KEY: f"k{i}"}) for i in range(3)]
    assert [(i.name, i.state, i.address, i.ssh_user) for i in made] == [
        ("w0", "pending", None, "scitq"), ("w1", "pending", None, "scitq"), ("w2", "pending", None, "scitq")]
    assert made[0].id == fake.rg("Microsoft.Compute/virtualMachines", "w0")
    puts = fake.calls("PUT")[:3]
    assert puts == [("PUT", fake.rg("Microsoft.Network/publicIPAddresses", "w0-ip")),
                    ("PUT", fake.rg("Microsoft.Network/networkInterfaces", "w0-nic")),
                    ("PUT", fake.rg("Microsoft.Compute/virtualMachines", "w0"))], "the IP, then its NIC, then the VM"
    nic = next(b for m, path, _, b in fake.requests if m == "PUT" and path.endswith("/w0-nic"))
    ip_conf = nic["properties"]["ipConfigurations"][0]["properties"]
    assert ip_conf["subnet"]["id"].endswith("/virtualNetworks/scitq-vnet/subnets/default")
    assert ip_conf["publicIPAddress"]["id"] == fake.rg("Microsoft.Network/publicIPAddresses", "w0-ip")
    vm = next(b for m, path, _, b in fake.requests if m == "PUT" and path.endswith("/virtualMachines/w0"))
    assert vm["tags"] == {TAG_SERVER: "https://scitq.example.org", TAG_KEY: "k0"}
    assert vm["location"] == "westeurope" and vm["properties"]["hardwareProfile"] == {"vmSize": "Standard_F8s_v2"}
    assert vm["properties"]["storageProfile"]["imageReference"] == {"publisher": "Debian", "offer": "debian-12",
                                                                    "sku": "12", "version": "latest"}
    assert vm["properties"]["storageProfile"]["osDisk"]["diskSizeGB"] == 64
    assert "managedDisk" in vm["properties"]["storageProfile"]["osDisk"]
    os_profile = vm["properties"]["osProfile"]
    assert os_profile["adminUsername"] == "scitq"
    assert os_profile["linuxConfiguration"]["disablePasswordAuthentication"] in (True, "true")
    assert os_profile["linuxConfiguration"]["ssh"]["publicKeys"] == [{
        "path": "/home/scitq/.ssh/authorized_keys",
        "keyData": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHj0dVJpY2tldHNjaXRx scitq@server"}]
    assert fake.tokens == 1, "one sign-in, its token reused"

    fake.boot("w0", "20.50.1.7")
    fake.vms["x9"] = {**fake.vms["w2"], "id": fake.rg("Microsoft.Compute/virtualMachines", "x9"), "name": "x9",
                      "tags": {"owner": "someone else"}}
    fake.power["x9"] = "running"
    del fake.requests[:]
    listed = p.list({TAG_SERVER: "https://scitq.example.org"})
    assert [(i.name, i.state) for i in listed] == [("w0", "running"), ("w1", "pending"), ("w2", "pending")], \
        "two pages of two, the foreign VM left out"
    pages = [q for m, path, q, _ in fake.requests if path.endswith("/virtualMachines")]
    assert [q.get("$skiptoken") for q in pages] == [None, ["2"]] and all(q["api-version"] for q in pages)
    got = p.get(made[0].id)
    assert (got.state, got.address, got.tags[TAG_KEY]) == ("running", "20.50.1.7", "k0")

    fake.power["w1"] = "deallocated"
    assert p.get(made[1].id).state == "evicted", "deallocated (a spot eviction) is reported evicted"
    del fake.requests[:]
    p.destroy(made[0].id)
    deletes = fake.calls("DELETE")
    assert deletes == [("DELETE", fake.rg("Microsoft.Compute/virtualMachines", "w0")),
                       ("DELETE", fake.rg("Microsoft.Network/networkInterfaces", "w0-nic")),
                       ("DELETE", fake.rg("Microsoft.Compute/disks", "w0")),
                       ("DELETE", fake.rg("Microsoft.Network/publicIPAddresses", "w0-ip"))], \
        "the NIC and disk only once the VM is gone"
    first_nic = fake.calls().index(deletes[1])
    assert ("GET", fake.rg("Microsoft.Compute/virtualMachines", "w0")) in fake.calls()[:first_nic]
    assert "w0" not in fake.vms and "w0-nic" not in fake.nics and "w0" not in fake.disks and "w0-ip" not in fake.ips
    assert p.get(made[0].id) is None, "404: gone"
    p.destroy(made[0].id)  # destroying one already gone (or half destroyed before a crash) is not an error
    assert sorted(fake.vms) == ["w1", "w2", "x9"]


def test_a_destroy_cut_short_is_finished_by_the_next(cloud):
    fake, provider = cloud
    p = provider()
    made = p.create("w0", Flavor("azure-we", "Standard_D2s_v5", "westeurope", 2, 8.0), {TAG_KEY: "k"})
    fake.fail.append(("DELETE", r"/networkInterfaces/w0-nic$", 503))
    with pytest.raises(ProvisionError, match="HTTP 503") as e:
        p.destroy(made.id)
    assert e.value.data["retry"] is True
    assert "w0" not in fake.vms and "w0-nic" in fake.nics and "w0" in fake.disks, "stopped at the NIC"
    p.destroy(made.id)
    assert (fake.vms, fake.nics, fake.disks, fake.ips) == ({}, {}, set(), {})


def test_refused_credentials_busy_and_failing_apis_are_said_in_words(cloud):
    fake, provider = cloud
    with pytest.raises(ConfigError, match="credentials were refused") as e:
        provider(secret="wrong-secret").flavors()
    assert "wrong-secret" not in str(e.value) and SECRET not in str(e.value)
    p = provider()
    flavor = Flavor("azure-we", "Standard_D2s_v5", "westeurope", 2, 8.0)
    fake.fail.append(("GET", r"/vmSizes$", 429))
    with pytest.raises(ProvisionError, match="HTTP 429") as e:
        p.flavors()
    assert e.value.data["retry"] is True
    fake.fail.append(("PUT", r"/virtualMachines/w0$", 503))
    with pytest.raises(ProvisionError, match="could not create a VM: HTTP 503") as e:
        p.create("w0", flavor, {})
    assert e.value.data["retry"] is True and fake.vms == {}
    fake.fail.append(("PUT", r"/virtualMachines/w1$", 400))
    with pytest.raises(ProvisionError, match="HTTP 400") as e:
        p.create("w1", flavor, {})
    assert e.value.data["retry"] is False
    fake.fail.append(("PUT", r"/networkInterfaces/w2-nic$", 404))
    with pytest.raises(ProvisionError, match=r"w2-nic was not created: the resource group scitq, network or subnet"):
        p.create("w2", flavor, {})
    assert ("PUT", fake.rg("Microsoft.Compute/virtualMachines", "w2")) not in fake.calls(), "no VM without its NIC"
    fake.fail.append(("GET", r"/virtualMachines$", 500))
    with pytest.raises(ProvisionError, match="could not list VMs: HTTP 500") as e:
        p.list({})
    assert e.value.data["retry"] is True
    fake.fail.append(("GET", r"/virtualMachines/nothing$", 401))
    with pytest.raises(ConfigError, match=r"refused \(401\) while trying to read a VM"):
        p.get(fake.rg("Microsoft.Compute/virtualMachines", "nothing"))
    assert p.get(fake.rg("Microsoft.Compute/virtualMachines", "nothing")) is None
    for _, path, q, body in fake.requests:
        assert SECRET not in json.dumps(q) or path.endswith("/oauth2/token"), "the secret goes to the sign-in only"


def test_missing_settings_are_named_without_the_secrets(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps([{"name": "az", "type": "azure", "client_secret": "s3cr3t", "tenant_id": "t",
                                 "image": "Debian:debian-12:12:latest"}]))
    path.chmod(0o600)
    with pytest.raises(ConfigError) as e:
        load_providers(str(path))
    assert "subscription_id" in str(e.value) and "resource_group" in str(e.value) and "s3cr3t" not in str(e.value)
    path.write_text(json.dumps([{"name": "az", "type": "azure", "tenant_id": "t", "subscription_id": "s",
                                 "client_id": "c", "client_secret": "s3cr3t", "resource_group": "g", "region": "r",
                                 "network": "n", "image": "debian-12", "ssh_public_key": "/k.pub"}]))
    with pytest.raises(ConfigError, match="Marketplace URN"):
        load_providers(str(path))
