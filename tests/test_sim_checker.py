"""The simulator's invariant checker and rule oracle catch each kind of bad history.

Hand-made histories, no simulator: each test breaks one invariant the way a
buggy core or driver would and expects :class:`Violation` naming that rule,
next to the same history without the bug, which must pass.
"""

from __future__ import annotations

import pytest

from fastelect.sim.checker import Checker, Violation
from fastelect.sim.oracle import CREATE, RENEW, TAKEOVER, RuleOracle

MS = 1_000_000


def test_two_live_leases_are_caught_in_either_order() -> None:
    c = Checker(3)
    c.lease(0, 0, 100 * MS, term=1)
    with pytest.raises(Violation, match=r"\[one-leader\].*n1 .*n0 \(term 1\)"):
        c.lease(99 * MS, 1, 200 * MS, term=2)


def test_back_to_back_leases_and_extensions_pass() -> None:
    c = Checker(2)
    c.lease(0, 0, 100 * MS, term=1)
    c.lease(50 * MS, 0, 150 * MS, term=1)  # a renewal extends our own lease
    assert c.live(149 * MS) == [0]
    c.lease(150 * MS, 1, 300 * MS, term=2)  # the end is exclusive: no overlap
    assert c.live(150 * MS) == [1]  # (live() answers for the present of the history)


def test_a_lease_that_ended_early_frees_the_instant() -> None:
    c = Checker(2)
    c.lease(0, 0, 100 * MS, term=1)
    c.lease_over(40 * MS, 0)  # stepped down (lost CAS) before its deadline
    c.lease(41 * MS, 1, 200 * MS, term=2)
    c.crashed(60 * MS, 1)
    assert c.live(61 * MS) == []


def test_terms_must_strictly_increase_across_leaderships() -> None:
    c = Checker(2)
    c.acquired(0, 0, term=3)
    c.lost(10, 0)
    with pytest.raises(Violation, match=r"\[terms\].*term 3, not above .* 3"):
        c.acquired(20, 1, term=3)
    c2 = Checker(2)
    c2.acquired(0, 0, term=3)
    c2.lost(10, 0)
    with pytest.raises(Violation, match=r"\[terms\]"):
        c2.acquired(20, 0, term=2)  # the same node, a lower term


def test_acquired_twice_and_lost_twice_are_caught() -> None:
    c = Checker(1)
    c.acquired(0, 0, term=1)
    with pytest.raises(Violation, match=r"\[hooks\].*already leading"):
        c.acquired(5, 0, term=2)
    c = Checker(1)
    c.acquired(0, 0, term=1)
    c.lost(5, 0)
    with pytest.raises(Violation, match=r"\[hooks\].*EV_LOST without"):
        c.lost(6, 0)


def test_a_leadership_without_on_lose_is_caught_at_the_end() -> None:
    c = Checker(2)
    c.acquired(0, 0, term=1)
    c.lost(10, 0)
    c.acquired(20, 1, term=2)
    with pytest.raises(Violation, match=r"\[hooks\].*n1's leadership never got its EV_LOST"):
        c.finished(30)


def test_a_crash_ends_a_leadership_without_a_hook() -> None:
    c = Checker(2)
    c.acquired(0, 0, term=1)
    c.crashed(10, 0)
    c.acquired(20, 1, term=2)
    c.lost(30, 1)
    c.finished(40)


def test_events_disagreeing_with_the_role_are_caught() -> None:
    c = Checker(1)
    c.role_agrees(0, 0, is_leader_role=False)
    with pytest.raises(Violation, match=r"\[hooks\].*events say not leading .* LEADER"):
        c.role_agrees(1, 0, is_leader_role=True)  # became leader, no EV_ACQUIRED
    c.acquired(2, 0, term=1)
    with pytest.raises(Violation, match=r"\[hooks\].*events say leading"):
        c.role_agrees(3, 0, is_leader_role=False)  # stepped down, no EV_LOST


def test_work_after_the_lease_is_caught() -> None:
    c = Checker(1)
    c.lease(0, 0, 100 * MS, term=1)
    c.work_step(99 * MS, 0, term=1)
    with pytest.raises(Violation, match=r"\[leader-work\].*outside its lease"):
        c.work_step(100 * MS, 0, term=1)


def test_work_of_an_older_term_after_a_newer_one_is_caught() -> None:
    c = Checker(2)
    c.lease(0, 1, 100 * MS, term=5)
    c.work_step(10 * MS, 1, term=5)
    c.lease(100 * MS, 0, 200 * MS, term=4)  # a checker-level history: no lease overlap
    with pytest.raises(Violation, match=r"\[leader-work\].*term 4 after work of term 5"):
        c.work_step(110 * MS, 0, term=4)


def test_violation_message_names_rule_and_instant() -> None:
    v = Violation("one-leader", 1_500_000, "two leaders")
    assert str(v) == "[one-leader] at t=1.500 ms: two leaders"
    assert (v.rule, v.t_ns, v.detail) == ("one-leader", 1_500_000, "two leaders")


# -- the rule oracle: each rule broken by a hand-made decision ------------------------

T, M = 1000 * MS, 100 * MS


def _oracle() -> RuleOracle:
    return RuleOracle("n0", "s0", "nonce-a", T, M)


def test_oracle_rule1_takeover_before_the_lease_ran_out() -> None:
    o = _oracle()
    o.observed(0, "e1", term=1, lease_ms=1000, released=False, nonce="nonce-b")
    o.begin_write(0, T, TAKEOVER, "e1", term=2, renewal=1, lease_ms=1000, deadline=None)  # legal
    o = _oracle()
    o.observed(0, "e1", term=1, lease_ms=1500, released=False, nonce="nonce-b")
    with pytest.raises(
        Violation, match=r"\[rule-1\].*1000.000 ms after first seeing it; the lease"
    ):
        o.begin_write(0, T, TAKEOVER, "e1", term=2, renewal=1, lease_ms=1000, deadline=None)
    with pytest.raises(Violation, match=r"\[rule-1\].*never observed"):
        _oracle().begin_write(0, T, TAKEOVER, "e9", term=2, renewal=1, lease_ms=1000, deadline=None)


def test_oracle_rule1_released_and_own_records_may_be_taken_at_once() -> None:
    o = _oracle()
    o.observed(0, "e1", term=1, lease_ms=1000, released=True, nonce="nonce-b")
    o.observed(0, "e2", term=1, lease_ms=1000, released=False, nonce="nonce-a")
    o.begin_write(0, 1, TAKEOVER, "e1", term=2, renewal=1, lease_ms=1000, deadline=None)
    o.begin_write(0, 2, TAKEOVER, "e2", term=2, renewal=2, lease_ms=1000, deadline=None)


def test_oracle_rule2_advertised_lease_and_deadline() -> None:
    o = _oracle()
    o.begin_write(0, 0, CREATE, "", term=1, renewal=1, lease_ms=1000, deadline=None)
    o.configured(3 * T, M)  # mid-write: the write keeps its snapshot
    o.leading(0, T - M, None)
    with pytest.raises(Violation, match=r"\[rule-2\].*past the write's first send"):
        o.leading(0, 3 * T - M, None)
    with pytest.raises(Violation, match=r"\[rule-2\].*advertises 3000 ms, its snapshot"):
        _oracle().begin_write(0, 0, CREATE, "", term=1, renewal=1, lease_ms=3000, deadline=None)


def test_oracle_rule2_a_shorter_advertised_lease_must_shorten_ours() -> None:
    o = _oracle()
    o.begin_write(0, 0, RENEW, "e1", term=1, renewal=2, lease_ms=1000, deadline=None)
    o.configured(T // 2, M)
    with pytest.raises(Violation, match=r"\[rule-2\].*ends 500.000 ms earlier"):
        o.begin_write(0, 10, RENEW, "e2", term=1, renewal=3, lease_ms=500, deadline=T + 10 - M)


def test_oracle_rule4_adopts_only_its_own_pending_write() -> None:
    o = _oracle()
    o.begin_write(0, 0, CREATE, "", term=1, renewal=1, lease_ms=1000, deadline=None)
    o.leading(0, T - M, ("nonce-a", 1, 1))
    o = _oracle()
    o.begin_write(0, 0, CREATE, "", term=1, renewal=1, lease_ms=1000, deadline=None)
    with pytest.raises(Violation, match=r"\[rule-4\].*nonce nonce-b"):
        o.leading(0, T - M, ("nonce-b", 1, 1))  # a duplicate id's record


def test_oracle_rule5_new_terms_exceed_every_seen_term() -> None:
    o = _oracle()
    o.observed(0, "e1", term=7, lease_ms=1000, released=True, nonce="nonce-b")
    with pytest.raises(Violation, match=r"\[rule-5\].*new term 7 is not above the seen term 7"):
        o.begin_write(0, 1, TAKEOVER, "e1", term=7, renewal=1, lease_ms=1000, deadline=None)
    o = _oracle()
    o.begin_write(0, 0, CREATE, "", term=1, renewal=1, lease_ms=1000, deadline=None)
    # A retry of the same write (same kind, term, renewal) reuses its term.
    o.begin_write(0, 5, CREATE, "", term=1, renewal=1, lease_ms=1000, deadline=None)


def test_oracle_rule5_counts_the_term_of_an_invalid_record() -> None:
    o = _oracle()
    o.garbage(0, "e1", term=9)  # leaseMs out of range, term in bounds
    with pytest.raises(Violation, match=r"\[rule-5\].*new term 9 is not above the seen term 9"):
        o.begin_write(0, T, TAKEOVER, "e1", term=9, renewal=1, lease_ms=1000, deadline=None)
    o = _oracle()
    o.garbage(0, "e1", term=9)
    o.begin_write(0, T, TAKEOVER, "e1", term=10, renewal=1, lease_ms=1000, deadline=None)


def test_oracle_rule1_an_invalid_record_waits_our_own_lease() -> None:
    o = _oracle()
    o.garbage(0, "e1", term=None)
    with pytest.raises(Violation, match=r"\[rule-1\]"):
        o.begin_write(0, T - 1, TAKEOVER, "e1", term=1, renewal=1, lease_ms=1000, deadline=None)
    o = _oracle()
    o.garbage(0, "e1", term=None)
    o.begin_write(0, T, TAKEOVER, "e1", term=1, renewal=1, lease_ms=1000, deadline=None)


def test_an_invalid_records_term_raises_the_bar_except_for_the_write_it_replaced() -> None:
    c = Checker(3)
    c.acquired(0, 0, term=3)
    c.lost(10, 0)
    # n1's takeover (term 4) landed; before its answer, an invalid record with term 8.
    c.invalid_term(8, late=4)
    c.acquired(20, 1, term=4)  # won before the invalid record: announced after it
    c.lost(30, 1)
    with pytest.raises(Violation, match=r"\[terms\].*term 8, not above .* 8"):
        c.acquired(40, 2, term=8)  # replacing the invalid record must go above it
    c.acquired(40, 2, term=9)


def test_a_destroyed_term_may_be_reused_once_and_only_upwards() -> None:
    c = Checker(3)
    c.acquired(0, 0, term=5)
    c.lost(10, 0)
    c.terms_destroyed(floor=5)  # not JSON: nobody else saw term 5
    c.acquired(20, 1, term=4)  # the documented limit of rule 5
    c.lost(30, 1)
    assert c.terms_reset == 1
    with pytest.raises(Violation, match=r"\[terms\]"):
        c.acquired(40, 2, term=4)  # reuses still increase among themselves
    c.acquired(40, 2, term=5)
    c.lost(50, 2)
    with pytest.raises(Violation, match=r"\[terms\]"):
        c.acquired(60, 0, term=5)
    c.acquired(60, 0, term=6)  # above the floor: strict again
    assert c.terms_reset == 2
    c2 = Checker(2)
    c2.acquired(0, 0, term=5)
    c2.lost(10, 0)
    with pytest.raises(Violation, match=r"\[terms\]"):
        c2.acquired(20, 1, term=4)  # no destruction: no reuse


def test_a_destroyed_term_reused_is_a_reuse_even_if_a_late_write_had_it() -> None:
    """Seed 764199625: an invalid record (term kept) hid n0's write of term 1
    before its answer; later a term-less one destroyed term 3, and a node
    restarted after it took over with term 1 and did work after term 3's."""
    c = Checker(3)
    c.invalid_term(2, late=1)  # n0's takeover (term 1) landed, then was hidden
    c.acquired(0, 1, term=3)
    c.lease(0, 1, 50 * MS, term=3)
    c.work_step(10 * MS, 1, term=3)
    c.lost(60 * MS, 1)
    c.lease_over(60 * MS, 1)
    c.terms_destroyed(floor=3)  # not JSON: a node restarted now saw nothing
    c.acquired(100 * MS, 2, term=1)
    c.lease(100 * MS, 2, 200 * MS, term=1)
    c.work_step(110 * MS, 2, term=1)  # rule 5's documented limit, not a violation
    # Without the destruction, work fencing below earlier work is still caught.
    c2 = Checker(3)
    c2.invalid_term(2, late=1)
    c2.acquired(0, 1, term=3)
    c2.lease(0, 1, 50 * MS, term=3)
    c2.work_step(10 * MS, 1, term=3)
    c2.lost(60 * MS, 1)
    c2.lease_over(60 * MS, 1)
    c2.acquired(100 * MS, 0, term=1)  # the late answer of the hidden write
    c2.lease(100 * MS, 0, 200 * MS, term=1)
    with pytest.raises(Violation, match=r"\[leader-work\].*term 1 after work of term 3"):
        c2.work_step(110 * MS, 0, term=1)


def test_a_write_hidden_by_a_destruction_is_announced_late_then_its_term_reused() -> None:
    """Seed 764207053: n4's takeover (term 3) landed, a term-less record hid
    it before its answer came; n0, which never saw term 3, took over with 3."""
    c = Checker(5)
    c.invalid_term(6)  # an intruder's record with term 6
    c.terms_destroyed(floor=6)  # then one with none
    c.acquired(10, 1, term=2)  # a reuse below the floor
    c.lost(20, 1)
    c.terms_destroyed(floor=6, late=3)  # n4's term-3 write, hidden
    c.acquired(30, 4, term=3)  # its answer: won before, known after
    c.lost(40, 4)
    c.acquired(50, 0, term=3)  # never saw 3: the documented limit
    c.lost(60, 0)
    with pytest.raises(Violation, match=r"\[terms\]"):
        c.acquired(70, 2, term=3)  # reuses still increase among themselves


def test_a_hidden_write_of_a_term_already_reused_is_still_announced_late() -> None:
    """Seed 555015985: term 1 was destroyed and reused by n0's takeover, whose
    write a term-less record hid before its answer; n1 then reused term 1."""
    c = Checker(2)
    c.acquired(0, 0, term=1)
    c.lost(10, 0)
    c.terms_destroyed(floor=1)  # out of range: term 1 destroyed
    c.terms_destroyed(floor=1, late=1)  # n0's takeover with term 1 landed, then hidden
    c.acquired(20, 0, term=1)  # its answer
    c.lost(30, 0)
    c.acquired(40, 1, term=1)  # n1 never saw term 1: a reuse
    c.lost(50, 1)
    with pytest.raises(Violation, match=r"\[terms\]"):
        c.acquired(60, 0, term=1)


def _led_and_lost(c: Checker) -> None:
    """n0 leads (leadership 1), then loses it."""
    c.acquired(0, 0, term=1)
    c.lost(10 * MS, 0)


def test_a_hook_of_a_leadership_after_the_next_began_is_caught() -> None:
    c = Checker(1, hooks=True)
    c.acquired(0, 0, term=1)
    c.hook_started(1 * MS, 0, "on_acquire", 1)
    c.lost(10 * MS, 0)
    c.acquired(20 * MS, 0, term=2)  # leadership 2 began before on_lose of 1 ran
    with pytest.raises(
        Violation, match=r"\[hooks\].*on_lose of leadership 1 starts after leadership 2"
    ):
        c.hook_started(21 * MS, 0, "on_lose", 1)
    # In order it passes, and the run ends clean.
    ok = Checker(1, hooks=True)
    ok.acquired(0, 0, term=1)
    ok.hook_started(1 * MS, 0, "on_acquire", 1)
    ok.lost(10 * MS, 0)
    ok.hook_started(11 * MS, 0, "on_lose", 1)
    ok.acquired(20 * MS, 0, term=2)
    ok.hook_started(21 * MS, 0, "on_acquire", 2)
    ok.lost(30 * MS, 0)
    ok.hook_started(31 * MS, 0, "on_lose", 2)
    ok.finished(40 * MS)


def test_an_on_acquire_after_its_leadership_ended_is_caught() -> None:
    c = Checker(1, hooks=True)
    _led_and_lost(c)
    with pytest.raises(
        Violation, match=r"\[hooks\].*on_acquire of leadership 1 starts after it ended"
    ):
        c.hook_started(11 * MS, 0, "on_acquire", 1)


def test_on_lose_twice_or_never_is_caught() -> None:
    twice = Checker(1, hooks=True)
    _led_and_lost(twice)
    twice.hook_started(11 * MS, 0, "on_lose", 1)
    with pytest.raises(Violation, match=r"\[hooks\].*on_lose of leadership 1 starts again"):
        twice.hook_started(12 * MS, 0, "on_lose", 1)
    never = Checker(1, hooks=True)
    _led_and_lost(never)
    with pytest.raises(Violation, match=r"\[hooks\].*on_lose never ran for leadership\(s\) \[1\]"):
        never.finished(20 * MS)
    # A crash takes queued hooks with it; without hooks nothing is expected.
    crashed = Checker(1, hooks=True)
    _led_and_lost(crashed)
    crashed.crashed(15 * MS, 0)
    crashed.finished(20 * MS)
    quiet = Checker(1)
    _led_and_lost(quiet)
    quiet.finished(20 * MS)
