"""The worker agent: `scitq.pyz worker run`.

It registers with the server, then loops: claim executions for its free
slots (long-polling when idle), run each in a `Job` thread, heartbeat every
few seconds (stats in; settings, signals and fenced executions out; leases
renewed), and deliver reports and output through the `Outbox`, which keeps
them on disk while the server is away. It talks to the server only through
`client.Server`, never to the database.

Stopping: the first SIGTERM stops claiming, hands back executions that have
not started and lets the others finish (or hands them back too with
`[worker] on_stop = handback`); the second kills them and reports them
canceled. Either way what is owed to the server stays in the journal and is
delivered now or at the next start.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import random
import shutil
import socket
import threading
import time
import uuid
from typing import Any, Callable

from . import __version__
from .client import Server, normalize_fingerprint, split_join_token
from .config import Config
from .containers import make_runner
from .errors import (Conflict, ConfigError, Forbidden, NotFound, ScitqError, ServerUnreachable, TlsMismatch,
                     Unauthorized)
from .identity import IdentityFile, is_own
from .job import Job, Slots, Stager
from .machine import Machine, disk_shortage
from .outage import Outage, backoff
from .outbox import Outbox, StreamShipper
from .runner import Process, Runner, kill_group, task_account, wait_gone
from .supervisor import Lease
from .roots import parse_roots
from .staging import RcloneStager

log = logging.getLogger(__name__)

CLAIM_WAIT = 5.0
EXIT_UPGRADE = 75  # EX_TEMPFAIL: drained for an upgrade; systemd (Restart=on-failure) starts the new version
CLEAN_EVERY = 30.0
DISK_PRESSURE = 90.0  # % used on the work dir's disk before old failed work dirs are removed
RECLAIM_EVERY = 2.0   # seconds between two cleanings while the worker is short of disk
INFRA_PAUSE_MAX = 60.0


class Worker:
    """One worker agent. Dependencies (client, runner, stager, clock) are passed in for tests."""

    def __init__(self, config: Config, *, client: Server | None = None, runner: Runner | None = None,
                 stager: Stager | None = None, clock: Callable[[], float] = time.monotonic,
                 say: Callable[[str], None] | None = None) -> None:
        w = config.worker
        self.config = config
        self.name = w.name or socket.gethostname()
        self.root = os.path.abspath(w.workdir)
        try:
            os.makedirs(self.root, exist_ok=True)
            probe = os.path.join(self.root, ".write-test")
            open(probe, "w").close()
            os.unlink(probe)
        except OSError as e:
            raise ConfigError(f"worker work dir {self.root} is not usable ({e.strerror or e}): set "
                              "[worker] workdir or --workdir to a writable directory") from None
        # The worker's token, rclone config and journal: the worker's user alone may read them.
        self.state_dir = os.path.join(self.root, ".scitq")
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        self.task_user, warning = task_account(w.task_user, os.geteuid(), self.root)
        if warning:
            log.warning("%s", warning, extra={"action": "task_user"})
        # Credentials (see `_register_once`): this worker's own token, saved in its state once
        # registered; else a join token; else [worker] token, which must be a worker token.
        self.join_secret: str | None = None
        join_pin: str | None = None
        if w.join_token.strip():
            self.join_secret, join_pin = split_join_token(w.join_token)
        self.config_token = w.token.strip() or None
        self._token_warned = False
        self.client = client or Server(config.server_url(), None, timeout=config.client.timeout)
        self.identity = IdentityFile(self.state_dir)
        saved = self.identity.load()
        if self.client.fingerprint is None:
            # The pin: [worker] fingerprint, else the one this worker registered with, else the join token's.
            self.client.fingerprint = (
                normalize_fingerprint(w.fingerprint, "[worker] fingerprint") if w.fingerprint.strip()
                else saved.get("fingerprint") if is_own(saved, self.client.url, self.name) else None) or join_pin
        # Renewed while this agent lives; the supervisors of its commands kill them when it is not.
        saved_lease = saved.get("lease")  # what supervisors left by a previous run were told
        self.lease = Lease(os.path.join(self.state_dir, "lease"), float(saved_lease) if saved_lease else None)
        self.runner = runner or make_runner(config, self.root, self.state_dir, self.task_user, self.lease)
        self.stager = stager or RcloneStager(self.root, os.path.join(self.state_dir, "rclone.conf"),
                                             rclone=w.rclone, retries=w.transfer_retries,
                                             cache_limit=w.cache_disk_limit,
                                             file_roots=parse_roots(w.file_roots, "[worker] file_roots"))
        self._rclone_digest = _digest_of(os.path.join(self.state_dir, "rclone.conf"))
        self.clock = clock
        self.say = say or (lambda text: log.info("%s", text))
        self.machine = Machine(self.root)
        self.outbox = Outbox(os.path.join(self.state_dir, "outbox"), on_refused=self._refused)
        self.worker_id: int | None = None
        self.settings: dict[str, Any] = {"concurrency": w.concurrency, "prefetch": w.prefetch, "status": w.status,
                                         "batch": w.batch or None}
        self.heartbeat_every = w.heartbeat
        self.head, self.tail = 256 * 1024, 768 * 1024
        self.slots = Slots(w.concurrency)
        self.jobs: dict[int, Job] = {}
        self._jobs_lock = threading.Lock()
        self._stop_r, self._stop_w = os.pipe()  # request_stop (a signal handler) -> the stopper thread
        os.set_blocking(self._stop_w, False)
        # Signals and fences from heartbeat replies are applied by their own thread, in order: a job
        # may hold its lock for seconds (starting its supervisor), and the heartbeat that renews
        # every lease of this worker must never wait for one job. A signal is acked once applied.
        self._acks: list[int] = []
        self._acks_lock = threading.Lock()
        self._orders: queue.Queue[tuple[str, int, dict[str, Any]]] = queue.Queue()
        self._ordered: set[int] = set()  # signal ids queued or applied and not yet acked to the server
        self.stopping = 0            # 0 running, 1 warm stop, 2 cold stop
        self.upgrade_requested = False  # set by SIGUSR1 (install.sh upgrade): drain, then exit 75
        self.upgrade_note: str | None = None  # what the last `worker upgrade` did, in words
        self._upgrade_since: float | None = None
        self._upgrade_forced = False
        self._wake = threading.Event()
        self._done = threading.Event()
        self._need_register = threading.Event()
        self._abandon = threading.Event()   # stop trying to deliver: the rest waits on disk
        self._last_clean = 0.0
        say = self.say
        self._claims = Outage("scitq worker: claims", say, clock)
        self._beats = Outage("scitq worker: heartbeats", say, clock)
        self._deliveries = Outage("scitq worker: reports", say, clock)
        self._lease_trouble = Outage("scitq worker: lease", say, clock)
        # one per loop (an Outage is not shared between threads)
        self._beat_faults = Outage("scitq worker: heartbeat loop", say, clock)
        self._send_faults = Outage("scitq worker: delivery loop", say, clock)
        self._lease_faults = Outage("scitq worker: lease loop", say, clock)
        self._order_faults = Outage("scitq worker: signals loop", say, clock)
        self.short: str | None = None  # what this worker lacks to take work (disk, inodes), in words
        self._last_reclaim = 0.0
        self._ended: dict[int, str] = {}  # execution id -> outcome, of those ended under this agent
        # after failures of its own (infra) the worker waits before claiming again, longer each time,
        # so a worker out of descriptors or processes does not burn through the queue
        self._infra_failures = 0
        self._claim_after = 0.0

    # --- registration -----------------------------------------------------------
    def _remember(self, token: str) -> None:
        """Keep this worker's credential (and what it was told) for its next run."""
        self.identity.save({"server": self.client.url, "name": self.name, "worker_id": self.worker_id,
                            "token": token, "fingerprint": self.client.fingerprint, "head": self.head,
                            "tail": self.tail, "lease": self.lease.seconds})

    def register(self) -> None:
        """Re-attach with the saved worker token, or register anew. Retries while the server is away;
        raises ConfigError when no credential it has may register this worker."""
        delay = 1.0
        while not self.stopping:  # stopped before it could register: nothing to finish, exit
            try:
                self._register_once()
                self._need_register.clear()
                self._claims.ok()
                return
            except ServerUnreachable as e:
                self._claims.failed(e.message)
                pause, delay = backoff(delay, 10.0)
                self._wake.clear()
                if self._wake.wait(pause) and self.stopping:
                    return

    def _register_once(self) -> None:
        """(a) this worker's own token (state.json) re-attaches it; (b) else a join token
        registers it; (c) else [worker] token is adopted if it is a worker token (people's
        tokens are refused); (d) else it tries with none, which the server refuses (ConfigError)."""
        state = self.identity.load()
        if is_own(state, self.client.url, self.name):
            if self.config_token and self.config_token != state["token"] and not self._token_warned:
                self._token_warned = True
                log.warning("[worker] token is ignored: this worker re-attaches with its own token (kept in %s)",
                            self.identity.path)
            self.client.token = state["token"]
            self.worker_id = int(state["worker_id"])
            self.head = int(state.get("head", self.head))
            self.tail = int(state.get("tail", self.tail))
            try:
                self._heartbeat()
                self.say(f"scitq worker {self.name}: re-attached as worker {self.worker_id}")
                return
            except (Unauthorized, NotFound, Forbidden):
                self.say(f"scitq worker {self.name}: the server no longer accepts this worker's token (deleted on "
                         "the server?); registering again")
        if self.join_secret:
            self._register_with(self.join_secret, join=True)
        elif self.config_token:
            self._adopt(self.config_token)
        else:
            self._register_with(None, join=False)

    def _adopt(self, token: str) -> None:
        """[worker] token: a worker token of this worker is taken as its own; a join token
        registers; people's tokens are refused (workers never hold admin rights)."""
        self.client.token = token
        try:
            me = self.client.whoami()
        except Unauthorized:
            raise ConfigError("the server refuses [worker] token (unknown or revoked): give this worker a join "
                              "token instead (`scitq worker join-token` on the server, then [worker] join_token "
                              "or SCITQ_WORKER_JOIN_TOKEN)") from None
        role = me.get("role")
        if role == "join":
            self._register_with(token, join=True)
            return
        if role != "worker":
            raise ConfigError(f"[worker] token is {'an' if role == 'admin' else 'a'} {role} token, and a worker "
                              "never runs with people's rights: mint a join token on the server (`scitq worker "
                              "join-token`) and give it to this worker as [worker] join_token "
                              "(SCITQ_WORKER_JOIN_TOKEN); it registers and keeps its own worker token")
        if me.get("worker_name") not in (None, self.name):
            raise ConfigError(f"[worker] token belongs to worker {me['worker_name']!r}, not {self.name!r}: set "
                              f"[worker] name = {me['worker_name']}, or give this worker a join token instead")
        self.worker_id = int(me["worker_id"])
        self._heartbeat()
        self._remember(token)
        self.say(f"scitq worker {self.name}: attached as worker {self.worker_id} with its worker token")

    def _register_with(self, secret: str | None, join: bool) -> None:
        self.client.token = secret
        try:
            reply = self.client.register(
                name=self.name, hostname=self.machine.hostname, concurrency=self.settings["concurrency"],
                prefetch=self.settings["prefetch"], batch=self.settings["batch"], status=self.settings["status"]
                if self.settings["status"] in ("running", "paused") else "running",
                cpu=float(self.config.worker.cpu or self.machine.cpu_count),
                mem=float(self.config.worker.mem or round((self.machine.mem_total or 0) / 2**30, 1)) or None,
                version=__version__)
        except Unauthorized as e:
            if join:
                raise ConfigError("the server refused this worker's join token: it is used up, expired or revoked; "
                                  "mint a new one on the server with `scitq worker join-token` and set it as "
                                  "[worker] join_token") from None
            raise ConfigError(f"the server requires a credential to register this worker ({e.message}): mint a "
                              "join token on the server with `scitq worker join-token` and set it as [worker] "
                              "join_token (SCITQ_WORKER_JOIN_TOKEN)") from None
        except (Forbidden, Conflict) as e:
            raise ConfigError(f"the server refused to register this worker: {e.message}") from None
        self.worker_id = int(reply["worker"]["id"])
        self.client.token = reply["token"]
        self._apply_pace(reply)
        self._apply_settings(reply["worker"])
        self._sync_rclone_config(reply.get("rclone_config"))
        self._remember(reply["token"])
        self.say(f"scitq worker {self.name}: registered as worker {self.worker_id} on {self.client.url}")

    # --- heartbeat ----------------------------------------------------------------
    def _held(self) -> list[int]:
        with self._jobs_lock:
            held = set(self.jobs)
        return sorted(held | self.outbox.executions_with_pending())

    def _heartbeat(self) -> None:
        if self.worker_id is None:  # callers beat only once registered
            raise NotFound("this worker is not registered")
        with self._acks_lock:
            acks, self._acks = self._acks, []
        try:
            reply = self.client.heartbeat(self.worker_id, self.machine.stats() | {"version": __version__,
                                          "engine": self.runner.name,
                                          "engine_version": self.runner.version, "slots_used": self.slots.used,
                                          "short_of": self.short, "upgrade": self.upgrade_note}
                                          | self.stager.stats(),
                                          self._held(), acks)
        except BaseException:
            with self._acks_lock:
                self._acks = acks + self._acks
            raise
        with self._acks_lock:
            self._ordered.difference_update(acks)  # the server has them: it will not send them again
        self._apply_settings(reply["settings"])
        self._apply_pace(reply)
        self._sync_rclone_config(reply.get("rclone_config"))
        for s in reply.get("signals", []):
            sid = int(s["id"])
            with self._acks_lock:
                if sid in self._ordered:
                    continue  # sent again before its ack reached the server: queued once
                self._ordered.add(sid)
            self._orders.put(("signal", sid, s))
        for eid in reply.get("fenced", []):
            self._orders.put(("fence", int(eid), {}))

    def apply_orders(self, block: bool = True) -> int:
        """Apply the signals and fences heartbeats queued, in the order they came; with `block`,
        wait for the next one first. Returns how many were applied (the signals thread, and tests)."""
        done = 0
        while True:
            try:
                kind, ident, s = self._orders.get(block=block and done == 0, timeout=1.0)
            except queue.Empty:
                return done
            if kind == "fence":
                job = self.jobs.get(ident)
                if job is not None:
                    log.warning("execution %s was given to another worker: stopping it", ident)
                    job.fence()
            else:
                self._handle_signal(s)
                with self._acks_lock:
                    self._acks.append(ident)
            done += 1

    def _orders_loop(self) -> None:
        while not self._done.is_set():
            try:
                self.apply_orders()
            except Exception as e:  # this thread must not die: signals would wait forever
                log.debug("applying a signal failed", exc_info=True)
                self._order_faults.failed(f"{type(e).__name__}: {e}")

    def _apply_pace(self, reply: dict[str, Any]) -> None:
        """The server's heartbeat interval, output caps and lease, as it sends them with every
        heartbeat: a worker restarted since it registered follows them too. The interval is the
        server's, longer than `[worker] heartbeat` too: it grows with the fleet so that the
        server's load stays bounded (beats.rhythm); ours is only what a worker beats at before
        the server said."""
        if "heartbeat" in reply:
            self.heartbeat_every = float(reply["heartbeat"])
        if "lease" in reply and float(reply["lease"]) != self.lease.seconds:
            self.lease.seconds = float(reply["lease"])
            self._renew_lease()  # at once: a shorter lease must not wait for the next renewal
        self.head = int(reply.get("output_head", self.head))
        self.tail = int(reply.get("output_tail", self.tail))

    def _sync_rclone_config(self, digest: str | None) -> None:
        """Keep WORKDIR/.scitq/rclone.conf (mode 600) equal to the server's rclone config,
        whose hash comes with each heartbeat: fetched again only when it changed."""
        if digest is None or digest == self._rclone_digest or self.worker_id is None:
            return
        try:
            reply = self.client.rclone_config(self.worker_id)
        except ScitqError as e:
            log.warning("could not fetch the rclone config from the server: %s", e.message)
            return
        path = os.path.join(self.state_dir, "rclone.conf")
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(reply["config"])
        os.replace(path + ".tmp", path)
        self._rclone_digest = reply["hash"]
        log.info("rclone config received from the server (%d bytes)", len(reply["config"]),
                 extra={"action": "rclone_config"})

    def _apply_settings(self, s: dict[str, Any]) -> None:
        changed: dict[str, Any] = {k: s[k] for k in ("concurrency", "prefetch", "status", "batch")
                                   if k in s and s[k] != self.settings.get(k)}
        if not changed:
            return
        self.settings.update(changed)
        self.slots.set_limit(int(self.settings["concurrency"]))
        log.info("settings now %s", self.settings, extra={"action": "settings"})
        self._wake.set()

    def _handle_signal(self, s: dict[str, Any]) -> None:
        if s.get("execution_id") is not None:
            job = self.jobs.get(int(s["execution_id"]))
            if job is not None:
                job.signal(s["action"])
        elif s["action"] == "clean":
            self.clean(everything=True)
        elif s["action"] == "upgrade":
            threading.Thread(target=self._upgrade_from_server, name="upgrade", daemon=True).start()

    def _upgrade_from_server(self) -> None:
        """`scitq worker upgrade`: install the server's scitq.pyz as this host's release, then
        drain and restart on it (as after install.sh's SIGUSR1). What happened shows in the
        worker's stats (`upgrade`) and its log."""
        from .release import upgrade_from
        try:
            version = upgrade_from(self.client)
        except ScitqError as e:
            self.upgrade_note = f"refused: {e.message}"
        else:
            if version is None:
                self.upgrade_note = f"already running the server's scitq.pyz ({__version__})"
            else:
                self.upgrade_note = f"installed {version}: restarting once running tasks end"
                self.request_upgrade()
        self.say(f"scitq worker {self.name}: upgrade: {self.upgrade_note}")

    def _heartbeat_loop(self) -> None:
        # +-10 %: workers whose replies came together (after the server paused, or started) do not
        # beat together for ever after, in bursts that make the server pause again
        while not self._done.wait(self.heartbeat_every * random.uniform(0.9, 1.1)):
            if self.worker_id is None or self._need_register.is_set():
                continue
            try:
                self._heartbeat()
                self._beats.ok()
            except ServerUnreachable as e:
                self._beats.failed(e.message)
            except (Unauthorized, NotFound):
                self._need_register.set()
                self._wake.set()
            except ScitqError as e:
                log.warning("heartbeat refused: %s", e.message)
            except Exception as e:  # this thread must not die: the server would see a live worker wedged
                log.debug("heartbeat failed", exc_info=True)
                self._beat_faults.failed(f"{type(e).__name__}: {e}")

    def _lease_loop(self) -> None:
        """Renew the lease the supervisors read, as long as this process lives (a few times per
        supervisor deadline; a file rename each time)."""
        while True:
            try:
                self._renew_lease()
            except Exception as e:  # this thread must not die: its tasks' supervisors would kill them
                self._lease_faults.failed(f"{type(e).__name__}: {e}")
            time.sleep(self.lease.every())

    def _renew_lease(self) -> None:
        try:
            self.lease.renew()
        except OSError as e:  # a full disk: the rename fails, the old deadline stands
            self._lease_trouble.failed(f"cannot renew the tasks' lease file: {e.strerror or e}")
        else:
            self._lease_trouble.ok()

    # --- delivery -----------------------------------------------------------------
    def _refused(self, execution_id: int, result: dict) -> None:
        job = self.jobs.get(execution_id)
        if job is not None and result.get("status") == 409:
            job.fence()

    def _send(self, items: list[dict]) -> list[dict]:
        if self.worker_id is None:  # the sender sends only once registered
            raise NotFound("this worker is not registered")
        return self.client.outbox(self.worker_id, items)

    def _sender_loop(self) -> None:
        delay = 0.5
        while True:
            if self._done.is_set() and (self.outbox.idle() or self._abandon.is_set()):
                return
            if self.worker_id is None or self._need_register.is_set():
                time.sleep(0.2)
                continue
            try:
                sent = self.outbox.flush(self._send)
                delay = 0.5
                self._deliveries.ok()
            except ServerUnreachable as e:
                self._deliveries.failed(e.message)
                pause, delay = backoff(delay, 5.0)
                time.sleep(pause)
                continue
            except (Unauthorized, NotFound):
                self._need_register.set()
                self._wake.set()
                time.sleep(0.5)
                continue
            except ScitqError as e:
                self._deliveries.failed(f"refused: {e.message}")
                pause, delay = backoff(delay, 5.0)
                time.sleep(pause)
                continue
            except Exception as e:  # this thread must not die: reports would wait forever
                log.debug("delivery failed", exc_info=True)
                self._send_faults.failed(f"{type(e).__name__}: {e}")
                pause, delay = backoff(delay, 5.0)
                time.sleep(pause)
                continue
            if not sent:
                self.outbox.wait(0.5)

    # --- resources ------------------------------------------------------------------
    def _short_of(self) -> str | None:
        """What the work dir's disk lacks under [worker] min_free / min_free_inodes, in words."""
        return disk_shortage(self.root, self.config.worker.min_free, self.config.worker.min_free_inodes)

    def _check_resources(self) -> bool:
        """True when the worker has what it needs to claim; says so once per change of state."""
        short = self._short_of()
        if short != self.short:
            if short:
                self.say(f"scitq worker {self.name}: claiming nothing while short of {short}")
            else:
                self.say(f"scitq worker {self.name}: claiming again (short of {self.short} no more)")
            self.short = short
        if short is None:
            self.outbox.journal.keep_reserve()
        elif self.clock() - self._last_reclaim > RECLAIM_EVERY:
            self._last_reclaim = self.clock()
            self.clean(reclaim=True)  # the failed work dirs already delivered go first
        return short is None

    # --- executions -----------------------------------------------------------------
    def _cpu_per_slot(self) -> int:
        return max(1, (self.config.worker.cpu or self.machine.cpu_count) // max(1, int(self.settings["concurrency"])))

    def _start(self, execution: dict, process: Process | None = None) -> None:
        job = Job(execution, root=self.root, runner=self.runner, stager=self.stager, outbox=self.outbox,
                  task_user=self.task_user,
                  slots=self.slots, cpu_per_slot=self._cpu_per_slot, head=self.head, tail=self.tail,
                  on_done=self._finished, process=process, short_of=self._short_of)
        with self._jobs_lock:
            self.jobs[job.id] = job
        if self.stopping:
            job.hand_back()
        try:
            job.thread.start()
        except RuntimeError as e:  # no thread left to this process (a pids limit): the worker's failure
            with self._jobs_lock:
                self.jobs.pop(job.id, None)
            job.failure_class = "infra"
            self.outbox.report(job.id, {"phase": "failed", "failure_class": "infra",
                                        "message": f"the worker could not start a thread for it: {e}"})
            self._finished(job)

    def _finished(self, job: Job) -> None:
        with self._jobs_lock:
            self.jobs.pop(job.id, None)
        self._ended[job.id] = job.outcome
        if job.failure_class == "infra":
            self._infra_failures += 1
            pause = min(INFRA_PAUSE_MAX, 2.0 ** self._infra_failures)
            self._claim_after = self.clock() + pause
            self.say(f"scitq worker {self.name}: execution {job.id} failed for this worker's reason; claiming again "
                     f"in {pause:.0f} s")
        elif job.outcome == "succeeded":
            self._infra_failures = 0
        self._wake.set()

    def recover(self) -> None:
        """After a restart: adopt the supervised commands a previous run of this worker left (running,
        or ended since), re-attach to its containers, end anything else it left (only processes
        proven to be its own: same boot, same start time), and report that lost once."""
        for name in sorted(os.listdir(self.root)):
            d = os.path.join(self.root, name)
            if not name.startswith("exec-") or os.path.exists(os.path.join(d, "done")):
                continue
            try:
                with open(os.path.join(d, "execution.json"), encoding="utf-8") as f:
                    execution = json.load(f)
            except (OSError, ValueError):
                continue
            eid = int(execution["id"])
            adopted = self.runner.adopt(d)
            if adopted is not None:
                self._start(execution, adopted)
                self.say(f"scitq worker: execution {eid} is still supervised; adopted")
                continue
            try:
                identity = json.loads(_read_marker(os.path.join(d, "pid")) or "{}")
            except ValueError:
                identity = {}  # an older agent's bare pid: no proof it is still that process
            if isinstance(identity, dict) and kill_group(identity):
                wait_gone(int(identity["pid"]))
            container = _read_marker(os.path.join(d, "container"))
            process = self.runner.attach(container) if container else None
            if process is not None:
                self._start(execution, process)
                self.say(f"scitq worker: execution {eid} still has its container; re-attached")
                continue
            for stream in ("stdout", "stderr"):
                path = os.path.join(d, f"{stream}.log")
                if os.path.exists(path):
                    shipper = StreamShipper(eid, stream, path, self.head, self.tail)
                    shipper.finish()
                    self.outbox.add_stream(shipper)
            self.outbox.report(eid, {"phase": "failed", "failure_class": "lost",
                                     "message": "the worker restarted while this execution ran"})
            open(os.path.join(d, "done"), "w").close()
            self.say(f"scitq worker: execution {eid} was interrupted by a restart; reported lost")

    def clean(self, everything: bool = False, reclaim: bool = False) -> None:
        """Remove the work dirs of finished executions whose logs are delivered: succeeded ones
        always, failed ones on `clean`, under disk pressure or to `reclaim` space (oldest first)."""
        pending = self.outbox.executions_with_pending()
        try:
            usage = shutil.disk_usage(self.root)
            pressure = reclaim or 100.0 * usage.used / usage.total > DISK_PRESSURE
        except OSError:
            pressure = reclaim
        dirs = []
        for name in os.listdir(self.root):
            d = os.path.join(self.root, name)
            if not name.startswith("exec-"):
                continue
            try:
                eid = int(name[5:])
            except ValueError:
                continue
            # "done" may be missing when the disk had no inode left for it: this agent remembers
            done = os.path.join(d, "done")
            outcome = _read_marker(done) if os.path.exists(done) else self._ended.get(eid)
            if outcome is not None and eid not in pending:
                dirs.append((os.path.getmtime(d), d, eid, outcome))
        for _, d, eid, outcome in sorted(dirs):
            if everything or pressure or outcome == "succeeded":
                shutil.rmtree(d, ignore_errors=True)
                self._ended.pop(eid, None)

    # --- the loop ---------------------------------------------------------------------
    def request_stop(self) -> None:
        """First call: warm stop. Second: cold stop. Safe in a signal handler: it takes no lock
        (a handler runs in the main thread, between two of its steps, maybe while that thread
        holds one); the `stopper` thread hands the jobs back and wakes the loop."""
        self.stopping = min(self.stopping + 1, 2)
        try:
            os.write(self._stop_w, b"\0")
        except BlockingIOError:
            pass  # a stop is already waiting for the stopper
        # an idle agent sits in a claim's long poll: break it off, so a stop takes no longer than that
        self.client.interrupt()

    def _stopper_loop(self) -> None:
        while os.read(self._stop_r, 64):
            try:
                self._stop_jobs()
            except Exception:  # noqa: BLE001 - this thread must not die: a second signal would do nothing
                log.warning("handing the jobs back failed", exc_info=True)

    def _stop_jobs(self) -> None:
        with self._jobs_lock:
            jobs = list(self.jobs.values())
        handback = self.config.worker.on_stop == "handback"
        for job in jobs:
            job.hand_back(force=self.stopping == 2 or handback)
        self._wake.set()
        self.slots.wake()

    def request_upgrade(self) -> None:
        """Upgrade drain, safe to call from a signal handler (it only sets a flag): the loop then
        stops claiming, hands back what has not started, lets running tasks finish for up to
        `[worker] upgrade_deadline` seconds, hands back the rest, and `run` returns EXIT_UPGRADE
        so systemd starts the agent again, on the new scitq.pyz."""
        self.upgrade_requested = True

    def _drain_for_upgrade(self) -> None:
        now = self.clock()
        deadline = self.config.worker.upgrade_deadline
        if self._upgrade_since is None:
            self._upgrade_since = now
            self.stopping = max(self.stopping, 1)
            with self._jobs_lock:
                jobs = list(self.jobs.values())
            for job in jobs:
                job.hand_back()
            self.slots.wake()
            self.say(f"scitq worker {self.name}: upgrade: claiming nothing more; {len(jobs)} task(s) may run "
                     f"{deadline:.0f} s more, then the agent restarts on the new version")
        elif not self._upgrade_forced and now - self._upgrade_since >= deadline:
            self._upgrade_forced = True
            with self._jobs_lock:
                jobs = list(self.jobs.values())
            for job in jobs:
                job.hand_back(force=True)
            self.say(f"scitq worker {self.name}: upgrade deadline reached: handing back {len(jobs)} task(s)")

    def run(self, once: bool = False) -> int:
        """Run until stopped (or, with `once`, one claim round run to completion). Returns 0, or
        EXIT_UPGRADE after an upgrade drain."""
        threading.Thread(target=self._stopper_loop, name="stopper", daemon=True).start()
        threading.Thread(target=self._lease_loop, name="lease", daemon=True).start()
        self.recover()
        self.register()
        heart = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        threading.Thread(target=self._orders_loop, name="signals", daemon=True).start()
        sender = threading.Thread(target=self._sender_loop, name="sender", daemon=True)
        heart.start()
        sender.start()
        delay = 0.5
        request: str | None = None  # the claim being tried (see below)
        try:
            while not (self.stopping and not self.jobs):
                if self.upgrade_requested:
                    self._drain_for_upgrade()
                    if not self.jobs:
                        break
                if self._need_register.is_set():
                    self.register()
                if self.settings["status"] == "draining" and not self.jobs:
                    self.say(f"scitq worker {self.name}: drained, exiting")
                    break
                if self.clock() - self._last_clean > CLEAN_EVERY:
                    self._last_clean = self.clock()
                    self.clean()
                free = int(self.settings["concurrency"]) + int(self.settings["prefetch"]) - len(self.jobs)
                if not self._check_resources() or self.clock() < self._claim_after:
                    free = 0  # looked at again after a wait: space freed is noticed within seconds
                if self.stopping or self.settings["status"] != "running" or free <= 0 or self.worker_id is None:
                    if once and not self.jobs:
                        break
                    self._wake.wait(1.0)
                    self._wake.clear()
                    continue
                try:
                    # One request id per claim until it gets an answer: a retry after a lost reply
                    # gets the executions the server already charged to this worker.
                    request = request or uuid.uuid4().hex
                    reply = self.client.claim_reply(self.worker_id, free, wait=0 if once else CLAIM_WAIT,
                                                    request=request)
                    request = None
                    executions = reply["executions"]
                    delay = 0.5
                    self._claims.ok()
                except (Unauthorized, NotFound):
                    self._need_register.set()
                    continue
                except (ConfigError, TlsMismatch):
                    raise
                except ScitqError as e:  # unreachable, or an answer no retry loop should die of
                    if self.stopping:
                        continue  # the claim was broken off by the stop itself
                    self._claims.failed(e.message)
                    pause, delay = backoff(delay, 5.0)
                    # cleared first: a wake left set (a task ended) would turn this wait into a spin
                    self._wake.clear()
                    self._wake.wait(pause)
                    continue
                for execution in executions:
                    self._start(execution)
                if not executions and reply.get("retry_after") and not once:
                    # The server is holding as many long-polls as it can: come back when it says
                    # (it spreads the fleet's returns), or sooner if one of our tasks ends.
                    self._wake.clear()
                    self._wake.wait(float(reply["retry_after"]))
                if once:
                    self._wait_jobs()
                    break
        finally:
            self._wait_jobs()
            self._done.set()
            self.outbox.wake()
            sender.join(timeout=30 if self.stopping < 2 else 10)
            self._abandon.set()
            left = len(self.outbox.journal)
            if left:
                self.say(f"scitq worker: {left} report(s) kept on disk for the next start")
        if self.upgrade_requested:
            self.say(f"scitq worker {self.name}: drained for the upgrade; exiting for a restart")
            return EXIT_UPGRADE
        return 0

    def _wait_jobs(self) -> None:
        while True:
            with self._jobs_lock:
                jobs = list(self.jobs.values())
            if not jobs:
                return
            for job in jobs:
                job.thread.join(timeout=0.5)


def _digest_of(path: str) -> str | None:
    """The hash the server gives its rclone config (sha256 of the UTF-8 text), of a file here."""
    import hashlib
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _read_marker(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return ""


def run_worker(config: Config, once: bool = False, log: Callable[[str], None] | None = None) -> int:
    """The `worker run` role: build the worker, wire SIGTERM/SIGINT, run it."""
    import signal
    worker = Worker(config, say=log)

    def on_signal(signum: int, frame: Any) -> None:
        worker.request_stop()
        worker.say("scitq worker: stopping after the running tasks (signal again to kill them)"
                   if worker.stopping == 1 else "scitq worker: killing the running tasks")

    def on_upgrade(signum: int, frame: Any) -> None:
        worker.request_upgrade()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, on_upgrade)
    return worker.run(once=once)
