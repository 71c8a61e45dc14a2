"""The election step, sans I/O: outcomes in, each with its instant; what to do next out.

A :class:`Driver` wraps one compiled :class:`~fastelect._core.Campaign` (the
safety rules of ``docs/safety.md#the-rules``) and adds what every host of a
campaign needs around it: parsing the record a read returned, building the
body a write sends, the hook queue and its rule 9 accounting (no campaign for
a new leadership while the last one's hooks run; ``on_acquire`` skipped once
its leadership ended; a failed ``on_acquire`` hands the lock back), a release
asked for from outside, and duplicate-id reports folded per nonce.

It reads no clock, opens no connection and knows no event loop: every input
carries the instant it happened (the host's ``monotonic_ns`` for its own
clock, and its wall clock where a record needs one).  Its hosts are the
asyncio :class:`~fastelect.Elector` (alone or on a
:class:`~fastelect.scheduler.Scheduler`) and the simulator
(:mod:`fastelect.sim`), which runs this same object on simulated clocks.
It is compiled into the core (``_driver.pyx``) and untracked by the garbage
collector, so it costs an elector no more than a few hundred bytes.

A host's turn::

    action = driver.poll(now)          # READ, PEER_CHECK, a write kind, WAIT or HOLD
    # ...perform it, then report the outcome with its instant:
    driver.read_record(now, wall, body, etag)     # or read_missing / read_failed
    kind, body, if_match, term, wall, cut = driver.begin_write(now, wall)
    driver.write_succeeded(now, etag, wall)       # or write_conflicted / write_failed
    driver.peer_answered(now, ok, leader_id, etag)
    events = driver.take_events()      # Event bits: what to log, wake and publish
    hook = driver.next_hook()          # run it, then driver.hook_finished(failed)

Where per-node sessions would plug in (docs/simulator.md, "Sessions"): a
session renews many leases with one write, so it would call each carried
driver's ``begin_write`` and ``write_*`` with that one write's instants and
answer, while reads and campaigns stay per driver.
"""

from __future__ import annotations

from ._core import (
    HOLD,
    HOOK_ACQUIRE,
    HOOK_LOSE,
    HOOK_NEW_LEADER,
    READ_GARBAGE,
    READ_LONG_LEASE,
    READ_OK,
    Action,
    Campaign,
    Driver,
    Hook,
    Role,
)

__all__ = [
    "HOLD",
    "HOOK_ACQUIRE",
    "HOOK_LOSE",
    "HOOK_NEW_LEADER",
    "READ_GARBAGE",
    "READ_LONG_LEASE",
    "READ_OK",
    "Action",
    "Campaign",
    "Driver",
    "Hook",
    "Role",
]
