# The election rules as a state machine: docs/safety.md made executable.
# Included by _core.pyx.  The numbers in comments ("rule 2") are the safety
# rules of docs/safety.md#the-rules.


# Past the fixed retry delays, a retry waits F plus up to F / RETRY_JITTER_DIV.
cdef int64_t RETRY_JITTER_DIV = 4


cdef inline int64_t _max(int64_t a, int64_t b):
    return a if a > b else b


cdef inline int64_t _min(int64_t a, int64_t b):
    return a if a < b else b


cdef int64_t _I64_MAX = 9_223_372_036_854_775_807
#: The longest duration the rules accept (24 h): every configured duration and
#: every record lease is at most this, so sums of instants and durations stay
#: far inside int64; _add saturates anyway, so nothing can overflow into the past.
cdef int64_t _MAX_DURATION_NS = 86_400 * 1_000_000_000
MAX_DURATION_NS = _MAX_DURATION_NS


cdef inline int64_t _add(int64_t a, int64_t b):
    """a + b, saturated to int64 (an overflowed deadline would lie in the past)."""
    if b > 0 and a > _I64_MAX - b:
        return _I64_MAX
    if b < 0 and a < -_I64_MAX - 1 - b:
        return -_I64_MAX - 1
    return a + b


cdef inline bint _term_ok(int64_t term):
    return 0 <= term <= _TERM_MAX


def new_nonce():
    """A fresh incarnation nonce: 64 random bits as 16 hex digits (rule 0)."""
    return secrets.token_hex(8)


# Not tracked by the garbage collector: a Campaign holds only strings and its
# Slot, so it can never be part of a reference cycle, and a process running
# 100,000 elections should not have every collection pass walk 100,000 of them.
@cython.no_gc
cdef class Campaign:
    """One elector's state machine.

    The driver loop is::

        action = campaign.poll(now)            # WAIT until campaign.next_at_ns, or:
        READ       -> observe_record / observe_missing / observe_garbage / read_failed
        CREATE, TAKEOVER, RENEW, RELEASE
                   -> begin_write(now) gives (if_match, term, renewal, released) and
                      snapshots the lease the body must advertise (pending_lease_ms);
                      then write_succeeded / write_conflicted / write_failed
        PEER_CHECK -> observe_peer

    and after every call ``take_events()`` says what happened (EV_* bits).
    Every instant is on the lease clock (:func:`monotonic_ns`), supplied by the
    caller, so the machine runs as well on a simulator's virtual time.
    """

    def __init__(self, Slot slot, str server_id, str server_addr, int64_t lease_ns, int64_t frequent_ns,
                 int64_t infrequent_ns, int64_t margin_ns, int64_t max_skew_ns=-1,
                 bint peer_mode=False, int64_t now_ns=0, str nonce=""):
        self.slot = slot
        self.server_id = server_id
        self.server_addr = server_addr
        self.nonce = nonce or new_nonce()
        self._seed_jitter()
        self.configure(lease_ns, frequent_ns, infrequent_ns, margin_ns, max_skew_ns, peer_mode)
        self.role = FOLLOWER
        self.etag = ""
        self.obs_etag = ""
        self.obs_nonce = ""
        self.duplicate_nonce = ""
        self.leader_id = ""
        self.leader_addr = ""
        self.pending_match = ""
        self.pending_kind = WAIT
        self._schedule(READ, now_ns)
        slot._begin()
        slot._s.lease_ns = lease_ns
        slot._end()

    def configure(self, int64_t lease_ns, int64_t frequent_ns, int64_t infrequent_ns,
                  int64_t margin_ns, int64_t max_skew_ns=-1, bint peer_mode=False):
        """Apply new timings; they govern every decision from now on.

        Rule 2: a write already begun keeps the lease it snapshotted (and
        advertises), and a leader's current deadline stays as it was earned.
        """
        if not (0 < frequent_ns and 0 <= margin_ns and frequent_ns + margin_ns < lease_ns):
            raise ValueError("need 0 < frequent, 0 <= margin and frequent + margin < lease")
        if infrequent_ns < frequent_ns:
            raise ValueError("need infrequent >= frequent")
        if (lease_ns > _MAX_DURATION_NS or infrequent_ns > _MAX_DURATION_NS
                or max_skew_ns > _MAX_DURATION_NS):
            raise ValueError("every duration must be at most 24 h")
        self.lease_ns = lease_ns
        self.frequent_ns = frequent_ns
        self.infrequent_ns = infrequent_ns
        self.margin_ns = margin_ns
        self.max_skew_ns = max_skew_ns
        self.peer_mode = peer_mode

    def set_peer_mode(self, bint enabled):
        """Switch peer checks on or off for stable followers."""
        self.peer_mode = enabled
        self.peer_suspect = False

    # -- queries -----------------------------------------------------------

    def is_leader(self, int64_t now_ns):
        """Leader at ``now_ns`` by role and deadline (the slot answers for real time)."""
        return self.role == LEADER and now_ns < self.deadline_ns

    def take_events(self):
        """Return and clear the EV_* bits raised since the last call."""
        cdef int ev = self.events
        self.events = 0
        return ev

    def takeover_legal_at(self):
        """Instant at which rule 1(a) lets us replace the observed record."""
        if not self.obs_known or self.obs_missing:
            return 0
        return _add(self.obs_first_seen_ns, _max(self.lease_ns, self.obs_lease_ns))

    @property
    def observed_term(self):
        return self.obs_term

    @property
    def pending_lease_ms(self):
        """The lease (ms) the pending write must advertise as ``leaseMs`` (rule 2)."""
        return self.pending_lease_ns // 1_000_000

    @property
    def consecutive_fails(self):
        """The longer of the two failure streaks (reads in a row, writes in a row)."""
        return _max(self.read_fails, self.write_fails)

    @property
    def stable(self):
        """True when a live leader has been seen renewing for at least a lease."""
        return (self.obs_known and not self.obs_missing and not self.obs_garbage
                and not self.obs_released and self.obs_renewals_seen >= 1
                and self.role != LEADER)

    # -- the step ----------------------------------------------------------

    def poll(self, int64_t now_ns):
        """The action due at ``now_ns`` (WAIT if none); expires a lapsed lease."""
        if self.role == LEADER and now_ns >= self.deadline_ns:
            # Rule 3: the lease ran out before a renewal landed.
            self._step_down(now_ns)
            self._clear_pending()
            self._schedule(READ, now_ns)
        if self.role == STOPPED:
            return WAIT
        if now_ns >= self.next_at_ns:
            return self.next_action
        return WAIT

    def begin_write(self, int64_t now_ns):
        """Describe the write for the due action; stamps its send time.

        Returns ``(if_match, term, renewal, released)``; ``if_match == ""``
        means create-if-absent.  The body must carry ``nonce`` and advertise
        ``pending_lease_ms``.  A retry of a write whose outcome is unknown
        reuses its term, renewal and lease snapshot so a later read can
        recognise it (rule 4) and its lease stays what it advertised (rule 2).
        """
        cdef int kind = self.next_action
        if kind not in (CREATE, TAKEOVER, RENEW, RELEASE):
            raise LifecycleError(f"no write is due (next action: {ACTION_NAMES[kind]})")
        if not (self.pending_kind == kind and self.pending_unknown):
            self.renewal += 1
            self.pending_kind = kind
            self.pending_renewal = self.renewal
            self.pending_first_send_ns = now_ns
            # Rule 2: one snapshot of the lease for this write, whatever
            # configure() does while it is in flight.
            self.pending_lease_ns = self.lease_ns
            self.pending_margin_ns = self.margin_ns
            if kind == CREATE or kind == TAKEOVER:
                self.pending_term = self.max_term_seen + 1      # rule 5
                self.pending_match = "" if kind == CREATE else self.obs_etag
            else:
                self.pending_term = self.term
                self.pending_match = self.etag
                if self.role == LEADER:
                    self._cap_lease(_add(now_ns, self.pending_lease_ns - self.pending_margin_ns))
        self.pending_unknown = True
        self.slot._bump(C_WRITES)
        return (self.pending_match, self.pending_term, self.pending_renewal, kind == RELEASE)

    def record_body(self, int64_t wall_ns):
        """The JSON body of the write :meth:`begin_write` described.

        Our id, address and nonce, and the pending write's term, renewal and
        lease snapshot (rule 2: the lease it advertises is the one its
        deadline counts); ``wall_ns`` is its lastUpdated, except that a
        release writes the zero time.  The same bytes as
        ``fastelect.record.encode_record`` with those fields.
        """
        if self.pending_kind == WAIT:
            raise LifecycleError("no write is pending (call begin_write first)")
        return _encode_record(
            self.server_id, self.server_addr,
            None if self.pending_kind == RELEASE else wall_ns,
            self.pending_term, self.pending_lease_ns // 1_000_000, self.pending_renewal,
            self.nonce, _RECORD_VERSION,
        )

    def write_succeeded(self, int64_t now_ns, str new_etag, int64_t wall_ns=0):
        """The write from begin_write landed and returned ``new_etag``.

        ``wall_ns`` is the record's lastUpdated, for the table's status.
        """
        cdef int kind = self.pending_kind
        self._writes_answered()
        if wall_ns:
            self.slot._begin()
            self.slot._s.last_update_wall_ns = wall_ns
            self.slot._end()
        if kind == RELEASE:
            self._clear_pending()
            self.etag = ""
            self._observe_own_release(now_ns, new_etag)
            return
        if kind == CREATE or kind == TAKEOVER or kind == RENEW:
            self._become_leader(now_ns, new_etag)
        # Otherwise the write was abandoned meanwhile (lease expired, stop): ignore.

    def write_conflicted(self, int64_t now_ns):
        """The write got 412/409: someone else wrote, or an earlier try of ours landed."""
        self.slot._bump(C_CONFLICTS)
        self._writes_answered()     # a 412 is an answer: the store takes our writes
        if self.pending_kind == RELEASE:
            # Someone already replaced our record; nothing left to hand back.
            self._clear_pending()
            self._schedule(READ, now_ns)
            return
        self.verifying = True      # rule 4: a read decides
        self._schedule(READ, now_ns)

    def write_failed(self, int64_t now_ns, bint auth=False):
        """The write's outcome is unknown (timeout, transport error, 5xx, 403).

        ``auth``: the store refused our permissions, so no retry comes sooner
        than F.  The write streak survives successful reads: until a write is
        answered, no write goes out before the streak's backoff, whatever a
        read in between finds.
        """
        self.write_fails += 1
        self.slot._bump(C_FAILED_WRITES)
        cdef int64_t at = _add(now_ns, self._retry_delay(self.write_fails, auth))
        self.write_not_before_ns = at
        if self.pending_kind == RENEW:
            # Keep renewing with the same renewal number; the deadline stays put.
            self._schedule(RENEW, at)
        elif self.pending_kind == RELEASE:
            self._clear_pending()
            self._schedule(READ, at)
        else:
            # An acquisition may or may not have landed: read before retrying.
            self.verifying = True
            self._schedule(READ, at)

    def read_failed(self, int64_t now_ns, bint auth=False):
        """A read failed (transport error, timeout; ``auth``: a 403, retried no sooner than F)."""
        self.read_fails += 1
        self.slot._bump(C_STORAGE_ERRORS)
        self._schedule(READ, _add(now_ns, self._retry_delay(self.read_fails, auth)))

    def observe_missing(self, int64_t now_ns):
        """The read found no record."""
        self.slot._bump(C_READS)
        self.read_fails = 0
        if self.role == LEADER:
            self._step_down(now_ns)
        self._clear_pending()
        if self.obs_known and not self.obs_missing:
            self.events |= EV_NEW_LEADER
        self.obs_known = True
        self.obs_missing = True
        self.obs_garbage = False
        self.obs_released = False
        self.obs_etag = ""
        self.obs_nonce = ""
        self.foreign_writes_seen = 0
        self.leader_id = ""
        self.leader_addr = ""
        self.obs_renewals_seen = 0
        self.leader_since_ns = now_ns
        self._publish_observation()
        # Not a completed cycle yet: the create that follows decides who leads.
        self._schedule(CREATE, _max(now_ns, self.write_not_before_ns))

    def observe_garbage(self, int64_t now_ns, str etag, object term=None):
        """The read found an invalid record; replaceable only once provably stale.

        ``term``: the record's own ``term`` when that field alone is valid
        (an integer in [0, 2**53 - 1]); rule 5 counts it, so the leadership
        that replaces the garbage still writes a higher term.
        """
        self.slot._bump(C_READS)
        self.slot._bump(C_RECORD_ERRORS)
        self.read_fails = 0
        if (term is not None and not isinstance(term, bool) and isinstance(term, int)
                and 0 <= term <= _TERM_MAX and term > self.max_term_seen):
            self.max_term_seen = term
        if self.role == LEADER:
            self._step_down(now_ns)
        self._clear_pending()
        if etag != self.obs_etag or not self.obs_known:
            if not self.obs_garbage:
                self.events |= EV_NEW_LEADER
            self.obs_etag = etag
            self.obs_first_seen_ns = now_ns
            self.leader_since_ns = now_ns
            self.obs_renewals_seen = 0
        self.obs_known = True
        self.obs_missing = False
        self.obs_garbage = True
        self.obs_released = False
        self.obs_lease_ns = 0
        self.obs_updated_wall_ns = 0
        self.obs_nonce = ""
        self.foreign_writes_seen = 0
        self.leader_id = ""
        self.leader_addr = ""
        self._publish_observation()
        self.events |= EV_CYCLE
        self._follow(now_ns)

    def observe_record(self, int64_t now_ns, int64_t wall_now_ns, str etag, str leader_id,
                       str leader_addr, int64_t term, int64_t lease_ms, int64_t renewal,
                       bint released, int64_t updated_wall_ns, str nonce=""):
        """The read found a valid record (stamp ``now_ns`` when the response arrived).

        ``nonce`` is the record's incarnation nonce ("" when it has none, as
        s3lect's records): only a record with our id *and* our nonce is ours.
        """
        if not (_term_ok(term) and 0 <= lease_ms <= _LEASE_MS_MAX):
            # Out of bounds (docs/safety.md#bounds): invalid, like any garbage
            # record -- never released, never taken before our own T.
            self.observe_garbage(now_ns, etag, term if _term_ok(term) else None)
            return
        cdef bint ours = leader_id == self.server_id and nonce == self.nonce
        self.slot._bump(C_READS)
        self.read_fails = 0
        if term > self.max_term_seen:
            self.max_term_seen = term
        if (self.verifying or self.pending_unknown) and ours:
            if (term == self.pending_term and renewal == self.pending_renewal
                    and not released and self.pending_kind != RELEASE):
                # Rule 4: this incarnation's write landed though we never saw
                # its answer; its lease counts from its own first send.
                self._become_leader(now_ns, etag)
                if self.role == LEADER:
                    return
        if self.role == LEADER:
            if etag == self.etag:
                # Our own current record: nothing changed.
                self.verifying = False
                self._schedule(RENEW, _add(self.pending_first_send_ns, self.frequent_ns))
                return
            self._step_down(now_ns)
        self._clear_pending()
        self._check_duplicate(etag, leader_id, nonce, released)
        cdef bint changed_leader = (
            not self.obs_known or self.obs_missing or self.obs_garbage
            or leader_id != self.leader_id or term != self.obs_term
            or nonce != self.obs_nonce
        )
        if etag != self.obs_etag or not self.obs_known:
            # Rule 1: "first observed" is when this response arrived.
            self.obs_first_seen_ns = now_ns
            if not changed_leader and not self.obs_released and not released:
                self.obs_renewals_seen += 1
        if changed_leader:
            self.leader_since_ns = now_ns
            self.obs_renewals_seen = 0
            self.events |= EV_NEW_LEADER
        elif released and not self.obs_released:
            self.events |= EV_NEW_LEADER
        self.obs_known = True
        self.obs_missing = False
        self.obs_garbage = False
        self.obs_released = released
        self.obs_etag = etag
        self.obs_nonce = nonce
        self.leader_id = leader_id
        self.leader_addr = leader_addr
        self.obs_term = term
        self.obs_lease_ns = lease_ms * 1_000_000 if lease_ms > 0 else 0
        self.obs_updated_wall_ns = updated_wall_ns
        self.obs_wall_at_mono_ns = wall_now_ns - now_ns
        if not released:
            self.last_seen_alive_ns = now_ns
        self._publish_observation()
        self.events |= EV_CYCLE
        self._follow(now_ns)

    def observe_peer(self, int64_t now_ns, bint ok, str leader_id="", str etag=""):
        """A peer health check answered: ``ok`` only for a 200 naming the expected leader."""
        self.slot._bump(C_PEER_CHECKS)
        if ok and leader_id == self.leader_id and self.role != LEADER:
            self.last_seen_alive_ns = now_ns
            if etag and etag != self.obs_etag:
                # The leader told us its current etag: as good as reading it ourselves.
                self.obs_etag = etag
                self.obs_first_seen_ns = now_ns
            self.events |= EV_CYCLE
            self._schedule(PEER_CHECK, _add(now_ns, self.frequent_ns))
            return
        self.slot._bump(C_PEER_FAILURES)
        self.peer_suspect = True
        self.obs_renewals_seen = 0     # stability must be earned again from storage
        self._schedule(READ, now_ns)

    def begin_release(self, int64_t now_ns):
        """Stop leading now; returns True if a RELEASE write should follow."""
        if self.role != LEADER:
            return False
        self._step_down(now_ns)
        self._clear_pending()
        self._schedule(RELEASE, now_ns)
        return True

    def step_down(self, int64_t now_ns):
        """Give up leadership without writing (e.g. the app's on_acquire failed)."""
        if self.role == LEADER:
            self._step_down(now_ns)
            self._clear_pending()
            self._schedule(READ, now_ns)

    def stop(self, int64_t now_ns):
        """Stop campaigning; no further actions."""
        if self.role == LEADER:
            self._step_down(now_ns)
        self.role = STOPPED
        self.next_action = WAIT
        self.slot.release_slot()

    def restart(self, int64_t now_ns, str nonce=""):
        """Campaign again after stop(), as a new incarnation (a fresh nonce, rule 0).

        What this elector has seen (its highest term, rule 5) is kept.
        """
        self.role = FOLLOWER
        self.nonce = nonce or new_nonce()
        self._seed_jitter()
        self.obs_known = False
        self.obs_etag = ""
        self.obs_nonce = ""
        self.foreign_writes_seen = 0
        self._clear_pending()
        self.slot.restart_slot()
        self._schedule(READ, now_ns)

    # -- internals -------------------------------------------------------------

    cdef void _schedule(self, int action, int64_t at):
        self.next_action = action
        self.next_at_ns = at

    cdef void _writes_answered(self):
        self.write_fails = 0
        self.write_not_before_ns = 0

    cdef int64_t _retry_delay(self, int streak, bint auth):
        """How long after the ``streak``-th failure in a row the next try waits.

        Immediately, after 100 ms, after 1 s (s3lect's policy), then one try
        per F plus up to F/4 of jitter, so a thousand elections refused at
        once do not retry in step.  A refused permission (``auth``) is not
        transient: never sooner than F.
        """
        if streak <= 0:
            return 0
        if streak <= 3 and not auth:
            return RETRY_DELAYS_NS[streak - 1]
        return self.frequent_ns + self._jitter(self.frequent_ns // RETRY_JITTER_DIV)

    cdef int64_t _jitter(self, int64_t span):
        # xorshift64: deterministic per incarnation, so a simulator schedule
        # that supplies its nonces replays exactly.
        cdef uint64_t x = self.jitter_state
        if span <= 0:
            return 0
        x ^= x << 13
        x ^= x >> 7
        x ^= x << 17
        self.jitter_state = x
        return <int64_t>(x % <uint64_t>span)

    cdef void _seed_jitter(self):
        # FNV-1a over the nonce (str hashes are salted per process).
        cdef uint64_t h = 14695981039346656037ULL
        cdef Py_UCS4 ch
        for ch in self.nonce:
            h = (h ^ <uint64_t>ch) * 1099511628211ULL
        self.jitter_state = h if h else 1

    cdef void _clear_pending(self):
        self.pending_kind = WAIT
        self.pending_unknown = False
        self.verifying = False

    cdef void _check_duplicate(self, str etag, str leader_id, str nonce, bint released):
        """Rule 0: notice another *live* process writing under our server id.

        A record with our id and another nonce may be a dead predecessor's
        (even a write of its delivered late): that is no clash.  A dead
        process can land at most two writes we see change hands -- its last
        acknowledged one and one still in flight -- and never one that
        replaces a record this incarnation wrote, because it cannot know that
        record's etag.  So either of those proves a live duplicate.
        """
        if leader_id != self.server_id or nonce == self.nonce or released:
            self.foreign_writes_seen = 0
            return
        if not self.obs_known or etag == self.obs_etag:
            return
        if self.obs_nonce == self.nonce and self.leader_id == self.server_id:
            self.foreign_writes_seen = 2            # it replaced our own write
        elif self.obs_nonce == nonce:
            self.foreign_writes_seen += 1           # it renewed its own write
        else:
            self.foreign_writes_seen = 0            # first sight of this nonce
        if self.foreign_writes_seen >= 2 and self.duplicate_nonce != nonce:
            self.duplicate_nonce = nonce
            self.events |= EV_DUPLICATE_ID
            self.slot._bump(C_DUPLICATE_IDS)

    cdef void _follow(self, int64_t now):
        """Decide a follower's next step from the current observation (rule 1)."""
        cdef int64_t lease = _max(self.lease_ns, self.obs_lease_ns)
        cdef int64_t legal_at
        cdef int64_t next_at
        if self.role == STOPPED:
            return
        self.cycles += 1
        # A write in a failure streak waits for its backoff, however well
        # the reads in between went.
        cdef int64_t write_at = _max(now, self.write_not_before_ns)
        if self.obs_missing:
            self._schedule(CREATE, write_at)
            return
        if self.obs_released:
            self._schedule(TAKEOVER, write_at)                     # rule 1(b)
            return
        if self.obs_garbage:
            lease = self.lease_ns
        legal_at = _add(self.obs_first_seen_ns, lease)             # rule 1(a)
        if self.max_skew_ns >= 0 and not self.obs_garbage and self.obs_updated_wall_ns > 0:
            # rule 1(c): wall-clock staleness, only when the operator bounds skew.
            # Saturating: a lastUpdated near the int64 end must not wrap into the past.
            legal_at = _min(legal_at, _add(_add(self.obs_updated_wall_ns, lease + self.max_skew_ns),
                                           -self.obs_wall_at_mono_ns))
        if now >= legal_at:
            self._schedule(TAKEOVER, write_at)
            return
        if self.stable and self.peer_mode and self.leader_addr and not self.peer_suspect:
            self._schedule(PEER_CHECK, _add(now, self.frequent_ns))
            return
        if self.stable:
            self.peer_suspect = False
            next_at = _add(now, self.infrequent_ns)
        else:
            next_at = _add(now, self.frequent_ns)
        self._schedule(READ, _min(next_at, legal_at))

    cdef void _become_leader(self, int64_t now, str etag):
        # Rule 2: the lease counts from before the first send of this write,
        # with the lease and margin snapshotted when the write began.
        cdef int64_t deadline = _add(self.pending_first_send_ns,
                                     self.pending_lease_ns - self.pending_margin_ns)
        cdef bint was_leader = self.role == LEADER
        cdef int kind = self.pending_kind
        cdef int64_t term = self.pending_term
        cdef int64_t sent = self.pending_first_send_ns
        self._clear_pending()
        self._writes_answered()     # our write landed (perhaps seen by a read, rule 4)
        if deadline <= now:
            # The write took longer than the lease: we hold the record but no lease.
            if was_leader:
                self._step_down(now)
            self._observe_own_record(etag, term)
            self.obs_first_seen_ns = now
            self._schedule(READ, now + self.frequent_ns)
            return
        self.etag = etag
        self.term = term
        self.leader_addr = self.server_addr
        if term > self.max_term_seen:
            self.max_term_seen = term
        self.deadline_ns = deadline
        self.role = LEADER
        self._observe_own_record(etag, term)
        self.slot._begin()
        self.slot._set_leader(deadline, deadline)
        self.slot._s.term = term
        self.slot._s.lease_ns = self.pending_lease_ns
        _put_str(self.slot._s.etag.data, &self.slot._s.etag.len, FE_STR_LONG - 2, etag)
        self.slot._put_leader(self.server_id, self.server_addr)
        if not was_leader:
            self.slot._s.counters[<int>C_ACQUISITIONS] += 1
            self.slot._s.counters[<int>C_TRANSITIONS] += 1
            self.slot._s.leader_since_mono_ns = now
        else:
            self.slot._s.counters[<int>C_RENEWALS] += 1
        self.slot._end()
        if not was_leader or kind != RENEW:
            self.leader_since_ns = now
            self.last_election_ns = now
            self.events |= EV_ACQUIRED | EV_NEW_LEADER | EV_CYCLE
        self._schedule(RENEW, sent + self.frequent_ns)

    cdef void _observe_own_record(self, str etag, int64_t term):
        """What we know of the record after one of our writes landed."""
        self.obs_known = True
        self.obs_missing = False
        self.obs_garbage = False
        self.obs_released = False
        self.obs_etag = etag
        self.obs_nonce = self.nonce
        self.obs_term = term
        self.leader_id = self.server_id

    cdef void _cap_lease(self, int64_t cap):
        """Rule 2 for a shrinking lease: a renewal that advertises a shorter
        lease may land and let followers take over that much sooner after it,
        even if its answer never reaches us -- so from the moment it is sent,
        the lease we hold ends no later than that write's own would."""
        if cap < self.deadline_ns:
            self.deadline_ns = cap
            self.slot._begin()
            self.slot._set_leader(cap, cap)
            self.slot._end()

    cdef void _step_down(self, int64_t now):
        self.role = FOLLOWER
        self.last_election_ns = now
        self.events |= EV_LOST
        self.slot._begin()
        self.slot._set_follower()
        self.slot._s.counters[<int>C_LOSSES] += 1
        self.slot._s.counters[<int>C_TRANSITIONS] += 1
        self.slot._end()

    def _observe_own_release(self, int64_t now, str etag):
        self.obs_known = True
        self.obs_missing = False
        self.obs_garbage = False
        self.obs_released = True
        self.obs_etag = etag
        self.obs_nonce = self.nonce
        self.obs_first_seen_ns = now
        # Give the others a lease to take what we handed back before we try again.
        self._schedule(READ, _add(now, self.lease_ns))

    cdef void _publish_observation(self):
        self.slot._begin()
        self.slot._s.term = self.obs_term
        self.slot._s.last_update_wall_ns = self.obs_updated_wall_ns
        self.slot._s.leader_since_mono_ns = self.leader_since_ns
        self.slot._put_leader(self.leader_id, self.leader_addr)
        _put_str(self.slot._s.etag.data, &self.slot._s.etag.len, FE_STR_LONG - 2,
                 self.obs_etag)
        self.slot._end()
