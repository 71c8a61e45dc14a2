"""Lock stores: the :class:`Storage` protocol and its backends."""

from .base import MAX_OBJECT_SIZE, Storage, StorageStats
from .file import FileStorage
from .memory import MemoryStorage
from .s3 import S3Storage
from .verify import CheckResult, VerifyReport, verify_storage

__all__ = [
    "MAX_OBJECT_SIZE",
    "CheckResult",
    "FileStorage",
    "MemoryStorage",
    "S3Storage",
    "Storage",
    "StorageStats",
    "VerifyReport",
    "verify_storage",
]
