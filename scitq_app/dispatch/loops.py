"""The dispatcher loop: lease expiry, server-side deadlines, dependency release
and offline detection. Only the holder of the database lock acts, so several
dispatchers (a standby, or one per server process) never act twice."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable

from ..beats import rhythm
from ..config import Config
from ..errors import ScitqError
from ..store import Store

log = logging.getLogger(__name__)

LOCK_NAME = "dispatcher"
# How far back the first round after taking the lock looks for completions whose dependents
# may still wait, and by how much each round's window overlaps the previous one's.
RELEASE_LOOKBACK = 3600.0
RELEASE_OVERLAP = 5.0
PRUNE_EVERY = 60.0  # seconds between two pruning rounds (events, idempotency keys)
PRUNE_BATCHES = 20  # small transactions per round at most: the rest waits for the next round
DAY = 86400.0


class Dispatcher:
    """One dispatcher. `tick()` runs one round; `run()` loops until `stop` is set.

    After it takes the lock (at start, or when taking over from a dead one) it
    waits one lease period before expiring leases, and `offline_after` before
    marking workers offline: workers that kept running while no dispatcher was
    there must get a chance to heartbeat first. A round that fails (the database
    away, most often) starts that grace again: while the database is away the
    server cannot record heartbeats, so that time says nothing of the workers."""

    def __init__(self, store: Store, config: Config, *, clock: Callable[[], float] = time.time,
                 holder: str | None = None, on_change: Callable[[], None] | None = None) -> None:
        self.store = store
        self.clock = clock
        self.config = config
        self.interval = config.dispatcher.interval
        self.lease = config.dispatcher.lease
        self.offline_after = config.dispatcher.offline_after
        self._released_until: float | None = None
        self._pruned_at = float("-inf")
        self.lock_ttl = config.dispatcher.lock_ttl
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.on_change = on_change or (lambda: None)
        self.active_since: float | None = None
        # recruiting, when [recruit] providers declares some (built lazily: the providers' libraries
        # load only where they are used)
        self.recruiting: Any = None
        self._recruiting_checked = False

    @property
    def active(self) -> bool:
        return self.active_since is not None

    def tick(self) -> dict[str, Any]:
        """One round. Returns what it did (for logs and tests)."""
        now = self.clock()
        if not self.store.acquire_lock(LOCK_NAME, self.holder, self.lock_ttl):
            if self.active:
                log.warning("dispatcher %s lost its lock", self.holder, extra={"action": "standby"})
            self.active_since = None
            return {"active": False}
        if self.active_since is None:
            self.active_since = now
            log.info("dispatcher %s is active; leases expire after %.0f s of grace", self.holder, self.lease,
                     extra={"action": "active"})
        # Leases and silence are judged on the rhythm the server gives the fleet now (it grows
        # with the fleet), counted the same way as the API processes count it.
        pace = rhythm(self.store.fleet_size(), self.config)
        self.lease, self.offline_after = pace.lease, pace.offline_after
        since = (now - RELEASE_LOOKBACK) if self._released_until is None else self._released_until - RELEASE_OVERLAP
        done: dict[str, Any] = {"active": True, "released": self.store.release_after(since), "lost": [],
                                "timed_out": []}
        self._released_until = now
        self.store.fold_task_counts()
        if not 0 <= now - self._pruned_at < PRUNE_EVERY:
            self._pruned_at = now
            done["pruned"] = self.prune(now)
        if now - self.active_since >= self.lease:
            done["lost"] = self.store.expire_leases()
            done["timed_out"] = self.store.enforce_deadlines(self.lease)
        done["offline"] = self.store.mark_offline(self.offline_after) \
            if now - self.active_since >= self.offline_after else []
        for key in ("lost", "timed_out", "offline"):
            if done[key]:
                log.info("dispatcher: %s %s", key, done[key], extra={"action": key})
        if done["released"] or done["lost"] or done["timed_out"]:
            self.on_change()
        if self.config.recruit.providers:
            if not self._recruiting_checked:
                self._recruiting_checked = True
                from ..cloud.provider import load_providers
                from .recruit import Recruiting
                self.recruiting = Recruiting(self.store, self.config, load_providers(self.config.recruit.providers),
                                             clock=self.clock)
                self.recruiting.recover()
            if self.recruiting is not None:
                done["recruit"] = [a.kind for a in self.recruiting.tick()]
        return done

    def prune(self, now: float) -> dict[str, int]:
        """Retention: events older than [server] event_retention, idempotency keys older than
        [server] submission_retention, a few hundred rows per transaction."""
        total = {"events": 0, "submissions": 0}
        for _ in range(PRUNE_BATCHES):
            done = self.store.prune(now - self.config.server.event_retention * DAY,
                                    now - self.config.server.submission_retention * DAY)
            for k, n in done.items():
                total[k] += n
            if not any(done.values()):
                break
        if any(total.values()):
            log.info("dispatcher: pruned %d events and %d idempotency keys", total["events"], total["submissions"],
                     extra={"action": "prune"})
        return total

    def _failed_round(self) -> None:
        if self.active_since is not None:
            log.warning("dispatcher %s: a round failed; leases and offline workers are judged again only after "
                        "a new grace period", self.holder, extra={"action": "grace"})
        self.active_since = None
        self._released_until = None

    def run(self, once: bool = False, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        try:
            while True:
                try:
                    self.tick()
                except ScitqError as e:
                    self._failed_round()
                    log.warning("dispatcher round failed: %s", e.message)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception:
                    self._failed_round()
                    log.exception("dispatcher round crashed; continuing")
                if once or stop.wait(self.interval):
                    return
        finally:
            if self.recruiting is not None:
                self.recruiting.close()
            if self.active:
                try:
                    self.store.release_lock(LOCK_NAME, self.holder)
                except ScitqError:
                    pass
