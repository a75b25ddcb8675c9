"""The attacker suite: a **user** token against a real server and a real root worker configured the
way `install.sh worker` configures one (an unprivileged task user, its own file roots, its container
deny-list), the worker running on Debian's /usr/bin/python3 (3.11.2 here: no tarfile data filter).

Every path the security issue names fails with its documented error, and each case asserts that the
secrets' bytes (a root-only file outside every root, the worker's own token, the admin token) appear
in no response, no task output and no uploaded file, not only that a status was returned."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from scitq_app.client import Server
from scitq_app.errors import Invalid, ScitqError
from tests.support.archives import cases as archive_cases
from tests.support.cluster import Cluster
from tests.support.containers import Engine, busybox_rootfs_tar, static_busybox, suffix
from tests.support.processes import ROOT, read_text, wait_for
from tests.support.system import need

DEBIAN_PYTHON = "/usr/bin/python3"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("_attack_needs"),
]


@pytest.fixture
def _attack_needs() -> None:
    need(os.geteuid() == 0, "the worker under attack runs as root, as installed")
    need(os.path.exists(DEBIAN_PYTHON), "no Debian /usr/bin/python3")

SECRET = b"storage_secret_key = 5e1f-the-attacked-bytes-77c3"
RCLONE = os.path.join(os.path.dirname(sys.executable), "rclone")
TASK_USER = "nobody"


class Target:
    """What the attacker aims at, and what they hold: a user token."""

    def __init__(self, cluster: Cluster, base: Path, user: Server) -> None:
        self.cluster, self.base, self.user = cluster, base, user
        self.shared = base / "shared"
        self.secret = base / "secret.conf"
        self.workdir = base / "work"
        self.worker = None

    def start_worker(self, **env: str) -> None:
        # the worker on Debian's Python, with the one package the pyz would bundle for it (docopt)
        import docopt
        deps = self.base / "deps"
        deps.mkdir(exist_ok=True)
        if not (deps / "docopt").exists():
            os.symlink(os.path.dirname(docopt.__file__), deps / "docopt")
        self.worker = self.cluster.worker(
            "target", prefix=["sh", "-c", f'shift; exec {DEBIAN_PYTHON} "$@"', "sh"],
            env={"PYTHONPATH": f"{ROOT}{os.pathsep}{deps}", "SCITQ_WORKER_TASK_USER": TASK_USER,
                 "SCITQ_WORKER_WORKDIR": str(self.workdir), "SCITQ_WORKER_FILE_ROOTS": str(self.shared / "ok"),
                 "SCITQ_WORKER_RCLONE": RCLONE, **env})
        state = self.workdir / ".scitq" / "state.json"
        wait_for(lambda: state.exists(), 30, what="the attacked worker to register")
        assert os.path.realpath(f"/proc/{self.worker.proc.pid}/exe") == os.path.realpath(DEBIAN_PYTHON)

    def secrets(self) -> list[bytes]:
        found = [SECRET, self.cluster.server.admin_token.encode()]
        state = self.workdir / ".scitq" / "state.json"
        if state.exists():
            found.append(json.loads(state.read_text())["token"].encode())
        return found

    def assert_clean(self, *texts: str | bytes) -> None:
        for text in texts:
            data = text.encode() if isinstance(text, str) else text
            for secret in self.secrets():
                assert secret not in data, f"a secret leaked: {data[:300]!r}"

    def assert_no_file_holds_a_secret(self, root: Path) -> None:
        for dirpath, _, names in os.walk(root):
            for n in names:
                p = os.path.join(dirpath, n)
                if os.path.isfile(p) and not os.path.islink(p) and not p.startswith(str(self.workdir / ".scitq")) \
                        and p != str(self.secret):
                    self.assert_clean(Path(p).read_bytes())

    def run(self, command: str, **fields) -> tuple[dict, str, str]:
        tid = self.user.submit(command, shell="sh", **fields)["ids"][0]
        task = self.cluster.wait_final([tid], 90)[tid]
        out, err = self.cluster.output(tid), self.cluster.output(tid, "stderr")
        self.assert_clean(out, err, json.dumps(task), json.dumps(self.user.executions(tid)))
        return task, out, err


@contextmanager
def attacked(database_url: str, **server_env: str) -> Iterator[Target]:
    """A server (with `server_env`) whose only root-owned secret sits outside every file root, and an
    attacker's user token for it; the worker is started by each test."""
    base = Path(tempfile.mkdtemp(prefix="scitq-attack-", dir="/var/tmp"))
    os.chmod(base, 0o711)  # the task user reaches its work dir through it
    try:
        (base / "shared" / "ok").mkdir(parents=True)
        (base / "secret.conf").write_bytes(SECRET)
        os.chmod(base / "secret.conf", 0o600)
        (base / "cluster").mkdir()
        cluster = Cluster(database_url, str(base / "cluster"),
                          env={"SCITQ_SERVER_FILE_ROOTS": str(base / "shared"), **server_env}).start()
        try:
            assert cluster.client is not None
            secret = cluster.client.create_token("attacker", "user")["secret"]
            with Server(cluster.server.url, secret) as user:
                yield Target(cluster, base, user)
        except BaseException:
            print(cluster.diagnostics())
            raise
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(base)


@pytest.fixture
def target(database_url) -> Iterator[Target]:
    with attacked(database_url) as t:
        yield t


def test_file_uris_outside_the_roots_or_with_dotdot_are_refused_at_submission(target: Target):
    s = target.shared
    for fields in ({"inputs": [f"file://{target.secret}"]}, {"output": "file:///root/.ssh/"},
                   {"resources": [f"file://{s}/ok/../../secret.conf"]}, {"inputs": [f"file://{s}/ok/../ok/x"]},
                   {"output": f"file://{target.base}/"}):
        with pytest.raises(Invalid) as e:
            target.user.submit("true", **fields)
        target.assert_clean(e.value.message)
        uri = (fields.get("inputs") or fields.get("resources") or [fields.get("output")])[0]
        # '..' is refused as such, before the roots are even looked at
        expected = "'..' path segments are not allowed" if "/../" in uri else "file_roots"
        assert expected in e.value.message, e.value.message


def test_an_input_symlink_inside_the_roots_to_a_secret_fails_staging(target: Target):
    target.start_worker()
    os.symlink(target.secret, target.shared / "ok" / "innocent.txt")
    task, _, err = target.run("cat $INPUT/innocent.txt", inputs=[f"file://{target.shared}/ok/innocent.txt"])
    assert task["status"] == "failed"
    assert target.user.executions(task["id"])[0]["failure_class"] == "staging"
    assert "outside this worker's file roots" in err
    target.assert_no_file_holds_a_secret(target.workdir)


def test_output_symlinks_carry_nothing_out(target: Target):
    target.start_worker()
    agent = target.worker.proc.pid
    out_dir = target.shared / "ok" / "out"
    task, _, err = target.run(
        f"ln -s {target.secret} $OUTPUT/a; ln -s {target.workdir}/.scitq/state.json $OUTPUT/b; "
        f"ln -s /proc/{agent}/environ $OUTPUT/c; ln -s / $OUTPUT/root; echo honest > $OUTPUT/d",
        output=f"file://{out_dir}/")
    assert task["status"] == "succeeded"
    assert (out_dir / "d").read_text() == "honest\n"
    assert "not uploaded (symlinks and special files are never followed)" in err
    target.assert_no_file_holds_a_secret(target.shared)


def test_a_task_reads_nothing_of_the_worker_or_the_host_s_secrets(target: Target):
    target.start_worker()
    agent = target.worker.proc.pid
    task, out, err = target.run(
        f"id -un; cat {target.secret}; cat {target.workdir}/.scitq/state.json; "
        f"cat {target.workdir}/.scitq/rclone.conf; cat /proc/{agent}/environ; env; ls {target.workdir}; true")
    assert task["status"] == "succeeded"
    assert out.splitlines()[0] == TASK_USER
    assert "SCITQ_" not in out
    for refused in (f"{target.secret}: Permission denied", f"{target.workdir}/.scitq/state.json: Permission denied",
                    f"/proc/{agent}/environ: Permission denied", f"'{target.workdir}': Permission denied"):
        assert refused in err, err


ARCHIVES = ["tar_absolute", "tar_dotdot", "tar_chained_symlinks", "tar_symlink_then_file_through_it",
            "tar_hardlink_out_then_overwrite", "zip_dotdot", "zip_chained_symlinks"]


def test_archives_that_write_outside_their_folder_fail_staging(target: Target):
    target.start_worker()
    for case in ARCHIVES:
        folder = target.shared / "ok" / case
        folder.mkdir()
        action, write = archive_cases(str(target.base))[case]
        write(str(folder))
        [archive] = os.listdir(folder)
        task, _, err = target.run("ls -R $RESOURCE", resources=[f"file://{folder}/{archive}|{action}"])
        assert task["status"] == "failed", case
        assert target.user.executions(task["id"])[0]["failure_class"] == "staging", (case, err)
        pwned = [os.path.join(d, n) for d, _, ns in os.walk(target.base) for n in ns
                 if not os.path.islink(os.path.join(d, n)) and os.path.isfile(os.path.join(d, n))
                 and Path(d, n).read_bytes() == b"pwned"]
        assert pwned == [], f"{case}: the archive wrote {pwned}"


POLICY = "is not allowed by this server's [server] container_options"


@pytest.mark.parametrize("options, refusal", [
    *[(o, POLICY) for o in ("--privileged", "-v /:/host", "--volume=/:/h", "--mount type=bind,src=/,dst=/h",
                            "--pid=host", "--pid host", "--network=host", "--cap-add SYS_ADMIN",
                            "--security-opt seccomp=unconfined", "--device /dev/sda")],
    ("-e SCITQ_WORKER_TOKEN", "give NAME=VALUE (a bare name would copy the worker's own variable)")])
def test_container_options_that_reach_the_host_are_refused_at_submission(target: Target, options: str,
                                                                         refusal: str):
    with pytest.raises(Invalid) as e:
        target.user.submit("true", container="busybox", container_options=options)
    assert refusal in e.value.message, e.value.message


@pytest.fixture
def podman() -> Iterator[Engine]:
    if static_busybox() is None or shutil.which("podman") is None:
        pytest.fail("podman and busybox-static are needed (tests/run.sh installs them)")
    e = Engine("podman", global_flags=["--runtime", "runc"])
    e.image = e.import_image(f"localhost/scitq-attack-{suffix()}:1", busybox_rootfs_tar())
    try:
        yield e
    finally:
        e.remove_image(e.image)


def test_a_worker_refuses_its_deny_list_even_when_the_server_allows_the_option(database_url, podman):
    # a server misconfigured to allow host mounts: the worker's own deny-list still holds
    with attacked(database_url, SCITQ_SERVER_CONTAINER_OPTIONS="--volume --privileged") as t:
        t.start_worker(SCITQ_WORKER_ENGINE="podman", SCITQ_WORKER_ENGINE_OPTIONS="--runtime runc")
        for options in (f"--volume {t.base}:/host", "--privileged"):
            task, out, err = t.run("cat /host/secret.conf; echo ran", container=podman.image,
                                   container_options=options)
            assert task["status"] == "failed" and "ran" not in out, (options, out, err)
            assert t.user.executions(task["id"])[0]["failure_class"] == "staging"
            assert "[worker] container_deny" in err, err


def test_the_secret_file_itself_is_untouched(target: Target):
    """Nothing above ran against it yet in this test: the fixture's secret stays root's, mode 600."""
    assert oct(os.stat(target.secret).st_mode & 0o777) == "0o600"
    assert read_text(str(target.secret)) == SECRET.decode()
    with pytest.raises(ScitqError):
        target.user.create_token("escalate", "admin")  # a user token makes no tokens
