# The C layer of the compiled core: the shared-memory layout (version 2,
# docs/table-layout.md), the lease clock, the seqlock and the fork guard.
# Included by _core.pxd; everything here is plain C with no Python objects.

from libc.stdint cimport int64_t, uint64_t, uint32_t, uint16_t, uint8_t


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <time.h>
    #include <sched.h>
    #include <pthread.h>
    #include <unistd.h>
    #include <sys/mman.h>
    #include <fcntl.h>
    #include <errno.h>

    #define FE_MAGIC 0x31305443454c4546ULL  /* "FELECT01" little-endian */
    /* 2: every instant is on the lease clock (CLOCK_BOOTTIME on Linux), and
       slots carry a flags word.  Version 1 used CLOCK_MONOTONIC. */
    #define FE_LAYOUT_VERSION 2
    #define FE_STR_SHORT 32
    #define FE_STR_LONG 128

    #define FE_FLAG_LEADER_ID_TRUNCATED 1u
    #define FE_FLAG_LEADER_ADDR_TRUNCATED 2u

    /* The lease clock: it must keep counting while the host is suspended, or a
       leader resumed from suspend would trust a lease others already took
       (docs/safety.md, "The lease clock").  Linux has CLOCK_BOOTTIME; on macOS
       CLOCK_MONOTONIC already counts sleep (clock_gettime(3)). */
    #if defined(CLOCK_BOOTTIME)
    #define FE_LEASE_CLOCK CLOCK_BOOTTIME
    #define FE_LEASE_CLOCK_NAME "CLOCK_BOOTTIME"
    #else
    #define FE_LEASE_CLOCK CLOCK_MONOTONIC
    #define FE_LEASE_CLOCK_NAME "CLOCK_MONOTONIC"
    #endif

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
        int64_t created_mono_ns;      /* lease clock */
        uint32_t closed;
        uint32_t flags;               /* FE_HDR_* */
        uint64_t token;               /* random, names this table's incarnation */
        uint8_t reserved[64];
    } fe_header;

    /* The owner holds an OFD write lock on the whole segment for as long as
       it lives: liveness is "the lock is held", which every process sharing
       /dev/shm sees, in any PID namespace.  Without the flag (a writer of
       0.1) only owner_pid is known. */
    #define FE_HDR_LOCK_LIVENESS 1u

    /* Take the liveness lock on ``fd`` (open for writing): 0, or -1 with errno
       (ENOTSUP where the platform has no OFD locks). */
    static int fe_lock_take(int fd) {
    #ifdef F_OFD_SETLK
        struct flock fl;
        memset(&fl, 0, sizeof fl);
        fl.l_type = F_WRLCK;
        fl.l_whence = SEEK_SET;
        return fcntl(fd, F_OFD_SETLK, &fl);
    #else
        (void)fd;
        errno = ENOTSUP;
        return -1;
    #endif
    }
    /* Is the liveness lock held through another open file description?
       1 held, 0 free, -1 unknown (errno).  Takes nothing: any descriptor,
       read-only too, may ask. */
    static int fe_lock_held(int fd) {
    #ifdef F_OFD_GETLK
        struct flock fl;
        memset(&fl, 0, sizeof fl);
        fl.l_type = F_WRLCK;
        fl.l_whence = SEEK_SET;
        if (fcntl(fd, F_OFD_GETLK, &fl) != 0) return -1;
        return fl.l_type != F_UNLCK;
    #else
        (void)fd;
        errno = ENOTSUP;
        return -1;
    #endif
    }

    /* One election: 1024 bytes, slot i at header_size + i * slot_size.
       Every *_mono_ns / *_ns instant is on the lease clock. */
    typedef struct {
        uint64_t seq;                 /* seqlock: odd while a write is in progress */
        int64_t lease_until_ns;       /* lease deadline while leader, else 0 */
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
        uint32_t flags;               /* FE_FLAG_* */
        uint8_t reserved[268];
    } fe_slot;

    _Static_assert(sizeof(fe_header) == 128, "fe_header must be 128 bytes");
    _Static_assert(sizeof(fe_slot) == 1024, "fe_slot must be 1024 bytes");

    static inline int64_t fe_clock_ns(void) {
        struct timespec ts;
        clock_gettime(FE_LEASE_CLOCK, &ts);
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

    /* The fork guard (docs/safety.md#rule-7-nothing-inherited-through-fork-leads).
       Every mapped table is registered here.
       In a forked child, each table this process wrote -- or that it mapped
       while it was the table's owner -- is replaced in place by a private
       zero-filled page range at the same address: every object that points
       into it stays valid, and every lease in it reads 0, so nothing inherited
       answers "leader".  Tables of *other* processes (attach()) stay shared:
       they answer for their owner, which the fork did not change.  The
       is_leader() hot path pays nothing for this. */
    typedef struct fe_region {
        unsigned char *base;
        size_t size;
        int owned;            /* this process created and writes it */
        int unlink_on_close;  /* this process may remove the named segment */
        int inherited;        /* set in a forked child: now a private zero copy */
        int mine;             /* attached by name, but a table this process writes */
        int fd;               /* the segment's descriptor (the owner's holds the
                                 liveness lock), or -1 */
        struct fe_region *prev;
        struct fe_region *next;
    } fe_region;

    static fe_region *fe_regions = NULL;
    static pthread_mutex_t fe_regions_lock = PTHREAD_MUTEX_INITIALIZER;

    static void fe_region_add(fe_region *r) {
        pthread_mutex_lock(&fe_regions_lock);
        r->prev = NULL;
        r->next = fe_regions;
        if (fe_regions) fe_regions->prev = r;
        fe_regions = r;
        pthread_mutex_unlock(&fe_regions_lock);
    }
    static void fe_region_remove(fe_region *r) {
        pthread_mutex_lock(&fe_regions_lock);
        if (r->prev) r->prev->next = r->next;
        else if (fe_regions == r) fe_regions = r->next;
        if (r->next) r->next->prev = r->prev;
        r->prev = r->next = NULL;
        pthread_mutex_unlock(&fe_regions_lock);
    }
    static void fe_atfork_prepare(void) { pthread_mutex_lock(&fe_regions_lock); }
    static void fe_atfork_parent(void) { pthread_mutex_unlock(&fe_regions_lock); }
    /* Does this process write a table whose token is ``token``? */
    static int fe_region_writes_token(uint64_t token) {
        int found = 0;
        if (token == 0) return 0;
        pthread_mutex_lock(&fe_regions_lock);
        for (fe_region *r = fe_regions; r != NULL; r = r->next) {
            if (r->owned && !r->inherited && r->base != NULL && r->size >= sizeof(fe_header)
                    && ((const fe_header *)r->base)->token == token) {
                found = 1;
                break;
            }
        }
        pthread_mutex_unlock(&fe_regions_lock);
        return found;
    }
    static void fe_atfork_child(void) {
        for (fe_region *r = fe_regions; r != NULL; r = r->next) {
            /* Which tables are ours is known by identity (marked when they were
               created or attached), never by comparing pids: a pid names
               another process in another PID namespace. */
            int ours = r->owned || r->mine;
            if (r->base == NULL || !ours) continue;
            /* The child must not keep the owner's liveness lock alive: the
               lock lives while any descriptor of its open file does. */
            if (r->owned && r->fd >= 0) {
                close(r->fd);
                r->fd = -1;
            }
            /* If this fails (ENOMEM), take the pages away rather than share them. */
            if (mmap(r->base, r->size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED) {
                mprotect(r->base, r->size, PROT_NONE);
            }
            r->owned = 0;
            r->unlink_on_close = 0;
            r->inherited = 1;
        }
        pthread_mutex_init(&fe_regions_lock, NULL);
    }
    static int fe_fork_guard_installed = 0;
    static int fe_install_fork_guard(void) {
        if (fe_fork_guard_installed) return 0;
        fe_fork_guard_installed = 1;
        return pthread_atfork(fe_atfork_prepare, fe_atfork_parent, fe_atfork_child);
    }
    """
    int FE_MAGIC
    int FE_LAYOUT_VERSION
    int FE_STR_SHORT
    int FE_STR_LONG
    unsigned int FE_FLAG_LEADER_ID_TRUNCATED
    unsigned int FE_FLAG_LEADER_ADDR_TRUNCATED
    int FE_LEASE_CLOCK
    const char *FE_LEASE_CLOCK_NAME

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
        uint32_t flags
        uint64_t token

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
        uint32_t flags

    ctypedef struct fe_region:
        unsigned char *base
        size_t size
        int owned
        int unlink_on_close
        int inherited
        int mine
        int fd

    int64_t fe_clock_ns() nogil
    int64_t fe_load_i64(const int64_t *p) nogil
    void fe_store_i64(int64_t *p, int64_t v) nogil
    uint64_t fe_load_seq(const uint64_t *p) nogil
    void fe_write_begin(fe_slot *s) nogil
    void fe_write_end(fe_slot *s) nogil
    int fe_read_slot(const fe_slot *s, fe_slot *out) nogil
    void fe_publish_magic(fe_header *h) nogil
    void fe_region_add(fe_region *r) nogil
    void fe_region_remove(fe_region *r) nogil
    int fe_install_fork_guard() nogil
    unsigned int FE_HDR_LOCK_LIVENESS
    int fe_lock_take(int fd) nogil
    int fe_lock_held(int fd) nogil
    int fe_region_writes_token(uint64_t token) nogil
