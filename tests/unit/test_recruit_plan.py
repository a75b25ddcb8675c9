"""The recruiting policy (dispatch/recruit.plan), driven with plain data: how many workers a
batch wants, recycling idle rented workers before deploying, and giving back idle machines."""
from __future__ import annotations

from scitq_app.cloud.provider import Flavor, choose, parse_filter
from scitq_app.dispatch.recruit import plan
from scitq_app.models import Recruiter, RentedMachine

SMALL = Flavor("cloud", "s4", "r1", cpu=4, mem=16, price=0.2)
BIG = Flavor("cloud", "b16", "r1", cpu=16, mem=64, price=0.9)


def recruiter(id: int = 1, batch: str = "b", rank: int = 1, flavor: str = "s4", tasks_per_worker: int = 20,
              minimum_tasks: int = 0, maximum_workers: int = 3) -> Recruiter:
    return Recruiter(id=id, batch=batch, rank=rank, provider="cloud", flavor=flavor, region=None,
                     tasks_per_worker=tasks_per_worker, minimum_tasks=minimum_tasks,
                     maximum_workers=maximum_workers, concurrency=4, prefetch=0)


def machine(id: int, batch: str, worker_id: int | None, status: str = "running", recruiter_id: int = 1,
            flavor: str = "s4") -> RentedMachine:
    return RentedMachine(id=id, name=f"m{id}", provider="cloud", region="r1", flavor=flavor, price=0.2,
                         status=status, idem_key=f"k{id}", recruiter_id=recruiter_id, batch=batch,
                         worker_id=worker_id)


def demand(recruiters, pending, live=None, coming=None, machines=()):
    return {"recruiters": list(recruiters), "pending": pending, "live": live or {}, "coming": coming or {},
            "machines": list(machines)}


def kinds(actions):
    return [(a.kind, a.batch, a.worker_id) for a in actions]


def flavors(r):
    return choose([SMALL, BIG], r.flavor, r.region)


def test_a_batch_wants_one_worker_per_tasks_per_worker_up_to_the_maximum():
    assert kinds(plan(demand([recruiter()], {"b": 60}), [], 0, 600, flavors)) == [("deploy", "b", None)] * 3
    assert kinds(plan(demand([recruiter()], {"b": 21}), [], 0, 600, flavors)) == [("deploy", "b", None)] * 2
    assert kinds(plan(demand([recruiter()], {"b": 500}), [], 0, 600, flavors)) == [("deploy", "b", None)] * 3


def test_workers_live_or_on_their_way_count_and_nothing_is_deployed_twice():
    ms = [machine(1, "b", 11), machine(2, "b", None, status="creating")]
    d = demand([recruiter()], {"b": 60}, live={"b": 1}, coming={"b": 1}, machines=ms)
    assert kinds(plan(d, [], 0, 600, flavors)) == [("deploy", "b", None)]
    d = demand([recruiter()], {"b": 60}, live={"b": 3}, machines=[machine(i, "b", 10 + i) for i in range(3)])
    assert plan(d, [], 0, 600, flavors) == []


def test_below_the_minimum_or_with_nothing_pending_nothing_is_deployed():
    assert plan(demand([recruiter(minimum_tasks=100)], {"b": 60}), [], 0, 600, flavors) == []
    assert plan(demand([recruiter()], {"b": 0}), [], 0, 600, flavors) == []


def test_a_second_rank_adds_workers_once_the_first_is_full():
    rs = [recruiter(1, maximum_workers=1), recruiter(2, rank=2, flavor="b16", maximum_workers=5)]
    actions = plan(demand(rs, {"b": 60}), [], 0, 600, flavors)
    assert [(a.kind, a.recruiter.rank) for a in actions] == [("deploy", 1), ("deploy", 2), ("deploy", 2)]


def test_idle_rented_workers_of_a_finished_batch_are_recycled_before_any_deploy():
    ms = [machine(1, "done", 21, recruiter_id=9), machine(2, "done", 22, flavor="b16", recruiter_id=9)]
    idle = [{"id": 21, "batch": "done", "machine_id": 1, "provider": "cloud", "flavor": "s4", "idle_since": 0.0},
            {"id": 22, "batch": "done", "machine_id": 2, "provider": "cloud", "flavor": "b16", "idle_since": 0.0}]
    d = demand([recruiter(batch="new")], {"new": 60, "done": 0}, machines=ms)
    # the s4 worker moves over (same flavor); the b16 one does not match and is given back when due
    assert kinds(plan(d, idle, 100, 600, flavors)) == [("recycle", "new", 21), ("deploy", "new", None),
                                                       ("deploy", "new", None)]
    assert kinds(plan(d, idle, 700, 600, flavors))[-1] == ("release", "done", 22)


def test_idle_workers_are_given_back_only_when_their_batch_has_nothing_pending_and_the_delay_passed():
    ms = [machine(1, "b", 21)]
    idle = [{"id": 21, "batch": "b", "machine_id": 1, "provider": "cloud", "flavor": "s4", "idle_since": 1000.0}]
    assert plan(demand([recruiter()], {"b": 0}, live={"b": 1}, machines=ms), idle, 1500, 600, flavors) == []
    assert kinds(plan(demand([recruiter()], {"b": 0}, live={"b": 1}, machines=ms), idle, 1600, 600, flavors)) == [
        ("release", "b", 21)]
    # tasks pending again: kept (it will claim them)
    assert plan(demand([recruiter()], {"b": 5}, live={"b": 1}, machines=ms), idle, 9999, 600, flavors) == []
    # a permanent worker (no machine) is never given back
    permanent = [{"id": 5, "batch": None, "machine_id": None, "provider": None, "flavor": None, "idle_since": 0.0}]
    assert plan(demand([], {}), permanent, 9999, 600, flavors) == []
    # a worker recycled into a batch with pending tasks is not given back by its machine's first batch
    moved = [{"id": 21, "batch": "other", "machine_id": 1, "provider": "cloud", "flavor": "s4", "idle_since": 0.0}]
    assert plan(demand([recruiter()], {"b": 0, "other": 3}, machines=ms), moved, 9999, 600, flavors) == []


def test_flavors_by_name_or_the_cheapest_matching_filter():
    assert choose([SMALL, BIG], "b16", None) == BIG
    assert choose([SMALL, BIG], "cpu>=8", None) == BIG
    assert choose([SMALL, BIG], "cpu>=2:mem>=8", None) == SMALL
    assert choose([SMALL, BIG], "cpu>=64", None) is None
    assert choose([SMALL, BIG], "s4", "elsewhere") is None
    assert parse_filter("cpu>=16:mem>=64") == [("cpu", ">=", 16.0), ("mem", ">=", 64.0)]
    assert plan(demand([recruiter(flavor="cpu>=64")], {"b": 60}), [], 0, 600, flavors) == [], "none available"


def test_deploys_stay_within_the_providers_caps_counting_what_it_holds_and_plans():
    from scitq_app.models import Caps
    rs = [recruiter(1, batch="a", maximum_workers=10), recruiter(2, batch="b", maximum_workers=10)]
    held = [machine(1, "x", 11, recruiter_id=9), machine(2, "x", None, status="destroying", recruiter_id=9)]
    d = demand(rs, {"a": 100, "b": 100}, machines=held)
    assert kinds(plan(d, [], 0, 600, flavors, {"cloud": Caps(machines=5)})) == [("deploy", "a", None)] * 3, \
        "5 in all: 2 held (one being given back still counts), 3 more, the first batch served first"
    caps = {"cloud": Caps(machines=50, per_region={"r1": 4})}
    assert kinds(plan(d, [], 0, 600, flavors, caps)) == [("deploy", "a", None)] * 2
    assert kinds(plan(d, [], 0, 600, flavors, {"cloud": Caps(per_region={"r2": 0})})) == \
        [("deploy", "a", None)] * 5 + [("deploy", "b", None)] * 5, "another region's cap does not apply"
    assert plan(d, [], 0, 600, flavors, {"cloud": Caps(per_region={"*": 2})}) == []
    assert kinds(plan(d, [], 0, 600, flavors, {"other": Caps(machines=0)})) == \
        [("deploy", "a", None)] * 5 + [("deploy", "b", None)] * 5, "another provider's cap does not apply"
