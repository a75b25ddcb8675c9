"""Staging overhead per task: a 100 MB input in and a 100 MB output out through the
worker's RcloneStager, against a bare `rclone copy` of the same files, on a local S3
server (`rclone serve s3` over a temp dir). Target: staging < 10 % above rclone itself.

    python3 bench/staging.py [--size-mb 100] [--runs 5] [--proto s3|sftp]

The output is measured twice: uploaded to its attempt folder only (what a bare
`rclone copy` does), and uploaded then promoted (the server-side move that makes a
complete attempt the result). On S3 a move is a server-side copy: on real S3 it
does not cross the worker's network, but `rclone serve s3` copies the bytes itself.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scitq_app.staging import RcloneStager  # noqa: E402
from tests.support.storage import StorageServer, write_config  # noqa: E402


def timed(fn) -> float:
    os.sync()  # earlier runs' dirty pages are not written back on this run's time
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bare(rclone: str, config: str, *args: str) -> None:
    subprocess.run([rclone, *args], check=True, env={**os.environ, "RCLONE_CONFIG": config},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(size_mb: int, runs: int, proto: str) -> None:
    server = StorageServer(proto, remote="BENCH").start()
    work = tempfile.mkdtemp(prefix="scitq-bench-staging-")
    try:
        config = write_config(os.path.join(work, "rclone.conf"), server)
        rc = server.rclone
        payload = os.path.join(work, "payload.bin")
        with open(payload, "wb") as f:
            for _ in range(size_mb):
                f.write(os.urandom(1 << 20))
        remote = f"BENCH:{server.bucket}/bench"
        bare(rc, config, "copyto", payload, f"{remote}/in.bin")
        stager = RcloneStager(os.path.join(work, "worker"), config, rclone=rc)
        results: dict[str, list[float]] = {k: [] for k in ("bare_in", "stage_in", "bare_out", "stage_out",
                                                           "stage_out_promoted")}
        for i in range(runs):
            d = os.path.join(work, f"run{i}")
            dirs = {k: os.path.join(d, k) for k in ("input", "output", "resource", "tmp")}
            for p in dirs.values():
                os.makedirs(p)
            os.link(payload, os.path.join(dirs["output"], "out.bin"))
            bare_dir = os.path.join(d, "bare")
            os.makedirs(bare_dir)
            ex = {"id": 1000 + i, "task_id": 1000 + i, "attempt": 1, "inputs": [server.uri("bench/in.bin")],
                  "output": server.uri(f"bench/out{i}/")}
            never = threading.Event()
            # alternate the order so that neither side always gets the warm page cache
            pairs = [("bare_in", lambda: bare(rc, config, "copyto", f"{remote}/in.bin",
                                              os.path.join(bare_dir, "in.bin"))),
                     ("stage_in", lambda: stager.stage_in(ex, dirs, never))]
            for name, fn in pairs if i % 2 == 0 else pairs[::-1]:
                results[name].append(timed(fn))
            upload_only = os.path.join(d, "upload-only")
            os.makedirs(os.path.join(upload_only, "output"))
            os.link(payload, os.path.join(upload_only, "output", "out.bin"))
            ex2 = dict(ex, id=2000 + i, output=server.uri(f"bench/attempt-only{i}/"))
            pairs = [("bare_out", lambda: bare(rc, config, "copy", dirs["output"], f"{remote}/bare-out{i}/")),
                     ("stage_out", lambda: stager.stage_out(ex2, {"output": os.path.join(upload_only, "output")},
                                                            never, succeeded=False))]
            for name, fn in pairs if i % 2 == 0 else pairs[::-1]:
                results[name].append(timed(fn))
            results["stage_out_promoted"].append(timed(lambda: stager.stage_out(ex, dirs, never)))
            shutil.rmtree(d)
        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"{proto}: {size_mb} MB, median of {runs} runs (rclone {stager.version()})")
        print(f"  input : bare rclone copyto {med['bare_in']:.2f} s, stage_in {med['stage_in']:.2f} s "
              f"-> {100 * (med['stage_in'] / med['bare_in'] - 1):+.1f} %")
        print(f"  output: bare rclone copy {med['bare_out']:.2f} s, stage_out to the attempt folder "
              f"{med['stage_out']:.2f} s -> {100 * (med['stage_out'] / med['bare_out'] - 1):+.1f} %")
        print(f"          + promotion (server-side move): stage_out {med['stage_out_promoted']:.2f} s "
              f"-> {100 * (med['stage_out_promoted'] / med['bare_out'] - 1):+.1f} %")
        total_bare = med["bare_in"] + med["bare_out"]
        print(f"  per task (in + out, promoted): {med['stage_in'] + med['stage_out_promoted']:.2f} s vs bare "
              f"{total_bare:.2f} s -> "
              f"{100 * ((med['stage_in'] + med['stage_out_promoted']) / total_bare - 1):+.1f} %; "
              f"without promotion {100 * ((med['stage_in'] + med['stage_out']) / total_bare - 1):+.1f} %")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--proto", choices=("s3", "sftp"), default="s3")
    a = ap.parse_args()
    run(a.size_mb, a.runs, a.proto)
