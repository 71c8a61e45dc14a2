"""Sweeping leadership tables that crashed processes left in /dev/shm.

Real processes create real named tables and are SIGKILLed; crafted segments
(closed, junk, another layout version, another user's) live in a private
directory so no other process on the host is ever touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers import wait_for

from fastelect import LeadershipTable, MemoryStorage, table_gc
from fastelect._core import LAYOUT_VERSION, shm_path
from fastelect.election import ElectionConfig, Manager, ManagerConfig

# These tests sweep the real /dev/shm with no age limit, so scripts/test runs
# them on their own, after the parallel run: one test's sweep must never take
# another test's freshly killed table.
pytestmark = pytest.mark.skipif(
    not os.path.isdir(table_gc.SHM_DIR), reason="POSIX shared memory is not a directory here"
)

WAIT = 20.0
_HEADER = struct.Struct("=QIIIIqqqIIQ")
_MAGIC = 0x31305443454C4546
_LOCK_LIVENESS = 1
_FLOCK = struct.Struct("hhqqi4x")

_OWNER = """
import sys
from fastelect import LeadershipTable
table = LeadershipTable(sys.argv[1], slots=2)
table.slot("cluster", "me")
print("ready", flush=True)
sys.stdin.readline()  # hold the table until told (or killed)
table.close()
"""


class Owner:
    """A subprocess that creates the named table ``name`` and holds it."""

    def __init__(self, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_OWNER), name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.stop()
            raise AssertionError(f"table owner did not start: {self.proc.stderr.read()}")  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=WAIT)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def name() -> Iterator[str]:
    """A unique table name; its segment is removed after the test whatever happens."""
    table = f"gc{uuid.uuid4().hex[:12]}"
    yield table
    Path(shm_path(table)).unlink(missing_ok=True)


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _segment(
    directory: Path,
    name: str,
    *,
    owner: int,
    closed: int = 0,
    version: int = 1,
    magic: int = _MAGIC,
    size: int = 128 + 1024,
    flags: int = 0,
) -> Path:
    path = directory / f"fastelect.{name}"
    header = _HEADER.pack(magic, version, 128, 1, 1024, owner, time.time_ns(), 1, closed, flags, 7)
    path.write_bytes(header.ljust(size, b"\0"))
    return path


@contextlib.contextmanager
def _held_lock(path: Path) -> Iterator[None]:
    """Hold the owner's liveness lock on ``path``, as a live owner would."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        yield
    finally:
        os.close(fd)


def _by_name(infos: list[table_gc.TableInfo]) -> dict[str, table_gc.TableInfo]:
    return {info.name: info for info in infos}


def test_sigkilled_owners_table_is_found_and_removed(name: str) -> None:
    owner = Owner(name)
    path = Path(shm_path(name))
    try:
        assert path.exists()
        live = _by_name(table_gc.list_tables())[name]
        assert (live.state, live.owner_pid, live.version) == (
            "live",
            owner.proc.pid,
            LAYOUT_VERSION,
        )
        assert name not in _by_name(table_gc.stale_tables())
        assert name not in _by_name(table_gc.remove_stale_tables())
        assert path.exists(), "a live owner's table was removed"

        owner.proc.send_signal(signal.SIGKILL)
        owner.proc.wait(timeout=WAIT)
        assert path.exists()  # SIGKILL leaves it behind: what the sweep is for
        stale = _by_name(table_gc.stale_tables())[name]
        assert (stale.state, stale.owner_pid) == ("dead owner", owner.proc.pid)

        removed = _by_name(table_gc.remove_stale_tables())
        assert removed[name].owner_pid == owner.proc.pid
        assert not path.exists()
        assert name not in _by_name(table_gc.list_tables())
    finally:
        owner.stop()


def test_zombie_owner_counts_as_dead(name: str) -> None:
    owner = Owner(name)
    try:
        os.kill(owner.proc.pid, signal.SIGKILL)
        # Not reaped yet: the pid still exists, as a zombie, until wait().
        deadline = time.monotonic() + WAIT
        while Path(f"/proc/{owner.proc.pid}/stat").read_text().split(") ")[1][0] != "Z":
            assert time.monotonic() < deadline, "the killed owner never became a zombie"
            time.sleep(0.01)
        assert _by_name(table_gc.stale_tables())[name].state == "dead owner"
        assert name in _by_name(table_gc.remove_stale_tables())
        assert not Path(shm_path(name)).exists()
    finally:
        owner.stop()


def test_new_table_replaces_a_dead_owners_table_of_the_same_name(name: str) -> None:
    owner = Owner(name)
    owner.proc.kill()
    owner.stop()
    table_gc.remove_stale_tables()
    with LeadershipTable(name, slots=1) as table:
        info = _by_name(table_gc.list_tables())[name]
        assert (info.state, info.owner_pid) == ("live", os.getpid())
        assert table.path == info.path
    assert name not in _by_name(table_gc.list_tables())  # close() unlinked it


def test_crafted_segments_are_judged_conservatively(tmp_path: Path) -> None:
    dead = _dead_pid()
    _segment(tmp_path, "dead", owner=dead)
    _segment(tmp_path, "dead-v9", owner=dead, version=9, size=128 + 2048)
    _segment(tmp_path, "closed", owner=os.getpid(), closed=1)
    _segment(tmp_path, "live", owner=os.getpid())
    _segment(tmp_path, "young-junk", owner=dead, magic=0)
    old_junk = _segment(tmp_path, "old-junk", owner=dead, magic=0)
    stamp = time.time() - table_gc.JUNK_AGE_S - 5
    os.utime(old_junk, (stamp, stamp))
    (tmp_path / "fastelect.short").write_bytes(b"FELECT")
    os.utime(tmp_path / "fastelect.short", (stamp, stamp))
    (tmp_path / "unrelated").write_bytes(b"x")

    states = {n: i.state for n, i in _by_name(table_gc.list_tables(str(tmp_path))).items()}
    assert states == {
        "closed": "closed",
        "dead": "dead owner",
        "dead-v9": "dead owner",
        "live": "live",
        "old-junk": "not a table",
        "short": "not a table",
        "young-junk": "young",
    }
    removed = sorted(i.name for i in table_gc.remove_stale_tables(str(tmp_path)))
    assert removed == ["closed", "dead", "dead-v9", "old-junk", "short"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fastelect.live",
        "fastelect.young-junk",
        "unrelated",
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_another_users_segment_is_never_touched(tmp_path: Path) -> None:
    path = _segment(tmp_path, "theirs", owner=_dead_pid())
    os.chown(path, 65534, 65534)
    info = _by_name(table_gc.list_tables(str(tmp_path)))["theirs"]
    assert (info.state, info.uid, info.stale) == ("foreign user", 65534, False)
    assert table_gc.remove_stale_tables(str(tmp_path)) == []
    assert path.exists()


def test_table_recreated_by_a_live_process_during_the_sweep_is_put_back(tmp_path: Path) -> None:
    _segment(tmp_path, "race", owner=_dead_pid())
    [stale] = table_gc.stale_tables(str(tmp_path))
    # Between the scan and the removal a live process replaces the dead table.
    (tmp_path / "fastelect.race").unlink()
    fresh = _segment(tmp_path, "race", owner=os.getpid())
    content = fresh.read_bytes()

    assert not table_gc._remove(str(tmp_path), stale)
    assert fresh.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fastelect.race"]


def test_leftovers_of_a_sweep_that_died_mid_way_are_removed(tmp_path: Path) -> None:
    dead = _dead_pid()
    stamp = time.time() - table_gc.JUNK_AGE_S - 5
    # What a dead sweep left: a dead owner's table, and old junk.
    _segment(tmp_path, "x", owner=dead).rename(tmp_path / f"fastelect-gc.{dead}.abc")
    junk = tmp_path / f"fastelect-gc.{dead}.junk"
    junk.write_bytes(b"x")
    os.utime(junk, (stamp, stamp))
    # A sweep in progress, in another PID namespace (its pid means nothing
    # here; say it is dead): it moved a live table aside and puts it back.
    live = _segment(tmp_path, "y", owner=dead, flags=_LOCK_LIVENESS)
    live = live.rename(tmp_path / f"fastelect-gc.{dead}.def")
    with _held_lock(live):
        table_gc.remove_stale_tables(str(tmp_path))
        assert sorted(p.name for p in tmp_path.iterdir()) == [f"fastelect-gc.{dead}.def"]


def test_missing_directory_lists_nothing(tmp_path: Path) -> None:
    assert table_gc.list_tables(str(tmp_path / "absent")) == []
    assert table_gc.remove_stale_tables(str(tmp_path / "absent")) == []


def test_status_lists_tables_and_removes_stale_ones(name: str) -> None:
    live_name = f"{name}L"
    live, dead = Owner(live_name), Owner(name)
    cli = [sys.executable, "-m", "fastelect.cli", "status", "--tables"]
    try:
        dead.proc.kill()
        dead.proc.wait(timeout=WAIT)

        done = subprocess.run([*cli, "--json"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        listed = {t["name"]: t for t in json.loads(done.stdout)["tables"]}
        assert (listed[name]["state"], listed[name]["stale"]) == ("dead owner", True)
        assert listed[name]["owner_pid"] == dead.proc.pid
        assert (listed[live_name]["state"], listed[live_name]["owner_pid"]) == (
            "live",
            live.proc.pid,
        )

        done = subprocess.run([*cli, "--remove-stale"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"removed {shm_path(name)}" in done.stdout
        assert f"{live_name}: live, owner pid {live.proc.pid}" in done.stdout
        assert not Path(shm_path(name)).exists()
        assert Path(shm_path(live_name)).exists()
    finally:
        live.stop()
        dead.stop()
        Path(shm_path(live_name)).unlink(missing_ok=True)


def test_status_needs_a_store_or_tables() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fastelect.cli", "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--store" in done.stderr


@pytest.mark.asyncio
async def test_a_starting_manager_sweeps_dead_owners_tables(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The automatic sweep spares segments younger than 10 s; this one is new.
    monkeypatch.setattr(table_gc, "AUTO_SWEEP_MIN_AGE_S", 0.0)
    dead = Owner(name)
    dead.proc.kill()
    dead.stop()
    assert Path(shm_path(name)).exists()

    manager = Manager(ManagerConfig("c", "s", "n", table_name=f"{name}M"))
    try:
        await manager.start_cluster_election(
            ElectionConfig(MemoryStorage(), frequent_interval=1, leader_timeout=3)
        )
        assert not Path(shm_path(name)).exists(), "the Manager did not sweep the dead table"
        assert Path(shm_path(f"{name}M")).exists()
    finally:
        await manager.stop()
    assert not Path(shm_path(f"{name}M")).exists()


def test_the_automatic_sweep_spares_young_segments(name: str) -> None:
    """Creating a named table sweeps dead owners' tables, but not one that
    died a moment ago: an operator may still be looking at it."""
    dead = Owner(name)
    dead.proc.kill()
    dead.stop()
    try:
        LeadershipTable(f"{name}N").close()
        assert Path(shm_path(name)).exists(), "a seconds-old table was swept automatically"
        assert name in {t.name for t in table_gc.stale_tables()}
    finally:
        Path(shm_path(name)).unlink(missing_ok=True)


def test_a_pid_is_dead_once_it_is_a_zombie_or_gone() -> None:
    # The pid test of tables written without an owner lock (fastelect 0.1):
    # one helper for the reader and the sweep, and a zombie never writes again.
    from fastelect._core import _pid_alive

    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        assert _pid_alive(child.pid)
        assert child.stdin is not None
        child.stdin.close()
        wait_for(
            lambda: Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] == "Z",
            10,
            "no zombie",
        )
        assert not _pid_alive(child.pid)  # exited, not yet reaped
    finally:
        child.kill()
        child.wait()
    assert not _pid_alive(child.pid)
    assert not _pid_alive(0) and not _pid_alive(-1)
