"""Lock stores: the :class:`Storage` protocol and its backends."""

from .base import MAX_OBJECT_SIZE, Storage, StorageStats
from .file import FileStorage
from .memory import MemoryStorage
from .s3 import S3Storage

__all__ = [
    "MAX_OBJECT_SIZE",
    "FileStorage",
    "MemoryStorage",
    "S3Storage",
    "Storage",
    "StorageStats",
]
