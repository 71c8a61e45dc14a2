"""is_leader() and status() hammered from many threads (and another process)
while real electors renew, hand over and stop.

The compiled core takes no lock on the read path: ``is_leader`` is one
atomic load and a clock read, ``status`` copies the slot under its seqlock,
and each slot has one writer (its elector's loop thread).  These tests check
what that promises: no exception, no crash, and no torn snapshot -- a slot
read as leader always carries its lease, its own id, a term and an etag; a
slot read as not leading never carries a lease; terms and counters never go
back.  The GIL switch interval is cut to 10 µs so threads interleave as
finely as the interpreter allows; on a free-threaded build they run truly in
parallel.  A second process reads the named table at the same time, which is
truly parallel to the writer on any build.

Timings: F = 30 ms, T = 300 ms (elector_helpers.FAST; 1 s under eight
reader threads); every phase waits on
a condition with a bound, and every elector, thread and process is stopped in
``finally``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from elector_helpers import fast_config
from fastelect import FileStorage, LifecycleError
from fastelect.background import BackgroundElector
from helpers import wait_for

THREADS = 8
# Each phase lasts at least this long under fire, and at least this many
# renewals (F = 30 ms) happen while the readers run.
PHASE_S = 0.4
MIN_CALLS_PER_THREAD = 100


def check_snapshot(snap: dict[str, Any], own_id: str) -> str | None:
    """What is torn about one slot snapshot, or None when it is consistent."""
    role = snap["role"]
    if role == "leader":
        if snap["lease_until_ns"] <= 0:
            return "leader without a lease"
        if snap["lease_until_ns"] != snap["deadline_ns"]:
            return "leader whose lease and deadline differ"
        if snap["leader_id"] != own_id:
            return f"leader naming {snap['leader_id']!r} as leader"
        if snap["term"] < 1 or not snap["etag"]:
            return "leader without a term or an etag"
    elif snap["lease_until_ns"] != 0:
        return f"{role} holding a lease"
    if snap["leader_id"] not in ("", "a", "b"):
        return f"unknown leader id {snap['leader_id']!r}"
    return None


class Reader(threading.Thread):
    """Calls is_leader(), status() and the slot snapshot of each elector until told to stop."""

    def __init__(self, electors: dict[str, BackgroundElector]) -> None:
        super().__init__(daemon=True)
        self.electors = electors
        #: Set before an elector is stopped: from then on its calls may raise
        #: LifecycleError (its table closes under the reader), and only that.
        self.closing: set[str] = set()
        self.done = threading.Event()
        self.calls = 0
        self.leading_seen: set[str] = set()
        self.problems: list[str] = []
        self.last_term = dict.fromkeys(electors, 0)
        self.last_counters: dict[str, dict[str, int]] = {name: {} for name in electors}

    def run(self) -> None:
        try:
            while not self.done.is_set():
                for name, bg in self.electors.items():
                    self.read(name, bg)
                # Offer the GIL once a round, as a hot path doing real work
                # between checks does: eight threads that never yield starve
                # the elector's loop thread on a GIL build until it misses
                # renewals (and steps down, which is safe but not what this
                # test is about).
                time.sleep(0)
        except BaseException as exc:  # a reader must never die silently
            self.problems.append(f"reader crashed: {exc!r}")

    def read(self, name: str, bg: BackgroundElector) -> None:
        closing = name in self.closing
        try:
            leading = bg.is_leader()
            status = bg.status()
            snap = bg.elector.slot.status()
        except LifecycleError:
            if not closing:
                self.problems.append(f"{name}: LifecycleError while running")
            return
        self.calls += 1
        if leading:
            self.leading_seen.add(name)
        if status.leader_id not in ("", "a", "b") or status.term < 0:
            self.problems.append(f"{name}: status torn: {status}")
        torn = check_snapshot(snap, name)
        if torn is not None:
            self.problems.append(f"{name}: {torn}: {snap}")
        if snap["term"] < self.last_term[name]:
            self.problems.append(f"{name}: term went back {self.last_term[name]} -> {snap['term']}")
        self.last_term[name] = snap["term"]
        last = self.last_counters[name]
        for counter, value in snap["counters"].items():
            if value < last.get(counter, 0):
                self.problems.append(f"{name}: counter {counter} went back to {value}")
        self.last_counters[name] = snap["counters"]


@pytest.fixture
def fine_switching() -> Iterator[None]:
    """Switch GIL holders every 10 µs (the default is 5 ms) for the test."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def hammer_until(condition: Callable[[], Any], message: str) -> None:
    """Let the readers run for PHASE_S and until ``condition`` holds (bounded)."""
    started = time.monotonic()
    wait_for(
        lambda: condition() and time.monotonic() - started >= PHASE_S, timeout=10, message=message
    )


@pytest.mark.usefixtures("fine_switching")
def test_readers_in_many_threads_see_no_torn_state_through_a_handover(tmp_path: Path) -> None:
    # Renewals every 30 ms as usual, but a 1 s lease: eight busy readers on a
    # loaded 2-core box must slow the loop thread, not make it step down.
    slow_lease = {"leader_timeout": 1.0, "storage_timeout": 0.5}
    a = BackgroundElector(fast_config("a", **slow_lease), lambda: FileStorage(tmp_path))
    b = BackgroundElector(fast_config("b", **slow_lease), lambda: FileStorage(tmp_path))
    readers: list[Reader] = []
    try:
        a.start()
        assert a.wait_for_leadership(timeout=5), "a did not lead within 5 s"
        b.start()
        readers = [Reader({"a": a, "b": b}) for _ in range(THREADS)]
        for reader in readers:
            reader.start()
        renewals = a.elector.slot.status()["counters"]["renewals"]
        hammer_until(
            lambda: a.elector.slot.status()["counters"]["renewals"] >= renewals + 5,
            "a did not renew 5 times while the readers ran",
        )
        # Hand over: a releases on stop, b takes the released record at once.
        for reader in readers:
            reader.closing.add("a")
        a.stop(timeout=5)
        hammer_until(b.is_leader, "b did not take over after a stopped")
    finally:
        for reader in readers:
            reader.done.set()
        for reader in readers:
            reader.join(timeout=10)
        a.stop(timeout=5)
        b.stop(timeout=5)
    assert not any(reader.is_alive() for reader in readers), "a reader thread did not finish"
    problems = [p for reader in readers for p in reader.problems]
    assert not problems, f"{len(problems)} problems, first ones: {problems[:5]}"
    calls = [reader.calls for reader in readers]
    assert min(calls) >= MIN_CALLS_PER_THREAD, f"readers made too few calls to prove much: {calls}"
    seen = set().union(*(reader.leading_seen for reader in readers))
    assert seen == {"a", "b"}, f"the readers saw only {sorted(seen)} leading"


_PROCESS_READER = textwrap.dedent(
    """
    import json, sys, time
    from fastelect import attach
    sys.path.insert(0, sys.argv[3])
    from test_threads import check_snapshot

    reader = attach(sys.argv[1])
    deadline = time.monotonic() + float(sys.argv[2])
    reads, leading, problems, last_renewals = 0, 0, [], 0
    print("ready", flush=True)
    while time.monotonic() < deadline:
        snap = reader.status("default")
        reads += 1
        leading += snap["role"] == "leader"
        torn = check_snapshot(snap, "a")
        if torn is not None:
            problems.append(torn + ": " + repr(snap))
        renewals = snap["counters"]["renewals"]
        if renewals < last_renewals:
            problems.append(f"renewals went back to {renewals}")
        last_renewals = renewals
    print(json.dumps({"reads": reads, "leading": leading, "renewals": last_renewals,
                      "problems": problems[:5]}), flush=True)
    """
)


def test_another_process_reads_the_table_while_it_is_renewed(tmp_path: Path) -> None:
    table = f"thr-{uuid.uuid4().hex[:12]}"
    a = BackgroundElector(fast_config("a"), lambda: FileStorage(tmp_path), table_name=table)
    proc: subprocess.Popen[str] | None = None
    try:
        a.start()
        assert a.wait_for_leadership(timeout=5), "a did not lead within 5 s"
        renewals = a.elector.slot.status()["counters"]["renewals"]
        proc = subprocess.Popen(
            [sys.executable, "-c", _PROCESS_READER, table, "1.0", str(Path(__file__).parent)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, f"reader process failed ({proc.returncode}): {err}"
        lines = out.splitlines()
        assert lines[0] == "ready", out
        result = json.loads(lines[-1])
        after = a.elector.slot.status()["counters"]["renewals"]
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        a.stop(timeout=5)
    assert not result["problems"], f"torn reads in the other process: {result['problems']}"
    assert after - renewals >= 5, f"only {after - renewals} renewals happened during the reads"
    assert result["reads"] >= 10_000, f"only {result['reads']} reads in 1 s"
    assert result["leading"] == result["reads"], "a stopped leading while it renewed"
