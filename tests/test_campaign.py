"""Table-driven tests of the compiled state machine with an injected clock.

Times are nanoseconds on a fake monotonic clock anchored at the real one, so
the slot's own ``is_leader()`` (which reads the real clock) stays meaningful.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastelect import _core
from fastelect._core import Action, Campaign, Event, LeadershipTable
from fastelect.errors import LifecycleError
from fastelect.record import encode_record, parse_record

MS = 1_000_000
T = 1000 * MS  # lease
F = 100 * MS  # frequent
INF = 400 * MS  # infrequent
MARGIN = 50 * MS


def make(
    *,
    server_id: str = "me",
    skew: int = -1,
    peer: bool = False,
    now: int = 0,
) -> tuple[Campaign, _core.Slot]:
    table = LeadershipTable()
    slot = table.slot("default", server_id)
    return Campaign(slot, server_id, "me:1", T, F, INF, MARGIN, skew, peer, now), slot


def record(
    c: Campaign,
    now: int,
    etag: str,
    leader: str = "other",
    *,
    term: int = 1,
    lease_ms: int = 0,
    renewal: int = 1,
    released: bool = False,
    wall_now: int = 0,
    updated: int = 0,
) -> int:
    c.observe_record(
        now, wall_now, etag, leader, "other:1", term, lease_ms, renewal, released, updated
    )
    return c.poll(now)


def become_leader(c: Campaign, now: int) -> str:
    assert c.poll(now) == Action.READ
    c.observe_missing(now)
    assert c.poll(now) == Action.CREATE
    match, _term, _renewal, released = c.begin_write(now)
    assert (match, released) == ("", False)
    c.write_succeeded(now + 5 * MS, "e-mine-1")
    assert c.take_events() & Event.EV_ACQUIRED
    return "e-mine-1"


def test_missing_record_is_created_and_lease_counts_from_send() -> None:
    base = _core.monotonic_ns()
    c, slot = make(now=base)
    assert c.poll(base) == Action.READ
    c.observe_missing(base)
    assert c.poll(base) == Action.CREATE
    match, term, renewal, released = c.begin_write(base + 1 * MS)
    assert (match, term, renewal, released) == ("", 1, 1, False)
    c.write_succeeded(base + 30 * MS, '"e1"')
    events = c.take_events()
    assert events & Event.EV_ACQUIRED and events & Event.EV_NEW_LEADER
    # Rule 2: deadline = t_send + T - margin, not response time + T.
    assert c.deadline_ns == base + 1 * MS + T - MARGIN
    assert c.is_leader(c.deadline_ns - 1) and not c.is_leader(c.deadline_ns)
    assert slot.is_leader()  # real clock is well before the fake deadline
    assert c.poll(base + 50 * MS) == Action.WAIT
    assert c.next_at_ns == base + 1 * MS + F
    assert c.poll(base + 1 * MS + F) == Action.RENEW
    match, term, renewal, released = c.begin_write(base + F)
    assert (match, term, renewal, released) == ('"e1"', 1, 2, False)


def test_follower_takes_over_only_after_lease_since_first_seen() -> None:
    c, _ = make()
    assert record(c, 0, "a") == Action.WAIT
    assert c.next_at_ns == F  # transition: frequent polling
    # Same etag seen again and again: the clock runs from the FIRST sighting.
    for now in range(F, T, F):
        assert c.poll(now) == Action.READ
        assert record(c, now, "a") == Action.WAIT
    assert c.poll(T) == Action.READ
    assert record(c, T, "a") == Action.TAKEOVER
    match, term, _, released = c.begin_write(T)
    assert (match, term, released) == ("a", 2, False)  # rule 5: seen term + 1


def test_changed_etag_restarts_the_clock() -> None:
    c, _ = make()
    record(c, 0, "a")
    assert record(c, T - 1, "b", renewal=2) == Action.WAIT
    assert record(c, T, "b", renewal=2) == Action.WAIT  # only 1 ns since "b"
    assert c.takeover_legal_at() == T - 1 + T


def test_record_lease_longer_than_ours_is_respected() -> None:
    c, _ = make()
    record(c, 0, "a", lease_ms=3000)
    assert record(c, T, "a", lease_ms=3000) == Action.WAIT
    assert record(c, 3 * T, "a", lease_ms=3000) == Action.TAKEOVER


def test_released_record_is_taken_at_once_with_next_term() -> None:
    c, _ = make()
    assert record(c, 0, "r", term=7, released=True) == Action.TAKEOVER
    assert c.begin_write(0)[:2] == ("r", 8)


def test_s3lect_record_without_term_counts_as_term_zero() -> None:
    c, _ = make()
    record(c, 0, "a", term=0)
    assert record(c, T, "a", term=0) == Action.TAKEOVER
    assert c.begin_write(T)[1] == 1


def test_garbage_is_replaced_only_once_provably_stale() -> None:
    c, slot = make()
    record(c, 0, "good", term=4)
    c.observe_garbage(10, "junk")
    assert c.poll(10) == Action.WAIT
    c.observe_garbage(T, "junk")
    assert c.poll(T) == Action.WAIT  # T - 10 since first seen
    c.observe_garbage(T + 10, "junk")
    assert c.poll(T + 10) == Action.TAKEOVER
    assert c.begin_write(T + 10)[:2] == ("junk", 5)  # terms still grow past garbage
    assert slot.status()["counters"]["record_errors"] == 3


def test_wall_clock_rule_is_off_by_default_and_bounded_when_on() -> None:
    wall = 1_800_000_000 * 1_000_000_000
    old = wall - 10 * T
    c, _ = make()
    assert record(c, 0, "a", wall_now=wall, updated=old) == Action.WAIT
    c, _ = make(skew=100 * MS)
    assert record(c, 0, "a", wall_now=wall, updated=old) == Action.TAKEOVER
    # Fresh enough by the wall clock: not taken.
    c, _ = make(skew=100 * MS)
    assert record(c, 0, "a", wall_now=wall, updated=wall - T) == Action.WAIT
    assert c.takeover_legal_at() == T  # rule 1(a) still applies...
    assert c.next_at_ns <= 100 * MS  # ...and 1(c) becomes legal after T + skew - age


def test_failed_renewals_never_extend_the_deadline() -> None:
    c, _ = make()
    become_leader(c, 0)
    deadline = c.deadline_ns
    now = F
    delays = []
    while True:
        action = c.poll(now)
        if action == Action.WAIT:
            now = c.next_at_ns
            continue
        if action != Action.RENEW:
            break
        _, term, renewal, _ = c.begin_write(now)
        assert (term, renewal) == (1, 2)  # retries reuse the renewal (rule 4)
        c.write_failed(now)
        delays.append(c.next_at_ns - now)
        assert c.deadline_ns == deadline
    # s3lect's policy: immediately, 100 ms, 1 s (then the lease runs out).
    assert delays[:3] == [0, 100 * MS, 1000 * MS][: len(delays[:3])]
    assert now >= deadline
    assert c.take_events() & Event.EV_LOST
    assert not c.is_leader(now)


def test_renewal_conflict_adopts_our_own_landed_write() -> None:
    c, _ = make()
    become_leader(c, 0)
    assert c.poll(F) == Action.RENEW
    _, term, renewal, _ = c.begin_write(F)
    c.write_failed(F + 1)  # outcome unknown
    assert c.poll(F + 1) == Action.RENEW
    c.begin_write(F + 1)
    c.write_conflicted(F + 2)  # the first try had landed, so this one lost
    assert c.poll(F + 2) == Action.READ
    c.observe_record(F + 3, 0, "e-mine-2", "me", "me:1", term, 15000, renewal, False, 1, c.nonce)
    assert c.take_events() & Event.EV_LOST == 0
    assert c.role == _core.Role.LEADER and c.etag == "e-mine-2"
    assert c.deadline_ns == F + T - MARGIN  # from the FIRST send of that renewal


def test_renewal_conflict_with_someone_else_steps_down() -> None:
    c, slot = make()
    become_leader(c, 0)
    c.poll(F)
    c.begin_write(F)
    c.write_conflicted(F + 1)
    c.poll(F + 1)
    record(c, F + 2, "theirs", "other", term=2)
    assert c.take_events() & Event.EV_LOST
    assert c.role == _core.Role.FOLLOWER
    assert not slot.is_leader()
    assert c.leader_id == "other"


def test_unknown_acquisition_outcome_is_verified_by_reading() -> None:
    c, _ = make()
    record(c, 0, "rel", term=3, released=True)
    _match, term, renewal, _ = c.begin_write(0)
    c.write_failed(1)
    assert c.poll(1) == Action.READ
    c.observe_record(2, 0, "e-new", "me", "me:1", term, 15000, renewal, False, 1, c.nonce)
    assert c.take_events() & Event.EV_ACQUIRED
    assert (c.term, c.deadline_ns) == (4, T - MARGIN)


def test_release_hands_back_with_same_term() -> None:
    c, slot = make()
    etag = become_leader(c, 0)
    assert c.begin_release(F)
    assert c.take_events() & Event.EV_LOST
    assert not slot.is_leader()
    assert c.poll(F) == Action.RELEASE
    assert c.begin_write(F) == (etag, 1, 2, True)
    c.write_succeeded(F + 1, "released")
    assert not c.begin_release(F + 2)  # not leader: nothing to release
    # We back off a whole lease before campaigning again, so others get their turn.
    assert (c.next_action, c.next_at_ns) == (Action.READ, F + 1 + T)


def test_terms_only_grow_across_leaderships() -> None:
    c, _ = make()
    become_leader(c, 0)
    c.poll(F)
    c.begin_write(F)
    c.write_conflicted(F)
    c.poll(F)
    record(c, F, "x", "other", term=9)
    for now in range(F, F + T + 1, F):
        c.poll(now)
        record(c, now, "x", "other", term=9)
    assert c.poll(F + T) == Action.TAKEOVER
    assert c.begin_write(F + T)[1] == 10


def test_stable_follower_polls_infrequently_but_never_after_legal_takeover() -> None:
    c, _ = make()
    record(c, 0, "a")
    record(c, F, "b", renewal=2)  # the leader renewed: it is alive and stable
    assert c.stable
    assert c.next_at_ns == F + INF  # INF < T here
    record(c, F + INF, "c", renewal=3)
    assert c.next_at_ns == min(F + 2 * INF, F + INF + T)


def test_peer_mode_checks_peer_when_stable_and_falls_back_on_failure() -> None:
    c, slot = make(peer=True)
    record(c, 0, "a")
    assert c.next_action == Action.READ  # not stable yet: storage
    record(c, F, "b", renewal=2)
    assert (c.next_action, c.next_at_ns) == (Action.PEER_CHECK, 2 * F)
    c.observe_peer(2 * F, True, "other", "c")
    assert (c.next_action, c.next_at_ns) == (Action.PEER_CHECK, 3 * F)
    c.observe_peer(3 * F, False)
    assert (c.next_action, c.next_at_ns) == (Action.READ, 3 * F)
    counters = slot.status()["counters"]
    assert (counters["peer_checks"], counters["peer_failures"]) == (2, 1)
    # A 200 naming someone else is a failure too.
    c2, _ = make(peer=True)
    record(c2, 0, "a")
    record(c2, F, "b", renewal=2)
    c2.observe_peer(2 * F, True, "impostor", "z")
    assert c2.next_action == Action.READ


def test_read_failures_back_off_like_s3lect() -> None:
    c, _ = make()
    c.read_failed(0)
    assert c.next_at_ns == 0
    c.read_failed(0)
    assert c.next_at_ns == 100 * MS
    c.read_failed(0)
    assert c.next_at_ns == 1000 * MS
    c.read_failed(0)
    assert F <= c.next_at_ns < F + F // 4  # then F, plus jitter
    assert c.consecutive_fails == 4


def _refused_takeovers(c: Campaign, until: int, *, auth: bool = False) -> tuple[list[int], int]:
    """Drive ``c`` facing a released record that reads fine and refuses every write.

    Returns the send instants of the writes and the number of reads.
    """
    now, writes, reads = 0, [], 0
    while now < until:
        action = c.poll(now)
        if action == Action.WAIT:
            now = c.next_at_ns
        elif action == Action.READ:
            reads += 1
            record(c, now + MS, "rel", term=3, released=True)
            now += MS
        else:
            assert action == Action.TAKEOVER
            writes.append(now)
            c.begin_write(now)
            c.write_failed(now + MS, auth)
            now += MS
    return writes, reads


def test_write_streak_survives_successful_reads() -> None:
    # Issue 19 item 6: each good read used to reset the streak, so the
    # follower looped read -> refused write with no pause at all.
    c, _ = make()
    writes, reads = _refused_takeovers(c, 2000 * MS)
    gaps = [b - a for a, b in itertools.pairwise(writes)]
    # immediately (after the read that verifies), after 100 ms, after 1 s, then F + jitter
    assert gaps[0] < 5 * MS and 100 * MS <= gaps[1] < 105 * MS
    assert 1000 * MS <= gaps[2] < 1005 * MS
    assert all(F <= g < F + F // 4 + 5 * MS for g in gaps[3:]), gaps
    assert len(writes) <= 3 + (2000 - 1100) // 100 + 1
    assert reads <= len(writes) + 1  # one verifying read per refused write
    assert c.write_fails == len(writes) and c.read_fails == 0


def test_refused_permission_waits_at_least_f() -> None:
    c, _ = make()
    writes, _ = _refused_takeovers(c, 1000 * MS, auth=True)
    gaps = [b - a for a, b in itertools.pairwise(writes)]
    assert gaps and all(F <= g < F + F // 4 + 5 * MS for g in gaps), gaps


def test_an_answered_write_ends_the_write_streak() -> None:
    c, _ = make()
    _refused_takeovers(c, 300 * MS)
    assert c.write_fails >= 3
    c.write_conflicted(c.next_at_ns)
    assert (c.write_fails, c.write_not_before_ns) == (0, 0)


def test_jitter_is_deterministic_per_nonce() -> None:
    def delays(nonce: str) -> list[int]:
        table = LeadershipTable()
        c = Campaign(table.slot("default", "me"), "me", "me:1", T, F, INF, MARGIN, nonce=nonce)
        out = []
        for _ in range(8):
            c.read_failed(0)
            out.append(c.next_at_ns)
        return out

    assert delays("00aa") == delays("00aa")
    assert delays("00aa") != delays("00ab")


def test_configure_rejects_broken_timings() -> None:
    c, _ = make()
    with pytest.raises(ValueError):
        c.configure(T, T, INF, 0)
    with pytest.raises(ValueError):
        c.configure(T, F, F - 1, 0)


@settings(max_examples=300, deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=0, max_value=2 * T), min_size=1, max_size=20),
    change_at=st.sets(st.integers(min_value=0, max_value=19), max_size=5),
)
def test_takeover_never_before_lease_since_first_sighting(
    gaps: list[int], change_at: set[int]
) -> None:
    """Rule 1(a) for any read schedule and any pattern of renewals."""
    c, _ = make()
    now = 0
    etag_no = 0
    first_seen = 0
    for i, gap in enumerate(gaps):
        now += gap
        if i == 0 or i in change_at:
            etag_no += 1
            first_seen = now
        action = record(c, now, f"e{etag_no}", renewal=etag_no)
        if action == Action.TAKEOVER:
            assert now - first_seen >= T
            return
        assert now - first_seen < T


# Rule 0 and rule 2 (see also tests/test_safety.py).


def test_campaign_adopts_only_its_own_incarnations_write() -> None:
    """Rule 4 needs rule 0: same id, term and renewal but another nonce is not ours."""
    table = LeadershipTable()
    c = Campaign(table.slot("default", "me"), "me", "me:1", T, F, INF, MARGIN)
    assert c.poll(0) == Action.READ
    c.observe_missing(0)
    _, term, renewal, _ = c.begin_write(0)
    c.write_conflicted(5 * MS)
    c.observe_record(6 * MS, 0, "e1", "me", "me:1", term, 1000, renewal, False, 1, "other")
    assert not c.take_events() & Event.EV_ACQUIRED
    assert c.role == 0 and c.leader_id == "me" and c.obs_nonce == "other"
    assert c.takeover_legal_at() == 6 * MS + T
    # The same read with our own nonce is our write: adopted, lease from our send.
    c2 = Campaign(table.slot("other", "me"), "me", "me:1", T, F, INF, MARGIN)
    c2.observe_missing(0)
    _, term, renewal, _ = c2.begin_write(0)
    c2.write_conflicted(5 * MS)
    c2.observe_record(6 * MS, 0, "e1", "me", "me:1", term, 1000, renewal, False, 1, c2.nonce)
    assert c2.take_events() & Event.EV_ACQUIRED
    assert c2.deadline_ns == 0 + T - MARGIN
    table.close()


def test_campaign_snapshots_the_lease_when_a_write_begins() -> None:
    table = LeadershipTable()
    slot = table.slot("default", "me")
    c = Campaign(slot, "me", "me:1", 3000 * MS, 100 * MS, 400 * MS, 300 * MS)
    c.observe_missing(0)
    c.begin_write(10 * MS)
    assert c.pending_lease_ms == 3000
    c.configure(30_000 * MS, 100 * MS, 400 * MS, 500 * MS)
    assert c.pending_lease_ms == 3000  # the body in flight says 3 s
    c.write_succeeded(20 * MS, "e1")
    assert c.deadline_ns == 10 * MS + 3000 * MS - 300 * MS
    assert c.poll(c.next_at_ns) == Action.RENEW
    c.begin_write(c.next_at_ns)
    assert c.pending_lease_ms == 30_000
    table.close()


def test_terms_stay_monotone_per_elector_through_an_s3lect_leadership() -> None:
    """s3lect drops ``term`` (reads as 0): our next leadership still goes above
    the highest term this elector ever saw (rule 5)."""
    c, _ = make()
    record(c, 0, "fe", "fastelect-node", term=7)
    record(c, F, "go", "s3lect-node", term=0, renewal=0)  # s3lect rewrote it
    assert c.max_term_seen == 7
    assert record(c, F + T, "go", "s3lect-node", term=0, renewal=0) == Action.TAKEOVER
    assert c.begin_write(F + T)[1] == 8


def test_a_renewal_advertising_a_shorter_lease_caps_the_current_one() -> None:
    """Found by the simulator (seeds 6, 5131): T shrinks, the renewal that says
    so lands but its answer is lost; followers may take over T_new after it
    landed, so our lease must end by then too -- from the moment it is sent."""
    table = LeadershipTable()
    slot = table.slot("default", "me")
    c = Campaign(slot, "me", "me:1", 2500 * MS, 100 * MS, 400 * MS, 100 * MS)
    c.observe_missing(0)
    c.begin_write(0)
    c.write_succeeded(5 * MS, "e1")
    assert c.deadline_ns == 2500 * MS - 100 * MS
    c.configure(1000 * MS, 100 * MS, 400 * MS, 50 * MS)
    assert c.poll(100 * MS) == Action.RENEW
    c.begin_write(100 * MS)
    assert c.pending_lease_ms == 1000
    # Capped at the send, before any answer: 100 ms + 1000 ms - 50 ms.
    assert c.deadline_ns == 1050 * MS
    assert c.is_leader(1049 * MS) and not c.is_leader(1050 * MS)
    c.write_failed(2000 * MS)  # the answer never came
    assert c.deadline_ns == 1050 * MS
    assert c.poll(1050 * MS) != Action.RENEW or c.role == 0
    # A lease that grows is earned only by the write that advertises it.
    c2 = Campaign(table.slot("grow", "me"), "me", "me:1", 1000 * MS, 100 * MS, 400 * MS, 50 * MS)
    c2.observe_missing(0)
    c2.begin_write(0)
    c2.write_succeeded(5 * MS, "e1")
    c2.configure(5000 * MS, 100 * MS, 400 * MS, 50 * MS)
    c2.poll(100 * MS)
    c2.begin_write(100 * MS)
    assert c2.deadline_ns == 950 * MS  # unchanged until the write lands
    c2.write_succeeded(120 * MS, "e2")
    assert c2.deadline_ns == 100 * MS + 5000 * MS - 50 * MS
    table.close()


def test_record_body_carries_the_pending_write_and_its_lease_snapshot() -> None:
    """The body Elector sends is the pending write's: term, renewal and the
    lease snapshotted by begin_write (rule 2), even if configure() changed the
    lease since; a release writes the zero time."""
    c, _slot = make(server_id='id "quoted"\n')
    with pytest.raises(LifecycleError):
        c.record_body(0)  # nothing pending
    become_leader(c, 0)
    assert c.poll(F) == Action.RENEW
    _match, term, renewal, released = c.begin_write(F)
    c.configure(2 * T, F, INF, MARGIN, -1)  # a new lease, after the write began
    wall = 1_796_000_000_123_456_789
    body = c.record_body(wall)
    assert body == encode_record(c.server_id, "me:1", wall, term, T // MS, renewal, c.nonce)
    record_ = parse_record(body)
    assert (record_.leader_id, record_.lease_ms, record_.nonce) == (c.server_id, T // MS, c.nonce)
    c.write_succeeded(F + 1, "e-mine-2")
    assert c.begin_release(2 * F)
    c.take_events()
    _match, term, renewal, released = c.begin_write(2 * F)
    assert released
    assert parse_record(c.record_body(wall)).released
