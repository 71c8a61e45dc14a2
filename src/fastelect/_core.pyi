# Hand-written type stub for the compiled core (src/fastelect/_core.pyx).
#
# Keep it in step with the .pyx: every public name, with the argument names
# and defaults Cython exposes.  Integers the core returns through ``readonly``
# attributes or ``def`` methods are plain ints (compare them with the enums,
# which are IntEnums); durations and instants are nanoseconds of the lease
# clock (LEASE_CLOCK: CLOCK_BOOTTIME on Linux) unless a name says ``wall``.

from collections.abc import Generator
from enum import IntEnum
from types import TracebackType
from typing import Any, Final, NamedTuple, Self, final

from typing_extensions import disjoint_base

__all__ = [
    "ACTION_NAMES",
    "HEADER_SIZE",
    "HOLD",
    "HOOK_ACQUIRE",
    "HOOK_LOSE",
    "HOOK_NEW_LEADER",
    "LAYOUT_VERSION",
    "LEASE_CLOCK",
    "LEASE_CLOCK_NAME",
    "READ_GARBAGE",
    "READ_LONG_LEASE",
    "READ_OK",
    "SLOT_SIZE",
    "Campaign",
    "Driver",
    "Hook",
    "LeadershipTable",
    "LeaseHolder",
    "Slot",
    "TableReader",
    "YieldNow",
    "attach",
    "monotonic_ns",
]

class Role(IntEnum):
    FOLLOWER = 0
    LEADER = 1
    STOPPED = 2

class Action(IntEnum):
    WAIT = 0
    READ = 1
    CREATE = 2
    TAKEOVER = 3
    RENEW = 4
    PEER_CHECK = 5
    RELEASE = 6

class Event(IntEnum):
    EV_ACQUIRED = 1
    EV_LOST = 2
    EV_NEW_LEADER = 4
    EV_CYCLE = 8
    EV_DUPLICATE_ID = 16

class Counter(IntEnum):
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

class SlotState(IntEnum):
    SLOT_FREE = 0
    SLOT_STARTED = 1
    SLOT_STOPPED = 2

#: Counter names in Counter order (the keys of a status dict's "counters").
COUNTER_NAMES: Final[tuple[str, ...]]
#: Action names in Action order, for logs.
ACTION_NAMES: Final[tuple[str, ...]]
#: Role names in Role order ("follower", "leader", "stopped").
ROLE_NAMES: Final[tuple[str, ...]]

#: The table layout this build reads and writes.
LAYOUT_VERSION: Final[int]
#: Size of the table header in bytes (128).
HEADER_SIZE: Final[int]
#: Size of one slot in bytes (1024).
SLOT_SIZE: Final[int]
#: Longest server id / leader id / address / etag a slot stores, in UTF-8 bytes.
MAX_ID_BYTES: Final[int]
#: Longest election name, in UTF-8 bytes.
MAX_ELECTION_NAME_BYTES: Final[int]
#: The lock record's format version (its "v").
RECORD_VERSION: Final[int]
#: The longest lease a record may advertise, in ms (24 h).
RECORD_LEASE_MS_MAX: Final[int]
#: The highest term a record may carry (2**53 - 1).
RECORD_TERM_MAX: Final[int]
#: The longest duration the rules accept, in ns (24 h).
MAX_DURATION_NS: Final[int]
#: The clock id (a time.CLOCK_* value) every lease and deadline is measured on.
LEASE_CLOCK: Final[int]
#: Its name: "CLOCK_BOOTTIME" on Linux, "CLOCK_MONOTONIC" where that counts sleep.
LEASE_CLOCK_NAME: Final[str]

def _pid_alive(pid: int) -> bool:
    """True unless ``pid`` surely runs no more (absent, or a zombie)."""

def monotonic_ns() -> int:
    """The lease clock in nanoseconds (CLOCK_BOOTTIME on Linux: it counts suspend)."""

def encode_record_body(
    leader_id: str,
    leader_addr: str,
    last_updated_ns: int | None,
    term: int,
    lease_ms: int,
    renewal: int,
    nonce: str,
    version: int,
) -> bytes:
    """The lock record's JSON bytes (see fastelect.record.encode_record)."""

def new_nonce() -> str:
    """A fresh incarnation nonce: 64 random bits as 16 hex digits (rule 0)."""

def shm_path(name: str) -> str:
    """Where a named table lives on Linux (for tests and operators)."""

def attach(
    name: str,
    owner: int | str | None = None,
    *,
    group: int | str | None = None,
    allow_writable: bool = False,
) -> TableReader:
    """Map the named leadership table read-only; raises if it does not exist.

    Trusted only if owned by this user or ``owner`` (or its group is
    ``group``) and not writable by group or others (unless
    ``allow_writable``); else :class:`UntrustedTableError`.
    """

# cdef classes have a C layout of their own: nothing can inherit from two of them.
@disjoint_base
class LeadershipTable:
    """The leadership table this process writes: one slot per election."""

    @property
    def name(self) -> str | None: ...
    def __init__(self, name: str | None = None, slots: int = 8, *, mode: int = 0o600) -> None: ...
    @property
    def slot_count(self) -> int: ...
    @property
    def token(self) -> int: ...
    @property
    def path(self) -> str | None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def inherited(self) -> bool: ...
    def slot(self, election: str, server_id: str = "") -> Slot: ...
    def reader(self) -> TableReader: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

@disjoint_base
class Slot:
    """This process's slot for one election; written only by its Campaign."""

    @property
    def election(self) -> str: ...
    @property
    def index(self) -> int: ...
    def is_leader(self) -> bool: ...
    def lease_remaining_ns(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def status(self) -> dict[str, Any]:
        """Keys: election, state, role, lease_until_ns, deadline_ns, term, lease_ns,
        last_update_wall_ns, last_cycle_mono_ns, watchdog_ns, leader_since_mono_ns,
        server_id, leader_id, leader_addr, leader_id_truncated, leader_addr_truncated,
        etag, counters (a dict by COUNTER_NAMES)."""
    def heartbeat(self, now_ns: int, watchdog_ns: int) -> None: ...
    def count(self, counter: int) -> None: ...
    def release_slot(self) -> None: ...
    def restart_slot(self) -> None: ...

@final
class YieldNow:
    """``await YieldNow()``: give the event loop one turn, like ``asyncio.sleep(0)``."""

    def __await__(self) -> Generator[None]: ...
    def __iter__(self) -> YieldNow: ...
    def __next__(self) -> None: ...

@disjoint_base
class LeaseHolder:
    """The compiled base of :class:`~fastelect.Elector`: ``is_leader()`` in C."""

    def _hold_slot(self, slot: Slot) -> None:
        """Answer ``is_leader()`` from ``slot`` from now on (once, at construction)."""
    def is_leader(self) -> bool:
        """True only while this node holds an unexpired lease, evaluated now."""

@disjoint_base
class TableReader:
    """Read-only view of a leadership table, in this or another process."""

    @property
    def name(self) -> str | None: ...
    def is_leader(self, election: str = "default") -> bool: ...
    def seq(self, election: str = "default") -> int: ...
    def status(self, election: str = "default") -> dict[str, Any] | None: ...
    def elections(self) -> list[str]: ...
    @property
    def owner_pid(self) -> int: ...
    @property
    def owner_uid(self) -> int: ...
    @property
    def mode(self) -> int: ...
    @property
    def token(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def owner_alive(self) -> bool: ...
    @property
    def stale(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

@disjoint_base
class Campaign:
    """One elector's state machine (see the .pyx for the driver loop)."""

    # Read-only state.  ``role``, ``next_action`` and ``pending_kind`` are
    # plain ints holding Role / Action values.
    @property
    def server_id(self) -> str: ...
    @property
    def server_addr(self) -> str: ...
    @property
    def nonce(self) -> str: ...
    @property
    def role(self) -> int: ...
    @property
    def deadline_ns(self) -> int: ...
    @property
    def term(self) -> int: ...
    @property
    def etag(self) -> str: ...
    @property
    def pending_kind(self) -> int: ...
    @property
    def obs_etag(self) -> str: ...
    @property
    def obs_nonce(self) -> str: ...
    @property
    def obs_released(self) -> bool:
        """The last record read was released (its leaderID is the leader that left)."""
    @property
    def duplicate_nonce(self) -> str: ...
    @property
    def pending_lease_ms(self) -> int: ...
    @property
    def leader_id(self) -> str: ...
    @property
    def leader_addr(self) -> str: ...
    @property
    def leader_since_ns(self) -> int: ...
    @property
    def max_term_seen(self) -> int: ...
    @property
    def last_seen_alive_ns(self) -> int: ...
    @property
    def next_action(self) -> int: ...
    @property
    def next_at_ns(self) -> int: ...
    @property
    def consecutive_fails(self) -> int:
        """The longer of the read and the write failure streaks."""
    @property
    def read_fails(self) -> int: ...
    @property
    def write_fails(self) -> int:
        """Writes failed in a row; successful reads do not end this streak."""
    @property
    def write_not_before_ns(self) -> int:
        """No write goes out before this instant (the write streak's backoff; 0: none)."""
    @property
    def last_election_ns(self) -> int: ...
    @property
    def cycles(self) -> int: ...
    @property
    def observed_term(self) -> int: ...
    @property
    def stable(self) -> bool: ...
    def __init__(
        self,
        slot: Slot,
        server_id: str,
        server_addr: str,
        lease_ns: int,
        frequent_ns: int,
        infrequent_ns: int,
        margin_ns: int,
        max_skew_ns: int = -1,
        peer_mode: bool = False,
        now_ns: int = 0,
        nonce: str = "",
    ) -> None: ...
    def configure(
        self,
        lease_ns: int,
        frequent_ns: int,
        infrequent_ns: int,
        margin_ns: int,
        max_skew_ns: int = -1,
        peer_mode: bool = False,
    ) -> None: ...
    def set_peer_mode(self, enabled: bool) -> None: ...
    def is_leader(self, now_ns: int) -> bool: ...
    def take_events(self) -> int: ...
    def takeover_legal_at(self) -> int: ...
    def poll(self, now_ns: int) -> int: ...
    def begin_write(self, now_ns: int) -> tuple[str, int, int, bool]:
        """``(if_match, term, renewal, released)``; ``if_match == ""`` creates."""
    def record_body(self, wall_ns: int) -> bytes:
        """The JSON body of the pending write: our id, its term, renewal and lease."""
    def write_succeeded(self, now_ns: int, new_etag: str, wall_ns: int = 0) -> None: ...
    def write_conflicted(self, now_ns: int) -> None: ...
    def write_failed(self, now_ns: int, auth: bool = False) -> None: ...
    def read_failed(self, now_ns: int, auth: bool = False) -> None: ...
    def observe_missing(self, now_ns: int) -> None: ...
    def observe_garbage(self, now_ns: int, etag: str, term: int | None = None) -> None:
        """An invalid record; ``term`` is its own term when that field alone is valid (rule 5)."""
    def observe_record(
        self,
        now_ns: int,
        wall_now_ns: int,
        etag: str,
        leader_id: str,
        leader_addr: str,
        term: int,
        lease_ms: int,
        renewal: int,
        released: bool,
        updated_wall_ns: int,
        nonce: str = "",
    ) -> None: ...
    def observe_peer(self, now_ns: int, ok: bool, leader_id: str = "", etag: str = "") -> None: ...
    def begin_release(self, now_ns: int) -> bool: ...
    def step_down(self, now_ns: int) -> None: ...
    def stop(self, now_ns: int) -> None: ...
    def restart(self, now_ns: int, nonce: str = "") -> None: ...

# -- the driver (_driver.pyx; public as fastelect.driver) ------------------------

HOLD: Final[int]
HOOK_ACQUIRE: Final[int]
HOOK_LOSE: Final[int]
HOOK_NEW_LEADER: Final[int]
READ_OK: Final[int]
READ_GARBAGE: Final[int]
READ_LONG_LEASE: Final[int]

class Hook(NamedTuple):
    """A hook to run: name, the leadership it belongs to, the generation then, arguments."""

    name: str
    leadership: int
    generation: int
    args: tuple[object, ...]

@final
class Driver:
    """One election's step around a Campaign: outcomes in with their instants, actions out."""

    frequent_ns: int
    lease_ns: int
    storage_timeout_ns: int
    peer_timeout_ns: int
    hooks: int
    generation: int
    leaderships: int
    lease_hooks: int
    hooks_skipped: int
    hold_back: bool
    @property
    def campaign(self) -> Campaign: ...
    @property
    def record(self) -> Any: ...
    @property
    def record_error(self) -> str: ...
    @property
    def hooks_pending(self) -> int: ...
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
        hold_back: bool = True,
    ) -> None: ...
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
    ) -> None: ...
    def request_release(self) -> None: ...
    def restart(self, now: int, nonce: str = "") -> None: ...
    def poll(self, now: int) -> int: ...
    def hold_until(self, now: int) -> int: ...
    def op_timeout_ns(self, now: int) -> int: ...
    def step_bound_ns(self, action: int, now: int) -> int: ...
    def read_record(self, now: int, wall_now: int, body: bytes, etag: str) -> int: ...
    def read_missing(self, now: int) -> None: ...
    def read_failed(self, now: int, refused: bool = False) -> None: ...
    def begin_write(self, now: int, wall_ns: int) -> tuple[int, bytes, str, int, int, bool]: ...
    def write_succeeded(self, now: int, etag: str, wall_ns: int) -> None: ...
    def write_conflicted(self, now: int) -> None: ...
    def write_failed(self, now: int, refused: bool = False) -> None: ...
    def peer_answered(self, now: int, ok: bool, leader_id: str = "", etag: str = "") -> None: ...
    def begin_stop(self, now: int) -> bool: ...
    def stopped(self, now: int) -> None: ...
    def step_down(self, now: int) -> None: ...
    def take_events(self) -> int: ...
    def next_hook(self) -> Hook | None: ...
    def hook_finished(self, failed: bool) -> bool: ...
    def drop_hooks(self) -> None: ...
