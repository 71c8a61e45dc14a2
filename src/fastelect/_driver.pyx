# The election step around a Campaign, sans I/O (included by _core.pyx; the
# public module is fastelect.driver, whose docstring says how a host drives it).

from collections import deque as _deque, namedtuple as _namedtuple

#: ``Driver.poll``'s answer when the campaign is due to write a new leadership
#: but the last one's hooks still run (rule 9): wait until ``hold_until`` or a kick.
HOLD = -1

#: Hooks the host has registered (bits of ``Driver(hooks=...)``).
HOOK_ACQUIRE = 1
HOOK_LOSE = 2
HOOK_NEW_LEADER = 4

#: ``Driver.read_record``'s answers: the record was used; it was unreadable
#: (its term still counts, rule 5); it advertises a lease past 10x ours (said
#: once per record).
READ_OK = 0
READ_GARBAGE = 1
READ_LONG_LEASE = 2

#: A hook to run: its name, the leadership it belongs to (leaderships begun
#: when it was queued: for ``on_lose`` the one that ended, for ``on_acquire``
#: the one that began), the generation then, and its arguments.
Hook = _namedtuple("Hook", "name leadership generation args")

cdef object _parse_record = None
cdef object _record_term = None
cdef object _RecordError = None


cdef _load_record_codec():
    # fastelect.record imports this extension: bind it at the first read.
    global _parse_record, _record_term, _RecordError
    from fastelect.errors import RecordError
    from fastelect.record import parse_record, record_term
    _parse_record = parse_record
    _record_term = record_term
    _RecordError = RecordError


# Untracked by the garbage collector (one object fewer per elector for each
# pass to walk): it refers to no object that could refer back to it -- the
# campaign, hook tuples of strings, a parsed record and a message.
@cython.no_gc
@cython.final
cdef class Driver:
    """One election's step around a Campaign: outcomes in with their instants, actions out.

    ``frequent_ns`` paces a campaign held back for hooks; ``lease_ns`` is the
    lease this node advertises (a record advertising more than ten times it
    is reported once); ``storage_timeout_ns`` and ``peer_timeout_ns`` bound
    each request.  ``hooks`` says which hooks to queue (``HOOK_*`` bits).
    ``generation`` starts the count of leadership changes (a host that
    replaces its driver continues the count, so stale work never matches).
    ``campaign`` is the compiled Campaign, or any object with its methods
    (the simulator's pure-Python twin of the rules).
    """

    cdef readonly object campaign
    cdef public int64_t frequent_ns
    cdef public int64_t lease_ns
    cdef public int64_t storage_timeout_ns
    cdef public int64_t peer_timeout_ns
    cdef public int hooks
    cdef public int64_t generation
    cdef public int64_t leaderships
    cdef public int lease_hooks
    cdef public int64_t hooks_skipped
    cdef public bint hold_back
    cdef readonly object record
    cdef readonly str record_error
    cdef object _hooks
    cdef object _hook_running
    cdef bint _release
    cdef int _events
    cdef set _clashes
    cdef tuple _long_lease_seen

    def __init__(self, campaign, *, int64_t frequent_ns, int64_t lease_ns,
                 int64_t storage_timeout_ns, int64_t peer_timeout_ns, int hooks=0,
                 int64_t generation=0, bint hold_back=True):
        self.campaign = campaign
        self.frequent_ns = frequent_ns
        self.lease_ns = lease_ns
        self.storage_timeout_ns = storage_timeout_ns
        self.peer_timeout_ns = peer_timeout_ns
        self.hooks = hooks
        self.generation = generation
        self.leaderships = 0
        self.lease_hooks = 0
        self.hooks_skipped = 0
        # False only in the simulator's mutant of rule 9.
        self.hold_back = hold_back
        self.record = None
        self.record_error = ""
        self._hooks = None
        self._hook_running = None
        self._release = False
        self._events = 0
        self._clashes = None
        self._long_lease_seen = None

    # -- configuration -------------------------------------------------------------

    def configure(self, int64_t lease_ns, int64_t frequent_ns, int64_t infrequent_ns,
                  int64_t margin_ns, int64_t max_skew_ns, bint peer_mode, *,
                  int64_t storage_timeout_ns, int64_t peer_timeout_ns, int hooks):
        """New timings and hooks from the next step on (rule 2: a write under way keeps its own)."""
        self.campaign.configure(lease_ns, frequent_ns, infrequent_ns, margin_ns, max_skew_ns,
                                peer_mode)
        self.lease_ns = lease_ns
        self.frequent_ns = frequent_ns
        self.storage_timeout_ns = storage_timeout_ns
        self.peer_timeout_ns = peer_timeout_ns
        self.hooks = hooks

    def request_release(self):
        """Hand the record back at the next step, if leading."""
        self._release = True

    def restart(self, int64_t now, str nonce=""):
        """A new incarnation after a stop (rule 0: a fresh nonce).

        Hooks still queued keep their places: the host drains them (or
        ``drop_hooks``) when it stops.
        """
        self._release = False
        if self.campaign.role == STOPPED:
            self.campaign.restart(now, nonce)

    # -- the step ------------------------------------------------------------------

    def poll(self, int64_t now):
        """What is due at ``now``: an ``Action`` value, or ``HOLD``."""
        c = self.campaign
        if self._release:
            self._release = False
            c.begin_release(now)
        cdef int action = c.poll(now)
        self._absorb()
        if self.lease_hooks and self.hold_back and (action == CREATE
                                                    or action == TAKEOVER):
            # Rule 9: none of leadership N's hooks may run after N+1 began.
            return HOLD
        return action

    def hold_until(self, int64_t now):
        """When a held campaign looks again, unless a hook's end kicks it first."""
        return now + self.frequent_ns

    def op_timeout_ns(self, int64_t now):
        """How long a read or write started at ``now`` may wait for its answer."""
        cdef int64_t timeout = self.storage_timeout_ns
        cdef int64_t left
        c = self.campaign
        if c.role == LEADER:
            # A write that answers after the lease is worthless; stop waiting then.
            left = c.deadline_ns - now
            timeout = _max(1_000_000, _min(timeout, left))
        return timeout

    def step_bound_ns(self, int action, int64_t now):
        """How long a whole step (a peer check's included) may run before it is cut off."""
        if action == PEER_CHECK:
            return self.peer_timeout_ns + self.storage_timeout_ns
        return self.op_timeout_ns(now)

    # -- reads ---------------------------------------------------------------------

    def read_record(self, int64_t now, int64_t wall_now, bytes body, str etag):
        """A read answered with ``body`` at ``now`` (rule 1: stamped when it arrived).

        Returns ``READ_OK``, ``READ_GARBAGE`` (``record_error`` says why) or
        ``READ_LONG_LEASE`` (``record`` holds it; reported once per record).
        """
        if _parse_record is None:
            _load_record_codec()
        c = self.campaign
        try:
            record = _parse_record(body)
        except _RecordError as exc:
            # Only the message: the exception's traceback would refer back here.
            self.record_error = str(exc)
            c.observe_garbage(now, etag, _record_term(body))  # rule 5: its term counts
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

    def read_missing(self, int64_t now):
        """A read found no record."""
        self.campaign.observe_missing(now)
        self._absorb()

    def read_failed(self, int64_t now, bint refused=False):
        """A read failed (``refused``: credentials or bucket: retried at F or slower)."""
        self.campaign.read_failed(now, refused)
        self._absorb()

    # -- writes --------------------------------------------------------------------

    def begin_write(self, int64_t now, int64_t wall_ns):
        """Start the due write: ``(kind, body, if_match, term, wall, lease_cut)``.

        ``wall`` is the timestamp the body carries (``wall_ns``, or 0 for a
        release), to hand back to ``write_succeeded``.  ``lease_cut`` is True
        when the write capped a lease held (rule 2: a renewal advertising a
        shorter lease): a host's expiry timer must follow the deadline down.
        """
        c = self.campaign
        kind = c.next_action
        cdef int64_t deadline = c.deadline_ns
        if_match, term, _, released = c.begin_write(now)
        cut = c.role == LEADER and c.deadline_ns < deadline
        cdef int64_t wall = 0 if released else wall_ns
        # Rule 2: the body advertises the lease snapshotted when the write began.
        body = c.record_body(wall)
        self._absorb()
        return kind, body, if_match, term, wall, cut

    def write_succeeded(self, int64_t now, str etag, int64_t wall_ns):
        """The store took the write (``wall_ns``: the body's timestamp, 0 for a release)."""
        self.campaign.write_succeeded(now, etag, wall_ns)
        self._absorb()

    def write_conflicted(self, int64_t now):
        """The write's condition failed (412): someone else wrote first."""
        self.campaign.write_conflicted(now)
        self._absorb()

    def write_failed(self, int64_t now, bint refused=False):
        """No answer, or an error: the outcome is unknown until the next read (rule 4)."""
        self.campaign.write_failed(now, refused)
        self._absorb()

    # -- peers, stop, step-down -----------------------------------------------------

    def peer_answered(self, int64_t now, bint ok, str leader_id="", str etag=""):
        """The leader's health endpoint answered (``ok`` False: it did not, or not as leader)."""
        self.campaign.observe_peer(now, ok, leader_id, etag)
        self._absorb()

    def begin_stop(self, int64_t now):
        """Stop campaigning; True if a release write is due first (``begin_write``)."""
        self._release = False
        due = self.campaign.begin_release(now)
        self._absorb()
        return bool(due)

    def stopped(self, int64_t now):
        """The campaign is over (after the release write, if any)."""
        self.campaign.stop(now)
        self._absorb()

    def step_down(self, int64_t now):
        """Give up leadership now, without a write (always safe)."""
        self.campaign.step_down(now)
        self._absorb()

    def take_events(self):
        """The ``Event`` bits since the last call; a duplicate id once per nonce."""
        cdef int events = self._events
        self._events = 0
        return events

    # -- hooks (rule 9) ----------------------------------------------------------------

    def next_hook(self):
        """The hook to run now (a ``Hook``), or None: none queued, or one still running."""
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
    def hooks_pending(self):
        """Hooks queued or running."""
        return (len(self._hooks) if self._hooks is not None else 0) + (
            self._hook_running is not None)

    def hook_finished(self, bint failed):
        """The running hook ended; True if the host must look at the campaign again now."""
        hook = self._hook_running
        if hook is None:
            raise RuntimeError("no hook is running")
        self._hook_running = None
        kick = False
        if hook.name != "on_new_leader":
            self.lease_hooks -= 1
            kick = not self.lease_hooks  # a campaign held back for these hooks may go
        if (failed and hook.name == "on_acquire" and hook.generation == self.generation
                and self.campaign.role == LEADER):
            # Rule 9: a leader that cannot start its work hands the lock back.
            self._release = True
            kick = True
        return kick

    def drop_hooks(self):
        """Forget queued hooks (the process that would run them is gone)."""
        self._hooks = None
        self._hook_running = None
        self.lease_hooks = 0

    cdef void _queue(self, str name, tuple args):
        if self._hooks is None:
            self._hooks = _deque()
        if name != "on_new_leader":
            self.lease_hooks += 1
        self._hooks.append(Hook(name, self.leaderships, self.generation, args))

    cdef void _absorb(self):
        c = self.campaign
        cdef int events = c.take_events()
        if not events:
            return
        cdef int hooks = self.hooks
        if events & EV_DUPLICATE_ID:
            nonce = c.duplicate_nonce
            if self._clashes is None:
                self._clashes = {nonce}
            elif nonce in self._clashes:
                events &= ~EV_DUPLICATE_ID
            else:
                self._clashes.add(nonce)
        if events & EV_LOST:
            self.generation += 1
            if hooks & HOOK_LOSE:
                self._queue("on_lose", ())
        if events & EV_ACQUIRED:
            self.generation += 1
            self.leaderships += 1
            if hooks & HOOK_ACQUIRE:
                self._queue("on_acquire", ())
        if events & EV_NEW_LEADER and hooks & HOOK_NEW_LEADER:
            # A released record keeps the id of the leader that left: nobody leads.
            self._queue("on_new_leader", ("" if c.obs_released else c.leader_id,))
        self._events |= events
