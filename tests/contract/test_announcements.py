"""Announcements of claimable tasks between server processes (PostgreSQL's LISTEN/NOTIFY): a
process hears the others', not its own (its Notifier woke its long-polls already, and every
wake makes them look at the store again)."""
from __future__ import annotations

import threading

import pytest

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)


def test_a_process_hears_the_announcements_of_others_and_not_its_own(make_store):
    mine, other = make_store(), make_store()
    wakes: list[int] = []
    heard = threading.Condition()
    listening = threading.Event()
    stop = threading.Event()

    def wake() -> None:
        with heard:
            wakes.append(1)
            heard.notify_all()

    def on_listening(yes: bool) -> None:
        if yes:
            listening.set()
    thread = threading.Thread(target=mine.listen_claimable, args=(wake, stop, on_listening), daemon=True)
    thread.start()
    try:
        assert listening.wait(20)
        with heard:  # it wakes once as it starts, for what was announced while none listened
            assert heard.wait_for(lambda: len(wakes) == 1, 20)
            wakes.clear()
        # Delivered in order: its own announcements reach the listener no later than the other's,
        # so once the other's woke it, its own were read (before, or with it): one wake. No other
        # comes while the listener reads its connection again (each second at least).
        for _ in range(5):
            mine.announce_claimable()
        other.announce_claimable()
        with heard:
            assert heard.wait_for(lambda: len(wakes) >= 1, 20)
            assert not heard.wait_for(lambda: len(wakes) > 1, 1.5), f"{len(wakes)} wakes"
    finally:
        stop.set()
        thread.join(10)
