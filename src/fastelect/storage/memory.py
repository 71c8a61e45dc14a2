"""An in-process lock store, for tests and single-process demos.

Objects live in a dict owned by one :class:`MemoryStorage`; electors that
share the instance (in one event loop) compete exactly as they would on S3.
Nothing is persisted and nothing crosses a process boundary.
"""

from __future__ import annotations

import itertools
import secrets

from .._core import YieldNow
from .base import MAX_OBJECT_SIZE, ObjectNotFound, PreconditionFailed, StorageError, StorageStats
from .verify import VerifyReport, verify_storage

__all__ = ["MemoryStorage"]


class MemoryStorage:
    """A :class:`~fastelect.storage.Storage` backed by a dict.

    Compare-and-set is atomic with respect to asyncio: the condition check
    and the write run with no ``await`` between them. Every write gets a fresh
    etag (a per-instance random prefix plus a counter), so identical bytes
    written twice never share an etag. ``stats`` counts requests.
    """

    #: Its coroutines never look at the current task, so a
    #: :class:`~fastelect.scheduler.Scheduler` may step them without a Task each.
    inline_steps = True

    def __init__(self) -> None:
        self._objects: dict[str, tuple[bytes, str]] = {}
        # The random prefix keeps etags from two instances (or two test runs)
        # from ever matching, so a stale etag cannot succeed by accident.
        self._etag_prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)
        self._closed = False
        #: Requests issued so far.
        self.stats = StorageStats()

    async def get(self, key: str) -> tuple[bytes, str]:
        """Return the body (at most MAX_OBJECT_SIZE + 1 bytes) and etag of ``key``."""
        self._check_open()
        self.stats.gets += 1
        # Yield like real I/O would, so callers cannot come to rely on a
        # backend that never suspends.
        await YieldNow()
        try:
            body, etag = self._objects[key]
        except KeyError:
            raise ObjectNotFound(f"{self.describe(key)} does not exist") from None
        return body[: MAX_OBJECT_SIZE + 1], etag

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        """Write ``body`` if the current etag is ``etag`` ("" = must not exist)."""
        self._check_open()
        self.stats.puts += 1
        await YieldNow()
        # From here to the return there is no await: this is the atomic CAS.
        current = self._objects.get(key)
        if etag == "":
            if current is not None:
                raise PreconditionFailed(f"{self.describe(key)} already exists")
        elif current is None:
            raise PreconditionFailed(f"{self.describe(key)} no longer exists")
        elif current[1] != etag:
            raise PreconditionFailed(f"{self.describe(key)} changed since etag {etag}")
        new_etag = f'"{self._etag_prefix}-{next(self._counter)}"'
        # An exact-size copy: orjson's bytes keep a 4 KiB buffer behind ~200 bytes,
        # which would cost every stored record 20 times its size.
        self._objects[key] = (bytes(memoryview(body)), new_etag)
        return new_etag

    async def check(self) -> None:
        """Nothing to verify: memory is always reachable."""
        self._check_open()

    async def close(self) -> None:
        """Mark the storage closed; later operations raise StorageError."""
        self._closed = True

    def describe(self, key: str) -> str:
        """``memory://<key>``."""
        return f"memory://{key}"

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("MemoryStorage is closed")

    async def delete(self, key: str) -> None:
        """Remove ``key`` (a missing key is not an error).

        Never delete a lock electors are using: any node may create a missing
        record at once, while the old leader's lease still runs. Electors
        never delete; ``fastelect check`` removes its probe object with this.
        """
        self._check_open()
        await YieldNow()
        self._objects.pop(key, None)

    async def verify(self, prefix: str = "") -> VerifyReport:
        """Probe this store's conditional writes; see :func:`fastelect.storage.verify_storage`."""
        return await verify_storage(self, prefix=prefix)
