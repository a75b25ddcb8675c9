"""The lab's main job, whole: per sample, two gzipped read files in an S3 bucket are the inputs,
a local container image provides the tool, the shell command filters the reads into /output/
and writes a JSON report, and the results land in s3://…/results/<sample>/, checked byte for
byte against a computation made here. Real S3 (`rclone serve s3`), real podman, real processes."""
from __future__ import annotations

import gzip
import json
import os
import random

import pytest

from tests.support.cluster import Cluster
from tests.support.containers import Engine, busybox_rootfs_tar, static_busybox, suffix
from tests.support.samples import FILTER, expected_results, reads
from tests.support.storage import StorageServer, write_config

pytestmark = [pytest.mark.containers, pytest.mark.slow]


def _files(folder: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(folder):
        for n in names:
            path = os.path.join(dirpath, n)
            rel = os.path.relpath(path, folder)
            if not rel.startswith(".scitq-logs/"):
                with open(path, "rb") as f:
                    out[rel] = f.read()
    return out


def test_samples_from_the_bucket_are_filtered_in_a_container_into_per_sample_results(tmp_path):
    podman = Engine("podman", global_flags=["--runtime", "runc"])
    if static_busybox() is None or not podman.works():
        message = "needs podman, runc and busybox-static"
        if os.environ.get("SCITQ_TEST_REQUIRE_CONTAINERS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    image = podman.import_image(f"localhost/scitq-sample-{suffix()}:1", busybox_rootfs_tar())
    s3 = StorageServer("s3", remote="LAB").start()
    cluster = None
    try:
        config = write_config(str(tmp_path / "rclone.conf"), s3)
        cluster = Cluster(f"sqlite:///{tmp_path}/scitq.db", str(tmp_path),
                          env={"SCITQ_SERVER_RCLONE_CONFIG": config}).start()
        rnd = random.Random(7)
        samples = ["S01", "S02", "S03", "S04"]
        expected, specs = {}, []
        for s in samples:
            r1, r2 = reads(rnd, s, 1, 500), reads(rnd, s, 2, 500)
            for mate, rs in ((1, r1), (2, r2)):
                s3.put(f"runs/run7/{s}_R{mate}.fastq.gz",
                       gzip.compress("".join("\n".join(r) + "\n" for r in rs).encode()))
            expected[s] = expected_results(s, r1, r2)
            specs.append({"command": FILTER.format(sample=s), "shell": "sh", "container": image,
                          "batch": "lab", "name": s, "max_retries": 1,
                          "inputs": [s3.uri(f"runs/run7/{s}_R1.fastq.gz"), s3.uri(f"runs/run7/{s}_R2.fastq.gz")],
                          "output": s3.uri(f"results/{s}/")})
        ids = cluster.client.submit_many(specs)
        cluster.worker("lab", concurrency=2, env={"SCITQ_WORKER_ENGINE": "podman",
                                                  "SCITQ_WORKER_ENGINE_OPTIONS": "--runtime runc",
                                                  "SCITQ_WORKER_RUN_OPTIONS": "--network=none"})
        done = cluster.wait_final(ids, 120)
        assert {t["status"] for t in done.values()} == {"succeeded"}, \
            [cluster.output(i, "stderr") for i in ids]
        for tid, s in zip(ids, samples):
            assert _files(s3.local(f"results/{s}")) == expected[s], s
            assert cluster.output(tid) == f"{s} done\n"
            execution = cluster.client.executions(tid)[0]
            assert sorted(execution["output_files"]) == sorted(expected[s])
            report = json.loads(expected[s]["report.json"])
            assert 0 < report["kept"] < report["pairs"]
    except BaseException:
        if cluster is not None:
            print(cluster.diagnostics())
        raise
    finally:
        if cluster is not None:
            cluster.stop()
        s3.stop()
        podman.remove_image(image)
