"""Hooks are bounded and cannot starve the process (issue 19, item 3; rule 9).

Found in 0.1: sync hooks ran on the loop's default executor.  Six hung hooks
filled it (six workers on a 2-core box), and with it everything else that
used it: leader work ran into the next leadership, the node never led again,
``on_lose`` ran for 5 of 6 leaderships.  Now sync hooks run on threads of the
elector's own, the default executor is never touched, and no hook of a
leadership starts after the next leadership began.

Each test runs an unscheduled elector and one driven by a ``Scheduler``: both
drivers hold a campaign back while the last leadership's hooks run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.elector_helpers import FaultyStorage, fast_config
from tests.helpers import wait_until

from fastelect import Elector, FileStorage, LeadershipLost
from fastelect._hook_threads import HookThreads
from fastelect.scheduler import Scheduler

DRIVERS = ["plain", "scheduled"]


class NoDefaultExecutor(concurrent.futures.ThreadPoolExecutor):
    """Installed as the loop's default executor: any use of it is counted and refused."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.submitted: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.submitted.append(repr(fn))
        raise RuntimeError("fastelect must not use the loop's default executor")


def _scheduler(driver: str) -> Scheduler | None:
    return Scheduler() if driver == "scheduled" else None


@pytest.mark.asyncio
@pytest.mark.parametrize("driver", DRIVERS)
async def test_six_hung_sync_hooks_starve_nothing_and_the_node_leads_again(
    tmp_path: Path, driver: str
) -> None:
    executor = NoDefaultExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    storage = FileStorage(tmp_path)
    scheduler = _scheduler(driver)
    gate = threading.Event()  # never set until teardown: each on_acquire hangs
    seen: list[tuple[str, int, bool]] = []
    calm_lost = 0

    def hang() -> None:
        seen.append(("acquire", hung.term, hung.is_leader()))
        gate.wait(60)

    def lost() -> None:
        seen.append(("lose", hung.term, hung.is_leader()))

    async def calm_lost_it() -> None:
        nonlocal calm_lost
        calm_lost += 1

    # Leases far longer than the hooks' bound, so a loaded machine's stalls
    # end no leadership: each one here ends by its hook's failure alone, and
    # the neighbour would lose only if its I/O waited behind the hung hooks.
    # (The hung node waits a lease after each release before it campaigns
    # again: 0.6 s keeps six rounds short.)
    hung = Elector(
        fast_config(
            "hung",
            "hung.json",
            hook_timeout=0.1,
            on_acquire=hang,
            on_lose=lost,
            leader_timeout=0.6,
            storage_timeout=0.2,
        ),
        storage,
        scheduler=scheduler,
    )
    calm = Elector(
        fast_config(
            "calm", "calm.json", on_lose=calm_lost_it, leader_timeout=1.5, storage_timeout=0.5
        ),
        storage,
        scheduler=scheduler,
    )
    try:
        await calm.start()
        await asyncio.wait_for(calm.wait_for_leadership(), 10)
        await hung.start()
        # Each leadership: on_acquire hangs, fails at hook_timeout (rule 9: the
        # node releases), on_lose runs, and the node campaigns and leads again.
        await wait_until(
            lambda: sum(kind == "lose" for kind, _, _ in seen) >= 6,
            30,
            f"six leaderships with a hung on_acquire did not all end: {seen}",
        )
        assert executor.submitted == []
        six = seen[:12]
        assert [kind for kind, _, _ in six] == ["acquire", "lose"] * 6, seen
        terms = [term for _, term, _ in six]
        assert terms[0::2] == terms[1::2], f"on_lose ran for another leadership: {seen}"
        assert terms[0::2] == sorted(set(terms[0::2])), f"terms did not grow: {seen}"
        # on_acquire ran while leading; on_lose once it ended, before the next began.
        assert all(leading == (kind == "acquire") for kind, _, leading in six), seen
        # Six threads are still stuck in the hooks, and nothing else waited for them:
        # the neighbour on the same store never lost a renewal.
        assert hung._hook_threads is not None and hung._hook_threads.running >= 6
        assert calm.is_leader() and calm_lost == 0
        body, _ = await storage.get("calm.json")
        assert b'"calm"' in body
    finally:
        gate.set()
        await hung.stop()
        await calm.stop()
        if scheduler is not None:
            scheduler.close()
        await storage.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("driver", DRIVERS)
async def test_no_hook_of_a_leadership_starts_after_the_next_one_began(
    tmp_path: Path, driver: str
) -> None:
    """The lease runs out while on_acquire still hangs: on_lose is queued
    behind it until hook_timeout.  The node could win the record back long
    before that; it waits, so on_lose runs for the leadership that ended
    and not in the middle of the next one."""
    storage = FaultyStorage(FileStorage(tmp_path))
    scheduler = _scheduler(driver)
    gate = threading.Event()
    seen: list[tuple[str, int, bool, float]] = []
    fenced: list[int] = []

    def slow_acquire() -> None:
        seen.append(("acquire", node.term, node.is_leader(), time.monotonic()))
        term = node.fence()  # a sync hook may fence its side effects
        if len(seen) > 1:
            return
        # The first leadership's hook outlives its lease, and can tell.
        end = time.monotonic() + 10
        while node.is_leader() and time.monotonic() < end:
            time.sleep(0.005)
        try:
            node.fence(term)
        except LeadershipLost:
            fenced.append(term)
        gate.wait(60)

    def lost() -> None:
        seen.append(("lose", node.term, node.is_leader(), time.monotonic()))

    # T = 300 ms; the first on_acquire outlives it (and its lease) by far.
    config = fast_config("slow", hook_timeout=1.5, on_acquire=slow_acquire, on_lose=lost)
    node = Elector(config, storage, scheduler=scheduler)
    try:
        await node.start()
        await asyncio.wait_for(node.wait_for_leadership(), 10)
        first = node.term
        storage.fail_puts = True  # renewals fail: the lease runs out
        await wait_until(lambda: not node.is_leader(), 5, "the lease never ran out")
        lost_at = time.monotonic()
        storage.fail_puts = False
        await wait_until(lambda: len(seen) >= 3, 10, f"the node never led again: {seen}")
        (_, t1, led1, _), (kind2, t2, led2, at2), (kind3, t3, led3, _) = seen[:3]
        assert (kind2, kind3) == ("lose", "acquire"), seen
        assert t1 == t2 == first and led1, seen
        assert not led2, f"on_lose of term {first} ran while leading term {t2}: {seen}"
        assert t3 > first and led3, seen
        assert fenced == [first], "fence() inside the late hook did not raise LeadershipLost"
        # on_lose waited for the hung on_acquire's timeout, and the campaign waited for it.
        assert at2 - lost_at > 0.5, seen
    finally:
        gate.set()
        await node.stop()
        if scheduler is not None:
            scheduler.close()
        await storage.close()


@pytest.mark.asyncio
async def test_hooks_past_the_bound_fail_at_once_and_threads_come_back() -> None:
    threads = HookThreads("test", max_running=3)
    gate = threading.Event()
    try:
        stuck = [asyncio.ensure_future(threads.run(gate.wait, 60)) for _ in range(3)]
        await wait_until(lambda: threads.running == 3, 5, "the hooks did not start")
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="3 earlier sync hooks of test"):
            await threads.run(lambda: "late")
        assert time.monotonic() - started < 0.5
        gate.set()
        assert await asyncio.gather(*stuck) == [True] * 3
        assert threads.running == 0
        assert await threads.run(lambda: "served") == "served"
    finally:
        gate.set()


@pytest.mark.asyncio
async def test_a_hook_thread_keeps_the_callers_context_and_raises_its_error() -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var")
    var.set("caller")
    threads = HookThreads("test")
    assert await threads.run(var.get) == "caller"

    def fail() -> None:
        raise ValueError("hook failed")

    with pytest.raises(ValueError, match="hook failed"):
        await threads.run(fail)
    assert threads.running == 0
