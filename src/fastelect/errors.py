"""The one error tree every fastelect failure belongs to.

Each error subclasses :class:`FastelectError`; some also inherit the stdlib
type a caller would naturally catch (``ConfigError`` is a ``ValueError``).
"""

from __future__ import annotations

__all__ = [
    "BucketNotFound",
    "ConfigError",
    "FastelectError",
    "HealthServerError",
    "LifecycleError",
    "ObjectNotFound",
    "PreconditionFailed",
    "RecordError",
    "StorageAuthError",
    "StorageError",
    "StorageReadOnly",
    "StorageUnavailable",
    "TLSError",
    "UntrustedTableError",
]


class FastelectError(Exception):
    """Base class of every error fastelect raises."""


class ConfigError(FastelectError, ValueError):
    """A configuration value is invalid; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class LifecycleError(FastelectError, RuntimeError):
    """An operation was called in the wrong lifecycle state (e.g. start twice)."""


class StorageError(FastelectError):
    """A storage operation failed."""


class ObjectNotFound(StorageError):
    """The requested lock object does not exist."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the object changed (or exists) since it was read."""


class BucketNotFound(StorageError):
    """The configured bucket (or storage directory) does not exist."""


class StorageAuthError(StorageError):
    """The storage refused our credentials or permissions (HTTP 403 and friends)."""


class StorageReadOnly(StorageAuthError):
    """The storage refuses every write: its filesystem is mounted read-only (EROFS).

    A :class:`StorageAuthError`, so code that treats refusals alike keeps
    working; the message names the read-only filesystem instead of blaming
    owners and modes.
    """


class StorageUnavailable(StorageError):
    """The storage could not be reached or answered with a transient failure."""


class RecordError(FastelectError):
    """A lock record read from storage is malformed, mistyped or oversized."""


class TLSError(FastelectError, ValueError):
    """A certificate or key is invalid, mismatched, expired or not PEM."""


class HealthServerError(FastelectError):
    """The health server could not start (port taken, bad certificate, ...)."""


class UntrustedTableError(FastelectError, PermissionError):
    """A leadership table is owned by a user this process does not trust, or is
    writable by others: another local user may have planted it."""

    def __init__(self, name: str, path: str, owner_uid: int, mode: int, message: str) -> None:
        #: The table's name, its segment's path, owner uid and permission bits.
        self.name = name
        self.path = path
        self.owner_uid = owner_uid
        self.mode = mode
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        # Picklable (it crosses process boundaries in pools and tests).
        return (type(self), (self.name, self.path, self.owner_uid, self.mode, str(self)))
