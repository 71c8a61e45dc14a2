"""Benchmarks of the compiled core and the driver path, each against a baseline.

* ``is_leader()``: fastelect's answer (the compiled slot's method bound on the
  Elector instance: one atomic load and one clock read) against what a
  careful pure-Python elector does, a property reading role and deadline
  under a ``threading.Lock``.  The issue's targets: <= 60 ns median and
  >= 3x faster than that baseline.
* One election step on MemoryStorage (no I/O cost to speak of, so the figure
  is the CPU of the core + record codec + driver path): a leader's renewal
  and a follower's poll, against the same storage calls with a bare orjson
  record.
* One full election cycle of two running Electors (leader renews, follower
  polls, every interval) against a bare asyncio loop doing the same requests
  on the same schedule: what the driver's loop costs per cycle, in CPU.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from benchkit import (
    Result,
    Steps,
    bare_record,
    cpu_ns_per_op,
    paired,
    record,
    rounds,
    unrolled,
)
from fastelect import Elector, ElectorConfig, LeadershipTable, MemoryStorage
from fastelect.scheduler import Scheduler

_LEADER = 1

#: Calls written out per invocation of an unrolled block, and blocks per round.
CALLS = 100
BLOCKS = 1000


class LockedLeadership:
    """The baseline: how a pure-Python elector would answer ``is_leader``.

    Role and deadline are written by the elector's thread and read by any
    other, so a correct pure-Python version takes a lock to read both
    consistently, then compares the deadline with the clock.
    """

    def __init__(self, deadline_ns: int) -> None:
        self._lock = threading.Lock()
        self._role = _LEADER
        self._deadline_ns = deadline_ns

    @property
    def is_leader(self) -> bool:
        with self._lock:
            return self._role == _LEADER and time.monotonic_ns() < self._deadline_ns


class LockFreeLeadership:
    """The honest lock-free baseline: a flag and a deadline read without a lock.

    ``flag and clock() < deadline`` -- what a careful pure-Python elector
    does when it accepts a torn read of the two fields (a reader may see a
    new flag with an old deadline); cheaper than the locked one, not safer.
    """

    def __init__(self, deadline_ns: int) -> None:
        self.flag = True
        self.deadline_ns = deadline_ns

    def is_leader(self) -> bool:
        return self.flag and time.clock_gettime_ns(time.CLOCK_BOOTTIME) < self.deadline_ns


def _per_call_ns(block: Callable[[], None]) -> float:
    """Run ``BLOCKS`` unrolled blocks of ``CALLS`` calls; wall ns per call."""
    start = time.perf_counter_ns()
    for _ in range(BLOCKS):
        block()
    return (time.perf_counter_ns() - start) / (BLOCKS * CALLS)


def _leading_elector(loop: asyncio.AbstractEventLoop, table: LeadershipTable) -> Elector:
    """An Elector on MemoryStorage that won its election, with a lease that
    outlasts any benchmark (it does not renew while the loop is not running)."""
    config = ElectorConfig(
        "bench/leader.json",
        "bench-1",
        frequent_interval=20.0,
        infrequent_interval=30.0,
        leader_timeout=120.0,
    )
    elector = Elector(config, MemoryStorage(), table=table)

    async def win() -> None:
        await elector.start()
        await asyncio.wait_for(elector.wait_for_leadership(), 10)

    loop.run_until_complete(win())
    return elector


@pytest.fixture
def table() -> Iterator[LeadershipTable]:
    """A private leadership table of one slot, closed after the test."""
    table = LeadershipTable(slots=1)
    yield table
    table.close()


@pytest.fixture
def leader(loop: asyncio.AbstractEventLoop, table: LeadershipTable) -> Iterator[Elector]:
    """A leading Elector publishing into ``table``."""
    elector = _leading_elector(loop, table)
    yield elector
    loop.run_until_complete(elector.stop())


def test_is_leader_latency(benchmark: Any, leader: Elector) -> None:
    """``Elector.is_leader()`` vs a lock-protected pure-Python property."""
    deadline = time.monotonic_ns() + leader.slot.lease_remaining_ns()
    baseline = LockedLeadership(deadline)
    # Both answer the same question the same way before they are timed.
    assert leader.is_leader() is True
    assert baseline.is_leader is True

    ours_block = unrolled("s.is_leader()", leader, CALLS)
    base_block = unrolled("s.is_leader", baseline, CALLS)
    ours, base, samples = paired(
        benchmark,
        lambda: _per_call_ns(ours_block),
        lambda: _per_call_ns(base_block),
        rounds=rounds(full=40, gate=10),
    )
    assert leader.is_leader() is True, "the lease ran out during the benchmark"
    record(
        benchmark,
        Result(
            "Elector.is_leader()",
            "ns/call",
            ours,
            base,
            "Lock + monotonic_ns property",
            target=3.0,
            limit=60.0,
            samples=samples,
        ),
    )


def test_is_leader_vs_lock_free_python(benchmark: Any, leader: Elector) -> None:
    """``Elector.is_leader()`` vs ``flag and clock() < deadline`` (no lock)."""
    deadline = time.clock_gettime_ns(time.CLOCK_BOOTTIME) + leader.slot.lease_remaining_ns()
    baseline = LockFreeLeadership(deadline)
    assert leader.is_leader() is True and baseline.is_leader() is True

    ours_block = unrolled("s.is_leader()", leader, CALLS)
    base_block = unrolled("s.is_leader()", baseline, CALLS)
    ours, base, samples = paired(
        benchmark,
        lambda: _per_call_ns(ours_block),
        lambda: _per_call_ns(base_block),
        rounds=rounds(full=40, gate=10),
    )
    assert leader.is_leader() is True, "the lease ran out during the benchmark"
    record(
        benchmark,
        Result(
            "Elector.is_leader() vs lock-free",
            "ns/call",
            ours,
            base,
            "flag and clock_gettime_ns(BOOTTIME) < deadline",
            target=1.5,
            limit=35.0,
            samples=samples,
        ),
    )


def test_table_reader_is_leader_latency(
    benchmark: Any, leader: Elector, table: LeadershipTable
) -> None:
    """``TableReader.is_leader(election)``: what the health server and other
    processes ask (a dict lookup of the election's slot, then the same load)."""
    reader = table.reader()
    deadline = time.monotonic_ns() + leader.slot.lease_remaining_ns()
    baseline = LockedLeadership(deadline)
    assert reader.is_leader("default") is True

    ours_block = unrolled("s.is_leader('default')", reader, CALLS)
    base_block = unrolled("s.is_leader", baseline, CALLS)
    ours, base, samples = paired(
        benchmark,
        lambda: _per_call_ns(ours_block),
        lambda: _per_call_ns(base_block),
        rounds=rounds(full=40, gate=10),
    )
    reader.close()
    record(
        benchmark,
        Result(
            "TableReader.is_leader(name)",
            "ns/call",
            ours,
            base,
            "Lock + monotonic_ns property",
            target=3.0,
            limit=45.0,
            samples=samples,
        ),
    )


def test_is_leader_answers_by_the_deadline(loop: asyncio.AbstractEventLoop) -> None:
    """The figures above are of a correct answer: True while the lease runs,
    False once it has run out, even with the elector's loop blocked so it
    cannot renew or step down."""
    table = LeadershipTable(slots=1)
    config = ElectorConfig(
        "bench/expiry.json",
        "bench-expiry",
        frequent_interval=0.1,
        infrequent_interval=0.1,
        leader_timeout=0.3,
    )
    elector = Elector(config, MemoryStorage(), table=table)
    reader = table.reader()

    async def scenario() -> None:
        await elector.start()
        await asyncio.wait_for(elector.wait_for_leadership(), 10)
        left_ns = elector.slot.lease_remaining_ns()
        assert 0 < left_ns <= 300_000_000
        assert elector.is_leader() is True
        assert reader.is_leader("default") is True
        assert LockedLeadership(time.monotonic_ns() + left_ns).is_leader is True
        # Block the loop past the deadline: nothing can renew or step down.
        time.sleep(left_ns / 1e9 + 0.02)
        assert elector.is_leader() is False
        assert reader.is_leader("default") is False
        assert LockedLeadership(time.monotonic_ns() - 1).is_leader is False
        await elector.stop()

    try:
        loop.run_until_complete(scenario())
    finally:
        reader.close()
        table.close()


# -- one election step on MemoryStorage ----------------------------------------------

STEPS = 2000

#: The driver's real step may cost up to 6x the bare storage call.  The gap is
#: the record codec, which validates untrusted JSON and reads/writes RFC 3339
#: times in Python (~2-4 us), and the per-call timeout that bounds a hung
#: storage call (asyncio.timeout, ~3.6 us); the core's own calls are ~0.5 us.
#: All of it is noise next to one S3 request (~1.3 ms of client CPU).
STEP_TARGET = 1 / 6


def test_renew_step_cpu(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    """A leader's renewal on MemoryStorage: core + record encoding + driver path."""
    storage = MemoryStorage()
    steps = Steps(storage)
    loop.run_until_complete(steps.acquire())
    etag = [loop.run_until_complete(storage.put_if_match("bare.json", bare_record(0), ""))]

    async def bare(i: int) -> None:
        etag[0] = await storage.put_if_match("bare.json", bare_record(i), etag[0])

    async def renew(_i: int) -> None:
        await steps.renew()

    n = STEPS
    ours, base, samples = paired(
        benchmark,
        lambda: cpu_ns_per_op(loop, renew, n),
        lambda: cpu_ns_per_op(loop, bare, n),
        rounds=rounds(full=30, gate=8),
    )
    assert steps.leader.is_leader()
    steps.close()
    record(
        benchmark,
        Result(
            "renew step, MemoryStorage",
            "us CPU/op",
            ours / 1000,
            base / 1000,
            "orjson dump + put_if_match",
            target=STEP_TARGET,
            samples=samples,
        ),
    )


def test_poll_step_cpu(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    """A follower's poll on MemoryStorage: GET + parse of untrusted bytes + core."""
    storage = MemoryStorage()
    steps = Steps(storage)
    loop.run_until_complete(steps.acquire())

    async def bare(_i: int) -> None:
        body, _etag = await storage.get(steps.key)
        orjson.loads(body)

    async def poll(_i: int) -> None:
        await steps.poll()

    n = STEPS
    ours, base, samples = paired(
        benchmark,
        lambda: cpu_ns_per_op(loop, poll, n),
        lambda: cpu_ns_per_op(loop, bare, n),
        rounds=rounds(full=30, gate=8),
    )
    assert steps.follower.leader_id == "bench-leader"
    steps.close()
    record(
        benchmark,
        Result(
            "poll step, MemoryStorage",
            "us CPU/op",
            ours / 1000,
            base / 1000,
            "get + orjson load",
            target=STEP_TARGET,
            samples=samples,
        ),
    )


# -- full election cycles of running electors -----------------------------------------

#: The interval of the running benchmarks: short, so a round takes ~0.3 s.
INTERVAL = 0.001
CYCLES = 300


async def _measure_cycles(storage: MemoryStorage, cycles: int) -> tuple[float, float]:
    """CPU ns per leader PUT while ``cycles`` PUTs happen, and GETs per PUT."""
    gets0, puts0 = storage.stats.gets, storage.stats.puts
    start = time.process_time_ns()
    while storage.stats.puts - puts0 < cycles:
        await asyncio.sleep(0.01)
    cpu = time.process_time_ns() - start
    puts = storage.stats.puts - puts0
    return cpu / puts, (storage.stats.gets - gets0) / puts


async def _electors_round(cycles: int, gets_per_cycle: list[float]) -> float:
    """Two real Electors on one MemoryStorage: CPU ns per cycle once one leads."""
    storage = MemoryStorage()
    config = ElectorConfig(
        "bench/cycle.json",
        "n0",
        frequent_interval=INTERVAL,
        infrequent_interval=INTERVAL,
        leader_timeout=0.5,
        storage_timeout=0.25,
    )
    # Every Elector runs on a scheduler, whose default resolution (5 ms) would
    # round this 1 ms interval up to 5 ms; a 1 ms interval needs 1 ms.
    scheduler = Scheduler(resolution=INTERVAL)
    electors = [
        Elector(config.copy(server_id=f"n{i}"), storage, scheduler=scheduler) for i in range(2)
    ]
    for elector in electors:
        await elector.start()
    try:
        deadline = time.monotonic() + 10
        while not any(e.is_leader() for e in electors):
            assert time.monotonic() < deadline, "no elector won within 10 s"
            await asyncio.sleep(INTERVAL)
        # Let the follower see the leader renew, so it polls as in steady state.
        await asyncio.sleep(20 * INTERVAL)
        per_cycle, gets = await _measure_cycles(storage, cycles)
        gets_per_cycle.append(gets)
        assert sum(e.is_leader() for e in electors) == 1
        return per_cycle
    finally:
        for elector in electors:
            await elector.stop()


async def _bare_round(cycles: int) -> float:
    """A bare asyncio loop doing the same requests on the same schedule."""
    storage = MemoryStorage()
    stopping = asyncio.Event()

    async def leader() -> None:
        etag, renewal = "", 0
        while not stopping.is_set():
            renewal += 1
            etag = await storage.put_if_match("bench/cycle.json", bare_record(renewal), etag)
            await asyncio.sleep(INTERVAL)

    async def follower() -> None:
        while not stopping.is_set():
            body, _etag = await storage.get("bench/cycle.json")
            orjson.loads(body)
            await asyncio.sleep(INTERVAL)

    lead = asyncio.ensure_future(leader())
    await asyncio.sleep(20 * INTERVAL)
    follow = asyncio.ensure_future(follower())
    await asyncio.sleep(20 * INTERVAL)
    try:
        per_cycle, _gets = await _measure_cycles(storage, cycles)
        return per_cycle
    finally:
        stopping.set()
        await asyncio.gather(lead, follow)


def test_election_cycle_cpu(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Two running Electors, interval 1 ms: CPU per cycle (one renewal + one poll).

    This is the whole driver as deployed -- sleeping, waking, heartbeats,
    event dispatch, timeouts -- so it bounds how many elections one process
    can run: at the default 5 s interval, cycles/s = elections / 5.
    """
    gets: list[float] = []
    cycles = CYCLES
    ours, base, samples = paired(
        benchmark,
        lambda: loop.run_until_complete(_electors_round(cycles, gets)),
        lambda: loop.run_until_complete(_bare_round(cycles)),
        rounds=rounds(full=8, gate=9),
    )
    per_cycle_s = ours / 1e9
    record(
        benchmark,
        Result(
            "election cycle, 2 Electors",
            "us CPU/cycle",
            ours / 1000,
            base / 1000,
            "asyncio loop, same requests",
            target=STEP_TARGET,
            samples=samples,
            extra={
                "gets_per_cycle": round(sorted(gets)[len(gets) // 2], 2),
                "note": (
                    f"one core drives ~{5.0 / per_cycle_s:,.0f} leader+follower pairs at the "
                    "default 5 s interval (driver CPU only; S3 requests cost far more, see "
                    "the S3 figures)"
                ),
            },
        ),
    )
