"""The Elector against real storages: memory, file and a real S3 server (moto).

Timings are short (F = 30 ms, T = 300 ms) so each test spans a few leases.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from elector_helpers import FaultyStorage, crash, fast_config, leaders, wait_until
from fastelect import (
    BucketNotFound,
    Elector,
    FileStorage,
    LeadershipLost,
    LeadershipTable,
    MemoryStorage,
    S3Storage,
    StorageAuthError,
    attach,
)
from fastelect._core import monotonic_ns
from fastelect.record import encode_record
from fastelect.storage import Storage
from helpers import S3Auth

pytestmark = pytest.mark.asyncio

F, T = 0.03, 0.3
# How long a takeover may take beyond the protocol's own bound on a busy box.
SLACK = 0.4


async def start_all(electors: list[Elector]) -> None:
    await asyncio.gather(*(e.start() for e in electors))


async def stop_all(electors: list[Elector]) -> None:
    await asyncio.gather(*(e.stop() for e in electors), return_exceptions=True)


async def test_single_node_becomes_leader(storage: Storage) -> None:
    elector = Elector(fast_config("solo"), storage)
    assert not elector.is_leader()
    await elector.start()
    try:
        await asyncio.wait_for(elector.wait_for_leadership(), 5)
        status = elector.status()
        assert status.is_leader and status.leader_id == "solo" and status.term == 1
        assert status.lockfile_path == "leader.json"
        assert elector.leader_id == "solo"
    finally:
        await elector.stop()
    assert not elector.is_leader()
    # Stop released the record: it keeps id and term, with the zero time.
    body, _ = await storage.get("leader.json")
    assert b'"lastUpdated":"0001-01-01T00:00:00Z"' in body
    assert b'"term":1' in body


async def test_five_electors_agree_on_exactly_one_leader(storage: Storage) -> None:
    electors = [Elector(fast_config(f"node-{i}"), storage) for i in range(5)]
    await start_all(electors)
    try:
        await wait_until(lambda: len(leaders(electors)) == 1, 5, "no leader elected")
        # Watch for a while: never two leaders, and everyone learns who leads.
        end = time.monotonic() + 3 * T
        while time.monotonic() < end:
            assert len(leaders(electors)) <= 1, [e.leader_id for e in electors]
            await asyncio.sleep(0.002)
        leader = leaders(electors)[0]
        await wait_until(
            lambda: all(e.leader_id == leader.leader_id for e in electors),
            5,
            "followers disagree on the leader",
        )
        assert {e.term for e in electors} == {leader.term}
    finally:
        await stop_all(electors)


async def test_graceful_stop_hands_over_within_one_poll(storage: Storage) -> None:
    electors = [Elector(fast_config(f"node-{i}"), storage) for i in range(3)]
    await start_all(electors)
    try:
        await wait_until(lambda: len(leaders(electors)) == 1, 5, "no leader elected")
        old = leaders(electors)[0]
        rest = [e for e in electors if e is not old]
        await old.stop()
        stopped = time.monotonic()
        took = await wait_until(lambda: len(leaders(rest)) == 1, 5, "nobody took over") - stopped
        # Released records are taken at the next poll: within F plus I/O time.
        assert took < F + SLACK, f"takeover after release took {took:.3f}s"
        assert leaders(rest)[0].term == old.term + 1
    finally:
        await stop_all(electors)


async def test_crash_takeover_after_the_lease_never_before(storage: Storage) -> None:
    electors = [Elector(fast_config(f"node-{i}"), storage) for i in range(3)]
    await start_all(electors)
    try:
        await wait_until(lambda: len(leaders(electors)) == 1, 5, "no leader elected")
        old = leaders(electors)[0]
        rest = [e for e in electors if e is not old]
        await crash(old)
        crashed = monotonic_ns()
        old_deadline = old.slot.status()["deadline_ns"]
        await wait_until(lambda: len(leaders(rest)) == 1, 5, "nobody took over")
        new = leaders(rest)[0]
        won_at = new.slot.status()["leader_since_mono_ns"]
        # Never before the crashed leader's lease ended (it may still be running!).
        assert won_at > old_deadline, (won_at - old_deadline) / 1e9
        assert (won_at - crashed) / 1e9 < T + F + SLACK
        assert new.term == old.term + 1
        # The crashed leader's slot stopped answering by itself.
        assert not old.is_leader()
    finally:
        await stop_all(electors)


async def test_terms_strictly_increase_across_leaderships() -> None:
    storage = MemoryStorage()
    electors = [Elector(fast_config(f"node-{i}"), storage) for i in range(3)]
    terms: list[int] = []
    await start_all(electors)
    try:
        for _ in range(4):
            await wait_until(lambda: len(leaders(electors)) == 1, 5, "no leader elected")
            leader = leaders(electors)[0]
            terms.append(leader.term)
            await leader.stop()
            await leader.start()  # rule 7: campaign again after losing
        assert terms == sorted(set(terms)), terms
        assert len(terms) == 4
    finally:
        await stop_all(electors)


async def test_blocked_loop_cannot_keep_a_failing_leader_leading() -> None:
    storage = FaultyStorage(MemoryStorage())
    elector = Elector(fast_config("stuck"), storage)
    await elector.start()
    try:
        await asyncio.wait_for(elector.wait_for_leadership(), 5)
        storage.fail_puts = True
        deadline = elector.slot.status()["deadline_ns"]
        seen_false_at: list[int] = []
        blocking = threading.Event()

        def watch() -> None:
            while elector.is_leader():
                pass
            seen_false_at.append(monotonic_ns())
            assert blocking.is_set()

        watcher = threading.Thread(target=watch)
        watcher.start()
        # Block the event loop well past the lease: no Python code of the elector runs.
        blocking.set()
        time.sleep(T * 1.5)
        unblocked = monotonic_ns()
        watcher.join(5)
        assert seen_false_at, "is_leader() never turned False"
        # The compiled check turned False at the deadline, while the loop was
        # still blocked (allowance: the OS scheduling the watcher thread).
        late_ms = (seen_false_at[0] - deadline) / 1e6
        assert 0 <= late_ms < 50, late_ms
        assert seen_false_at[0] < unblocked
        # Deadline could only come from a successful renewal; none succeeded since.
        assert elector.slot.status()["deadline_ns"] == deadline
    finally:
        storage.fail_puts = False
        await elector.stop()


async def test_failing_renewals_end_leadership_and_run_on_lose_once() -> None:
    storage = FaultyStorage(MemoryStorage())
    lost: list[int] = []
    acquired: list[int] = []
    elector = Elector(
        fast_config(
            "flaky",
            on_acquire=lambda: acquired.append(1),
            on_lose=lambda: lost.append(1),
        ),
        storage,
    )
    await elector.start()
    try:
        await asyncio.wait_for(elector.wait_for_leadership(), 5)
        storage.fail_puts = True
        await wait_until(lambda: not elector.is_leader(), 2, "leader kept its lease")
        await wait_until(lambda: lost == [1], 2, "on_lose did not run")
        storage.fail_puts = False
        # Losing is not the end: the elector takes the lock again once it may.
        await asyncio.wait_for(elector.wait_for_leadership(), 5)
        await wait_until(lambda: acquired == [1, 1], 2, "on_acquire did not run again")
    finally:
        await elector.stop()
    await wait_until(lambda: lost == [1, 1], 2, "on_lose not run exactly once per leadership")
    await asyncio.sleep(0.05)
    assert lost == [1, 1] and acquired == [1, 1]


async def test_on_acquire_failure_releases_and_steps_down(storage: Storage) -> None:
    calls: list[str] = []
    lost: list[str] = []

    async def bad_acquire() -> None:
        calls.append("bad")
        raise RuntimeError("cannot start leader work")

    bad = Elector(
        fast_config("bad", on_acquire=bad_acquire, on_lose=lambda: lost.append("bad")), storage
    )
    await bad.start()
    good = Elector(fast_config("good"), storage)
    try:
        await wait_until(lambda: calls == ["bad"], 5, "on_acquire never ran")
        await wait_until(lambda: not bad.is_leader(), 2, "failed on_acquire kept leadership")
        await good.start()
        # Released, not abandoned: the other node takes over without waiting a lease.
        started = time.monotonic()
        await asyncio.wait_for(good.wait_for_leadership(), 5)
        assert time.monotonic() - started < T
        await wait_until(
            lambda: lost == ["bad"], 2, "on_lose did not run for the failed leadership"
        )
    finally:
        await stop_all([bad, good])


async def test_hanging_hook_is_bounded_and_elector_keeps_renewing() -> None:
    storage = MemoryStorage()
    calls: list[str] = []

    def slow_new_leader(leader: str) -> None:
        calls.append(leader)
        time.sleep(0.5)  # far past hook_timeout; runs in a worker thread

    elector = Elector(fast_config("slow", on_new_leader=slow_new_leader, hook_timeout=0.1), storage)
    await elector.start()
    try:
        await asyncio.wait_for(elector.wait_for_leadership(), 5)
        term = elector.term
        await asyncio.sleep(2 * T)
        assert elector.is_leader() and elector.term == term
        assert calls == ["slow"]
    finally:
        await elector.stop()


async def test_on_acquire_that_times_out_counts_as_failed() -> None:
    storage = MemoryStorage()
    started = asyncio.Event()

    async def hangs() -> None:
        started.set()
        await asyncio.sleep(3600)

    elector = Elector(fast_config("hang", on_acquire=hangs, hook_timeout=0.05), storage)
    await elector.start()
    try:
        await asyncio.wait_for(started.wait(), 5)
        # Bounded by hook_timeout, then released like a raising hook (rule 8).
        await wait_until(lambda: not elector.is_leader(), 2, "timed-out on_acquire kept leading")
        body, _ = await storage.get("leader.json")
        assert b"0001-01-01T00:00:00Z" in body
    finally:
        await elector.stop()


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\x00\xffnot json", id="binary"),
        pytest.param(b'{"leaderID": 42, "lastUpdated": "x"}', id="wrong-types"),
        pytest.param(b"[1, 2, 3]", id="not-an-object"),
        pytest.param(b'{"leaderID": "x", "lastUpdated": "yesterday"}', id="bad-time"),
        pytest.param(b" " * (64 * 1024 + 10), id="oversized"),
    ],
)
async def test_garbage_record_is_replaced_only_after_a_lease(
    storage: Storage, garbage: bytes
) -> None:
    await storage.put_if_match("leader.json", garbage, "")
    elector = Elector(fast_config("cleaner"), storage)
    started = time.monotonic()
    await elector.start()
    try:
        await asyncio.wait_for(elector.wait_for_leadership(), 5)
        waited = time.monotonic() - started
        assert waited >= T, f"took over garbage after {waited:.3f}s, before a lease passed"
        counters = elector.slot.status()["counters"]
        assert counters["record_errors"] >= 2
        assert elector.term == 1
    finally:
        await elector.stop()


async def test_foreign_record_with_longer_lease_is_respected() -> None:
    storage = MemoryStorage()
    body = encode_record("go-node", "10.0.0.1:8443", time.time_ns(), 41, 900, 1)
    await storage.put_if_match("leader.json", body, "")
    elector = Elector(fast_config("py"), storage)
    started = time.monotonic()
    await elector.start()
    try:
        await asyncio.wait_for(elector.wait_for_leadership(), 5)
        assert time.monotonic() - started >= 0.9  # the record's leaseMs, not our 300 ms
        assert elector.term == 42
    finally:
        await elector.stop()


async def test_leadership_scope_is_cancelled_when_leadership_ends() -> None:
    storage = FaultyStorage(MemoryStorage())
    elector = Elector(fast_config("scoped"), storage)
    await elector.start()
    try:
        with pytest.raises(LeadershipLost):
            async with elector.leadership() as term:
                assert term == 1 and elector.is_leader()
                # Let several renewals move the deadline first: the cancellation
                # must follow the lease, not the deadline at acquisition.
                first = elector.slot.status()["deadline_ns"]
                await wait_until(
                    lambda: elector.slot.status()["deadline_ns"] > first + int(T * 1e9),
                    5,
                    "the leader did not renew",
                )
                storage.fail_puts = True
                await asyncio.sleep(10)
        cancelled = monotonic_ns()
        # The deadline the failed renewals left behind: the lease's real end.
        deadline = elector.slot.status()["deadline_ns"]
        # Cancelled at the deadline (rule 6), not after a later loop cycle.
        assert 0 <= (cancelled - deadline) / 1e9 < 0.05, (cancelled - deadline) / 1e9
        assert not elector.is_leader()
        storage.fail_puts = False
        result = await asyncio.wait_for(
            elector.run_while_leader(lambda: asyncio.sleep(0, "done")), 5
        )
        assert result == "done"
    finally:
        await elector.stop()


async def test_wait_for_next_election_reports_changes() -> None:
    storage = MemoryStorage()
    a = Elector(fast_config("a"), storage)
    b = Elector(fast_config("b"), storage)
    await a.start()
    try:
        await asyncio.wait_for(a.wait_for_leadership(), 5)
        await b.start()
        first = await asyncio.wait_for(b.wait_for_election(), 5)
        assert first.leader_id == "a" and not first.is_leader
        waiter = asyncio.ensure_future(b.wait_for_next_election(since=first))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await a.stop()
        changed = await asyncio.wait_for(waiter, 5)
        assert changed.leader_id in ("", "b", "a")
        final = await asyncio.wait_for(
            b.wait_for_next_election(since=first)
            if not b.is_leader()
            else asyncio.sleep(0, b.status()),
            5,
        )
        await wait_until(b.is_leader, 5, "b never led")
        assert final.term >= first.term
    finally:
        await stop_all([a, b])


async def test_start_twice_raises_and_stop_twice_is_safe() -> None:
    from fastelect import LifecycleError

    elector = Elector(fast_config("twice"), MemoryStorage())
    await elector.start()
    with pytest.raises(LifecycleError):
        await elector.start()
    await elector.stop()
    await elector.stop()


async def test_missing_bucket_fails_start_with_a_typed_error(s3_server: tuple[str, str]) -> None:
    storage = S3Storage("no-such-bucket-here", endpoint_url=s3_server[0], region_name="us-east-1")
    elector = Elector(fast_config("x"), storage)
    try:
        with pytest.raises(BucketNotFound, match="no-such-bucket-here"):
            await elector.start()
        assert not elector.running
    finally:
        await storage.close()


async def test_wrong_credentials_fail_start_with_a_typed_error(s3_auth: S3Auth) -> None:
    key, _ = s3_auth.denied
    storage = S3Storage(
        s3_auth.bucket,
        endpoint_url=s3_auth.url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key="definitely-wrong",
    )
    elector = Elector(fast_config("x"), storage)
    try:
        with pytest.raises(StorageAuthError):
            await elector.start()
    finally:
        await storage.close()


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from fastelect import Elector, ElectorConfig, FileStorage, LeadershipTable

    async def main():
        table = LeadershipTable(sys.argv[2], slots=1)
        cfg = ElectorConfig("leader.json", "child", frequent_interval=0.03,
                            infrequent_interval=0.03, leader_timeout=0.3)
        elector = Elector(cfg, FileStorage(sys.argv[1]), table=table)
        await elector.start()
        await elector.wait_for_leadership()
        print("LEADER", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


async def test_sigkilled_leader_process_is_replaced_only_after_its_lease(tmp_path: Path) -> None:
    """A real process leads on FileStorage, is SIGKILLed; we take over after its lease."""
    table_name = f"t{os.getpid()}k"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path), table_name],
        stdout=subprocess.PIPE,
        text=True,
    )
    storage = FileStorage(tmp_path)
    follower = Elector(fast_config("parent"), storage)
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 10)
        assert line.strip() == "LEADER"
        reader = attach(table_name)
        assert reader.is_leader("default")
        await follower.start()
        await asyncio.sleep(3 * F)
        assert not follower.is_leader()
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        killed = monotonic_ns()
        # The dead process's table still holds its exact lease deadline.
        old_deadline = reader.status("default")["deadline_ns"]
        await asyncio.wait_for(follower.wait_for_leadership(), 5)
        won = follower.slot.status()["leader_since_mono_ns"]
        assert won > old_deadline
        assert (won - killed) / 1e9 < T + F + SLACK
        assert not reader.is_leader("default")
        assert reader.stale
        reader.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
        if child.stdout is not None:
            child.stdout.close()
        await follower.stop()
        # The dead owner never unlinked its segment; a new table of that name replaces it.
        LeadershipTable(table_name).close()


async def test_elector_publishes_into_a_named_table_others_can_attach() -> None:
    name = f"t{os.getpid()}p"
    with LeadershipTable(name, slots=2) as table:
        elector = Elector(fast_config("pub"), MemoryStorage(), table=table, election="cluster")
        await elector.start()
        try:
            reader = attach(name)
            await asyncio.wait_for(elector.wait_for_leadership(), 5)
            assert reader.is_leader("cluster")
            assert not reader.is_leader("shard")
            status = reader.status("cluster")
            assert status is not None
            assert (status["leader_id"], status["term"], status["role"]) == ("pub", 1, "leader")
        finally:
            await elector.stop()
        assert not reader.is_leader("cluster")
    assert not os.path.exists(f"/dev/shm/fastelect.{name}")


def _unused(_: Callable[..., object]) -> None:  # keeps linters quiet about helpers
    return None


async def test_update_config_applies_timings_but_not_identity() -> None:
    from fastelect import ConfigError

    storage = MemoryStorage()
    elector = Elector(fast_config("tune"), storage)
    await elector.start()
    try:
        await asyncio.wait_for(elector.wait_for_leadership(), 5)
        with pytest.raises(ConfigError, match="server_id"):
            elector.update_config(elector.config.copy(server_id="someone-else"))
        with pytest.raises(ConfigError, match="lockfile_path"):
            elector.update_config(elector.config.copy(lockfile_path="other.json"))
        # A longer lease applies from the next renewal on.
        elector.update_config(elector.config.copy(leader_timeout=0.6))
        assert elector.config.leader_timeout == 0.6
        before = elector.slot.status()["counters"]["renewals"]
        await wait_until(
            lambda: elector.slot.status()["counters"]["renewals"] > before + 1,
            5,
            "the leader stopped renewing after update_config",
        )
        status = elector.slot.status()
        left = (status["deadline_ns"] - monotonic_ns()) / 1e9
        assert T < left <= 0.6, f"deadline is {left:.3f}s away; the new lease was not applied"
        assert elector.is_leader()
    finally:
        await elector.stop()


async def test_on_new_leader_gets_no_id_when_the_leader_released(tmp_path: Path) -> None:
    # A released record keeps the id of the leader that left: passing it on
    # told followers the departed node still led.
    storage = FileStorage(tmp_path)
    seen: list[str] = []
    a = Elector(fast_config("a"), storage)
    b = Elector(fast_config("b", on_new_leader=seen.append), storage)
    try:
        await a.start()
        await asyncio.wait_for(a.wait_for_leadership(), 5)
        await b.start()
        await wait_until(lambda: seen == ["a"], 5, f"b never saw a lead: {seen}")
        await a.stop()  # releases
        await asyncio.wait_for(b.wait_for_leadership(), 5)
        await wait_until(lambda: seen[-1:] == ["b"], 5, f"b's own leadership not reported: {seen}")
        assert seen == ["a", "", "b"], seen
    finally:
        await a.stop()
        await b.stop()
