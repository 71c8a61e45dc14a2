"""A store that refuses writes is not hammered (issue 19 item 6), and says so once.

Against real moto: a user whose IAM policy denies ``s3:PutObject`` (reads
work, every write is a 403), and the fault proxy resetting every PUT (a
transient failure). Requests are counted with ``StorageStats`` and their
send instants recorded, and compared with the documented schedule
(docs/operations.md#retries): immediately, after 100 ms, after 1 s, then one
try per F plus up to F/4 of jitter; a 403 never sooner than F.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from elector_helpers import PassThroughStorage, fast_config
from fastelect import Elector, _logfold
from fastelect._logfold import LogFold, folded_suffix
from fastelect.storage import S3Storage, Storage
from faultproxy import CLEAR, FaultProxy, Faults
from helpers import MotoServer, boto3_client, make_s3_storage

pytestmark = pytest.mark.s3

LOCK = "leader.json"


class Timed(PassThroughStorage):
    """Records when each request was sent (monotonic seconds)."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner)
        self.puts: list[float] = []
        self.gets: list[float] = []

    async def get(self, key: str) -> tuple[bytes, str]:
        self.gets.append(time.monotonic())
        return await self.inner.get(key)

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        self.puts.append(time.monotonic())
        return await self.inner.put_if_match(key, body, etag)

    def describe(self, key: str) -> str:
        return self.inner.describe(key)


def gaps(instants: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(instants)]


@dataclass(frozen=True)
class ReadOnly:
    url: str
    bucket: str
    #: may do anything in the bucket
    writer: dict[str, str]
    #: may read, list and delete, but PutObject is denied (IAM lacking s3:PutObject)
    reader: dict[str, str]


@pytest.fixture(scope="module")
def read_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReadOnly]:
    bucket = "fastelect-read-only"
    resources = f'["arn:aws:s3:::{bucket}", "arn:aws:s3:::{bucket}/*"]'
    allow = f'{{"Effect": "Allow", "Action": "s3:*", "Resource": {resources}}}'
    deny = f'{{"Effect": "Deny", "Action": "s3:PutObject", "Resource": {resources}}}'
    policies = {"writer": f"[{allow}]", "reader": f"[{allow}, {deny}]"}
    with MotoServer(tmp_path_factory.mktemp("moto-read-only") / "moto.log") as server:
        s3 = boto3_client("s3", server.url)
        iam = boto3_client("iam", server.url)
        keys = {}
        try:
            s3.create_bucket(Bucket=bucket)
            for user, statements in policies.items():
                iam.create_user(UserName=user)
                key = iam.create_access_key(UserName=user)["AccessKey"]
                keys[user] = {
                    "aws_access_key_id": key["AccessKeyId"],
                    "aws_secret_access_key": key["SecretAccessKey"],
                }
                iam.put_user_policy(
                    UserName=user,
                    PolicyName="lock",
                    PolicyDocument=f'{{"Version": "2012-10-17", "Statement": {statements}}}',
                )
        finally:
            s3.close()
            iam.close()
        server.enforce_auth()
        yield ReadOnly(server.url, bucket, keys["writer"], keys["reader"])


async def _released_record(ro: ReadOnly, prefix: str) -> None:
    """Lead once as the writer and stop: the record is left released."""
    storage = make_s3_storage(ro.url, ro.bucket, prefix=prefix, **ro.writer)
    elector = Elector(fast_config("writer", LOCK), storage)
    try:
        await elector.start()
        await asyncio.wait_for(elector.wait_for_leadership(), 5)
        await elector.stop()
    finally:
        await storage.close()


@pytest_asyncio.fixture
async def refused_follower(read_only: ReadOnly) -> AsyncIterator[tuple[S3Storage, str]]:
    prefix = f"ro-{uuid.uuid4().hex[:12]}"
    await _released_record(read_only, prefix)
    storage = make_s3_storage(read_only.url, read_only.bucket, prefix=prefix, **read_only.reader)
    try:
        yield storage, storage.describe(LOCK)
    finally:
        await storage.close()


@pytest.mark.asyncio
@pytest.mark.one_loop
async def test_a_follower_refused_every_write_is_not_hammered(
    refused_follower: tuple[S3Storage, str], caplog: pytest.LogCaptureFixture
) -> None:
    # The finding: F = 1 s, a released record, every PUT a 403 -> 188 GETs and
    # 188 PUTs in 2 s, each with an ERROR and a traceback.
    s3, where = refused_follower
    timed = Timed(s3)
    cfg = fast_config(
        "reader",
        LOCK,
        frequent_interval=1.0,
        infrequent_interval=1.0,
        leader_timeout=3.0,
        storage_timeout=1.0,
    )
    elector = Elector(cfg, timed)
    caplog.set_level(logging.DEBUG, logger="fastelect")
    await elector.start()
    gets0, puts0 = s3.stats.gets, s3.stats.puts
    try:
        await asyncio.sleep(2.0)
    finally:
        await elector.stop()
    gets, puts = s3.stats.gets - gets0, s3.stats.puts - puts0
    # A 403 waits at least F: writes at 0, >= 1 s, >= 2 s -- at most 3 in 2 s
    # (1 + 2 s / F), and one read before each.
    assert 1 <= puts <= 3, (gets, puts)
    assert gets <= puts + 1, (gets, puts)
    assert all(g >= 1.0 for g in gaps(timed.puts)), gaps(timed.puts)
    assert not elector.is_leader()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    # Once per streak, at WARNING, naming the store and the key; no traceback.
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    line = warnings[0].getMessage()
    assert warnings[0].levelno == logging.WARNING and warnings[0].exc_info is None
    assert where in line and where.startswith("s3://fastelect-read-only/ro-"), line
    assert "takeover of" in line and "StorageAuthError" in line and "next read in" in line
    assert "\n" not in line
    # Tracebacks only at DEBUG, one per failure.
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert tracebacks and all(r.levelno == logging.DEBUG for r in tracebacks)
    assert len(tracebacks) == puts


@pytest.fixture
def proxy(moto_server: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_server, ["a"], seed=1) as running:
        yield running


RESET_PUTS = Faults(reset_before=1.0, only=frozenset({"PUT"}))
F = 0.5


def _check_schedule(puts: list[float]) -> None:
    """Immediately, after 100 ms, after 1 s, then F to 1.25 F (and a little latency)."""
    g = gaps(puts)
    assert len(g) >= 4, g
    assert g[0] < 0.1, g  # immediately (after the verifying read)
    assert 0.1 <= g[1] < 0.3, g
    assert 1.0 <= g[2] < 1.2, g
    assert all(F <= x < 1.25 * F + 0.15 for x in g[3:]), g


@pytest.mark.asyncio
@pytest.mark.one_loop
async def test_a_follower_whose_writes_fail_backs_off_on_schedule(
    proxy: FaultProxy,
    s3_bucket: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_logfold, "FOLD_WINDOW_NS", 1_000_000_000)
    prefix = f"bo-{uuid.uuid4().hex[:12]}"
    s3 = make_s3_storage(proxy.url("a"), s3_bucket, prefix=prefix)
    timed = Timed(s3)
    cfg = fast_config(
        "a",
        LOCK,
        frequent_interval=F,
        infrequent_interval=F,
        leader_timeout=2.0,
        storage_timeout=0.5,
    )
    elector = Elector(cfg, timed)
    caplog.set_level(logging.INFO, logger="fastelect")
    proxy.set("a", RESET_PUTS)  # no record: every create is reset before moto sees it
    try:
        await elector.start()
        gets0, puts0 = s3.stats.gets, s3.stats.puts
        await asyncio.sleep(3.0)
        gets, puts = s3.stats.gets - gets0, s3.stats.puts - puts0
        # 0, 0, 0.1, 1.1, then every 0.5-0.625 s: at most 4 + 4 in 3 s.
        assert 5 <= puts <= 8, (gets, puts)
        assert gets <= puts + 1, (gets, puts)
        _check_schedule(timed.puts)
        assert not elector.is_leader()
        proxy.set("a", CLEAR)
        await asyncio.wait_for(elector.wait_for_leadership(), 2 * F + 1)
    finally:
        await elector.stop()
        await s3.close()
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    where = s3.describe(LOCK)
    # One line per failure, folded: the first, then one per (patched) 1 s window.
    assert 2 <= len(lines) <= 4, lines
    assert all(line.startswith(f"create of {where} failed (") for line in lines), lines
    assert "more in the last 1 s)" in lines[-1], lines
    assert all(r.exc_info is None for r in caplog.records if r.levelno >= logging.INFO)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(m.startswith(f"writes of {where} work again") for m in infos), infos


@pytest.mark.asyncio
@pytest.mark.one_loop
async def test_a_leader_whose_renewals_fail_keeps_the_schedule_past_its_lease(
    proxy: FaultProxy, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The finding: spaced only for the first retry, then thousands of
    # attempts a second once the lease had run out.
    prefix = f"bo-{uuid.uuid4().hex[:12]}"
    s3 = make_s3_storage(proxy.url("a"), s3_bucket, prefix=prefix)
    timed = Timed(s3)
    cfg = fast_config(
        "a",
        LOCK,
        frequent_interval=F,
        infrequent_interval=F,
        leader_timeout=2.0,
        storage_timeout=0.5,
    )
    elector = Elector(cfg, timed)
    caplog.set_level(logging.INFO, logger="fastelect")
    try:
        await elector.start()
        await asyncio.wait_for(elector.wait_for_leadership(), 2)
        proxy.set("a", RESET_PUTS)
        start = time.monotonic()
        timed.puts.clear()
        puts0 = s3.stats.puts
        lost_at = None
        while time.monotonic() - start < 4.0:
            await asyncio.sleep(0.02)
            if lost_at is None and not elector.is_leader():
                lost_at = time.monotonic() - start
        puts = s3.stats.puts - puts0
        # The lease (T - margin = 1.8 s after the last good renewal) ended inside the window.
        assert lost_at is not None and lost_at < 2.5, lost_at
        # Renewals at <= F, 0, 0.1, 1.1, then the same pace before and after the
        # lease: at most 4 + (4 - 1.1) / F + 1 = 10 in 4 s.
        assert 5 <= puts <= 10, puts
        _check_schedule(timed.puts)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings and "renew of" in warnings[0] and "still leading for" in warnings[0]
    finally:
        await elector.stop()
        await s3.close()


def test_log_fold_counts_repeats_per_window_and_per_streak() -> None:
    fold = LogFold(window_ns=20)
    assert fold.admit(("read", "E"), 0) == (0, 0)
    assert [fold.admit(("read", "E"), t) for t in (5, 10, 19)] == [None] * 3
    assert fold.admit(("read", "E"), 21) == (3, 21)
    assert folded_suffix(14, 20_000_000_000) == " (… 14 more in the last 20 s)"
    assert folded_suffix(0, 5) == ""
    assert fold.admit(("write", "Auth"), 0, once=True) == (0, 0)
    assert fold.admit(("write", "Auth"), 10**12, once=True) is None  # once per streak
    assert fold.end("write", 10**12) == (1, 10**12)
    assert fold.admit(("write", "Auth"), 10**12, once=True) == (0, 0)  # a new streak
    assert fold.end("nothing", 0) is None
