"""Request validation: strict types, the first bad field named."""
from __future__ import annotations

import math

import pytest

from scitq_app.errors import Invalid
from scitq_app.schema import MAX_BULK, SPECS, json_schema, validate


def invalid(kind: str, payload, **kw) -> Invalid:
    with pytest.raises(Invalid) as info:
        validate(kind, payload, **kw)
    return info.value


def test_a_minimal_task_gets_its_defaults():
    assert validate("task_create", {"command": "true"}) == {"command": "true", "batch": "Default",
                                                            "shell": "none"}


def test_a_full_task_is_kept_as_given():
    body = {"command": "bwa mem\tref.fa\nr.fq", "name": "n", "batch": "b.1", "shell": "bash", "container": "c",
            "container_options": "--rm", "inputs": ["s3://b/x"], "resources": ["s3://b/r.tgz|untar"],
            "output": "s3://b/o/", "priority": -3, "cpu": 1.5, "mem": 2, "gpu": 0, "disk": None,
            "max_retries": 2, "download_timeout": 60, "run_timeout": 3600, "use_cache": False,
            "requires": [1, "a"], "ref": "r", "status": "paused"}
    assert validate("task_create", body) == body


@pytest.mark.parametrize("field,value,message", [
    ("priority", "4", "must be an integer, not string"),
    ("priority", True, "must be an integer, not boolean"),
    ("priority", 4.0, "must be an integer, not number"),
    ("max_retries", False, "must be an integer"),
    ("gpu", "1", "must be an integer"),
    ("cpu", "2", "must be a number, not string"),
    ("cpu", True, "must be a number, not boolean"),
    ("cpu", math.nan, "finite"),
    ("mem", math.inf, "finite"),
    ("disk", -math.inf, "finite"),
    ("use_cache", 1, "must be true or false, not integer"),
    ("use_cache", "true", "must be true or false"),
    ("command", 42, "must be a string, not integer"),
    ("command", ["echo", "x"], "must be a string, not array"),
    ("command", None, "must not be null"),
    ("shell", "zsh", "must be one of none, sh, bash"),
    ("status", "running", "must be one of pending, paused"),
    ("max_retries", -1, "at least 0"),
    ("max_retries", 1001, "at most 1000"),
    ("run_timeout", 0, "at least 1"),
    ("gpu", 65, "at most 64"),
    ("inputs", "s3://b/../x", "'..'"),
    ("inputs", [3], "must be a URI string"),
    ("resources", ["s3://b/x|explode"], "unknown action"),
    ("output", "s3://b/o|untar", "only allowed on resources"),
    ("requires", [0], "at least 1"),
    ("requires", [True], "must be an integer"),
    ("requires", "a", "must be an array"),
    ("requires", [1.5], "must be an integer"),
])
def test_strict_types_and_ranges(field, value, message):
    err = invalid("task_create", {"command": "true", field: value})
    assert err.data["field"].startswith(field)
    assert message in err.message


@pytest.mark.parametrize("command", ["", "   ", "\n\t"])
def test_an_empty_command_is_refused(command):
    err = invalid("task_create", {"command": command})
    assert err.data["field"] == "command" and "must not be empty" in err.message


def test_a_missing_command_is_required():
    err = invalid("task_create", {"name": "x"})
    assert err.data["field"] == "command" and "is required" in err.message


@pytest.mark.parametrize("field", ["command", "name", "container", "ref"])
def test_a_nul_byte_is_refused(field):
    err = invalid("task_create", {"command": "true", field: "a\x00b"})
    assert err.data["field"] == field and "NUL" in err.message


@pytest.mark.parametrize("value", ["a\x1bb", "a\x07", "\x7f"])
def test_control_characters_are_refused(value):
    err = invalid("task_create", {"command": value})
    assert "control character" in err.message


@pytest.mark.parametrize("value, message", [
    ("a\ud800b", "lone surrogate"), ("x" * 10_001, "longer than 10000"), ("\x00" + "x" * 10_001, "NUL"),
    ("\x1b" + "x" * 10_001, "longer than 10000"), ("x" * 10_001 + "\ud800", "longer than 10000")])
def test_a_text_gets_the_first_refusal_in_the_order_of_the_checks(value, message):
    # NUL, then length, then control characters, then surrogates, whichever scan finds them
    err = invalid("task_create", {"command": "true", "container": value})
    assert err.data["field"] == "container" and message in err.message


@pytest.mark.parametrize("uri, message", [("s3://b/a\x00b", "NUL byte"), ("s3://b/a\x1bb", "control character"),
                                          ("s3://b/a\nb", "control character")])
def test_a_uri_with_a_control_character_is_refused_by_its_kind(uri, message):
    err = invalid("task_create", {"command": "true", "inputs": ["s3://b/ok", uri]}, remotes=["s3"])
    assert err.data["field"] == "inputs[1]" and message in err.message


@pytest.mark.parametrize("name", ["", "has space", "new\nline", "-leading-dash", "x" * 201, "é", "a/b"])
def test_bad_names_are_refused(name):
    err = invalid("task_create", {"command": "true", "batch": name})
    assert err.data["field"] == "batch"


def test_an_unknown_field_is_refused_by_name():
    err = invalid("task_create", {"command": "true", "comand": "typo"})
    assert err.data["field"] == "comand" and "unknown field" in err.message


def test_a_body_must_be_an_object():
    for payload in ([], "x", None, 3):
        invalid("task_create", payload)


def test_a_bulk_item_error_names_its_place():
    ok = {"command": "true"}
    err = invalid("task_bulk", {"tasks": [ok, ok, ok, {"command": ""}]})
    assert err.data["field"] == "tasks[3].command"
    assert err.message.startswith("tasks[3].command")
    err = invalid("task_bulk", {"tasks": [ok, {"command": "x", "inputs": ["s3://b/x", "nope"]}]})
    assert err.data["field"] == "tasks[1].inputs[1]"
    err = invalid("task_bulk", {"tasks": [ok, {"command": "x", "bogus": 1}]})
    assert err.data["field"] == "tasks[1].bogus"
    err = invalid("task_bulk", {"tasks": [ok, ok, "echo"]})
    assert err.data["field"] == "tasks[2]"


def test_a_bulk_validates_every_item_with_defaults():
    out = validate("task_bulk", {"tasks": [{"command": "a"}, {"command": "b", "batch": "x"}]})
    assert [(t["command"], t["batch"]) for t in out["tasks"]] == [("a", "Default"), ("b", "x")]


def test_a_bulk_has_a_size_limit():
    err = invalid("task_bulk", {"tasks": [{}] * (MAX_BULK + 1)})
    assert err.data["field"] == "tasks" and str(MAX_BULK) in err.message
    invalid("task_bulk", {"tasks": {"command": "x"}})


def test_updates_name_only_what_changes():
    assert validate("task_update", {"priority": 2}, partial=True) == {"priority": 2}
    assert "names no field to change" in invalid("task_update", {}, partial=True).message
    assert invalid("task_update", {"command": ""}, partial=True).data["field"] == "command"
    assert invalid("task_update", {"requires": [1]}, partial=True).data["field"] == "requires"


@pytest.mark.parametrize("kind,payload,field", [
    ("report", {"phase": "done"}, "phase"),
    ("report", {"phase": "failed", "failure_class": "bad-luck"}, "failure_class"),
    ("report", {"phase": "failed", "return_code": "1"}, "return_code"),
    ("report", {"phase": "succeeded", "output_files": ["a", 3]}, "output_files[1]"),
    ("claim", {"slots": -1}, "slots"),
    ("claim", {"slots": "2"}, "slots"),
    ("claim", {}, "slots"),
    ("heartbeat", {"executions": [1, "2"]}, "executions[1]"),
    ("heartbeat", {"stats": []}, "stats"),
    ("output", {"stream": "stdin", "offset": 0, "data": ""}, "stream"),
    ("output", {"stream": "stdout", "offset": -1, "data": ""}, "offset"),
    ("output", {"stream": "stdout", "offset": 0, "data": "", "final": "yes"}, "final"),
    ("register", {"name": "bad name"}, "name"),
    ("register", {"name": "w", "concurrency": 1.0}, "concurrency"),
    ("worker_update", {"status": "offline"}, "status"),
    ("token_create", {"name": "t", "role": "root"}, "role"),
    ("task_signal", {"action": "term"}, "action"),
    ("batch_action", {"signal": "stop"}, "signal"),
])
def test_protocol_bodies_are_strict_too(kind, payload, field):
    assert invalid(kind, payload).data["field"] == field


def test_protocol_bodies_accept_what_the_worker_sends():
    assert validate("report", {"phase": "failed", "return_code": -9, "failure_class": "oom",
                               "output_files": ["a.txt"], "peak_mem": 10, "cpu_time": 0.5, "message": None})
    assert validate("heartbeat", {"stats": {"load": 1}, "executions": [1, 2]})
    assert validate("output", {"stream": "stderr", "offset": 10, "data": "aGk=", "final": True})
    assert validate("batch_action", {"signal": None}) == {"signal": None}


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_every_body_kind_has_a_json_schema(kind):
    schema = json_schema(kind)
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(SPECS[kind])
    assert set(schema.get("required", [])) == {k for k, f in SPECS[kind].items() if f.required}
    assert all(p.get("description") for p in schema["properties"].values())
