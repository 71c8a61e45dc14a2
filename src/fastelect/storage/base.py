"""The storage protocol electors speak, and helpers shared by its backends.

A backend stores small objects under string keys and supports exactly two
operations, both of which must be atomic with respect to each other:

* ``get(key)`` returns ``(body, etag)`` or raises :class:`ObjectNotFound`.
* ``put_if_match(key, body, etag)`` writes ``body`` only if the object's
  current etag equals ``etag`` (``etag == ""`` means "only if the object does
  not exist") and returns the new etag, or raises :class:`PreconditionFailed`.

ETags are opaque strings. :class:`MemoryStorage` and :class:`FileStorage`
give a different etag to every successful write, even when the bytes are
identical. S3 (and most S3-compatible stores) derive the etag from the
content (its MD5), so identical bytes give identical etags there: callers must
make every write's bytes differ. fastelect's lock records always do (renewal
counter, timestamp), which rules out ABA on every backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..errors import (
    BucketNotFound,
    ObjectNotFound,
    PreconditionFailed,
    StorageAuthError,
    StorageError,
    StorageUnavailable,
)

__all__ = [
    "MAX_OBJECT_SIZE",
    "BucketNotFound",
    "ObjectNotFound",
    "PreconditionFailed",
    "Storage",
    "StorageAuthError",
    "StorageError",
    "StorageStats",
    "StorageUnavailable",
]

#: Largest lock object a backend returns; larger bodies are refused as garbage
#: (records are ~200 bytes, so anything near this is not ours).
MAX_OBJECT_SIZE = 64 * 1024


@dataclass(slots=True)
class StorageStats:
    """Requests a backend has issued, for tests and metrics.

    Every attempt counts, successful or not, so tests can assert the cost of
    a schedule (e.g. "a stable leader does one PUT and no GET per interval").
    """

    #: ``get`` calls issued (each is one request to the store).
    gets: int = 0
    #: ``put_if_match`` calls issued (each is one request to the store).
    puts: int = 0


@runtime_checkable
class Storage(Protocol):
    """What an elector needs from a lock store."""

    async def get(self, key: str) -> tuple[bytes, str]:
        """Return the object's body and etag; raise ObjectNotFound if absent."""
        ...

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        """Write ``body`` if the current etag is ``etag`` ("" = must not exist).

        Returns the new etag; raises PreconditionFailed if the condition fails.
        """
        ...

    async def check(self) -> None:
        """Verify the store is reachable and usable (bucket exists, credentials work).

        Raises a StorageError subclass with an actionable message otherwise.
        """
        ...

    async def close(self) -> None:
        """Release connections and files held by this storage."""
        ...

    def describe(self, key: str) -> str:
        """A human-readable location of ``key`` for logs (e.g. ``s3://b/p/key``)."""
        ...
