"""Helpers for elector tests: fast configs, a fault-injecting storage (and wait_until)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

from fastelect import Elector, ElectorConfig, StorageUnavailable
from fastelect.errors import ObjectNotFound, PreconditionFailed
from helpers import wait_until

__all__ = [
    "FAST",
    "FaultyStorage",
    "MinimalStore",
    "PassThroughStorage",
    "crash",
    "fast_config",
    "leaders",
    "wait_until",
]
from fastelect.storage import Storage

# Short but not razor-thin: a loaded 2-core CI box must still renew in time.
FAST: dict[str, Any] = {
    "frequent_interval": 0.03,
    "infrequent_interval": 0.03,
    "leader_timeout": 0.3,
    "storage_timeout": 0.2,
}


def fast_config(server_id: str, lock: str = "leader.json", **overrides: Any) -> ElectorConfig:
    """A config with test timings (F = 30 ms, T = 300 ms)."""
    return ElectorConfig(
        lock,
        server_id,
        f"127.0.0.1:{9000 + hash(server_id) % 1000}",
        **{
            **FAST,
            **overrides,
        },
    )


def leaders(electors: Iterable[Elector]) -> list[Elector]:
    """The electors that currently answer is_leader()."""
    return [e for e in electors if e.is_leader()]


async def crash(elector: Elector) -> None:
    """Take an elector off its scheduler and kill its hooks without releasing, as a crash would."""
    scheduler = elector._sched
    if scheduler is not None and elector._sched_active:
        elector._sched_active = False
        await scheduler._remove(elector, 0.0)  # a step in flight is cancelled
    task = elector._hooks_task
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    elector._hooks_task = None


class PassThroughStorage:
    """A storage wrapper that forwards everything to ``inner``; subclasses
    override the calls they intercept."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner

    async def get(self, key: str) -> tuple[bytes, str]:
        return await self.inner.get(key)

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        return await self.inner.put_if_match(key, body, etag)

    async def check(self) -> None:
        await self.inner.check()

    async def close(self) -> None:
        await self.inner.close()

    def describe(self, key: str) -> str:
        return f"{type(self).__name__}+" + self.inner.describe(key)


class FaultyStorage(PassThroughStorage):
    """Wraps a storage and fails chosen operations on demand (counts calls too)."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner)
        self.fail_puts = False
        self.fail_gets = False
        self.hang_puts = False
        self.puts = 0
        self.gets = 0

    async def get(self, key: str) -> tuple[bytes, str]:
        self.gets += 1
        if self.fail_gets:
            raise StorageUnavailable("injected read failure")
        return await self.inner.get(key)

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        self.puts += 1
        if self.hang_puts:
            await asyncio.sleep(3600)
        if self.fail_puts:
            raise StorageUnavailable("injected write failure")
        return await self.inner.put_if_match(key, body, etag)

    def describe(self, key: str) -> str:
        return "faulty+" + self.inner.describe(key)


class MinimalStore:
    """The seed's (s3lect's) storage shape: Get and PutIfMatch over a dict, nothing else."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.writes = 0

    async def get(self, key: str) -> tuple[bytes, str]:
        if key not in self.objects:
            raise ObjectNotFound(key)
        return self.objects[key]

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        current = self.objects.get(key)
        if (current[1] if current else "") != etag:
            raise PreconditionFailed(key)
        self.writes += 1
        new = f'"{self.writes}"'
        self.objects[key] = (bytes(body), new)
        return new
