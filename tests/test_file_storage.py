"""FileStorage at its boundaries: spellings of one directory, its own I/O threads,
interpreter exit, read-only filesystems, and what may stand in place of its files.

The contract tests every backend shares live in test_storage.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from elector_helpers import fast_config
from fastelect import Elector
from fastelect.cli.stores import parse_store_url
from fastelect.errors import (
    ConfigError,
    StorageAuthError,
    StorageError,
    StorageReadOnly,
    StorageUnavailable,
)
from fastelect.storage import FileStorage
from fastelect.storage._io_threads import IOThreads
from helpers import wait_until
from test_cli import cli

KEY = "election/cluster"


# -- one directory, one lock ---------------------------------------------------


@pytest.fixture
def spellings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, str]]:
    """One directory (``tmp/real/locks``) and six ways to write it.

    ``jump`` is a symlink to ``tmp/real/x``, so the kernel takes
    ``real2/jump/../locks`` to ``tmp/real/locks``, while crossing ``jump/..``
    out as text names ``tmp/real2/locks``: another directory, another lock.
    """
    real = tmp_path / "real" / "locks"
    (real / "sub").mkdir(parents=True)
    (tmp_path / "real" / "x").mkdir()
    (tmp_path / "real2").mkdir()
    (tmp_path / "real2" / "jump").symlink_to(tmp_path / "real" / "x")
    (tmp_path / "link").symlink_to(real)
    monkeypatch.chdir(tmp_path)  # for the relative spelling
    return real, {
        "absolute": str(real),
        "trailing slash": f"{real}/",
        "sub/..": f"{real}/sub/..",
        "directory symlink": str(tmp_path / "link"),
        "relative": "real/locks",
        ".. after a symlink": f"{tmp_path}/real2/jump/../locks",
    }


def test_every_spelling_resolves_to_one_path(spellings: tuple[Path, dict[str, str]]) -> None:
    real, names = spellings
    for how, spelling in names.items():
        storage = FileStorage(spelling)
        assert storage.directory == str(real), how
        assert storage.describe(KEY) == f"file://{real}/election%2Fcluster", how
    for how, spelling in names.items():
        if how == "relative":
            continue  # a file:// URL takes an absolute path
        spec = parse_store_url(f"file://{spelling}")
        assert spec.path == str(real), how
        assert spec.create().describe(KEY) == f"file://{real}/election%2Fcluster", how


@pytest.mark.asyncio
async def test_electors_on_every_spelling_of_one_directory_never_lead_at_once(
    spellings: tuple[Path, dict[str, str]],
) -> None:
    real, names = spellings
    electors = {
        how: Elector(fast_config(f"node-{i}"), FileStorage(spelling))
        for i, (how, spelling) in enumerate(names.items())
    }
    overlaps: list[list[str]] = []
    seen_leaders: set[str] = set()

    async def sample(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            leading = [how for how, e in electors.items() if e.is_leader()]
            if len(leading) > 1:
                overlaps.append(leading)
            seen_leaders.update(leading)
            await asyncio.sleep(0.002)

    try:
        for elector in electors.values():
            await elector.start()
        await wait_until(lambda: any(e.is_leader() for e in electors.values()), 5, "nobody led")
        # Over several leases (T = 0.3 s), then through two handovers.
        await sample(1.0)
        for _ in range(2):
            for elector in [e for e in electors.values() if e.is_leader()]:
                await elector.stop()
            await sample(0.8)
        assert not overlaps, (
            f"two spellings led at once, e.g. {overlaps[0]} ({len(overlaps)} samples)"
        )
        assert len(seen_leaders) >= 2, seen_leaders  # the handovers really happened
    finally:
        for elector in electors.values():
            await elector.stop()
    # One record, in the one directory.
    assert (real / "leader.json").is_file()
    assert not (real.parent.parent / "real2" / "locks").exists()


@pytest.mark.asyncio
async def test_dotdot_after_a_symlink_creates_nothing_beside_the_link(tmp_path: Path) -> None:
    (tmp_path / "real" / "x").mkdir(parents=True)
    (tmp_path / "real2").mkdir()
    (tmp_path / "real2" / "jump").symlink_to(tmp_path / "real" / "x")
    storage = FileStorage(tmp_path / "real2" / "jump" / ".." / "fresh", create=True)
    await storage.put_if_match(KEY, b"x", "")
    assert (tmp_path / "real" / "fresh").is_dir()
    assert not (tmp_path / "real2" / "fresh").exists()  # what abspath would have invented


def test_dotdot_after_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    spelling = f"{tmp_path}/missing/../locks"
    with pytest.raises(ConfigError, match=r"missing.*cannot be reached") as info:
        FileStorage(spelling)
    assert info.value.field == "directory"
    with pytest.raises(ConfigError, match="cannot be reached") as cli:
        parse_store_url(f"file://{spelling}")
    assert cli.value.field == "--store"
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="Not a directory"):
        FileStorage(f"{tmp_path}/file/../locks")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing was created


# -- a missing directory is an error, not a second lock -------------------------


def test_a_missing_directory_is_a_config_error_naming_it(tmp_path: Path) -> None:
    typo = tmp_path / "lcoks"
    with pytest.raises(ConfigError) as info:
        FileStorage(typo)
    assert info.value.field == "directory"
    message = str(info.value)
    assert f"{typo} does not exist" in message and "create=True" in message
    # Another spelling: the message shows what was given and what it resolved to.
    (tmp_path / "sub").mkdir()
    with pytest.raises(ConfigError, match=r"lcoks \(given as '.*/sub/\.\./lcoks'\)"):
        FileStorage(f"{tmp_path}/sub/../lcoks")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="exists but is not a directory"):
        FileStorage(tmp_path / "file")
    with pytest.raises(ConfigError, match="component of the path is a file"):
        FileStorage(tmp_path / "file" / "locks")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "sub"]  # nothing was made


@pytest.mark.asyncio
async def test_create_true_makes_the_directory_0700_on_first_use(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "locks"
    storage = FileStorage(directory, create=True)
    assert not directory.exists()  # construction writes nothing
    etag = await storage.put_if_match(KEY, b"x", "")
    assert directory.stat().st_mode & 0o777 == 0o700
    assert await FileStorage(directory).get(KEY) == (b"x", etag)  # exists now: create not needed


@pytest.mark.asyncio
async def test_a_directory_removed_in_use_is_not_made_again(tmp_path: Path) -> None:
    directory = tmp_path / "locks"
    directory.mkdir()
    storage = FileStorage(directory)
    etag = await storage.put_if_match(KEY, b"x", "")
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()
    for attempt in (storage.put_if_match(KEY, b"y", etag), storage.check()):
        with pytest.raises(StorageError, match="no longer exists") as info:
            await attempt
        assert str(directory) in str(info.value)
    assert not directory.exists()  # a new, empty directory would be a new lock
    made = FileStorage(directory, create=True)
    await made.check()
    assert directory.is_dir()


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--id", "a", "--", "true"],
        ["check"],
        ["demo", "--nodes", "2"],
        ["status"],
    ],
    ids=lambda argv: argv[0],
)
def test_cli_file_stores_must_exist(tmp_path: Path, argv: list[str]) -> None:
    typo = tmp_path / "lcoks"
    done = cli(argv[0], "--store", f"file://{typo}", *argv[1:])
    assert done.returncode == 2, done
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastelect: error: "), done.stderr
    assert f"{typo} does not exist" in lines[0]
    # status only reads: it offers no flag to make the directory.
    assert ("--create-store" in lines[0]) == (argv[0] != "status"), lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing was made


@pytest.mark.parametrize("command", ["run", "check"])
def test_cli_create_store_makes_the_directory_0700(tmp_path: Path, command: str) -> None:
    directory = tmp_path / "new" / "locks"
    if command == "run":
        argv = ["run", "--store", f"file://{directory}", "--create-store", "--id", "a"]
        done = cli(*argv, "--leader-timeout", "1", "--frequent-interval", "0.2", "--", "true")
    else:
        done = cli("check", "--store", f"file://{directory}", "--create-store")
    assert done.returncode == 0, done.stderr
    assert directory.stat().st_mode & 0o777 == 0o700
    if command == "run":
        assert (directory / "leader.json").is_file()


# -- its own I/O threads -------------------------------------------------------


@pytest.mark.asyncio
async def test_storage_works_after_the_loops_default_executor_shut_down(tmp_path: Path) -> None:
    # Interpreter exit shuts concurrent.futures down before atexit handlers
    # run; a store on the default executor could not release there.
    await asyncio.get_running_loop().shutdown_default_executor()
    storage = FileStorage(tmp_path)
    etag = await storage.put_if_match(KEY, b"x", "")
    assert await storage.get(KEY) == (b"x", etag)
    await storage.check()
    await storage.delete(KEY)


@pytest.fixture
def fifo_key(tmp_path: Path) -> Iterator[tuple[FileStorage, str]]:
    """A storage whose KEY's file is a FIFO: opening it hangs in the kernel.

    Unblocked at teardown by opening the FIFO for writing.
    """
    storage = FileStorage(tmp_path)
    path = storage.describe(KEY).removeprefix("file://")
    os.mkfifo(path)
    try:
        yield storage, path
    finally:
        # Every reader blocked in open() returns once a writer opens it.
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        os.close(fd)


@pytest.mark.asyncio
async def test_hung_filesystem_calls_keep_a_bounded_number_of_threads(
    fifo_key: tuple[FileStorage, str],
) -> None:
    storage, path = fifo_key
    io = storage._io
    # Counted by name: idle I/O threads of earlier tests' storages may exit
    # meanwhile, so the process's thread count is no measure of this pool.
    name = f"fastelect-io {io._name}"
    assert not [t for t in threading.enumerate() if t.name == name]
    for _ in range(40):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(storage.get(KEY), 0.02)
    assert io.threads == 8, io.threads  # the pool's bound, all stuck in open()
    assert len([t for t in threading.enumerate() if t.name == name]) == 8
    # Calls that gave up were dropped from the queue, not left to pile up.
    await asyncio.sleep(0)
    assert io.waiting <= 40
    # Unblock the hung opens: the threads come back and serve again.
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    os.close(fd)
    await wait_until(lambda: io.waiting == 0, 5, "queued calls were not drained")
    os.unlink(path)
    etag = await storage.put_if_match(KEY, b"x", "")
    assert await storage.get(KEY) == (b"x", etag)
    assert io.threads <= 8


@pytest.mark.asyncio
async def test_calls_past_the_waiting_bound_fail_at_once() -> None:
    gate = threading.Event()
    io = IOThreads("test", max_threads=2, max_waiting=3, idle_s=0.05)
    try:
        stuck = [asyncio.ensure_future(io.run(gate.wait)) for _ in range(5)]
        await wait_until(lambda: io.waiting == 3, 5, "calls did not queue")
        assert io.threads == 2
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="2 I/O threads are busy and 3 calls"):
            await io.run(gate.wait)
        assert time.monotonic() - started < 0.5
        # A waiter that gives up frees its place in the queue.
        stuck[-1].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stuck[-1]
        late = asyncio.ensure_future(io.run(lambda: "served"))
        await asyncio.sleep(0.01)
        gate.set()
        assert await late == "served"
        assert [await s for s in stuck[:-1]] == [True] * 4
        await wait_until(lambda: io.threads == 0, 5, "idle threads did not exit")
    finally:
        gate.set()


@pytest.mark.asyncio
async def test_a_failing_call_raises_in_the_caller() -> None:
    io = IOThreads("test")

    def fail() -> None:
        raise OSError(errno.EIO, "boom")

    with pytest.raises(OSError, match="boom"):
        await io.run(fail)
    io.close()


# -- read-only filesystems -----------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A private tmpfs mounted on a temp directory (root only), unmounted after."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip(
            "the read-only filesystem test mounts a private tmpfs and remounts it read-only,"
            " which needs root (CAP_SYS_ADMIN); run the suite as root to cover it (CI does)"
        )
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(
            "the read-only filesystem test needs a private tmpfs, and mount refused it here"
            f" (a container without CAP_SYS_ADMIN?): {done.stderr.strip()}"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.asyncio
async def test_a_read_only_filesystem_is_named_as_such(tmpfs: Path) -> None:
    storage = FileStorage(tmpfs / "locks", create=True)
    etag = await storage.put_if_match(KEY, b"x", "")
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    assert await storage.get(KEY) == (b"x", etag)  # reads still work
    for attempt in (storage.put_if_match(KEY, b"y", etag), storage.check()):
        with pytest.raises(StorageReadOnly, match="mounted read-only") as info:
            await attempt
        assert isinstance(info.value, StorageAuthError)  # still a refusal
        assert "permission denied" not in str(info.value)
        assert str(tmpfs / "locks") in str(info.value)
    fresh = FileStorage(tmpfs / "other", create=True)
    with pytest.raises(StorageReadOnly, match="mounted read-only"):
        await fresh.check()  # creating the directory fails the same way


# -- what may stand in place of its files --------------------------------------


def _lock_path(storage: FileStorage, key: str) -> Path:
    path = Path(storage.describe(key).removeprefix("file://"))
    return path.with_name(f".{path.name}.lock")


@pytest.mark.asyncio
async def test_a_lock_file_replaced_by_a_directory_is_named_with_the_fix(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    etag = await storage.put_if_match(KEY, b"x", "")
    lock = _lock_path(storage, KEY)
    lock.unlink()
    lock.mkdir()
    with pytest.raises(StorageError, match="is a directory") as info:
        await storage.put_if_match(KEY, b"y", etag)
    message = str(info.value)
    assert not isinstance(info.value, StorageAuthError | StorageUnavailable)
    assert str(lock) in message and f"rmdir {lock}" in message and "lock file" in message
    lock.rmdir()
    assert await storage.put_if_match(KEY, b"y", etag)


@pytest.mark.asyncio
async def test_a_record_file_replaced_by_a_directory_is_named_with_the_fix(
    tmp_path: Path,
) -> None:
    storage = FileStorage(tmp_path)
    record = Path(storage.describe(KEY).removeprefix("file://"))
    record.mkdir()
    for attempt in (storage.get(KEY), storage.put_if_match(KEY, b"x", "")):
        with pytest.raises(StorageError, match="is a directory") as info:
            await attempt
        assert f"rmdir {record}" in str(info.value) and "a record" in str(info.value)


@pytest.mark.asyncio
@pytest.mark.parametrize("which", ["lock file", "record file"])
async def test_a_symlink_in_place_of_a_file_is_refused_not_followed(
    tmp_path: Path, which: str
) -> None:
    directory, outside = tmp_path / "locks", tmp_path / "outside"
    directory.mkdir()
    outside.mkdir()
    storage = FileStorage(directory)
    record = Path(storage.describe(KEY).removeprefix("file://"))
    planted = _lock_path(storage, KEY) if which == "lock file" else record
    target = outside / "planted"
    planted.symlink_to(target)
    attempts = [storage.put_if_match(KEY, b"x", "")]
    if which == "record file":
        target.write_text("someone else's file")
        attempts.append(storage.get(KEY))
    for attempt in attempts:
        with pytest.raises(StorageError, match="is a symbolic link") as info:
            await attempt
        assert f"rm {planted}" in str(info.value)
    if which == "lock file":
        assert not target.exists()  # never created outside the storage directory
    else:
        assert target.read_text() == "someone else's file"
    planted.unlink()
    assert await storage.put_if_match(KEY, b"x", "")


def test_spelling_pairs_are_all_equal(spellings: tuple[Path, dict[str, str]]) -> None:
    _, names = spellings
    for (a, first), (b, second) in itertools.combinations(names.items(), 2):
        assert FileStorage(first).describe(KEY) == FileStorage(second).describe(KEY), (a, b)
