"""The leadership table in POSIX shared memory, seen from other processes.

Real processes throughout: readers and owners run as subprocesses of the
test, and are stopped (or killed) by pid in ``finally`` blocks.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastelect import Elector, ElectorConfig, LeadershipTable, MemoryStorage, attach
from fastelect._core import SLOT_SIZE, Campaign, monotonic_ns, shm_path
from fastelect.errors import FastelectError
from health_helpers import lead, table_name

WAIT = 20.0  # seconds: bound on every wait for another process


# --------------------------------------------------------------------------- #
# Subprocess plumbing
# --------------------------------------------------------------------------- #


class Child:
    """A Python subprocess whose stdout lines are collected by a thread.

    (Selecting on a buffered text pipe would miss lines already buffered.)
    """

    def __init__(self, script: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.strip())
        self._lines.put(None)

    def line(self, timeout: float = WAIT) -> str:
        """The next stdout line; fails with the child's stderr if it exits or stalls."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output from pid {self.pid} within {timeout}s") from None
        if line is None:
            self._lines.put(None)
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"pid {self.pid} exited (code {self.proc.wait()}):\n{err}")
        return line

    def send(self, text: str) -> None:
        """Write ``text`` to the child's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        """Close the child's stdin (its cue to finish)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def finish(self) -> None:
        """Kill the child if it still runs, reap it and close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._pump.join(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def name() -> Iterator[str]:
    """A unique table name; any segment left under it is removed afterwards."""
    n = table_name("shm")
    yield n
    path = Path(shm_path(n))
    if path.exists():
        # Whatever is left (a killed owner's segment) is replaced, then removed.
        LeadershipTable(n).close()
    assert not path.exists()


OWNER = """
    import os, signal, sys
    from fastelect import LeadershipTable
    table = LeadershipTable(sys.argv[1])
    table.slot("cluster", "owner")
    print(os.getpid(), flush=True)
    if sys.argv[2] == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.read()  # until the test closes our stdin
    table.close()
    print("closed", flush=True)
"""


# --------------------------------------------------------------------------- #
# Creation, permissions, removal
# --------------------------------------------------------------------------- #


def test_segment_is_owner_only_and_removed_on_close(name: str) -> None:
    table = LeadershipTable(name)
    path = Path(shm_path(name))
    try:
        st = path.stat()
        assert st.st_mode & 0o777 == 0o600, oct(st.st_mode)
        assert st.st_uid == os.getuid()
        assert table.path == str(path)
        reader = attach(name)
        assert reader.owner_pid == os.getpid() and not reader.closed and not reader.stale
        lead(table.slot("cluster", "me"), "me")
        assert reader.is_leader("cluster") and reader.elections() == ["cluster"]
    finally:
        table.close()
    assert not path.exists()
    # A reader attached before the close sees it closed, with the lease gone.
    assert reader.closed and reader.stale
    assert not reader.is_leader("cluster")
    with pytest.raises(FastelectError, match="no leadership table"):
        attach(name)
    table.close()  # twice is fine


def test_names_are_checked() -> None:
    for bad in ("", "a/b", "x" * 25, "../etc"):
        with pytest.raises(ValueError, match="table name"):
            attach(bad)
        with pytest.raises(ValueError, match="table name"):
            LeadershipTable(bad)


def test_foreign_segment_is_not_trusted_and_replaced(name: str) -> None:
    path = Path(shm_path(name))
    path.write_bytes(b"not a table" * 100)
    try:
        with pytest.raises(FastelectError, match="not a fastelect leadership table"):
            attach(name)
        table = LeadershipTable(name)  # replaces it
        try:
            assert attach(name).owner_pid == os.getpid()
        finally:
            table.close()
    finally:
        path.unlink(missing_ok=True)


def test_stale_segment_of_a_dead_process_is_replaced(name: str) -> None:
    child = Child(OWNER, name, "crash")
    try:
        pid = int(child.line())
        assert child.proc.wait(timeout=WAIT) == -signal.SIGKILL
    finally:
        child.finish()
    path = Path(shm_path(name))
    assert path.exists(), "the crashed owner's segment should still be there"
    stale = attach(name)
    assert stale.owner_pid == pid and stale.stale and not stale.closed
    table = LeadershipTable(name)
    try:
        fresh = attach(name)
        assert fresh.owner_pid == os.getpid() and not fresh.stale
        assert fresh.elections() == []  # nothing carried over from the dead owner
        assert stale.elections() == ["cluster"]  # the old mapping is a different segment
    finally:
        table.close()


def test_live_owner_is_refused_then_closes_cleanly(name: str) -> None:
    child = Child(OWNER, name, "stay")
    try:
        pid = int(child.line())
        with pytest.raises(FastelectError, match=f"in use by a live owner \\(pid {pid} "):
            LeadershipTable(name)
        assert attach(name).owner_pid == pid  # still the owner's, untouched
        child.close_stdin()
        assert child.line() == "closed"
        assert child.proc.wait(timeout=WAIT) == 0
    finally:
        child.finish()
    assert not Path(shm_path(name)).exists()


# --------------------------------------------------------------------------- #
# Another process follows the leadership
# --------------------------------------------------------------------------- #

WATCHER = """
    import json, sys, time
    from fastelect import attach
    reader = attach(sys.argv[1])
    print("attached", flush=True)
    last = None
    led = False
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline:
        now = reader.is_leader("default")
        st = None
        if now != last:
            st = reader.status("default") or {}
            print(json.dumps({"leader": now, "leader_id": st.get("leader_id"),
                              "term": st.get("term"), "role": st.get("role")}), flush=True)
            last = now
            led = led or now
        # Released first (role follower), stopped a moment later: wait for both.
        if led and now is False and (st or reader.status("default") or {}).get("role") == "stopped":
            break
        time.sleep(0.001)
"""


@pytest.mark.asyncio
async def test_another_process_sees_leadership_change(name: str) -> None:
    table = LeadershipTable(name)
    child = Child(WATCHER, name, str(WAIT))
    config = ElectorConfig(
        "leader.json",
        "node-a",
        frequent_interval=0.05,
        infrequent_interval=0.1,
        leader_timeout=0.5,
        storage_timeout=0.2,
    )
    elector = Elector(config, MemoryStorage(), table=table)
    try:
        assert await asyncio.to_thread(child.line) == "attached"
        first = json.loads(await asyncio.to_thread(child.line))
        assert first["leader"] is False
        await elector.start()
        await asyncio.wait_for(elector.wait_for_leadership(), WAIT)
        seen = json.loads(await asyncio.to_thread(child.line))
        assert seen == {"leader": True, "leader_id": "node-a", "term": 1, "role": "leader"}
        await elector.stop()  # releases: the lease word goes to 0 at once
        seen = json.loads(await asyncio.to_thread(child.line))
        assert seen["leader"] is False and seen["role"] in ("follower", "stopped")
    finally:
        await elector.stop()
        table.close()
        await asyncio.to_thread(child.proc.wait, WAIT)
        child.finish()


# --------------------------------------------------------------------------- #
# No torn reads under a concurrent writer
# --------------------------------------------------------------------------- #

TORN_READER = """
    import json, sys, time
    from fastelect import attach
    from fastelect.errors import FastelectError
    reader = attach(sys.argv[1])
    print("attached", flush=True)
    sys.stdin.readline()  # the writer is running
    variants = {tuple(v) for v in json.loads(sys.argv[2])}
    reads = torn = beats = busy = 0
    seen = set()
    example = None
    deadline = time.monotonic() + float(sys.argv[3])
    while time.monotonic() < deadline:
        try:
            st = reader.status("race")
        except FastelectError:
            # The seqlock gave up (the writer was descheduled mid-write): no data,
            # which is safe; a torn copy would not be.
            busy += 1
            continue
        reads += 1
        key = (st["term"], st["leader_id"], st["leader_addr"], st["etag"])
        if key in variants:
            seen.add(key[0])
        else:
            torn += 1
            example = example or list(key)
        if st["last_cycle_mono_ns"] != st["watchdog_ns"]:
            beats += 1
            example = example or [st["last_cycle_mono_ns"], st["watchdog_ns"]]
    print(json.dumps({"reads": reads, "torn": torn, "torn_beats": beats, "busy": busy,
                      "seen_terms": sorted(seen), "example": example}), flush=True)
"""


def test_no_torn_reads_under_a_concurrent_writer(name: str) -> None:
    # Two records that differ in every field and in every string's length: a
    # slot copied half-way through a write would mix them.
    variants: list[tuple[int, str, str, str]] = [
        (1, "a" * 120, "A" * 120, "x" * 120),
        (2, "b" * 7, "B" * 9, "y" * 11),
    ]
    table = LeadershipTable(name)
    slot = table.slot("race", "writer")
    now = monotonic_ns()
    campaign = Campaign(slot, "writer", "w:1", 10**12, 10**11, 10**11, 10**10, -1)
    stop = threading.Event()
    writes = [0]

    def writer() -> None:
        i = 0
        while not stop.is_set():
            for term, leader, addr, etag in variants:
                i += 1
                campaign.observe_record(
                    now, time.time_ns(), etag, leader, addr, term, 1000, i, False, 0
                )
                slot.heartbeat(i, i)  # two words that must always match
            writes[0] = i

    child = Child(TORN_READER, name, json.dumps(variants), "1.5")
    thread = threading.Thread(target=writer, daemon=True)
    try:
        assert child.line() == "attached"
        thread.start()
        child.send("go\n")
        result: dict[str, Any] = json.loads(child.line())
    finally:
        stop.set()
        thread.join(timeout=WAIT)
        child.finish()
        table.close()
    assert result["torn"] == 0 and result["torn_beats"] == 0, result
    assert result["reads"] > 1000, result
    # "Busy" answers are the seqlock refusing to hand out a copy it could not
    # make consistently; they must stay the exception.
    assert result["busy"] < result["reads"], result
    assert result["seen_terms"] == [1, 2], f"the writer was not interleaved: {result}"
    assert writes[0] > 1000


def test_slot_layout_is_fixed() -> None:
    # The documented layout: other processes (and other builds) rely on it.
    assert SLOT_SIZE == 1024


def test_elector_hot_path_reads_the_same_word_as_other_processes(name: str) -> None:
    table = LeadershipTable(name)
    try:
        slot = table.slot("cluster", "me")
        reader = attach(name)
        assert not reader.is_leader("cluster") and not slot.is_leader()
        campaign = lead(slot, "me", lease_s=0.2)
        assert reader.is_leader("cluster") and slot.is_leader()
        deadline = reader.status("cluster")["lease_until_ns"]  # type: ignore[index]
        while monotonic_ns() < deadline:
            time.sleep(0.01)
        # Expired by the clock alone, in both views, with no write.
        assert not reader.is_leader("cluster") and not slot.is_leader()
        assert campaign.role == 1  # the state machine was never told
    finally:
        table.close()


# --------------------------------------------------------------------------- #
# Closed objects raise, never crash
# --------------------------------------------------------------------------- #

AFTER_CLOSE = """
    import json, sys
    from fastelect import LeadershipTable, attach
    from fastelect.errors import LifecycleError
    name = sys.argv[1]
    table = LeadershipTable(name)
    slot = table.slot("cluster", "me")
    own = table.reader()
    reader = attach(name)
    reader.close()
    table.close()
    calls = {
        "table.slot_count": lambda: table.slot_count,
        "table.slot": lambda: table.slot("other"),
        "table.reader": lambda: table.reader(),
        "slot.is_leader": lambda: slot.is_leader(),
        "slot.lease_remaining_ns": lambda: slot.lease_remaining_ns(),
        "slot.status": lambda: slot.status(),
        "slot.heartbeat": lambda: slot.heartbeat(1, 1),
        "slot.count": lambda: slot.count(0),
        "slot.release_slot": lambda: slot.release_slot(),
        "slot.restart_slot": lambda: slot.restart_slot(),
        "reader.is_leader": lambda: reader.is_leader("cluster"),
        "reader.status": lambda: reader.status("cluster"),
        "reader.elections": lambda: reader.elections(),
        "reader.owner_pid": lambda: reader.owner_pid,
    }
    out = {}
    for what, call in calls.items():
        try:
            call()
            out[what] = "returned"
        except LifecycleError:
            out[what] = "LifecycleError"
    # Questions about the lifecycle itself answer; closing again is harmless.
    out["answers"] = [reader.closed, reader.stale, table.closed, slot.closed,
                      own.closed, own.is_leader("cluster")]
    table.close(); reader.close()
    print(json.dumps(out))
"""


def test_every_method_of_a_closed_table_slot_or_reader_raises(name: str) -> None:
    """In a subprocess, so a crash (0.1.0 segfaulted here) fails the test, not the run."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(AFTER_CLOSE), name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    out = json.loads(proc.stdout)
    answers = out.pop("answers")
    assert out == dict.fromkeys(out, "LifecycleError"), out
    assert answers == [True, True, True, True, True, False]
