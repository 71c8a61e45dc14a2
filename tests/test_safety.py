"""The safety rules at the edges, against real storages (docs/safety.md).

Each test here reproduces a way 0.1.0 could end with two leaders or with
leader work outside the lease, and shows it closed:

* rule 0 -- duplicate server ids, and a restarted process meeting its dead
  predecessor's delayed write;
* rule 2 -- ``update_config()`` while a write is in flight;
* rule 6 -- guarded leader work never resumed after the lease.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
import pytest

from elector_helpers import PassThroughStorage, fast_config, wait_until
from fastelect import Elector, LeadershipLost, PreconditionFailed
from fastelect._core import monotonic_ns
from fastelect.storage import Storage

pytestmark = pytest.mark.asyncio

T = 0.3
MS = 1_000_000


async def stop_all(*electors: Elector) -> None:
    await asyncio.gather(*(e.stop() for e in electors), return_exceptions=True)


# --------------------------------------------------------------------------- #
# Rule 0: a write is ours only if it carries our incarnation's nonce
# --------------------------------------------------------------------------- #


async def test_duplicate_ids_end_with_one_leader_and_report_the_clash(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    """Two live processes misconfigured with one id: exactly one leads, loudly."""
    caplog.set_level(logging.ERROR, logger="fastelect.elector")
    # Both twins read "missing" before either creates, so both send a create
    # and the loser's verification read finds the winner's write with the
    # same id, term and renewal: the case 0.1.0 adopted as its own.
    shared = BarrierOnFirstRead(storage, parties=2)
    a = Elector(fast_config("twin"), shared)
    b = Elector(fast_config("twin"), shared)
    assert a.nonce != b.nonce
    await asyncio.gather(a.start(), b.start())
    try:
        await wait_until(lambda: a.is_leader() or b.is_leader(), 5, "neither twin leads")
        both = 0
        end = time.monotonic() + 4 * T
        while time.monotonic() < end:
            both += a.is_leader() and b.is_leader()
            await asyncio.sleep(0.002)
        assert both == 0, f"both twins answered is_leader() in {both} samples"
        leader, other = (a, b) if a.is_leader() else (b, a)
        await wait_until(
            lambda: other.status().duplicate_id_nonce == leader.nonce,
            5,
            "the follower twin did not report the clash",
        )
        assert other.slot.status()["counters"]["duplicate_ids"] >= 1
        await asyncio.sleep(4 * T)  # more renewals: still reported only once
        clashes = [
            r.getMessage() for r in caplog.records if "under this elector's id" in r.getMessage()
        ]
        # Once per elector and clashing incarnation. (On a loaded machine the
        # lease may pass from one twin to the other meanwhile; then each
        # reports the other, once.)
        assert len(clashes) == len(set(clashes)) and len(clashes) <= 2, clashes
        mine = [m for m in clashes if f"(its nonce {leader.nonce}, ours {other.nonce})" in m]
        assert len(mine) == 1 and "'twin'" in mine[0], clashes
    finally:
        await stop_all(a, b)


class BarrierOnFirstRead(PassThroughStorage):
    """Holds the first read of each of ``parties`` electors until all have sent one."""

    def __init__(self, inner: Storage, parties: int) -> None:
        super().__init__(inner)
        self.parties = parties
        self.arrived = 0
        self.all_in = asyncio.Event()

    async def get(self, key: str) -> tuple[bytes, str]:
        if not self.all_in.is_set():
            self.arrived += 1
            if self.arrived >= self.parties:
                self.all_in.set()
            await asyncio.wait_for(self.all_in.wait(), 5)
        return await self.inner.get(key)


class LateDelivery(PassThroughStorage):
    """A storage that delivers a dead predecessor's delayed write just before
    the new process's first create, as a network that parked it would."""

    def __init__(self, inner: Storage, late_body: bytes) -> None:
        super().__init__(inner)
        self.late_body = late_body
        self.delivered = False
        self.conflicts = 0

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        if not self.delivered and etag == "":
            self.delivered = True
            await self.inner.put_if_match(key, self.late_body, "")
        try:
            return await self.inner.put_if_match(key, body, etag)
        except PreconditionFailed:
            self.conflicts += 1
            raise


async def test_restarted_node_does_not_adopt_its_dead_predecessors_write(
    storage: Storage,
) -> None:
    """The predecessor's create (same id, term 1, renewal 1) lands late: not ours."""
    late = orjson.dumps(
        {
            "leaderID": "node-1",
            "leaderAddr": "127.0.0.1:1",
            "lastUpdated": "2026-11-30T10:00:00.000000Z",
            "term": 1,
            "leaseMs": int(T * 1000),
            "renewal": 1,
            "nonce": "dead0000dead0000",
            "v": 1,
        }
    )
    wrapped = LateDelivery(storage, late)
    elector = Elector(fast_config("node-1"), wrapped)
    await elector.start()
    try:
        await wait_until(lambda: wrapped.conflicts >= 1, 5, "the create never conflicted")
        await wait_until(
            lambda: elector._campaign.obs_nonce == "dead0000dead0000",
            5,
            "the elector never read the late record",
        )
        seen_at = monotonic_ns()
        assert not elector.is_leader(), "adopted a write of another incarnation"
        # The predecessor is dead: the lock is taken once its lease ran out,
        # with a new term, and not earlier.
        await asyncio.wait_for(elector.wait_for_leadership(), 5)
        assert monotonic_ns() - seen_at >= T * 1e9 * 0.9
        assert elector.term == 2
        assert elector.status().duplicate_id_nonce == ""  # a dead predecessor is no clash
    finally:
        await elector.stop()


async def test_every_start_is_a_new_incarnation(storage: Storage) -> None:
    elector = Elector(fast_config("again"), storage)
    await elector.start()
    first = elector.nonce
    await elector.stop()
    await elector.start()
    try:
        assert elector.nonce != first
        await asyncio.wait_for(elector.wait_for_leadership(), 5)
        body, _ = await storage.get("leader.json")
        assert orjson.loads(body)["nonce"] == elector.nonce
    finally:
        await elector.stop()


# --------------------------------------------------------------------------- #
# Rule 2: one snapshot of the lease per write
# --------------------------------------------------------------------------- #


class GatedPuts(PassThroughStorage):
    """Holds every PUT at a gate the test opens; remembers bodies and send times."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = asyncio.Event()
        self.sent: list[tuple[int, dict[str, Any]]] = []
        self.one_at_a_time = False  # each opening of the gate lets one PUT through

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        self.sent.append((monotonic_ns(), orjson.loads(body)))
        if not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
            if self.one_at_a_time:
                self.gate.clear()
                self.waiting.clear()
        return await self.inner.put_if_match(key, body, etag)


async def test_update_config_during_a_write_keeps_that_writes_lease(storage: Storage) -> None:
    gated = GatedPuts(storage)
    cfg = fast_config("snap", storage_timeout=2.0)
    elector = Elector(cfg, gated)
    await elector.start()
    try:
        await asyncio.wait_for(elector.wait_for_leadership(), 5)
        gated.gate.clear()
        await asyncio.wait_for(gated.waiting.wait(), 5)  # a renewal is in flight
        sent_at, body = gated.sent[-1]
        assert body["leaseMs"] == 300
        elector.update_config(cfg.copy(leader_timeout=30.0, safety_margin=0.03))
        # Let that renewal through and hold the next write, which comes F = 30 ms
        # later with the new lease: the deadline seen in between is the renewal's.
        writes = len(gated.sent)
        gated.one_at_a_time = True
        gated.gate.set()
        await asyncio.wait_for(gated.waiting.wait(), 5)
        assert len(gated.sent) == writes + 1
        # The renewal's lease is the 300 ms it advertised, not the new 30 s (and if
        # a loaded box made it land late, the elector stepped down with no more).
        deadline = elector._campaign.deadline_ns
        assert deadline <= sent_at + 300 * MS, (deadline - sent_at) / MS
        # The next write advertises (and earns) the new lease.
        assert gated.sent[-1][1]["leaseMs"] == 30_000
        gated.one_at_a_time = False
        gated.gate.set()
        await wait_until(
            lambda: elector._campaign.deadline_ns > gated.sent[-1][0] + 20_000 * MS,
            5,
            "the new lease was never earned",
        )
    finally:
        await elector.stop()


# --------------------------------------------------------------------------- #
# Rule 6: guarded leader work
# --------------------------------------------------------------------------- #


async def test_run_while_leader_never_resumes_work_after_the_lease(storage: Storage) -> None:
    """A step overruns the lease (CPU starvation); the next step must not start."""
    elector = Elector(fast_config("worker"), storage)
    await elector.start()
    steps: list[int] = []

    async def work() -> None:
        while True:
            steps.append(elector.slot.lease_remaining_ns())
            if len(steps) == 5:
                time.sleep(T + 0.1)  # this step runs past the deadline: allowed to finish
            await asyncio.sleep(0)

    try:
        with pytest.raises(LeadershipLost):
            await asyncio.wait_for(elector.run_while_leader(work), 10)
        assert len(steps) == 5, f"{len(steps) - 5} step(s) started after the lease ended"
        assert all(left > 0 for left in steps), steps
    finally:
        await elector.stop()


async def test_run_while_leader_returns_the_result_while_leading(storage: Storage) -> None:
    elector = Elector(fast_config("returns"), storage)
    await elector.start()

    async def work() -> int:
        await asyncio.sleep(0.01)
        return elector.fence()

    try:
        assert await asyncio.wait_for(elector.run_while_leader(work), 5) == 1
    finally:
        await elector.stop()


async def test_fence_inside_a_leadership_block(storage: Storage) -> None:
    elector = Elector(fast_config("fenced"), storage)
    await elector.start()
    try:
        async with elector.leadership() as term:
            assert elector.fence() == term == elector.fence(term)
            time.sleep(T + 0.1)  # starved past the lease before the side effect
            with pytest.raises(LeadershipLost):
                elector.fence(term)
    except LeadershipLost:
        pass  # the block may also be cancelled at its next scheduling point
    finally:
        await elector.stop()
    with pytest.raises(LeadershipLost):
        elector.fence()


async def test_fence_refuses_an_older_term(storage: Storage) -> None:
    elector = Elector(fast_config("terms"), storage)
    await elector.start()
    try:
        await asyncio.wait_for(elector.wait_for_leadership(), 5)
        term = elector.fence()
        with pytest.raises(LeadershipLost, match="term"):
            elector.fence(term - 1)
    finally:
        await elector.stop()
