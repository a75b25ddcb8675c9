"""The server's in-memory helpers of the worker protocol: the `Notifier` that wakes
long-polling claims when something becomes claimable, the `Lookout` through which the
long-polls it woke look at the store together, the `HeartbeatBuffer` that records
heartbeats (and token use) in batches, off the request path, and the `Pace` that sets how
often workers beat and come back as the fleet grows."""
from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from .config import Config
from .errors import ScitqError
from .store import Store

log = logging.getLogger(__name__)

# A long-poll's own look at the store once announcements wake it: only a safety net.
LISTENING_RECHECK = 5.0


class Notifier:
    """Wakes long-polling claims when tasks may have become claimable: `notify` for a change
    made in this process (also told to the other processes on the database with `publish`,
    e.g. Store.announce_claimable), `wake` for one another process announced (`listen`)."""

    def __init__(self, publish: Callable[[], None] | None = None) -> None:
        self._cond = threading.Condition()
        self._generation = 0
        self._publish = publish
        self._listening = False
        self._closed = False

    @property
    def listening(self) -> bool:
        return self._listening

    @property
    def recheck(self) -> float:
        """How long a long-poll waits before it looks at the store again by itself: short while
        changes made by other processes wake nobody here, long while `listen` hears them."""
        return LISTENING_RECHECK if self._listening else 0.5

    def notify(self) -> None:
        self.wake()
        if self._publish is not None:
            try:
                self._publish()
            except ScitqError as e:
                log.warning("could not tell other server processes about claimable tasks: %s", e.message)

    def wake(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def listen(self, store: Store, stop: threading.Event) -> threading.Thread:
        """Wake on every other process's announcements (a thread of its own, until `stop`)."""
        def listening(yes: bool) -> None:
            self._listening = yes

        def run() -> None:
            store.listen_claimable(self.wake, stop, listening)
        thread = threading.Thread(target=run, name="claimable-listener", daemon=True)
        thread.start()
        return thread

    def generation(self) -> int:
        return self._generation

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """The server is stopping: every long poll ends now and no new one waits."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait(self, since: int, timeout: float) -> None:
        with self._cond:
            if self._generation == since and not self._closed:
                self._cond.wait(timeout)


class Lookout:
    """The long-polling claims of one process, looking at the store together after a wake.

    A wake (a submission, a freed slot, a requeue) wakes every long-poll of the process. Each
    looking for itself cost a read per long-poll per wake (48 a wake with 2 processes of 48
    threads), as many as all the heartbeats of a 5,000-worker fleet. Here one read
    (`Store.claimable_workers`) answers for all the workers polling here; only those it names
    claim, one at a time, and each claim makes the next one read again, so that after the one
    that took a single new task the others see it gone instead of each claiming it in vain."""

    def __init__(self, store: Store, notifier: Notifier) -> None:
        self.store = store
        self.notifier = notifier
        self.turn = threading.Lock()  # held by the woken long-poll that looks (and claims) now
        self._lock = threading.Lock()  # for the two below
        self._polling: dict[int, int] = {}  # worker id -> its long-polls here
        self._claims = 0  # claims made here (each voids the last look)
        # the last look: the generation and the claims made here before it, whom it asked, who could claim
        self._seen: tuple[int, int, frozenset[int], frozenset[int]] | None = None

    @property
    def long_polls(self) -> int:
        """Long-polls waiting here now (shown by /health)."""
        with self._lock:
            return sum(self._polling.values())

    @contextlib.contextmanager
    def polling(self, worker_id: int) -> Iterator[None]:
        """While a long-poll of this worker waits here."""
        with self._lock:
            self._polling[worker_id] = self._polling.get(worker_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._polling.pop(worker_id) - 1
                if left:
                    self._polling[worker_id] = left

    def could_claim(self, worker_id: int, since: int) -> bool:
        """Whether this worker could claim now, from a look made after generation `since` was
        read (a long-poll reads it before it looks, then waits for the next one): the last look
        if it was, else a new one for every worker polling here. Call it holding `turn`."""
        seen = self._seen
        if seen is None or seen[0] < since or seen[1] != self._claims or worker_id not in seen[2]:
            # read before the look: a change after them wakes the long-polls again, or voids it
            generation, claims = self.notifier.generation(), self._claims
            with self._lock:
                asked = frozenset(self._polling) | {worker_id}
            found = frozenset(self.store.claimable_workers(asked))
            seen = self._seen = (generation, claims, asked, found)
        return worker_id in seen[3]

    def claimed(self) -> None:
        """A claim was made here: what the last look found may be gone; the next one reads again."""
        with self._lock:
            self._claims += 1


class HeartbeatBuffer:
    """Writes heartbeats to the store in batches, about twice a second.

    2,000 workers beating every 5 s are 400 small writes a second; one
    transaction for all the beats of half a second costs the database (and
    SQLite's single writer) far less. What waits here is hint data — last seen,
    stats, lease renewals, signal acks — so a beat's reply is computed at once
    from the store, and a server crash only delays some renewals by a beat."""

    def __init__(self, store: Store, lease: float, clock: Callable[[], float] = time.time,
                 interval: float = 0.5, max_pending: int = 1000) -> None:
        self.store = store
        self.lease = lease
        self.clock = clock
        self.interval = interval
        self.max_pending = max_pending
        self._pending: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, worker_id: int, stats: dict, executions: list[int], acks: list[int]) -> None:
        with self._lock:
            beat = self._pending.get(worker_id)
            if beat is None:
                beat = self._pending[worker_id] = {"worker_id": worker_id, "executions": set(), "acks": set()}
            beat["stats"] = stats
            beat["at"] = self.clock()
            beat["executions"] = set(executions)  # the latest list is what the worker holds now
            beat["acks"].update(acks)
            full = len(self._pending) >= self.max_pending
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
                self._thread.start()
        if full:
            self._wake.set()

    def pending_acks(self, worker_id: int) -> set[int]:
        with self._lock:
            beat = self._pending.get(worker_id)
            return set(beat["acks"]) if beat else set()

    def flush(self) -> None:
        try:
            self.store.flush_token_use()
        except ScitqError as e:
            log.warning("could not record token use: %s", e.message)
        with self._lock:
            beats, self._pending = list(self._pending.values()), {}
        if not beats:
            return
        try:
            self.store.record_heartbeats([{**b, "executions": sorted(b["executions"]), "acks": sorted(b["acks"])}
                                          for b in beats], self.lease)
        except ScitqError as e:
            log.warning("could not record %d heartbeats: %s; keeping them for the next round", len(beats), e.message)
            with self._lock:
                for b in beats:
                    newer = self._pending.get(b["worker_id"])
                    if newer is None:
                        self._pending[b["worker_id"]] = b
                    else:
                        newer["acks"].update(b["acks"])

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # a bug must not stop the recording of heartbeats
                log.exception("heartbeat recording crashed; continuing")

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()


@dataclass(frozen=True)
class Rhythm:
    """The worker protocol's timing for a fleet of a given size."""

    fleet: int
    heartbeat: float  # seconds between two beats of one worker
    lease: float  # seconds an execution stays leased unrenewed
    offline_after: float  # seconds of silence before a worker is offline
    come_back: float  # mean seconds before an idle worker without a long-poll claims again


def rhythm(fleet: int, config: Config) -> Rhythm:
    """The server's load stays bounded as workers are added: past `[server] heartbeat_rate` x
    `[worker] heartbeat` workers, beats (and idle claims) are spread so that the fleet sends
    about heartbeat_rate of each a second; leases stay 3 beats long at least, and a worker
    is offline after 2 leases of silence at least. Smaller fleets keep the configured values.
    The dispatcher computes the same from the same fleet count, so every process agrees."""
    configured = min(config.worker.heartbeat, config.dispatcher.lease / 3)
    heartbeat = max(configured, fleet / config.server.heartbeat_rate)
    lease = max(config.dispatcher.lease, 3 * heartbeat)
    offline_after = max(config.dispatcher.offline_after, 2 * lease)
    come_back = min(60.0, max(config.server.claim_wait, fleet / config.server.heartbeat_rate))
    return Rhythm(fleet, heartbeat, lease, offline_after, come_back)


class Pace:
    """The current `rhythm`, from the number of live workers counted at most every `every` s."""

    def __init__(self, store: Store, config: Config, clock: Callable[[], float] = time.time,
                 every: float = 10.0, rng: random.Random | None = None) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.every = every
        self.rng = rng or random.Random()
        self._at = float("-inf")
        self._rhythm = rhythm(0, config)
        self._lock = threading.Lock()

    def now(self) -> Rhythm:
        at = self.clock()
        if not 0 <= at - self._at < self.every:
            with self._lock:
                if not 0 <= at - self._at < self.every:
                    self._at = at  # first, so that a failing count is not retried by every request
                    try:
                        self._rhythm = rhythm(self.store.fleet_size(), self.config)
                    except ScitqError as e:
                        log.warning("could not count the fleet: %s; keeping its last rhythm", e.message)
        return self._rhythm

    def come_back_after(self) -> float:
        """When an idle worker that got no long-poll should claim again: the mean, +-50 % jitter
        so that a fleet told at once does not come back at once."""
        return round(self.now().come_back * self.rng.uniform(0.5, 1.5), 3)
