"""Failover-bound scenarios: how long after a leader dies or leaves another leads.

Fault-free schedules with no clock drift and a fixed one-way latency ``d``
for every request, in which the leader is crashed (or stopped gracefully) at
a random instant after the election settled.  The time from that instant to
another node's EV_ACQUIRED must lie within (``docs/simulator.md`` derives
them; ``delta`` counts the one-way latencies on the path):

* crash, S3 polling: ``[T - F, T + min(I, T) + 8d]``.  The leader's last
  write W lands at most F before the crash (its renewals were succeeding)
  or, if a renewal was in flight, up to d after it.  A follower's read that
  just missed W answered before W + d; its next poll comes ``min(I, T)``
  later (a stable follower's idle poll, never later than the takeover
  instant) and first sees W after its round trip; T after that first sight
  the follower reads once more (the core schedules a READ at the legal
  instant), then sends the TAKEOVER, which acquires after its round trip.
* crash, peer mode: ``[T - F, T + 2F + 2 peer_timeout + 8d]``.  The first
  peer check after the crash times out (up to F + peer_timeout), the read
  that follows first sees W; the core then keeps asking the (dead) peer
  every F and does not cap that check at the takeover instant (unlike the
  S3 poll), so the takeover can come up to F + peer_timeout after it became
  legal.  Capping PEER_CHECK at the legal instant would remove one
  ``F + peer_timeout`` (reported, not changed here: it is the core's).
* graceful stop, S3 polling: ``[0, min(I, T) + 7d]`` (the leader finishes a
  write in flight, releases, the next poll sees the released record and
  takes it).
* graceful stop, peer mode: ``[0, F + 9d]`` (the next peer check is refused,
  a read follows, then the takeover).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .model import (
    MS,
    NF_CRASH_LEADER,
    NF_STOP_LEADER,
    RATE_ONE,
    Params,
    Timing,
    draw_timing,
    liveness_bound,
)
from .world import run_schedule

__all__ = ["DEFAULT_TIMING", "MODES", "Failover", "bounds", "failover_params", "measure"]

#: ElectorConfig's defaults: T = 15 s, F = 5 s, I = 30 s, margin = T / 10.
DEFAULT_TIMING = Timing(15_000 * MS, 5_000 * MS, 30_000 * MS, 1_500 * MS)
MODES = ("crash-s3", "crash-peer", "stop-s3", "stop-peer")


@dataclass(frozen=True, slots=True)
class Failover:
    """One measured failover."""

    seed: int
    mode: str
    timing: Timing
    latency: int
    #: Instant of the crash/stop request and of the next EV_ACQUIRED by another node.
    fault_at: int
    acquired_at: int
    lower: int
    upper: int

    @property
    def took(self) -> int:
        """ns from the fault to the new leadership."""
        return self.acquired_at - self.fault_at


def bounds(mode: str, tm: Timing, d: int, peer_timeout: int) -> tuple[int, int]:
    """The interval the failover time must lie in (see the module doc)."""
    poll = min(tm.infrequent, tm.lease)
    if mode == "crash-s3":
        return tm.lease - tm.frequent, tm.lease + poll + 8 * d
    if mode == "crash-peer":
        return tm.lease - tm.frequent, tm.lease + 2 * (tm.frequent + peer_timeout) + 8 * d
    if mode == "stop-s3":
        return 0, poll + 7 * d
    return 0, tm.frequent + 9 * d


def failover_params(seed: int, mode: str, timing: Timing | None = None) -> Params:
    """A fault-free schedule whose leader is crashed or stopped at a random instant."""
    rng = random.Random(seed)
    tm = timing if timing is not None else draw_timing(rng)
    n = rng.randint(2, 4)
    latency = rng.randint(1, 20) * MS
    fault_at = rng.randint(3 * tm.lease, 6 * tm.lease)
    kind = NF_CRASH_LEADER if mode.startswith("crash") else NF_STOP_LEADER
    p = Params(
        seed=seed,
        timings=[tm],
        node_timing=[0] * n,
        node_ids=[f"s{i}" for i in range(n)],
        rates=[RATE_ONE] * n,
        offsets=[rng.randint(10**12, 10**14) for _ in range(n)],
        peer_mode=mode.endswith("peer"),
        peer_timeout=min(3_000 * MS, tm.lease // 5),
        lat_base=0,
        lat_jitter=0,
        p_slow=0.0,
        fate_weights=[1.0],
        p_peer_lie=0.0,
        # The leader comes back (same id) long after the failover we measure.
        faults=[(fault_at, kind, -1, 3 * tm.lease)],
        faults_end=fault_at + 3 * tm.lease,
        live_by=0,
        end=0,
        work_min=tm.lease // 10,
        work_max=tm.lease // 4,
        calm_from_start=True,
        fixed_latency=latency,
    )
    p.live_by = p.faults_end + liveness_bound(p)
    p.end = p.live_by + tm.lease
    return p


def measure(seed: int, mode: str, timing: Timing | None = None) -> Failover:
    """Run one failover scenario (every invariant is checked too) and time it."""
    p = failover_params(seed, mode, timing)
    r = run_schedule(seed, params=p)
    assert r.leader_fault is not None, f"seed={seed} {mode}: nobody led at the fault instant"
    t_fault, old = r.leader_fault
    after = [t for t, node in r.acquired_at if t > t_fault and node != old]
    assert after, f"seed={seed} {mode}: no other node acquired after the fault"
    lower, upper = bounds(mode, p.timings[0], p.fixed_latency, p.peer_timeout)
    return Failover(seed, mode, p.timings[0], p.fixed_latency, t_fault, after[0], lower, upper)
