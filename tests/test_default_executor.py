"""Every Elector runs on an executor: without ``scheduler=``, its loop's default one.

fastelect 0.1 gave each plain Elector a task, events, timers and a private
one-slot table (a memory mapping each); 60,000 of them collapsed. Now they
share their event loop's default Scheduler and pooled tables.
"""

from __future__ import annotations

import asyncio
import gc

import pytest

from elector_helpers import fast_config, wait_until
from fastelect import Elector, MemoryStorage
from fastelect import scheduler as scheduler_module
from fastelect._schedule_policy import SchedulePolicy
from fastelect._slot_pool import POOL_SLOTS
from fastelect.scheduler import Scheduler, default_scheduler


@pytest.mark.asyncio
async def test_electors_without_a_scheduler_share_their_loops_default_one() -> None:
    storage = MemoryStorage()
    electors = [Elector(fast_config(f"n{i}", f"k{i}.json"), storage) for i in range(3)]
    own = Scheduler()
    apart = Elector(fast_config("apart", "apart.json"), storage, scheduler=own)
    for e in [*electors, apart]:
        await e.start()
    try:
        shared = default_scheduler()
        assert shared is default_scheduler(), "one per loop"
        assert shared.electors == 3 and own.electors == 1
        await wait_until(lambda: all(e.is_leader() for e in [*electors, apart]), 5, "all lead")
        await wait_until(lambda: shared.stats.renewals > 0, 5, "the shared scheduler renews")
    finally:
        for e in [*electors, apart]:
            await e.stop()
    assert shared.electors == 0
    own.close()


def test_a_loops_default_scheduler_goes_with_its_loop() -> None:
    async def lead_once() -> None:
        e = Elector(fast_config("once"), MemoryStorage())
        await e.start()
        await asyncio.wait_for(e.wait_for_leadership(), 5)
        await e.stop()

    gc.collect()
    before = len(scheduler_module._defaults)
    for _ in range(5):
        asyncio.run(lead_once())
    gc.collect()
    assert len(scheduler_module._defaults) == before, "closed loops kept alive by their schedulers"


def test_electors_without_a_table_share_pooled_tables() -> None:
    """A private table per elector was a memory mapping per election."""
    storage = MemoryStorage()
    electors = [Elector(fast_config("pool", f"p{i}.json"), storage) for i in range(300)]
    tables = {id(e._table) for e in electors}
    assert len(tables) <= 2, f"{len(tables)} tables for 300 electors ({POOL_SLOTS} slots each)"
    assert len({(id(e._table), e.slot.election) for e in electors}) == 300  # one slot each


@pytest.mark.asyncio
async def test_an_executor_that_fails_ends_its_electors_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug in the scheduler itself must not leave its electors answering
    "leader" undriven until their leases run out (issue 19: never silently)."""
    scheduler = Scheduler()
    storage = MemoryStorage()
    electors = [
        Elector(
            fast_config(f"f{i}", f"f{i}.json", leader_timeout=5.0), storage, scheduler=scheduler
        )
        for i in range(2)
    ]
    for e in electors:
        await e.start()
    await wait_until(lambda: all(e.is_leader() for e in electors), 5, "all lead")

    def broken(self: SchedulePolicy[Elector], now: int) -> None:
        raise RuntimeError("boom in the policy")

    monkeypatch.setattr(SchedulePolicy, "take_due", broken)
    scheduler._kick(electors[0])  # wake it now
    await wait_until(lambda: not any(e.running for e in electors), 5, "the electors ran on")
    assert not any(e.is_leader() for e in electors), "stepped down at once, not at the deadline"
    assert all("boom in the policy" in e.status().failure for e in electors)
    for e in electors:
        with pytest.raises(RuntimeError, match="boom in the policy"):
            await e.stop()
