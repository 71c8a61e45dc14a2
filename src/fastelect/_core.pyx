# cython: language_level=3
"""fastelect's compiled core: lease arithmetic, the election state machine and
the leadership table.

Nothing here does I/O beyond mapping memory.  The driver (``elector.py``)
reads and writes storage and feeds every outcome in; the :class:`Campaign`
answers what to do next and when.  Every timing decision is made here, in
CLOCK_MONOTONIC nanoseconds passed in by the caller, so the state machine can
be tested table-driven with a fake clock.

The leadership table is a fixed-layout block of 1024-byte slots (layout
version 1, documented in ``docs/table-layout.md``).  One process writes it;
any process may map it read-only by name.  Each slot is guarded by a seqlock,
and the one word ``is_leader`` needs -- the lease deadline, 0 unless leader --
is read with a single atomic load, so the hot path takes no lock and
allocates nothing.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint64_t, uint32_t
from libc.string cimport memcpy, memset
from posix.fcntl cimport O_CREAT, O_EXCL, O_RDONLY, O_RDWR
from posix.mman cimport (
    MAP_ANONYMOUS, MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap,
    shm_open, shm_unlink,
)
from posix.stat cimport fstat, struct_stat
from posix.unistd cimport close, ftruncate

import os
import re
import time

from .errors import FastelectError, LifecycleError

cdef extern from "errno.h":
    int errno

__all__ = [
    "ACTION_NAMES", "Campaign", "LeadershipTable", "Slot", "TableReader", "attach",
    "monotonic_ns", "LAYOUT_VERSION", "SLOT_SIZE", "HEADER_SIZE",
]

# ---------------------------------------------------------------------------
# Tunables and codes, in one place.

cpdef enum Role:
    FOLLOWER = 0
    LEADER = 1
    STOPPED = 2

cpdef enum Action:
    WAIT = 0        # nothing is due before next_at_ns
    READ = 1        # GET the lock record
    CREATE = 2      # write our record if none exists (If-None-Match: *)
    TAKEOVER = 3    # replace the observed record (If-Match: observed etag), term + 1
    RENEW = 4       # replace our own record (If-Match: our etag), same term
    PEER_CHECK = 5  # ask the leader's health endpoint instead of storage
    RELEASE = 6     # hand the record back (If-Match: our etag), lastUpdated zero

cpdef enum Event:
    EV_ACQUIRED = 1    # we became leader (a CAS of ours succeeded)
    EV_LOST = 2        # our leadership ended (lost CAS, expiry, release)
    EV_NEW_LEADER = 4  # the leader we know of changed (id or term)
    EV_CYCLE = 8       # an election cycle completed (leader or follower known)

cpdef enum Counter:
    C_RENEWALS = 0
    C_FAILED_WRITES = 1
    C_TRANSITIONS = 2
    C_PEER_CHECKS = 3
    C_PEER_FAILURES = 4
    C_READS = 5
    C_RECORD_ERRORS = 6
    C_ACQUISITIONS = 7
    C_LOSSES = 8
    C_WRITES = 9
    C_STORAGE_ERRORS = 10
    C_CONFLICTS = 11

cpdef enum SlotState:
    SLOT_FREE = 0
    SLOT_STARTED = 1
    SLOT_STOPPED = 2

COUNTER_NAMES = (
    "renewals", "failed_writes", "transitions", "peer_checks", "peer_failures",
    "reads", "record_errors", "acquisitions", "losses", "writes", "storage_errors",
    "conflicts",
)
ACTION_NAMES = ("wait", "read", "create", "takeover", "renew", "peer_check", "release")
ROLE_NAMES = ("follower", "leader", "stopped")

# s3lect's transient-error retry policy: immediately, after 100 ms, after 1 s.
cdef int64_t[3] RETRY_DELAYS_NS = [0, 100_000_000, 1_000_000_000]

LAYOUT_VERSION = FE_LAYOUT_VERSION
HEADER_SIZE = sizeof(fe_header)
SLOT_SIZE = sizeof(fe_slot)
MAX_ID_BYTES = FE_STR_LONG - 2
MAX_ELECTION_NAME_BYTES = FE_STR_SHORT - 2

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,24}$")
_SHM_PREFIX = "/fastelect."


def monotonic_ns():
    """CLOCK_MONOTONIC in nanoseconds: the clock every deadline is measured on."""
    return fe_monotonic_ns()


cdef inline void _put_str(char *dst, uint16_t *len_out, Py_ssize_t cap, str value):
    cdef bytes raw = value.encode("utf-8")
    cdef Py_ssize_t n = len(raw)
    if n > cap:
        n = cap
    memcpy(dst, <const char *>raw, n)
    len_out[0] = <uint16_t>n


cdef inline str _get_str(const char *src, uint16_t n, Py_ssize_t cap):
    if n > cap:
        n = <uint16_t>cap
    return src[:n].decode("utf-8", "replace")


# ---------------------------------------------------------------------------
# Shared memory.

cdef class _Mapping:
    """A mapped table segment: anonymous (private to this process and its
    forks) or named POSIX shared memory."""

    def __cinit__(self):
        self.base = NULL
        self.size = 0

    def __dealloc__(self):
        if self.base != NULL:
            munmap(self.base, self.size)
            self.base = NULL

    cdef fe_header *header(self):
        return <fe_header *>self.base

    cdef fe_slot *slot_at(self, Py_ssize_t index):
        return <fe_slot *>(self.base + sizeof(fe_header) + index * sizeof(fe_slot))

    def unmap(self):
        if self.base != NULL:
            munmap(self.base, self.size)
            self.base = NULL


def _shm_name(str name):
    if not _NAME_RE.match(name):
        raise ValueError(
            f"table name {name!r} must be 1-24 characters of letters, digits, '_', '.', '-'"
        )
    return _SHM_PREFIX + name


def shm_path(str name):
    """Where a named table lives on Linux (for tests and operators)."""
    return "/dev/shm/" + _shm_name(name)[1:]


cdef _Mapping _map_fd(int fd, size_t size, bint writable):
    cdef int prot = PROT_READ | (PROT_WRITE if writable else 0)
    cdef void *p = mmap(NULL, size, prot, MAP_SHARED, fd, 0)
    if p == MAP_FAILED:
        raise OSError(errno, os.strerror(errno))
    cdef _Mapping m = _Mapping.__new__(_Mapping)
    m.base = <unsigned char *>p
    m.size = size
    m.writable = writable
    return m


def _pid_alive(int64_t pid):
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


cdef _Mapping _open_existing(str shm, bint writable):
    """Map an existing named segment; None if it vanished meanwhile."""
    cdef bytes path = shm.encode()
    cdef int fd = shm_open(path, O_RDWR if writable else O_RDONLY, 0)
    if fd < 0:
        if errno == 2:  # ENOENT
            return None
        raise OSError(errno, f"cannot open shared memory {shm}: {os.strerror(errno)}")
    cdef struct_stat st
    try:
        if fstat(fd, &st) != 0:
            raise OSError(errno, os.strerror(errno))
        if <size_t>st.st_size < sizeof(fe_header):
            return _Mapping.__new__(_Mapping)  # empty: not (yet) a table
        return _map_fd(fd, <size_t>st.st_size, writable)
    finally:
        close(fd)


cdef int _validate_header(_Mapping m) except -1:
    cdef fe_header *h
    if m.base == NULL:
        raise FastelectError("not a fastelect leadership table (segment is empty)")
    h = m.header()
    if h.magic != FE_MAGIC:
        raise FastelectError("not a fastelect leadership table (bad magic)")
    if h.version != FE_LAYOUT_VERSION:
        raise FastelectError(
            f"leadership table layout {h.version} is not supported (this build reads "
            f"{FE_LAYOUT_VERSION})"
        )
    if (h.header_size != sizeof(fe_header) or h.slot_size != sizeof(fe_slot)
            or m.size < sizeof(fe_header) + <size_t>h.slot_count * sizeof(fe_slot)):
        raise FastelectError("leadership table is truncated or has a foreign layout")
    return 0


cdef class LeadershipTable:
    """The leadership table this process writes: one slot per election.

    ``LeadershipTable()`` is private to the process (and children it forks);
    ``LeadershipTable("name")`` publishes it as POSIX shared memory (mode
    0600) so other processes of the same user can :func:`attach` it.  A
    segment of that name left behind by a dead process is replaced; one held
    by a live process raises :class:`FastelectError`.
    """

    def __init__(self, name=None, int slots=8):
        if slots < 1 or slots > 256:
            raise ValueError("slots must be between 1 and 256")
        cdef size_t size = sizeof(fe_header) + <size_t>slots * sizeof(fe_slot)
        cdef void *p
        cdef int fd
        cdef bytes path
        self.name = name
        self._slots = {}
        if name is None:
            p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
            if p == MAP_FAILED:
                raise OSError(errno, os.strerror(errno))
            self._map = _Mapping.__new__(_Mapping)
            self._map.base = <unsigned char *>p
            self._map.size = size
        else:
            shm = _shm_name(name)
            path = shm.encode()
            for _ in range(3):
                fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL, 0o600)
                if fd >= 0:
                    break
                if errno != 17:  # EEXIST
                    raise OSError(errno, f"cannot create shared memory {shm}: {os.strerror(errno)}")
                self._replace_stale(shm)
            else:
                raise FastelectError(f"could not create shared memory {shm}: it keeps reappearing")
            try:
                if ftruncate(fd, size) != 0:
                    raise OSError(errno, os.strerror(errno))
                self._map = _map_fd(fd, size, True)
            except BaseException:
                shm_unlink(path)
                raise
            finally:
                close(fd)
            self._map.name = shm
            self._map.owner = True
        self._map.writable = True
        memset(self._map.base, 0, size)
        cdef fe_header *h = self._map.header()
        h.version = FE_LAYOUT_VERSION
        h.header_size = sizeof(fe_header)
        h.slot_count = slots
        h.slot_size = sizeof(fe_slot)
        h.owner_pid = os.getpid()
        h.created_wall_ns = time.time_ns()
        h.created_mono_ns = fe_monotonic_ns()
        # magic last: a reader that sees it sees a complete header.
        fe_publish_magic(h)

    def _replace_stale(self, str shm):
        cdef _Mapping old = _open_existing(shm, False)
        if old is None:
            return
        cdef fe_header *h
        if old.base != NULL and old.size >= sizeof(fe_header):
            h = old.header()
            if h.magic == FE_MAGIC and not h.closed and _pid_alive(h.owner_pid):
                raise FastelectError(
                    f"leadership table {shm!r} is in use by live process {h.owner_pid}"
                )
        # Dead owner, closed, or not a table of ours: never trust it.
        shm_unlink(shm.encode())

    @property
    def slot_count(self):
        """How many elections this table can hold."""
        self._check_open()
        return self._map.header().slot_count

    @property
    def path(self):
        """The segment's filesystem path on Linux, or None when anonymous."""
        return None if self.name is None else shm_path(self.name)

    def _check_open(self):
        if self._map is None or self._map.base == NULL:
            raise LifecycleError("leadership table is closed")

    def slot(self, str election, str server_id=""):
        """Claim (or return the already claimed) slot for ``election``."""
        self._check_open()
        if election in self._slots:
            return self._slots[election]
        if not election or len(election.encode()) > FE_STR_SHORT - 2:
            raise ValueError(f"election name must be 1-{FE_STR_SHORT - 2} bytes")
        cdef int index = len(self._slots)
        if <uint32_t>index >= self._map.header().slot_count:
            raise FastelectError(f"leadership table is full ({index} elections)")
        cdef Slot s = Slot.__new__(Slot)
        s._map = self._map
        s._s = self._map.slot_at(index)
        s.election = election
        s.index = index
        s._begin()
        _put_str(s._s.name.data, &s._s.name.len, FE_STR_SHORT - 2, election)
        _put_str(s._s.server_id.data, &s._s.server_id.len, FE_STR_LONG - 2, server_id)
        s._s.state = SLOT_STARTED
        s._s.role = FOLLOWER
        s._s.last_cycle_mono_ns = fe_monotonic_ns()
        s._end()
        self._slots[election] = s
        return s

    def reader(self):
        """A :class:`TableReader` over this table, as another process would see it."""
        self._check_open()
        cdef TableReader r = TableReader.__new__(TableReader)
        r._map = self._map
        r._index = {}
        r.name = self.name
        return r

    def close(self):
        """Zero every lease, mark the table closed and remove the named segment."""
        if self._map is None or self._map.base == NULL:
            return
        cdef fe_header *h = self._map.header()
        cdef uint32_t i
        cdef fe_slot *s
        for i in range(h.slot_count):
            s = self._map.slot_at(i)
            fe_write_begin(s)
            fe_store_i64(&s.lease_until_ns, 0)
            if s.state == SLOT_STARTED:
                s.state = SLOT_STOPPED
            fe_write_end(s)
        h.closed = 1
        if self._map.owner and self._map.name is not None:
            shm_unlink((<str>self._map.name).encode())
            self._map.owner = False
        # Slots keep a reference to the mapping; unmap only when the last goes.
        self._map = None
        self._slots = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


cdef dict _slot_dict(fe_slot *c):
    cdef int i
    return {
        "election": _get_str(c.name.data, c.name.len, FE_STR_SHORT - 2),
        "state": ("free", "started", "stopped")[c.state] if c.state <= 2 else "unknown",
        "role": ROLE_NAMES[c.role] if c.role <= 2 else "unknown",
        "lease_until_ns": c.lease_until_ns,
        "deadline_ns": c.deadline_ns,
        "term": c.term,
        "lease_ns": c.lease_ns,
        "last_update_wall_ns": c.last_update_wall_ns,
        "last_cycle_mono_ns": c.last_cycle_mono_ns,
        "watchdog_ns": c.watchdog_ns,
        "leader_since_mono_ns": c.leader_since_mono_ns,
        "server_id": _get_str(c.server_id.data, c.server_id.len, FE_STR_LONG - 2),
        "leader_id": _get_str(c.leader_id.data, c.leader_id.len, FE_STR_LONG - 2),
        "leader_addr": _get_str(c.leader_addr.data, c.leader_addr.len, FE_STR_LONG - 2),
        "etag": _get_str(c.etag.data, c.etag.len, FE_STR_LONG - 2),
        "counters": {COUNTER_NAMES[i]: c.counters[i] for i in range(len(COUNTER_NAMES))},
    }


cdef class Slot:
    """This process's slot for one election; written only by its Campaign."""

    def is_leader(self):
        """True while this slot holds a lease that has not run out, read now."""
        return fe_monotonic_ns() < fe_load_i64(&self._s.lease_until_ns)

    def lease_remaining_ns(self):
        """Nanoseconds of lease left (0 when not leader)."""
        cdef int64_t left = fe_load_i64(&self._s.lease_until_ns) - fe_monotonic_ns()
        return left if left > 0 else 0

    def status(self):
        """A consistent snapshot of the slot as a dict."""
        cdef fe_slot copy
        if fe_read_slot(self._s, &copy) != 0:
            raise FastelectError("leadership slot stayed busy")
        return _slot_dict(&copy)

    def heartbeat(self, int64_t now_ns, int64_t watchdog_ns):
        """Record that the elector loop completed a cycle at ``now_ns``."""
        self._begin()
        self._s.last_cycle_mono_ns = now_ns
        self._s.watchdog_ns = watchdog_ns
        self._end()

    def count(self, int counter):
        """Add one to a counter (a :class:`Counter` value)."""
        self._bump(counter)

    def release_slot(self):
        """Mark the election stopped: no lease, state stopped."""
        self._begin()
        fe_store_i64(&self._s.lease_until_ns, 0)
        self._s.role = STOPPED
        self._s.state = SLOT_STOPPED
        self._end()

    def restart_slot(self):
        """Mark a stopped slot started again (a restarted elector)."""
        self._begin()
        self._s.state = SLOT_STARTED
        self._s.role = FOLLOWER
        self._s.last_cycle_mono_ns = fe_monotonic_ns()
        self._end()

    cdef void _begin(self):
        fe_write_begin(self._s)

    cdef void _end(self):
        fe_write_end(self._s)

    cdef void _set_leader(self, int64_t lease_until, int64_t deadline):
        self._s.role = LEADER
        self._s.deadline_ns = deadline
        fe_store_i64(&self._s.lease_until_ns, lease_until)

    cdef void _set_follower(self):
        fe_store_i64(&self._s.lease_until_ns, 0)
        self._s.role = FOLLOWER

    cdef void _bump(self, int counter):
        self._begin()
        self._s.counters[counter] += 1
        self._end()


cdef class TableReader:
    """Read-only view of a leadership table, in this or another process."""

    cdef fe_slot *_find(self, str election) except? NULL:
        cdef object idx = self._index.get(election)
        cdef fe_header *h
        cdef uint32_t i
        cdef fe_slot copy
        if idx is not None:
            return self._map.slot_at(<Py_ssize_t>idx)
        if self._map is None or self._map.base == NULL:
            raise LifecycleError("table reader is closed")
        h = self._map.header()
        # Slots are claimed in order and never move, so a found index stays valid.
        for i in range(h.slot_count):
            if fe_read_slot(self._map.slot_at(i), &copy) != 0:
                continue
            if copy.state == SLOT_FREE:
                break
            if _get_str(copy.name.data, copy.name.len, FE_STR_SHORT - 2) == election:
                self._index[election] = i
                return self._map.slot_at(i)
        return NULL

    def is_leader(self, str election="default"):
        """True while the table's owner holds a live lease for ``election``."""
        cdef fe_slot *s = self._find(election)
        if s == NULL:
            return False
        return fe_monotonic_ns() < fe_load_i64(&s.lease_until_ns)

    def status(self, str election="default"):
        """A consistent snapshot of ``election``'s slot, or None if not started."""
        cdef fe_slot *s = self._find(election)
        cdef fe_slot copy
        if s == NULL:
            return None
        if fe_read_slot(s, &copy) != 0:
            raise FastelectError("leadership slot stayed busy")
        return _slot_dict(&copy)

    def elections(self):
        """Names of the elections started in this table, in slot order."""
        cdef fe_header *h = self._map.header()
        cdef uint32_t i
        cdef fe_slot copy
        names = []
        for i in range(h.slot_count):
            if fe_read_slot(self._map.slot_at(i), &copy) != 0 or copy.state == SLOT_FREE:
                break
            names.append(_get_str(copy.name.data, copy.name.len, FE_STR_SHORT - 2))
        return names

    @property
    def owner_pid(self):
        """The pid of the process that writes this table."""
        return self._map.header().owner_pid

    @property
    def closed(self):
        """True once the owner closed (or replaced) the table."""
        if self._map is None or self._map.base == NULL:
            return True
        return bool(self._map.header().closed)

    @property
    def stale(self):
        """True when the table is closed or its owner process is gone."""
        return self.closed or not _pid_alive(self._map.header().owner_pid)

    def close(self):
        """Unmap the table (if this reader is the last user of the mapping)."""
        self._map = None
        self._index = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def attach(str name):
    """Map the named leadership table read-only; raises if it does not exist."""
    shm = _shm_name(name)
    cdef _Mapping m = _open_existing(shm, False)
    if m is None:
        raise FastelectError(f"no leadership table named {name!r} (is the elector running?)")
    _validate_header(m)
    cdef TableReader r = TableReader.__new__(TableReader)
    r._map = m
    r._index = {}
    r.name = name
    return r


# ---------------------------------------------------------------------------
# The election state machine.

cdef inline int64_t _max(int64_t a, int64_t b):
    return a if a > b else b


cdef inline int64_t _min(int64_t a, int64_t b):
    return a if a < b else b


cdef class Campaign:
    """One elector's state machine.

    The driver loop is::

        action = campaign.poll(now)            # WAIT until campaign.next_at_ns, or:
        READ       -> observe_record / observe_missing / observe_garbage / read_failed
        CREATE, TAKEOVER, RENEW, RELEASE
                   -> begin_write(now) gives (if_match, term, renewal, released);
                      then write_succeeded / write_conflicted / write_failed
        PEER_CHECK -> observe_peer

    and after every call ``take_events()`` says what happened (EV_* bits).
    """

    def __init__(self, Slot slot, str server_id, str server_addr, int64_t lease_ns, int64_t frequent_ns,
                 int64_t infrequent_ns, int64_t margin_ns, int64_t max_skew_ns=-1,
                 bint peer_mode=False, int64_t now_ns=0):
        self.slot = slot
        self.server_id = server_id
        self.server_addr = server_addr
        self.configure(lease_ns, frequent_ns, infrequent_ns, margin_ns, max_skew_ns, peer_mode)
        self.role = FOLLOWER
        self.etag = ""
        self.obs_etag = ""
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

        A leader's current deadline is not recomputed: it was earned under the
        old lease and stays as it was.
        """
        if not (0 < frequent_ns and 0 <= margin_ns and frequent_ns + margin_ns < lease_ns):
            raise ValueError("need 0 < frequent, 0 <= margin and frequent + margin < lease")
        if infrequent_ns < frequent_ns:
            raise ValueError("need infrequent >= frequent")
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
        """Monotonic time at which rule 1(a) lets us replace the observed record."""
        if not self.obs_known or self.obs_missing:
            return 0
        return self.obs_first_seen_ns + _max(self.lease_ns, self.obs_lease_ns)

    @property
    def observed_term(self):
        return self.obs_term

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
        means create-if-absent.  A retry of a write whose outcome is unknown
        reuses its term and renewal so a later read can recognise it (rule 4).
        """
        cdef int kind = self.next_action
        if kind not in (CREATE, TAKEOVER, RENEW, RELEASE):
            raise LifecycleError(f"no write is due (next action: {ACTION_NAMES[kind]})")
        if not (self.pending_kind == kind and self.pending_unknown):
            self.renewal += 1
            self.pending_kind = kind
            self.pending_renewal = self.renewal
            self.pending_first_send_ns = now_ns
            if kind == CREATE or kind == TAKEOVER:
                self.pending_term = self.max_term_seen + 1      # rule 5
                self.pending_match = "" if kind == CREATE else self.obs_etag
            else:
                self.pending_term = self.term
                self.pending_match = self.etag
        self.pending_unknown = True
        self.slot._bump(C_WRITES)
        return (self.pending_match, self.pending_term, self.pending_renewal, kind == RELEASE)

    def write_succeeded(self, int64_t now_ns, str new_etag, int64_t wall_ns=0):
        """The write from begin_write landed and returned ``new_etag``.

        ``wall_ns`` is the record's lastUpdated, for the table's status.
        """
        cdef int kind = self.pending_kind
        self.consecutive_fails = 0
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
        if self.pending_kind == RELEASE:
            # Someone already replaced our record; nothing left to hand back.
            self._clear_pending()
            self._schedule(READ, now_ns)
            return
        self.verifying = True      # rule 4: a read decides
        self._schedule(READ, now_ns)

    def write_failed(self, int64_t now_ns):
        """The write's outcome is unknown (timeout, transport error, 5xx)."""
        self.consecutive_fails += 1
        self.slot._bump(C_FAILED_WRITES)
        cdef int64_t at = self._backoff(now_ns)
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

    def read_failed(self, int64_t now_ns):
        """A read failed (transport error, timeout, auth)."""
        self.consecutive_fails += 1
        self.slot._bump(C_STORAGE_ERRORS)
        self._schedule(READ, self._backoff(now_ns))

    def observe_missing(self, int64_t now_ns):
        """The read found no record."""
        self.slot._bump(C_READS)
        self.consecutive_fails = 0
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
        self.leader_id = ""
        self.leader_addr = ""
        self.obs_renewals_seen = 0
        self.leader_since_ns = now_ns
        self._publish_observation()
        # Not a completed cycle yet: the create that follows decides who leads.
        self._schedule(CREATE, now_ns)

    def observe_garbage(self, int64_t now_ns, str etag):
        """The read found a record we cannot parse; replaceable only once provably stale."""
        self.slot._bump(C_READS)
        self.slot._bump(C_RECORD_ERRORS)
        self.consecutive_fails = 0
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
        self.leader_id = ""
        self.leader_addr = ""
        self._publish_observation()
        self.events |= EV_CYCLE
        self._follow(now_ns)

    def observe_record(self, int64_t now_ns, int64_t wall_now_ns, str etag, str leader_id,
                       str leader_addr, int64_t term, int64_t lease_ms, int64_t renewal,
                       bint released, int64_t updated_wall_ns):
        """The read found a valid record (stamp ``now_ns`` when the response arrived)."""
        self.slot._bump(C_READS)
        self.consecutive_fails = 0
        if term > self.max_term_seen:
            self.max_term_seen = term
        if self.verifying or self.pending_unknown:
            if (leader_id == self.server_id and term == self.pending_term
                    and renewal == self.pending_renewal and not released
                    and self.pending_kind != RELEASE):
                # Rule 4: our write landed though we never saw its answer.
                self._become_leader(now_ns, etag)
                if self.role == LEADER:
                    return
        if self.role == LEADER:
            if etag == self.etag:
                # Our own current record: nothing changed.
                self.verifying = False
                self._schedule(RENEW, self.pending_first_send_ns + self.frequent_ns)
                return
            self._step_down(now_ns)
        self._clear_pending()
        cdef bint changed_leader = (
            not self.obs_known or self.obs_missing or self.obs_garbage
            or leader_id != self.leader_id or term != self.obs_term
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
            self._schedule(PEER_CHECK, now_ns + self.frequent_ns)
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

    def restart(self, int64_t now_ns):
        """Campaign again after stop()."""
        self.role = FOLLOWER
        self.obs_known = False
        self.obs_etag = ""
        self._clear_pending()
        self.slot.restart_slot()
        self._schedule(READ, now_ns)

    # -- internals -------------------------------------------------------------

    cdef void _schedule(self, int action, int64_t at):
        self.next_action = action
        self.next_at_ns = at

    cdef int64_t _backoff(self, int64_t now):
        cdef int n = self.consecutive_fails
        if n <= 0:
            return now
        if n <= 3:
            return now + RETRY_DELAYS_NS[n - 1]
        return now + self.frequent_ns

    cdef void _clear_pending(self):
        self.pending_kind = WAIT
        self.pending_unknown = False
        self.verifying = False

    cdef void _follow(self, int64_t now):
        """Decide a follower's next step from the current observation (rule 1)."""
        cdef int64_t lease = _max(self.lease_ns, self.obs_lease_ns)
        cdef int64_t legal_at
        cdef int64_t wall_now
        cdef int64_t next_at
        if self.role == STOPPED:
            return
        self.cycles += 1
        if self.obs_missing:
            self._schedule(CREATE, now)
            return
        if self.obs_released:
            self._schedule(TAKEOVER, now)                          # rule 1(b)
            return
        if self.obs_garbage:
            lease = self.lease_ns
        legal_at = self.obs_first_seen_ns + lease                 # rule 1(a)
        if self.max_skew_ns >= 0 and not self.obs_garbage and self.obs_updated_wall_ns > 0:
            # rule 1(c): wall-clock staleness, only when the operator bounds skew.
            legal_at = _min(legal_at, self.obs_updated_wall_ns + lease + self.max_skew_ns
                            - self.obs_wall_at_mono_ns)
        if now >= legal_at:
            self._schedule(TAKEOVER, now)
            return
        if self.stable and self.peer_mode and self.leader_addr and not self.peer_suspect:
            self._schedule(PEER_CHECK, now + self.frequent_ns)
            return
        if self.stable:
            self.peer_suspect = False
            next_at = now + self.infrequent_ns
        else:
            next_at = now + self.frequent_ns
        self._schedule(READ, _min(next_at, legal_at))

    cdef void _become_leader(self, int64_t now, str etag):
        # Rule 2: the lease counts from before the first send of this write.
        cdef int64_t deadline = self.pending_first_send_ns + self.lease_ns - self.margin_ns
        cdef bint was_leader = self.role == LEADER
        cdef int kind = self.pending_kind
        cdef int64_t term = self.pending_term
        cdef int64_t sent = self.pending_first_send_ns
        self._clear_pending()
        if deadline <= now:
            # The write took longer than the lease: we hold the record but no lease.
            if was_leader:
                self._step_down(now)
            self.obs_known = True
            self.obs_missing = False
            self.obs_garbage = False
            self.obs_released = False
            self.obs_etag = etag
            self.obs_first_seen_ns = now
            self.obs_term = term
            self.leader_id = self.server_id
            self._schedule(READ, now + self.frequent_ns)
            return
        self.etag = etag
        self.term = term
        self.leader_addr = self.server_addr
        if term > self.max_term_seen:
            self.max_term_seen = term
        self.deadline_ns = deadline
        self.role = LEADER
        self.obs_known = True
        self.obs_missing = False
        self.obs_garbage = False
        self.obs_released = False
        self.obs_etag = etag
        self.obs_term = term
        self.leader_id = self.server_id
        self.consecutive_fails = 0
        self.slot._begin()
        self.slot._set_leader(deadline, deadline)
        self.slot._s.term = term
        _put_str(self.slot._s.etag.data, &self.slot._s.etag.len, FE_STR_LONG - 2, etag)
        _put_str(self.slot._s.leader_id.data, &self.slot._s.leader_id.len, FE_STR_LONG - 2,
                 self.server_id)
        _put_str(self.slot._s.leader_addr.data, &self.slot._s.leader_addr.len, FE_STR_LONG - 2,
                 self.server_addr)
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
        self.obs_first_seen_ns = now
        # Give the others a lease to take what we handed back before we try again.
        self._schedule(READ, now + self.lease_ns)

    cdef void _publish_observation(self):
        self.slot._begin()
        self.slot._s.term = self.obs_term
        self.slot._s.last_update_wall_ns = self.obs_updated_wall_ns
        self.slot._s.leader_since_mono_ns = self.leader_since_ns
        _put_str(self.slot._s.leader_id.data, &self.slot._s.leader_id.len, FE_STR_LONG - 2,
                 self.leader_id)
        _put_str(self.slot._s.leader_addr.data, &self.slot._s.leader_addr.len,
                 FE_STR_LONG - 2, self.leader_addr)
        _put_str(self.slot._s.etag.data, &self.slot._s.etag.len, FE_STR_LONG - 2,
                 self.obs_etag)
        self.slot._end()
