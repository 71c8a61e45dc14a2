"""The compiled Campaign and its pure-Python twin, run in lockstep.

:class:`Lockstep` looks like a :class:`fastelect._core.Campaign`: the driver
calls it as it would call one.  Every call goes to both the compiled Campaign
and a twin (:class:`fastelect._rules_py.Campaign`, or a mutant of it); then
the return values, any exception, and the whole observable state are
compared: every read-only attribute, ``takeover_legal_at()`` and the slot.
The first disagreement raises :class:`LockstepMismatch` (an AssertionError)
naming the method, its arguments, the differing fields and the calls before.

The slot.  The compiled Campaign writes the real table slot; the twin writes
a :class:`~fastelect._rules_py.SlotImage`.  Before each call the image is
loaded from the real slot (the driver touches the slot too: a crash releases
it), and after it the two must hold the same fields, counters included --
except ``last_cycle_mono_ns`` and ``watchdog_ns``, which the elector's
heartbeat and ``restart_slot`` stamp from the real clock.

Calls that change no observable state -- the queries ``is_leader`` and
``takeover_legal_at``, ``record_body``, and ``take_events`` (it clears the
private event bits it returns) -- compare only their answers; a twin whose
one of them did change state would show it at the next call's state check.
``take_events`` is half the calls a driver makes, so this halves the cost.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from .. import _core
from .. import _rules_py as twin
from .checker import Violation

__all__ = ["STATE_FIELDS", "Lockstep", "LockstepMismatch"]

#: Everything a driver can read from a Campaign, compared after every call.
STATE_FIELDS = (
    "server_id",
    "server_addr",
    "nonce",
    "role",
    "deadline_ns",
    "term",
    "etag",
    "pending_kind",
    "pending_lease_ms",
    "obs_etag",
    "obs_nonce",
    "obs_released",
    "duplicate_nonce",
    "leader_id",
    "leader_addr",
    "leader_since_ns",
    "max_term_seen",
    "last_seen_alive_ns",
    "next_action",
    "next_at_ns",
    "consecutive_fails",
    "read_fails",
    "write_fails",
    "write_not_before_ns",
    "last_election_ns",
    "cycles",
    "observed_term",
    "stable",
)
_state = attrgetter(*STATE_FIELDS)
#: Slot fields stamped from the real clock, not by the rules.
_CLOCKED = ("last_cycle_mono_ns", "watchdog_ns")
#: Calls kept for the failure message.
HISTORY = 12


class LockstepMismatch(Violation):
    """The compiled Campaign and its twin disagreed (rule ``lockstep``).

    A :class:`~fastelect.sim.checker.Violation`, so a simulated schedule
    reports it with its seed and trace like any broken invariant.
    """

    def __init__(self, t_ns: int, detail: str) -> None:
        super().__init__("lockstep", t_ns, detail)


def _outcome(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[bool, Any]:
    try:
        return True, fn(*args)
    except Exception as exc:  # compared, then re-raised
        return False, exc


def _same(a: tuple[bool, Any], b: tuple[bool, Any]) -> bool:
    if a[0] and b[0]:
        return bool(a[1] == b[1])
    if not a[0] and not b[0]:
        return type(a[1]) is type(b[1]) and str(a[1]) == str(b[1])
    return False


def _call_text(name: str, args: tuple[Any, ...]) -> str:
    return f"{name}({', '.join(map(repr, args))})"


class Lockstep:
    """A Campaign-like pair: the compiled core and a twin, held to each other.

    ``twin_class``: the twin to run (default the faithful one; a mutant makes
    the first diverging call fail, which is how the tests show a mutant's
    difference on a concrete event sequence).  Reads of attributes answer
    from the compiled Campaign: after every call the twin agrees with it.
    ``seq``: the slot's seqlock word (``TableReader.seq``), to skip
    comparing a slot neither wrote; ``clock``: the simulator's true time,
    for the report.
    """

    __slots__ = ("_calls", "_clock", "_image", "_real_slot", "_seq", "_seq_seen", "c", "py")

    def __init__(
        self,
        slot: _core.Slot,
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
        *,
        twin_class: type[twin.Campaign] = twin.Campaign,
        compiled_class: type[_core.Campaign] = _core.Campaign,
        seq: Callable[[], int] | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        nonce = nonce or twin.new_nonce()  # one nonce for both, or they could never agree
        args = (
            server_id,
            server_addr,
            lease_ns,
            frequent_ns,
            infrequent_ns,
            margin_ns,
            max_skew_ns,
            peer_mode,
            now_ns,
            nonce,
        )
        self._seq = seq
        self._clock = clock
        self._seq_seen = -1
        self._calls: deque[tuple[str, tuple[Any, ...]]] = deque(maxlen=HISTORY)
        self._real_slot = slot
        self._image = twin.SlotImage(None, slot.status())
        got_c = _outcome(compiled_class, (slot, *args))
        got_py = _outcome(twin_class, (self._image, *args))
        built = got_c[0] and got_py[0]
        if built:
            self.c, self.py = got_c[1], got_py[1]
            got_c = got_py = (True, None)  # two new objects: only their state compares
        self._compare("__init__", args, got_c, got_py, check_state=built)
        if not got_c[0]:
            raise got_c[1]

    # -- the comparison ----------------------------------------------------

    def _call(self, name: str, *args: Any) -> Any:
        real = self._real_slot
        image = self._image
        seq = self._seq
        if seq is None or seq() != self._seq_seen:
            # The driver writes the slot too (a crash releases it): start from it.
            image.load(real.status())
        writes = image.writes
        got_c = _outcome(getattr(self.c, name), args)
        got_py = _outcome(getattr(self.py, name), args)
        if seq is not None and image.writes == writes and seq() == self._seq_seen:
            slot_same = True  # neither wrote its slot: still equal, as last compared
        else:
            sc = real.status()
            sp = image.d
            for key in _CLOCKED:
                sp[key] = sc[key]
            slot_same = sc == sp
            if seq is not None:
                self._seq_seen = seq()
        if (
            got_c[0]
            and got_py[0]
            and got_c[1] == got_py[1]
            and slot_same
            and _state(self.c) == _state(self.py)
            and self.c.takeover_legal_at() == self.py.takeover_legal_at()
        ):
            self._calls.append((name, args))
            return got_c[1]
        self._compare(name, args, got_c, got_py, check_state=True)
        if not got_c[0]:
            raise got_c[1]
        return got_c[1]

    def _query(self, name: str, *args: Any) -> Any:
        got_c = _outcome(getattr(self.c, name), args)
        got_py = _outcome(getattr(self.py, name), args)
        if got_c[0] and got_py[0] and got_c[1] == got_py[1]:
            return got_c[1]
        self._compare(name, args, got_c, got_py, check_state=True)
        if not got_c[0]:
            raise got_c[1]
        return got_c[1]

    def _compare(
        self,
        name: str,
        args: tuple[Any, ...],
        got_c: tuple[bool, Any],
        got_py: tuple[bool, Any],
        *,
        check_state: bool,
    ) -> None:
        """Raise :class:`LockstepMismatch` with every difference, if there is one."""
        diffs: list[str] = []
        if not _same(got_c, got_py):
            diffs.append(f"returned: compiled {_show(got_c)}, twin {_show(got_py)}")
        if check_state:
            a, b = _state(self.c), _state(self.py)
            diffs += [
                f"{f}: compiled {x!r}, twin {y!r}"
                for f, x, y in zip(STATE_FIELDS, a, b, strict=True)
                if x != y
            ]
            legal_c, legal_py = self.c.takeover_legal_at(), self.py.takeover_legal_at()
            if legal_c != legal_py:
                diffs.append(f"takeover_legal_at(): compiled {legal_c}, twin {legal_py}")
            sc = self._real_slot.status()
            sp = self._image.d
            diffs += [
                f"slot {k}: compiled {sc.get(k)!r}, twin {sp.get(k)!r}"
                for k in sc
                if k not in _CLOCKED and sc.get(k) != sp.get(k)
            ]
        if diffs:
            before = "\n".join(f"  {_call_text(*c)}" for c in self._calls) or "  (none)"
            raise LockstepMismatch(
                self._clock() if self._clock is not None else 0,
                f"compiled Campaign and its twin ({type(self.py).__name__}) disagree after "
                f"{_call_text(name, args)}:\n  "
                + "\n  ".join(diffs)
                + f"\nthe calls before, oldest first:\n{before}"
                + "\n(replay with --lockstep)",
            )
        self._calls.append((name, args))

    # -- the Campaign surface ------------------------------------------------

    def configure(self, *args: Any) -> None:
        self._call("configure", *args)

    def set_peer_mode(self, enabled: bool) -> None:
        self._call("set_peer_mode", enabled)

    def is_leader(self, now_ns: int) -> bool:
        return bool(self._query("is_leader", now_ns))

    def takeover_legal_at(self) -> int:
        return int(self._query("takeover_legal_at"))

    def take_events(self) -> int:
        return int(self._query("take_events"))

    def poll(self, now_ns: int) -> int:
        return int(self._call("poll", now_ns))

    def begin_write(self, now_ns: int) -> tuple[str, int, int, bool]:
        return self._call("begin_write", now_ns)  # type: ignore[no-any-return]

    def record_body(self, wall_ns: int) -> bytes:
        return self._query("record_body", wall_ns)  # type: ignore[no-any-return]

    def write_succeeded(self, now_ns: int, new_etag: str, wall_ns: int = 0) -> None:
        self._call("write_succeeded", now_ns, new_etag, wall_ns)

    def write_conflicted(self, now_ns: int) -> None:
        self._call("write_conflicted", now_ns)

    def write_failed(self, now_ns: int, auth: bool = False) -> None:
        self._call("write_failed", now_ns, auth)

    def read_failed(self, now_ns: int, auth: bool = False) -> None:
        self._call("read_failed", now_ns, auth)

    def observe_missing(self, now_ns: int) -> None:
        self._call("observe_missing", now_ns)

    def observe_garbage(self, now_ns: int, etag: str, term: int | None = None) -> None:
        self._call("observe_garbage", now_ns, etag, term)

    def observe_record(self, *args: Any) -> None:
        self._call("observe_record", *args)

    def observe_peer(self, now_ns: int, ok: bool, leader_id: str = "", etag: str = "") -> None:
        self._call("observe_peer", now_ns, ok, leader_id, etag)

    def begin_release(self, now_ns: int) -> bool:
        return bool(self._call("begin_release", now_ns))

    def step_down(self, now_ns: int) -> None:
        self._call("step_down", now_ns)

    def stop(self, now_ns: int) -> None:
        self._call("stop", now_ns)

    def restart(self, now_ns: int, nonce: str = "") -> None:
        self._call("restart", now_ns, nonce or twin.new_nonce())

    # Read-only state, answered by the compiled Campaign.
    server_id = property(lambda self: self.c.server_id)
    server_addr = property(lambda self: self.c.server_addr)
    nonce = property(lambda self: self.c.nonce)
    role = property(lambda self: self.c.role)
    deadline_ns = property(lambda self: self.c.deadline_ns)
    term = property(lambda self: self.c.term)
    etag = property(lambda self: self.c.etag)
    pending_kind = property(lambda self: self.c.pending_kind)
    pending_lease_ms = property(lambda self: self.c.pending_lease_ms)
    obs_etag = property(lambda self: self.c.obs_etag)
    obs_nonce = property(lambda self: self.c.obs_nonce)
    obs_released = property(lambda self: self.c.obs_released)
    duplicate_nonce = property(lambda self: self.c.duplicate_nonce)
    leader_id = property(lambda self: self.c.leader_id)
    leader_addr = property(lambda self: self.c.leader_addr)
    leader_since_ns = property(lambda self: self.c.leader_since_ns)
    max_term_seen = property(lambda self: self.c.max_term_seen)
    last_seen_alive_ns = property(lambda self: self.c.last_seen_alive_ns)
    next_action = property(lambda self: self.c.next_action)
    next_at_ns = property(lambda self: self.c.next_at_ns)
    consecutive_fails = property(lambda self: self.c.consecutive_fails)
    read_fails = property(lambda self: self.c.read_fails)
    write_fails = property(lambda self: self.c.write_fails)
    write_not_before_ns = property(lambda self: self.c.write_not_before_ns)
    last_election_ns = property(lambda self: self.c.last_election_ns)
    cycles = property(lambda self: self.c.cycles)
    observed_term = property(lambda self: self.c.observed_term)
    stable = property(lambda self: self.c.stable)


def _show(got: tuple[bool, Any]) -> str:
    return repr(got[1]) if got[0] else f"raised {type(got[1]).__name__}: {got[1]}"
