"""An s3lect-shaped storage (``get`` and ``put_if_match`` only) works everywhere a Storage does.

:func:`fastelect.storage.as_storage` fills in ``check``/``close``/``describe``;
two real Electors campaign on one minimal store and hand over on stop.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from elector_helpers import MinimalStore, fast_config, leaders, wait_until
from fastelect import ConfigError, Elector, MemoryStorage
from fastelect.errors import ObjectNotFound, PreconditionFailed
from fastelect.storage import Storage, as_storage


class SyncStoreWithClose(MinimalStore):
    """Synchronous methods, and a close() of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def get(self, key: str) -> tuple[bytes, str]:  # type: ignore[override]
        if key not in self.objects:
            raise ObjectNotFound(key)
        return self.objects[key]

    def put_if_match(self, key: str, body: bytes, etag: str) -> str:  # type: ignore[override]
        current = self.objects.get(key)
        if (current[1] if current else "") != etag:
            raise PreconditionFailed(key)
        self.writes += 1
        self.objects[key] = (bytes(body), f'"{self.writes}"')
        return f'"{self.writes}"'

    def close(self) -> None:
        self.closed = True


def test_a_full_storage_is_returned_as_is() -> None:
    storage = MemoryStorage()
    assert as_storage(storage) is storage
    adapted = as_storage(MinimalStore())
    assert as_storage(adapted) is adapted


@pytest.mark.asyncio
async def test_defaults_fill_in_what_is_missing() -> None:
    store = MinimalStore()
    storage = as_storage(store)
    assert isinstance(storage, Storage)
    assert storage.describe("leader.json") == "leader.json in MinimalStore"
    await storage.check()  # nothing to check: the first read shows reachability
    await storage.close()  # nothing to release: the caller owns the object
    assert await storage.put_if_match("k", b"v", "") == '"1"'
    assert await storage.get("k") == (b"v", '"1"')
    with pytest.raises(PreconditionFailed):
        await storage.put_if_match("k", b"w", "")


@pytest.mark.asyncio
async def test_sync_methods_and_the_objects_own_close_are_used() -> None:
    store = SyncStoreWithClose()
    storage = as_storage(store)
    assert await storage.put_if_match("k", b"v", "") == '"1"'
    assert await storage.get("k") == (b"v", '"1"')
    await storage.close()
    assert store.closed


@pytest.mark.parametrize("bad", [object(), None, "s3://bucket", MinimalStore.get])
def test_anything_else_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"get.*put_if_match") as info:
        as_storage(bad)  # type: ignore[arg-type]
    assert info.value.field == "storage"


@pytest.mark.asyncio
async def test_electors_campaign_on_a_minimal_store() -> None:
    store = MinimalStore()
    a, b = Elector(fast_config("a"), store), Elector(fast_config("b"), store)  # type: ignore[arg-type]
    await a.start()
    await b.start()
    try:
        await wait_until(lambda: len(leaders([a, b])) == 1, 5.0, "no single leader")
        first = leaders([a, b])[0]
        other = b if first is a else a
        await first.stop()
        await wait_until(other.is_leader, 5.0, "no takeover after the leader stopped")
        record = orjson.loads(store.objects["leader.json"][0])
        assert record["leaderID"] == other.config.server_id and record["term"] == 2
    finally:
        await asyncio.gather(a.stop(), b.stop())
