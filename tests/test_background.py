"""BackgroundElector: a real thread running a real uvloop loop, for synchronous code.

Timings are short (F = 30 ms, T = 300 ms, from elector_helpers.FAST); every
wait is bounded and every elector and subprocess is stopped in ``finally``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from elector_helpers import FAST, fast_config
from fastelect import (
    BucketNotFound,
    FastelectError,
    FileStorage,
    LifecycleError,
    MemoryStorage,
    StorageError,
)
from fastelect._core import shm_path
from fastelect.background import BackgroundElector
from fastelect.record import parse_record
from fastelect.storage import Storage
from helpers import make_s3_storage, wait_for

F, T = FAST["frequent_interval"], FAST["leader_timeout"]
# Beyond the protocol's own bound, for a loaded 2-core CI box.
SLACK = 0.5


def read_record(directory: Path, key: str = "leader.json") -> bytes:
    async def get() -> bytes:
        storage = FileStorage(directory)
        try:
            body, _ = await storage.get(key)
            return body
        finally:
            await storage.close()

    return asyncio.run(get())


@pytest.fixture
def electors() -> Iterator[list[BackgroundElector]]:
    """Collects background electors and stops every one after the test."""
    made: list[BackgroundElector] = []
    yield made
    for elector in made:
        elector.stop(timeout=5)


def test_runs_on_its_own_uvloop_thread_and_answers_from_the_slot(
    tmp_path: Path, electors: list[BackgroundElector]
) -> None:
    bg = BackgroundElector(fast_config("solo"), lambda: FileStorage(tmp_path))
    electors.append(bg)
    assert not bg.is_leader() and not bg.running
    bg.start()
    assert bg.wait_for_leadership(timeout=5)
    assert bg.is_leader() and bg.running
    # The loop is uvloop's and runs in a daemon thread of its own.
    assert isinstance(bg.loop, uvloop.Loop)
    threads = [t for t in threading.enumerate() if t.name == "fastelect-solo"]
    assert len(threads) == 1 and threads[0].daemon and threads[0] is not threading.current_thread()
    # is_leader is the compiled slot's method itself: no Python frame, no lock.
    assert bg.is_leader.__self__ is bg.elector.slot  # type: ignore[attr-defined]
    status = bg.status()
    assert status.is_leader and status.leader_id == "solo" and status.term == bg.term == 1
    assert bg.leader_id == "solo"

    bg.stop()
    assert not bg.is_leader() and not bg.running
    assert not any(t.name == "fastelect-solo" for t in threading.enumerate())
    record = parse_record(read_record(tmp_path))
    assert record.released and record.leader_id == "solo" and record.term == 1
    bg.stop()  # twice is fine


def test_is_leader_is_false_after_stop_also_with_a_named_table(
    tmp_path: Path, electors: list[BackgroundElector]
) -> None:
    # The named table is closed at stop(); its slot's is_leader() raised then.
    name = f"bg-stop-{os.getpid()}"
    bg = BackgroundElector(fast_config("named"), lambda: FileStorage(tmp_path), table_name=name)
    electors.append(bg)
    bg.start()
    assert bg.wait_for_leadership(timeout=5)
    bg.stop()
    assert bg.is_leader() is False and not bg.running
    assert parse_record(read_record(tmp_path)).released


def test_two_in_one_process_compete_and_stop_hands_over(
    tmp_path: Path, electors: list[BackgroundElector]
) -> None:
    a = BackgroundElector(fast_config("a"), lambda: FileStorage(tmp_path))
    b = BackgroundElector(fast_config("b"), lambda: FileStorage(tmp_path))
    electors += [a, b]
    a.start()
    b.start()
    wait_for(lambda: a.is_leader() or b.is_leader(), 5, "nobody became leader")
    # Sample for a few leases: never two leaders at once.
    end = time.monotonic() + 3 * T
    while time.monotonic() < end:
        assert not (a.is_leader() and b.is_leader())
    leader, other = (a, b) if a.is_leader() else (b, a)
    first_term = leader.term

    t0 = time.monotonic()
    leader.stop()
    wait_for(other.is_leader, 5, "the follower did not take over", every=0.001)
    took = time.monotonic() - t0
    # A released record is taken at the follower's next poll: no lease wait.
    assert took < F + SLACK
    assert other.term == first_term + 1


def test_start_error_is_raised_in_the_calling_thread(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    bg = BackgroundElector(fast_config("x"), lambda: FileStorage(blocker / "locks", create=True))
    with pytest.raises(StorageError, match="not a directory"):
        bg.start()
    assert not bg.running and not bg.is_leader()
    assert not any(t.name == "fastelect-x" for t in threading.enumerate())
    with pytest.raises(LifecycleError):
        bg.status()


def test_factory_must_return_a_storage_and_lifecycle_is_checked(
    tmp_path: Path, electors: list[BackgroundElector]
) -> None:
    with pytest.raises(TypeError):
        BackgroundElector(fast_config("x"), "not a storage")  # type: ignore[arg-type]
    bad = BackgroundElector(fast_config("x"), lambda: 42)  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match="not a Storage"):
        bad.start()

    # A class works as a factory; an instance works too.
    for source in (MemoryStorage, MemoryStorage()):
        bg = BackgroundElector(fast_config("m"), source)
        electors.append(bg)
        with bg:
            assert bg.wait_for_leadership(timeout=5)
            with pytest.raises(LifecycleError):
                bg.start()
        assert not bg.running


@pytest.mark.s3
def test_s3_storage_is_built_and_used_on_the_background_loop(
    moto_server: str, s3_bucket: str, electors: list[BackgroundElector]
) -> None:
    # aiobotocore clients are bound to the loop that created them: the factory
    # runs on the elector's loop, so this works from a thread with no loop.
    bg = BackgroundElector(
        fast_config(
            "s3",
            storage_timeout=2.0,
            leader_timeout=1.0,
            frequent_interval=0.1,
            infrequent_interval=0.1,
        ),
        lambda: make_s3_storage(moto_server, s3_bucket),
    )
    electors.append(bg)
    bg.start()
    assert bg.wait_for_leadership(timeout=10)
    bg.stop()
    assert not bg.is_leader()


@pytest.mark.s3
def test_missing_bucket_raises_in_the_caller(moto_server: str) -> None:
    bg = BackgroundElector(
        fast_config("s3"), lambda: make_s3_storage(moto_server, f"missing-{uuid.uuid4().hex[:8]}")
    )
    with pytest.raises(BucketNotFound):
        bg.start()
    assert not bg.running


WORKER = textwrap.dedent(
    """
    import sys
    import fastelect

    reader = fastelect.attach(sys.argv[1])
    for line in sys.stdin:
        print(reader.is_leader("default"), reader.closed, flush=True)
    """
)


def test_named_table_is_read_by_a_worker_process(
    tmp_path: Path, electors: list[BackgroundElector]
) -> None:
    name = f"bg-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    bg = BackgroundElector(
        fast_config("host-1"), lambda: FileStorage(tmp_path / "locks", create=True), table_name=name
    )
    electors.append(bg)
    bg.start()
    with subprocess.Popen(
        [sys.executable, "-c", WORKER, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as worker:
        try:
            assert worker.stdin is not None and worker.stdout is not None
            stdin, stdout = worker.stdin, worker.stdout

            def ask() -> str:
                stdin.write("?\n")
                stdin.flush()
                return stdout.readline().strip()

            assert bg.wait_for_leadership(timeout=5)
            assert ask() == "True False"  # the worker sees this host lead, with no elector
            bg.stop()
            assert ask() == "False True"  # stop zeroes the lease and closes the table
            assert not os.path.exists(shm_path(name))
            stdin.close()
            assert worker.wait(timeout=10) == 0
        finally:
            if worker.poll() is None:
                worker.kill()


FORKER = textwrap.dedent(
    """
    import os, sys, time
    from fastelect import ElectorConfig, FileStorage
    from fastelect.background import BackgroundElector

    config = ElectorConfig("leader.json", "parent", frequent_interval=0.03,
                           infrequent_interval=0.03, leader_timeout=0.3)
    bg = BackgroundElector(config, lambda: FileStorage(sys.argv[1]))
    bg.start()
    assert bg.wait_for_leadership(timeout=5)
    pid = os.fork()
    if pid == 0:
        bg.stop()  # must not touch the parent's loop or release its lock
        os._exit(0 if not bg.running else 1)
    _, status = os.waitpid(pid, 0)
    time.sleep(0.4)  # longer than a lease: a release by the child would show
    print(os.waitstatus_to_exitcode(status), bg.is_leader(), bg.term, flush=True)
    bg.stop()
    """
)


def test_a_forked_child_neither_stops_nor_releases_the_parents_elector(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", FORKER, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "True", "1"]


def test_storage_instance_is_closed_by_stop(
    tmp_path: Path, electors: list[BackgroundElector]
) -> None:
    closed: list[bool] = []

    class Recording(FileStorage):
        async def close(self) -> None:
            closed.append(True)
            await super().close()

    storage: Storage = Recording(tmp_path)
    bg = BackgroundElector(fast_config("c"), storage)
    electors.append(bg)
    bg.start()
    bg.stop()
    assert closed == [True]


def test_start_timeout_leaves_nothing_running(tmp_path: Path) -> None:
    def slow_factory() -> Storage:
        time.sleep(0.5)  # blocks the loop: the start cannot even be cancelled
        return FileStorage(tmp_path)

    bg = BackgroundElector(fast_config("slow"), slow_factory)
    with pytest.raises(FastelectError, match="did not start within"):
        bg.start(timeout=0.1)
    # start() waited for the thread to undo its late start before raising.
    assert not bg.running and not bg.is_leader()
    assert not any(t.name == "fastelect-slow" for t in threading.enumerate())
