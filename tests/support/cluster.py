"""A scitq cluster made of real processes: one server and any number of workers."""
from __future__ import annotations

import os
from typing import Any

from scitq_app.client import Server

from .processes import ServerProcess, WorkerProcess, wait_for

FINAL = ("succeeded", "failed", "canceled")

# Short leases and fast loops so failure handling shows within seconds.
FAST = {"SCITQ_DISPATCHER_LEASE": "3", "SCITQ_DISPATCHER_INTERVAL": "0.2", "SCITQ_DISPATCHER_LOCK_TTL": "3",
        "SCITQ_SERVER_CLAIM_WAIT": "2"}


class Cluster:
    def __init__(self, database_url: str, workdir: str, env: dict[str, str] | None = None,
                 listen: str = "127.0.0.1") -> None:
        self.workdir = workdir
        self.server = ServerProcess(database_url, workdir, listen=listen, env={**FAST, **(env or {})})
        self.workers: list[WorkerProcess] = []
        self.client: Server | None = None

    def start(self) -> "Cluster":
        """Start the server; `client` holds the admin token it created on the empty database."""
        self.server.start()
        self.client = Server(self.server.url, self.server.admin_token)
        return self

    def worker(self, name: str, start: bool = True, **kw: Any) -> WorkerProcess:
        """A worker in workdir/NAME. Unless the test gives it a credential (`token`, `join_token`,
        or one in `env`), it registers with a single-use join token the admin client mints."""
        env = kw.get("env") or {}
        if not (kw.get("token") or kw.get("join_token") or env.get("SCITQ_WORKER_TOKEN")
                or env.get("SCITQ_WORKER_JOIN_TOKEN")):
            assert self.client is not None, "start the cluster first"
            kw["join_token"] = self.client.create_join_token(uses=1, ttl=3600)["join_token"]
        w = WorkerProcess(self.server.url, os.path.join(self.workdir, name), name, **kw)
        self.workers.append(w)
        return w.start() if start else w

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        self.server.stop()
        if self.client is not None:
            self.client.close()

    # --- waiting on the API ---------------------------------------------------
    def tasks(self, ids: list[int]) -> dict[int, dict]:
        assert self.client
        out = {}
        for start in range(0, len(ids), 1000):
            for t in self.client.get("/tasks", ids=ids[start:start + 1000], limit=1000)["tasks"]:
                out[t["id"]] = t
        return out

    def wait_final(self, ids: list[int], timeout: float = 60.0) -> dict[int, dict]:
        def done() -> dict[int, dict] | None:
            tasks = self.tasks(ids)
            return tasks if all(t["status"] in FINAL for t in tasks.values()) and len(tasks) == len(ids) else None
        try:
            return wait_for(done, timeout, 0.2, f"{len(ids)} tasks to finish")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.unfinished(ids)}\n{self.diagnostics()}") from None

    def unfinished(self, ids: list[int]) -> str:
        """The tasks not final yet, each with its executions (newest first): what a timeout shows."""
        assert self.client
        lines = []
        for tid, t in sorted(self.tasks(ids).items()):
            if t["status"] not in FINAL:
                runs = [(e["id"], e["worker_name"], e["status"]) for e in self.client.executions(tid)]
                lines.append(f"task {tid} {t['name']} {t['status']}: executions {runs}")
        return "\n".join(lines)

    def wait_status(self, task_id: int, status: str, timeout: float = 30.0) -> dict:
        assert self.client
        return wait_for(lambda: (t := self.client.task(task_id))["status"] == status and t, timeout, 0.05,
                        f"task {task_id} to be {status}")

    def output(self, task_id: int, stream: str = "stdout") -> str:
        assert self.client
        return self.client.task_output(task_id, stream)["data"]

    def diagnostics(self) -> str:
        parts = ["--- server log ---", self.server.log()[-4000:]]
        for w in self.workers:
            if os.path.exists(w.log_path):
                parts += [f"--- worker {w.name} ---", w.log()[-3000:]]
        return "\n".join(parts)
