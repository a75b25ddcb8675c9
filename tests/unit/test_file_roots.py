"""file:// confinement: the roots options, the server's lexical check (through the same
`schema.validate` every submission route uses), the worker's check with symlinks resolved,
and the upload snapshot that never follows a symlink out of output/."""
from __future__ import annotations

import os

import pytest

from scitq_app.errors import ConfigError, Invalid
from scitq_app.job import StagingError
from scitq_app.roots import lexically_under, parse_roots, resolve
from scitq_app.schema import validate
from scitq_app.staging import RcloneStager, snapshot
from scitq_app.uris import parse


def test_roots_are_comma_separated_absolute_paths():
    assert parse_roots("", "[server] file_roots") == ()
    assert parse_roots(" /data/ , /scratch/./x,/data", "[server] file_roots") == ("/data", "/scratch/x")
    for bad in ("data", "/data,relative", "/data/../etc"):
        with pytest.raises(ConfigError, match=r"\[worker\] file_roots"):
            parse_roots(bad, "[worker] file_roots")


@pytest.mark.parametrize("path,inside", [
    ("/data/r1.fq", True), ("/data", True), ("/data/sub/dir/", True), ("/data//x", True),
    ("/database/x", False), ("/dat", False), ("/etc/scitq.conf", False), ("/data/../etc/passwd", False),
    ("/", False),
])
def test_the_server_compares_whole_components_not_string_prefixes(path, inside):
    assert lexically_under(path, ("/data", "/scratch")) is inside


def test_every_submission_shape_refuses_file_uris_outside_the_roots_with_the_option_named():
    roots = ("/data",)
    ok = validate("task_create", {"command": "true", "inputs": ["file:///data/a"], "output": "file:///data/out"},
                  file_roots=roots)
    assert ok["output"] == "file:///data/out/"
    for kind, body, field in [
        ("task_create", {"command": "true", "inputs": ["file:///etc/scitq.conf"]}, "inputs[0]"),
        ("task_create", {"command": "true", "resources": ["file:///root/x.tar|untar"]}, "resources[0]"),
        ("task_create", {"command": "true", "output": "file:///root/.ssh/"}, "output"),
        ("task_bulk", {"tasks": [{"command": "true"}, {"command": "true", "inputs": ["file:///database/x"]}]},
         "tasks[1].inputs[0]"),
        ("task_update", {"output": "file:///etc/"}, "output"),
    ]:
        with pytest.raises(Invalid) as e:
            validate(kind, body, partial=kind == "task_update", file_roots=roots)
        assert e.value.data["field"] == field and "[server] file_roots: /data" in e.value.message
        assert e.value.data["rule"] == "file_roots" and e.value.http_status == 422
    with pytest.raises(Invalid, match=r"\[server\] file_roots is empty, so every file:// URI is refused"):
        validate("task_create", {"command": "true", "inputs": ["file:///data/a"]}, file_roots=())
    # without roots given (the CLI, `scitq fetch`) nothing is confined
    assert parse("file:///etc/hosts").path == "/etc/hosts"


def test_the_worker_resolves_symlinks_before_comparing(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    (root / "sub" / "f").write_bytes(b"f")
    os.symlink(outside, root / "escape")
    os.symlink(root / "sub" / "f", root / "alias")
    assert resolve(str(root / "sub" / "f"), [str(root)]) == str(root / "sub" / "f")
    assert resolve(str(root / "alias"), [str(root)]) == str(root / "sub" / "f"), "a link inside stays inside"
    assert resolve(str(root / "escape" / "secret"), [str(root)]) is None
    assert resolve(str(root / "escape" / "new-dir") + "/", [str(root)]) is None, "an output not made yet"
    assert resolve(str(root / "sub" / ".." / "sub" / "f"), [str(root)]) is None, "'..' is refused outright"
    assert resolve(str(tmp_path / "rootx"), [str(root)]) is None
    # a root that is itself a symlink is compared by its real path
    os.symlink(root, tmp_path / "via")
    assert resolve(str(root / "sub" / "f"), [str(tmp_path / "via")]) == str(root / "sub" / "f")


def test_the_stager_refuses_file_uris_outside_its_roots_before_anything_runs(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    stager = RcloneStager(str(tmp_path / "work"), str(tmp_path / "rclone.conf"), file_roots=[str(root)])
    dirs = {"input": str(tmp_path / "in"), "resource": str(tmp_path / "res"), "output": str(tmp_path / "out")}
    for execution, what in [({"inputs": ["file:///etc/scitq.conf"]}, "input file:///etc/scitq.conf"),
                            ({"resources": [f"file://{tmp_path}/x.tar|untar"]}, "resource file://"),
                            ({"output": f"file://{tmp_path}/elsewhere/"}, "output file://")]:
        with pytest.raises(StagingError) as e:
            stager.stage_in({"id": 1, **execution}, dirs, None)
        assert e.value.message.startswith(what) and f"[worker] file_roots: {root}" in e.value.message
    with pytest.raises(StagingError, match=r"\[worker\] file_roots is empty"):
        RcloneStager(str(tmp_path / "w2"), "x").stage_in({"id": 1, "inputs": [f"file://{root}/a"]}, dirs, None)


def test_the_upload_snapshot_never_follows_a_symlink(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"TOP SECRET")
    out = tmp_path / "exec" / "output"
    (out / "sub").mkdir(parents=True)
    (out / "result.txt").write_bytes(b"result")
    (out / "sub" / "deep.txt").write_bytes(b"deep")
    os.symlink(secret, out / "x")                      # ln -s /etc/scitq.conf $OUTPUT/x
    os.symlink(tmp_path, out / "dirlink")              # a whole directory out
    os.symlink("result.txt", out / "inner")            # even one pointing inside: never followed
    os.mkfifo(out / "fifo")
    (out / ".scitq-logs").mkdir()                      # reserved: the worker's logs go there
    os.symlink(tmp_path, out / ".scitq-logs" / "7")
    dest = tmp_path / "exec" / ".upload"
    files, skipped = snapshot(str(out), str(dest), exclude_top=[".scitq-logs"])
    assert files == ["result.txt", "sub/deep.txt"]
    assert skipped == ["dirlink", "fifo", "inner", "x"]
    found = {os.path.relpath(os.path.join(d, n), dest) for d, ds, ns in os.walk(dest) for n in ds + ns}
    assert found == {"result.txt", "sub", "sub/deep.txt"}
    assert not any(os.path.islink(os.path.join(dest, p)) for p in found)
    assert os.stat(dest / "result.txt").st_ino == os.stat(out / "result.txt").st_ino, "hard-linked, not copied"
    # output/ itself swapped for a symlink: nothing is uploaded from it
    os.rename(out, tmp_path / "exec" / "real-output")
    os.symlink(tmp_path, out)
    with pytest.raises(StagingError, match="not a directory"):
        snapshot(str(out), str(dest))
