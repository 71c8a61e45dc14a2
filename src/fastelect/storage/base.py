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

Those two operations are all a store must have (s3lect's ``Storage`` is
exactly ``Get`` and ``PutIfMatch``): :func:`as_storage` turns any object with
``get`` and ``put_if_match`` into a full :class:`Storage`, filling in
``check``, ``close`` and ``describe`` where the object lacks them.
:class:`~fastelect.Elector`, ``ElectionConfig`` and the election ``Manager``
all accept such a :class:`MinimalStorage`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..errors import (
    BucketNotFound,
    ConfigError,
    ObjectNotFound,
    PreconditionFailed,
    StorageAuthError,
    StorageError,
    StorageReadOnly,
    StorageUnavailable,
)

__all__ = [
    "MAX_OBJECT_SIZE",
    "BucketNotFound",
    "MinimalStorage",
    "ObjectNotFound",
    "PreconditionFailed",
    "Storage",
    "StorageAuthError",
    "StorageError",
    "StorageReadOnly",
    "StorageStats",
    "StorageUnavailable",
    "as_storage",
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


class MinimalStorage(Protocol):
    """The least a lock store must offer (s3lect's ``Get`` and ``PutIfMatch``).

    Pass one wherever a :class:`Storage` is accepted; :func:`as_storage`
    supplies the rest.
    """

    async def get(self, key: str) -> tuple[bytes, str]:
        """Return the object's body and etag; raise ObjectNotFound if absent."""
        ...

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        """Write ``body`` if the current etag is ``etag`` ("" = must not exist)."""
        ...


class _AdaptedStorage:
    """A :class:`Storage` around an object that has ``get`` and ``put_if_match``.

    The object's own ``check``/``close``/``describe`` are used when it has
    them; otherwise ``check`` and ``close`` do nothing and ``describe`` names
    the key and the object's type.
    """

    __slots__ = ("wrapped",)

    def __init__(self, wrapped: Any) -> None:
        #: The object this adapter speaks for.
        self.wrapped = wrapped

    async def get(self, key: str) -> tuple[bytes, str]:
        result = self.wrapped.get(key)
        # A synchronous store works too (it then runs on the event loop).
        if inspect.isawaitable(result):
            result = await result
        body, etag = result
        return body, etag

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        result = self.wrapped.put_if_match(key, body, etag)
        if inspect.isawaitable(result):
            result = await result
        new_etag: str = result
        return new_etag

    async def check(self) -> None:
        # Without a check of its own, reachability shows in the first read.
        check = getattr(self.wrapped, "check", None)
        if callable(check):
            result = check()
            if inspect.isawaitable(result):
                await result

    async def close(self) -> None:
        close = getattr(self.wrapped, "close", None)
        if callable(close):
            result = close()
            if inspect.isawaitable(result):
                await result

    def describe(self, key: str) -> str:
        describe = getattr(self.wrapped, "describe", None)
        if callable(describe):
            return str(describe(key))
        return f"{key} in {type(self.wrapped).__qualname__}"

    def __repr__(self) -> str:
        return f"as_storage({self.wrapped!r})"


def as_storage(obj: MinimalStorage | Storage) -> Storage:
    """``obj`` as a full :class:`Storage`: itself if it already is one, else adapted.

    Any object with callable ``get(key)`` and ``put_if_match(key, body, etag)``
    (async, or sync if they never block) qualifies; missing ``check`` and
    ``close`` do nothing and a missing ``describe`` names the key and the
    object's type.  Raises :class:`~fastelect.ConfigError` (field
    ``storage``) for anything else.
    """
    if isinstance(obj, _AdaptedStorage):
        return obj
    missing = [name for name in ("get", "put_if_match") if not callable(getattr(obj, name, None))]
    if missing:
        raise ConfigError(
            "storage",
            f"must have get(key) and put_if_match(key, body, etag) methods; "
            f"{type(obj).__qualname__} lacks {' and '.join(missing)}",
        )
    if isinstance(obj, Storage) and all(
        callable(getattr(obj, name, None)) for name in ("check", "close", "describe")
    ):
        return obj
    return _AdaptedStorage(obj)
