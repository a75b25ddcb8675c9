"""The OpenAPI document served at /api/v1/openapi.json describes exactly the
routes the server has, and is a well-formed OpenAPI 3.0 document."""
from __future__ import annotations

import re

import pytest

from scitq_app.api import PREFIX, ROUTES
from scitq_app.config import load_config
from scitq_app.server import make_app
from scitq_app.store import open_store
from tests.support.processes import api

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def srv(module_servers):
    return module_servers.start("sqlite")


@pytest.fixture(scope="module")
def document(srv):
    code, doc = api(srv.api_url, "GET", "/openapi.json", token=srv.admin)
    assert code == 200
    # public: served without a token even once tokens exist
    assert api(srv.api_url, "GET", "/openapi.json")[0] == 200
    return doc


@pytest.fixture(scope="module")
def app_operations(tmp_path_factory) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every route of the bottle app make_app builds."""
    store = open_store(f"sqlite:///{tmp_path_factory.mktemp('app')}/scitq.db")
    try:
        store.init_schema()
        app = make_app(store, load_config("/dev/null", env={}))
        return {(r.method.upper(), re.sub(r"<(\w+)(:[^>]*)?>", r"{\1}", r.rule)) for r in app.routes}
    finally:
        store.close()


def operations(doc: dict) -> set[tuple[str, str]]:
    return {(m.upper(), path) for path, item in doc["paths"].items() for m in item if m in METHODS}


def test_every_route_is_in_the_document(document):
    documented = operations(document)
    declared = {(r.method, PREFIX + r.openapi_path) for r in ROUTES}
    assert declared - documented == set()
    assert len(declared) == len(ROUTES)  # no route declared twice


def test_every_documented_operation_exists_in_the_app(document, app_operations):
    documented = operations(document)
    assert documented - app_operations == set()
    # and the app has no API route the document leaves out
    assert {op for op in app_operations if op[1].startswith(PREFIX)} - documented == set()


def test_documented_operations_answer_over_http(srv, document):
    """Each documented path, filled in, reaches a route of the running server (never 404 'no such route'
    nor 405)."""
    for method, path in sorted(operations(document)):
        concrete = re.sub(r"\{(\w+)\}", lambda m: "1" if m.group(1) == "id" else "Default", path)
        code, body = api(srv.url, method, concrete, {} if method in ("POST", "PATCH") else None, token=srv.admin)
        assert code != 405, (method, path, body)
        assert not (code == 404 and "no such route" in str(body)), (method, path, body)


def test_document_is_openapi_3_0(document):
    assert re.fullmatch(r"3\.0\.\d+", document["openapi"])
    assert document["info"]["title"] and document["info"]["version"]
    assert all(path.startswith("/") for path in document["paths"])
    ids = [op["operationId"] for item in document["paths"].values() for m, op in item.items() if m in METHODS]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    for path, item in document["paths"].items():
        templated = set(re.findall(r"\{(\w+)\}", path))
        for method, op in item.items():
            assert method in METHODS, (path, method)
            assert op["responses"], (path, method)
            for code in op["responses"]:
                assert re.fullmatch(r"[1-5]\d\d|default", code), (path, method, code)
            params = op.get("parameters", [])
            in_path = {p["name"] for p in params if p["in"] == "path"}
            assert in_path == templated, (path, method)
            assert all(p["required"] for p in params if p["in"] == "path")
            for p in params:
                assert p["in"] in ("path", "query", "header", "cookie") and "schema" in p, (path, p)
            for scheme in op.get("security", []):
                assert set(scheme) <= set(document["components"]["securitySchemes"])


def _resolve(doc: dict, ref: str) -> object:
    assert ref.startswith("#/"), ref
    node: object = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolved $ref {ref}"
        node = node[part]
    return node


def test_every_ref_resolves(document):
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                refs.append(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(document)
    assert refs, "the document uses $ref for bodies and errors"
    for ref in refs:
        target = _resolve(document, ref)
        assert isinstance(target, dict) and target.get("type") == "object", ref


def test_request_bodies_are_described(document):
    by_op = {(m.upper(), p): op for p, item in document["paths"].items() for m, op in item.items()}
    for r in ROUTES:
        op = by_op[(r.method, PREFIX + r.openapi_path)]
        if r.body:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": f"#/components/schemas/{r.body}"}
        else:
            assert "requestBody" not in op
        assert str(r.status) in op["responses"]
        # an edit names only what it changes: its body requires no field
        if r.method == "PATCH":
            assert not _resolve(document, f"#/components/schemas/{r.body}").get("required"), r.path
