"""Lock stores: the :class:`Storage` protocol and its backends."""

from .base import MAX_OBJECT_SIZE, MinimalStorage, Storage, StorageStats, as_storage
from .file import FileStorage
from .memory import MemoryStorage
from .s3 import S3Storage

__all__ = [
    "MAX_OBJECT_SIZE",
    "FileStorage",
    "MemoryStorage",
    "MinimalStorage",
    "S3Storage",
    "Storage",
    "StorageStats",
    "as_storage",
]
