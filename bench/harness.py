"""Bench harness: real server and worker processes on SQLite or a throwaway PostgreSQL."""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
from typing import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scitq_app.client import Server  # noqa: E402
from tests.support.postgres import ThrowawayPostgres  # noqa: E402
from tests.support.processes import ServerProcess, WorkerProcess  # noqa: E402


@contextlib.contextmanager
def database(backend: str, workdir: str) -> Iterator[str]:
    """A database URL for `backend`: a SQLite file, or a throwaway PostgreSQL cluster."""
    if backend == "sqlite":
        yield f"sqlite:///{workdir}/bench.db"
        return
    dsn = os.environ.get("SCITQ_TEST_PG_DSN")
    if dsn:
        yield dsn
        return
    pg = ThrowawayPostgres()
    if not pg.available():
        raise SystemExit("no PostgreSQL: install postgresql or set SCITQ_TEST_PG_DSN")
    pg.start()
    try:
        yield pg.dsn("postgres")
    finally:
        pg.stop()


@contextlib.contextmanager
def server(backend: str, env: dict[str, str] | None = None) -> Iterator[tuple[ServerProcess, Server, str]]:
    with tempfile.TemporaryDirectory(prefix="scitq-bench-") as workdir:
        with database(backend, workdir) as url:
            proc = ServerProcess(url, workdir, env=env).start()
            client = Server(proc.url, token=proc.admin_token, timeout=300)
            try:
                yield proc, client, workdir
            finally:
                client.close()
                proc.stop()


def worker(url: str, workdir: str, name: str, **kw) -> WorkerProcess:
    return WorkerProcess(url, os.path.join(workdir, name), name, **kw).start()


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def summary(values: list[float]) -> str:
    return (f"p50 {statistics.median(values) * 1000:.0f} ms, p90 {pct(values, 90) * 1000:.0f} ms, "
            f"max {max(values) * 1000:.0f} ms (n={len(values)})")


def wait_all(client: Server, batch: str, total: int, timeout: float = 600) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        counts = client.counts(batch)
        if counts.get("succeeded", 0) + counts.get("failed", 0) >= total:
            return time.monotonic()
        time.sleep(0.05)
    raise TimeoutError(f"batch {batch} unfinished after {timeout} s: {client.counts(batch)}")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
