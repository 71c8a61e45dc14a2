"""The election step, sans I/O: outcomes in, each with its instant; what to do next out.

A :class:`Driver` wraps one compiled :class:`~fastelect._core.Campaign` (the
safety rules of ``docs/safety.md#the-rules``) and adds what every host of a
campaign needs around it: parsing the record a read returned, building the
body a write sends, the hook queue and its rule 9 accounting (no campaign for
a new leadership while the last one's hooks run; ``on_acquire`` skipped once
its leadership ended; a failed ``on_acquire`` hands the lock back), a release
asked for from outside, and duplicate-id reports folded per nonce.

It reads no clock, opens no connection and knows no event loop: every input
carries the instant it happened (the host's ``monotonic_ns`` for its own
clock, and its wall clock where a record needs one).  The hosts are the
asyncio :class:`~fastelect.Elector` (alone or on a
:class:`~fastelect.scheduler.Scheduler`) and the simulator
(``fastelect.sim``), which runs this same object on simulated clocks.

A host's turn::

    action = driver.poll(now)            # READ, PEER_CHECK, a write kind, WAIT or HOLD
    ...perform it, then one of:
    driver.read_record(now, wall, body, etag) / read_missing / read_failed
    driver.begin_write(now, wall) -> body ...  write_succeeded / write_conflicted / write_failed
    driver.peer_answered(now, ok, leader_id, etag)
    events = driver.take_events()        # what to log, wake and publish
    hook = driver.next_hook()            # run it, then driver.hook_finished(failed)

Where per-node sessions would plug in (docs/simulator.md, "Sessions"): a
session renews many leases with one write, so it would call
``begin_write``/``write_*`` of each driver it carries with the one write's
instants and answer.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from . import _core
from ._core import Action, Campaign, Event
from .errors import RecordError
from .record import LockRecord, parse_record, record_term

__all__ = [
    "HOLD",
    "HOOK_ACQUIRE",
    "HOOK_LOSE",
    "HOOK_NEW_LEADER",
    "READ_GARBAGE",
    "READ_LONG_LEASE",
    "READ_OK",
    "Driver",
    "Hook",
]

#: ``poll``'s answer when the campaign is due to write a new leadership but the
#: last one's hooks still run (rule 9): wait until ``hold_until`` or a kick.
HOLD = -1

#: Hooks the host has registered (a bit mask for ``Driver(hooks=...)``).
HOOK_ACQUIRE = 1
HOOK_LOSE = 2
HOOK_NEW_LEADER = 4

#: ``read_record``'s answers: the record was used; it was unreadable (its
#: term still counts, rule 5); it advertises a lease past 10x ours (first
#: time for that record: say so once).
READ_OK = 0
READ_GARBAGE = 1
READ_LONG_LEASE = 2

_CAMPAIGNS = (Action.CREATE, Action.TAKEOVER)
_LEADER = _core.Role.LEADER


class Hook(NamedTuple):
    """A hook to run: its name, the leadership it belongs to, and its arguments."""

    name: str
    #: Leaderships begun by this driver when it was queued (``on_lose``: the
    #: one that ended; ``on_acquire``: the one that began).
    leadership: int
    generation: int
    args: tuple[object, ...]


class Driver:
    """One election's step around a :class:`~fastelect._core.Campaign`: no I/O, no clock.

    ``frequent_ns`` paces a campaign held back for hooks; ``lease_ns`` is the
    lease this node advertises (a record advertising more than ten times it
    is reported once); ``storage_timeout_ns`` and ``peer_timeout_ns`` bound
    each request.  ``hooks`` says which hooks to queue (``HOOK_*`` bits).
    ``generation`` starts the count of leadership changes (a host that
    replaces its driver continues the count, so stale work never matches).
    """

    __slots__ = (
        "_clashes",
        "_events",
        "_hook_running",
        "_hooks",
        "_long_lease_seen",
        "_release",
        "campaign",
        "frequent_ns",
        "generation",
        "hold_back",
        "hooks",
        "hooks_skipped",
        "leaderships",
        "lease_hooks",
        "lease_ns",
        "peer_timeout_ns",
        "record",
        "record_error",
        "storage_timeout_ns",
    )

    #: Rule 9's hold-back; False only in the simulator's mutant of that rule.
    HOLD_BACK = True

    def __init__(
        self,
        campaign: Campaign,
        *,
        frequent_ns: int,
        lease_ns: int,
        storage_timeout_ns: int,
        peer_timeout_ns: int,
        hooks: int = 0,
        generation: int = 0,
    ) -> None:
        self.campaign = campaign
        self.frequent_ns = frequent_ns
        self.lease_ns = lease_ns
        self.storage_timeout_ns = storage_timeout_ns
        self.peer_timeout_ns = peer_timeout_ns
        self.hooks = hooks
        #: Leadership changes seen (each acquire and each loss adds one).
        self.generation = generation
        #: Leaderships begun.
        self.leaderships = 0
        #: ``on_acquire`` / ``on_lose`` queued or running: while any is, no new
        #: leadership is campaigned for (rule 9).
        self.lease_hooks = 0
        #: ``on_acquire`` hooks dropped because their leadership ended first.
        self.hooks_skipped = 0
        self.hold_back = self.HOLD_BACK
        #: The last record read (``read_record``), and why the last was unreadable.
        self.record: LockRecord | None = None
        self.record_error: RecordError | None = None
        self._hooks: deque[Hook] | None = None  # made at the first hook
        self._hook_running: Hook | None = None
        self._release = False
        self._events = 0
        self._clashes: set[str] | None = None
        self._long_lease_seen: tuple[str, str, int] | None = None

    # -- configuration -------------------------------------------------------------

    def configure(
        self,
        lease_ns: int,
        frequent_ns: int,
        infrequent_ns: int,
        margin_ns: int,
        max_skew_ns: int,
        peer_mode: bool,
        *,
        storage_timeout_ns: int,
        peer_timeout_ns: int,
        hooks: int,
    ) -> None:
        """New timings and hooks from the next step on (rule 2: a write under way keeps its own)."""
        self.campaign.configure(
            lease_ns, frequent_ns, infrequent_ns, margin_ns, max_skew_ns, peer_mode
        )
        self.lease_ns = lease_ns
        self.frequent_ns = frequent_ns
        self.storage_timeout_ns = storage_timeout_ns
        self.peer_timeout_ns = peer_timeout_ns
        self.hooks = hooks

    def request_release(self) -> None:
        """Hand the record back at the next step, if leading (a failed ``on_acquire`` does)."""
        self._release = True

    def restart(self, now: int, nonce: str = "") -> None:
        """A new incarnation after a stop (rule 0: a fresh nonce)."""
        self._release = False
        self.lease_hooks = 0
        self._hooks = None
        self._hook_running = None
        if self.campaign.role == _core.Role.STOPPED:
            self.campaign.restart(now, nonce)

    # -- the step ------------------------------------------------------------------

    def poll(self, now: int) -> int:
        """What is due at ``now``: an ``Action``, or ``HOLD``."""
        c = self.campaign
        if self._release:
            self._release = False
            c.begin_release(now)
        action: int = c.poll(now)
        self._absorb()
        if self.lease_hooks and self.hold_back and (action in _CAMPAIGNS):
            # Rule 9: none of leadership N's hooks may run after N+1 began.
            return HOLD
        return action

    def hold_until(self, now: int) -> int:
        """When a held campaign looks again, unless a hook's end kicks it first."""
        return now + self.frequent_ns

    def op_timeout_ns(self, now: int) -> int:
        """How long a read or write started at ``now`` may wait for its answer."""
        timeout = self.storage_timeout_ns
        c = self.campaign
        if c.role == _LEADER:
            # A write that answers after the lease is worthless; stop waiting then.
            timeout = max(1_000_000, min(timeout, c.deadline_ns - now))
        return timeout

    def step_bound_ns(self, action: int, now: int) -> int:
        """How long a whole step (a peer check's included) may run before it is cut off."""
        if action == Action.PEER_CHECK:
            return self.peer_timeout_ns + self.storage_timeout_ns
        return self.op_timeout_ns(now)

    # -- reads ---------------------------------------------------------------------

    def read_record(self, now: int, wall_now: int, body: bytes, etag: str) -> int:
        """A read answered with ``body`` at ``now`` (rule 1: stamped when it arrived).

        Returns ``READ_OK``, ``READ_GARBAGE`` (``record_error`` says why) or
        ``READ_LONG_LEASE`` (``record`` holds it; reported once per record).
        """
        c = self.campaign
        try:
            record = parse_record(body)
        except RecordError as exc:
            self.record_error = exc
            c.observe_garbage(now, etag, record_term(body))  # rule 5: its term counts
            self._absorb()
            return READ_GARBAGE
        self.record = record
        c.observe_record(
            now,
            wall_now,
            etag,
            record.leader_id,
            record.leader_addr,
            record.term,
            record.lease_ms,
            record.renewal,
            record.released,
            record.last_updated_ns or 0,
            record.nonce,
        )
        self._absorb()
        if record.lease_ms * 1_000_000 > 10 * self.lease_ns:
            # Rule 1 honours the longer lease: a crashed holder blocks that long.
            key = (record.leader_id, record.nonce, record.term)
            if key != self._long_lease_seen:
                self._long_lease_seen = key
                return READ_LONG_LEASE
        return READ_OK

    def read_missing(self, now: int) -> None:
        """A read found no record."""
        self.campaign.observe_missing(now)
        self._absorb()

    def read_failed(self, now: int, refused: bool = False) -> None:
        """A read failed (``refused``: credentials or bucket: retried at F or slower)."""
        self.campaign.read_failed(now, refused)
        self._absorb()

    # -- writes --------------------------------------------------------------------

    def begin_write(self, now: int, wall_ns: int) -> tuple[int, bytes, str, int, int, bool]:
        """Start the due write: ``(kind, body, if_match, term, wall, lease_cut)``.

        ``wall`` is the timestamp the body carries (``wall_ns``, or 0 for a
        release), to hand back to ``write_succeeded``.  ``lease_cut`` is True
        when the write capped a lease held (rule 2: a renewal advertising a
        shorter lease): a host's expiry timer must follow the deadline down.
        """
        c = self.campaign
        kind: int = c.next_action
        deadline = c.deadline_ns
        if_match, term, _, released = c.begin_write(now)
        cut = c.role == _LEADER and c.deadline_ns < deadline
        wall = 0 if released else wall_ns
        # Rule 2: the body advertises the lease snapshotted when the write began.
        body: bytes = c.record_body(wall)
        self._absorb()
        return kind, body, if_match, term, wall, cut

    def write_succeeded(self, now: int, etag: str, wall_ns: int) -> None:
        """The store took the write (``wall_ns``: the body's timestamp, 0 for a release)."""
        self.campaign.write_succeeded(now, etag, wall_ns)
        self._absorb()

    def write_conflicted(self, now: int) -> None:
        """The write's condition failed (412): someone else wrote first."""
        self.campaign.write_conflicted(now)
        self._absorb()

    def write_failed(self, now: int, refused: bool = False) -> None:
        """No answer, or an error: the outcome is unknown until the next read (rule 4)."""
        self.campaign.write_failed(now, refused)
        self._absorb()

    # -- peers, stop, step-down -----------------------------------------------------

    def peer_answered(self, now: int, ok: bool, leader_id: str = "", etag: str = "") -> None:
        """The leader's health endpoint answered (``ok`` False: it did not, or not as leader)."""
        self.campaign.observe_peer(now, ok, leader_id, etag)
        self._absorb()

    def begin_stop(self, now: int) -> bool:
        """Stop campaigning; True if a release write is due first (``begin_write``)."""
        self._release = False
        due: bool = self.campaign.begin_release(now)
        self._absorb()
        return due

    def stopped(self, now: int) -> None:
        """The campaign is over (after the release write, if any)."""
        self.campaign.stop(now)
        self._absorb()

    def step_down(self, now: int) -> None:
        """Give up leadership now, without a write (always safe)."""
        self.campaign.step_down(now)
        self._absorb()

    def take_events(self) -> int:
        """The ``Event`` bits since the last call; duplicate ids once per nonce."""
        events, self._events = self._events, 0
        return events

    # -- hooks (rule 9) ----------------------------------------------------------------

    def next_hook(self) -> Hook | None:
        """The hook to run now, or None (none queued, or one still running)."""
        queue = self._hooks
        if self._hook_running is not None or not queue:
            return None
        while queue:
            hook = queue.popleft()
            if hook.name == "on_acquire" and hook.generation != self.generation:
                # That leadership already ended: its work must not start now.
                self.lease_hooks -= 1
                self.hooks_skipped += 1
                continue
            self._hook_running = hook
            return hook
        return None

    @property
    def hooks_pending(self) -> int:
        """Hooks queued or running."""
        return len(self._hooks or ()) + (self._hook_running is not None)

    def hook_finished(self, failed: bool) -> bool:
        """The running hook ended; True if the host must look at the campaign again now."""
        hook = self._hook_running
        if hook is None:
            raise RuntimeError("no hook is running")
        self._hook_running = None
        kick = False
        if hook.name != "on_new_leader":
            self.lease_hooks -= 1
            kick = not self.lease_hooks  # a campaign held back for these hooks may go
        if (
            failed
            and hook.name == "on_acquire"
            and hook.generation == self.generation
            and self.campaign.role == _LEADER
        ):
            # Rule 9: a leader that cannot start its work hands the lock back.
            self._release = True
            kick = True
        return kick

    def drop_hooks(self) -> None:
        """Forget queued hooks (the process that would run them is gone)."""
        self._hooks = None
        self._hook_running = None
        self.lease_hooks = 0

    def _queue(self, name: str, args: tuple[object, ...]) -> None:
        if self._hooks is None:
            self._hooks = deque()
        if name != "on_new_leader":
            self.lease_hooks += 1
        self._hooks.append(Hook(name, self.leaderships, self.generation, args))

    def _absorb(self) -> None:
        c = self.campaign
        events: int = c.take_events()
        if not events:
            return
        hooks = self.hooks
        if events & Event.EV_DUPLICATE_ID:
            nonce = c.duplicate_nonce
            if self._clashes is None:
                self._clashes = {nonce}
            elif nonce in self._clashes:
                events &= ~Event.EV_DUPLICATE_ID
            else:
                self._clashes.add(nonce)
        if events & Event.EV_LOST:
            self.generation += 1
            if hooks & HOOK_LOSE:
                self._queue("on_lose", ())
        if events & Event.EV_ACQUIRED:
            self.generation += 1
            self.leaderships += 1
            if hooks & HOOK_ACQUIRE:
                self._queue("on_acquire", ())
        if events & Event.EV_NEW_LEADER and hooks & HOOK_NEW_LEADER:
            # A released record keeps the id of the leader that left: nobody leads.
            self._queue("on_new_leader", ("" if c.obs_released else c.leader_id,))
        self._events |= events
