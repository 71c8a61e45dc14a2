"""A service that starts before its store: ``start(wait_for_store=...)`` (issue 21).

By default ``start()`` fails at once on an unreachable store; with
``wait_for_store`` it keeps trying with backoff and a WARNING per attempt,
against a real moto server behind the fault proxy (every connection reset
while "partitioned"), and still fails at once on what waiting cannot mend.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from tests.elector_helpers import fast_config
from tests.faultproxy import FaultProxy, Faults
from tests.helpers import make_s3_storage, wait_for, wait_until

from fastelect import BackgroundElector, BucketNotFound, ConfigError, Elector, StorageUnavailable

pytestmark = pytest.mark.s3


@pytest.fixture
def proxy(moto_server: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_server, ["a"]) as running:
        running.set("a", Faults(partition=True))  # the store is down at start
        yield running


def _attempts(caplog: pytest.LogCaptureFixture) -> list[float]:
    """The pause each 'cannot reach the store' WARNING announced, in order."""
    return [
        float(match.group(1))
        for record in caplog.records
        if record.levelno == logging.WARNING
        and (
            match := re.search(
                r"at start \(attempt \d+\): .*next try in ([\d.]+) s", record.getMessage()
            )
        )
    ]


@pytest_asyncio.fixture
async def elector(proxy: FaultProxy, s3_bucket: str) -> AsyncIterator[Elector]:
    """An elector on moto behind the (partitioned) proxy; stopped and closed after."""
    storage = make_s3_storage(proxy.url("a"), s3_bucket)
    made = Elector(fast_config("patient"), storage)
    try:
        yield made
    finally:
        await made.stop()
        await storage.close()


@pytest.mark.asyncio
async def test_start_waits_for_a_store_that_comes_up_later(
    proxy: FaultProxy, elector: Elector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastelect")
    starting = asyncio.ensure_future(elector.start(wait_for_store=math.inf))
    await wait_until(lambda: len(_attempts(caplog)) >= 3, 20, "no retries were logged")
    assert not starting.done()
    pauses = _attempts(caplog)
    # 0.1 s, then twice as long each time (plus up to a quarter of jitter).
    assert 0.1 <= pauses[0] <= 0.125 and 0.2 <= pauses[1] <= 0.25, pauses
    assert "giving up" not in caplog.text  # for ever
    proxy.clear()  # the store comes up
    await asyncio.wait_for(starting, 20)
    assert "reached the store" in caplog.text
    await asyncio.wait_for(elector.wait_for_leadership(), 10)


@pytest.mark.asyncio
async def test_start_gives_up_after_wait_for_store_with_the_stores_error(
    elector: Elector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fastelect")
    # 1.2 s: room for two failed attempts and their pauses (0.1 s, 0.2 s) even
    # when a check against the reset connections takes half a second under load.
    with pytest.raises(StorageUnavailable):
        await elector.start(wait_for_store=1.2)
    assert len(_attempts(caplog)) >= 2
    assert "giving up in" in caplog.text
    assert not elector.running
    # Without it (the default), the first failure is raised at once.
    caplog.clear()
    with pytest.raises(StorageUnavailable):
        await elector.start()
    assert _attempts(caplog) == []


@pytest.mark.asyncio
async def test_a_missing_bucket_fails_at_once_even_when_waiting(
    moto_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fastelect")
    storage = make_s3_storage(moto_server, f"no-such-{uuid.uuid4().hex[:8]}")
    elector = Elector(fast_config("typo"), storage)
    try:
        with pytest.raises(BucketNotFound):
            await asyncio.wait_for(elector.start(wait_for_store=math.inf), 10)
        assert _attempts(caplog) == []
    finally:
        await storage.close()


def test_a_background_elector_waits_for_its_store_too(
    proxy: FaultProxy, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fastelect")
    bg = BackgroundElector(
        fast_config("bg-patient"), lambda: make_s3_storage(proxy.url("a"), s3_bucket)
    )
    failed: list[BaseException] = []

    def start() -> None:
        try:
            bg.start(timeout=None, wait_for_store=30)
        except BaseException as exc:  # reported below
            failed.append(exc)

    starter = threading.Thread(target=start)
    starter.start()
    try:
        wait_for(lambda: len(_attempts(caplog)) >= 2, 20, "no retries were logged")
        proxy.clear()
        starter.join(20)
        assert not starter.is_alive() and not failed, failed
        assert bg.wait_for_leadership(timeout=10)
    finally:
        proxy.clear()
        starter.join(30)
        bg.stop()


@pytest.mark.parametrize("bad", [-1, math.nan, "5", True])
@pytest.mark.asyncio
async def test_wait_for_store_must_be_seconds(bad: object, moto_server: str) -> None:
    storage = make_s3_storage(moto_server, "unused")
    try:
        with pytest.raises(ConfigError, match="wait_for_store"):
            await Elector(fast_config("bad"), storage).start(wait_for_store=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="wait_for_store"):
            BackgroundElector(fast_config("bad"), storage).start(wait_for_store=bad)  # type: ignore[arg-type]
    finally:
        await storage.close()
