"""The sans-I/O driver as tables: outcomes in, each with its instant; actions and hooks out.

No clock is read and no event loop runs: every instant below is made up,
and far from the real clock, so a driver that read a clock of its own would
misbehave here.  The Campaign inside is the real compiled one.
"""

from __future__ import annotations

import gc

import orjson
import pytest

from fastelect._core import Action, Campaign, Event, LeadershipTable, Role
from fastelect.driver import (
    HOLD,
    HOOK_ACQUIRE,
    HOOK_LOSE,
    HOOK_NEW_LEADER,
    READ_GARBAGE,
    READ_LONG_LEASE,
    READ_OK,
    Driver,
    Hook,
)
from fastelect.record import encode_record, parse_record

MS = 1_000_000
T = 1000 * MS
F = 100 * MS
INF = 400 * MS
MARGIN = 50 * MS
STORAGE_TIMEOUT = 300 * MS
PEER_TIMEOUT = 200 * MS
#: A made-up epoch, days past the real clock's: instants are inputs.
T0 = 5 * 86_400 * 1_000_000_000
WALL = 1_780_000_000 * 1_000_000_000
ALL_HOOKS = HOOK_ACQUIRE | HOOK_LOSE | HOOK_NEW_LEADER


def make(hooks: int = ALL_HOOKS, *, hold_back: bool = True, server_id: str = "me") -> Driver:
    slot = LeadershipTable().slot("default", server_id)
    campaign = Campaign(slot, server_id, "me:1", T, F, INF, MARGIN, -1, False, T0)
    return Driver(
        campaign,
        frequent_ns=F,
        lease_ns=T,
        storage_timeout_ns=STORAGE_TIMEOUT,
        peer_timeout_ns=PEER_TIMEOUT,
        hooks=hooks,
        hold_back=hold_back,
    )


def foreign(
    leader: str = "other", *, term: int = 1, lease_ms: int = T // MS, nonce: str = "n1"
) -> bytes:
    return encode_record(leader, "other:1", WALL, term, lease_ms, 1, nonce=nonce)


def lead(d: Driver, now: int) -> str:
    """Read nothing, create, succeed: returns the etag."""
    assert d.poll(now) == Action.READ
    d.read_missing(now)
    assert d.poll(now) == Action.CREATE
    kind, body, if_match, term, wall, cut = d.begin_write(now, WALL)
    assert (kind, if_match, term, wall, cut) == (Action.CREATE, "", 1, WALL, False)
    assert parse_record(body).leader_id == "me"
    d.write_succeeded(now, "e1", wall)
    assert d.take_events() & Event.EV_ACQUIRED
    return "e1"


def run_hooks(d: Driver, failed: bool = False) -> list[tuple[str, tuple[object, ...]]]:
    ran = []
    while (hook := d.next_hook()) is not None:
        ran.append((hook.name, hook.args))
        d.hook_finished(failed)
    return ran


def test_a_won_campaign_queues_on_acquire_and_on_new_leader() -> None:
    d = make()
    lead(d, T0)
    assert d.generation == 1 and d.leaderships == 1 and d.lease_hooks == 1
    assert d.hooks_pending == 2
    hook = d.next_hook()
    assert hook == Hook("on_acquire", 1, 1, ())
    assert d.next_hook() is None, "one hook at a time"
    assert d.hook_finished(False) is True  # the last lease hook: a held campaign may go
    assert run_hooks(d) == [("on_new_leader", ("me",))]
    assert d.hooks_pending == 0 and d.lease_hooks == 0


def test_only_the_hooks_asked_for_are_queued() -> None:
    d = make(HOOK_LOSE)
    lead(d, T0)
    assert d.hooks_pending == 0 and d.lease_hooks == 0
    d.step_down(T0 + MS)
    assert run_hooks(d) == [("on_lose", ())]


@pytest.mark.parametrize("hold_back", [True, False])
def test_a_new_leadership_waits_for_the_last_ones_hooks(hold_back: bool) -> None:
    """Rule 9: none of leadership N's hooks may run after N+1 began."""
    d = make(hold_back=hold_back)
    lead(d, T0)
    run_hooks(d)
    d.step_down(T0 + MS)  # on_lose of leadership 1 queued, not yet run
    assert d.take_events() & Event.EV_LOST
    assert d.lease_hooks == 1
    # The record is still ours: after T a takeover is due.
    now = T0 + 2 * T
    action = d.poll(now)
    if action == Action.READ:
        d.read_record(now, WALL, foreign("me", nonce=d.campaign.nonce), "e1")
        action = d.poll(now + T)
        now += T
    if not hold_back:
        assert action in (Action.CREATE, Action.TAKEOVER)
        return
    assert action == HOLD
    assert d.hold_until(now) == now + F
    hook = d.next_hook()
    assert hook is not None and hook.name == "on_lose" and hook.leadership == 1
    assert d.hook_finished(False) is True, "the hold ends: the host must look again"
    assert d.poll(now) in (Action.CREATE, Action.TAKEOVER)


def test_on_acquire_is_skipped_once_its_leadership_ended() -> None:
    d = make(HOOK_ACQUIRE | HOOK_LOSE)
    lead(d, T0)
    d.step_down(T0 + MS)  # before on_acquire could run
    assert d.next_hook() == Hook("on_lose", 1, 2, ())
    assert d.hooks_skipped == 1 and d.lease_hooks == 1
    d.hook_finished(False)
    assert d.lease_hooks == 0 and d.next_hook() is None


def test_a_failed_on_acquire_hands_the_record_back() -> None:
    d = make(HOOK_ACQUIRE)
    lead(d, T0)
    hook = d.next_hook()
    assert hook is not None and hook.name == "on_acquire"
    assert d.hook_finished(True) is True
    assert d.poll(T0 + MS) == Action.RELEASE
    kind, body, _, _, wall, _ = d.begin_write(T0 + MS, WALL)
    assert kind == Action.RELEASE and wall == 0
    assert parse_record(body).released


def test_a_failed_on_acquire_of_an_ended_leadership_releases_nothing() -> None:
    d = make(HOOK_ACQUIRE | HOOK_LOSE)
    lead(d, T0)
    hook = d.next_hook()
    d.step_down(T0 + MS)
    assert hook is not None
    d.hook_finished(True)
    assert d.poll(T0 + 2 * MS) != Action.RELEASE


def test_a_release_asked_for_is_made_at_the_next_step() -> None:
    d = make(0)
    lead(d, T0)
    d.request_release()
    assert d.poll(T0 + MS) == Action.RELEASE


def test_an_unreadable_record_is_garbage_whose_term_counts() -> None:
    """Rule 5: a takeover of an invalid record fences above its own term."""
    d = make(0)
    assert d.poll(T0) == Action.READ
    body = orjson.dumps({"term": 41, "leaseMs": -1, "leaderID": "x", "lastUpdated": "?"})
    assert d.read_record(T0, WALL, body, "g1") == READ_GARBAGE
    assert "leaseMs" in d.record_error or "lastUpdated" in d.record_error
    assert d.campaign.max_term_seen == 41
    now = T0 + T + MS
    while (action := d.poll(now)) == Action.READ:
        d.read_record(now, WALL, body, "g1")
        now += T
    assert action == Action.TAKEOVER
    _, _, if_match, term, _, _ = d.begin_write(now, WALL)
    assert if_match == "g1" and term == 42


def test_a_record_with_an_absurd_lease_is_reported_once() -> None:
    d = make(0)
    d.poll(T0)
    long = foreign(lease_ms=11 * T // MS)
    assert d.read_record(T0, WALL, long, "e1") == READ_LONG_LEASE
    assert d.record is not None and d.record.lease_ms == 11 * T // MS
    assert d.read_record(T0 + F, WALL, long, "e1") == READ_OK
    assert d.read_record(T0 + 2 * F, WALL, foreign(term=2, lease_ms=11_000), "e2") == (
        READ_LONG_LEASE
    )


def test_a_duplicate_id_is_reported_once_per_nonce() -> None:
    """The campaign reports a clash each time the clashing nonce changes; two
    live twins alternating would log on every read: the driver folds them."""
    d = make(0)
    lead(d, T0)
    reported = []
    for i in range(12):
        nonce = ("twin-a", "twin-b")[(i // 3) % 2]
        d.read_record(T0 + (i + 1) * F, WALL, foreign("me", term=2 + i, nonce=nonce), f"t{i}")
        if d.take_events() & Event.EV_DUPLICATE_ID:
            reported.append(d.campaign.duplicate_nonce)
    assert reported == ["twin-a", "twin-b"]


def test_request_bounds_follow_the_lease() -> None:
    d = make(0)
    assert d.op_timeout_ns(T0) == STORAGE_TIMEOUT
    assert d.step_bound_ns(Action.PEER_CHECK, T0) == PEER_TIMEOUT + STORAGE_TIMEOUT
    lead(d, T0)
    deadline = d.campaign.deadline_ns
    # A leader stops waiting for a write when its lease ends, and waits 1 ms at least.
    assert d.op_timeout_ns(deadline - 10 * MS) == 10 * MS
    assert d.op_timeout_ns(deadline + 10 * MS) == MS


def test_a_stop_releases_then_ends_the_campaign() -> None:
    d = make(HOOK_LOSE)
    lead(d, T0)
    assert d.begin_stop(T0 + MS) is True
    kind, _, if_match, _, wall, _ = d.begin_write(T0 + MS, WALL)
    assert (kind, if_match, wall) == (Action.RELEASE, "e1", 0)
    d.write_succeeded(T0 + 2 * MS, "e2", 0)
    d.stopped(T0 + 2 * MS)
    assert d.campaign.role == Role.STOPPED
    assert run_hooks(d) == [("on_lose", ())]
    d.restart(T0 + 3 * MS, "fresh")
    assert d.campaign.nonce == "fresh" and d.poll(T0 + 3 * MS) == Action.READ


def test_configure_applies_timings_and_hooks() -> None:
    d = make(0)
    d.configure(
        2 * T, 2 * F, 2 * INF, 2 * MARGIN, -1, False,
        storage_timeout_ns=STORAGE_TIMEOUT // 2, peer_timeout_ns=PEER_TIMEOUT, hooks=HOOK_ACQUIRE,
    )  # fmt: skip
    assert (d.lease_ns, d.frequent_ns, d.storage_timeout_ns) == (2 * T, 2 * F, STORAGE_TIMEOUT // 2)
    lead(d, T0)
    assert run_hooks(d) == [("on_acquire", ())]
    assert parse_record(d.begin_write(T0 + F, WALL)[1]).lease_ms == 2 * T // MS


def test_hook_finished_without_a_running_hook_is_a_bug() -> None:
    with pytest.raises(RuntimeError, match="no hook is running"):
        make().hook_finished(False)


def test_the_driver_is_untracked_by_the_garbage_collector() -> None:
    """One object fewer per elector for every collection pass to walk."""
    d = make()
    lead(d, T0)
    assert not gc.is_tracked(d)
