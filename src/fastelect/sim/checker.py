"""The invariants, checked on true (simulated) time as the history unfolds.

The checker knows nothing of the simulator: it is fed a history -- leases
starting or ending, the ``EV_ACQUIRED``/``EV_LOST`` events the driver
dispatched, leader-work steps, crashes -- and raises :class:`Violation` at
the first event that breaks a rule.  ``tests/test_sim_checker.py`` feeds it
hand-made bad histories to show each check fires.

Why checking "at most one live lease" only when a lease starts or extends
covers every instant: a node is live over ``[start, end)`` intervals whose
starts are always events (an acquisition or renewal the driver reports).
Two intervals overlap iff one starts inside the other, so the overlap is
seen at that start.
"""

from __future__ import annotations

__all__ = ["Checker", "Violation"]


class Violation(AssertionError):
    """An invariant failed; ``str()`` names the rule, instant and nodes."""

    def __init__(self, rule: str, t_ns: int, detail: str) -> None:
        super().__init__(f"[{rule}] at t={t_ns / 1e6:.3f} ms: {detail}")
        self.rule = rule
        self.t_ns = t_ns
        self.detail = detail


class Checker:
    """Safety and liveness invariants over ``nodes`` nodes, indexed from 0."""

    __slots__ = (
        "_floor",
        "_late",
        "_since",
        "acquisitions",
        "begun",
        "hooks",
        "hooks_run",
        "leading",
        "lease_end",
        "lease_term",
        "lose_due",
        "max_term",
        "max_work_term",
        "terms_reset",
        "work_steps",
    )

    def __init__(self, nodes: int, *, hooks: bool = False) -> None:
        #: The driver runs on_acquire / on_lose (hook_started is fed): every
        #: leadership that ended by EV_LOST must see its on_lose start, once.
        self.hooks = hooks
        #: Leaderships each node has begun (EV_ACQUIRED), numbered from 1.
        self.begun = [0] * nodes
        #: Per node: leaderships that ended by EV_LOST and await their on_lose.
        self.lose_due: list[set[int]] = [set() for _ in range(nodes)]
        self.hooks_run = 0
        #: True-time end (exclusive) of each node's live lease; 0 = not live.
        self.lease_end = [0] * nodes
        self.lease_term = [0] * nodes
        #: Leadership as the dispatched events say: between EV_ACQUIRED and EV_LOST.
        self.leading = [False] * nodes
        #: Highest term of any leadership so far.
        self.max_term = -1
        #: Highest term whose leader work has started.
        self.max_work_term = -1
        #: Leaderships that reused a term a hostile write destroyed (see
        #: terms_destroyed): the documented limit of rule 5, counted.
        self.terms_reset = 0
        #: Terms up to this one were destroyed before every node saw them.
        self._floor = -1
        #: Highest term reused since the last destruction: reuses still increase.
        self._since = -1
        #: A term stored before an invalid record hid it, not yet announced.
        self._late = -1
        self.acquisitions = 0
        self.work_steps = 0

    # -- leases: "at most one node whose lease is live" -----------------------

    def lease(self, t: int, node: int, end: int, term: int) -> None:
        """``node``'s lease is live over ``[t, end)`` (a start or an extension)."""
        if end <= t:
            self.lease_end[node] = 0
            return
        ends = self.lease_end
        for other in range(len(ends)):
            if other != node and ends[other] > t:
                raise Violation(
                    "one-leader",
                    t,
                    f"n{node} (term {term}) starts a lease until {end / 1e6:.3f} ms while "
                    f"n{other} (term {self.lease_term[other]}) is live until "
                    f"{ends[other] / 1e6:.3f} ms",
                )
        ends[node] = end
        self.lease_term[node] = term

    def lease_over(self, t: int, node: int) -> None:
        """``node`` stopped being live at ``t`` (stepped down, crashed)."""
        if self.lease_end[node] > t:
            self.lease_end[node] = 0

    def live(self, t: int) -> list[int]:
        """Nodes whose lease is live at ``t`` (the latest instant fed in, or later)."""
        return [i for i, end in enumerate(self.lease_end) if end > t]

    # -- hooks: "on_lose exactly once per leadership"; terms --------------------

    def acquired(self, t: int, node: int, term: int) -> None:
        """EV_ACQUIRED dispatched (``on_acquire`` queued) with this term."""
        if self.leading[node]:
            raise Violation(
                "hooks", t, f"n{node} got EV_ACQUIRED (term {term}) while already leading"
            )
        if term <= self.max_term:
            # Documented limit (docs/safety.md, rule 5): a node that never saw
            # a term before a hostile write destroyed it cannot continue from
            # it.  Reused terms still increase among themselves, and the
            # per-incarnation oracle still checks every term each node saw.
            reused = self._since < term <= self._floor
            if term == self._late:
                # Its write landed before the invalid record did: won before,
                # known after, and no reuse.  (Its lease ends before any later
                # leadership begins, so it does no work after theirs -- unless
                # it is a reuse of that same term after all: which one, the
                # checker cannot tell, so work may fence lower once.)
                self._late = -1
                if reused:
                    self.max_work_term = -1
            elif not reused:
                raise Violation(
                    "terms",
                    t,
                    f"n{node} starts a leadership with term {term}, not above the highest "
                    f"earlier term {self.max_term}",
                )
            else:
                self.terms_reset += 1
                self._since = term
                self.max_work_term = -1
        self.leading[node] = True
        self.max_term = max(self.max_term, term)
        self.acquisitions += 1
        self.begun[node] += 1

    def terms_destroyed(self, floor: int, late: int = -1) -> None:
        """The record was replaced by one with no valid term (not JSON, out of range).

        ``floor``: the highest term any write had stored so far (some may not
        have been acknowledged yet).  A node that never saw those terms may
        issue them again: rule 5 counts only terms a node has seen.
        ``late``: the term of the campaign write it replaced, if that write's
        leadership has not been announced yet (won before, known after: not
        a reuse), else -1.
        """
        self._floor = max(self._floor, floor)
        self._since = -1
        if late >= 0:
            self._late = late

    def invalid_term(self, term: int, late: int = -1) -> None:
        """The record was replaced by an invalid one whose own ``term`` is valid.

        Every later leadership must be above it (rule 5 counts it), so it
        raises the bar like a leadership would -- except the one whose
        campaign write (term ``late``, -1 if none) it replaced before that
        leadership was announced: won before, known after.
        """
        if late >= 0:
            self._late = late
        self.max_term = max(self.max_term, term)

    def lost(self, t: int, node: int) -> None:
        """EV_LOST dispatched (``on_lose`` queued)."""
        if not self.leading[node]:
            raise Violation("hooks", t, f"n{node} got EV_LOST without a leadership to end")
        self.leading[node] = False
        if self.hooks:
            self.lose_due[node].add(self.begun[node])

    def hook_started(self, t: int, node: int, kind: str, leadership: int) -> None:
        """``node``'s hook ``kind`` ("on_acquire" / "on_lose") of its ``leadership``-th
        leadership starts running at ``t`` (rule 9).

        No hook of leadership N starts after N+1 began; an on_acquire starts
        only while its leadership lasts; an on_lose only for a leadership
        that ended, once.
        """
        begun = self.begun[node]
        if leadership != begun:
            raise Violation(
                "hooks",
                t,
                f"n{node}'s {kind} of leadership {leadership} starts after leadership "
                f"{begun} began",
            )
        if kind == "on_acquire":
            if not self.leading[node]:
                raise Violation(
                    "hooks",
                    t,
                    f"n{node}'s on_acquire of leadership {leadership} starts after it ended",
                )
        elif leadership in self.lose_due[node]:
            self.lose_due[node].discard(leadership)
        else:
            raise Violation(
                "hooks",
                t,
                f"n{node}'s on_lose of leadership {leadership} starts again, or before it ended",
            )
        self.hooks_run += 1

    def crashed(self, t: int, node: int) -> None:
        """The process died: its leadership (if any) ends here, with no hook.

        Hooks still queued die with it (rule 9 promises on_lose to a process
        that lives to run it).
        """
        self.leading[node] = False
        self.lose_due[node].clear()
        self.lease_over(t, node)

    def role_agrees(self, t: int, node: int, is_leader_role: bool) -> None:
        """After a dispatch, the events seen so far must match the Campaign's role."""
        if self.leading[node] != is_leader_role:
            said = "leading" if self.leading[node] else "not leading"
            role = "LEADER" if is_leader_role else "not LEADER"
            raise Violation(
                "hooks", t, f"n{node}'s events say {said} but its Campaign role is {role}"
            )

    # -- the executor: renew first ------------------------------------------------------

    def renewal_held(self, t: int, node: int, due: int) -> None:
        """``node``'s lease lapsed while its renewal, due since ``due``, had not started.

        The executor starts a due renewal in the turn that finds it due, before
        any read or campaign, or steps that leadership down (overload): a
        leadership is never lost waiting behind other steps.
        """
        raise Violation(
            "renew-first",
            t,
            f"n{node}'s lease lapsed while its renewal, due since {due / 1e6:.3f} ms, waited "
            "behind other steps instead of starting first",
        )

    # -- leader work ------------------------------------------------------------------

    def work_step(self, t: int, node: int, term: int) -> None:
        """A guarded leader-work step of ``node`` (leadership ``term``) starts at ``t``."""
        if self.lease_end[node] <= t:
            raise Violation(
                "leader-work",
                t,
                f"n{node} starts a work step of term {term} outside its lease "
                f"(lease ended {self.lease_end[node] / 1e6:.3f} ms, 0 = none)",
            )
        if term < self.max_work_term:
            raise Violation(
                "leader-work",
                t,
                f"n{node} starts work of term {term} after work of term "
                f"{self.max_work_term} started",
            )
        self.max_work_term = term
        self.work_steps += 1

    # -- the end ------------------------------------------------------------------------

    def finished(self, t: int) -> None:
        """All nodes were stopped: every leadership must have ended with EV_LOST."""
        for node, leading in enumerate(self.leading):
            if leading:
                raise Violation("hooks", t, f"n{node}'s leadership never got its EV_LOST (on_lose)")
        for node, due in enumerate(self.lose_due):
            if due:
                raise Violation(
                    "hooks", t, f"n{node}'s on_lose never ran for leadership(s) {sorted(due)}"
                )
