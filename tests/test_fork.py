"""Rule 7: nothing inherited through fork() leads (docs/safety.md).

Each test leads in this process, forks with a real ``os.fork()``, asks the
child what every inherited object answers, and checks the parent is
unaffected -- still leading, its record and table untouched -- even after
the child tried to stop or close what it inherited.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from elector_helpers import fast_config, wait_until
from fastelect import (
    BackgroundElector,
    ElectionConfig,
    Elector,
    LeadershipTable,
    LifecycleError,
    Manager,
    ManagerConfig,
    MemoryStorage,
    attach,
)
from fastelect._core import Campaign, shm_path


def unique_name(prefix: str) -> str:
    return f"{prefix}{os.getpid()}{secrets.token_hex(3)}"


MS = 1_000_000
HOUR = 3600 * 1_000_000_000


def in_child(probe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``probe`` in a real forked child; return what it reported (or its error)."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # 3.12+ warns about forking a process with threads; that is the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            os.close(read_fd)
            try:
                result = probe()
            except BaseException as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"}
                code = 1
            os.write(write_fd, json.dumps(result).encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    report: dict[str, Any] = json.loads(data) if data else {"error": "no report"}
    assert os.waitstatus_to_exitcode(status) == 0, report
    return report


def lead(slot: Any, server_id: str = "me") -> Campaign:
    """Make ``slot`` hold an hour-long lease through a real Campaign."""
    from fastelect._core import monotonic_ns

    now = monotonic_ns()
    c = Campaign(slot, server_id, "me:1", HOUR, HOUR // 10, HOUR // 5, HOUR // 20, -1, False, now)
    c.observe_missing(now)
    c.begin_write(now)
    c.write_succeeded(now, "e1")
    assert slot.is_leader()
    return c


def test_private_table_slot_and_reader_read_false_in_a_child() -> None:
    table = LeadershipTable()
    slot = table.slot("default", "me")
    lead(slot)
    reader = table.reader()

    def probe() -> dict[str, Any]:
        out: dict[str, Any] = {
            "slot": slot.is_leader(),
            "reader": reader.is_leader("default"),
            "remaining": slot.lease_remaining_ns(),
            "inherited": table.inherited,
        }
        try:
            table.slot("new")
            out["claim"] = "allowed"
        except LifecycleError:
            out["claim"] = "refused"
        table.close()  # lets go of the child's copy only
        return out

    assert in_child(probe) == {
        "slot": False,
        "reader": False,
        "remaining": 0,
        "inherited": True,
        "claim": "refused",
    }
    assert slot.is_leader() and reader.is_leader("default") and not table.inherited
    table.close()


def test_named_table_and_own_attach_read_false_in_a_child() -> None:
    name = unique_name("fork")
    table = LeadershipTable(name)
    lead(table.slot("cluster", "me"))
    own = attach(name)  # this process's own table, attached by name

    def probe() -> dict[str, Any]:
        answers = {"own": own.is_leader("cluster"), "fresh": attach(name).is_leader("cluster")}
        table.close()  # must not unlink or zero the parent's segment
        return answers

    # A fresh attach in the child maps the segment anew: it answers for the
    # owner (this process), which is still the leader -- exactly what another
    # process would see.  What the child inherited answers False.
    assert in_child(probe) == {"own": False, "fresh": True}
    assert os.path.exists(shm_path(name)), "the child removed the parent's table"
    assert own.is_leader("cluster") and attach(name).is_leader("cluster")
    table.close()


OWNER = """
    import sys, time
    from fastelect import LeadershipTable
    from fastelect._core import Campaign, monotonic_ns
    table = LeadershipTable(sys.argv[1])
    slot = table.slot("cluster", "sidecar")
    now = monotonic_ns()
    hour = 3600 * 10**9
    c = Campaign(slot, "sidecar", "s:1", hour, hour // 10, hour // 5, hour // 20, -1, False, now)
    c.observe_missing(now); c.begin_write(now); c.write_succeeded(now, "e1")
    print("leading", flush=True)
    sys.stdin.readline()
    table.close()
"""


@pytest.fixture
def sidecar() -> Iterator[str]:
    """Another process that owns a named table and leads in it."""
    name = unique_name("side")
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(OWNER), name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "leading"
        yield name
    finally:
        with contextlib.suppress(BrokenPipeError):
            assert proc.stdin is not None
            proc.stdin.close()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_reader_of_another_process_table_keeps_answering_for_its_owner(sidecar: str) -> None:
    """The gunicorn case: a master attaches the sidecar's table, workers inherit it."""
    reader = attach(sidecar)
    assert reader.is_leader("cluster")
    assert in_child(lambda: {"leader": reader.is_leader("cluster")}) == {"leader": True}
    assert reader.is_leader("cluster")
    reader.close()


@pytest.mark.asyncio
async def test_elector_is_inert_in_a_child() -> None:
    storage = MemoryStorage()
    elector = Elector(fast_config("forked"), storage)
    await elector.start()
    try:
        await asyncio.wait_for(elector.wait_for_leadership(), 5)
        body_before, etag_before = await storage.get("leader.json")

        def probe() -> dict[str, Any]:
            out: dict[str, Any] = {
                "is_leader": elector.is_leader(),
                "status": elector.status().is_leader,
                "running": elector.running,
            }
            try:
                asyncio.run(elector.start())
                out["start"] = "started"
            except LifecycleError:
                out["start"] = "refused"
            asyncio.run(elector.stop())  # must not release the parent's record
            return out

        assert in_child(probe) == {
            "is_leader": False,
            "status": False,
            "running": False,
            "start": "refused",
        }
        # MemoryStorage is per process, so check the parent's own view: still
        # leading, and its record was not released by anything it did.
        assert elector.is_leader() and elector.running
        body_after, _ = await storage.get("leader.json")
        assert json.loads(body_after)["lastUpdated"] != "0001-01-01T00:00:00Z"
        assert json.loads(body_before)["leaderID"] == json.loads(body_after)["leaderID"]
        assert etag_before
    finally:
        await elector.stop()


@pytest.mark.asyncio
async def test_elector_in_a_child_does_not_release_the_shared_record(tmp_path: Any) -> None:
    """With a store the child shares (a file), the child's stop() writes nothing."""
    from fastelect import FileStorage

    storage = FileStorage(tmp_path / "locks", create=True)
    elector = Elector(fast_config("shared-store"), storage)
    await elector.start()
    try:
        await asyncio.wait_for(elector.wait_for_leadership(), 5)

        def probe() -> dict[str, Any]:
            asyncio.run(elector.stop())
            return {"is_leader": elector.is_leader()}

        assert in_child(probe) == {"is_leader": False}
        body, _ = await storage.get("leader.json")
        record = json.loads(body)
        assert record["lastUpdated"] != "0001-01-01T00:00:00Z", "the child released the lock"
        assert record["nonce"] == elector.nonce
        assert elector.is_leader()
    finally:
        await elector.stop()
        await storage.close()


def test_background_elector_is_inert_in_a_child() -> None:
    bg = BackgroundElector(fast_config("bg-fork"), MemoryStorage)
    bg.start()
    try:
        end = time.monotonic() + 5.0
        while not bg.is_leader() and time.monotonic() < end:
            time.sleep(0.01)
        assert bg.is_leader()

        def probe() -> dict[str, Any]:
            out: dict[str, Any] = {"is_leader": bg.is_leader()}
            try:
                bg.start(timeout=5)  # would campaign under the parent's id
                out["start"] = "started"
            except LifecycleError as exc:
                out["start"] = "refused" if "fork" in str(exc) else str(exc)
            bg.stop()
            out["after_stop"] = bg.is_leader()
            return out

        assert in_child(probe) == {"is_leader": False, "start": "refused", "after_stop": False}
        assert bg.is_leader()
    finally:
        bg.stop()


@pytest.mark.asyncio
async def test_manager_is_inert_in_a_child() -> None:
    manager = Manager(ManagerConfig("c", "s", "fork-node", "127.0.0.1:1"))
    storage = MemoryStorage()
    try:
        await manager.start_cluster_election(
            ElectionConfig(
                storage, frequent_interval=0.03, infrequent_interval=0.03, leader_timeout=0.3
            )
        )
        await wait_until(manager.is_cluster_leader, 5, "the manager never led")
        name = manager.table_name

        def probe() -> dict[str, Any]:
            out: dict[str, Any] = {"leader": manager.is_cluster_leader()}
            try:
                asyncio.run(manager.start_cluster_election(ElectionConfig(MemoryStorage())))
                out["start"] = "started"
            except LifecycleError as exc:
                out["start"] = "refused" if "fork" in str(exc) else str(exc)
            asyncio.run(manager.stop())
            out["after_stop"] = manager.is_cluster_leader()
            return out

        assert in_child(probe) == {"leader": False, "start": "refused", "after_stop": False}
        assert manager.is_cluster_leader()
        assert attach(name).is_leader("cluster"), "the child closed the parent's table"
    finally:
        await manager.stop()
