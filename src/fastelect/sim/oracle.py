"""A reference model of the rules, checking each decision of one Campaign.

Not a copy of ``_rules.pyx``: it keeps only what the rules in
``/work/shared/DESIGN.md`` talk about (which etags this incarnation saw and
when, what it wrote, with which lease) and holds every decision the compiled
Campaign makes against them, on the same inputs the driver feeds it:

* rule 1 -- a TAKEOVER names an etag this incarnation observed, and is sent
  only once that etag is released, or at least ``max(T, leaseMs)`` after it
  was first observed (T: the shortest lease configured since then).  A record
  this incarnation wrote itself is exempt: the core re-takes it as soon as
  its own lease lapsed, which is safe (anyone else's lease would have had to
  replace that etag first, and then the CAS fails) though rule 1 does not
  say so;
* rule 2 -- a write advertises the lease configured when it began, and a
  leadership's deadline is never later than that write's first send plus
  that lease minus that margin;
* rule 4 -- a leadership won by reading (adoption) reads this incarnation's
  own record, with its pending term and renewal;
* rule 5 -- a CREATE or TAKEOVER carries a term above every term observed
  (in records read -- including the in-bounds ``term`` of an invalid record --
  or as its own leadership; a write that never landed shows no term, so a
  fresh attempt may reuse it).

Rule 1(c), with ``max_clock_skew`` set: a record is also stale once its
``lastUpdated`` is older than ``max(T, leaseMs) + skew`` by this node's wall
clock (:meth:`RuleOracle.wall_observed`, told by the simulator's wall clocks).

A disagreement raises :class:`~fastelect.sim.checker.Violation` ("rule-N").
"""

from __future__ import annotations

from dataclasses import dataclass

from .checker import Violation

__all__ = ["RuleOracle"]

CREATE, TAKEOVER, RENEW, RELEASE = 2, 3, 4, 6


@dataclass(slots=True)
class _Seen:
    first_ns: int
    lease_ns: int
    released: bool
    #: Written by this incarnation.
    own: bool
    #: The shortest lease this node was configured with since it first saw the etag.
    min_own_lease: int
    #: Rule 1(c): the local instant from which the etag is stale by the wall
    #: clock (with max_clock_skew set; never, otherwise).
    wall_stale_ns: int = 1 << 63


class RuleOracle:
    """The rules' view of one incarnation (a new nonce gets a new oracle)."""

    __slots__ = (
        "lease",
        "margin",
        "max_term",
        "name",
        "nonce",
        "pending",
        "seen",
        "server_id",
    )

    def __init__(self, name: str, server_id: str, nonce: str, lease: int, margin: int) -> None:
        self.name = name
        self.server_id = server_id
        self.nonce = nonce
        self.lease = lease
        self.margin = margin
        self.seen: dict[str, _Seen] = {}
        self.max_term = 0
        #: (kind, term, renewal, first send, lease snapshot, margin snapshot)
        self.pending: tuple[int, int, int, int, int, int] | None = None

    def configured(self, lease: int, margin: int) -> None:
        self.lease, self.margin = lease, margin
        for s in self.seen.values():
            s.min_own_lease = min(s.min_own_lease, lease)

    def observed(
        self, now: int, etag: str, term: int, lease_ms: int, released: bool, nonce: str
    ) -> None:
        """A read answered with a valid record at ``now`` (local)."""
        if etag not in self.seen:
            own = nonce == self.nonce
            self.seen[etag] = _Seen(now, lease_ms * 1_000_000, released, own, self.lease)
        self.max_term = max(self.max_term, term)

    def garbage(self, now: int, etag: str, term: int | None) -> None:
        """A read answered with an invalid record; ``term``: its in-bounds term, if any.

        Rule 1: it may be taken only after our own T (its leaseMs is not
        trusted, so it counts as 0).  Rule 5 counts its term: the leadership
        that replaces it writes a higher one.
        """
        if etag not in self.seen:
            self.seen[etag] = _Seen(now, 0, False, False, self.lease)
        if term is not None:
            self.max_term = max(self.max_term, term)

    def wall_observed(
        self, now: int, wall_now: int, etag: str, updated_wall: int, lease_ms: int, skew: int
    ) -> None:
        """A read of ``etag`` at ``now`` (local), when the wall clock read ``wall_now``.

        Rule 1(c): with ``skew`` >= 0, the record is stale once the wall clock
        reads ``lastUpdated + max(T, leaseMs) + skew``; on the lease clock, as
        of this read.
        """
        s = self.seen.get(etag)
        if s is None or skew < 0 or updated_wall <= 0 or s.released:
            return
        wait = max(s.min_own_lease, lease_ms * 1_000_000)
        s.wall_stale_ns = updated_wall + wait + skew - (wall_now - now)

    def peer_etag(self, now: int, etag: str) -> None:
        """A peer named the leader's current etag (as good as reading it, the core says)."""
        if etag and etag not in self.seen:
            self.seen[etag] = _Seen(now, 0, False, False, self.lease)

    def wrote(self, now: int, etag: str) -> None:
        """A write answered with ``etag``: this node knows that etag from now on."""
        if etag not in self.seen:
            self.seen[etag] = _Seen(now, 0, False, True, self.lease)

    def begin_write(
        self,
        t: int,
        now: int,
        kind: int,
        if_match: str,
        term: int,
        renewal: int,
        lease_ms: int,
        deadline: int | None,
    ) -> None:
        """The Campaign's begin_write returned these; check rules 1, 2 and 5.

        ``deadline``: the lease this node holds as the write begins (None if not leading).
        """
        p = self.pending
        retry = p is not None and p[0] == kind and p[1] == term and p[2] == renewal
        if not retry:
            self.pending = p = (kind, term, renewal, now, self.lease, self.margin)
        assert p is not None
        if lease_ms != p[4] // 1_000_000:
            self._fail("rule-2", t, f"the write advertises {lease_ms} ms, its snapshot is {p[4]}")
        if deadline is not None and kind != RELEASE and deadline > p[3] + p[4] - p[5]:
            # Once this write lands, followers wait only the lease it advertises,
            # from when they first see it: a lease that outlives that is unsafe.
            self._fail(
                "rule-2",
                t,
                f"leads until {deadline} while its new write advertises a lease that ends "
                f"{(deadline - (p[3] + p[4] - p[5])) / 1e6:.3f} ms earlier (less margin)",
            )
        if kind in (CREATE, TAKEOVER) and not retry and term <= self.max_term:
            self._fail("rule-5", t, f"new term {term} is not above the seen term {self.max_term}")
        if kind == TAKEOVER:
            s = self.seen.get(if_match)
            if s is None:
                self._fail("rule-1", t, f"takes over {if_match}, an etag it never observed")
            assert s is not None
            wait = max(s.min_own_lease, s.lease_ns)
            if not s.released and not s.own and now < min(s.first_ns + wait, s.wall_stale_ns):
                self._fail(
                    "rule-1",
                    t,
                    f"takes over {if_match} {(now - s.first_ns) / 1e6:.3f} ms after first "
                    f"seeing it; the lease is {wait / 1e6:.3f} ms",
                )

    def leading(self, t: int, deadline: int, adopted: tuple[str, int, int] | None) -> None:
        """The Campaign leads with ``deadline`` after a write of ``pending`` (rules 2, 4)."""
        p = self.pending
        if p is None:
            self._fail("rule-2", t, "leads without a write of this incarnation")
            return
        self.max_term = max(self.max_term, p[1])  # a term it has now seen land
        bound = p[3] + p[4] - p[5]
        if deadline > bound:
            self._fail(
                "rule-2",
                t,
                f"deadline {deadline} is {(deadline - bound) / 1e6:.3f} ms past the write's "
                "first send + its lease - its margin",
            )
        if adopted is not None:
            nonce, term, renewal = adopted
            if (nonce, term, renewal) != (self.nonce, p[1], p[2]):
                self._fail(
                    "rule-4",
                    t,
                    f"adopts a record (nonce {nonce}, term {term}, renewal {renewal}) that is "
                    f"not its pending write (nonce {self.nonce}, term {p[1]}, renewal {p[2]})",
                )

    def _fail(self, rule: str, t: int, detail: str) -> None:
        raise Violation(rule, t, f"{self.name}: {detail}")
