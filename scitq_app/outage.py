"""How a retrying loop talks about the server being away: once when it goes, once when it is back.

A worker that cannot reach its server keeps trying (its tasks run on; reports wait in the journal),
and a line per try would fill the disk during a long outage. An `Outage` says the first failure,
a changed cause, a reminder every few minutes with the count of tries, and the recovery with how
long it lasted; `backoff` spaces the tries out, capped and with jitter so a fleet does not come back
in step.
"""
from __future__ import annotations

import random
import time
from typing import Callable

REMIND_EVERY = 300.0  # seconds between two "still failing" lines


class Outage:
    """The state of one loop's link to the server (not thread-safe: one per loop)."""

    def __init__(self, what: str, say: Callable[[str], None], clock: Callable[[], float] = time.monotonic,
                 remind: float = REMIND_EVERY) -> None:
        self.what = what
        self.say = say
        self.clock = clock
        self.remind = remind
        self.since: float | None = None   # when the current outage began
        self.tries = 0
        self.cause = ""
        self._said = 0.0

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, cause: str) -> None:
        """One more failed try; says so only when the outage begins, its cause changes, or a
        reminder is due."""
        now = self.clock()
        self.tries += 1
        if self.since is None:
            self.since, self.cause, self._said = now, cause, now
            self.say(f"{self.what}: {cause}; retrying (said again when it changes or every "
                     f"{self.remind / 60:.0f} min)")
        elif cause != self.cause:
            self.cause, self._said = cause, now
            self.say(f"{self.what}: {cause} (try {self.tries})")
        elif now - self._said >= self.remind:
            self._said = now
            self.say(f"{self.what}: still failing after {self.tries} tries over {now - self.since:.0f} s: {cause}")

    def ok(self) -> None:
        """A try succeeded: says the outage is over, if there was one."""
        if self.since is not None:
            self.say(f"{self.what}: the server answers again after {self.clock() - self.since:.0f} s "
                     f"({self.tries} tries)")
        self.since, self.tries, self.cause = None, 0, ""


def backoff(delay: float, cap: float, rand: Callable[[], float] = random.random) -> tuple[float, float]:
    """(the wait before the next try, the next `delay`): exponential up to `cap`, each wait drawn in
    [0.5, 1.0] x delay so that workers which lost the server together do not return together."""
    return delay * (0.5 + rand() / 2), min(delay * 2, cap)
