"""A background task that fails ends the elector loudly (issue 19, item 1).

fastelect 0.1's campaign task died silently on an ``OverflowError``: the node
kept answering "leader" until its lease ran out, and ``stop()`` only logged.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from elector_helpers import fast_config, wait_until
from fastelect import Elector, LifecycleError, MemoryStorage, _core
from fastelect.record import encode_record

pytestmark = pytest.mark.asyncio


async def test_a_failed_campaign_steps_down_logs_and_is_raised_by_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A step that raises outside the per-step guard (here the slot's heartbeat,
    given a watchdog past int64: 0.1's OverflowError) ends that elector."""
    lost: list[int] = []
    storage = MemoryStorage()
    # A long lease, so "False" below cannot come from the lease running out.
    config = fast_config(
        "breaks", leader_timeout=5.0, frequent_interval=0.03, on_lose=lambda: lost.append(1)
    )
    elector = Elector(config, storage)
    bystander = Elector(fast_config("bystander", leader_timeout=5.0), MemoryStorage())
    watchdog = elector._watchdog
    await elector.start()
    await bystander.start()
    try:
        await asyncio.wait_for(elector.wait_for_leadership(), 5)
        with caplog.at_level(logging.ERROR, logger="fastelect"):
            elector._watchdog = 1 << 70
            await wait_until(lambda: not elector.running, 5, "the campaign never died")
        # At once, not at the deadline still seconds away.
        assert elector._campaign.deadline_ns > _core.monotonic_ns() + 1_000_000_000
        assert not elector.is_leader()
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert errors and errors[0].exc_info is not None, "no ERROR with a traceback"
        assert "OverflowError" in errors[0].getMessage()
        assert "OverflowError" in elector.status().failure
        with pytest.raises(LifecycleError, match="failed with OverflowError"):
            await elector.wait_for_leadership()
        # The scheduler they share drives the others on.
        assert bystander.running
        await asyncio.wait_for(bystander.wait_for_leadership(), 5)
    finally:
        elector._watchdog = watchdog
        await bystander.stop()
        with pytest.raises(OverflowError):
            await elector.stop()
    assert lost == [1]  # on_lose once for the leadership that ended
    assert elector.status().failure == ""
    await elector.stop()  # a second stop is clean


async def test_a_record_lease_far_longer_than_ours_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = MemoryStorage()
    etag = await storage.put_if_match(
        "leader.json", encode_record("go-node", "10.0.0.1:1", time.time_ns(), 7, 5000, 1, "n1"), ""
    )
    elector = Elector(fast_config("py"), storage)  # T = 0.3 s: 5 s is more than 10 x T
    with caplog.at_level(logging.WARNING, logger="fastelect"):
        await elector.start()
        try:
            for renewal in range(2, 6):  # the holder renews: one record, many etags
                await asyncio.sleep(0.05)
                body = encode_record(
                    "go-node", "10.0.0.1:1", time.time_ns(), 7, 5000, renewal, "n1"
                )
                etag = await storage.put_if_match("leader.json", body, etag)
            assert elector._campaign.cycles >= 5
        finally:
            await elector.stop()
    warned = [r.getMessage() for r in caplog.records if "more than 10x ours" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "blocked for up to 5.000 s" in warned[0]
