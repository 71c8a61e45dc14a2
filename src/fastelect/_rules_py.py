"""A pure-Python twin of the compiled election rules (``_rules.pyx``).

As aiohttp keeps ``_http_parser.pyx`` and ``http_parser.py`` side by side,
this module restates :class:`fastelect._core.Campaign` line for line in
Python: the same constructor, methods, return values and read-only
attributes, the same jitter generator (so retry timings agree to the
nanosecond), the same event bits and the same counters bumped on the slot.
It exists for the simulator, not for production electors:

* the lockstep check (:mod:`fastelect.sim.lockstep`) runs it beside the
  compiled Campaign on every call and fails on the first disagreement, so
  neither can drift from the other unnoticed;
* each safety fix can be reverted in it by name, without a rebuild
  (:mod:`fastelect.sim.mutants`), to show the simulator catches the revert.

The slot.  The compiled Campaign publishes leadership into its table slot
through ``cdef`` writers a Python object cannot call, and the table's
``is_leader()`` must stay a single atomic load.  So the twin writes into a
:class:`SlotImage`, a Python copy of the fields a slot holds (``status()``
shape).  Built from a compiled :class:`~fastelect._core.Slot`, the image
forwards what the slot's own Python API can do (counters, ``release_slot``,
``restart_slot``); the lease, term and leader fields live in the image only.
A table read by another process therefore does not show a twin's leadership:
only the Campaign-level answers (``role``, ``is_leader(now)``,
``deadline_ns``, ``term``) do, which is what the simulator checks.

Arithmetic.  The core computes in int64; the few sums it does not saturate
(``_add``) are wrapped here as C would wrap them (:func:`_i64`).  Argument
types are not checked as Cython checks them: the twin trusts its caller.

The record body is encoded by the compiled codec (``encode_record_body``):
the codec is not an election rule, and ``tests/test_record.py`` holds it to
orjson on its own.
"""

from __future__ import annotations

import secrets
from typing import Any, ClassVar

from . import _core
from .errors import LifecycleError

__all__ = ["Campaign", "SlotImage", "new_nonce"]

# Codes, as the compiled core numbers them (plain ints: cheaper to compare).
FOLLOWER = int(_core.Role.FOLLOWER)
LEADER = int(_core.Role.LEADER)
STOPPED = int(_core.Role.STOPPED)
WAIT = int(_core.Action.WAIT)
READ = int(_core.Action.READ)
CREATE = int(_core.Action.CREATE)
TAKEOVER = int(_core.Action.TAKEOVER)
RENEW = int(_core.Action.RENEW)
PEER_CHECK = int(_core.Action.PEER_CHECK)
RELEASE = int(_core.Action.RELEASE)
EV_ACQUIRED = int(_core.Event.EV_ACQUIRED)
EV_LOST = int(_core.Event.EV_LOST)
EV_NEW_LEADER = int(_core.Event.EV_NEW_LEADER)
EV_CYCLE = int(_core.Event.EV_CYCLE)
EV_DUPLICATE_ID = int(_core.Event.EV_DUPLICATE_ID)
C_RENEWALS = int(_core.Counter.C_RENEWALS)
C_FAILED_WRITES = int(_core.Counter.C_FAILED_WRITES)
C_TRANSITIONS = int(_core.Counter.C_TRANSITIONS)
C_PEER_CHECKS = int(_core.Counter.C_PEER_CHECKS)
C_PEER_FAILURES = int(_core.Counter.C_PEER_FAILURES)
C_READS = int(_core.Counter.C_READS)
C_RECORD_ERRORS = int(_core.Counter.C_RECORD_ERRORS)
C_ACQUISITIONS = int(_core.Counter.C_ACQUISITIONS)
C_LOSSES = int(_core.Counter.C_LOSSES)
C_WRITES = int(_core.Counter.C_WRITES)
C_STORAGE_ERRORS = int(_core.Counter.C_STORAGE_ERRORS)
C_CONFLICTS = int(_core.Counter.C_CONFLICTS)
C_DUPLICATE_IDS = int(_core.Counter.C_DUPLICATE_IDS)
ACTION_NAMES = _core.ACTION_NAMES
COUNTER_NAMES: tuple[str, ...] = _core.COUNTER_NAMES

#: s3lect's transient-error retry policy (RETRY_DELAYS_NS in _core.pyx).
RETRY_DELAYS_NS = (0, 100_000_000, 1_000_000_000)
#: Past those, a retry waits F plus up to F / RETRY_JITTER_DIV (_rules.pyx).
RETRY_JITTER_DIV = 4
_I64_MAX = 9_223_372_036_854_775_807
_I64_MIN = -_I64_MAX - 1
_U64 = (1 << 64) - 1
_MAX_DURATION_NS = _core.MAX_DURATION_NS
_TERM_MAX: int = _core.RECORD_TERM_MAX
_LEASE_MS_MAX: int = _core.RECORD_LEASE_MS_MAX
_RECORD_VERSION: int = _core.RECORD_VERSION
#: Bytes of a slot's id, address and etag fields (FE_STR_LONG - 2).
_STR_CAP = _core.MAX_ID_BYTES
_encode_record = _core.encode_record_body


def _add(a: int, b: int) -> int:
    """a + b, saturated to int64 (as ``_add`` in _rules.pyx)."""
    if b > 0 and a > _I64_MAX - b:
        return _I64_MAX
    if b < 0 and a < _I64_MIN - b:
        return _I64_MIN
    return a + b


def _i64(x: int) -> int:
    """``x`` wrapped to int64, as an unsaturated C sum would wrap."""
    if _I64_MIN <= x <= _I64_MAX:
        return x
    return ((x - _I64_MIN) & _U64) + _I64_MIN


def new_nonce() -> str:
    """A fresh incarnation nonce: 64 random bits as 16 hex digits (rule 0)."""
    return secrets.token_hex(8)


def _cut(value: str) -> tuple[str, bool]:
    """``value`` as the slot stores it: UTF-8 cut at a character boundary; True if cut."""
    raw = value.encode("utf-8")
    if len(raw) <= _STR_CAP:
        return value, False
    n = _STR_CAP
    while n > 0 and (raw[n] & 0xC0) == 0x80:
        n -= 1
    return raw[:n].decode("utf-8", "replace"), True


class SlotImage:
    """The fields of one table slot, written by a twin Campaign.

    ``d`` holds them in the shape of :meth:`fastelect._core.Slot.status`
    (``load()`` takes such a dict as it is).  ``real``: a compiled slot that
    also receives what its Python API allows (counters, release and
    restart), or None for an image on its own.  ``writes`` counts the writes,
    as a slot's seqlock word does.
    """

    __slots__ = ("d", "real", "writes")

    def __init__(self, real: Any = None, status: dict[str, Any] | None = None) -> None:
        self.real = real
        self.writes = 0
        if status is None:
            status = real.status() if real is not None else _empty_status()
        self.d = status

    def load(self, status: dict[str, Any]) -> None:
        """Take every field from a ``status()`` dict (the dict itself: it is not copied)."""
        self.d = status

    def status(self) -> dict[str, Any]:
        d = self.d
        return {**d, "counters": dict(d["counters"])}

    # What the Campaign writes (Slot._set_leader / _set_follower / _bump /
    # _put_leader and the fields it sets directly).

    def set(self, key: str, value: int) -> None:
        self.writes += 1
        self.d[key] = value

    def set_leader(self, lease_until: int, deadline: int) -> None:
        self.writes += 1
        d = self.d
        d["role"] = "leader"
        d["deadline_ns"] = deadline
        d["lease_until_ns"] = lease_until

    def set_follower(self) -> None:
        self.writes += 1
        d = self.d
        d["lease_until_ns"] = 0
        d["role"] = "follower"

    def bump(self, counter: int) -> None:
        self.writes += 1
        self.d["counters"][COUNTER_NAMES[counter]] += 1
        if self.real is not None:
            self.real.count(counter)

    def put_leader(self, leader_id: str, leader_addr: str) -> None:
        self.writes += 1
        d = self.d
        d["leader_id"], d["leader_id_truncated"] = _cut(leader_id)
        d["leader_addr"], d["leader_addr_truncated"] = _cut(leader_addr)

    def put_etag(self, etag: str) -> None:
        self.writes += 1
        self.d["etag"] = _cut(etag)[0]

    def release_slot(self) -> None:
        self.writes += 1
        d = self.d
        d["lease_until_ns"] = 0
        d["role"] = "stopped"
        d["state"] = "stopped"
        if self.real is not None:
            self.real.release_slot()

    def restart_slot(self) -> None:
        self.writes += 1
        d = self.d
        d["state"] = "started"
        d["role"] = "follower"
        d["last_cycle_mono_ns"] = _core.monotonic_ns()
        if self.real is not None:
            self.real.restart_slot()


def _empty_status() -> dict[str, Any]:
    return {
        "election": "",
        "state": "started",
        "role": "follower",
        "lease_until_ns": 0,
        "deadline_ns": 0,
        "term": 0,
        "lease_ns": 0,
        "last_update_wall_ns": 0,
        "last_cycle_mono_ns": 0,
        "watchdog_ns": 0,
        "leader_since_mono_ns": 0,
        "server_id": "",
        "leader_id": "",
        "leader_addr": "",
        "leader_id_truncated": False,
        "leader_addr_truncated": False,
        "etag": "",
        "counters": dict.fromkeys(COUNTER_NAMES, 0),
    }


class Campaign:
    """One elector's state machine: ``fastelect._core.Campaign`` in Python.

    See the compiled class for the driver loop.  ``slot`` is a compiled
    :class:`~fastelect._core.Slot` (wrapped in a :class:`SlotImage` that
    forwards counters) or a :class:`SlotImage`.

    Class attributes named ``_revert_*`` undo one safety fix each when True;
    :mod:`fastelect.sim.mutants` makes subclasses that set them.  This class
    sets none: it is the faithful twin.
    """

    #: Mutants (see fastelect.sim.mutants): each undoes the fix it names.
    _revert_rule0: ClassVar[bool] = False  # "ours" by server id alone, nonce ignored
    _revert_rule1: ClassVar[bool] = False  # first observed = the record's lastUpdated
    _revert_rule1c: ClassVar[bool] = False  # wall-clock staleness without the skew bound
    _revert_rule2: ClassVar[bool] = False  # deadline from the current lease, not the snapshot
    _revert_rule2_cap: ClassVar[bool] = False  # a shorter renewal does not cap the lease held
    _revert_rule3: ClassVar[bool] = False  # poll() does not end a lease that ran out
    _revert_rule4: ClassVar[bool] = False  # a failed renewal counts as landed
    _revert_rule5: ClassVar[bool] = False  # term = observed term + 1; invalid terms ignored
    _revert_rule6: ClassVar[bool] = False  # the leader keeps the margin (deadline = send + T)

    __slots__ = (
        "cycles",
        "deadline_ns",
        "duplicate_nonce",
        "etag",
        "events",
        "foreign_writes_seen",
        "frequent_ns",
        "infrequent_ns",
        "jitter_state",
        "last_election_ns",
        "last_seen_alive_ns",
        "leader_addr",
        "leader_id",
        "leader_since_ns",
        "lease_ns",
        "margin_ns",
        "max_skew_ns",
        "max_term_seen",
        "next_action",
        "next_at_ns",
        "nonce",
        "obs_etag",
        "obs_first_seen_ns",
        "obs_garbage",
        "obs_known",
        "obs_lease_ns",
        "obs_missing",
        "obs_nonce",
        "obs_released",
        "obs_renewals_seen",
        "obs_term",
        "obs_updated_wall_ns",
        "obs_wall_at_mono_ns",
        "peer_mode",
        "peer_suspect",
        "pending_first_send_ns",
        "pending_kind",
        "pending_lease_ns",
        "pending_margin_ns",
        "pending_match",
        "pending_renewal",
        "pending_term",
        "pending_unknown",
        "read_fails",
        "renewal",
        "role",
        "server_addr",
        "server_id",
        "slot",
        "term",
        "verifying",
        "write_fails",
        "write_not_before_ns",
    )

    def __init__(
        self,
        slot: Any,
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
    ) -> None:
        # cdef fields start at zero, as the compiled class's do.
        self.deadline_ns = self.term = self.renewal = 0
        self.pending_term = self.pending_renewal = self.pending_first_send_ns = 0
        self.pending_lease_ns = self.pending_margin_ns = 0
        self.pending_unknown = self.verifying = False
        self.obs_known = self.obs_missing = self.obs_garbage = self.obs_released = False
        self.obs_first_seen_ns = self.obs_term = self.obs_lease_ns = 0
        self.obs_updated_wall_ns = self.obs_wall_at_mono_ns = self.leader_since_ns = 0
        self.obs_renewals_seen = self.foreign_writes_seen = 0
        self.max_term_seen = self.last_seen_alive_ns = 0
        self.read_fails = self.write_fails = self.write_not_before_ns = 0
        self.peer_suspect = False
        self.last_election_ns = self.cycles = self.events = 0
        self.jitter_state: int = 1
        self.slot = slot if isinstance(slot, SlotImage) else SlotImage(slot)
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
        self.slot.set("lease_ns", lease_ns)

    def configure(
        self,
        lease_ns: int,
        frequent_ns: int,
        infrequent_ns: int,
        margin_ns: int,
        max_skew_ns: int = -1,
        peer_mode: bool = False,
    ) -> None:
        """Apply new timings (rule 2: a write already begun keeps its snapshot)."""
        if not (frequent_ns > 0 and margin_ns >= 0 and frequent_ns + margin_ns < lease_ns):
            raise ValueError("need 0 < frequent, 0 <= margin and frequent + margin < lease")
        if infrequent_ns < frequent_ns:
            raise ValueError("need infrequent >= frequent")
        if (
            lease_ns > _MAX_DURATION_NS
            or infrequent_ns > _MAX_DURATION_NS
            or max_skew_ns > _MAX_DURATION_NS
        ):
            raise ValueError("every duration must be at most 24 h")
        self.lease_ns = lease_ns
        self.frequent_ns = frequent_ns
        self.infrequent_ns = infrequent_ns
        self.margin_ns = margin_ns
        self.max_skew_ns = max_skew_ns
        self.peer_mode = bool(peer_mode)

    def set_peer_mode(self, enabled: bool) -> None:
        self.peer_mode = bool(enabled)
        self.peer_suspect = False

    # -- queries -----------------------------------------------------------

    def is_leader(self, now_ns: int) -> bool:
        return self.role == LEADER and now_ns < self.deadline_ns

    def take_events(self) -> int:
        ev = self.events
        self.events = 0
        return ev

    def takeover_legal_at(self) -> int:
        if not self.obs_known or self.obs_missing:
            return 0
        return _add(self.obs_first_seen_ns, max(self.lease_ns, self.obs_lease_ns))

    @property
    def observed_term(self) -> int:
        return self.obs_term

    @property
    def pending_lease_ms(self) -> int:
        return self.pending_lease_ns // 1_000_000

    @property
    def consecutive_fails(self) -> int:
        return max(self.read_fails, self.write_fails)

    @property
    def stable(self) -> bool:
        return (
            self.obs_known
            and not self.obs_missing
            and not self.obs_garbage
            and not self.obs_released
            and self.obs_renewals_seen >= 1
            and self.role != LEADER
        )

    # -- the step ----------------------------------------------------------

    def poll(self, now_ns: int) -> int:
        if self.role == LEADER and now_ns >= self.deadline_ns and not self._revert_rule3:
            # Rule 3: the lease ran out before a renewal landed.
            self._step_down(now_ns)
            self._clear_pending()
            self._schedule(READ, now_ns)
        if self.role == STOPPED:
            return WAIT
        if now_ns >= self.next_at_ns:
            return self.next_action
        return WAIT

    def begin_write(self, now_ns: int) -> tuple[str, int, int, bool]:
        kind = self.next_action
        if kind not in (CREATE, TAKEOVER, RENEW, RELEASE):
            raise LifecycleError(f"no write is due (next action: {ACTION_NAMES[kind]})")
        if not (self.pending_kind == kind and self.pending_unknown):
            self.renewal += 1
            self.pending_kind = kind
            self.pending_renewal = self.renewal
            self.pending_first_send_ns = now_ns
            # Rule 2: one snapshot of the lease for this write.
            self.pending_lease_ns = self.lease_ns
            self.pending_margin_ns = self.margin_ns
            if kind in (CREATE, TAKEOVER):
                if self._revert_rule5:
                    self.pending_term = self.obs_term + 1
                else:
                    self.pending_term = self.max_term_seen + 1  # rule 5
                self.pending_match = "" if kind == CREATE else self.obs_etag
            else:
                self.pending_term = self.term
                self.pending_match = self.etag
                if self.role == LEADER and not self._revert_rule2_cap:
                    self._cap_lease(_add(now_ns, self.pending_lease_ns - self.pending_margin_ns))
        self.pending_unknown = True
        self.slot.bump(C_WRITES)
        return (self.pending_match, self.pending_term, self.pending_renewal, kind == RELEASE)

    def record_body(self, wall_ns: int) -> bytes:
        if self.pending_kind == WAIT:
            raise LifecycleError("no write is pending (call begin_write first)")
        return _encode_record(
            self.server_id,
            self.server_addr,
            None if self.pending_kind == RELEASE else wall_ns,
            self.pending_term,
            self.pending_lease_ns // 1_000_000,
            self.pending_renewal,
            self.nonce,
            _RECORD_VERSION,
        )

    def write_succeeded(self, now_ns: int, new_etag: str, wall_ns: int = 0) -> None:
        kind = self.pending_kind
        self._writes_answered()
        if wall_ns:
            self.slot.set("last_update_wall_ns", wall_ns)
        if kind == RELEASE:
            self._clear_pending()
            self.etag = ""
            self._observe_own_release(now_ns, new_etag)
            return
        if kind in (CREATE, TAKEOVER, RENEW):
            self._become_leader(now_ns, new_etag)

    def write_conflicted(self, now_ns: int) -> None:
        self.slot.bump(C_CONFLICTS)
        self._writes_answered()
        if self.pending_kind == RELEASE:
            self._clear_pending()
            self._schedule(READ, now_ns)
            return
        self.verifying = True  # rule 4: a read decides
        self._schedule(READ, now_ns)

    def write_failed(self, now_ns: int, auth: bool = False) -> None:
        self.write_fails += 1
        self.slot.bump(C_FAILED_WRITES)
        at = _add(now_ns, self._retry_delay(self.write_fails, auth))
        self.write_not_before_ns = at
        if self.pending_kind == RENEW:
            if self._revert_rule4 and self.role == LEADER:
                # Mutant: the unknown outcome taken for a success -- the lease
                # grows from this write's send, and the retry is a new write.
                cap = _add(
                    self.pending_first_send_ns, self.pending_lease_ns - self.pending_margin_ns
                )
                if cap > self.deadline_ns:
                    self.deadline_ns = cap
                    self.slot.set_leader(cap, cap)
                self.pending_unknown = False
            self._schedule(RENEW, at)
        elif self.pending_kind == RELEASE:
            self._clear_pending()
            self._schedule(READ, at)
        else:
            self.verifying = True
            self._schedule(READ, at)

    def read_failed(self, now_ns: int, auth: bool = False) -> None:
        self.read_fails += 1
        self.slot.bump(C_STORAGE_ERRORS)
        self._schedule(READ, _add(now_ns, self._retry_delay(self.read_fails, auth)))

    def observe_missing(self, now_ns: int) -> None:
        self.slot.bump(C_READS)
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
        self._schedule(CREATE, max(now_ns, self.write_not_before_ns))

    def observe_garbage(self, now_ns: int, etag: str, term: object = None) -> None:
        self.slot.bump(C_READS)
        self.slot.bump(C_RECORD_ERRORS)
        self.read_fails = 0
        if (
            not self._revert_rule5
            and term is not None
            and not isinstance(term, bool)
            and isinstance(term, int)
            and 0 <= term <= _TERM_MAX
            and term > self.max_term_seen
        ):
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
    ) -> None:
        term_ok = 0 <= term <= _TERM_MAX
        if not (term_ok and 0 <= lease_ms <= _LEASE_MS_MAX):
            self.observe_garbage(now_ns, etag, term if term_ok else None)
            return
        released = bool(released)
        if self._revert_rule0:
            ours = leader_id == self.server_id
        else:
            ours = leader_id == self.server_id and nonce == self.nonce
        self.slot.bump(C_READS)
        self.read_fails = 0
        if term > self.max_term_seen:
            self.max_term_seen = term
        if (
            (self.verifying or self.pending_unknown)
            and ours
            and term == self.pending_term
            and renewal == self.pending_renewal
            and not released
            and self.pending_kind != RELEASE
        ):
            # Rule 4: this incarnation's write landed though we never saw its answer.
            self._become_leader(now_ns, etag)
            if self.role == LEADER:
                return
        if self.role == LEADER:
            if etag == self.etag:
                self.verifying = False
                self._schedule(RENEW, _add(self.pending_first_send_ns, self.frequent_ns))
                return
            self._step_down(now_ns)
        self._clear_pending()
        self._check_duplicate(etag, leader_id, nonce, released)
        changed_leader = (
            not self.obs_known
            or self.obs_missing
            or self.obs_garbage
            or leader_id != self.leader_id
            or term != self.obs_term
            or nonce != self.obs_nonce
        )
        if etag != self.obs_etag or not self.obs_known:
            # Rule 1: "first observed" is when this response arrived.
            if self._revert_rule1 and updated_wall_ns > 0:
                # Mutant: counted from the writer's wall clock, as if clocks agreed.
                self.obs_first_seen_ns = _i64(updated_wall_ns - _i64(wall_now_ns - now_ns))
            else:
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
        self.obs_wall_at_mono_ns = _i64(wall_now_ns - now_ns)
        if not released:
            self.last_seen_alive_ns = now_ns
        self._publish_observation()
        self.events |= EV_CYCLE
        self._follow(now_ns)

    def observe_peer(self, now_ns: int, ok: bool, leader_id: str = "", etag: str = "") -> None:
        self.slot.bump(C_PEER_CHECKS)
        if ok and leader_id == self.leader_id and self.role != LEADER:
            self.last_seen_alive_ns = now_ns
            if etag and etag != self.obs_etag:
                self.obs_etag = etag
                self.obs_first_seen_ns = now_ns
            self.events |= EV_CYCLE
            self._schedule(PEER_CHECK, _add(now_ns, self.frequent_ns))
            return
        self.slot.bump(C_PEER_FAILURES)
        self.peer_suspect = True
        self.obs_renewals_seen = 0
        self._schedule(READ, now_ns)

    def begin_release(self, now_ns: int) -> bool:
        if self.role != LEADER:
            return False
        self._step_down(now_ns)
        self._clear_pending()
        self._schedule(RELEASE, now_ns)
        return True

    def step_down(self, now_ns: int) -> None:
        if self.role == LEADER:
            self._step_down(now_ns)
            self._clear_pending()
            self._schedule(READ, now_ns)

    def stop(self, now_ns: int) -> None:
        if self.role == LEADER:
            self._step_down(now_ns)
        self.role = STOPPED
        self.next_action = WAIT
        self.slot.release_slot()

    def restart(self, now_ns: int, nonce: str = "") -> None:
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

    # -- internals ---------------------------------------------------------

    def _schedule(self, action: int, at: int) -> None:
        self.next_action = action
        self.next_at_ns = at

    def _writes_answered(self) -> None:
        self.write_fails = 0
        self.write_not_before_ns = 0

    def _retry_delay(self, streak: int, auth: bool) -> int:
        if streak <= 0:
            return 0
        if streak <= 3 and not auth:
            return RETRY_DELAYS_NS[streak - 1]
        return self.frequent_ns + self._jitter(self.frequent_ns // RETRY_JITTER_DIV)

    def _jitter(self, span: int) -> int:
        # xorshift64, as the compiled core: the same draws from the same nonce.
        x = self.jitter_state
        if span <= 0:
            return 0
        x ^= (x << 13) & _U64
        x ^= x >> 7
        x ^= (x << 17) & _U64
        self.jitter_state = x
        return int(x % span)

    def _seed_jitter(self) -> None:
        # FNV-1a over the nonce's code points.
        h = 14695981039346656037
        for ch in self.nonce:
            h = ((h ^ ord(ch)) * 1099511628211) & _U64
        self.jitter_state = h if h else 1

    def _clear_pending(self) -> None:
        self.pending_kind = WAIT
        self.pending_unknown = False
        self.verifying = False

    def _check_duplicate(self, etag: str, leader_id: str, nonce: str, released: bool) -> None:
        if leader_id != self.server_id or nonce == self.nonce or released:
            self.foreign_writes_seen = 0
            return
        if not self.obs_known or etag == self.obs_etag:
            return
        if self.obs_nonce == self.nonce and self.leader_id == self.server_id:
            self.foreign_writes_seen = 2
        elif self.obs_nonce == nonce:
            self.foreign_writes_seen += 1
        else:
            self.foreign_writes_seen = 0
        if self.foreign_writes_seen >= 2 and self.duplicate_nonce != nonce:
            self.duplicate_nonce = nonce
            self.events |= EV_DUPLICATE_ID
            self.slot.bump(C_DUPLICATE_IDS)

    def _follow(self, now: int) -> None:
        lease = max(self.lease_ns, self.obs_lease_ns)
        if self.role == STOPPED:
            return
        self.cycles += 1
        write_at = max(now, self.write_not_before_ns)
        if self.obs_missing:
            self._schedule(CREATE, write_at)
            return
        if self.obs_released:
            self._schedule(TAKEOVER, write_at)  # rule 1(b)
            return
        if self.obs_garbage:
            lease = self.lease_ns
        legal_at = _add(self.obs_first_seen_ns, lease)  # rule 1(a)
        if self.max_skew_ns >= 0 and not self.obs_garbage and self.obs_updated_wall_ns > 0:
            # rule 1(c): wall-clock staleness, only when the operator bounds skew.
            allowance = lease if self._revert_rule1c else _i64(lease + self.max_skew_ns)
            legal_at = min(
                legal_at,
                _add(_add(self.obs_updated_wall_ns, allowance), -self.obs_wall_at_mono_ns),
            )
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
        self._schedule(READ, min(next_at, legal_at))

    def _become_leader(self, now: int, etag: str) -> None:
        # Rule 2: the lease counts from before the first send of this write,
        # with the lease and margin snapshotted when the write began.
        if self._revert_rule2:
            deadline = _add(self.pending_first_send_ns, self.lease_ns - self.margin_ns)
        elif self._revert_rule6:
            deadline = _add(self.pending_first_send_ns, self.pending_lease_ns)
        else:
            deadline = _add(
                self.pending_first_send_ns, self.pending_lease_ns - self.pending_margin_ns
            )
        was_leader = self.role == LEADER
        kind = self.pending_kind
        term = self.pending_term
        sent = self.pending_first_send_ns
        self._clear_pending()
        self._writes_answered()
        if deadline <= now:
            # The write took longer than the lease: we hold the record but no lease.
            if was_leader:
                self._step_down(now)
            self._observe_own_record(etag, term)
            self.obs_first_seen_ns = now
            self._schedule(READ, _i64(now + self.frequent_ns))
            return
        self.etag = etag
        self.term = term
        self.leader_addr = self.server_addr
        if term > self.max_term_seen:
            self.max_term_seen = term
        self.deadline_ns = deadline
        self.role = LEADER
        self._observe_own_record(etag, term)
        s = self.slot
        s.set_leader(deadline, deadline)
        s.set("term", term)
        s.set("lease_ns", self.pending_lease_ns)
        s.put_etag(etag)
        s.put_leader(self.server_id, self.server_addr)
        if not was_leader:
            s.bump(C_ACQUISITIONS)
            s.bump(C_TRANSITIONS)
            s.set("leader_since_mono_ns", now)
        else:
            s.bump(C_RENEWALS)
        if not was_leader or kind != RENEW:
            self.leader_since_ns = now
            self.last_election_ns = now
            self.events |= EV_ACQUIRED | EV_NEW_LEADER | EV_CYCLE
        self._schedule(RENEW, _i64(sent + self.frequent_ns))

    def _observe_own_record(self, etag: str, term: int) -> None:
        self.obs_known = True
        self.obs_missing = False
        self.obs_garbage = False
        self.obs_released = False
        self.obs_etag = etag
        self.obs_nonce = self.nonce
        self.obs_term = term
        self.leader_id = self.server_id

    def _cap_lease(self, cap: int) -> None:
        """Rule 2 for a shrinking lease (see _rules.pyx)."""
        if cap < self.deadline_ns:
            self.deadline_ns = cap
            self.slot.set_leader(cap, cap)

    def _step_down(self, now: int) -> None:
        self.role = FOLLOWER
        self.last_election_ns = now
        self.events |= EV_LOST
        s = self.slot
        s.set_follower()
        s.bump(C_LOSSES)
        s.bump(C_TRANSITIONS)

    def _observe_own_release(self, now: int, etag: str) -> None:
        self.obs_known = True
        self.obs_missing = False
        self.obs_garbage = False
        self.obs_released = True
        self.obs_etag = etag
        self.obs_nonce = self.nonce
        self.obs_first_seen_ns = now
        self._schedule(READ, _add(now, self.lease_ns))

    def _publish_observation(self) -> None:
        s = self.slot
        s.set("term", self.obs_term)
        s.set("last_update_wall_ns", self.obs_updated_wall_ns)
        s.set("leader_since_mono_ns", self.leader_since_ns)
        s.put_leader(self.leader_id, self.leader_addr)
        s.put_etag(self.obs_etag)
