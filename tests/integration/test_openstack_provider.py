"""The OpenStack provider (through apache-libcloud) against a local HTTP server answering the
documented calls: Keystone v3 password authentication (POST /v3/auth/tokens, the token in
X-Subject-Token, the service catalog in the body) and Nova (GET /flavors/detail, POST /servers,
GET /servers/{id}, GET /servers/detail paginated with servers_links, DELETE /servers/{id}).
It asserts the requests made, and what 401, 404, 429 and 5xx become."""
from __future__ import annotations

import json

import pytest

from scitq_app.cloud.provider import TAG_KEY, TAG_SERVER, Flavor, load_providers
from scitq_app.errors import ConfigError, ProvisionError
from tests.support.fake_openstack import REGION, FakeOpenStack


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
