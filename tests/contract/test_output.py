"""append_output / read_output: idempotent by offset, head + tail caps."""
from __future__ import annotations

import random

import pytest

from scitq_app.errors import Fenced, Forbidden, NotFound

from .scene import LEASE

HEAD, TAIL = 100, 200


def data_of(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.randrange(32, 127) for _ in range(n))


def append_all(store, e, data: bytes, sizes, stream: str = "stdout", final: bool = True) -> int:
    """Append `data` in chunks of the given sizes (cycled); return the last size reply."""
    pos, i, size = 0, 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        i += 1
        chunk = data[pos:pos + n]
        size = store.append_output(e["id"], e["worker_id"], stream, pos, chunk,
                                   final and pos + len(chunk) == len(data), HEAD, TAIL)
        pos += len(chunk)
    return size


def test_small_output_is_kept_whole_and_read_back(store, start):
    e = start("running")
    assert store.append_output(e["id"], e["worker_id"], "stdout", 0, b"hello ", False, HEAD, TAIL) == 6
    assert store.append_output(e["id"], e["worker_id"], "stdout", 6, b"world\n", False, HEAD, TAIL) == 12
    out = store.read_output(e["id"], "stdout")
    assert (out.data, out.offset, out.next_offset, out.size, out.cuts, out.complete) == (
        b"hello world\n", 0, 12, 12, (), False)
    assert store.read_output(e["id"], "stderr").data == b""
    store.append_output(e["id"], e["worker_id"], "stdout", 12, b"", True, HEAD, TAIL)
    assert store.read_output(e["id"], "stdout").complete is True
    assert store.get_execution(e["id"]).stdout_size == 12


def test_streams_are_kept_apart(store, start):
    e = start("running")
    store.append_output(e["id"], e["worker_id"], "stdout", 0, b"out", False, HEAD, TAIL)
    store.append_output(e["id"], e["worker_id"], "stderr", 0, b"err!", False, HEAD, TAIL)
    assert store.read_output(e["id"], "stdout").data == b"out"
    assert store.read_output(e["id"], "stderr").data == b"err!"
    x = store.get_execution(e["id"])
    assert (x.stdout_size, x.stderr_size) == (3, 4)


def test_append_is_idempotent_by_offset(store, start):
    e = start("running")
    for _ in range(3):
        assert store.append_output(e["id"], e["worker_id"], "stdout", 0, b"abc", False, HEAD, TAIL) == 3
    assert store.append_output(e["id"], e["worker_id"], "stdout", 3, b"def", False, HEAD, TAIL) == 6
    # a replay of the first chunk after the second changes nothing
    assert store.append_output(e["id"], e["worker_id"], "stdout", 0, b"abc", False, HEAD, TAIL) == 6
    assert store.read_output(e["id"], "stdout").data == b"abcdef"


def test_a_resend_cut_into_other_chunks_fills_only_what_is_missing(store, start):
    # A restarted worker ships a log from offset 0 again, in one chunk where the first run sent two.
    e = start("running")
    store.append_output(e["id"], e["worker_id"], "stdout", 0, b"abc", False, HEAD, TAIL)
    store.append_output(e["id"], e["worker_id"], "stdout", 5, b"fg", False, HEAD, TAIL)
    assert store.append_output(e["id"], e["worker_id"], "stdout", 0, b"abcdefghij", False, HEAD, TAIL) == 10
    assert store.read_output(e["id"], "stdout").data == b"abcdefghij"


def test_chunks_arriving_out_of_order_read_back_in_order(store, start):
    e = start("running")
    store.append_output(e["id"], e["worker_id"], "stdout", 4, b"4567", False, HEAD, TAIL)
    store.append_output(e["id"], e["worker_id"], "stdout", 0, b"0123", False, HEAD, TAIL)
    assert store.read_output(e["id"], "stdout").data == b"01234567"


def test_head_and_tail_are_kept_and_the_middle_is_cut(store, start):
    e = start("running")
    data = data_of(10_000)
    assert append_all(store, e, data, [100]) == 10_000
    out = store.read_output(e["id"], "stdout")
    assert out.data == data[:100] + data[-200:]
    assert out.cuts == ((100, 9_800),)
    assert (out.size, out.offset, out.next_offset, out.complete) == (10_000, 0, 10_000, True)


@pytest.mark.parametrize("sizes", [[37], [1, 250, 7, 64], [333, 999]], ids=["37", "mixed", "big"])
def test_caps_hold_whatever_the_chunk_sizes(store, start, sizes):
    e = start("running")
    data = data_of(10_000, seed=len(sizes))
    assert append_all(store, e, data, sizes) == 10_000
    out = store.read_output(e["id"], "stdout")
    assert out.data == data[:100] + data[-200:]
    assert out.cuts == ((100, 9_800),)
    assert out.size == 10_000


def test_a_single_huge_chunk_is_cut_too(store, start):
    e = start("running")
    data = data_of(10_000, seed=3)
    assert store.append_output(e["id"], e["worker_id"], "stderr", 0, data, True, HEAD, TAIL) == 10_000
    out = store.read_output(e["id"], "stderr")
    assert out.data == data[:100] + data[-200:]
    assert out.cuts == ((100, 9_800),)
    assert out.size == 10_000 and out.complete


def test_negative_offset_reads_the_tail(store, start):
    e = start("running")
    data = data_of(10_000, seed=4)
    append_all(store, e, data, [500])
    out = store.read_output(e["id"], "stdout", offset=-50)
    assert (out.data, out.offset, out.next_offset, out.cuts) == (data[-50:], 9_950, 10_000, ())
    # more than what is kept: the cut part is reported, not invented
    out = store.read_output(e["id"], "stdout", offset=-1_000)
    assert (out.data, out.offset, out.cuts) == (data[-200:], 9_000, ((9_000, 9_800),))
    assert store.read_output(e["id"], "stdout", offset=-50_000).offset == 0


def test_reading_follows_offsets_and_limits(store, start):
    e = start("running")
    data = data_of(80, seed=5)
    append_all(store, e, data, [30], final=False)
    first = store.read_output(e["id"], "stdout", offset=0, limit=25)
    assert (first.data, first.next_offset, first.complete) == (data[:25], 25, False)
    rest = store.read_output(e["id"], "stdout", offset=first.next_offset)
    assert (rest.data, rest.next_offset) == (data[25:], 80)
    assert store.read_output(e["id"], "stdout", offset=80).data == b""


def test_a_finished_execution_has_complete_output(store, start):
    e = start("running")
    store.append_output(e["id"], e["worker_id"], "stdout", 0, b"x" * 10, False, HEAD, TAIL)
    store.report(e["id"], e["worker_id"], {"phase": "succeeded", "return_code": 0})
    assert store.read_output(e["id"], "stdout").complete is True
    # output flushed after the final report is still accepted
    store.append_output(e["id"], e["worker_id"], "stdout", 10, b"y", True, HEAD, TAIL)
    assert store.read_output(e["id"], "stdout").data == b"x" * 10 + b"y"


def test_a_fenced_execution_refuses_output(store, start, clock):
    e = start("running")
    store.append_output(e["id"], e["worker_id"], "stdout", 0, b"before", False, HEAD, TAIL)
    clock.advance(LEASE + 1)
    assert store.expire_leases() == [e["id"]]
    with pytest.raises(Fenced):
        store.append_output(e["id"], e["worker_id"], "stdout", 6, b"after", False, HEAD, TAIL)
    assert store.read_output(e["id"], "stdout").data == b"before"


def test_a_finished_attempt_refuses_output_once_a_new_attempt_exists(store, start):
    e = start("running")
    store.report(e["id"], e["worker_id"], {"phase": "succeeded", "return_code": 0})
    store.relaunch_task(e["task_id"])
    store.claim(e["worker_id"], 1, LEASE)
    with pytest.raises(Fenced):
        store.append_output(e["id"], e["worker_id"], "stdout", 0, b"late", False, HEAD, TAIL)


def test_another_workers_output_is_forbidden(store, start, register):
    e = start("running")
    with pytest.raises(Forbidden):
        store.append_output(e["id"], register().id, "stdout", 0, b"x", False, HEAD, TAIL)
    assert store.read_output(e["id"], "stdout").data == b""


def test_output_of_an_unknown_execution_is_not_found(store):
    with pytest.raises(NotFound):
        store.append_output(999, None, "stdout", 0, b"x", False, HEAD, TAIL)
    with pytest.raises(NotFound):
        store.read_output(999, "stdout")


def test_a_stream_s_size_never_goes_backwards_when_two_deliveries_race(store, start):
    import threading
    for trial in range(15):
        e = start("running")
        barrier = threading.Barrier(2)

        def deliver(data: bytes) -> None:
            barrier.wait(10)
            store.append_output(e["id"], e["worker_id"], "stdout", 0, data, False, HEAD, TAIL)
        threads = [threading.Thread(target=deliver, args=(b"x" * n,)) for n in (1000, 400)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert store.get_execution(e["id"]).to_dict()["stdout_size"] == 1000, f"trial {trial}"
