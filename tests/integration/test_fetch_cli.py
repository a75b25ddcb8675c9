"""`scitq fetch copy|list|sync|delete` against a real S3 server (`rclone serve s3`)."""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from tests.integration.conftest import cli
from tests.support.storage import StorageServer, write_config


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = StorageServer("s3", remote="lab").start()
    try:
        server.conf = write_config(str(tmp_path_factory.mktemp("fetch") / "rclone.conf"), server)
        yield server
    finally:
        server.stop()


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def fetch(s3: StorageServer, *args: str, env: dict[str, str] | None = None):
    return cli("fetch", *args, "--rclone-config", s3.conf, env=env)


def test_copy_up_list_copy_down_sync_and_delete(s3, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(70_000))
    r = fetch(s3, "copy", str(src) + "/", s3.uri("fetch/set/"))
    assert r.code == 0, r
    assert read_bytes(s3.local("fetch/set/sub/b.bin")) == (src / "sub" / "b.bin").read_bytes()

    r = fetch(s3, "list", "--recursive", "--json", s3.uri("fetch/set/"))
    assert r.code == 0, r
    rows = {e["path"]: e for e in r.json()}
    assert rows["a.txt"]["size"] == 6 and rows["a.txt"]["uri"] == s3.uri("fetch/set/a.txt")
    assert rows["sub"]["is_dir"] and rows["sub/b.bin"]["size"] == 70_000
    r = fetch(s3, "list", s3.uri("fetch/set/"))
    assert r.code == 0 and r.out.splitlines()[0].split() == ["SIZE", "MODIFIED", "URI"], r
    assert s3.uri("fetch/set/a.txt") in r.out and s3.uri("fetch/set/sub/") in r.out
    r = fetch(s3, "list", "--json", s3.uri("fetch/set/a.txt"))
    assert [e["uri"] for e in r.json()] == [s3.uri("fetch/set/a.txt")], r

    down = tmp_path / "down"
    r = fetch(s3, "copy", s3.uri("fetch/set/a.txt"), s3.uri("fetch/set/sub/b.bin"), str(down) + "/")
    assert r.code == 0, r
    assert sorted(os.listdir(down)) == ["a.txt", "b.bin"]
    r = fetch(s3, "copy", s3.uri("fetch/set/a.txt"), str(tmp_path / "renamed.txt"))
    assert r.code == 0 and (tmp_path / "renamed.txt").read_bytes() == b"alpha\n", r

    (src / "a.txt").unlink()
    (src / "c.txt").write_text("gamma\n")
    r = fetch(s3, "sync", str(src) + "/", s3.uri("fetch/set/"))
    assert r.code == 0, r
    assert sorted(e["path"] for e in fetch(s3, "list", "-R", "--json", s3.uri("fetch/set/")).json()
                  if not e["is_dir"]) == ["c.txt", "sub/b.bin"]

    r = fetch(s3, "delete", s3.uri("fetch/set/c.txt"))
    assert r.code == 0 and not os.path.exists(s3.local("fetch/set/c.txt")), r
    r = fetch(s3, "delete", s3.uri("fetch/set/"))
    assert r.code == 0, r
    r = fetch(s3, "list", s3.uri("fetch/set/"))
    assert r.code == 4 and len(r.err_lines) == 1 and "nothing there" in r.err, r


def test_errors_are_one_line_with_a_non_zero_exit(s3, tmp_path):
    r = fetch(s3, "copy", s3.uri("fetch/nope.txt"), str(tmp_path) + "/")
    assert r.code == 4 and len(r.err_lines) == 1 and r.err.startswith("scitq: "), r
    r = fetch(s3, "copy", "elsewhere://bucket/x", str(tmp_path) + "/")
    assert r.code == 2 and r.err_lines == ["scitq: elsewhere://bucket/x: unknown remote 'elsewhere' "
                                           f"(not in {s3.conf})"], r
    r = fetch(s3, "copy", "lab://bucket/../etc/passwd", str(tmp_path) + "/")
    assert r.code == 2 and "'..'" in r.err and len(r.err_lines) == 1, r
    r = fetch(s3, "copy", s3.uri("only-one"))  # a usage error: the line, then the usage
    assert r.code == 2 and r.err_lines[:2] == ["scitq fetch copy: copy needs a source and a destination", "Usage:"], r
    r = cli("fetch", "list", s3.uri(""), "--rclone-config", str(tmp_path / "missing.conf"))
    assert r.code == 2 and "does not exist" in r.err, r
    r = fetch(s3, "list", "lab://nobucket-here/", env={"RCLONE_LOW_LEVEL_RETRIES": "1"})
    assert r.code != 0 and len(r.err_lines) == 1 and "Traceback" not in r.err, r


def test_a_long_transfer_shows_its_progress(s3, tmp_path):
    big = tmp_path / "big.bin"
    data = os.urandom(6 * 1024 * 1024)
    big.write_bytes(data)
    r = fetch(s3, "copy", "--progress", str(big), s3.uri("fetch/big/"), env={"RCLONE_BWLIMIT": "3M"})
    assert r.code == 0, r
    lines = [ln for ln in r.err_lines if "%" in ln]
    assert lines and "MiB" in lines[-1] and "files" in lines[-1], r
    assert r.err_lines[-1].startswith("done: 100%  6.0 MiB / 6.0 MiB") and " in " in r.err_lines[-1], r
    assert "\r" not in r.err and "\x1b" not in r.err, "no terminal codes off a terminal"
    r = fetch(s3, "copy", "--json", str(big), s3.uri("fetch/big3/"), env={"RCLONE_BWLIMIT": "3M"})
    events = [json.loads(line) for line in r.out.splitlines()]
    assert r.code == 0 and r.err == "" and events[-1]["event"] == "done", r
    assert events[-1]["done"] == events[-1]["total"] == len(data) and events[-1]["unit"] == "bytes", events
    assert hashlib.sha256(read_bytes(s3.local("fetch/big/big.bin"))).hexdigest() == hashlib.sha256(data).hexdigest()
    r = fetch(s3, "copy", str(big), s3.uri("fetch/big2/"))
    assert r.code == 0 and r.err == "", "no progress when stderr is not a terminal, unless asked"
    assert json.loads(fetch(s3, "list", "--json", s3.uri("fetch/big2/")).out)[0]["size"] == len(data)
