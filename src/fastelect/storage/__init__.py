"""Lock stores: the :class:`Storage` protocol and its backends."""

from .base import MAX_OBJECT_SIZE, MinimalStorage, Storage, StorageStats, as_storage
from .file import FileStorage
from .memory import MemoryStorage
from .s3 import S3Storage
from .verify import CheckResult, VerifyReport, verify_storage

__all__ = [
    "MAX_OBJECT_SIZE",
    "CheckResult",
    "FileStorage",
    "MemoryStorage",
    "MinimalStorage",
    "S3Storage",
    "Storage",
    "StorageStats",
    "VerifyReport",
    "as_storage",
    "verify_storage",
]
