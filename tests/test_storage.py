"""One storage suite, run against every backend; then backend-specific tests.

The shared tests take the ``storage`` fixture (ids memory / file / s3); the S3
backend talks to a real moto server over loopback.
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fastelect.storage
from fastelect import Elector, ElectorConfig
from fastelect.errors import (
    BucketNotFound,
    ConfigError,
    ObjectNotFound,
    PreconditionFailed,
    StorageAuthError,
    StorageError,
    StorageUnavailable,
)
from fastelect.storage import MAX_OBJECT_SIZE, FileStorage, MemoryStorage, S3Storage, Storage
from helpers import (
    S3_REGION,
    S3Auth,
    StubHTTPServer,
    boto3_client,
    free_port,
    make_s3_storage,
    silent_listener,
)

KEY = "election/cluster"

# -- every backend -------------------------------------------------------------


@pytest.mark.asyncio
async def test_backend_satisfies_protocol(storage: Storage) -> None:
    assert isinstance(storage, Storage)
    await storage.check()


@pytest.mark.asyncio
async def test_create_if_absent_then_exists(storage: Storage) -> None:
    etag = await storage.put_if_match(KEY, b'{"term": 1}', "")
    assert etag
    assert await storage.get(KEY) == (b'{"term": 1}', etag)

    with pytest.raises(PreconditionFailed):
        await storage.put_if_match(KEY, b'{"term": 2}', "")
    assert await storage.get(KEY) == (b'{"term": 1}', etag)


@pytest.mark.asyncio
async def test_replace_with_current_etag(storage: Storage) -> None:
    first = await storage.put_if_match(KEY, b"one", "")
    second = await storage.put_if_match(KEY, b"two", first)
    assert second != first
    assert await storage.get(KEY) == (b"two", second)


@pytest.mark.asyncio
async def test_stale_or_wrong_etag_fails(storage: Storage) -> None:
    first = await storage.put_if_match(KEY, b"one", "")
    second = await storage.put_if_match(KEY, b"two", first)

    with pytest.raises(PreconditionFailed):
        await storage.put_if_match(KEY, b"three", first)
    with pytest.raises(PreconditionFailed):
        await storage.put_if_match(KEY, b"three", '"0123456789abcdef0123456789abcdef"')
    assert await storage.get(KEY) == (b"two", second)


@pytest.mark.asyncio
async def test_if_match_on_missing_object_fails(storage: Storage) -> None:
    # The object was deleted after we read it: the condition cannot hold.
    with pytest.raises(PreconditionFailed):
        await storage.put_if_match(KEY, b"x", '"0123456789abcdef0123456789abcdef"')
    with pytest.raises(ObjectNotFound):
        await storage.get(KEY)


@pytest.mark.asyncio
async def test_identical_bytes_get_new_etags(storage: Storage) -> None:
    etags = [await storage.put_if_match(KEY, b"same", "")]
    for _ in range(5):
        etags.append(await storage.put_if_match(KEY, b"same", etags[-1]))

    if isinstance(storage, S3Storage):
        # S3 (and moto) etags are the content's MD5: identical bytes, identical
        # etag. That is why every fastelect record's bytes differ.
        assert len(set(etags)) == 1
        return
    assert len(set(etags)) == len(etags)
    for stale in etags[:-1]:  # no ABA: an old etag never matches again
        with pytest.raises(PreconditionFailed):
            await storage.put_if_match(KEY, b"same", stale)


@pytest.mark.asyncio
async def test_get_missing_raises_object_not_found(storage: Storage) -> None:
    with pytest.raises(ObjectNotFound):
        await storage.get("never-written")


@pytest.mark.asyncio
async def test_bytes_round_trip_exactly(storage: Storage) -> None:
    body = bytes(range(256)) + b"\r\n\x00{}"
    etag = await storage.put_if_match(KEY, body, "")
    assert await storage.get(KEY) == (body, etag)


@pytest.mark.asyncio
async def test_oversized_object_is_truncated_but_replaceable(storage: Storage) -> None:
    big = os.urandom(MAX_OBJECT_SIZE + 10_000)
    etag = await storage.put_if_match(KEY, big, "")

    body, seen = await storage.get(KEY)
    assert body == big[: MAX_OBJECT_SIZE + 1]
    assert seen == etag
    # The etag of garbage is real: an elector can still replace it.
    fixed = await storage.put_if_match(KEY, b"{}", seen)
    assert await storage.get(KEY) == (b"{}", fixed)


@pytest.mark.asyncio
async def test_concurrent_creates_have_one_winner(storage: Storage) -> None:
    results = await asyncio.gather(
        *(storage.put_if_match(KEY, f"racer-{i}".encode(), "") for i in range(10)),
        return_exceptions=True,
    )
    winners = [i for i, result in enumerate(results) if isinstance(result, str)]
    assert len(winners) == 1, results
    lost_otherwise = [r for r in results if not isinstance(r, str | PreconditionFailed)]
    assert not lost_otherwise, lost_otherwise
    assert await storage.get(KEY) == (f"racer-{winners[0]}".encode(), results[winners[0]])


@pytest.mark.asyncio
async def test_concurrent_replacements_have_one_winner(storage: Storage) -> None:
    etag = await storage.put_if_match(KEY, b"start", "")
    results = await asyncio.gather(
        *(storage.put_if_match(KEY, f"racer-{i}".encode(), etag) for i in range(10)),
        return_exceptions=True,
    )
    winners = [i for i, r in enumerate(results) if isinstance(r, str)]
    # A loser may also time out (SeaweedFS answers some contended 412s seconds
    # late): an unknown outcome, which the read below settles.
    unknown = [i for i, r in enumerate(results) if isinstance(r, StorageUnavailable)]
    assert all(isinstance(r, str | PreconditionFailed | StorageUnavailable) for r in results), (
        results
    )
    assert len(winners) <= 1, results
    body, final = await storage.get(KEY)
    if winners:
        assert (body, final) == (f"racer-{winners[0]}".encode(), results[winners[0]])
    else:
        assert unknown, results
        lost = any(isinstance(r, PreconditionFailed) for r in results)
        # Someone's 412 means a write landed: one of the unknowns; none means none may have.
        assert body in {f"racer-{i}".encode() for i in unknown} | (set() if lost else {b"start"})


@pytest.mark.asyncio
async def test_keys_sharing_a_prefix_are_independent(storage: Storage) -> None:
    keys = ["lock", "lock2", "a/lock", "b/lock", "a/lock/x"]
    etags = {key: await storage.put_if_match(key, key.encode(), "") for key in keys}
    for key in keys:
        assert await storage.get(key) == (key.encode(), etags[key])


@pytest.mark.asyncio
async def test_stats_count_every_request(storage: Storage) -> None:
    stats = storage.stats  # type: ignore[attr-defined]
    etag = await storage.put_if_match(KEY, b"x", "")
    with pytest.raises(PreconditionFailed):
        await storage.put_if_match(KEY, b"x", "")
    await storage.get(KEY)
    with pytest.raises(ObjectNotFound):
        await storage.get("missing")
    await storage.put_if_match(KEY, b"y", etag)
    assert (stats.gets, stats.puts) == (2, 3)


@pytest.mark.asyncio
async def test_describe_names_the_location(storage: Storage) -> None:
    where = storage.describe(KEY)
    if isinstance(storage, MemoryStorage):
        assert where == f"memory://{KEY}"
    elif isinstance(storage, FileStorage):
        assert where == f"file://{storage.directory}/election%2Fcluster"
    else:
        assert isinstance(storage, S3Storage)
        assert where == f"s3://{storage.bucket}/{storage.prefix}/{KEY}"


@pytest.mark.asyncio
async def test_closed_storage_refuses_work(storage: Storage) -> None:
    await storage.put_if_match(KEY, b"x", "")
    await storage.close()
    await storage.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        await storage.get(KEY)
    with pytest.raises(StorageError, match="closed"):
        await storage.put_if_match(KEY, b"y", "")


_RACER = """
import asyncio, sys
from fastelect.errors import PreconditionFailed
from fastelect.storage import FileStorage, S3Storage

async def main(me, kind, *where):
    if kind == "file":
        storage = FileStorage(where[0], create=True, lock_timeout=10)
    else:
        endpoint, bucket, prefix = where
        storage = S3Storage(bucket, prefix, endpoint_url=endpoint, region_name="us-east-1",
                            timeout=10)
    await storage.check()  # connect (and warm the client) before the first round
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        round_, etag = line.split()
        etag = "" if etag == "-" else etag
        try:
            new = await storage.put_if_match("race", f"{me}/{round_}".encode(), etag)
        except PreconditionFailed:
            print("lose", flush=True)
        except Exception as exc:
            print("error", type(exc).__name__, str(exc).replace("\\n", " "), flush=True)
        else:
            print("win", new, flush=True)
    await storage.close()

asyncio.run(main(*sys.argv[1:]))
"""
RACERS, ROUNDS = 4, 25


# The racers are processes: which loop the test itself runs on does not matter.
@pytest.mark.one_loop
@pytest.mark.asyncio
async def test_processes_racing_on_one_key_have_one_winner_per_round(storage: Storage) -> None:
    """N racers, many rounds on one etag each: one winner, distinct etags, last write stays.

    Racers are processes for every backend that crosses processes (memory
    cannot: its racers are tasks). Each round every racer gets the same
    etag (the last winner's; none for the first round, a create) at once.
    Racers allow 10 s per request: SeaweedFS answers some losers' 412 only
    after 1-3 s (they wait on its per-object lock).
    """
    if isinstance(storage, MemoryStorage):

        async def race(round_: int, etag: str) -> list[str]:
            async def one(me: int) -> str:
                try:
                    return "win " + await storage.put_if_match(
                        "race", f"{me}/{round_}".encode(), etag
                    )
                except PreconditionFailed:
                    return "lose"

            # gather() starts tasks in order, so the first would always win.
            order = random.sample(range(RACERS), RACERS)
            results = dict(
                zip(order, await asyncio.gather(*(one(me) for me in order)), strict=True)
            )
            return [results[me] for me in range(RACERS)]

        await _run_rounds(storage, race)
        return

    if isinstance(storage, FileStorage):
        where = ["file", storage.directory]
    else:
        assert isinstance(storage, S3Storage)
        where = ["s3", storage._endpoint_url or "", storage.bucket, storage.prefix]
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(me), *where],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_child_env(),
            text=True,
        )
        for me in range(RACERS)
    ]

    def line(racer: subprocess.Popen[str]) -> str:
        assert racer.stdout is not None
        text = racer.stdout.readline().strip()
        assert text, f"racer pid {racer.pid} exited (code {racer.poll()})"
        return text

    async def race(round_: int, etag: str) -> list[str]:
        for racer in racers:
            assert racer.stdin is not None
            racer.stdin.write(f"{round_} {etag or '-'}\n")
            racer.stdin.flush()
        return [await asyncio.to_thread(line, racer) for racer in racers]

    try:
        for racer in racers:
            assert await asyncio.to_thread(line, racer) == "ready"
        await _run_rounds(storage, race)
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
            racer.wait(timeout=30)
            for pipe in (racer.stdin, racer.stdout):
                if pipe is not None:
                    pipe.close()


async def _run_rounds(storage: Storage, race: Any) -> None:
    etag, winners = "", []
    for round_ in range(ROUNDS):
        outcomes = await race(round_, etag)
        errors = [o for o in outcomes if not o.startswith(("win ", "lose"))]
        assert not errors, f"round {round_}: {errors}"
        won = [(me, o.split(" ", 1)[1]) for me, o in enumerate(outcomes) if o.startswith("win ")]
        assert len(won) == 1, f"round {round_} (etag {etag!r}): winners {won}"
        winners.append(won[0])
        etag = won[0][1]
    etags = [e for _, e in winners]
    assert len(set(etags)) == len(etags), f"an etag repeated: {etags}"
    last_me = winners[-1][0]
    assert await storage.get("race") == (f"{last_me}/{ROUNDS - 1}".encode(), etag)
    # Not always the same racer: the race is real (with 4 racers over 25
    # rounds one racer winning every round would be a broken harness).
    assert len({me for me, _ in winners}) > 1, winners


# -- FileStorage -----------------------------------------------------------------

# Sources for child processes; they import the same fastelect as this process.
_SRC = str(Path(fastelect.storage.__file__).resolve().parents[2])

_COUNTER_WORKER = """
import asyncio, sys
from fastelect.errors import PreconditionFailed
from fastelect.storage import FileStorage

async def main(directory, n):
    storage = FileStorage(directory, lock_timeout=10)
    print("ready", flush=True)
    sys.stdin.readline()  # start line: both workers race from here
    done = conflicts = 0
    while done < n:
        body, etag = await storage.get("counter")
        try:
            await storage.put_if_match("counter", b"%d" % (int(body) + 1), etag)
        except PreconditionFailed:
            conflicts += 1
        else:
            done += 1
    print(conflicts, flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": _SRC}


@pytest.mark.asyncio
async def test_file_two_processes_lose_no_update(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    await storage.put_if_match("counter", b"0", "")
    n = 150
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _COUNTER_WORKER, str(tmp_path), str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_child_env(),
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outputs = [worker.communicate(timeout=60)[0] for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert [w.returncode for w in workers] == [0, 0]
    body, _ = await storage.get("counter")
    assert int(body) == 2 * n
    # The workers really raced: each conflict is a lost update CAS prevented.
    assert sum(int(out) for out in outputs) > 0


_STALLED_WRITER = """
import asyncio, os, sys
from fastelect.storage import FileStorage

real_fsync = os.fsync

def stalled_fsync(fd):
    # Fault injection at the disk boundary: the temp file is written and this
    # writer holds the key's lock; stall here until killed.
    print("in fsync", flush=True)
    sys.stdin.readline()
    real_fsync(fd)

os.fsync = stalled_fsync
storage = FileStorage(sys.argv[1])
asyncio.run(storage.put_if_match("counter", b"from the killed writer", sys.argv[2]))
"""


@pytest.mark.asyncio
async def test_file_temp_file_of_a_writer_killed_mid_write_is_removed(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    etag = await storage.put_if_match("counter", b"before", "")
    writer = subprocess.Popen(
        [sys.executable, "-c", _STALLED_WRITER, str(tmp_path), etag],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_child_env(),
        text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "in fsync"
        writer.kill()
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        for pipe in (writer.stdin, writer.stdout):
            if pipe is not None:
                pipe.close()
    orphans = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert orphans == [f".counter.{writer.pid}.{orphans[0].split('.')[-2]}.tmp"], orphans
    # The killed write never landed, and its lock died with it.
    assert await storage.get("counter") == (b"before", etag)

    # A key sharing the prefix keeps its own temp files.
    other = tmp_path / f".counter.1.{writer.pid}.0123456789abcdef.tmp"
    other.write_bytes(b"another key's in-flight write")
    new = await FileStorage(tmp_path).put_if_match("counter", b"after", etag)
    assert await storage.get("counter") == (b"after", new)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == [other.name]


@pytest.mark.parametrize(
    "key", ["", "../escape", "a/../../escape", "/etc/passwd", "a//b", "./a", "a/.", "a/", "nul\0"]
)
@pytest.mark.asyncio
async def test_file_rejects_keys_that_are_not_plain_relative_paths(
    tmp_path: Path, key: str
) -> None:
    storage = FileStorage(tmp_path / "locks", create=True)
    with pytest.raises(ConfigError, match="key"):
        storage.describe(key)
    with pytest.raises(ConfigError):
        await storage.put_if_match(key, b"x", "")
    with pytest.raises(ConfigError):
        await storage.get(key)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.asyncio
async def test_file_keys_map_to_files_inside_the_directory(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    for key in [".hidden", "a/b", "%2F", "x" * 60]:
        await storage.put_if_match(key, b"v", "")
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert names == sorted(["%2Ehidden", "a%2Fb", "%252F", "x" * 60])
    # Lock files are the only hidden files left; no temp file survives a write.
    hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert all(name.endswith(".lock") for name in hidden), hidden


@pytest.mark.asyncio
async def test_file_check_creates_directory_0700(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b" / "locks"
    await FileStorage(directory, create=True).check()
    assert directory.is_dir()
    assert directory.stat().st_mode & 0o777 == 0o700


@pytest.mark.asyncio
async def test_file_directory_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "locks"
    path.write_text("not a directory")
    storage = FileStorage(path, create=True)  # without create: a ConfigError at once
    for attempt in (storage.check(), storage.get(KEY), storage.put_if_match(KEY, b"x", "")):
        with pytest.raises(StorageError, match="is not a directory") as info:
            await attempt
        assert not isinstance(info.value, StorageAuthError | StorageUnavailable)
        assert str(path) in str(info.value)


@pytest.mark.asyncio
async def test_file_path_through_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    storage = FileStorage(tmp_path / "file" / "locks", create=True)
    with pytest.raises(StorageError, match="is a file, not a directory") as info:
        await storage.check()
    assert not isinstance(info.value, StorageAuthError | StorageUnavailable)


_PERMISSION_PROBE = """
import asyncio, json, os, sys
from fastelect.errors import StorageError
from fastelect.storage import FileStorage

async def attempt(operation):
    try:
        await operation()
    except StorageError as exc:
        return [type(exc).__name__, str(exc)]
    return ["ok", ""]

async def main(private, readonly):
    missing = FileStorage(os.path.join(private, "locks"), create=True)
    locked = FileStorage(private)
    unwritable = FileStorage(readonly)
    print(json.dumps({
        "check a directory we may not create": await attempt(missing.check),
        "get in a directory we may not enter": await attempt(lambda: locked.get("k")),
        "put in a directory we may not enter": await attempt(
            lambda: locked.put_if_match("k", b"x", "")),
        "check a read-only directory": await attempt(unwritable.check),
        "put in a read-only directory": await attempt(
            lambda: unwritable.put_if_match("k", b"x", "")),
    }))

if sys.argv[3] == "drop":
    # Python's own files live under /root (0700): import what the run needs
    # lazily, then become nobody, for whom root's modes apply.
    import concurrent.futures.thread
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.fixture
def restricted_dirs() -> Iterator[tuple[Path, Path, str]]:
    """(private, read-only) directories this test's child may not write, and how.

    Root ignores file modes (CAP_DAC_OVERRIDE), so as root the child drops to
    uid/gid 65534 after its imports (python lives under /root, which nobody
    could not even exec from) and meets root-owned 0700 / 0755 directories.
    Otherwise the modes are taken from the owner itself: 0000 and 0555.
    """
    base = Path(tempfile.mkdtemp(prefix="fastelect-perm-"))
    private, readonly = base / "private", base / "readonly"
    private.mkdir()
    readonly.mkdir()
    as_root = os.geteuid() == 0
    base.chmod(0o755)  # the child can reach both directories
    private.chmod(0o700 if as_root else 0o000)
    readonly.chmod(0o755 if as_root else 0o555)
    try:
        yield private, readonly, "drop" if as_root else "stay"
    finally:
        private.chmod(0o700)
        readonly.chmod(0o700)
        shutil.rmtree(base)


def test_file_permission_denied_is_an_auth_error(
    restricted_dirs: tuple[Path, Path, str],
) -> None:
    private, readonly, mode = restricted_dirs
    result = subprocess.run(
        [sys.executable, "-c", _PERMISSION_PROBE, str(private), str(readonly), mode],
        capture_output=True,
        env=_child_env(),
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout)
    for case, (error, message) in outcomes.items():
        assert error == "StorageAuthError", (case, error, message)
        assert "permission denied" in message, (case, message)
    assert str(private) in outcomes["check a directory we may not create"][1]
    assert str(readonly) in outcomes["check a read-only directory"][1]


@pytest.mark.asyncio
async def test_file_foreign_content_gets_a_stat_etag_and_can_be_replaced(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    path = Path(storage.describe(KEY).removeprefix("file://"))
    path.write_bytes(b"garbage written by hand")

    body, etag = await storage.get(KEY)
    assert (body, etag.startswith('"stat-')) == (b"garbage written by hand", True)
    with pytest.raises(PreconditionFailed):
        await storage.put_if_match(KEY, b"{}", "")
    new = await storage.put_if_match(KEY, b"{}", etag)
    assert await storage.get(KEY) == (b"{}", new)
    with pytest.raises(PreconditionFailed):
        await storage.put_if_match(KEY, b"{}", etag)


@pytest.mark.asyncio
async def test_file_lock_held_elsewhere_times_out_as_unavailable(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path, lock_timeout=0.2)
    etag = await storage.put_if_match(KEY, b"x", "")
    lock_path = tmp_path / f".{Path(storage.describe(KEY)).name}.lock"
    with open(lock_path, "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another writer, frozen mid-write
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="waiting for the lock"):
            await storage.put_if_match(KEY, b"y", etag)
        assert time.monotonic() - started < 2
        assert await storage.get(KEY) == (b"x", etag)  # reads take no lock
    assert await storage.put_if_match(KEY, b"y", etag)


def test_file_rejects_bad_config() -> None:
    with pytest.raises(ConfigError, match="directory"):
        FileStorage("")
    with pytest.raises(ConfigError, match="lock_timeout"):
        FileStorage("/tmp/x", lock_timeout=0)


# -- S3Storage -------------------------------------------------------------------


def test_s3_key_joins_prefix_with_exactly_one_slash() -> None:
    assert S3Storage("b").describe("k") == "s3://b/k"
    assert S3Storage("b", "p").describe("k") == "s3://b/p/k"
    assert S3Storage("b", "p/").describe("k") == "s3://b/p/k"
    assert S3Storage("b", "/p/q//").describe("/k") == "s3://b/p/q/k"
    with pytest.raises(ConfigError, match="key"):
        S3Storage("b").describe("")


def test_s3_rejects_bad_config() -> None:
    with pytest.raises(ConfigError, match="bucket"):
        S3Storage("")
    with pytest.raises(ConfigError, match="timeout"):
        S3Storage("b", timeout=0)
    with pytest.raises(ConfigError, match="aws_access_key_id"):
        S3Storage("b", aws_access_key_id="AKIA")


@pytest.mark.asyncio
async def test_s3_prefixes_isolate_storages(s3_server: tuple[str, str]) -> None:
    one = make_s3_storage(*s3_server)
    two = make_s3_storage(*s3_server)
    try:
        await one.put_if_match(KEY, b"one", "")
        await two.put_if_match(KEY, b"two", "")
        assert (await one.get(KEY))[0] == b"one"
        assert (await two.get(KEY))[0] == b"two"
    finally:
        await one.close()
        await two.close()


@pytest.mark.asyncio
async def test_s3_put_sends_json_content_type(s3_server: tuple[str, str]) -> None:
    storage = make_s3_storage(*s3_server)
    client = boto3_client("s3", s3_server[0])
    try:
        await storage.put_if_match(KEY, b"{}", "")
        head = client.head_object(Bucket=storage.bucket, Key=f"{storage.prefix}/{KEY}")
    finally:
        client.close()
        await storage.close()
    assert head["ContentType"] == "application/json"


@pytest.mark.asyncio
async def test_s3_missing_bucket_is_bucket_not_found(s3_server: tuple[str, str]) -> None:
    endpoint, _ = s3_server
    storage = make_s3_storage(endpoint, "no-such-bucket")
    try:
        for attempt in (storage.check(), storage.get(KEY), storage.put_if_match(KEY, b"x", "")):
            with pytest.raises(BucketNotFound) as info:
                await attempt
            assert "'no-such-bucket'" in str(info.value)
            assert endpoint in str(info.value)
    finally:
        await storage.close()


@pytest.mark.asyncio
async def test_s3_check_finds_a_missing_bucket_where_put_would_create_it(
    seaweedfs_autocreate_server: str,
) -> None:
    """SeaweedFS by default creates a missing bucket on PUT (admin identities).

    A typo in the bucket name would then silently start a fresh election in
    a new bucket. ``check()`` (which Elector.start runs first) still reports
    BucketNotFound: HeadBucket does not create.
    """
    bucket = f"typo-{uuid.uuid4().hex[:12]}"
    storage = make_s3_storage(seaweedfs_autocreate_server, bucket)
    try:
        with pytest.raises(BucketNotFound, match=f"'{bucket}'"):
            await storage.check()
        elector = Elector(ElectorConfig("leader.json", "x", "127.0.0.1:1"), storage)
        with pytest.raises(BucketNotFound):
            await elector.start()
        assert not elector.running
        # What the check protects against: a bare PUT creates the bucket.
        await storage.put_if_match(KEY, b"x", "")
        await storage.check()
    finally:
        await storage.close()


@pytest.mark.asyncio
async def test_s3_auth_enforcing_server_accepts_good_credentials(
    s3_auth: S3Auth,
) -> None:
    key_id, secret = s3_auth.allowed
    storage = make_s3_storage(
        s3_auth.url,
        s3_auth.bucket,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )
    try:
        await storage.check()
        etag = await storage.put_if_match(KEY, b"x", "")
        assert await storage.get(KEY) == (b"x", etag)
    finally:
        await storage.close()


@pytest.mark.parametrize("who", ["unknown key", "wrong secret", "no permissions"])
@pytest.mark.asyncio
async def test_s3_refused_credentials_are_auth_errors(s3_auth: S3Auth, who: str) -> None:
    key_id, secret, code = {
        "unknown key": ("AKIAIOSFODNN7EXAMPLE", "not-a-secret", "InvalidAccessKeyId"),
        "wrong secret": (s3_auth.allowed[0], "not-the-secret", "SignatureDoesNotMatch"),
        "no permissions": (*s3_auth.denied, "AccessDenied"),
    }[who]
    storage = make_s3_storage(
        s3_auth.url,
        s3_auth.bucket,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )
    try:
        # HeadBucket answers a bare 403 (a HEAD has no body); GET and PUT name the cause.
        with pytest.raises(StorageAuthError, match=r"403.*check the credentials"):
            await storage.check()
        for attempt in (storage.get(KEY), storage.put_if_match(KEY, b"x", "")):
            with pytest.raises(StorageAuthError, match=rf"{code}.*check the credentials"):
                await attempt
    finally:
        await storage.close()


@pytest.mark.asyncio
async def test_s3_unreachable_endpoint_is_unavailable_quickly() -> None:
    storage = S3Storage(
        "bucket", endpoint_url=f"http://127.0.0.1:{free_port()}", region_name=S3_REGION
    )
    try:
        started = time.monotonic()
        for attempt in (storage.check(), storage.get(KEY), storage.put_if_match(KEY, b"x", "")):
            with pytest.raises(StorageUnavailable):
                await attempt
        assert time.monotonic() - started < 2.0  # refused at once: no retries, no backoff
    finally:
        await storage.close()


@pytest.mark.asyncio
async def test_s3_silent_endpoint_times_out_as_unavailable() -> None:
    with silent_listener() as port:
        storage = S3Storage(
            "bucket", endpoint_url=f"http://127.0.0.1:{port}", region_name=S3_REGION, timeout=0.3
        )
        try:
            started = time.monotonic()
            with pytest.raises(StorageUnavailable):
                await storage.get(KEY)
            assert 0.25 <= time.monotonic() - started < 1.5
        finally:
            await storage.close()


def _s3_error(code: str) -> bytes:
    return f"<Error><Code>{code}</Code><Message>{code} from stub</Message></Error>".encode()


@pytest.mark.parametrize(
    ("status", "reason", "code", "expected"),
    [
        (503, "Slow Down", "SlowDown", StorageUnavailable),
        (500, "Internal Server Error", "InternalError", StorageUnavailable),
        (409, "Conflict", "ConditionalRequestConflict", PreconditionFailed),
        (412, "Precondition Failed", "PreconditionFailed", PreconditionFailed),
        (403, "Forbidden", "ExpiredToken", StorageAuthError),
        (400, "Bad Request", "ExpiredToken", StorageAuthError),
        (501, "Not Implemented", "NotImplemented", StorageError),
    ],
)
@pytest.mark.asyncio
async def test_s3_error_answers_map_and_are_not_retried(
    status: int, reason: str, code: str, expected: type[StorageError]
) -> None:
    async with StubHTTPServer(status, reason, _s3_error(code)) as stub:
        storage = S3Storage("bucket", endpoint_url=stub.url, region_name=S3_REGION)
        try:
            with pytest.raises(expected) as info:
                await storage.put_if_match(KEY, b"x", '"etag"')
        finally:
            await storage.close()
    assert type(info.value) is expected
    assert isinstance(info.value.__cause__, Exception)  # raised "from" the original
    assert len(stub.requests) == 1, stub.requests  # botocore's retries are off
    assert stub.requests[0].startswith("PUT /bucket/")


@pytest.mark.asyncio
async def test_s3_client_is_reused_and_closed_cleanly(s3_server: tuple[str, str]) -> None:
    storage = make_s3_storage(*s3_server)
    etag = await storage.put_if_match(KEY, b"x", "")
    client = await storage._get_client()
    await storage.get(KEY)
    await storage.put_if_match(KEY, b"y", etag)
    assert await storage._get_client() is client

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await storage.close()
        del client
        gc.collect()
    assert [str(w.message) for w in caught] == []
    with pytest.raises(StorageError, match="closed"):
        await storage.check()


@pytest.mark.asyncio
async def test_s3_close_before_first_use_is_fine() -> None:
    storage = S3Storage("bucket", endpoint_url="http://127.0.0.1:9", region_name=S3_REGION)
    await storage.close()
    with pytest.raises(StorageError, match="closed"):
        await storage.get(KEY)
