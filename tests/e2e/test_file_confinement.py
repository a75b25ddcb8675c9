"""End to end, as an attacker holding only a user token: file:// URIs reach only the file roots
(the server refuses at submission, each worker again after resolving symlinks), an output symlink
never carries a secret out, and a resource archive cannot write outside its folder, even when
the worker runs on Debian's /usr/bin/python3 (no tarfile data filter). Each case asserts the
secret's bytes are absent, not only a status."""
from __future__ import annotations

import io
import os
import sys
import tarfile

import pytest

from scitq_app.errors import Invalid
from tests.support.cluster import Cluster
from tests.support.system import need

pytestmark = pytest.mark.slow

SECRET = b"admin_token = 9f2c-the-secret-bytes-4e1d\n"
RCLONE = os.path.join(os.path.dirname(sys.executable), "rclone")
DEBIAN_PYTHON = "/usr/bin/python3"


@pytest.fixture
def world(database_url, tmp_path):
    """A server allowing file:// under SHARED; a secret outside every root; worker roots chosen per test."""
    shared = tmp_path / "shared"
    (shared / "ok").mkdir(parents=True)
    (shared / "other").mkdir()
    secret = tmp_path / "scitq.conf"
    secret.write_bytes(SECRET)
    (tmp_path / "cluster").mkdir()
    c = Cluster(database_url, str(tmp_path / "cluster"), env={"SCITQ_SERVER_FILE_ROOTS": str(shared)}).start()
    try:
        yield c, shared, secret
    except BaseException:
        print(c.diagnostics())
        raise
    finally:
        c.stop()


def _all_bytes_under(root) -> list[str]:
    """Every file under `root` (symlinks not followed) whose content holds the secret."""
    found = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p) and os.path.isfile(p):
                with open(p, "rb") as f:
                    if SECRET.strip() in f.read():
                        found.append(p)
    return found


def _text(cluster: Cluster, tid: int) -> str:
    return cluster.output(tid, "stdout") + cluster.output(tid, "stderr")


def test_file_uris_outside_the_servers_roots_are_refused_at_submission(world):
    cluster, shared, secret = world
    client = cluster.client
    for fields in ({"inputs": ["file:///etc/scitq.conf"]}, {"inputs": [f"file://{secret}"]},
                   {"resources": ["file:///root/refs.tar|untar"]}, {"output": "file:///root/.ssh/"},
                   {"inputs": [f"file://{shared}-evil/x"]}):
        with pytest.raises(Invalid) as e:
            client.submit("true", **fields)
        assert e.value.http_status == 422 and f"[server] file_roots: {shared}" in e.value.message
    with pytest.raises(Invalid, match=r"\[server\] file_roots"):
        client.submit_many([{"command": "true"}, {"command": "true", "inputs": ["file:///etc/shadow"]}])
    tid = client.submit("true", inputs=[f"file://{shared}/ok/in.txt"], status="paused")["ids"][0]
    with pytest.raises(Invalid, match=r"\[server\] file_roots"):
        client.update_task(tid, output="file:///etc/cron.d/")
    assert client.counts().get("pending", 0) == 0 and len(list(client.tasks())) == 1, "nothing refused was created"


def test_an_output_symlink_to_a_secret_uploads_nothing_of_it(world, tmp_path):
    cluster, shared, secret = world
    outside = tmp_path / "outside-dir"
    outside.mkdir()
    cluster.worker("uploader", env={"SCITQ_WORKER_FILE_ROOTS": str(shared / "ok")})
    out = shared / "ok" / "results"
    script = (f"echo result > $OUTPUT/result.txt; ln -s {secret} $OUTPUT/x; ln -s {tmp_path} $OUTPUT/dir; "
              f"mkdir $OUTPUT/sub; ln -s {secret} $OUTPUT/sub/y; ln -s {outside} $OUTPUT/.scitq-logs; echo done")
    tid = cluster.client.submit(script, shell="sh", output=f"file://{out}/")["ids"][0]
    task = cluster.wait_final([tid], 60)[tid]
    assert task["status"] == "succeeded", _text(cluster, tid)
    assert (out / "result.txt").read_bytes() == b"result\n"
    assert not os.path.lexists(out / "x") and not os.path.lexists(out / "dir")
    assert not os.path.lexists(out / "sub" / "y")
    assert (out / ".scitq-logs" / str(tid) / "stdout.log").read_bytes() == b"done\n", "the logs still travel"
    assert _all_bytes_under(out) == [] and _all_bytes_under(shared) == []
    assert os.listdir(outside) == [], "the worker wrote nothing through the task's .scitq-logs symlink"
    assert "not uploaded (symlinks and special files are never followed)" in cluster.output(tid, "stderr")
    assert SECRET.strip().decode() not in _text(cluster, tid)
    assert cluster.client.executions(tid)[0]["output_files"] == ["result.txt"]


def test_a_worker_narrower_than_the_server_refuses_with_class_staging(world):
    cluster, shared, secret = world
    (shared / "other" / "data.txt").write_bytes(b"other data\n")
    os.symlink(secret, shared / "ok" / "innocent.txt")  # inside the roots as written, outside once resolved
    cluster.worker("narrow", env={"SCITQ_WORKER_FILE_ROOTS": str(shared / "ok")})
    cases = {
        "outside": cluster.client.submit("cat $INPUT/*", shell="sh", inputs=[f"file://{shared}/other/data.txt"]),
        "symlink": cluster.client.submit("cat $INPUT/*", shell="sh", inputs=[f"file://{shared}/ok/innocent.txt"]),
        "output": cluster.client.submit("echo ran > $OUTPUT/ran", shell="sh", output=f"file://{shared}/other/out/"),
    }
    ids = {k: v["ids"][0] for k, v in cases.items()}
    final = cluster.wait_final(list(ids.values()), 60)
    for case, tid in ids.items():
        execution = cluster.client.executions(tid)[0]
        assert final[tid]["status"] == "failed" and execution["failure_class"] == "staging", case
        stderr = cluster.output(tid, "stderr")
        assert "outside this worker's file roots" in stderr and f"[worker] file_roots: {shared / 'ok'}" in stderr
        assert SECRET.strip().decode() not in _text(cluster, tid)
    assert not (shared / "other" / "out").exists(), "the output was refused before the command ran"
    assert _all_bytes_under(cluster.workdir) == []


def _chained_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, target in (("sub", None), ("sub/l", ".."), ("sub/l/l2", ".."), ("sub/l/l2/x", b"pwned")):
            info = tarfile.TarInfo(name)
            if target is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(target, bytes):
                info.size = len(target)
                tar.addfile(info, io.BytesIO(target))
            else:
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize("python", ["venv", "debian"])
def test_a_chained_symlink_archive_fails_staging_and_writes_nothing_outside(world, tmp_path, python):
    cluster, shared, _ = world
    env = {"SCITQ_WORKER_FILE_ROOTS": str(shared / "ok"), "SCITQ_WORKER_RCLONE": RCLONE}
    prefix = None
    if python == "debian":
        need(os.path.exists(DEBIAN_PYTHON), "no /usr/bin/python3 on this machine")
        # the worker under Debian's own Python (3.11.2 here: no tarfile data filter), with the one
        # package the pyz would bundle for it (docopt) and nothing else of the venv
        import docopt
        deps = tmp_path / "deps"
        deps.mkdir()
        os.symlink(os.path.dirname(docopt.__file__), deps / "docopt")
        env["PYTHONPATH"] = str(deps)
        prefix = ["sh", "-c", f'shift; exec {DEBIAN_PYTHON} "$@"', "sh"]
    (shared / "ok" / "evil.tar").write_bytes(_chained_tar())
    cluster.worker("extractor", env=env, **({"prefix": prefix} if prefix else {}))
    tid = cluster.client.submit("ls -R $RESOURCE", shell="sh",
                                resources=[f"file://{shared}/ok/evil.tar|untar"])["ids"][0]
    task = cluster.wait_final([tid], 60)[tid]
    execution = cluster.client.executions(tid)[0]
    assert task["status"] == "failed" and execution["failure_class"] == "staging"
    stderr = cluster.output(tid, "stderr")
    assert "member 'sub/l/l2' goes through a link made earlier" in stderr, stderr
    pwned = [os.path.join(d, n) for d, _, ns in os.walk(tmp_path) for n in ns
             if n == "x" and not os.path.islink(os.path.join(d, n))]
    assert pwned == [], f"the archive wrote {pwned}"
    if python == "debian":  # it really was Debian's Python that extracted (sh exec'd it in place)
        assert os.path.realpath(f"/proc/{cluster.workers[0].proc.pid}/exe") == os.path.realpath(DEBIAN_PYTHON)
