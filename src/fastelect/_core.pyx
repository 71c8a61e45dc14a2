# cython: language_level=3
"""fastelect's compiled core: lease arithmetic, the election state machine and
the leadership table.

Nothing here does I/O beyond mapping memory.  The driver (``elector.py``)
reads and writes storage and feeds every outcome in; the :class:`Campaign`
answers what to do next and when.  Every timing decision is made here, in
nanoseconds of the lease clock passed in by the caller (:func:`monotonic_ns`:
CLOCK_BOOTTIME on Linux, which keeps counting through suspend), so the state
machine can be tested table-driven and simulated on virtual time.

One idea per source file, all compiled into this one extension:

* ``_shm.pxd``   -- the C layer: table layout, lease clock, seqlock, fork guard;
* ``_table.pyx`` -- the leadership table in shared memory (``docs/table-layout.md``);
* ``_record.pyx`` -- the lock record's JSON body, encoded in C;
* ``_rules.pyx`` -- the election rules, :class:`Campaign` (``docs/safety.md``);
* ``_driver.pyx`` -- the election step around a Campaign, sans I/O, :class:`Driver`
  (public as :mod:`fastelect.driver`).
"""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint64_t, uint32_t
from libc.string cimport memcpy, memset
from posix.fcntl cimport O_CREAT, O_EXCL, O_RDONLY, O_RDWR
from posix.mman cimport (
    MAP_ANONYMOUS, MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap,
    shm_open, shm_unlink,
)
from posix.stat cimport fchmod, fstat, struct_stat
from posix.unistd cimport close, ftruncate

import os
import re
import secrets
import time

from .errors import FastelectError, LifecycleError, UntrustedTableError

cdef extern from "errno.h":
    int errno

__all__ = [
    "ACTION_NAMES", "Campaign", "Driver", "Hook", "HOLD", "HOOK_ACQUIRE", "HOOK_LOSE",
    "HOOK_NEW_LEADER", "READ_GARBAGE", "READ_LONG_LEASE", "READ_OK", "LeaseHolder", "LeadershipTable", "Slot", "TableReader", "attach",
    "YieldNow", "monotonic_ns", "LAYOUT_VERSION", "SLOT_SIZE", "HEADER_SIZE", "LEASE_CLOCK",
    "LEASE_CLOCK_NAME",
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
    EV_ACQUIRED = 1      # we became leader (a CAS of ours succeeded)
    EV_LOST = 2          # our leadership ended (lost CAS, expiry, release)
    EV_NEW_LEADER = 4    # the leader we know of changed (id, incarnation or term)
    EV_CYCLE = 8         # an election cycle completed (leader or follower known)
    EV_DUPLICATE_ID = 16 # another live process writes records under our server id

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
    C_DUPLICATE_IDS = 12
    C_SHED_STEPS = 13
    C_OVERLOAD_STEPDOWNS = 14

cpdef enum SlotState:
    SLOT_FREE = 0
    SLOT_STARTED = 1
    SLOT_STOPPED = 2

COUNTER_NAMES = (
    "renewals", "failed_writes", "transitions", "peer_checks", "peer_failures",
    "reads", "record_errors", "acquisitions", "losses", "writes", "storage_errors",
    "conflicts", "duplicate_ids", "shed_steps", "overload_stepdowns",
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
#: The clock id of every lease, deadline and first-seen instant (time.CLOCK_*).
LEASE_CLOCK = FE_LEASE_CLOCK
#: Its name, for logs and docs.
LEASE_CLOCK_NAME = FE_LEASE_CLOCK_NAME.decode()

if fe_install_fork_guard() != 0:
    raise OSError("fastelect: pthread_atfork failed; cannot guard tables across fork()")


def monotonic_ns():
    """The lease clock in nanoseconds (CLOCK_BOOTTIME on Linux: it counts suspend).

    Every lease, deadline and first-seen instant is measured on it, in every
    process, so instants from one process compare with another's.
    """
    return fe_clock_ns()


@cython.final
cdef class YieldNow:
    """``await YieldNow()``: give the event loop one turn, like ``asyncio.sleep(0)``.

    It yields a bare ``None`` once, as ``asyncio.sleep(0)`` does, so a Task
    reschedules itself at once.  It is one small object the garbage collector
    does not track, where ``asyncio.sleep(0)`` makes a coroutine and a
    generator: a store stepping many elections yields twice per request.
    """

    cdef bint _yielded

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        if self._yielded:
            raise StopIteration
        self._yielded = True
        return None


include "_table.pyx"
include "_record.pyx"
include "_rules.pyx"
include "_driver.pyx"
