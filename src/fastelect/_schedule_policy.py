"""The executor's policy, sans I/O: which due steps start, which wait, which step down.

One :class:`SchedulePolicy` decides for every election a process runs; its
hosts are the asyncio :class:`~fastelect.scheduler.Scheduler` and the
simulator's processes (:mod:`fastelect.sim.world`), which run this same
object on simulated time.  It reads no clock and knows no event loop: every
call carries ``now`` (the host's ``monotonic_ns``) and the host sets
:attr:`SchedulePolicy.busy` (its load, a fraction of one core) from what it
measured.  Its entries are whatever the host schedules (an ``Elector``, a
simulated elector); the policy reads each entry's campaign (for deadlines
and leadership age) and driver (for ``frequent_ns``) through the two
accessors it is given, and keeps each entry's place on the wheel in a
mapping of its own, so an entry carries no executor state.

A host's turn::

    due, lag = policy.take_due(now)        # off the wheel, in due order
    for entry in due:
        action = entry's driver.poll(now)  # WAIT / HOLD: policy.push(entry, when)
        # RENEW -> renewals; RELEASE -> start now; the rest -> policy.queue(entry, action, now)
    start, drop = policy.renew(renewals, now)   # drop: step down (no write), then push
    starts, shed = policy.start_ready(now, lag, waiting)  # shed were pushed back already
    # each step started: policy.began(action); each step ended: policy.ended(kind)

The order under overload (the Scheduler's docstring says why):

1. due renewals (and releases) start first, always;
2. reads and peer checks next, within ``max_inflight`` steps in flight;
3. campaigns (CREATE / TAKEOVER) last, and only while the process keeps up.

Where a per-node session would plug in (not built; docs/simulator.md,
"Sessions"): :meth:`SchedulePolicy.renew` hands back the renewals of one turn
together; a session would carry them in one write instead of one each.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from heapq import heappop, heappush
from typing import Any, Generic, TypeVar

from ._core import Action

__all__ = ["SchedulePolicy", "SchedulerStats"]

E = TypeVar("E", bound=Hashable)

_RENEW = int(Action.RENEW)
_RELEASE = int(Action.RELEASE)
_READ = int(Action.READ)
_PEER_CHECK = int(Action.PEER_CHECK)


@dataclass(slots=True)
class SchedulerStats:
    """Counters of a :class:`~fastelect.scheduler.Scheduler` since it was made."""

    #: Renewal and release writes started.
    renewals: int = 0
    #: Reads and peer checks started.
    reads: int = 0
    #: Campaign writes (CREATE / TAKEOVER) started.
    campaigns: int = 0
    #: Reads and peer checks put back because the process was overloaded.
    shed_reads: int = 0
    #: Campaign writes put back because the process was overloaded.
    shed_campaigns: int = 0
    #: Steps cancelled because they outlived their bound (storage timeout or lease).
    timeouts: int = 0
    #: Largest delay (ns) between a renewal falling due and its write starting.
    max_renew_lag_ns: int = 0
    #: Times the driver saw the process overloaded (one per wake-up that shed).
    overloaded_ticks: int = 0
    #: Leaderships stepped down because renewals ran too late to keep them all.
    dropped_leaderships: int = 0

    @property
    def shed(self) -> int:
        """Steps put back under overload (reads plus campaigns)."""
        return self.shed_reads + self.shed_campaigns


class SchedulePolicy(Generic[E]):
    """The timer wheel and the renew-first order of one executor, on times given to it.

    ``campaign_of(entry)``: the entry's Campaign (``next_at_ns``,
    ``deadline_ns``, ``leader_since_ns`` are read); ``frequent_of(entry)``:
    its ``frequent_interval`` in ns (how far a shed step goes back).
    ``rand``: the jitter source (``random.random``; the simulator passes its
    seeded generator's).  ``renew_first`` False is the simulator's mutant:
    renewals queue behind campaigns under ``max_inflight`` and nothing steps
    down under overload.
    """

    __slots__ = (
        "_bucket_of",
        "_buckets",
        "_campaign_of",
        "_frequent_of",
        "_heap",
        "_rand",
        "busy",
        "campaign_limit",
        "cpu_limit",
        "cursor",
        "inflight_other",
        "lag_limit_ns",
        "late_since",
        "max_inflight",
        "ready",
        "renew_first",
        "resolution_ns",
        "stats",
    )

    def __init__(
        self,
        *,
        max_inflight: int,
        lag_limit_ns: int,
        cpu_limit: float,
        campaign_limit: float,
        resolution_ns: int,
        campaign_of: Callable[[E], Any],
        frequent_of: Callable[[E], int],
        rand: Callable[[], float] = random.random,
        renew_first: bool = True,
    ) -> None:
        self.max_inflight = max_inflight
        self.lag_limit_ns = lag_limit_ns
        self.cpu_limit = cpu_limit
        self.campaign_limit = campaign_limit
        self.resolution_ns = resolution_ns
        self._campaign_of = campaign_of
        self._frequent_of = frequent_of
        self._rand = rand
        self.renew_first = renew_first
        #: Counters since the policy was made.
        self.stats = SchedulerStats()
        # The wheel: bucket number (due_ns // resolution) -> entries due then,
        # and a heap of the bucket numbers in use.  An entry counts only while
        # it names the entry's current bucket (``_bucket_of``), so
        # re-scheduling leaves the old listing behind instead of searching for it.
        self._buckets: dict[int, list[E]] = {}
        self._heap: list[int] = []
        self._bucket_of: dict[E, int] = {}
        #: The first bucket not yet served.
        self.cursor = 0
        #: Due steps waiting for room under max_inflight, oldest first: (entry, action, due).
        self.ready: deque[tuple[E, int, int]] = deque()
        #: Reads, peer checks and campaigns in flight (renewals are not counted).
        self.inflight_other = 0
        #: The host's load: the larger of its CPU share and its driver's share of wall time.
        self.busy = 0.0
        #: Since when every turn has served its due work more than lag_limit / 4 late (or 0).
        self.late_since = 0

    # -- the wheel -----------------------------------------------------------------

    def clear(self) -> None:
        """Forget every entry: the host is idle, so what is left names stopped ones."""
        self._buckets.clear()
        self._heap.clear()
        self._bucket_of.clear()
        self.ready.clear()

    def push(self, entry: E, due_ns: int) -> int:
        """Put ``entry`` on the wheel at ``due_ns``; returns its bucket's start if the
        bucket is new (the host wakes earlier if that is before its wake-up), else -1."""
        bucket = due_ns // self.resolution_ns
        if bucket < self.cursor:
            bucket = self.cursor  # already past: the next turn serves it
        self._bucket_of[entry] = bucket
        entries = self._buckets.get(bucket)
        if entries is None:
            self._buckets[bucket] = [entry]
            heappush(self._heap, bucket)
            return bucket * self.resolution_ns
        entries.append(entry)
        return -1

    def unschedule(self, entry: E) -> None:
        """Take ``entry`` off the wheel (its listing stays behind, ignored)."""
        self._bucket_of.pop(entry, None)

    def scheduled(self, entry: E) -> bool:
        """True while ``entry`` waits on the wheel."""
        return entry in self._bucket_of

    def next_due_ns(self) -> int:
        """Start of the earliest bucket in use, or -1 if the wheel is empty."""
        heap = self._heap
        return heap[0] * self.resolution_ns if heap else -1

    def take_due(self, now: int) -> tuple[list[E], int]:
        """Every entry due by ``now``, off the wheel, and how late this turn serves them.

        The lag counts as overload only once it lasts: one late turn (a GC
        pass, a blocking call elsewhere) is not the executor's overload.
        """
        heap = self._heap
        resolution = self.resolution_ns
        last = now // resolution
        self.cursor = last + 1
        lag = 0
        due: list[E] = []
        if heap and heap[0] <= last:
            # How late this turn serves its oldest bucket: the process's lag.
            lag = max(0, now - (heap[0] + 1) * resolution)
            buckets = self._buckets
            bucket_of = self._bucket_of
            while heap and heap[0] <= last:
                bucket = heappop(heap)
                for entry in buckets.pop(bucket):
                    if bucket_of.get(entry) == bucket:
                        del bucket_of[entry]
                        due.append(entry)
        if lag * 4 <= self.lag_limit_ns:
            self.late_since = 0
        elif not self.late_since:
            self.late_since = now
        return due, lag

    # -- in flight -------------------------------------------------------------------

    def began(self, action: int) -> int:
        """A step of ``action`` started; returns its kind (RENEW for a release) for ``ended``."""
        if action in (_RENEW, _RELEASE):
            return _RENEW
        self.inflight_other += 1
        return action

    def ended(self, kind: int) -> bool:
        """A step of ``kind`` ended; True if queued steps may now have room."""
        if kind == _RENEW:
            return False
        self.inflight_other -= 1
        return bool(self.ready)

    def has_room(self) -> bool:
        """Steps wait in the queue and ``max_inflight`` has room for one."""
        return bool(self.ready) and self.inflight_other < self.max_inflight

    # -- renew first -------------------------------------------------------------------

    def renew(self, renewals: list[E], now: int) -> tuple[list[E], list[E]]:
        """The turn's due renewals: ``(start, step_down)``.

        A renewal's lease counts from its begin_write, so starting it late
        shortens nothing it already holds (rule 2).  But when renewals alone
        outrun the process, every one runs later each round until all leases
        lapse together.  Past three quarters of a renewal's slack, while the
        load is over ``cpu_limit``, the newest quarter of the due leaderships
        step down instead (no write: stepping down early is always safe).
        Without renew-first (the mutant) they all queue with the reads and
        campaigns instead, and ``start`` is empty.
        """
        stats = self.stats
        if not self.renew_first:
            for entry in renewals:
                self.ready.append((entry, _RENEW, now))
            return [], []
        campaign_of = self._campaign_of
        danger = False
        for entry in renewals:
            c = campaign_of(entry)
            late = now - c.next_at_ns
            if late > stats.max_renew_lag_ns:
                stats.max_renew_lag_ns = late
            if late * 4 > (c.deadline_ns - c.next_at_ns) * 3:
                danger = True
        drop: list[E] = []
        # Only a sustained overload: a backlog left by one pause clears
        # within a turn or two and needs no sacrifice.
        if danger and self.busy > self.cpu_limit and len(renewals) > 1:
            renewals = sorted(renewals, key=lambda e: int(campaign_of(e).leader_since_ns))
            keep = len(renewals) - max(1, len(renewals) // 4)
            drop = renewals[keep:]
            renewals = renewals[:keep]
            stats.dropped_leaderships += len(drop)
        stats.renewals += len(renewals)
        return renewals, drop

    # -- the queue: reads, peer checks, campaigns ---------------------------------------

    def queue(self, entry: E, action: int, now: int) -> None:
        """A due read, peer check or campaign waits for room (``start_ready``)."""
        self.ready.append((entry, action, now))

    def overloaded(self, now: int, lag: int) -> bool:
        """Shed this turn: a lag that lasted, a load over ``cpu_limit``, or a queue stuck."""
        late_for = now - self.late_since if self.late_since else 0
        if (
            lag > self.lag_limit_ns and late_for >= self.lag_limit_ns
        ) or self.busy > self.cpu_limit:
            return True
        ready = self.ready
        return bool(ready) and now - ready[0][2] > self.lag_limit_ns

    def start_ready(
        self, now: int, lag: int, waiting: Callable[[E], bool]
    ) -> tuple[list[tuple[E, int]], list[tuple[E, int]]]:
        """Queued steps to start now ``(entry, action)``, and those shed (already put back).

        ``waiting(entry)``: the host's word that a queued step is still the
        entry's next one (not stopped, not in flight); an entry back on the
        wheel (kicked meanwhile) is skipped here too.
        """
        ready = self.ready
        if not ready:
            return [], []
        if self.overloaded(now, lag):
            return [], self._shed(now, waiting, campaigns_only=False)
        stats = self.stats
        late_for = now - self.late_since if self.late_since else 0
        # A won campaign is a renewal every interval from then on: start new
        # ones only with room to spare, or the leaderships held pay for them.
        campaigns = self.busy < self.campaign_limit and late_for * 4 < self.lag_limit_ns
        room = self.max_inflight - self.inflight_other
        starts: list[tuple[E, int]] = []
        held_back: list[tuple[E, int, int]] = []
        bucket_of = self._bucket_of
        while ready and room > 0:
            item = ready.popleft()
            entry, action, _ = item
            if entry in bucket_of or not waiting(entry):
                continue
            if action in (_READ, _PEER_CHECK):
                stats.reads += 1
            elif action == _RENEW:
                stats.renewals += 1  # only without renew-first
            elif not campaigns:
                held_back.append(item)
                continue
            else:
                stats.campaigns += 1
            starts.append((entry, action))
            room -= 1
        shed: list[tuple[E, int]] = []
        if held_back:
            ready.extendleft(reversed(held_back))
            shed = self._shed(now, waiting, campaigns_only=True)
        return starts, shed

    def _shed(
        self, now: int, waiting: Callable[[E], bool], *, campaigns_only: bool
    ) -> list[tuple[E, int]]:
        """Put back every waiting campaign (and poll) by one to two of its intervals."""
        stats = self.stats
        ready = self.ready
        bucket_of = self._bucket_of
        kept: list[tuple[E, int, int]] = []
        shed: list[tuple[E, int]] = []
        while ready:
            item = ready.popleft()
            entry, action, _ = item
            if entry in bucket_of or not waiting(entry):
                continue
            if action == _RENEW or (campaigns_only and action in (_READ, _PEER_CHECK)):
                kept.append(item)  # a renewal is never shed (only the mutant queues one)
                continue
            if action in (_READ, _PEER_CHECK):
                stats.shed_reads += 1
            else:
                stats.shed_campaigns += 1
            shed.append((entry, action))
            # Jitter spreads the returning steps instead of bringing them back at once.
            self.push(entry, now + int(self._frequent_of(entry) * (1.0 + self._rand())))
        ready.extend(kept)
        if shed:
            stats.overloaded_ticks += 1
        return shed
