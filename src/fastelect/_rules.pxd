# Declarations of the election state machine (_rules.pyx): the safety rules of
# docs/safety.md#the-rules as code, driven by instants and outcomes the driver passes in.

cdef class Campaign:
    cdef Slot slot
    # configuration
    cdef int64_t lease_ns
    cdef int64_t frequent_ns
    cdef int64_t infrequent_ns
    cdef int64_t margin_ns
    cdef int64_t max_skew_ns
    cdef bint peer_mode
    cdef readonly str server_id
    cdef readonly str server_addr
    # this incarnation (rule 0)
    cdef readonly str nonce
    # leadership
    cdef readonly int role
    cdef readonly int64_t deadline_ns
    cdef readonly int64_t term
    cdef readonly str etag
    cdef int64_t renewal
    # the write in flight or awaiting a retry (kind WRITE_NONE when none), with
    # the lease parameters snapshotted when it began (rule 2)
    cdef readonly int pending_kind
    cdef int64_t pending_term
    cdef int64_t pending_renewal
    cdef str pending_match
    cdef int64_t pending_first_send_ns
    cdef int64_t pending_lease_ns
    cdef int64_t pending_margin_ns
    cdef bint pending_unknown
    cdef bint verifying
    # what we know of the record
    cdef bint obs_known
    cdef bint obs_missing
    cdef bint obs_garbage
    cdef readonly bint obs_released
    cdef readonly str obs_etag
    cdef readonly str obs_nonce
    cdef readonly str leader_id
    cdef readonly str leader_addr
    cdef int64_t obs_first_seen_ns
    cdef int64_t obs_term
    cdef int64_t obs_lease_ns
    cdef int64_t obs_updated_wall_ns
    cdef int64_t obs_wall_at_mono_ns
    cdef readonly int64_t leader_since_ns
    cdef int obs_renewals_seen
    cdef int foreign_writes_seen
    cdef readonly str duplicate_nonce
    cdef readonly int64_t max_term_seen
    cdef readonly int64_t last_seen_alive_ns
    # scheduling
    cdef readonly int next_action
    cdef readonly int64_t next_at_ns
    # failure streaks (docs/operations.md#retries): a read's ends at a
    # successful read, a write's only at a write the store answered
    cdef readonly int read_fails
    cdef readonly int write_fails
    cdef readonly int64_t write_not_before_ns
    cdef uint64_t jitter_state
    cdef bint peer_suspect
    cdef readonly int64_t last_election_ns
    cdef readonly int cycles
    cdef int events

    cdef void _schedule(self, int action, int64_t at)
    cdef void _writes_answered(self)
    cdef int64_t _retry_delay(self, int streak, bint auth)
    cdef int64_t _jitter(self, int64_t span)
    cdef void _seed_jitter(self)
    cdef void _follow(self, int64_t now)
    cdef void _become_leader(self, int64_t now, str etag)
    cdef void _observe_own_record(self, str etag, int64_t term)
    cdef void _cap_lease(self, int64_t cap)
    cdef void _step_down(self, int64_t now)
    cdef void _clear_pending(self)
    cdef void _publish_observation(self)
    cdef void _check_duplicate(self, str etag, str leader_id, str nonce, bint released)
