"""End to end: tasks read their data from real S3 and SFTP servers (`rclone serve`) and
write their results back, through a real scitq server and real worker processes.

One cluster (on a SQLite file: staging does not depend on the database) and its
storage servers serve the whole module; each test uses its own batch and its own
worker (`SCITQ_WORKER_BATCH`), so the tests do not take each other's tasks."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import re
import stat
import subprocess
import sys
import tarfile
import time
import zipfile

import pytest

from scitq_app.errors import Invalid
from tests.support.cluster import Cluster
from tests.support.processes import read_text, scitq_env, wait_for
from tests.support.samples import FILTER, expected_results, reads
from tests.support.storage import StorageServer, write_config

pytestmark = pytest.mark.slow


class World:
    def __init__(self, cluster: Cluster, s3: StorageServer, sftp: StorageServer, flaky: StorageServer,
                 config: str) -> None:
        self.cluster = cluster
        self.client = cluster.client
        self.s3, self.sftp, self.flaky = s3, sftp, flaky
        self.config = config

    def worker(self, batch: str, concurrency: int = 2, env: dict[str, str] | None = None):
        return self.cluster.worker(batch, concurrency=concurrency, env={"SCITQ_WORKER_BATCH": batch, **(env or {})})

    def submit(self, command: str, batch: str, **fields) -> int:
        return self.client.submit(command, batch=batch, shell=fields.pop("shell", "sh"), **fields)["ids"][0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("storage")
    servers = []
    cluster = None
    try:
        s3 = StorageServer("s3", remote="S3T").start()
        servers.append(s3)
        sftp = StorageServer("sftp", remote="SFTPT").start()
        servers.append(sftp)
        flaky = StorageServer("s3", remote="S3K").start()  # the one a test kills
        servers.append(flaky)
        config = write_config(str(root / "rclone.conf"), s3, sftp, flaky)
        # file:// URIs of the tests' own temporary folders are allowed (each worker narrows it again)
        cluster = Cluster(f"sqlite:///{root}/scitq.db", str(root), env={
            "SCITQ_SERVER_RCLONE_CONFIG": config, "SCITQ_SERVER_FILE_ROOTS": str(tmp_path_factory.getbasetemp())})
        cluster.start()
        yield World(cluster, s3, sftp, flaky, config)
    except BaseException:
        if cluster is not None:
            print(cluster.diagnostics())
        raise
    finally:
        if cluster is not None:
            cluster.stop()
        for s in servers:
            s.stop()


@pytest.fixture
def diagnose(world):
    """The cluster's logs, printed after the test (pytest shows them when it failed)."""
    yield
    print(world.cluster.diagnostics())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(server: StorageServer, path: str, data: bytes) -> None:
    server.put(path, data)


def result_files(folder: str) -> dict[str, bytes]:
    """Every file under a served folder, by relative path."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = f.read()
    return out


def user_files(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if not k.startswith(".scitq-logs/")}


def fetch(*args: str, config: str) -> str:
    """`scitq fetch ARGS` in a subprocess; its stdout (it must succeed)."""
    proc = subprocess.run([sys.executable, "-m", "scitq_app", "fetch", *args, "--rclone-config", config],
                          env=scitq_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def only_task(world: World, tid: int, timeout: float = 60) -> dict:
    return world.cluster.wait_final([tid], timeout)[tid]


# --- inputs and outputs --------------------------------------------------------------------

def test_inputs_in_and_outputs_out_through_s3_and_sftp_keep_every_byte(world, diagnose):
    rnd = random.Random(1)
    small = rnd.randbytes(1000)
    big = rnd.randbytes(3 * 1024 * 1024 + 17)
    folder = {f"f{i}.bin": rnd.randbytes(rnd.randint(0, 5000)) for i in range(4)}
    put(world.s3, "io/big.bin", big)
    put(world.sftp, "io/small.bin", small)
    for name, data in folder.items():
        put(world.s3, f"io/folder/{name}", data)
    world.worker("io", concurrency=2)
    cmd = ("set -e; cd $INPUT; sha256sum big.bin small.bin f*.bin > $OUTPUT/sums.txt; "
           "mkdir -p $OUTPUT/deep/er; cp big.bin $OUTPUT/deep/er/copy.bin; cp small.bin $OUTPUT/; echo staged")
    inputs = [world.s3.uri("io/big.bin"), world.sftp.uri("io/small.bin"), world.s3.uri("io/folder/")]
    to_s3 = world.submit(cmd, "io", inputs=inputs, output=world.s3.uri("io-out/s3/"))
    to_sftp = world.submit(cmd, "io", inputs=inputs, output=world.sftp.uri("io-out/sftp/"))
    done = world.cluster.wait_final([to_s3, to_sftp], 60)
    assert {t["status"] for t in done.values()} == {"succeeded"}, done
    expected_sums = "".join(f"{sha256(d)}  {n}\n" for n, d in
                            [("big.bin", big), ("small.bin", small), *sorted(folder.items())])
    for tid, server, where in ((to_s3, world.s3, "io-out/s3"), (to_sftp, world.sftp, "io-out/sftp")):
        files = result_files(server.local(where))
        assert user_files(files) == {"sums.txt": expected_sums.encode(), "deep/er/copy.bin": big,
                                     "small.bin": small}
        assert files[f".scitq-logs/{tid}/stdout.log"] == b"staged\n", "the full log travels with the outputs"
        assert not [n for n in os.listdir(server.local(where)) if n.startswith(".scitq-attempt-")]
        execution = world.client.executions(tid)[0]
        assert sorted(execution["output_files"]) == ["deep/er/copy.bin", "small.bin", "sums.txt"]
    stats = wait_for(lambda: (s := _stats(world, "io")).get("staged_promotions") == 2 and s, 10)
    assert stats["rclone"] and re.match(r"^1\.\d+", stats["rclone"]), "the worker reports its rclone version"


def _stats(world: World, name: str) -> dict:
    worker = [w for w in world.client.workers() if w["name"] == name][0]
    return world.client.worker(worker["id"])["stats"]


def test_a_missing_input_fails_with_class_staging_and_says_which(world, diagnose):
    world.worker("missing", concurrency=1)
    tid = world.submit("echo never", "missing", inputs=[world.s3.uri("nowhere/reads.fq.gz")])
    task = only_task(world, tid)
    assert task["status"] == "failed"
    execution = world.client.executions(tid)[0]
    assert execution["failure_class"] == "staging" and execution["return_code"] is None
    stderr = world.cluster.output(tid, "stderr")
    assert stderr == f"scitq: staging failed: input {world.s3.uri('nowhere/reads.fq.gz')}: not found " \
                     "(nothing to download)\n"
    assert world.cluster.output(tid) == "", "the command never ran"


def test_an_input_slower_than_the_tasks_download_timeout_fails_with_class_staging(world, diagnose):
    put(world.s3, "slow/reads.bin", random.Random(6).randbytes(4 * 1024 * 1024))
    world.worker("slow", concurrency=1, env={"RCLONE_BWLIMIT": "1M"})  # 4 s at least
    t0 = time.monotonic()
    tid = world.submit("echo never", "slow", inputs=[world.s3.uri("slow/reads.bin")], download_timeout=1)
    assert only_task(world, tid)["status"] == "failed"
    assert world.client.executions(tid)[0]["failure_class"] == "staging"
    assert "timed out after 1 s (the task's download_timeout is 1 s)" in world.cluster.output(tid, "stderr")
    assert time.monotonic() - t0 < 15


def test_a_failed_command_uploads_its_outputs_to_its_attempt_folder_without_promoting_them(world, diagnose):
    world.worker("sour", concurrency=1)
    tid = world.submit("echo partial > $OUTPUT/half.txt; exit 3", "sour", output=world.s3.uri("sour/"))
    assert only_task(world, tid)["status"] == "failed"
    execution = world.client.executions(tid)[0]
    assert execution["failure_class"] == "app" and execution["output_files"] == ["half.txt"]
    out = world.s3.local("sour")
    assert sorted(os.listdir(out)) == [f".scitq-attempt-{tid}-{execution['id']}"], "nothing promoted"
    assert read_text(os.path.join(out, f".scitq-attempt-{tid}-{execution['id']}", "half.txt")) == "partial\n"
    assert f"attempt are in {world.s3.uri('sour/')}.scitq-attempt-" in world.cluster.output(tid, "stderr")


# --- submission-time validation --------------------------------------------------------------

@pytest.mark.parametrize("field,value,reason", [
    ("inputs", ["S3T://bucket/a/../../etc/passwd"], "'..' path segments are not allowed"),
    ("inputs", ["https://user:secret@example.org/reads.fq"], "credentials must not be embedded"),
    ("resources", ["nope://bucket/ref.tar.gz|untar"], "unknown storage remote 'nope'"),
    ("output", "s3x://bucket/results/", "unknown storage remote 's3x'"),
])
def test_bad_uris_are_refused_at_submission(world, field, value, reason):
    with pytest.raises(Invalid) as e:
        world.client.submit("true", batch="refused", **{field: value})
    assert e.value.http_status == 422 and e.value.data["field"].startswith(f"tasks[0].{field}")
    assert reason in e.value.message, e.value.message
    with pytest.raises(Invalid):
        world.client.post("/tasks", {"command": "true", "batch": "refused", field: value})
    assert "refused" not in {b["name"] for b in world.client.batches()}, "nothing was created"


# --- resources ------------------------------------------------------------------------------

def _tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


LIST_RESOURCES = ("cd $RESOURCE && find . -type f | sort | while read f; do "
                  "echo \"$(sha256sum < \"$f\" | cut -c1-64) $(stat -c %a \"$f\") $f\"; done")


def test_resources_with_each_action_are_cached_read_only_and_refreshed_when_their_source_changes(world, diagnose):
    rnd = random.Random(2)
    genome = rnd.randbytes(50_000)
    index = {"index/a.idx": rnd.randbytes(3000), "index/b.idx": rnd.randbytes(10)}
    db = {"db/table.tsv": b"k\tv\n", "db/more/x.bin": rnd.randbytes(777)}
    notes = b"version 1\n"
    put(world.s3, "res/genome.fa.gz", gzip.compress(genome))
    put(world.s3, "res/index.tar.gz", _tar_gz(index))
    put(world.sftp, "res/db.zip", _zip(db))
    put(world.s3, "res/notes.txt", notes)
    put(world.s3, "res/dir/one.txt", b"one\n")
    put(world.s3, "res/dir/sub/two.txt", b"two\n")
    resources = [world.s3.uri("res/genome.fa.gz|gunzip"), world.s3.uri("res/index.tar.gz|untar"),
                 world.sftp.uri("res/db.zip|unzip|mv:databases"), world.s3.uri("res/notes.txt|mv:doc"),
                 world.s3.uri("res/dir/")]
    world.worker("res", concurrency=1)
    first = world.submit(LIST_RESOURCES, "res", resources=resources)
    assert only_task(world, first)["status"] == "succeeded", world.cluster.output(first, "stderr")

    def listing(extra: dict[str, bytes]) -> str:
        files = {"genome.fa": genome, **index, **{f"databases/{k}": v for k, v in db.items()},
                 "one.txt": b"one\n", "sub/two.txt": b"two\n", **extra}
        return "".join(f"{sha256(files[n])} 444 ./{n}\n" for n in sorted(files))
    assert world.cluster.output(first) == listing({"doc/notes.txt": notes})
    wait_for(lambda: _stats(world, "res").get("resource_downloads") == 5, 10, what="5 downloads in the stats")

    put(world.s3, "res/notes.txt", b"version 2, longer\n")  # the source changes
    time.sleep(6)  # past the cache's re-check period
    second = world.submit(LIST_RESOURCES, "res", resources=resources)
    assert only_task(world, second)["status"] == "succeeded", world.cluster.output(second, "stderr")
    assert world.cluster.output(second) == listing({"doc/notes.txt": b"version 2, longer\n"})
    stats = wait_for(lambda: (s := _stats(world, "res"))["resource_downloads"] == 6 and s, 10,
                     what="one more download: the changed resource only")
    assert stats["resource_hits"] == 4


def test_ten_tasks_asking_at_once_for_one_50_mb_archive_download_it_once(world, diagnose):
    rnd = random.Random(3)
    payload = rnd.randbytes(50 * 1024 * 1024)
    put(world.s3, "shared/big.tar.gz", _tar_gz({"big.bin": payload}))
    ids = world.client.submit_many([{"command": "sha256sum $RESOURCE/big.bin | cut -c1-64", "shell": "sh",
                                     "batch": "shared", "resources": [world.s3.uri("shared/big.tar.gz|untar")]}
                                    for _ in range(10)])
    w = world.worker("shared", concurrency=10)  # one claim takes all ten
    done = world.cluster.wait_final(ids, 90)
    assert {t["status"] for t in done.values()} == {"succeeded"}
    assert {world.cluster.output(i) for i in ids} == {sha256(payload) + "\n"}
    downloads = re.findall(r"resource \S+big\.tar\.gz\|untar: downloaded", w.log())
    assert len(downloads) == 1, w.log()
    stats = wait_for(lambda: (s := _stats(world, "shared")).get("resource_hits") == 9 and s, 10)
    assert stats["resource_downloads"] == 1


# --- an interrupted upload -------------------------------------------------------------------

def test_an_upload_cut_by_a_storage_outage_is_not_promoted_and_the_retry_leaves_one_complete_result(world,
                                                                                                   diagnose):
    # 40 MB at 10 MB/s: the upload lasts long enough to be cut in the middle. rclone's flags come
    # from the worker's environment: no low-level retries (rclone rides out a dead endpoint for
    # minutes by default), and one try per transfer, so the cut attempt fails at once.
    w = world.worker("outage", concurrency=1, env={"RCLONE_BWLIMIT": "10M", "RCLONE_LOW_LEVEL_RETRIES": "1",
                                                   "SCITQ_WORKER_TRANSFER_RETRIES": "1"})
    cmd = ("head -c 40000000 /dev/urandom > $OUTPUT/big.bin && sha256sum < $OUTPUT/big.bin | cut -c1-64 "
           "> $OUTPUT/big.sha256")
    final = world.flaky.local("results/outage")
    tid = world.submit(cmd, "outage", output=world.flaky.uri("results/outage/"), max_retries=4)
    first = world.cluster.wait_status(tid, "uploading", 30)["current_execution_id"]
    attempt_dir = os.path.join(final, f".scitq-attempt-{tid}-{first}")
    wait_for(lambda: os.path.isdir(attempt_dir), 10, 0.02, "the upload to start")
    time.sleep(1.0)
    world.flaky.kill()
    failed = wait_for(lambda: (e := world.client.execution(first))["status"] == "failed" and e, 60, 0.1,
                      "the cut attempt to fail")
    assert failed["failure_class"] == "staging"
    assert not os.path.exists(os.path.join(final, "big.bin")), "a cut upload is never promoted"
    world.flaky.start()  # storage is back (same port, same data)
    task = only_task(world, tid, 90)
    assert task["status"] == "succeeded", world.cluster.output(tid, "stderr")
    # what S3 shows (the server's own half-written temp file of the cut PUT is not an object)
    listed = fetch("list", "--recursive", "--json", world.flaky.uri("results/outage/"), config=world.config)
    assert sorted(e["path"] for e in json.loads(listed) if not e["is_dir"]) == \
        [f".scitq-logs/{tid}/stderr.log", f".scitq-logs/{tid}/stdout.log", "big.bin", "big.sha256"], \
        "exactly one result, and nothing left of the cut attempt"
    with open(os.path.join(final, "big.bin"), "rb") as f:
        big = f.read()
    assert len(big) == 40_000_000
    assert read_text(os.path.join(final, "big.sha256")).strip() == sha256(big), "both files of the same attempt"
    executions = world.client.executions(tid)
    assert executions[0]["status"] == "succeeded" and len(executions) >= 2
    assert "upload failed" in read_text(os.path.join(w.workdir, f"exec-{first}", "stderr.log"))


# --- a lab's job ---------------------------------------------------------------------------------

def test_a_sample_job_filters_reads_from_the_bucket_into_results_per_sample(world, diagnose):
    rnd = random.Random(4)
    samples = ["S01", "S02", "S03"]
    expected: dict[str, dict[str, bytes]] = {}
    specs = []
    for s in samples:
        r1, r2 = reads(rnd, s, 1, 400), reads(rnd, s, 2, 400)
        for mate, rs in ((1, r1), (2, r2)):
            put(world.s3, f"runs/run1/{s}_R{mate}.fastq.gz",
                gzip.compress("".join("\n".join(r) + "\n" for r in rs).encode()))
        expected[s] = expected_results(s, r1, r2)
        specs.append({"command": FILTER.format(sample=s), "shell": "sh", "batch": "lab", "name": s,
                      "inputs": [world.s3.uri(f"runs/run1/{s}_R1.fastq.gz"),
                                 world.s3.uri(f"runs/run1/{s}_R2.fastq.gz")],
                      "output": world.s3.uri(f"results/{s}/")})
    ids = world.client.submit_many(specs)
    world.worker("lab", concurrency=2)
    done = world.cluster.wait_final(ids, 60)
    assert {t["status"] for t in done.values()} == {"succeeded"}, \
        [world.cluster.output(i, "stderr") for i in ids]
    for tid, s in zip(ids, samples):
        assert user_files(result_files(world.s3.local(f"results/{s}"))) == expected[s]
        assert world.cluster.output(tid) == f"{s} done\n"
        report = json.loads(expected[s]["report.json"])
        assert 0 < report["kept"] < report["pairs"], "the filter kept some reads and dropped others"


# --- the rclone config on the worker ---------------------------------------------------------------

def test_the_worker_keeps_a_private_copy_of_the_servers_rclone_config_and_follows_its_changes(world, diagnose):
    w = world.worker("conf", concurrency=1)
    path = os.path.join(w.workdir, ".scitq", "rclone.conf")
    original = read_text(world.config)
    wait_for(lambda: os.path.exists(path) and read_text(path) == original, 20, what="the config on the worker")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    try:
        with open(world.config, "a") as f:
            f.write("\n[extra]\ntype = local\n")
        wait_for(lambda: "[extra]" in read_text(path), 20, what="the changed config on the worker")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        # the server accepts the new remote at once (a batch no worker serves: the task never runs)
        tid = world.submit("true", "conf-held", inputs=["extra://data/x.txt"])
        world.client.delete_task(tid)
    finally:
        with open(world.config, "w") as f:
            f.write(original)
    wait_for(lambda: "[extra]" not in read_text(path), 20, what="the restored config on the worker")
    with pytest.raises(Invalid):
        world.submit("true", "conf-held", inputs=["extra://data/x.txt"])
    assert original not in world.cluster.server.log() and "scitqtestsecret" not in world.cluster.server.log()
    assert "scitqtestsecret" not in w.log()


# --- the built-in schemes -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """An http and an ftp server over one folder (filled before they start: no listing cache to wait for)."""
    http = StorageServer("http")
    ftp = StorageServer("ftp")
    ftp.data = http.data  # one tree behind both
    rnd = random.Random(5)
    files = {"pub/reads.fq": rnd.randbytes(20_000), "pub/dir/one.txt": b"one\n", "pub/dir/sub/two.txt": b"two\n",
             "pub/arch.tar.gz": _tar_gz({"arch/x.bin": rnd.randbytes(999)})}
    for path, data in files.items():
        target = http.local(path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)
    try:
        http.start()
        ftp.start()
        yield http, ftp, files
    finally:
        http.stop()
        ftp.stop()


def test_http_ftp_and_file_uris_need_no_rclone_config(world, web, tmp_path, diagnose):
    http, ftp, files = web
    local_in = tmp_path / "local-in.txt"
    local_in.write_bytes(b"from a local path\n")
    out = tmp_path / "results"
    world.worker("builtin", concurrency=1, env={"SCITQ_WORKER_FILE_ROOTS": str(tmp_path)})
    tid = world.submit("set -e; cd $INPUT; sha256sum reads.fq local-in.txt > $OUTPUT/inputs.sha256; "
                       "cd $RESOURCE; find . -type f | sort > $OUTPUT/resources.txt", "builtin",
                       inputs=[http.uri("pub/reads.fq?token=abc"), f"file://{local_in}"],
                       resources=[http.uri("pub/dir/"), ftp.uri("pub/arch.tar.gz|untar|mv:ftp")],
                       output=f"file://{out}/")
    task = only_task(world, tid)
    assert task["status"] == "succeeded", world.cluster.output(tid, "stderr")
    reads_sum, local_sum = sha256(files["pub/reads.fq"]), sha256(local_in.read_bytes())
    assert (out / "inputs.sha256").read_text() == f"{reads_sum}  reads.fq\n{local_sum}  local-in.txt\n"
    assert (out / "resources.txt").read_text() == "./ftp/arch/x.bin\n./one.txt\n./sub/two.txt\n"
    assert not [n for n in os.listdir(out) if n.startswith(".scitq-attempt-")], "the attempt was renamed away"
    tid = world.submit("true", "builtin", inputs=[ftp.uri("pub/absent.fq")])
    assert only_task(world, tid)["status"] == "failed"
    assert "not found" in world.cluster.output(tid, "stderr")
