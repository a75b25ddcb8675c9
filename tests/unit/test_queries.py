"""The named-query loader and the queries themselves.

Parsing a query needs its database: SQLite compiles each one with EXPLAIN,
PostgreSQL prepares each one (Parse, no execution) on a real server; both
against a schema built by `init_schema`."""
from __future__ import annotations

import re
import sqlite3
from collections import defaultdict

import pytest

from scitq_app.store import queries

FILES = ["queries.sql", "sqlite.sql", "postgres.sql"]
DIALECTS = ["sqlite", "postgres"]


def parsed(fname: str) -> dict[str, str]:
    """The statements of a file (fragments left out)."""
    return {k: v for k, v in queries.parse(queries.read_resource("sql", fname)).items()
            if not k.startswith("fragment:")}


@pytest.mark.parametrize("fname", FILES)
def test_every_file_parses_into_named_queries_without_duplicates(fname):
    text = queries.read_resource("sql", fname)
    named = parsed(fname)
    headers = re.findall(r"^--\s*name:\s*(\S+)\s*$", text, flags=re.M)
    assert headers and len(headers) == len(set(headers)) == len(named)
    for name, sql in named.items():
        assert re.fullmatch(r"[a-z0-9_]+", name)
        assert sql and not sql.endswith(";"), name
        assert "-- name:" not in sql


def test_fragments_are_included_where_named_and_never_loaded_as_queries():
    for dialect in DIALECTS:
        loaded = queries.load(dialect)
        assert not any(k.startswith("fragment:") for k in loaded)
        assert not [name for name, sql in loaded.items() if "{{include" in sql]
        assert "t.status = 'pending'" in loaded["claim_pick" if dialect == "sqlite" else "claim_all"] and "t.status = 'pending'" in loaded["claim_prospect"]
    with pytest.raises(KeyError):
        queries._include("SELECT 1 WHERE {{include nothing}}", {})


def test_a_fragment_may_include_another_but_not_itself_in_a_cycle():
    fragments = {"fragment:outer": "SELECT id FROM t WHERE {{include inner}}", "fragment:inner": "x = 1"}
    assert queries._include("{{include outer}} LIMIT 1", fragments) == "SELECT id FROM t WHERE x = 1 LIMIT 1"
    loaded = queries.load("sqlite")
    assert "INDEXED BY task_batch_pending" in loaded["claim_pick_batch"] and loaded["claim_pick_batch"].endswith(
        "LIMIT :n") and "INDEXED BY task_batch_pending" in loaded["claim_prospect"]
    with pytest.raises(ValueError, match="cycle"):
        queries._include("{{include a}}", {"fragment:a": "{{include b}}", "fragment:b": "{{include a}}"})


def test_a_fragment_included_using_an_alias_reads_its_parameters_from_that_row():
    fragments = {"fragment:fits": "(CAST(:cpu AS REAL) IS NULL OR t.cpu <= :cpu) AND t.kind = 'a::b'"}
    assert queries._include("SELECT 1 FROM t, w WHERE {{include fits using w}} AND t.id = :id", fragments) == \
        "SELECT 1 FROM t, w WHERE (CAST(w.cpu AS REAL) IS NULL OR t.cpu <= w.cpu) AND t.kind = 'a::b' AND t.id = :id"
    assert queries._include("{{include fits}}", fragments) == fragments["fragment:fits"]


def test_a_name_defined_twice_is_refused():
    with pytest.raises(ValueError, match="twice"):
        queries.parse("-- name: a\nSELECT 1\n\n-- name: a\nSELECT 2\n")


def test_parse_splits_on_headers_and_strips_the_trailing_semicolon():
    assert queries.parse("-- a file comment\n-- name: one\nSELECT 1;\n\n--name:two\nSELECT\n  2\n") == {
        "one": "SELECT 1", "two": "SELECT\n  2"}


def test_no_shared_query_is_overridden_by_both_dialects():
    shared = set(parsed("queries.sql"))
    assert not shared & set(parsed("sqlite.sql")) & set(parsed("postgres.sql")), "dead shared query text"


def test_every_query_the_shared_store_code_names_exists_in_both_dialects():
    import inspect

    from scitq_app.store import admin, batches, dispatcher, protocol, tasks
    source = "".join(inspect.getsource(m) for m in (admin, batches, tasks, protocol, dispatcher))
    used = set(re.findall(r"tx\.(?:all|one|value|run|insert|many)\(\s*\"([a-z0-9_]+)\"", source))
    used |= set(re.findall(r"\(\s*\"([a-z0-9_]+)\",\s*\{", source))  # (NAME, {params}): pipeline, finish
    used |= {f"output_size_{s}" for s in ("stdout", "stderr")}  # named with an f-string
    assert len(used) > 40
    # the one dialect-specific operation: PostgreSQL claims in one statement, SQLite in steps
    # (protocol._CLAIMS)
    only = {"claim_all": "postgres", "claim_pick": "sqlite"}
    for dialect in DIALECTS:
        assert {q for q in used if only.get(q, dialect) == dialect} - set(queries.load(dialect)) == set(), dialect
    # PostgreSQL runs tx.many(NAME) as one statement over a JSON array: NAME_json
    bulk = set(re.findall(r"tx\.many\(\s*\"([a-z0-9_]+)\"", source))
    assert bulk and {b + "_json" for b in bulk} <= set(queries.load("postgres"))


@pytest.mark.parametrize("dialect", DIALECTS)
def test_macros_expand_in_every_loaded_query(dialect):
    loaded = queries.load(dialect)
    assert set(loaded) == set(parsed("queries.sql")) | set(parsed(f"{dialect}.sql"))
    for name, sql in loaded.items():
        assert "{{" not in sql and "}}" not in sql, name
    assert "json_each(:ids)" in loaded["task_status_by_ids"] if dialect == "sqlite" else \
        "json_array_elements_text(CAST(:ids AS json))" in loaded["task_status_by_ids"]


def test_macros_expand_per_dialect():
    assert queries.expand("x IN {{ints :ids}}", "sqlite") == \
        "x IN (SELECT CAST(value AS INTEGER) FROM json_each(:ids))"
    assert queries.expand("x IN {{strs :names}}", "postgres") == \
        "x IN (SELECT value FROM json_array_elements_text(CAST(:names AS json)))"
    assert queries.expand("no macro", "sqlite") == "no macro"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_ddl_placeholders_are_all_replaced(dialect):
    files = ["schema.sql", "versions.sql"] + [f"migrations/{m}" for m in queries.list_resources("sql", "migrations")
                                              if m.endswith(".sql")]
    for f in files:
        text = queries.ddl(queries.read_resource("sql", *f.split("/")), dialect)
        assert not re.search(r"\{[a-z]+\}", text), f
        assert queries.split_statements(text), f


def test_split_statements_drops_comments_and_blank_pieces():
    assert queries.split_statements("-- c\nCREATE TABLE a (x INT);\n\n-- d\nCREATE INDEX i ON a (x);\n") == [
        "CREATE TABLE a (x INT)", "CREATE INDEX i ON a (x)"]


def test_every_loaded_query_compiles_against_the_schema(make_store, database_url, backend):
    make_store()  # an initialised schema
    loaded = queries.load(backend)
    failures = []
    if backend == "sqlite":
        con = sqlite3.connect(database_url[len("sqlite:///"):])
        try:
            for name, sql in loaded.items():
                try:
                    con.execute("EXPLAIN " + sql, defaultdict(lambda: None))
                except sqlite3.Error as e:
                    failures.append(f"{name}: {e}")
        finally:
            con.close()
    else:
        import pg8000.native

        from scitq_app.store.postgres import parse_url
        con = pg8000.native.Connection(**parse_url(database_url))
        try:
            for name, sql in loaded.items():
                try:
                    con.prepare(sql).close()
                except pg8000.native.DatabaseError as e:
                    failures.append(f"{name}: {e.args[0].get('M') if e.args else e}")
        finally:
            con.close()
    assert failures == []



def test_positional_parameters_keep_the_order_and_repeats_of_the_named_ones():
    sql = "INSERT INTO t (a, b, c, d) VALUES (:a, CAST(:b AS TEXT), :now, :now) -- x::y"
    assert queries.positional(sql) == "INSERT INTO t (a, b, c, d) VALUES (?, CAST(? AS TEXT), ?, ?) -- x::y"
    assert queries.in_order(sql)({"a": 1, "b": "two", "now": 3.5, "unused": 0}) == (1, "two", 3.5, 3.5)
    assert queries.in_order("DELETE FROM t WHERE id = :id")({"id": 7}) == (7,)


def test_copy_text_escapes_what_copy_gives_a_meaning_and_writes_null_as_such():
    from scitq_app.store.postgres import copy_text
    rows = [(1, "a\tb", None, 2.5), (2, "line\nnext\r\\.", "", 0)]
    assert copy_text(rows) == "1\ta\\tb\t\\N\t2.5\n2\tline\\nnext\\r\\\\.\t\t0\n"
    assert copy_text([]) == ""
    # each special character alone, at either end, and a text without any
    assert copy_text([("\\", "\tx", "x\n", "\r", "plain")]) == "\\\\\t\\tx\tx\\n\t\\r\tplain\n"


@pytest.mark.parametrize("value", [[], ["s3://b/in/1.fq"], ["é ✓ 𝄞", 'say "hi"', "a\\b", "\t\n\x00\x1f", ""],
                                   [1, 2], ["a", 1], [["a"]], {"b": 1, "a": [2]}, "text", None])
def test_dumps_writes_what_the_json_module_writes(value):
    # lists of texts take a shorter way (a bulk's inputs and resources): the same text
    import json

    from scitq_app.store.backend import dumps
    assert dumps(value) == json.dumps(value, separators=(",", ":"), sort_keys=True)


def test_the_claim_rule_names_every_status_a_worker_may_claim_from_and_only_those():
    from scitq_app.models import WorkerStatus
    fragment = queries.parse(queries.read_resource("sql", "queries.sql"))["fragment:claim_room"]
    listed = set(re.findall(r"'([a-z]+)'", re.search(r":status IN \(([^)]*)\)", fragment).group(1)))
    # all but the workers evicted or destroyed: offline and lost ones are revived by the claim itself
    assert listed == {s.value for s in WorkerStatus} - {WorkerStatus.EVICTED.value, WorkerStatus.DESTROYED.value}
