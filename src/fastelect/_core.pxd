# Declarations of fastelect's compiled core; see _core.pyx for the why.

from libc.stdint cimport int64_t, uint64_t, uint32_t, uint16_t, uint8_t


cdef extern from "Python.h":
    pass


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <time.h>
    #include <sched.h>

    #define FE_MAGIC 0x31305443454c4546ULL  /* "FELECT01" little-endian */
    #define FE_LAYOUT_VERSION 1
    #define FE_STR_SHORT 32
    #define FE_STR_LONG 128

    typedef struct { uint16_t len; char data[FE_STR_SHORT - 2]; } fe_str_short;
    typedef struct { uint16_t len; char data[FE_STR_LONG - 2]; } fe_str_long;

    /* The table header: 128 bytes at offset 0. */
    typedef struct {
        uint64_t magic;
        uint32_t version;
        uint32_t header_size;
        uint32_t slot_count;
        uint32_t slot_size;
        int64_t owner_pid;
        int64_t created_wall_ns;
        int64_t created_mono_ns;
        uint32_t closed;
        uint32_t reserved0;
        uint8_t reserved[72];
    } fe_header;

    /* One election: 1024 bytes, slot i at header_size + i * slot_size. */
    typedef struct {
        uint64_t seq;                 /* seqlock: odd while a write is in progress */
        int64_t lease_until_ns;       /* CLOCK_MONOTONIC deadline while leader, else 0 */
        uint32_t state;               /* FE_SLOT_* */
        uint32_t role;                /* ROLE_* */
        int64_t term;
        int64_t lease_ns;
        int64_t last_update_wall_ns;  /* lastUpdated of the record last written or seen */
        int64_t last_cycle_mono_ns;   /* watchdog heartbeat of the elector loop */
        int64_t watchdog_ns;          /* heartbeat older than this means the loop is stuck */
        int64_t leader_since_mono_ns; /* when the current leader was first seen or won */
        int64_t deadline_ns;          /* the lease deadline, kept also after losing */
        uint64_t counters[16];        /* COUNTER_* */
        fe_str_short name;
        fe_str_long server_id;
        fe_str_long leader_id;
        fe_str_long leader_addr;
        fe_str_long etag;
        uint8_t reserved[272];
    } fe_slot;

    _Static_assert(sizeof(fe_header) == 128, "fe_header must be 128 bytes");
    _Static_assert(sizeof(fe_slot) == 1024, "fe_slot must be 1024 bytes");

    static inline int64_t fe_monotonic_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000000LL + (int64_t)ts.tv_nsec;
    }
    static inline int64_t fe_load_i64(const int64_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void fe_store_i64(int64_t *p, int64_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    static inline uint64_t fe_load_seq(const uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void fe_write_begin(fe_slot *s) {
        uint64_t q = __atomic_load_n(&s->seq, __ATOMIC_RELAXED);
        __atomic_store_n(&s->seq, q + 1, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_RELEASE);
    }
    static inline void fe_write_end(fe_slot *s) {
        uint64_t q = __atomic_load_n(&s->seq, __ATOMIC_RELAXED);
        __atomic_store_n(&s->seq, q + 1, __ATOMIC_RELEASE);
    }
    static inline void fe_publish_magic(fe_header *h) {
        __atomic_store_n(&h->magic, FE_MAGIC, __ATOMIC_RELEASE);
    }
    /* Copy a slot consistently; returns 0 on success, -1 if a writer kept it
       busy for ~a second.  A writer holds the lock for well under a
       microsecond, but may be preempted mid-write on a loaded host: after a
       short spin the reader yields its CPU so the writer can finish. */
    static inline int fe_read_slot(const fe_slot *s, fe_slot *out) {
        for (long attempt = 0; attempt < 1000000; attempt++) {
            uint64_t before = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
            if (!(before & 1)) {
                memcpy(out, (const void *)s, sizeof(fe_slot));
                __atomic_thread_fence(__ATOMIC_ACQUIRE);
                uint64_t after = __atomic_load_n(&s->seq, __ATOMIC_RELAXED);
                if (before == after) return 0;
            }
            if (attempt >= 64) sched_yield();
        }
        return -1;
    }
    """
    int FE_MAGIC
    int FE_LAYOUT_VERSION
    int FE_STR_SHORT
    int FE_STR_LONG

    ctypedef struct fe_str_short:
        uint16_t len
        char data[30]

    ctypedef struct fe_str_long:
        uint16_t len
        char data[126]

    ctypedef struct fe_header:
        uint64_t magic
        uint32_t version
        uint32_t header_size
        uint32_t slot_count
        uint32_t slot_size
        int64_t owner_pid
        int64_t created_wall_ns
        int64_t created_mono_ns
        uint32_t closed

    ctypedef struct fe_slot:
        uint64_t seq
        int64_t lease_until_ns
        uint32_t state
        uint32_t role
        int64_t term
        int64_t lease_ns
        int64_t last_update_wall_ns
        int64_t last_cycle_mono_ns
        int64_t watchdog_ns
        int64_t leader_since_mono_ns
        int64_t deadline_ns
        uint64_t counters[16]
        fe_str_short name
        fe_str_long server_id
        fe_str_long leader_id
        fe_str_long leader_addr
        fe_str_long etag

    int64_t fe_monotonic_ns() nogil
    int64_t fe_load_i64(const int64_t *p) nogil
    void fe_store_i64(int64_t *p, int64_t v) nogil
    uint64_t fe_load_seq(const uint64_t *p) nogil
    void fe_write_begin(fe_slot *s) nogil
    void fe_write_end(fe_slot *s) nogil
    int fe_read_slot(const fe_slot *s, fe_slot *out) nogil
    void fe_publish_magic(fe_header *h) nogil


cdef class _Mapping:
    cdef unsigned char *base
    cdef size_t size
    cdef bint writable
    cdef object name
    cdef bint owner
    cdef fe_header *header(self)
    cdef fe_slot *slot_at(self, Py_ssize_t index)


cdef class LeadershipTable:
    cdef _Mapping _map
    cdef dict _slots
    cdef readonly object name


cdef class Slot:
    cdef _Mapping _map
    cdef fe_slot *_s
    cdef readonly str election
    cdef readonly int index
    cdef void _begin(self)
    cdef void _end(self)
    cdef void _set_leader(self, int64_t lease_until, int64_t deadline)
    cdef void _set_follower(self)
    cdef void _bump(self, int counter)


cdef class TableReader:
    cdef _Mapping _map
    cdef dict _index
    cdef readonly object name
    cdef fe_slot *_find(self, str election) except? NULL


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
    # leadership
    cdef readonly int role
    cdef readonly int64_t deadline_ns
    cdef readonly int64_t term
    cdef readonly str etag
    cdef int64_t renewal
    # the write in flight or awaiting a retry (kind WRITE_NONE when none)
    cdef readonly int pending_kind
    cdef int64_t pending_term
    cdef int64_t pending_renewal
    cdef str pending_match
    cdef int64_t pending_first_send_ns
    cdef bint pending_unknown
    cdef bint verifying
    # what we know of the record
    cdef bint obs_known
    cdef bint obs_missing
    cdef bint obs_garbage
    cdef bint obs_released
    cdef readonly str obs_etag
    cdef readonly str leader_id
    cdef readonly str leader_addr
    cdef int64_t obs_first_seen_ns
    cdef int64_t obs_term
    cdef int64_t obs_lease_ns
    cdef int64_t obs_updated_wall_ns
    cdef int64_t obs_wall_at_mono_ns
    cdef readonly int64_t leader_since_ns
    cdef int obs_renewals_seen
    cdef readonly int64_t max_term_seen
    cdef readonly int64_t last_seen_alive_ns
    # scheduling
    cdef readonly int next_action
    cdef readonly int64_t next_at_ns
    cdef readonly int consecutive_fails
    cdef bint peer_suspect
    cdef readonly int64_t last_election_ns
    cdef readonly int cycles
    cdef int events

    cdef void _schedule(self, int action, int64_t at)
    cdef int64_t _backoff(self, int64_t now)
    cdef void _follow(self, int64_t now)
    cdef void _become_leader(self, int64_t now, str etag)
    cdef void _step_down(self, int64_t now)
    cdef void _clear_pending(self)
    cdef void _publish_observation(self)
