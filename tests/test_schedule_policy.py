"""The executor's policy on its own: times in, decisions out (no loop, no clock).

``SchedulePolicy`` is what the asyncio Scheduler and the simulator's
processes share; these tables pin its decisions down without either.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from fastelect._core import Action
from fastelect._schedule_policy import SchedulePolicy

MS = 1_000_000
RENEW, READ, PEER, CREATE = (
    int(Action.RENEW),
    int(Action.READ),
    int(Action.PEER_CHECK),
    int(Action.CREATE),
)


@dataclass
class Camp:
    next_at_ns: int = 0
    deadline_ns: int = 0
    leader_since_ns: int = 0


@dataclass(eq=False)
class Entry:
    name: str
    c: Camp = field(default_factory=Camp)
    frequent_ns: int = 100 * MS


def policy(**kw: object) -> SchedulePolicy[Entry]:
    args: dict[str, object] = {
        "max_inflight": 4,
        "lag_limit_ns": 100 * MS,
        "cpu_limit": 0.9,
        "campaign_limit": 0.6,
        "resolution_ns": 5 * MS,
        "campaign_of": lambda e: e.c,
        "frequent_of": lambda e: e.frequent_ns,
        "rand": lambda: 0.5,
    }
    args.update(kw)
    return SchedulePolicy(**args)  # type: ignore[arg-type]


def test_the_wheel_rounds_to_its_resolution_and_a_new_push_replaces_the_old() -> None:
    pol = policy()
    a, b = Entry("a"), Entry("b")
    assert pol.push(a, 12 * MS) == 10 * MS  # a new bucket: its start, for the host's wake-up
    assert pol.push(b, 14 * MS) == -1  # the same bucket
    assert pol.next_due_ns() == 10 * MS
    pol.push(a, 30 * MS)  # re-scheduled: the old listing stays behind, ignored
    due, lag = pol.take_due(14 * MS)
    assert due == [b] and lag == 0
    assert pol.scheduled(a) and not pol.scheduled(b)
    due, lag = pol.take_due(40 * MS)
    assert due == [a] and lag == 40 * MS - 35 * MS  # served 5 ms after its bucket ended
    pol.push(b, 0)  # already past: the next turn serves it
    assert pol.next_due_ns() == pol.cursor * 5 * MS == 45 * MS
    pol.unschedule(b)
    assert pol.take_due(50 * MS) == ([], 0)


def test_a_lag_counts_only_once_it_lasts() -> None:
    pol = policy()
    e = Entry("e")
    pol.push(e, 0)
    pol.take_due(200 * MS)  # one late turn
    assert pol.late_since == 200 * MS
    pol.queue(e, READ, 200 * MS)
    assert not pol.overloaded(200 * MS, 195 * MS)  # late, but not for lag_limit yet
    assert pol.overloaded(300 * MS, 195 * MS)  # late for lag_limit: overload
    pol.take_due(301 * MS)  # nothing due: no lag
    assert pol.late_since == 0


def test_due_renewals_start_first_and_only_a_sustained_overload_drops_the_newest_quarter() -> None:
    pol = policy()
    leaders = [
        Entry(f"l{i}", Camp(next_at_ns=0, deadline_ns=100 * MS, leader_since_ns=i))
        for i in range(8)
    ]
    start, drop = pol.renew(leaders, 10 * MS)
    assert start == leaders and drop == [] and pol.stats.renewals == 8
    # Past 3/4 of the slack, but the load is fine: a backlog, no sacrifice.
    start, drop = pol.renew(leaders, 80 * MS)
    assert drop == [] and pol.stats.max_renew_lag_ns == 80 * MS
    pol.busy = 1.0
    start, drop = pol.renew(leaders, 80 * MS)
    assert [e.name for e in drop] == ["l6", "l7"] and start == leaders[:6]
    assert pol.stats.dropped_leaderships == 2


def test_reads_start_within_max_inflight_and_campaigns_only_with_room_to_spare() -> None:
    pol = policy(max_inflight=2)
    r1, r2, r3, c1 = Entry("r1"), Entry("r2"), Entry("r3"), Entry("c1")
    for e, action in ((r1, READ), (c1, CREATE), (r2, PEER), (r3, READ)):
        pol.queue(e, action, 0)
    starts, shed = pol.start_ready(1 * MS, 0, lambda e: True)
    assert starts == [(r1, READ), (c1, CREATE)] and shed == []
    for _, action in starts:
        pol.began(action)
    assert not pol.has_room() and pol.inflight_other == 2
    assert pol.ended(READ)  # room again, and steps wait
    starts, shed = pol.start_ready(2 * MS, 0, lambda e: True)
    assert starts == [(r2, PEER)] and shed == []
    assert [e for e, _, _ in pol.ready] == [r3]  # waits for room, not shed
    pol = policy()
    pol.busy = 0.7  # over campaign_limit, under cpu_limit: campaigns wait, reads go
    pol.queue(c1, CREATE, 2 * MS)
    pol.queue(r3, READ, 2 * MS)
    starts, shed = pol.start_ready(2 * MS, 0, lambda e: True)
    assert starts == [(r3, READ)] and shed == [(c1, CREATE)]
    assert pol.scheduled(c1) and pol.stats.shed_campaigns == 1


def test_an_overloaded_turn_sheds_polls_and_campaigns_by_one_to_two_intervals() -> None:
    pol = policy(rand=lambda: 0.25)
    r, c = Entry("r", frequent_ns=200 * MS), Entry("c")
    pol.queue(r, READ, 0)
    pol.queue(c, CREATE, 0)
    pol.busy = 0.95
    starts, shed = pol.start_ready(10 * MS, 0, lambda e: True)
    assert starts == [] and shed == [(r, READ), (c, CREATE)]
    assert pol.stats.shed == 2 and pol.stats.overloaded_ticks == 1
    due, _ = pol.take_due(10 * MS + 250 * MS)  # r back at 10 + 200 * 1.25 ms
    assert due == [c, r] or due == [r, c]


def test_a_stale_queued_step_is_dropped() -> None:
    pol = policy()
    gone, kicked = Entry("gone"), Entry("kicked")
    pol.queue(gone, READ, 0)
    pol.queue(kicked, READ, 0)
    pol.push(kicked, 0)  # kicked while queued: its wheel entry decides
    starts, shed = pol.start_ready(1 * MS, 0, lambda e: e is not gone)
    assert starts == [] and shed == [] and not pol.ready


@pytest.mark.parametrize("busy", [0.0, 1.0])
def test_without_renew_first_renewals_queue_with_the_rest(busy: float) -> None:
    # The simulator's mutant: renewals wait in the queue, kept (never shed)
    # while the process sheds, so a lease can lapse behind other steps.
    pol = policy(renew_first=False)
    pol.busy = busy
    leader, reader = Entry("leader"), Entry("reader")
    pol.queue(reader, READ, 0)
    assert pol.renew([leader], 0) == ([], [])
    starts, shed = pol.start_ready(1 * MS, 0, lambda e: True)
    if busy:
        assert starts == [] and shed == [(reader, READ)]
        assert [e for e, _, _ in pol.ready] == [leader]
    else:
        assert starts == [(reader, READ), (leader, RENEW)]
