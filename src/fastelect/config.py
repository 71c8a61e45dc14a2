"""Elector configuration, validated on construction.

Durations accept float seconds or :class:`datetime.timedelta` and are stored
as float seconds.  Every invariant has its own :class:`ConfigError` naming
the field, so a bad deployment fails at start with a message that says what
to change.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from .errors import ConfigError

__all__ = ["Duration", "ElectorConfig", "Hook", "NewLeaderHook", "to_seconds", "wait_seconds"]

#: A duration: float seconds or a timedelta.
Duration = float | int | timedelta
#: ``on_acquire`` / ``on_lose``: a plain or async callable taking no arguments.
Hook = Callable[[], Awaitable[None] | None]
#: ``on_new_leader``: called with the new leader's id ("" when there is none).
NewLeaderHook = Callable[[str], Awaitable[None] | None]

_MAX_ID_BYTES = 120
#: Every duration is at most 24 h (docs/safety.md#bounds): the record's leaseMs
#: is bounded by a day, and no deadline arithmetic can get near int64 nanoseconds.
MAX_DURATION = 86_400.0
#: The shortest lease accepted.  The record advertises the lease in whole
#: milliseconds, and one renewal cycle -- an event-loop timer (about 1 ms of
#: jitter), a storage round trip (about 0.1 ms in memory, 10-100 ms for S3) and
#: the margin -- must fit in it several times over: below 10 ms no store can
#: renew in time and the lease lapses between renewals.
MIN_LEASE = 0.010
#: Below this lease a WARNING says that S3 and most stores cannot meet it.
_WARN_LEASE = 0.100
#: ``host:port``, the host a name, an IPv4 address or a bracketed IPv6 address.
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]/]+):([0-9]{1,5})$")
#: The fields whose default is derived from leader_timeout (recomputed by copy()).
_DERIVED = ("safety_margin", "hook_timeout", "storage_timeout")
# One shared frozenset per combination (there are eight): a set per config
# would be one more object per elector for every garbage-collection pass to
# walk (see test_a_scheduled_elector_leaves_two_objects_for_the_garbage_collector).
_DEFAULTED_SETS: dict[tuple[str, ...], frozenset[str]] = {}


def _defaulted_set(names: tuple[str, ...]) -> frozenset[str]:
    shared = _DEFAULTED_SETS.get(names)
    if shared is None:
        shared = _DEFAULTED_SETS[names] = frozenset(names)
    return shared


_log = logging.getLogger("fastelect.config")


def to_seconds(field: str, value: Duration | None) -> float:
    """Normalise a duration to float seconds, raising ConfigError naming ``field``."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(field, f"must be seconds (float) or a timedelta, not {value!r}")
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise ConfigError(field, f"must be finite, not {seconds}")
    if seconds > MAX_DURATION:
        raise ConfigError(field, f"must be at most {MAX_DURATION:g} s (24 h), not {seconds:g}")
    return seconds


def wait_seconds(field: str, value: Duration) -> float:
    """A bound on waiting: seconds >= 0 up to 24 h, or ``math.inf`` for ever."""
    if isinstance(value, float) and value == math.inf:
        return value
    seconds = to_seconds(field, value)
    if seconds < 0:
        raise ConfigError(field, f"must be >= 0 seconds, not {seconds:g}")
    return seconds


def _check_text(field: str, value: object, *, required: bool) -> None:
    if not isinstance(value, str):
        raise ConfigError(field, f"must be a string, not {type(value).__name__}")
    if required and not value.strip():
        raise ConfigError(field, "must not be empty")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate, e.g. a non-UTF-8 byte from argv ($'\x80bad'):
        # it cannot go into the record's JSON.
        raise ConfigError(
            field, f"must be valid UTF-8 text, not {value.encode('utf-8', 'replace')!r}"
        ) from None
    if len(encoded) > _MAX_ID_BYTES:
        raise ConfigError(field, f"must be at most {_MAX_ID_BYTES} bytes of UTF-8")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ConfigError(field, "must not contain control characters")


@dataclasses.dataclass
class ElectorConfig:
    """How one elector campaigns.  All durations are seconds (float) or timedelta.

    The fields and defaults follow s3lect, so a mixed fleet shares one lock.
    """

    #: Key of the lock object in the storage, e.g. ``"leader.json"``.
    lockfile_path: str
    #: This node's unique id, written into the record as ``leaderID``.
    server_id: str
    #: Address peers use for health checks (``host:port``); required for peer mode.
    server_addr: str = ""
    #: How often a leader renews and a follower polls during transitions. Default 5 s.
    frequent_interval: Duration = 5.0
    #: How often a follower polls when a live leader is stable. Default 30 s.
    #: Never later than a takeover would become legal, so in effect every
    #: min(infrequent_interval, leader_timeout): a crashed leader is noticed
    #: within one lease.  (s3lect and the seed poll idle followers every
    #: infrequent_interval exactly; this is a deliberate difference.)
    infrequent_interval: Duration = 30.0
    #: The lease: how long a leader is trusted without a renewal. Default 15 s.
    leader_timeout: Duration = 15.0
    #: Ask the leader's health endpoint instead of storage when stable. Default off.
    peer_mode: bool = False
    #: Timeout of one peer health check. Default 3 s.
    peer_timeout: Duration = 3.0
    #: PEM bytes of the CA that signs peers' health-server certificates.
    peer_ca_cert: bytes | None = None
    #: Path of the peer health endpoint. Default ``/health/leadership``.
    peer_health_path: str = "/health/leadership"
    #: Called after this node wins a CAS; raising releases the lock again.
    on_acquire: Hook | None = None
    #: Called exactly once when a leadership of this node ends, for any reason.
    on_lose: Hook | None = None
    #: Called with the new leader's id whenever the observed leader changes.
    on_new_leader: NewLeaderHook | None = None
    #: Subtracted from a leader's lease to absorb clock-rate drift.
    #: Default None = leader_timeout / 10.
    safety_margin: Duration | None = None
    #: If set, a record whose lastUpdated is older than lease + this by the wall
    #: clock may be taken at once (rule 1c,
    #: docs/safety.md#rule-1-take-over-only-by-compare-and-swap-and-only-when-stale).
    #: Default None: wall clocks are never trusted.
    max_clock_skew: Duration | None = None
    #: Bound on each hook call. Default None = leader_timeout.
    hook_timeout: Duration | None = None
    #: Bound on each storage call. Default None = min(2 s, leader_timeout / 3);
    #: a leader's writes are further bounded by what is left of its lease.
    storage_timeout: Duration | None = None
    #: Which of safety_margin, hook_timeout and storage_timeout were left to
    #: their defaults (so copy() derives them again from a new leader_timeout).
    _defaulted: frozenset[str] = dataclasses.field(
        init=False, repr=False, compare=False, default=frozenset()
    )

    def __post_init__(self) -> None:
        _check_text("lockfile_path", self.lockfile_path, required=True)
        path = self.lockfile_path
        if path.startswith("/") or ".." in path.split("/") or path.endswith("/"):
            raise ConfigError(
                "lockfile_path", f"must be a relative key like 'leader.json', not {path!r}"
            )
        _check_text("server_id", self.server_id, required=True)
        _check_text("server_addr", self.server_addr, required=False)
        if self.server_addr:
            match = _HOST_PORT.match(self.server_addr)
            if match is None or int(match.group(2)) > 65535:
                raise ConfigError(
                    "server_addr",
                    f"must be host:port (a port up to 65535), not {self.server_addr!r}",
                )
        self._defaulted = _defaulted_set(tuple(n for n in _DERIVED if getattr(self, n) is None))
        for name in ("frequent_interval", "infrequent_interval", "leader_timeout", "peer_timeout"):
            seconds = to_seconds(name, getattr(self, name))
            if seconds <= 0:
                raise ConfigError(name, f"must be positive, not {seconds}")
            setattr(self, name, seconds)
        freq, infreq, lease = self.frequent, self.infrequent, self.lease
        if lease < MIN_LEASE:
            raise ConfigError(
                "leader_timeout",
                f"must be at least {MIN_LEASE * 1000:g} ms, not {lease * 1000:g} ms: the record "
                "advertises whole milliseconds, and a renewal (an event-loop timer, a storage "
                "round trip, the safety margin) must fit in the lease several times over; no "
                "store can renew a shorter one in time",
            )
        if lease < _WARN_LEASE:
            _log.warning(
                "leader_timeout %g ms is shorter than %g ms: S3 conditional writes take "
                "10-100 ms, so renewals will often miss the lease and leadership flap; "
                "only in-memory or local stores can keep such a lease",
                lease * 1000,
                _WARN_LEASE * 1000,
            )
        if freq >= lease:
            raise ConfigError(
                "frequent_interval",
                f"must be shorter than leader_timeout ({freq} >= {lease}) so a leader renews "
                "before its lease ends",
            )
        if infreq < freq:
            raise ConfigError(
                "infrequent_interval",
                f"must be at least frequent_interval ({infreq} < {freq})",
            )
        margin = lease / 10 if self.safety_margin is None else self.safety_margin
        margin = to_seconds("safety_margin", margin)
        if margin < 0:
            raise ConfigError("safety_margin", f"must not be negative, not {margin}")
        if margin >= lease:
            raise ConfigError("safety_margin", f"must be shorter than leader_timeout ({lease})")
        if freq + margin >= lease:
            if self.safety_margin is None:
                # The margin is the default: the interval is what was set wrong.
                raise ConfigError(
                    "frequent_interval",
                    f"must be shorter than leader_timeout minus the default safety_margin "
                    f"(leader_timeout / 10): {freq} + {margin} >= {lease}, or a leader's "
                    "lease lapses between renewals",
                )
            raise ConfigError(
                "safety_margin",
                f"frequent_interval + safety_margin ({freq} + {margin}) must be shorter than "
                f"leader_timeout ({lease}), or a leader's lease lapses between renewals",
            )
        self.safety_margin = margin
        if self.max_clock_skew is not None:
            skew = to_seconds("max_clock_skew", self.max_clock_skew)
            if skew < 0:
                raise ConfigError("max_clock_skew", f"must not be negative, not {skew}")
            self.max_clock_skew = skew
        hook_timeout = lease if self.hook_timeout is None else self.hook_timeout
        hook_timeout = to_seconds("hook_timeout", hook_timeout)
        if hook_timeout <= 0:
            raise ConfigError("hook_timeout", f"must be positive, not {hook_timeout}")
        self.hook_timeout = hook_timeout
        default_timeout = min(2.0, lease / 3)
        storage_timeout = default_timeout if self.storage_timeout is None else self.storage_timeout
        storage_timeout = to_seconds("storage_timeout", storage_timeout)
        if storage_timeout <= 0:
            raise ConfigError("storage_timeout", f"must be positive, not {storage_timeout}")
        self.storage_timeout = storage_timeout
        if not isinstance(self.peer_mode, bool):
            raise ConfigError("peer_mode", "must be True or False")
        if not isinstance(self.peer_health_path, str) or not self.peer_health_path.startswith("/"):
            raise ConfigError("peer_health_path", "must be a path starting with '/'")
        if self.peer_ca_cert is not None and not isinstance(self.peer_ca_cert, bytes | bytearray):
            raise ConfigError("peer_ca_cert", "must be PEM bytes")
        if self.peer_mode:
            if not self.peer_ca_cert:
                raise ConfigError("peer_ca_cert", "is required when peer_mode is on")
            if not self.server_addr:
                raise ConfigError("server_addr", "is required when peer_mode is on (host:port)")
        for name in ("on_acquire", "on_lose", "on_new_leader"):
            hook = getattr(self, name)
            if hook is not None and not callable(hook):
                raise ConfigError(name, f"must be callable or None, not {hook!r}")

    # Normalised views, in the units the core uses.

    @property
    def frequent(self) -> float:
        """frequent_interval in seconds."""
        return float(self.frequent_interval)  # type: ignore[arg-type]

    @property
    def infrequent(self) -> float:
        """infrequent_interval in seconds."""
        return float(self.infrequent_interval)  # type: ignore[arg-type]

    @property
    def lease(self) -> float:
        """leader_timeout in seconds."""
        return float(self.leader_timeout)  # type: ignore[arg-type]

    def ns(self, field: str) -> int:
        """A duration field in integer nanoseconds (-1 for an unset optional one)."""
        value: Any = getattr(self, field)
        if value is None:
            return -1
        return round(float(value) * 1e9)

    def copy(self, **changes: Any) -> ElectorConfig:
        """A validated copy with ``changes`` applied.

        A derived field (``safety_margin``, ``hook_timeout``,
        ``storage_timeout``) that was left to its default is derived again
        from the copy's ``leader_timeout``, as if the copy were constructed
        afresh; one that was set keeps its value unless ``changes`` names it.
        """
        for name in self._defaulted:
            changes.setdefault(name, None)
        return dataclasses.replace(self, **changes)
