"""Spreading claims among the agents of one pool (agent/runtime/claims.py): pure rules."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.api.models import FlowRun, ScheduledRun, Worker
from agent.runtime.claims import SERVER_PAGE, Spread, live_agents, owner, score

GRACE = 7.5
SUSPEND = 60.0

run_ids = st.uuids().map(str)
agent_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)
agent_sets = st.sets(agent_names, min_size=1, max_size=8)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def page(ids: list[str]) -> list[ScheduledRun]:
    return [ScheduledRun(work_pool_id="wp", work_queue_id="wq", flow_run=FlowRun(id=i)) for i in ids]


def worker(name: str, age: float = 1.0, interval: int = 30, status: str | None = "ONLINE") -> Worker:
    beat = datetime.now(UTC) - timedelta(seconds=age)
    return Worker(name=name, status=status, last_heartbeat_time=beat, heartbeat_interval_seconds=interval)


def spread(me: str, peers: set[str], clock: Clock | None = None) -> Spread:
    s = Spread(me, grace=GRACE, suspend=SUSPEND, refresh_every=10.0, clock=clock or Clock())
    s.saw_workers("p", [worker(name) for name in peers])
    return s


def seeded_ids(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


# -- the owner of a run ------------------------------------------------------------------------


@given(run_ids, agent_sets, st.randoms())
def test_every_run_has_one_owner_whatever_order_the_agents_are_listed_in(run_id, agents, rnd) -> None:
    listed = list(agents)
    rnd.shuffle(listed)
    assert owner(run_id, listed) == owner(run_id, sorted(agents)) in agents


@given(run_ids, agent_sets, agent_names)
def test_an_agent_joining_or_leaving_moves_only_its_own_share(run_id, agents, other) -> None:
    before = owner(run_id, agents)
    joined = owner(run_id, agents | {other})
    assert joined in (before, other)  # the newcomer takes runs, nobody else's change hands
    if other in agents and len(agents) > 1 and before != other:
        assert owner(run_id, agents - {other}) == before


def test_shares_are_even() -> None:
    agents = ["agent-a", "agent-b", "agent-c", "agent-d"]
    counts = {a: 0 for a in agents}
    for run_id in seeded_ids(4000):
        counts[owner(run_id, agents)] += 1
    assert all(850 <= c <= 1150 for c in counts.values()), counts  # 1000 each, sd ≈ 27


# -- the plan of a batch ---------------------------------------------------------------------------


@settings(max_examples=60)
@given(st.lists(run_ids, unique=True, max_size=60), agent_sets)
def test_agents_that_see_each_other_split_a_page_exactly(ids, agents) -> None:
    plans = [spread(me, agents).plan("p", page(ids)) for me in agents]
    claimed = [c.run_id for plan in plans for c in plan]
    assert sorted(claimed) == sorted(ids)  # each run claimed once, by exactly one agent
    assert not any(c.takeover for plan in plans for c in plan)


def test_own_share_comes_first_in_page_order() -> None:
    ids = seeded_ids(50)
    clock = Clock()
    s = spread("a", {"a", "b"}, clock)
    s.plan("p", page(ids))
    clock.now += GRACE
    plan = s.plan("p", page(ids))
    mine = [c.run_id for c in plan if not c.takeover]
    assert mine == [i for i in ids if owner(i, {"a", "b"}) == "a"]
    assert [c.takeover for c in plan] == sorted(c.takeover for c in plan)  # takeovers last


def test_this_agent_counts_itself_before_its_first_heartbeat() -> None:
    s = spread("a", {"b"})
    assert s.agents("p") == {"a", "b"}
    fresh = Spread("a", grace=GRACE, suspend=SUSPEND, refresh_every=10.0)
    assert {c.run_id for c in fresh.plan("p", page(["r1", "r2"]))} == {"r1", "r2"}


def test_before_it_sees_its_own_row_an_agent_claims_one_batch_of_its_likeliest_runs() -> None:
    ids = seeded_ids(100)
    young = Spread("a", grace=GRACE, suspend=SUSPEND, refresh_every=10.0, young_batch=8)
    plan = young.plan("p", page(ids))
    assert [c.run_id for c in plan] == sorted(ids, key=lambda i: score(i, "a"), reverse=True)[:8]
    assert young.capped("p")
    young.saw_workers("p", [worker("a")])  # its heartbeat landed: no one else, the whole page
    plan = young.plan("p", page(ids))
    assert [c.run_id for c in plan] == ids and not young.capped("p")


def test_when_the_rows_cannot_be_read_an_agent_claims_with_the_view_it_has() -> None:
    ids = seeded_ids(40)
    s = spread("a", {"b"})  # young: our own row not seen yet
    s.no_workers("p")
    plan = s.plan("p", page(ids))
    assert [c.run_id for c in plan] == [i for i in ids if owner(i, {"a", "b"}) == "a"]
    assert not s.capped("p") and not s.wants_workers("p")


def test_agents_blind_to_each_other_mostly_pick_different_runs() -> None:
    ids = seeded_ids(100)
    batches = [
        {c.run_id for c in Spread(me, grace=GRACE, suspend=SUSPEND, refresh_every=10.0).plan("p", page(ids))}
        for me in ("agent-a", "agent-b", "agent-c", "agent-d")
    ]
    # 32 claims: about 4 collide by chance (8 x 8 / 100 per pair); the page's head would be 8 runs
    assert len(set().union(*batches)) >= 24


def test_worker_rows_are_read_often_while_starting_or_busy_and_seldom_when_idle() -> None:
    clock = Clock()
    s = Spread("a", grace=GRACE, suspend=SUSPEND, refresh_every=10.0, busy_refresh=1.0, clock=clock)
    assert s.wants_workers("p")
    s.saw_workers("p", [])  # our heartbeat is not in yet
    clock.now += 1.0
    assert s.wants_workers("p")
    s.saw_workers("p", [worker("a")])
    s.plan("p", [])
    clock.now += 5.0
    assert not s.wants_workers("p")  # idle
    s.plan("p", page(["r1"]))
    assert s.wants_workers("p")  # busy: a newcomer would be counted within a second
    s.saw_workers("p", [worker("a")])
    clock.now += 0.5
    assert not s.wants_workers("p")


# -- fallback: no run waits on a dead agent --------------------------------------------------------


def test_a_silent_agents_share_is_taken_over_after_the_grace_then_shared_out() -> None:
    ids = seeded_ids(40)
    clock = Clock()
    s = spread("a", {"a", "b"}, clock)
    theirs = {i for i in ids if owner(i, {"a", "b"}) == "b"}
    assert theirs and not any(c.run_id in theirs for c in s.plan("p", page(ids)))

    clock.now += GRACE - 0.1
    assert not any(c.takeover for c in s.plan("p", page(ids)))
    clock.now += 0.1
    plan = s.plan("p", page(ids))
    takeovers = [c for c in plan if c.takeover]
    assert {c.run_id for c in takeovers} == theirs and {c.owner for c in takeovers} == {"b"}

    s.won("p", takeovers[0])  # b left it a whole grace: b is counted out
    assert s.agents("p") == {"a"} and s.taken_over == 1
    newer = seeded_ids(20, seed=8)
    assert [(c.run_id, c.takeover) for c in s.plan("p", page(newer))] == [(i, False) for i in newer]

    clock.now += SUSPEND
    assert s.agents("p") == {"a", "b"}  # counted in again: it may have come back


def test_an_agent_that_keeps_leaving_its_share_is_counted_out_longer_until_it_claims() -> None:
    clock = Clock()
    s = spread("a", {"a", "b"}, clock)
    ids = seeded_ids(400)
    periods = []
    for _ in range(7):
        s.plan("p", page(ids))
        clock.now += GRACE
        takeover = next(c for c in s.plan("p", page(ids)) if c.takeover)
        s.won("p", takeover)
        start = clock.now
        while "b" not in s.agents("p"):
            clock.now += SUSPEND / 2
        periods.append(clock.now - start)
    assert periods == [SUSPEND * f for f in (1, 2, 4, 8, 16, 32, 32)]

    s.plan("p", page(ids))
    clock.now += GRACE
    s.won("p", next(c for c in s.plan("p", page(ids)) if c.takeover))
    assert s.agents("p") == {"a"}
    ours = next(c for c in s.plan("p", page(ids)) if owner(c.run_id, {"a", "b"}) == "b")
    s.lost("p", ours, winner="b")  # b claims after all: counted in, its record wiped
    assert s.agents("p") == {"a", "b"}
    s.plan("p", page(ids))
    clock.now += GRACE
    s.won("p", next(c for c in s.plan("p", page(ids)) if c.takeover))
    clock.now += SUSPEND
    assert s.agents("p") == {"a", "b"}


def test_an_owner_working_through_its_share_is_not_raced_however_long_it_takes() -> None:
    clock = Clock()
    s = spread("a", {"a", "b"}, clock)
    theirs = [i for i in seeded_ids(400) if owner(i, {"a", "b"}) == "b"]
    for _ in range(5):  # b claims one of its runs every grace-and-a-bit: slow, but alive
        assert not any(c.takeover for c in s.plan("p", page(theirs)))
        theirs = theirs[1:]
        clock.now += GRACE + 0.5
    s.plan("p", page(theirs))  # its last claim seen, then it stops
    clock.now += GRACE
    assert {c.run_id for c in s.plan("p", page(theirs)) if c.takeover} == set(theirs)


def test_a_run_seen_later_waits_its_own_grace() -> None:
    clock = Clock()
    s = spread("a", {"a", "b"}, clock)
    first, later = (
        [i for i in seeded_ids(200) if owner(i, {"a", "b"}) == "b"][:1],
        [i for i in seeded_ids(200, seed=9) if owner(i, {"a", "b"}) == "b"][:1],
    )
    s.plan("p", page(first))
    clock.now += GRACE
    assert [c.run_id for c in s.plan("p", page(first + later))] == first


def test_a_run_gone_from_the_page_is_forgotten() -> None:
    clock = Clock()
    s = spread("a", {"a", "b"}, clock)
    theirs = [i for i in seeded_ids(200) if owner(i, {"a", "b"}) == "b"][:1]
    s.plan("p", page(theirs))
    s.plan("p", [])  # claimed by b meanwhile
    clock.now += GRACE
    assert s.plan("p", page(theirs)) == []  # back (rescheduled): a new grace


# -- backing off ---------------------------------------------------------------------------------


def test_losing_to_an_agent_we_cannot_name_stops_the_batch_and_asks_for_the_workers() -> None:
    s = spread("a", {"a"})
    assert not s.wants_workers("p")
    plan = s.plan("p", page(seeded_ids(10)))
    s.lost("p", plan[0])
    assert s.lost_races == 1 and s.backing_off("p") and s.wants_workers("p")
    assert not any(s.still_wanted("p", c) for c in plan[1:])
    s.saw_workers("p", [worker("a"), worker("b")])
    plan = s.plan("p", page(seeded_ids(10)))  # a new batch with the new view
    assert not s.backing_off("p") and all(s.still_wanted("p", c) for c in plan)


def test_losing_to_a_newcomer_counts_it_in_and_leaves_it_its_share_at_once() -> None:
    clock = Clock()
    s = spread("a", {"a"}, clock)
    ids = seeded_ids(40)
    plan = s.plan("p", page(ids))
    assert len(plan) == 40
    s.lost("p", plan[0], winner="b")
    assert s.agents("p") == {"a", "b"} and not s.backing_off("p") and s.wants_workers("p")
    wanted = [c.run_id for c in plan[1:] if s.still_wanted("p", c)]
    assert wanted == [i for i in ids[1:] if owner(i, {"a", "b"}) == "a"]

    s.saw_workers("p", [worker("a")])  # its first heartbeat is not in yet: still counted
    assert s.agents("p") == {"a", "b"}
    clock.now += SUSPEND  # never heartbeated: it went away
    assert s.agents("p") == {"a"}


def test_losing_to_an_agent_we_count_changes_nothing() -> None:
    s = spread("a", {"a", "b"})  # b does not count us yet: it claims some of our share
    plan = s.plan("p", page(seeded_ids(40)))
    s.lost("p", plan[0], winner="b")
    assert not s.backing_off("p") and all(s.still_wanted("p", c) for c in plan[1:])


def test_losing_a_takeover_gives_the_owner_another_grace() -> None:
    ids = seeded_ids(60)
    clock = Clock()
    s = spread("a", {"a", "b", "c"}, clock)
    s.plan("p", page(ids))
    clock.now += GRACE
    takeovers = [c for c in s.plan("p", page(ids)) if c.takeover]
    of_b = [c for c in takeovers if c.owner == "b"]
    of_c = [c for c in takeovers if c.owner == "c"]
    s.lost("p", of_b[0])  # b is alive after all
    assert not s.backing_off("p") and s.agents("p") == {"a", "b", "c"}
    assert not any(s.still_wanted("p", c) for c in of_b[1:])
    assert all(s.still_wanted("p", c) for c in of_c)


# -- how wide a page, who is alive -----------------------------------------------------------------


def test_the_page_is_wide_enough_for_our_share_and_never_above_the_servers_limit() -> None:
    assert spread("a", {"a"}).page_limit("p", None) is None
    assert spread("a", {"a"}).page_limit("p", 5) == 5
    assert spread("a", {"a", "b", "c", "d"}).page_limit("p", 8) == 64
    assert spread("a", {"a", "b", "c", "d"}).page_limit("p", 1) == 8
    assert spread("a", {"a", "b", "c", "d"}).page_limit("p", 100) == SERVER_PAGE
    assert spread("a", {"a"}).page_limit("p", 500) == SERVER_PAGE


def test_live_agents_are_the_rows_still_heartbeating() -> None:
    now = datetime.now(UTC)
    rows = [
        worker("fresh", age=5),
        worker("late-but-alive", age=100, interval=30),  # 3 x 30 s + 15 s of slack
        worker("gone", age=120, interval=30),
        worker("fast-and-gone", age=20, interval=1),
        worker("offline", age=1, status="OFFLINE"),
        Worker(name="never"),
    ]
    assert live_agents(rows, now) == {"fresh", "late-but-alive"}


def test_a_page_with_nothing_to_claim_while_runs_are_due_is_polled_again_soon_a_few_times() -> None:
    from agent.runtime.poller import crowded

    assert crowded(fruitless_pages=1, due=400)  # other agents' polls held the runs (PostgreSQL)
    assert crowded(fruitless_pages=3, due=1)
    assert not crowded(fruitless_pages=4, due=400)  # a paused queue, a dead agent's share: the interval
    assert not crowded(fruitless_pages=1, due=0)
    assert not crowded(fruitless_pages=0, due=400)  # something was claimed: the usual rules
