"""What an elector reports: :class:`LeadershipStatus`, and :class:`LeadershipLost`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from . import _core
from .errors import FastelectError

__all__ = ["LeadershipLost", "LeadershipStatus"]

_NS = 1_000_000_000


class LeadershipLost(FastelectError):
    """Leader-only work was cancelled because this node's leadership ended."""


@dataclass(frozen=True, slots=True)
class LeadershipStatus:
    """A snapshot of what an elector knows (s3lect's fields plus ``term``)."""

    server_id: str
    lockfile_path: str
    is_leader: bool
    leader_id: str
    leader_addr: str
    #: When the leader was last confirmed alive (by storage or a peer check).
    leader_last_seen: datetime | None
    #: When leadership last changed hands as seen by this node.
    last_election_time: datetime | None
    consecutive_fails: int
    #: The fencing token of the current leadership (ours when leading).
    term: int
    #: The nonce of another live process writing under our ``server_id``
    #: ("" unless such a clash was seen; see ``docs/safety.md``, rule 0).
    duplicate_id_nonce: str = ""
    #: Why the elector's background task died ("" while it runs or after a
    #: clean stop); ``stop()`` raises that failure.
    failure: str = ""


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, as ``status().failure`` shows it."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def mono_to_wall(mono_ns: int) -> datetime | None:
    """The wall-clock time of a lease-clock instant (None for 0: never)."""
    if mono_ns <= 0:
        return None
    wall = time.time_ns() - (_core.monotonic_ns() - mono_ns)
    return datetime.fromtimestamp(wall / _NS, UTC)
